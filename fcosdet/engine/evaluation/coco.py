"""COCO-style box evaluation with pycocotools, built in memory from `ImageRecord`s.

Dimensions: N detections in one image, G ground-truth boxes in one image, C classes.
Conventions: inside the library boxes are (x1, y1, x2, y2) pixels of the ORIGINAL image and
labels are in [0, C). COCO's [x, y, w, h] boxes and 1-based category ids (= label + 1) appear
only in what this module hands to pycocotools and in the results file it writes.

Metrics: "AP" (IoU .50:.95), "AP50", "AP75", "APs", "APm", "APl" are floats in [0, 1]. Where
COCO reports -1 (no ground truth in that area range, or none at all) the value is 0.0.
"per_class" maps every class name to its AP (.50:.95), or to None for a class without
(non-crowd) ground truth in the evaluated images, so the dict never holds NaN or -1.
"AR1", "AR10", "AR100": COCO's average recall with at most 1 / 10 / 100 detections per image.
"images", "boxes": how many images and non-crowd ground-truth boxes were evaluated;
"boxes_by_size": non-crowd boxes per COCO area range (small <= 32², medium 32²..96², large
>= 96², bounds inclusive as COCOeval's), so a 0.0 APs can be told from "no small boxes".
After `evaluate()`, `pr_curves` holds per-class precision at IoU 0.5 over COCO's 101 recall
points (all areas, 100 detections), None for a class without ground truth.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torchvision.ops import box_convert

from fcosdet.data.records import ImageRecord
from fcosdet.distributed import world_size

SUMMARY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RECALL_KEYS = ("AR1", "AR10", "AR100")  # COCOeval stats[6:9]
SIZE_RANGES = {"APs": ("small", 0.0, 32.0 ** 2), "APm": ("medium", 32.0 ** 2, 96.0 ** 2),
               "APl": ("large", 96.0 ** 2, 1e10)}  # COCOeval's areaRng, bounds inclusive

# One image's predictions: boxes (N, 4) float64 x1y1x2y2, scores (N,) float64, labels (N,) int64.
Prediction = tuple[np.ndarray, np.ndarray, np.ndarray]


def to_numpy(value: Any, dtype: type) -> np.ndarray:
    """A tensor (any device, with or without grad), array or list as a numpy array of `dtype`."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def coco_boxes(boxes: Any) -> list[list[float]]:
    """(N, 4) x1y1x2y2 boxes (tensor, array or list) -> N COCO [x, y, w, h] lists of floats, in
    float64: the conversion at the file boundary (annotations, results files)."""
    xyxy = torch.from_numpy(to_numpy(boxes, np.float64).reshape(-1, 4))  # (N, 4)
    return box_convert(xyxy, "xyxy", "xywh").tolist()  # N x [x, y, w, h]


def _quiet() -> contextlib.AbstractContextManager:
    """pycocotools prints progress to stdout; swallow it."""
    return contextlib.redirect_stdout(io.StringIO())


def _build_coco_gt(records: list[ImageRecord], class_names: list[str]):
    """A pycocotools COCO object holding the records' boxes as ground truth."""
    from pycocotools.coco import COCO

    images, annotations = [], []
    for rec in records:
        images.append({"id": int(rec.image_id), "width": int(rec.width),
                       "height": int(rec.height), "file_name": str(rec.path)})
        xywh = coco_boxes(rec.boxes)  # (G, 4) x, y, w, h
        labels = np.asarray(rec.labels, dtype=np.int64).reshape(-1)  # (G,)
        crowd = np.asarray(rec.iscrowd, dtype=bool).reshape(-1)  # (G,)
        if crowd.size == 0 and labels.size > 0:
            crowd = np.zeros(labels.shape, dtype=bool)
        for (x, y, w, h), label, is_crowd in zip(xywh, labels, crowd):
            # COCOeval marks unmatched detections with gt id 0, so annotation ids start at 1.
            annotations.append({
                "id": len(annotations) + 1, "image_id": int(rec.image_id),
                "category_id": int(label) + 1, "bbox": [x, y, w, h],
                "area": w * h, "iscrowd": int(bool(is_crowd)),
            })
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(class_names)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with _quiet():
        coco.createIndex()
    return coco


