"""One rule for bad data, whichever command reads it: for every reader rule, `check-data`, `train`
and `eval` stop on the same broken dataset with one line naming the file and the problem (a check
that passed what training refuses would be a silent wrong result). Each dataset is a COCO / VOC /
YOLO folder built here with one problem in its train split."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import pytest
from helpers import error_line
from PIL import Image
from test_safety import SMALL

from fcosdet.io.model_file import ModelFile
from fcosdet.model.build import build_model
from fcosdet.presets import preset

CATEGORIES = [{"id": 1, "name": "thing"}]


def _image(path: Path, size: tuple[int, int] = (64, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 20, 160)).save(path)


def _coco(root: Path, *, images: list[dict], annotations: list[dict], train_text: str | None = None) -> Path:
    """images/ + train.json (as given) + a valid val.json."""
    _image(root / "images" / "ok.jpg")
    train = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    (root / "train.json").write_text(train_text if train_text is not None else json.dumps(train))
    val = {"images": [{"id": 1, "file_name": "ok.jpg", "width": 64, "height": 48}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20]}],
           "categories": CATEGORIES}
    (root / "val.json").write_text(json.dumps(val))
    return root


def _one_image(root: Path, *, bbox: list[float] | None = None, category: int = 1, file_name: str = "a.jpg",
               make_file: bool = True, declared: tuple[int, int] | None = None, **ann: object) -> Path:
    if make_file:
        _image(root / "images" / file_name)
    image = {"id": 1, "file_name": file_name}
    if declared:
        image.update(width=declared[0], height=declared[1])
    box = {"id": 7, "image_id": 1, "category_id": category, "bbox": bbox or [4, 4, 20, 20], **ann}
    return _coco(root, images=[image], annotations=[box])


def _corrupt(root: Path) -> Path:
    _coco(root, images=[{"id": 1, "file_name": "bad.jpg"}], annotations=[])
    (root / "images" / "bad.jpg").write_bytes(b"not an image at all")
    return root


def _voc_broken_xml(root: Path) -> Path:
    for split, name in (("train", "a"), ("val", "b")):
        _image(root / "JPEGImages" / f"{name}.jpg")
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(f"{name}\n")
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for name, end in (("a", ""), ("b", "</annotation>")):  # a.xml is cut short
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.jpg</filename><object><name>thing</name><bndbox><xmin>4</xmin>"
            f"<ymin>4</ymin><xmax>24</xmax><ymax>24</ymax></bndbox></object>{end}")
    return root


def _yolo_bad_class(root: Path) -> Path:
    for split, line in (("train", "3 0.5 0.5 0.2 0.2"), ("val", "0 0.5 0.5 0.2 0.2")):
        _image(root / "images" / split / f"{split}.jpg")
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / f"{split}.txt").write_text(line + "\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [thing]\n")
    return root


# case -> (builder, what the one error line must say)
CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "no_images": (lambda r: _coco(r, images=[], annotations=[]), r"split 'train' .* holds no images"),
    "missing_image": (lambda r: _one_image(r, make_file=False), r"a\.jpg .*does not exist"),
    "corrupt_image": (_corrupt, r"bad\.jpg .*cannot be read as an image"),
    "unknown_category": (lambda r: _one_image(r, category=5), r"annotation id 7 .*category_id 5"),
    "nan_box": (lambda r: _one_image(r, bbox=[float("nan"), 4, 20, 20]), r"annotation id 7 .*NaN"),
    "zero_size_box": (lambda r: _one_image(r, bbox=[4, 4, 0, 20]), r"annotation id 7 .*zero or negative"),
    "box_outside": (lambda r: _one_image(r, bbox=[500, 500, 20, 20]), r"annotation id 7 .*entirely outside"),
    "outside_root": (lambda r: _one_image(r, file_name="../a.jpg", make_file=False), r"leaves the dataset folder"),
    "declared_size": (lambda r: _one_image(r, declared=(100, 100)), r"a\.jpg is declared 100x100 but the file is 64x48"),
    "unknown_image_id": (lambda r: _coco(r, images=[], annotations=[{"id": 3, "image_id": 9, "category_id": 1,
                                                                       "bbox": [1, 1, 5, 5]}]), r"refers to image_id 9"),
    "bad_json": (lambda r: _coco(r, images=[], annotations=[], train_text="{oops"), r"train\.json is not valid JSON"),
    "voc_broken_xml": (_voc_broken_xml, r"a\.xml cannot be read"),
    "yolo_bad_class": (_yolo_bad_class, r"train\.txt: line 1 .* has class 3"),
}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A one-class model for `eval` (random weights: the data is refused before any detection)."""
    cfg = preset("fcos_r18_cpu")
    cfg.model.num_classes, cfg.model.depth, cfg.model.fpn_channels, cfg.model.feat_channels = 1, 10, 32, 32
    path = tmp_path_factory.mktemp("model") / "one_class.pt"
    ModelFile(model=build_model(cfg.model).state_dict(), config=cfg.to_dict(), class_names=["thing"]).save(path)
    return path


@pytest.mark.parametrize("case", sorted(CASES))
def test_check_data_train_and_eval_refuse_the_same_broken_split(case, tmp_path, model_file, capsys):
    build, expected = CASES[case]
    data = build(tmp_path / case)
    commands = {
        "check-data": ["check-data", str(data), "--splits", "train", "val"],
        "train": ["train", "fcos_r18_cpu", "--data", str(data), *SMALL, "--run-dir", str(tmp_path / "run")],
        "eval": ["eval", str(model_file), "--data", str(data), "--split", "train", "--workers", "0"],
    }
    for name, argv in commands.items():
        line = error_line(capsys, argv)
        assert re.search(expected, line), f"{name}: {line}"
