"""Detector.predict returns one Results per image (boxes, scores, labels, names, category ids,
source path, original size; to_coco / to_json / draw / save), and `fcosdet predict` writes its
files through them, takes eval's test settings and --classes, and explains empty drawings."""
import json

import numpy as np
import pytest
from helpers import error_line
from PIL import Image
from test_predictor import _state

from fcosdet.cli.main import build_parser
from fcosdet.cli.main import run as cli
from fcosdet.deploy.build import build_inference
from fcosdet.deploy.export import export_model
from fcosdet.deploy.predictor import Detector
from fcosdet.deploy.results import Results
from fcosdet.errors import UserError

IMAGES = ["bccd/images/BloodImage_00000.jpg", "coco128/images/000000000036.jpg"]  # 640 x 480, 481 x 640
IDS = [3, 7, 9]  # the dataset's category id of the labels 0, 1, 2


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    model_file = _state()
    model_file.category_ids = IDS
    return export_model(build_inference(model_file), "weights", tmp_path_factory.mktemp("res") / "m.safetensors")


@pytest.fixture(scope="module")
def images(shared_data):
    return [shared_data / p for p in IMAGES]


def test_predict_gives_one_results_per_image(weights, images):
    det = Detector.from_file(weights)
    one = det.predict(images[0])
    assert isinstance(one, Results) and one.path == images[0] and one.orig_size == (480, 640)
    assert one.names == ["a", "b", "c"] and one.category_ids == IDS
    assert 0 < len(one) == len(one.scores) == len(one.labels) and one.boxes.shape == (len(one), 4)
    assert one.class_names == [["a", "b", "c"][i] for i in one.labels.tolist()]
    pixels = np.array(Image.open(images[1]).convert("RGB"))
    many = det.predict([images[0], pixels])
    assert isinstance(many, list) and [type(r) for r in many] == [Results, Results]
    assert many[1].path is None and many[1].orig_size == (640, 481)
    assert [len(r) for r in det.predict_batch((images[0], pixels))] == [len(r) for r in many]
    assert isinstance(det.predict((images[0],)), list)


def test_to_coco_and_to_json_use_xywh_and_the_models_category_ids(weights, images):
    r = Detector.from_file(weights).predict(images[0])
    coco = r.to_coco(image_id=12)
    assert len(coco) == len(r)
    for d, box, score, label in zip(coco, r.boxes.tolist(), r.scores.tolist(), r.labels.tolist()):
        assert d["file_name"] == str(images[0]) and d["image_id"] == 12
        assert d["category_id"] == IDS[label] and d["category"] == ["a", "b", "c"][label]
        x1, y1, x2, y2 = box
        assert d["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.01)
        assert d["score"] == pytest.approx(score, abs=1e-5)
    assert json.loads(r.to_json()) == r.to_coco() and "image_id" not in r.to_coco()[0]


def test_draw_and_save(weights, images, tmp_path):
    det = Detector.from_file(weights)
    r = det.predict(images[0])
    source = np.array(Image.open(images[0]).convert("RGB"))
    drawn = np.array(r.draw(score_thr=r.max_score))  # the source file, with the best box
    assert drawn.shape == source.shape and (drawn != source).any()
    assert (np.array(r.draw(score_thr=r.max_score + 1e-3)) == source).all()  # above every score: no box
    png = r.save(tmp_path / "out" / "x.png", score_thr=r.max_score)
    assert (np.array(Image.open(png)) == drawn).all()
    in_memory = det.predict(source)
    with pytest.raises(UserError, match="in-memory image"):
        in_memory.draw()
    assert (np.array(in_memory.draw(source, score_thr=r.max_score)) == drawn).all()
    with pytest.raises(UserError, match="pass the image that was predicted"):
        r.draw(Image.open(images[1]))


def test_cli_predict_writes_the_results_and_takes_test_settings(weights, images, tmp_path, capsys):
    det = Detector.from_file(weights)
    out = tmp_path / "pred"
    cli(["predict", str(weights), *map(str, images), "--out", str(out)])
    written = json.loads((out / "predictions.json").read_text())
    assert written == [d for r in det.predict(images) for d in r.to_coco()] and written
    assert {d["category_id"] for d in written} <= set(IDS)
    cli(["predict", str(weights), *map(str, images), "--out", str(out), "--set", "test.max_per_img=3",
         "--set", "test.nms_iou=0.3"])
    capped = json.loads((out / "predictions.json").read_text())
    ref = Detector.from_file(weights, test_overrides={"test.max_per_img": 3, "test.nms_iou": 0.3}).predict(images)
    assert capped == [d for r in ref for d in r.to_coco()] and [len(r) for r in ref] == [3, 3]
    assert "test.* keys" in error_line(capsys, ["predict", str(weights), str(images[0]), "--out", str(out),
                                                     "--set", "model.depth=50"])
    err = error_line(capsys, ["predict", str(weights), str(images[0]), "--out", str(out), "--score-thr", "0.1",
                                   "--set", "test.score_thr=0.2"])
    assert "--score-thr 0.1" in err and "test.score_thr=0.2" in err


def test_cli_predict_keeps_only_the_classes_asked_for(weights, images, tmp_path, capsys):
    every = [d for r in Detector.from_file(weights).predict(images) for d in r.to_coco()]
    assert len({d["category"] for d in every}) > 1  # so that keeping one class drops detections
    keep = sorted({d["category"] for d in every})[:1]
    out = tmp_path / "pred"
    cli(["predict", str(weights), *map(str, images), "--out", str(out), "--classes", *keep])
    written = json.loads((out / "predictions.json").read_text())
    assert written == [d for d in every if d["category"] in keep] and written
    err = error_line(capsys, ["predict", str(weights), str(images[0]), "--out", str(out),
                                   "--classes", "a", "zebra"])
    assert "'zebra'" in err and "a, b, c" in err


def test_cli_predict_says_why_drawings_are_empty(weights, images, tmp_path, capsys):
    best = max(r.max_score for r in Detector.from_file(weights).predict(images))
    out = tmp_path / "pred"
    capsys.readouterr()
    cli(["predict", str(weights), *map(str, images), "--out", str(out), "--draw-thr", f"{best + 0.01:.4f}"])
    printed = capsys.readouterr().out
    line = [s for s in printed.splitlines() if "show no box" in s]
    assert len(line) == 1 and "2 of 2 drawings" in line[0] and f"highest {best:.3f}" in line[0]
    assert "lower --draw-thr" in line[0]
    drawn = np.array(Image.open(out / "bccd" / "images" / "BloodImage_00000_det.jpg"))  # under the common folder
    assert drawn.shape == (480, 640, 3)
    cli(["predict", str(weights), *map(str, images), "--out", str(out), "--draw-thr", f"{best - 0.01:.4f}"])
    assert "2 of 2 drawings show no box" not in capsys.readouterr().out  # the best box is drawn


def test_every_predict_option_has_a_help_line():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    actions = [a for a in sub.choices["predict"]._actions if a.dest != "help"]
    assert {"out", "classes", "set", "score_thr"} <= {a.dest for a in actions}
    assert [a.dest for a in actions if not a.help] == []
