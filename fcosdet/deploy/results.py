"""Results: the detections of one image, what `Detector.predict` returns (one object per image,
like ultralytics' `Results` and detectron2's `Instances`).

    r = Detector.from_file("best.pt").predict("image.jpg")
    r.boxes, r.scores, r.labels  # (D, 4) x1y1x2y2 original pixels, (D,), (D,) in [0, C)
    r.class_names                # D names; r.names: the model's C names
    r.track_ids                  # (D,) track ids when tracked (Detector.stream(..., track=True)), else None
    r.to_coco()                  # [{"file_name", "category_id", "category", "score", "bbox": [x, y, w, h]}, ...]
    r.save("image_det.jpg")      # the image with the boxes scoring >= score_thr drawn

Dimensions: D detections, C classes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fcosdet.analysis.viz import draw_detections
from fcosdet.data.images import load_image
from fcosdet.engine.evaluation.coco import coco_boxes
from fcosdet.errors import UserError

DRAW_THR = 0.3  # the default score from which `draw` / `save` (and `fcosdet predict`) draw a box


@dataclass(kw_only=True)
class Results:
    """One image's detections, highest score first, in the original image's pixels."""
    boxes: Tensor  # (D, 4) float32 x1, y1, x2, y2 in the original image's pixels
    scores: Tensor  # (D,) float32
    labels: Tensor  # (D,) int64 in [0, C)
    names: list[str]  # (C,) the model's class names: names[label]
    category_ids: list[int]  # (C,) the dataset's category id of each label (the model file's, else label + 1)
    orig_size: tuple[int, int]  # (h, w) of the original image
    path: Path | None = None  # the image file; None when the image was given as an array / PIL / tensor
    track_ids: Tensor | None = None  # (D,) int64 track id of each detection (-1: not tracked); None: no tracking

    def __post_init__(self) -> None:
        d = len(self.scores)
        if self.boxes.shape != (d, 4) or self.labels.shape != (d,) or len(self.category_ids) != len(self.names):
            raise ValueError(f"Results: boxes {tuple(self.boxes.shape)}, scores ({d},), labels "
                             f"{tuple(self.labels.shape)}, {len(self.names)} names and {len(self.category_ids)} "
                             f"category ids do not agree")
        if self.track_ids is not None and self.track_ids.shape != (d,):
            raise ValueError(f"Results: track_ids {tuple(self.track_ids.shape)} for {d} detections")

    def __len__(self) -> int:
        return len(self.scores)

    @property
    def class_names(self) -> list[str]:
        """(D,) the class name of each detection."""
        return [self.names[label] for label in self.labels.tolist()]

    @property
    def max_score(self) -> float | None:
        """The highest score (None without detections)."""
        return float(self.scores.max()) if len(self) else None

    def select(self, keep: Tensor) -> Results:
        """The detections `keep` picks ((D,) bool mask, or indices: a subset or a reordering), as new Results."""
        return Results(boxes=self.boxes[keep], scores=self.scores[keep], labels=self.labels[keep], names=self.names,
                       category_ids=self.category_ids, orig_size=self.orig_size, path=self.path,
                       track_ids=None if self.track_ids is None else self.track_ids[keep])

    def only(self, labels: Sequence[int]) -> Results:
        """The detections of the classes `labels` (in [0, C))."""
        return self.select(torch.isin(self.labels, torch.as_tensor(list(labels), dtype=self.labels.dtype)))

    def to_coco(self, *, image_id: int | None = None) -> list[dict[str, Any]]:
        """COCO-style results, one dict per detection: "bbox" [x, y, w, h] (0.01 px), "score"
        (5 decimals), "category_id" (the model's ids), "category" (the name), "file_name" when
        the image was a file, "image_id" when given and "track_id" (None: not tracked) with track_ids."""
        head: dict[str, Any] = {} if self.path is None else {"file_name": str(self.path)}
        if image_id is not None:
            head["image_id"] = image_id
        dets = [{**head, "category_id": self.category_ids[label], "category": self.names[label],
                 "score": round(score, 5), "bbox": [round(v, 2) for v in box]}
                for box, score, label in zip(coco_boxes(self.boxes), self.scores.tolist(), self.labels.tolist())]
        if self.track_ids is not None:  # tracked: each detection's track id (None: not tracked)
            for det, tid in zip(dets, self.track_ids.tolist()):
                det["track_id"] = tid if tid >= 0 else None
        return dets

    def to_json(self, *, image_id: int | None = None) -> str:
        """`to_coco()` as a JSON string."""
        return json.dumps(self.to_coco(image_id=image_id))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready and lossless (what `fcosdet serve` answers): {"width", "height", "file_name"
        (None: not a file), "detections": [{"box": [x1, y1, x2, y2] original pixels, "score", "label"
        in [0, C), "class_name", "category_id"}, ...] highest score first}; the float32 values exactly,
        so `torch.tensor(box, dtype=torch.float32)` gives `boxes` back. "track_id" too when tracked."""
        dets = [{"box": box, "score": score, "label": label, "class_name": self.names[label],
                 "category_id": self.category_ids[label]}
                for box, score, label in zip(self.boxes.tolist(), self.scores.tolist(), self.labels.tolist())]
        if self.track_ids is not None:
            for det, tid in zip(dets, self.track_ids.tolist()):
                det["track_id"] = tid if tid >= 0 else None
        return {"width": int(self.orig_size[1]), "height": int(self.orig_size[0]),
                "file_name": None if self.path is None else str(self.path), "detections": dets}

    def _image(self, image: Image.Image | np.ndarray | str | Path | None) -> Image.Image:
        """The picture to draw on: `image` (PIL, (H, W, 3) uint8 RGB array or a path), else the source file."""
        if image is None:
            if self.path is None:
                raise UserError("these results come from an in-memory image, not a file: pass it to "
                                "draw(image) / save(path, image=image)")
            image = self.path
        if isinstance(image, (str, Path)):
            image = load_image(image)
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise UserError(f"draw() takes an (H, W, 3) uint8 RGB array, got {image.dtype} {image.shape}")
            image = Image.fromarray(np.ascontiguousarray(image), "RGB")
        if (image.height, image.width) != tuple(self.orig_size):
            raise UserError(f"the image to draw on is {image.width} x {image.height}, the detections are for "
                            f"{self.orig_size[1]} x {self.orig_size[0]}: pass the image that was predicted")
        return image

    def draw(self, image: Image.Image | np.ndarray | str | Path | None = None, *,
             score_thr: float = DRAW_THR) -> Image.Image:
        """A copy of the image (the source file when `image` is None) with each detection scoring
        >= score_thr drawn (`fcosdet.analysis.viz.draw_detections`)."""
        return draw_detections(self._image(image), boxes=self.boxes, labels=self.labels, scores=self.scores,
                               class_names=self.names, score_thr=score_thr)

    def save(self, path: str | Path, *, image: Image.Image | np.ndarray | str | Path | None = None,
             score_thr: float = DRAW_THR) -> Path:
        """`draw(image, score_thr=...)` written to `path` (its suffix picks the format; JPEG at quality 90)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.draw(image, score_thr=score_thr).save(path, quality=90)
        except (OSError, ValueError) as exc:  # ValueError: PIL knows no format for the suffix
            raise UserError(f"cannot write the drawing {path} ({exc}); choose a writable path ending in "
                            f".jpg or .png") from None
        return path