class CocoEvaluator:
    """Accumulates detections over a dataset split and computes COCO box AP.

    Usage: `reset()`, then `process(...)` once per batch, then `evaluate()`. In a distributed
    run every rank calls `evaluate()`; detections are gathered to rank 0, which computes the
    metrics and broadcasts them, so every rank returns the same dict.
    """

    def __init__(self, *, records: list[ImageRecord], class_names: list[str]) -> None:
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        ids = [int(r.image_id) for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError("CocoEvaluator needs unique image_id values across the records")
        self._image_ids = set(ids)
        self._records = list(records)
        self._coco_gt = None  # built lazily: only rank 0 ever needs it
        self._predictions: dict[int, Prediction] = {}
        self.pr_curves: dict[str, Any] | None = None  # set by evaluate() (rank 0)

    @property
    def records(self) -> list[ImageRecord]:
        return self._records

    def predictions(self) -> dict[int, Prediction]:
        """image_id -> (boxes (N, 4) x1y1x2y2, scores (N,), labels (N,)) of the processed images."""
        return dict(self._predictions)

    def reset(self) -> None:
        self._predictions = {}

    def process(self, detections: list[dict]) -> None:
        """Stores one batch: dicts with image_id, boxes (N, 4) x1y1x2y2, scores (N,), labels (N,)."""
        for det in detections:
            image_id = int(det["image_id"])
            if image_id not in self._image_ids:
                raise ValueError(f"image_id {image_id} is not one of the evaluator's records")
            boxes = to_numpy(det["boxes"], np.float64).reshape(-1, 4)  # (N, 4)
            scores = to_numpy(det["scores"], np.float64).reshape(-1)  # (N,)
            labels = to_numpy(det["labels"], np.int64).reshape(-1)  # (N,)
            if not (len(boxes) == len(scores) == len(labels)):
                raise ValueError(f"image_id {image_id}: boxes, scores and labels differ in length")
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(f"image_id {image_id}: labels must lie in [0, {self.num_classes})")
            # A padded distributed sampler may repeat an image; the first copy wins.
            self._predictions.setdefault(image_id, (boxes, scores, labels))

    # ------------------------------------------------------------------ results file

    def results_json(self, *, category_ids: list[int] | None = None) -> list[dict]:
        """Detections in COCO results format: bbox [x, y, w, h], category_id = label + 1, or
        `category_ids[label]` (the dataset's id of each label, e.g. a COCO annotation file's).

        In a distributed run, after `evaluate()` rank 0 holds every rank's detections; the
        other ranks hold their own.
        """
        results = []
        for image_id in sorted(self._predictions):
            boxes, scores, labels = self._predictions[image_id]
            for xywh, score, label in zip(coco_boxes(boxes), scores, labels):
                results.append({
                    "image_id": image_id,
                    "category_id": int(label) + 1 if category_ids is None else category_ids[int(label)],
                    "bbox": xywh,
                    "score": float(score),
                })
        return results

    def save_results(self, path: str | Path, *, category_ids: list[int] | None = None) -> Path:
        """The results file for the user; `category_ids` (the dataset's id of each label, e.g. a
        COCO annotation file's or an imported COCO model's) replace label + 1."""
        results = self.results_json(category_ids=category_ids)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results))
        return path

    # ------------------------------------------------------------------ evaluation

    def evaluate(self) -> dict:
        """Returns {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class": {name: AP|None}}."""
        if world_size() == 1:
            return self._compute()
        self._gather_to_rank0()
        metrics = [self._compute() if dist.get_rank() == 0 else None]
        dist.broadcast_object_list(metrics, src=0)
        return metrics[0]

    def _gather_to_rank0(self) -> None:
        rank, world = dist.get_rank(), dist.get_world_size()
        gathered: list | None = [None] * world if rank == 0 else None
        dist.gather_object(self._predictions, gathered, dst=0)
        if rank != 0:
            return
        merged: dict[int, Prediction] = {}
        for part in gathered:
            for image_id, pred in part.items():
                merged.setdefault(image_id, pred)
        self._predictions = merged

    def _compute(self) -> dict:
        if self._coco_gt is None:
            self._coco_gt = _build_coco_gt(self._records, self.class_names)
        results = self.results_json()
        if not results:
            return self._empty_metrics()
        from pycocotools.cocoeval import COCOeval

        with _quiet():
            coco_dt = self._coco_gt.loadRes(results)
            coco_eval = COCOeval(self._coco_gt, coco_dt, iouType="bbox")
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        metrics = {key: _clean(coco_eval.stats[i]) for i, key in enumerate(SUMMARY_KEYS + RECALL_KEYS)}
        # precision: (T iou thresholds, R recall points, K classes, A area ranges, M max-dets);
        # K follows the sorted category ids 1..C, so index k is label k.
        precision = coco_eval.eval["precision"]
        per_class = {}
        for k, name in enumerate(self.class_names):
            values = precision[:, :, k, 0, -1]
            values = values[values > -1]
            per_class[name] = float(values.mean()) if values.size else None
        metrics["per_class"] = per_class
        self.pr_curves = {"recall": [float(r) for r in coco_eval.params.recThrs],
                          "precision": {name: _pr_at_50(precision, k) for k, name in enumerate(self.class_names)}}
        return {**metrics, **self._counts()}

    def _counts(self) -> dict[str, Any]:
        """Images and non-crowd boxes evaluated, and boxes per COCO area range."""
        anns = [a for a in self._coco_gt.dataset["annotations"] if not a["iscrowd"]]
        by_size = {name: sum(1 for a in anns if lo <= a["area"] <= hi) for name, lo, hi in SIZE_RANGES.values()}
        return {"images": len(self._records), "boxes": len(anns), "boxes_by_size": by_size}

    def _empty_metrics(self) -> dict:
        """What COCOeval would report with no detections (it cannot load an empty list)."""
        has_gt = np.zeros(self.num_classes, dtype=bool)  # (C,) class has non-crowd GT
        for ann in self._coco_gt.dataset["annotations"]:
            if not ann["iscrowd"]:
                has_gt[ann["category_id"] - 1] = True
        metrics: dict[str, Any] = {key: 0.0 for key in SUMMARY_KEYS + RECALL_KEYS}
        metrics["per_class"] = {name: (0.0 if has_gt[k] else None)
                                for k, name in enumerate(self.class_names)}
        self.pr_curves = {"recall": [float(r) for r in np.linspace(0, 1, 101)],
                          "precision": {name: ([0.0] * 101 if has_gt[k] else None)
                                        for k, name in enumerate(self.class_names)}}
        return {**metrics, **self._counts()}


