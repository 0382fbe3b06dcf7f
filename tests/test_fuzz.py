"""Fuzz (hypothesis): whatever COCO JSON, VOC XML, YOLO labels / lists or `--set` overrides a
user has, reading them ends in a loaded dataset / config or in a UserError of one line, never
in another exception."""
from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from fcosdet.config import save_config
from fcosdet.data.coco import read_coco
from fcosdet.data.layout import load_dataset_spec
from fcosdet.data.records import DatasetSplit
from fcosdet.data.voc import read_voc
from fcosdet.data.yolo import read_yolo
from fcosdet.errors import UserError
from fcosdet.presets import load_config

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 70), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=6))
names = st.sampled_from(["a.jpg", "b.png", "missing.jpg", "../a.jpg", "/etc/passwd", "", "sub/../a.jpg"])
jsonish = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                       max_leaves=8)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz_images")
    Image.new("RGB", (64, 48), (10, 200, 30)).save(root / "a.jpg")
    Image.new("RGB", (40, 40), (200, 10, 30)).save(root / "b.png")
    (root / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    return root


def _outcome(read) -> None:
    """The one allowed pair of outcomes: a DatasetSplit, or a one-line UserError."""
    try:
        split = read()
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc), repr(str(exc))
        return
    assert isinstance(split, DatasetSplit)
    for record in split.records:
        assert record.boxes.shape == (len(record.labels), 4)
        assert ((record.labels >= 0) & (record.labels < len(split.class_names))).all()
        assert (record.boxes[:, 2:] > record.boxes[:, :2]).all() if len(record.boxes) else True


weird = st.one_of(scalars, st.lists(scalars, max_size=2), st.dictionaries(st.text(max_size=2), scalars, max_size=2))
coords = st.one_of(st.floats(-100, 200), st.sampled_from([math.nan, math.inf, -1e9]), st.none(), st.text(max_size=3))
annotation = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 5), weird), "image_id": st.one_of(st.integers(0, 4), weird),
     "bbox": st.one_of(st.lists(coords, min_size=4, max_size=4), weird),
     "category_id": st.one_of(st.integers(0, 3), weird)},
    optional={"iscrowd": weird})
image_entry = st.fixed_dictionaries(
    {"id": st.one_of(st.integers(0, 4), weird), "file_name": st.one_of(names, weird)},
    optional={"width": st.one_of(st.sampled_from([64, 40]), weird), "height": st.one_of(st.sampled_from([48, 40]), weird)})
category = st.one_of(st.fixed_dictionaries({"id": st.one_of(st.integers(0, 3), weird)},
                                           optional={"name": st.one_of(st.text(max_size=4), weird)}), jsonish)
coco_doc = st.one_of(
    st.fixed_dictionaries({"images": st.lists(image_entry, max_size=4)},
                          optional={"annotations": st.one_of(st.lists(annotation, max_size=6), jsonish),
                                    "categories": st.one_of(st.lists(category, max_size=3), jsonish)}),
    jsonish)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(doc={"images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 1}],
              "annotations": [{"id": 1, "image_id": [1], "bbox": [1, 1, 2, 2], "category_id": [1]}]},
         raw=None, skip=False)
@example(doc={"images": [{"id": 1, "file_name": "a\nb.jpg", "width": 3, "height": 3}], "categories": [{"id": 1}]},
         raw=None, skip=False)
@given(doc=coco_doc, raw=st.one_of(st.none(), st.binary(max_size=40)), skip=st.booleans())
def test_fuzz_coco_reader(images, doc, raw, skip):
    ann = Path(tempfile.mkdtemp(dir=images.parent)) / "ann.json"
    ann.write_bytes(raw if raw is not None else json.dumps(doc).encode())
    _outcome(lambda: read_coco(images, ann, skip_invalid=skip))


xml_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8)
voc_object = st.tuples(st.one_of(st.sampled_from(["cat", "dog"]), xml_text),
                       st.lists(st.one_of(st.integers(-50, 120).map(str), xml_text), min_size=0, max_size=4))


def _voc_xml(filename: str | None, objects) -> str:
    from xml.sax.saxutils import escape
    parts = [f"<filename>{escape(filename)}</filename>" if filename is not None else ""]
    for name, values in objects:
        box = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), values))
        parts.append(f"<object><name>{escape(name)}</name><bndbox>{box}</bndbox></object>")
    return f"<annotation>{''.join(parts)}</annotation>"


