"""CocoEvaluator on hand-built cases with known answers, on BCCD's own ground truth, and
across two gloo ranks."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fcosdet.data.records import ImageRecord
from fcosdet.engine.evaluation.coco import CocoEvaluator, format_table, save_metrics

CLASSES = ["cat", "dog"]
BCCD_VAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bccd" / "val.json"


def _records() -> list[ImageRecord]:
    """Three images: two boxes, one box, no boxes (boxes x1y1x2y2, labels in [0, 2))."""
    return [
        ImageRecord(path="a.jpg", width=200, height=200, image_id=1,
                    boxes=np.array([[10, 10, 110, 110], [120, 20, 180, 60]], np.float32),
                    labels=np.array([0, 1]), iscrowd=np.zeros(2, bool)),
        ImageRecord(path="b.jpg", width=300, height=100, image_id=7,
                    boxes=np.array([[0, 0, 100, 100]], np.float32),
                    labels=np.array([1]), iscrowd=np.zeros(1, bool)),
        ImageRecord(path="c.jpg", width=50, height=50, image_id=9),
    ]


def _perfect(records: list[ImageRecord]) -> list[dict]:
    return [{"image_id": r.image_id, "boxes": torch.as_tensor(r.boxes),
             "scores": torch.ones(len(r.boxes)), "labels": torch.as_tensor(r.labels)}
            for r in records]


def _evaluate(records: list[ImageRecord], detections: list[dict]) -> dict:
    evaluator = CocoEvaluator(records=records, class_names=CLASSES)
    evaluator.process(detections)
    return evaluator.evaluate()


def test_perfect_detections_give_ap_one():
    metrics = _evaluate(_records(), _perfect(_records()))
    for key in ("AP", "AP50", "AP75"):
        assert metrics[key] == pytest.approx(1.0, abs=1e-6)
    assert set(metrics["per_class"]) == set(CLASSES)
    assert all(ap == pytest.approx(1.0, abs=1e-6) for ap in metrics["per_class"].values())
    # No small boxes exist: COCO's -1 is reported as 0.0, never NaN or negative.
    assert metrics["APs"] == 0.0
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("AP", "AP50", "AP75", "APs", "APm", "APl"))


def test_wrong_class_gives_zero():
    detections = _perfect(_records())
    for det in detections:
        det["labels"] = 1 - det["labels"]
    metrics = _evaluate(_records(), detections)
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0
    assert metrics["per_class"] == {"cat": 0.0, "dog": 0.0}


def test_iou_0_6_counts_at_ap50_not_ap75():
    record = ImageRecord(path="x.jpg", width=200, height=200, image_id=3,
                         boxes=np.array([[0, 0, 100, 100]], np.float32), labels=np.array([0]))
    # Same left/top/right edges, 60 % of the height: IoU = 6000 / 10000 = 0.6 exactly.
    det = {"image_id": 3, "boxes": np.array([[0, 0, 100, 60]]), "scores": np.array([0.9]),
           "labels": np.array([0])}
    metrics = _evaluate([record], [det])
    assert metrics["AP50"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["AP75"] == 0.0
    thresholds = np.linspace(0.5, 0.95, 10)  # COCO's IoU thresholds
    assert metrics["AP"] == pytest.approx(float(np.mean(thresholds <= 0.6)), abs=1e-6)
    assert metrics["per_class"]["dog"] is None  # no dog ground truth


def test_empty_detections_give_zero():
    evaluator = CocoEvaluator(records=_records(), class_names=CLASSES)
    assert evaluator.evaluate()["AP"] == 0.0
    evaluator.process([{"image_id": 1, "boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                        "labels": torch.zeros(0, dtype=torch.long)}])
    metrics = evaluator.evaluate()
    assert metrics["AP"] == 0.0 and metrics["AP50"] == 0.0
    assert metrics["per_class"] == {"cat": 0.0, "dog": 0.0}


def test_chunked_process_equals_single_call():
    records = _records()
    rng = np.random.default_rng(0)
    detections = []
    for r in records:
        # Jittered copies of the GT (true labels) plus random boxes with random labels.
        corners = rng.uniform(0, 40, (5, 2))  # (5, 2) x1y1
        random_boxes = np.concatenate([corners, corners + rng.uniform(10, 60, (5, 2))], 1)
        boxes = np.concatenate([r.boxes, random_boxes], 0)  # (G + 5, 4)
        boxes = boxes + rng.normal(0, 3, boxes.shape)
        detections.append({"image_id": r.image_id, "boxes": boxes,
                           "scores": rng.uniform(0, 1, len(boxes)),
                           "labels": np.concatenate([r.labels, rng.integers(0, 2, 5)])})
    whole = _evaluate(records, detections)
    assert 0.0 < whole["AP50"] < 1.0
    evaluator = CocoEvaluator(records=records, class_names=CLASSES)
    for det in detections:
        evaluator.process([det])
    assert evaluator.evaluate() == whole
    evaluator.reset()
    assert evaluator.evaluate()["AP"] == 0.0


def test_results_json_round_trip(tmp_path):
    evaluator = CocoEvaluator(records=_records(), class_names=CLASSES)
    evaluator.process([{"image_id": 7, "boxes": np.array([[10.0, 20.0, 40.0, 70.0]]),
                        "scores": np.array([0.5]), "labels": np.array([1])}])
    path = evaluator.save_results(tmp_path / "out" / "results.json")
    loaded = json.loads(path.read_text())
    assert loaded == [{"image_id": 7, "category_id": 2, "bbox": [10.0, 20.0, 30.0, 50.0],
                       "score": 0.5}]


def test_unknown_image_and_bad_label_raise():
    evaluator = CocoEvaluator(records=_records(), class_names=CLASSES)
    with pytest.raises(ValueError):
        evaluator.process([{"image_id": 123, "boxes": np.zeros((0, 4)), "scores": [], "labels": []}])
    with pytest.raises(ValueError):
        evaluator.process([{"image_id": 1, "boxes": np.zeros((1, 4)), "scores": [1.0], "labels": [2]}])


def test_crowd_ground_truth_is_ignored():
    record = ImageRecord(path="x.jpg", width=100, height=100, image_id=1,
                         boxes=np.array([[0, 0, 50, 50], [60, 60, 90, 90]], np.float32),
                         labels=np.array([0, 0]), iscrowd=np.array([False, True]))
    det = {"image_id": 1, "boxes": np.array([[0, 0, 50, 50], [62, 62, 88, 88]]),
           "scores": np.array([0.9, 0.8]), "labels": np.array([0, 0])}
    # The detection inside the crowd region is neither a true nor a false positive.
    assert _evaluate([record], [det])["AP"] == pytest.approx(1.0, abs=1e-6)


def test_format_table_and_save_metrics(tmp_path):
    metrics = _evaluate(_records(), _perfect(_records()))
    metrics["per_class"]["dog"] = None
    table = format_table(metrics)
    assert "AP50" in table and "cat" in table and "n/a" in table and "1.000" in table
    saved = json.loads(save_metrics(metrics, tmp_path / "m.json").read_text())
    assert saved["per_class"]["dog"] is None and saved["AP"] == metrics["AP"]


@pytest.mark.usefixtures("shared_data")  # fails, never skips, without ../shared/data
def test_bccd_ground_truth_as_detections_gives_ap_one():
    import contextlib
    import io

    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(BCCD_VAL))
    cats = sorted(coco.getCatIds())
    assert cats == [1, 2, 3]
    names = [coco.cats[c]["name"] for c in cats]
    records, detections = [], []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        xywh = np.array([a["bbox"] for a in anns], np.float64).reshape(-1, 4)  # (G, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)  # (G, 4) x1y1x2y2
        labels = np.array([a["category_id"] - 1 for a in anns], np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], bool)
        records.append(ImageRecord(path=info["file_name"], width=info["width"],
                                   height=info["height"], boxes=boxes.astype(np.float32),
                                   labels=labels, iscrowd=crowd, image_id=image_id))
        detections.append({"image_id": image_id, "boxes": boxes, "labels": labels,
                           "scores": np.ones(len(boxes))})
    evaluator = CocoEvaluator(records=records, class_names=names)
    evaluator.process(detections)
    metrics = evaluator.evaluate()
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["AP50"] == pytest.approx(1.0, abs=1e-6)
    assert set(metrics["per_class"]) == {"WBC", "RBC", "Platelets"}


def _distributed_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        records = _records()
        detections = _perfect(records)
        evaluator = CocoEvaluator(records=records, class_names=CLASSES)
        # Rank 0 gets images 0 and 1, rank 1 gets 2 and (padding) 0 again.
        mine = [detections[0], detections[1]] if rank == 0 else [detections[2], detections[0]]
        evaluator.process(mine)
        metrics = evaluator.evaluate()
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_distributed_gather_and_broadcast(tmp_path):
    # fork: the children reuse this process's imported torch instead of importing it again.
    mp.start_processes(_distributed_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                       join=True, start_method="fork")
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == rank1
    assert rank0["AP"] == pytest.approx(1.0, abs=1e-6)
