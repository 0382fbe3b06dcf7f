"""Box helpers that torchvision.ops does not have.

Dimensions: N boxes or points (optionally with leading batch dims). Boxes are (x1, y1, x2, y2)
pixels; distances are (left, top, right, bottom) from a point.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def distance2bbox(points: Tensor, distances: Tensor,
                  max_shape: Sequence[int] | Tensor | None = None) -> Tensor:
    """(..., N, 2) points and (..., N, 4) distances -> (..., N, 4) boxes.

    max_shape (H, W) clips the boxes to [0, W] x [0, H] (the reference's `max_shape`).
    """
    x1 = points[..., 0] - distances[..., 0]
    y1 = points[..., 1] - distances[..., 1]
    x2 = points[..., 0] + distances[..., 2]
    y2 = points[..., 1] + distances[..., 3]
    boxes = torch.stack((x1, y1, x2, y2), -1)  # (..., N, 4)
    if max_shape is not None:
        h, w = (float(v) for v in list(max_shape)[:2])
        upper = boxes.new_tensor([w, h, w, h])  # (4,)
        boxes = torch.minimum(boxes.clamp(min=0), upper)
    return boxes


def aligned_iou(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of (N, 4) boxes with (N, 4) boxes, pair by pair -> (N,); union floored at eps."""
    area_p = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_t = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    lt = torch.maximum(pred[:, :2], target[:, :2])  # (N, 2)
    rb = torch.minimum(pred[:, 2:], target[:, 2:])  # (N, 2)
    wh = (rb - lt).clamp(min=0)  # (N, 2)
    overlap = wh[:, 0] * wh[:, 1]
    union = (area_p + area_t - overlap).clamp(min=eps)
    return overlap / union
