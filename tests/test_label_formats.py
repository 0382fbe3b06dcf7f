"""Predictions as labels (`fcosdet predict ... --save-format coco yolo voc labelstudio cvat`), the
way a user reaches it: a model file, image files in two sub-folders (three sizes), the CLI. The
COCO, YOLO and VOC folders read back through fcosdet's readers (`check-data` and
`load_dataset_spec`) give the run's detections (predictions.json: the Results) within 0.5 px and
with the same classes; the Label Studio tasks follow its documented schema (percent of the
original size); the CVAT XML parses as CVAT for images 1.1; a prediction folder trains as it is."""
from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from helpers import SPREAD_IDS, SPREAD_NAMES, SPREAD_TINY, spread_model
from test_safety import SMALL, _one_error_line

from fcosdet.cli.main import main
from fcosdet.cli.main import run as cli
from fcosdet.data.layout import load_dataset_spec
from fcosdet.deploy.label_formats import MIN_SIDE_PX
from fcosdet.io.model_file import ModelFile

NAMES, IDS, TINY = SPREAD_NAMES, SPREAD_IDS, SPREAD_TINY
IMAGES = {"bccd/BloodImage_00000.jpg": "bccd/images/BloodImage_00000.jpg",  # 640 x 480
          "bccd/BloodImage_00001.jpg": "bccd/images/BloodImage_00001.jpg",
          "coco/000000000036.jpg": "coco128/images/000000000036.jpg",  # 481 x 640
          "coco/aquarium.jpg": "aquarium/images/IMG_2274_jpeg_jpg.rf.2f319e949748145fb22dcb52bb325a0c.jpg"}
SIZES = {"bccd/BloodImage_00000.jpg": (640, 480), "bccd/BloodImage_00001.jpg": (640, 480),
         "coco/000000000036.jpg": (481, 640), "coco/aquarium.jpg": (768, 1024)}  # (width, height)
FORMATS = ["coco", "yolo", "voc", "labelstudio", "cvat"]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return spread_model(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def images(tmp_path_factory, shared_data) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for rel, src in IMAGES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_data / src, root / rel)
    return root


