"""Dataset readers: agreement between formats on the shared real datasets, and every bad input
raising a UserError that names the file (or being skipped and counted with skip_invalid)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcosdet.data.coco import read_coco
from fcosdet.data.images import image_size, verify_images
from fcosdet.data.layout import detect_layout, load_dataset_spec
from fcosdet.data.loader import DetectionDataset
from fcosdet.data.records import DatasetSplit
from fcosdet.data.transforms import build_transforms
from fcosdet.data.validate import summarize_problems
from fcosdet.data.voc import read_voc
from fcosdet.data.yolo import read_yolo
from fcosdet.errors import UserError

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.usefixtures("shared_data")  # fails, never skips, without ../shared/data


# ----------------------------------------------------------------------------- helpers


def _by_file(split: DatasetSplit) -> dict[str, tuple[list[str], np.ndarray]]:
    """file name -> (label names (G,), boxes (G, 4))."""
    return {Path(r.path).name: ([split.class_names[i] for i in r.labels], r.boxes) for r in split.records}


def _assert_same_boxes(a: DatasetSplit, b: DatasetSplit, *, tol: float) -> None:
    """Same images, and per image a one-to-one match of (name, box) within `tol` pixels."""
    left, right = _by_file(a), _by_file(b)
    assert left.keys() == right.keys()
    for name, (names_a, boxes_a) in left.items():
        names_b, boxes_b = right[name]
        assert len(names_a) == len(names_b), name
        unused = list(range(len(names_b)))
        for label, box in zip(names_a, boxes_a):
            match = next((j for j in unused if names_b[j] == label
                          and np.abs(boxes_b[j] - box).max() <= tol), None)
            assert match is not None, (name, label, box)
            unused.remove(match)


def _jpeg(path: Path, size: tuple[int, int] = (64, 48), color=(120, 30, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, quality=90)
    return path


def _write_coco(tmp_path: Path, images: list[dict], annotations: list[dict],
                categories: list[dict] | None = None) -> Path:
    ann = tmp_path / "ann.json"
    data = {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    ann.write_text(json.dumps(data))
    return ann


def _image(image_id: int, name: str, size: tuple[int, int] = (64, 48)) -> dict:
    return {"id": image_id, "file_name": name, "width": size[0], "height": size[1]}


def _ann(ann_id: int, image_id: int, bbox: list, category_id: int = 1, iscrowd: int = 0) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox,
            "iscrowd": iscrowd, "area": 1.0}


# ----------------------------------------------------------------------------- shared datasets


@needs_data
def test_voc_reader_matches_coco_json_on_bccd():
    voc = read_voc(DATA / "bccd", None, skip_invalid=True)
    coco = read_coco(DATA / "bccd" / "images", DATA / "bccd" / "annotations.json")
    # the XML holds two zero-size boxes that the JSON dropped: both are skipped and counted
    assert len(voc.problems) == 2
    assert any("BloodImage_00338.xml" in p for p in voc.problems)
    assert sorted(voc.class_names) == sorted(coco.class_names)
    _assert_same_boxes(voc, coco, tol=1e-3)
    with pytest.raises(UserError, match="BloodImage_00338.xml"):
        read_voc(DATA / "bccd", None)


@needs_data
def test_voc_reader_uses_imagesets_split():
    split = read_voc(DATA / "bccd", "trainval", skip_invalid=True)
    ids = (DATA / "bccd" / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    assert [Path(r.path).stem for r in split.records] == ids
    with pytest.raises(UserError, match="nosuchsplit.txt"):
        read_voc(DATA / "bccd", "nosuchsplit")


@needs_data
@pytest.mark.parametrize("name, expected_skips", [("aquarium", 2), ("coco128", 0)])
def test_yolo_reader_matches_coco_json(name: str, expected_skips: int):
    yolo = read_yolo(DATA / name, skip_invalid=True)
    coco = read_coco(DATA / name / "images", DATA / name / "annotations.json")
    assert yolo.class_names == coco.class_names
    assert len(yolo.problems) == expected_skips  # aquarium: two 0x0 boxes the JSON dropped
    _assert_same_boxes(yolo, coco, tol=0.5)
    assert sum(len(r.boxes) == 0 for r in yolo.records) == sum(len(r.boxes) == 0 for r in coco.records)


@needs_data
@pytest.mark.parametrize("name, train, val, classes", [
    ("bccd", 292, 72, 3), ("aquarium", 511, 127, 7), ("coco128", 205, 51, 80)])
def test_shared_folders_load_by_path(name: str, train: int, val: int, classes: int):
    assert detect_layout(DATA / name) == "coco"
    train_split = load_dataset_spec(DATA / name, "train")
    val_split = load_dataset_spec(DATA / name, "val")
    assert (len(train_split.records), len(val_split.records)) == (train, val)
    assert len(train_split.class_names) == classes and train_split.class_names == val_split.class_names
    assert not train_split.problems
    assert all(r.labels.max(initial=0) < classes for r in train_split.records)


# ----------------------------------------------------------------------------- COCO specifics


def test_coco_category_ids_with_gaps_map_to_contiguous_labels(tmp_path: Path):
    _jpeg(tmp_path / "a.jpg")
    cats = [{"id": 90, "name": "toothbrush"}, {"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]
    ann = _write_coco(tmp_path, [_image(7, "a.jpg")],
                      [_ann(1, 7, [1, 2, 10, 10], 90), _ann(2, 7, [5, 5, 3, 4], 5),
                       _ann(3, 7, [0, 0, 2, 2], 1)],
                      categories=cats)
    split = read_coco(tmp_path, ann)
    assert split.class_names == ["person", "airplane", "toothbrush"]
    record = split.records[0]
    assert record.image_id == 7
    assert record.labels.tolist() == [2, 1, 0]
    np.testing.assert_allclose(record.boxes[0], [1, 2, 11, 12])


def test_coco_keeps_crowd_flagged_and_empty_images(tmp_path: Path):
    _jpeg(tmp_path / "a.jpg")
    _jpeg(tmp_path / "empty.jpg")
    ann = _write_coco(tmp_path, [_image(1, "a.jpg"), _image(2, "empty.jpg")],
                      [_ann(1, 1, [1, 1, 10, 10]), _ann(2, 1, [20, 20, 30, 20], iscrowd=1)])
    split = read_coco(tmp_path, ann)
    assert len(split.records) == 2
    assert split.records[0].iscrowd.tolist() == [False, True]
    assert split.records[1].boxes.shape == (0, 4) and split.records[1].labels.shape == (0,)
    # the training dataset drops crowd boxes from its targets
    _, target = DetectionDataset(split, transforms=build_transforms(train=False, scale=(64, 48)))[0]
    assert target["labels"].tolist() == [0]


def test_box_slightly_outside_is_clipped(tmp_path: Path):
    _jpeg(tmp_path / "a.jpg")
    ann = _write_coco(tmp_path, [_image(1, "a.jpg")], [_ann(1, 1, [-0.8, 40, 64.5, 8.7])])
    record = read_coco(tmp_path, ann).records[0]
    np.testing.assert_allclose(record.boxes[0], [0, 40, 63.7, 48], atol=1e-5)


BAD_ANNOTATIONS = {
    "unknown category": (_ann(2, 1, [1, 1, 5, 5], category_id=7), "category_id 7"),
    "nan box": (_ann(2, 1, [math.nan, 1, 5, 5]), "NaN"),
    "null coordinate": (_ann(2, 1, [None, 1, 5, 5]), "NaN"),
    "zero-size box": (_ann(2, 1, [10, 10, 0, 5]), "zero or negative"),
    "negative-size box": (_ann(2, 1, [10, 10, 4, -5]), "zero or negative"),
    "box outside image": (_ann(2, 1, [70, 10, 30, 10]), "entirely outside"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANNOTATIONS))
def test_bad_coco_annotation_raises_or_is_skipped(tmp_path: Path, case: str):
    bad, phrase = BAD_ANNOTATIONS[case]
    _jpeg(tmp_path / "good.jpg")
    ann = _write_coco(tmp_path, [_image(1, "good.jpg")], [_ann(1, 1, [1, 1, 5, 5]), bad])
    with pytest.raises(UserError) as info:
        read_coco(tmp_path, ann)
    message = str(info.value)
    assert "ann.json" in message and "annotation id 2" in message and "good.jpg" in message
    assert phrase in message and "\n" not in message
    split = read_coco(tmp_path, ann, skip_invalid=True)
    assert len(split.records) == 1 and len(split.records[0].boxes) == 1
    assert len(split.problems) == 1 and "skipped 1 invalid" in summarize_problems(split.problems)


def _truncated_jpeg(path: Path) -> Path:
    _jpeg(path, size=(64, 48))
    noise = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)  # (H, W, 3)
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case", ["missing file", "corrupt bytes"])
def test_unreadable_image_raises_or_is_skipped(tmp_path: Path, case: str):
    _jpeg(tmp_path / "good.jpg")
    if case == "corrupt bytes":
        (tmp_path / "bad.jpg").write_bytes(b"definitely not a jpeg")
    ann = _write_coco(tmp_path, [_image(1, "good.jpg"), _image(2, "bad.jpg")],
                      [_ann(1, 1, [1, 1, 5, 5]), _ann(2, 2, [1, 1, 5, 5])])
    with pytest.raises(UserError, match="bad.jpg"):
        read_coco(tmp_path, ann)
    split = read_coco(tmp_path, ann, skip_invalid=True)
    assert [Path(r.path).name for r in split.records] == ["good.jpg"]
    assert len(split.problems) == 1 and "bad.jpg" in split.problems[0]


def test_truncated_jpeg_found_by_verify_and_by_dataset(tmp_path: Path):
    _jpeg(tmp_path / "good.jpg")
    _truncated_jpeg(tmp_path / "cut.jpg")
    ann = _write_coco(tmp_path, [_image(1, "good.jpg"), _image(2, "cut.jpg")],
                      [_ann(1, 1, [1, 1, 5, 5])])
    split = read_coco(tmp_path, ann)  # the header alone is fine
    assert len(split.records) == 2
    with pytest.raises(UserError, match="cut.jpg"):
        verify_images(split.records)
    good, problems = verify_images(split.records, skip_invalid=True)
    assert [Path(r.path).name for r in good] == ["good.jpg"] and len(problems) == 1
    dataset = DetectionDataset(split, transforms=build_transforms(train=False, scale=(64, 48)))
    with pytest.raises(UserError, match="cut.jpg"):
        dataset[1]


def test_coco_declared_size_must_match_file(tmp_path: Path):
    _jpeg(tmp_path / "a.jpg", size=(64, 48))
    ann = _write_coco(tmp_path, [_image(1, "a.jpg", size=(100, 48))], [])
    with pytest.raises(UserError, match="a.jpg"):
        read_coco(tmp_path, ann)


def test_bad_annotation_files(tmp_path: Path):
    with pytest.raises(UserError, match="nothere.json"):
        read_coco(tmp_path, tmp_path / "nothere.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserError, match="broken.json"):
        read_coco(tmp_path, tmp_path / "broken.json")


# ----------------------------------------------------------------------------- YOLO / VOC in tmp


def _yolo_root(tmp_path: Path) -> Path:
    root = tmp_path / "yolo"
    _jpeg(root / "images" / "a.jpg", size=(100, 50))
    _jpeg(root / "images" / "empty.jpg", size=(100, 50))
    _jpeg(root / "images" / "nolabel.jpg", size=(100, 50))
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.1 0.2 0.2\n")
    (root / "labels" / "empty.txt").write_text("")
    (root / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    return root


def test_yolo_reader_boxes_and_negatives(tmp_path: Path):
    split = read_yolo(_yolo_root(tmp_path))
    assert split.class_names == ["cat", "dog"]
    by_name = {Path(r.path).name: r for r in split.records}
    assert set(by_name) == {"a.jpg", "empty.jpg", "nolabel.jpg"}
    np.testing.assert_allclose(by_name["a.jpg"].boxes, [[40, 15, 60, 35], [0, 0, 20, 10]], atol=1e-4)
    assert by_name["a.jpg"].labels.tolist() == [1, 0]
    assert len(by_name["empty.jpg"].boxes) == 0 and len(by_name["nolabel.jpg"].boxes) == 0


@pytest.mark.parametrize("line, phrase", [("5 0.5 0.5 0.2 0.2", "class 5"), ("0 0.5 0.5", "cx cy w h"),
                                          ("0 nan 0.5 0.2 0.2", "NaN"), ("0 0.5 0.5 0 0.2", "zero")])
def test_yolo_bad_lines(tmp_path: Path, line: str, phrase: str):
    root = _yolo_root(tmp_path)
    (root / "labels" / "a.txt").write_text(f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(UserError, match="a.txt: line 2") as info:
        read_yolo(root)
    assert phrase in str(info.value)
    split = read_yolo(root, skip_invalid=True)
    assert len(split.problems) == 1 and sum(len(r.boxes) for r in split.records) == 1


def test_yolo_split_list_and_missing_image(tmp_path: Path):
    root = _yolo_root(tmp_path)
    (root / "train.txt").write_text("images/a.jpg\nempty.jpg\nghost.jpg\n")
    with pytest.raises(UserError, match="ghost.jpg"):
        read_yolo(root, split_list=root / "train.txt")
    split = read_yolo(root, split_list=root / "train.txt", skip_invalid=True)
    assert [Path(r.path).name for r in split.records] == ["a.jpg", "empty.jpg"]


def _voc_root(tmp_path: Path, objects: str) -> Path:
    root = tmp_path / "voc"
    _jpeg(root / "JPEGImages" / "img1.jpg", size=(80, 60))
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("img1\n")
    (root / "Annotations" / "img1.xml").write_text(
        f"<annotation><filename>img1.jpg</filename>{objects}</annotation>")
    return root


def _voc_object(name: str, box: tuple, difficult: int = 0) -> str:
    xmin, ymin, xmax, ymax = box
    return (f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin>"
            f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")


def test_voc_reader_keeps_difficult_and_sorts_names(tmp_path: Path):
    root = _voc_root(tmp_path, _voc_object("zebra", (1, 2, 30, 40)) + _voc_object("ant", (5, 5, 9, 9), 1))
    split = read_voc(root, "train")
    assert split.class_names == ["ant", "zebra"]
    np.testing.assert_allclose(split.records[0].boxes, [[1, 2, 30, 40], [5, 5, 9, 9]])
    assert split.records[0].labels.tolist() == [1, 0] and not split.records[0].iscrowd.any()


def test_voc_bad_inputs(tmp_path: Path):
    root = _voc_root(tmp_path, _voc_object("ant", (1, 2, 30, 40)) + _voc_object("bee", (1, 2, 30, 40)))
    with pytest.raises(UserError, match=r"img1.xml: object 2 .*'bee'"):
        read_voc(root, "train", class_names=["ant"])
    assert len(read_voc(root, "train", class_names=["ant"], skip_invalid=True).problems) == 1
    (root / "Annotations" / "img1.xml").write_text("<annotation><object>")
    with pytest.raises(UserError, match="img1.xml"):
        read_voc(root, "train", class_names=["ant"])


# ----------------------------------------------------------------------------- specs and layouts


def test_dataset_yaml_specs(tmp_path: Path):
    yolo = _yolo_root(tmp_path)
    (yolo / "val.txt").write_text("a.jpg\n")
    (tmp_path / "y.yaml").write_text(
        "format: yolo\nroot: yolo\ntrain: images\nval: val.txt\nnames: [cat, dog]\n")
    assert len(load_dataset_spec(tmp_path / "y.yaml", "train").records) == 3
    assert len(load_dataset_spec(tmp_path / "y.yaml", "val").records) == 1
    with pytest.raises(UserError, match="'test'"):
        load_dataset_spec(tmp_path / "y.yaml", "test")

    _jpeg(tmp_path / "coco" / "pics" / "a.jpg")
    _jpeg(tmp_path / "coco" / "images" / "a.jpg")
    ann = _write_coco(tmp_path / "coco", [_image(1, "a.jpg")], [_ann(1, 1, [1, 1, 5, 5], 2)])
    (tmp_path / "c.yaml").write_text(
        f"format: coco\nroot: coco\ntrain: {{images: pics, annotations: {ann.name}}}\nval: {ann.name}\n"
        "names: [dog, cat]\n")
    train = load_dataset_spec(tmp_path / "c.yaml", "train")
    assert train.class_names == ["dog", "cat"] and train.records[0].labels.tolist() == [0]
    assert "images" in load_dataset_spec(tmp_path / "c.yaml", "val").records[0].path

    voc = _voc_root(tmp_path, _voc_object("ant", (1, 2, 30, 40)))
    (tmp_path / "v.yaml").write_text(f"format: voc\nroot: {voc.name}\ntrain: train\n")
    assert load_dataset_spec(tmp_path / "v.yaml", "train").class_names == ["ant"]
    (tmp_path / "bad.yaml").write_text("format: kitti\nroot: .\ntrain: x\n")
    with pytest.raises(UserError, match="kitti"):
        load_dataset_spec(tmp_path / "bad.yaml", "train")


@needs_data
def test_official_coco_layout_by_folder(tmp_path: Path):
    """annotations/instances_val2017.json + val2017/ (mmdetection's data/coco) loads by path."""
    (tmp_path / "annotations").mkdir()
    data = json.loads((DATA / "bccd" / "val.json").read_text())
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    (tmp_path / "val2017").mkdir()
    for image in data["images"]:
        (tmp_path / "val2017" / image["file_name"]).symlink_to(DATA / "bccd" / "images" / image["file_name"])
    assert detect_layout(tmp_path) == "coco"
    loaded = load_dataset_spec(tmp_path, "val")
    _assert_same_boxes(loaded, read_coco(DATA / "bccd" / "images", DATA / "bccd" / "val.json"), tol=0.0)
    with pytest.raises(UserError, match="instances_train"):
        load_dataset_spec(tmp_path, "train")  # no train split here
    (tmp_path / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="no image folder"):
        load_dataset_spec(tmp_path, "train")


def test_layout_detection_of_folders(tmp_path: Path):
    yolo = _yolo_root(tmp_path)
    assert detect_layout(yolo) == "yolo"
    assert len(load_dataset_spec(yolo, "train").records) == 3  # no train list: every image
    with pytest.raises(UserError, match=r"no split 'val' \(looked for .*val\.txt.*data\.yaml"):
        load_dataset_spec(yolo, "val")  # no val list: an error, never the training images
    voc = _voc_root(tmp_path, _voc_object("ant", (1, 2, 30, 40)))
    assert detect_layout(voc) == "voc"
    assert len(load_dataset_spec(voc, "train").records) == 1
    (tmp_path / "junk").mkdir()
    with pytest.raises(UserError, match="expected"):
        load_dataset_spec(tmp_path / "junk", "train")
    with pytest.raises(UserError, match="does not exist"):
        load_dataset_spec(tmp_path / "nowhere", "train")


def test_header_size_honours_exif_orientation(tmp_path: Path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    Image.new("RGB", (40, 20)).save(tmp_path / "r.jpg", exif=exif)
    assert image_size(tmp_path / "r.jpg") == (20, 40)
    png_exif = Image.Exif()
    png_exif[0x0112] = 8
    Image.new("RGB", (40, 20)).save(tmp_path / "r.png", exif=png_exif)
    assert image_size(tmp_path / "r.png") == (20, 40)
