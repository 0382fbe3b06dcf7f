"""Which points each box gets: `assign_targets_batch` itself, asked for box indices.

Dimensions: B images, L levels, P points of one image over all levels (level-major, row-major
within a level), G boxes of one image. Boxes are (x1, y1, x2, y2) pixels of the image at the
evaluation transform's resize; labels in [0, C). The settings are an `FCOSCriterion`'s (what
`model.build.build_criterion` makes for training), the points `model.points`' grid.

The trick that avoids a second copy of the assignment rules: the rules never look at a box's
class, so we pass each box's own index as its "label" (and the number of boxes as the
"number of classes"); the labels `assign_targets_batch` returns are then the index of the box
every point is assigned to, with the number of boxes meaning background.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from fcosdet.data.records import ImageRecord
from fcosdet.data.transforms import MIN_BOX_SIZE, DetectionTransform
from fcosdet.model.criterion import FCOSCriterion
from fcosdet.model.points import anchor_points, featmap_sizes, level_grids
from fcosdet.model.targets import assign_targets_batch, centerness_target


def tile_scaled_size(height: int, width: int, transform: DetectionTransform, tile: int) -> tuple[int, int]:
    """(H, W) of a whole (height, width) image scaled by the factors the `transform`'s resize
    applies to a training tile of side `tile` cut from it (data.tile: min(tile, side) per axis):
    the boxes then have the size tile training shows them at (positions on the grid aside)."""
    th, tw = min(tile, height), min(tile, width)
    rh, rw = transform.resized_size(th, tw)
    return max(1, int(height * rh / th + 0.5)), max(1, int(width * rw / tw + 0.5))


def resized_boxes(record: ImageRecord, transform: DetectionTransform, *,
                  tile: int | None = None) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """A record's boxes as the evaluation `transform` resizes them (with `tile`, at the scale of
    a training tile of that side: `tile_scaled_size`), without decoding the image: boxes (G, 4)
    float32, labels (G,) and the resized (H, W). Crowd boxes and boxes thinner than
    MIN_BOX_SIZE are dropped, as the dataset and transform drop them for training."""
    height, width = (transform.resized_size(record.height, record.width) if tile is None
                     else tile_scaled_size(record.height, record.width, transform, tile))
    boxes = torch.as_tensor(np.asarray(record.boxes, np.float32).reshape(-1, 4))  # (G, 4)
    labels = torch.as_tensor(np.asarray(record.labels, np.int64).reshape(-1))  # (G,)
    crowd = np.asarray(record.iscrowd, bool).reshape(-1)  # (G,) or (0,) when the reader gave none
    if crowd.any():
        keep = torch.as_tensor(~crowd)  # (G,)
        boxes, labels = boxes[keep], labels[keep]
    wrapped = tv_tensors.BoundingBoxes(boxes, format=tv_tensors.BoundingBoxFormat.XYXY,
                                       canvas_size=(record.height, record.width))
    if (height, width) != (record.height, record.width):
        wrapped = TF.resize(wrapped, [height, width])  # (G, 4) scaled by (W / W0, H / H0)
    boxes = wrapped.as_subclass(torch.Tensor)
    ok = ((boxes[:, 2] - boxes[:, 0]) > MIN_BOX_SIZE) & ((boxes[:, 3] - boxes[:, 1]) > MIN_BOX_SIZE)  # (G,)
    return boxes[ok], labels[ok], (height, width)


@dataclass
class ImageAssignment:
    """Assignment of one image: `box_of_point` (P,) the box index of each point (G =
    background), `targets` (P, 4) the (l, t, r, b) regression targets, `points` per level
    (H*W, 2), `sizes` per level (H, W)."""
    box_of_point: Tensor
    targets: Tensor
    points: list[Tensor]
    sizes: list[tuple[int, int]]
    num_boxes: int

    def level_slices(self) -> list[slice]:
        starts = np.cumsum([0] + [h * w for h, w in self.sizes])
        return [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]

    def positives_per_box_level(self) -> Tensor:
        """(G, L) number of positive points each box gets on each level."""
        counts = torch.zeros((self.num_boxes, len(self.sizes)), dtype=torch.long)  # (G, L)
        for level, sl in enumerate(self.level_slices()):
            owner = self.box_of_point[sl]  # (H*W,)
            counts[:, level] = torch.bincount(owner[owner < self.num_boxes], minlength=self.num_boxes)
        return counts

    def centerness(self) -> Tensor:
        """(P,) the centerness target of positive points, 0 on background."""
        out = torch.zeros(self.box_of_point.shape, dtype=torch.float32)  # (P,)
        pos = self.box_of_point < self.num_boxes  # (P,)
        if pos.any():
            out[pos] = centerness_target(self.targets[pos].float())
        return out


def assign_images(boxes: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
                  criterion: FCOSCriterion) -> list[ImageAssignment]:
    """Assign B images at once, with the settings and points (`criterion.point_offset`) the
    criterion trains with, on one grid covering the largest of them (points outside an image
    lie outside all its boxes, so the padding changes nothing, as in a training batch)."""
    height = max(h for h, _ in image_sizes)
    width = max(w for _, w in image_sizes)
    strides, offset = criterion.strides, criterion.point_offset
    sizes = featmap_sizes((height, width), strides)  # L x (H, W)
    points = anchor_points(sizes, strides, offset=offset)  # L x (H*W, 2)
    counts = [len(b) for b in boxes]
    offsets = np.cumsum([0] + counts[:-1])
    ids = [torch.arange(n, dtype=torch.long) + int(o) for n, o in zip(counts, offsets)]  # global box index
    owner, targets = assign_targets_batch(
        points, [b.float() for b in boxes], ids, num_classes=sum(counts), strides=strides,
        regress_ranges=criterion.regress_ranges, center_sampling=criterion.center_sampling,
        center_sample_radius=criterion.center_sample_radius,
        grids=level_grids(sizes, strides, offset=offset))  # (B, P), (B, P, 4)
    out = []
    for i, (n, o) in enumerate(zip(counts, offsets)):
        local = torch.where(owner[i] < sum(counts), owner[i] - int(o), n)  # (P,) background = n
        out.append(ImageAssignment(box_of_point=local, targets=targets[i], points=points, sizes=sizes,
                                   num_boxes=n))
    return out