@pytest.fixture(scope="module")
def predicted(model_file, images, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("pred")
    cli(["predict", str(model_file), str(images / "bccd"), str(images / "coco"), "--out", str(out),
         "--score-thr", "0", "--device", "cpu", "--save-format", *FORMATS])
    detections = json.loads((out / "predictions.json").read_text())
    return {"out": out, "root": images, "detections": detections}


def _expected(predicted: dict, *, score_thr: float = 0.0) -> dict[str, list[tuple[str, list[float]]]]:
    """Per image path relative to the root: (class name, x1y1x2y2) of the run's detections a label file keeps."""
    per_image: dict[str, list] = {rel: [] for rel in IMAGES}
    for d in predicted["detections"]:
        x, y, w, h = d["bbox"]
        if d["score"] >= score_thr and w >= MIN_SIDE_PX and h >= MIN_SIDE_PX:
            rel = Path(d["file_name"]).resolve().relative_to(predicted["root"].resolve()).as_posix()
            per_image[rel].append((d["category"], [x, y, x + w, y + h]))
    return per_image


def _assert_same(got: dict[str, list], want: dict[str, list]) -> None:
    """Same images; per image, each wanted box has its own read-back box of the same class within 0.5 px."""
    assert sorted(got) == sorted(want)
    for rel, boxes in want.items():
        assert len(got[rel]) == len(boxes), rel
        free = list(got[rel])
        for name, box in boxes:
            same = [g for g in free if g[0] == name]
            assert same, (rel, name, box)
            best = min(same, key=lambda g: np.abs(np.asarray(g[1]) - np.asarray(box)).max())
            assert np.abs(np.asarray(best[1]) - np.asarray(box)).max() <= 0.5, (rel, best, box)
            free.remove(best)


def _read_back(dataset: Path, root: Path) -> dict[str, list]:
    split = load_dataset_spec(dataset, "train")
    got = {}
    for record in split.records:
        rel = Path(record.path).resolve().relative_to(root.resolve()).as_posix()
        got[rel] = [(split.class_names[label], box.tolist()) for box, label in zip(record.boxes, record.labels)]
    return got


def test_the_run_has_boxes_of_every_size(predicted):
    """Guard for the tests below: detections on every image, some dropped as under 1 px or not."""
    per_image = _expected(predicted)
    assert all(len(v) > 0 for v in per_image.values()), {k: len(v) for k, v in per_image.items()}
    assert len({name for v in per_image.values() for name, _ in v}) >= 2


@pytest.mark.parametrize("fmt, dataset", [("coco", "coco"), ("yolo", "yolo"), ("yolo", "yolo/data.yaml"),
                                          ("voc", "voc"), ("voc", "voc/dataset.yaml")])
def test_dataset_formats_read_back_as_the_results(predicted, fmt, dataset, capsys):
    out, want = predicted["out"], _expected(predicted)
    _assert_same(_read_back(out / dataset, predicted["root"]), want)
    cli(["check-data", str(out / dataset), "--splits", "train"])
    boxes = sum(len(v) for v in want.values())
    assert f"train: {len(IMAGES)} images, {boxes} boxes from" in capsys.readouterr().out


def test_coco_files_keep_the_model_ids_and_results(predicted):
    out = predicted["out"] / "coco"
    data = json.loads((out / "annotations.json").read_text())
    assert [(c["id"], c["name"]) for c in data["categories"]] == list(zip(IDS, NAMES))
    assert {im["file_name"]: (im["width"], im["height"]) for im in data["images"]} == SIZES
    for ann in data["annotations"]:
        assert ann["iscrowd"] == 0 and abs(ann["area"] - ann["bbox"][2] * ann["bbox"][3]) < 0.1 and "score" not in ann
    results = json.loads((out / "results.json").read_text())
    assert len(results) == len(data["annotations"])
    assert [r["bbox"] for r in results] == [a["bbox"] for a in data["annotations"]]
    assert all(0.0 <= r["score"] <= 1.0 and r["category_id"] in IDS for r in results)
    assert load_dataset_spec(out, "train").category_ids == IDS


def test_yolo_lines_are_normalised_and_voc_names_in_label_order(predicted):
    out = predicted["out"]
    lines = (out / "yolo/labels/coco/000000000036.txt").read_text().splitlines()
    values = np.asarray([[float(t) for t in line.split()] for line in lines])
    assert values.shape[1] == 5 and (values[:, 1:] >= 0).all() and (values[:, 1:] <= 1).all()
    assert set(values[:, 0].astype(int)) <= {0, 1, 2}
    assert (out / "yolo/train.txt").read_text().splitlines()[0] == "./images/bccd/BloodImage_00000.jpg"
    assert load_dataset_spec(out / "voc/dataset.yaml", "train").class_names == NAMES
    xml = ET.parse(out / "voc/Annotations/coco__000000000036.xml").getroot()
    assert (xml.findtext("filename"), xml.findtext("size/width"), xml.findtext("size/height")) == (
        "coco/000000000036.jpg", "481", "640")


def test_labelstudio_tasks_follow_the_documented_schema(predicted):
    out, want = predicted["out"] / "labelstudio", _expected(predicted)
    tasks = json.loads((out / "tasks.json").read_text())
    assert len(tasks) == len(IMAGES)
    got = {}
    for task in tasks:
        url = task["data"]["image"]
        assert url.startswith(f"/data/local-files/?d={predicted['root'].name}/")
        rel = url.split("/", 3)[3].split("=", 1)[1].split("/", 1)[1]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "fcosdet model.pt" and 0 < prediction["score"] <= 1
        got[rel] = []
        for item in prediction["result"]:
            assert (item["type"], item["from_name"], item["to_name"], item["image_rotation"]) == (
                "rectanglelabels", "label", "image", 0)
            w, h, v = item["original_width"], item["original_height"], item["value"]
            assert v["rotation"] == 0 and 0 <= v["x"] <= 100 and 0 < v["width"] <= 100 and 0 <= item["score"] <= 1
            box = [v["x"] * w / 100, v["y"] * h / 100, (v["x"] + v["width"]) * w / 100, (v["y"] + v["height"]) * h / 100]
            got[rel].append((v["rectanglelabels"][0], box))
            assert (w, h) == SIZES[rel]
    _assert_same(got, want)
    config = ET.parse(out / "label_config.xml").getroot()
    assert config.find("Image").get("name") == "image"
    rect = config.find("RectangleLabels")
    assert (rect.get("name"), rect.get("toName")) == ("label", "image")
    assert [label.get("value") for label in rect.findall("Label")] == NAMES


def test_cvat_xml_is_cvat_for_images_1_1(predicted):
    root = ET.parse(predicted["out"] / "cvat/annotations.xml").getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    assert [label.findtext("name") for label in root.findall("meta/task/labels/label")] == NAMES
    assert root.findtext("meta/task/size") == str(len(IMAGES))
    images = root.findall("image")
    assert [im.get("id") for im in images] == [str(i) for i in range(len(IMAGES))]
    assert [im.get("name") for im in images] == sorted(IMAGES)
    got = {}
    for im in images:
        assert (int(im.get("width")), int(im.get("height"))) == SIZES[im.get("name")]
        got[im.get("name")] = []
        for box in im.findall("box"):
            assert box.get("occluded") == "0" and box.find("attribute") is None
            got[im.get("name")].append((box.get("label"), [float(box.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")]))
    _assert_same(got, _expected(predicted))


def test_score_thr_and_save_conf(model_file, images, predicted, tmp_path):
    """Only boxes at or above --score-thr; --save-conf adds YOLO's 6th column and the attributes."""
    scores = sorted({d["score"] for d in predicted["detections"]})
    middle = range(len(scores) // 4, 3 * len(scores) // 4)
    k = max(middle, key=lambda i: scores[i + 1] - scores[i])  # a threshold in the widest gap of the middle
    thr = (scores[k] + scores[k + 1]) / 2
    out = tmp_path / "pred"  # the same images in the same batch as `predicted`, a higher threshold
    cli(["predict", str(model_file), str(images / "bccd"), str(images / "coco"), "--out", str(out),
         "--score-thr", str(thr), "--device", "cpu", "--save-format", "yolo", "cvat", "coco", "voc", "--save-conf"])
    rows = [line.split() for p in (out / "yolo/labels").rglob("*.txt") for line in p.read_text().splitlines()]
    want = sum(len(v) for v in _expected(predicted, score_thr=thr).values())
    assert 0 < len(rows) == want < sum(len(v) for v in _expected(predicted).values())
    assert all(len(r) == 6 and float(r[5]) >= thr for r in rows)
    cvat = ET.parse(out / "cvat/annotations.xml").getroot()
    assert all(float(b.findtext("attribute[@name='score']")) >= thr for b in cvat.iter("box"))
    assert cvat.find("meta/task/labels/label/attributes/attribute").findtext("name") == "score"
    anns = json.loads((out / "coco/annotations.json").read_text())["annotations"]
    assert len(anns) == want and all(a["score"] >= thr for a in anns)
    assert all(float(o.findtext("score")) >= thr for p in (out / "voc/Annotations").glob("*.xml")
               for o in ET.parse(p).getroot().iter("object"))


def test_bad_uses_are_one_line_errors(model_file, images, tmp_path, capsys):
    base = ["predict", str(model_file), str(images / "bccd"), "--device", "cpu"]
    with pytest.raises(SystemExit) as code:
        main([*base, "--out", str(tmp_path / "a"), "--save-conf"])
    assert "--save-format" in _one_error_line(capsys, code)
    (tmp_path / "b" / "yolo" / "images").mkdir(parents=True)  # not predict's link: never replaced
    with pytest.raises(SystemExit) as code:
        main([*base, "--out", str(tmp_path / "b"), "--save-format", "yolo"])
    assert "choose another --out" in _one_error_line(capsys, code)
    nested = tmp_path / "ds" / "x"
    (nested / "images").mkdir(parents=True)
    shutil.copy(images / "bccd/BloodImage_00000.jpg", nested / "images" / "a.jpg")
    shutil.copy(images / "bccd/BloodImage_00001.jpg", nested / "b.jpg")
    with pytest.raises(SystemExit) as code:
        main(["predict", str(model_file), str(nested), "--device", "cpu", "--out", str(tmp_path / "c"),
              "--save-format", "yolo"])
    assert "'images'" in _one_error_line(capsys, code)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["yolo", "coco", "voc/dataset.yaml"])
def test_a_prediction_folder_trains_as_it_is(predicted, dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cli(["train", "fcos_r18_cpu", "--data", str(predicted["out"] / dataset), "--run-dir", str(run_dir), *SMALL,
         "--set", "train.max_iters=1", "--set", "data.val_split=none", "--set", "data.scale=[96,64]"])
    assert f"train: {len(IMAGES)} images" in capsys.readouterr().out
    assert ModelFile.load(run_dir / "last.pt").class_names == NAMES
