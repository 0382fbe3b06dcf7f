"""The one record type every dataset reader produces.

Dimensions: G ground-truth boxes in one image.
Conventions: boxes are (x1, y1, x2, y2) float pixels of the stored image (before EXIF
rotation is applied the reader already reports the displayed size); labels in [0, C).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageRecord:
    path: str  # absolute path to the image file
    width: int  # displayed width in pixels (after EXIF orientation)
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # (G, 4) x1y1x2y2
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))  # (G,) in [0, C)
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros((0,), bool))  # (G,) crowd regions
    image_id: int = 0  # unique within a dataset; COCO's id where the source has one


@dataclass
class DatasetSplit:
    records: list[ImageRecord]
    class_names: list[str]  # index = label
    # One message per annotation or image a reader dropped with skip_invalid=True, so the
    # caller can print "skipped N invalid annotations/images" at the end.
    problems: list[str] = field(default_factory=list)
    source: str = ""  # the annotation file / list the split was read from, for reports
    clipped: int = 0  # boxes clipped to their image by more than 1 px
    # COCO: the annotation file's category id of each label (index = label), e.g. [3, 7] or
    # COCO's 1..90 with gaps; results files write these. None (VOC, YOLO): labels have no ids,
    # results files write label + 1.
    category_ids: list[int] | None = None
