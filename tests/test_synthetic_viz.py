"""The synthetic shapes dataset (determinism, box validity, reuse) and the drawing helpers."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fcosdet.analysis.viz import draw_detections, plot_curves
from fcosdet.data import synthetic
from fcosdet.data.records import ImageRecord
from fcosdet.data.synthetic import MAX_OBJECTS, SYNTHETIC_CLASSES, ensure_synthetic_dataset, make_synthetic_dataset
from fcosdet.engine.evaluation.coco import CocoEvaluator
from fcosdet.errors import UserError

SMALL = {"num_train": 6, "num_val": 3, "image_size": (128, 160), "seed": 3}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _xyxy(bbox: list[float]) -> list[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def test_same_seed_gives_identical_files(tmp_path):
    make_synthetic_dataset(tmp_path / "a", **SMALL)
    make_synthetic_dataset(tmp_path / "b", **SMALL)
    digest_a = _digest(tmp_path / "a")
    assert digest_a == _digest(tmp_path / "b")
    assert sum(name.startswith("images/") for name in digest_a) == 9
    make_synthetic_dataset(tmp_path / "c", **{**SMALL, "seed": 4})
    assert _digest(tmp_path / "c")["train.json"] != digest_a["train.json"]


def test_layout_yaml_and_coco_fields(tmp_path):
    info = make_synthetic_dataset(tmp_path, **SMALL)
    spec = yaml.safe_load((tmp_path / "dataset.yaml").read_text())
    assert spec == {"format": "coco", "root": ".",
                    "train": {"images": "images", "annotations": "train.json"},
                    "val": {"images": "images", "annotations": "val.json"},
                    "names": SYNTHETIC_CLASSES}
    assert info["num_images"] == {"train": 6, "val": 3} and info["reused"] is False
    for split in ("train", "val"):
        coco = json.loads((tmp_path / f"{split}.json").read_text())
        assert [c["id"] for c in coco["categories"]] == list(range(1, len(SYNTHETIC_CLASSES) + 1))
        per_image = np.bincount([a["image_id"] for a in coco["annotations"]],
                                minlength=len(coco["images"]) + 1)[1:]
        assert per_image.min() >= 1 and per_image.max() <= MAX_OBJECTS
        for img in coco["images"]:
            with Image.open(tmp_path / "images" / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"]) == (160, 128)
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 160 and y + h <= 128
            assert ann["area"] == pytest.approx(w * h) and ann["iscrowd"] == 0
            assert 1 <= ann["category_id"] <= len(SYNTHETIC_CLASSES)


def test_sizes_span_small_to_large_and_all_classes_appear():
    sides, labels = [], []
    for index in range(40):
        _, boxes, lab = synthetic._render_image(np.random.default_rng([0, 0, index]), (256, 256))
        sides.extend(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        labels.extend(lab)
    assert min(sides) < 20 and max(sides) > 100
    assert set(labels) == set(range(len(SYNTHETIC_CLASSES)))


def test_rasterized_box_is_tight_to_the_mask():
    rng = np.random.default_rng(1)
    for label in range(len(SYNTHETIC_CLASSES)):
        for size in (12.0, 40.0, 120.0):
            polygon = synthetic._place_polygon(label, size, (256, 256), rng)
            mask, (rows, cols), box = synthetic._rasterize(polygon, (256, 256))
            full = np.zeros((256, 256), bool)
            full[rows, cols] = mask
            ys, xs = np.nonzero(full)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert 0.6 * size <= max(box[2] - box[0], box[3] - box[1]) <= size + 2


def test_box_edges_touch_drawn_shapes():
    """Just inside each edge of an unoccluded box some pixel differs strongly from the one
    just outside (an occluded edge may lie under another shape, so overlapping boxes are
    skipped)."""
    checked = 0
    for index in range(30):
        image, boxes, _ = synthetic._render_image(np.random.default_rng([5, 0, index]), (256, 256))
        luma = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
        for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
            others = np.delete(boxes, i, 0)  # (G - 1, 4); keep a 1 px margin from them
            if np.any((others[:, 0] <= x2) & (others[:, 2] >= x1 - 1)
                      & (others[:, 1] <= y2) & (others[:, 3] >= y1 - 1)):
                continue
            if x1 == 0 or y1 == 0 or x2 == 256 or y2 == 256:
                continue
            jumps = [np.abs(luma[y1:y2, x1] - luma[y1:y2, x1 - 1]).max(),
                     np.abs(luma[y1:y2, x2 - 1] - luma[y1:y2, x2]).max(),
                     np.abs(luma[y1, x1:x2] - luma[y1 - 1, x1:x2]).max(),
                     np.abs(luma[y2 - 1, x1:x2] - luma[y2, x1:x2]).max()]
            assert min(jumps) > 25
            checked += 1
    assert checked > 15


def test_ground_truth_as_detections_scores_ap_one(tmp_path):
    make_synthetic_dataset(tmp_path, **SMALL)
    coco = json.loads((tmp_path / "val.json").read_text())
    records, detections = [], []
    for img in coco["images"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == img["id"]]
        boxes = np.array([_xyxy(a["bbox"]) for a in anns], np.float32).reshape(-1, 4)
        labels = np.array([a["category_id"] - 1 for a in anns], np.int64)
        records.append(ImageRecord(path=img["file_name"], width=img["width"],
                                   height=img["height"], boxes=boxes, labels=labels,
                                   iscrowd=np.zeros(len(anns), bool), image_id=img["id"]))
        detections.append({"image_id": img["id"], "boxes": boxes, "labels": labels,
                           "scores": np.ones(len(anns))})
    evaluator = CocoEvaluator(records=records, class_names=SYNTHETIC_CLASSES)
    evaluator.process(detections)
    assert evaluator.evaluate()["AP"] == pytest.approx(1.0, abs=1e-6)


def test_ensure_reuses_or_regenerates(tmp_path):
    first = ensure_synthetic_dataset(tmp_path, **SMALL)
    assert first["reused"] is False
    before = _digest(tmp_path)
    mtime = (tmp_path / "train.json").stat().st_mtime_ns
    again = ensure_synthetic_dataset(tmp_path, **SMALL)
    assert again["reused"] is True and again["num_boxes"] == first["num_boxes"]
    assert (tmp_path / "train.json").stat().st_mtime_ns == mtime
    # Different parameters regenerate, and stale images of the old generation disappear.
    changed = ensure_synthetic_dataset(tmp_path, **{**SMALL, "num_train": 4})
    assert changed["reused"] is False and not (tmp_path / "images" / "train_00005.jpg").exists()
    # A missing image forces regeneration too.
    (tmp_path / "images" / "val_00000.jpg").unlink()
    assert ensure_synthetic_dataset(tmp_path, **{**SMALL, "num_train": 4})["reused"] is False
    ensure_synthetic_dataset(tmp_path, **SMALL)
    assert _digest(tmp_path) == before


def test_bad_parameters_raise_user_error(tmp_path):
    with pytest.raises(UserError):
        make_synthetic_dataset(tmp_path, num_train=0)
    with pytest.raises(UserError):
        make_synthetic_dataset(tmp_path, image_size=(32, 32))


def test_draw_detections_draws_box_edges_and_respects_threshold():
    image = Image.new("RGB", (120, 90), (128, 128, 128))
    out = draw_detections(image, boxes=np.array([[20, 30, 80, 70], [5, 5, 15, 15]]),
                          labels=[1, 0], scores=[0.87, 0.1], class_names=["a", "b"])
    assert out.size == image.size and out is not image
    assert image.getpixel((50, 70)) == (128, 128, 128)  # input untouched
    assert out.getpixel((50, 70)) != (128, 128, 128)  # bottom edge of the kept box
    assert out.getpixel((80, 50)) != (128, 128, 128)  # right edge
    assert out.getpixel((50, 50)) == (128, 128, 128)  # box interior
    assert out.getpixel((10, 15)) == (128, 128, 128)  # the 0.1-score box is not drawn
    gt = draw_detections(image.convert("L"), boxes=[[20, 30, 80, 70]], labels=[0],
                         scores=None, class_names=["a", "b"])
    assert gt.mode == "RGB" and gt.getpixel((20, 50)) != (128, 128, 128)


def test_plot_curves_writes_png(tmp_path):
    log = tmp_path / "log.jsonl"
    rows = [{"iter": i, "loss": 3.0 / (i + 1), "loss_cls": 1.0 / (i + 1), "loss_box": 0.5,
             "lr": 0.01} for i in range(0, 50, 5)]
    rows += [{"epoch": 1, "iter": 25, "AP": 0.2, "AP50": 0.4},
             {"epoch": 2, "iter": 50, "AP": 0.35, "AP50": 0.6}]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n{truncated")
    out = plot_curves(log, tmp_path / "plots" / "curves.png")
    assert out.stat().st_size > 1000
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]  # two panels side by side
    with pytest.raises(UserError):
        plot_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")