@FUZZ
@given(filename=st.one_of(st.none(), names, xml_text), objects=st.lists(voc_object, max_size=4),
       ids=st.lists(st.one_of(st.just("x"), st.just("../x"), xml_text.filter(lambda t: "\x00" not in t)), max_size=3),
       broken=st.booleans(), skip=st.booleans())
def test_fuzz_voc_reader(images, filename, objects, ids, broken, skip):
    root = Path(tempfile.mkdtemp(dir=images.parent))
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "JPEGImages" / "a.jpg").write_bytes((images / "a.jpg").read_bytes())
    xml = _voc_xml(filename, objects)
    (root / "Annotations" / "x.xml").write_text(xml[: len(xml) // 2] if broken else xml)
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(["x", *ids]) + "\n")
    _outcome(lambda: read_voc(root, "train", skip_invalid=skip))
    _outcome(lambda: load_dataset_spec(root, "train", skip_invalid=skip))


label_line = st.one_of(
    st.lists(st.one_of(st.floats(-1, 2).map(lambda v: f"{v:.3f}"), st.sampled_from(["0", "1", "5", "-1", "nan", "1e9", "x"])),
             max_size=9).map(" ".join),
    st.text(max_size=12))


@FUZZ
@given(lines=st.lists(label_line, max_size=5), raw=st.one_of(st.none(), st.binary(max_size=20)),
       names_yaml=st.one_of(st.just("names: [cat, dog]\n"), st.just("names: {0: cat, 1: dog}\n"),
                            st.text(max_size=20)),
       split_lines=st.lists(st.one_of(names, st.just("images/a.jpg"), st.just("b.png")), max_size=3),
       use_list=st.booleans(), skip=st.booleans())
def test_fuzz_yolo_reader(images, lines, raw, names_yaml, split_lines, use_list, skip):
    root = Path(tempfile.mkdtemp(dir=images.parent))
    (root / "images").mkdir()
    (root / "labels").mkdir()
    (root / "images" / "a.jpg").write_bytes((images / "a.jpg").read_bytes())
    (root / "labels" / "a.txt").write_bytes(raw if raw is not None else "\n".join(lines).encode())
    (root / "data.yaml").write_text(names_yaml)
    if use_list:
        (root / "train.txt").write_text("\n".join(split_lines) + "\n")
    _outcome(lambda: read_yolo(root, split_list=root / "train.txt" if use_list else None, skip_invalid=skip))
    _outcome(lambda: load_dataset_spec(root, "train", skip_invalid=skip))


KEYS = ["train.lr", "train.epochs", "model.strides", "model.regress_ranges", "data.scale", "model.head_norm",
        "data.multiscale_short", "train.max_iters", "model.backbone_norm", "data.val_split", "train.amp",
        "model", "nope.key", "train", "train.lr.x", "", "data.allow_outside_root", "train.checkpoint_interval"]
yaml_values = st.one_of(st.sampled_from(["[", "{a: 1", "null", "1e400", "[1, 2]", "[[1,2],[3]]", "true", "0.5",
                                         "'x'", "-3", "[8,16,32,64,128]", "*a", "!!python/object:os.system x"]),
                        st.text(max_size=10))


@FUZZ
@given(items=st.lists(st.one_of(st.tuples(st.sampled_from(KEYS), yaml_values).map("=".join),
                                st.text(max_size=12)), max_size=4))
def test_fuzz_config_overrides(items):
    try:
        cfg = load_config("fcos_r18_cpu", items)
    except UserError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    # loaded: every value has its declared type, so the saved config.yaml reads back the same
    path = Path(tempfile.mkdtemp()) / "config.yaml"
    save_config(cfg, path)
    assert load_config(str(path)).to_dict() == cfg.to_dict()


spec_values = st.one_of(st.sampled_from(["coco", "voc", "yolo", "kitti", ".", "ann.json", "images", "../..",
                                         "train.txt"]), jsonish)


@FUZZ
@given(spec=st.dictionaries(st.sampled_from(["format", "root", "train", "val", "names", "path"]), spec_values,
                            max_size=5),
       raw=st.one_of(st.none(), st.text(max_size=30)))
def test_fuzz_dataset_yaml(images, spec, raw):
    import yaml
    path = Path(tempfile.mkdtemp(dir=images.parent)) / "data.yaml"
    path.write_text(raw if raw is not None else yaml.safe_dump(spec))
    _outcome(lambda: load_dataset_spec(path, "train"))