def _pr_at_50(precision: np.ndarray, k: int) -> list[float] | None:
    """Class k's precision at IoU 0.5 over the recall points (all areas, 100 dets); None
    without ground truth (COCO's -1)."""
    values = precision[0, :, k, 0, -1]  # (R,)
    return None if (values < 0).all() else [max(0.0, float(v)) for v in values]


def _clean(value: float) -> float:
    """COCO uses -1 for 'no ground truth here'; report 0.0 so metrics stay in [0, 1]."""
    value = float(value)
    return 0.0 if (value < 0 or math.isnan(value)) else value


# ---------------------------------------------------------------------- reporting helpers

def format_table(metrics: dict) -> str:
    """A plain-text table of the six AP numbers (n/a for a size range without ground truth),
    AR@1/10/100, the images and boxes evaluated, and the per-class AP."""
    keys = SUMMARY_KEYS + tuple(k for k in RECALL_KEYS if k in metrics)
    sizes = metrics.get("boxes_by_size") or {}

    def shown(key: str) -> str:  # "n/a" where a size range has no ground truth
        if key in SIZE_RANGES and sizes.get(SIZE_RANGES[key][0]) == 0:
            return "   n/a"
        return f"{float(metrics.get(key, 0.0)):6.3f}"

    lines = ["  ".join(f"{key:>6}" for key in keys), "  ".join(shown(key) for key in keys)]
    if "images" in metrics:
        lines.append(f"{metrics['images']} images, {metrics['boxes']} boxes (small / medium / large: "
                     + " / ".join(str(sizes.get(n, 0)) for n, _, _ in SIZE_RANGES.values()) + ")")
    per_class = metrics.get("per_class") or {}
    if per_class:
        width = max(10, max(len(name) for name in per_class))
        lines += ["", f"{'class':<{width}}  {'AP':>6}", f"{'-' * width}  {'-' * 6}"]
        for name, ap in per_class.items():
            shown = "   n/a" if ap is None else f"{ap:6.3f}"
            lines.append(f"{name:<{width}}  {shown}")
    return "\n".join(lines)


def save_metrics(metrics: dict, path: str | Path) -> Path:
    """Writes the metrics dict as indented JSON (None stays null; there is no NaN)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path
