"""The FCOS criterion: target assignment and the three losses (mmdet 2.11 FCOSHead.loss).

Dimensions: B images, L levels, C classes, P points of one image over all levels, M = B * P
flattened points of the batch (level-major, then image, then row-major: the reference's order),
N positive points.

loss_cls        = sum(sigmoid focal loss over M x C) / num_pos
loss_bbox       = sum_i w_i * IoU-loss_i / sum_i w_i, with w_i the centerness target of positive i
loss_centerness = sum(BCE(centerness logit_i, w_i)) / num_pos
num_pos and sum(w) are averaged over workers (`reduce_mean`) and floored at 1 and 1e-6.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from fcosdet.distributed import reduce_mean
from fcosdet.model.boxes import aligned_iou, distance2bbox
from fcosdet.model.head import FCOSOutputs
from fcosdet.model.points import REGRESS_RANGES, STRIDES, anchor_points, level_grids
from fcosdet.model.targets import assign_targets_batch, centerness_target


def _flatten_levels(per_level: Sequence[Tensor]) -> Tensor:
    """L tensors (B, K, H, W) -> (M, K) in level-major order."""
    return torch.cat([x.permute(0, 2, 3, 1).reshape(-1, x.size(1)) for x in per_level])


def _batch_targets(points: list[Tensor], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor],
                   *, num_classes: int, strides: Sequence[int], norm_on_bbox: bool,
                   **assign_kw) -> tuple[Tensor, Tensor]:
    """Targets of every image, laid out like `_flatten_levels`: labels (M,), bbox_targets (M, 4)."""
    labels, targets = assign_targets_batch(points, gt_boxes, gt_labels, num_classes=num_classes,
                                           strides=strides, **assign_kw)  # (B, P), (B, P, 4)
    sizes = [p.size(0) for p in points]
    flat_labels, flat_targets = [], []
    for lab, tgt, stride in zip(labels.split(sizes, 1), targets.split(sizes, 1), strides):
        flat_labels.append(lab.reshape(-1))  # (B * HW,)
        tgt = tgt.reshape(-1, 4)  # (B * HW, 4)
        flat_targets.append(tgt / stride if norm_on_bbox else tgt)
    return torch.cat(flat_labels), torch.cat(flat_targets)


def fcos_loss(cls_scores: Sequence[Tensor], bbox_preds: Sequence[Tensor],
              centernesses: Sequence[Tensor], gt_boxes: Sequence[Tensor],
              gt_labels: Sequence[Tensor], *, num_classes: int,
              strides: Sequence[int] = STRIDES,
              regress_ranges: Sequence[Sequence[float]] = REGRESS_RANGES,
              center_sampling: bool = False, center_sample_radius: float = 1.5,
              norm_on_bbox: bool = False, bbox_loss: str = "iou",
              point_offset: str = "half_stride") -> dict[str, Tensor]:
    """Per-level head outputs (B, C, H, W), (B, 4, H, W), (B, 1, H, W) and per-image
    boxes (G, 4) / labels (G,) -> {"loss_cls", "loss_bbox", "loss_centerness"} (float32)."""
    if bbox_loss not in ("iou", "giou"):
        raise ValueError(f"bbox_loss must be 'iou' or 'giou', got {bbox_loss!r}")
    device = bbox_preds[0].device
    sizes = [tuple(x.shape[-2:]) for x in cls_scores]  # L x (H, W)
    points = anchor_points(sizes, strides, device=device, offset=point_offset)
    labels, bbox_targets = _batch_targets(
        points, gt_boxes, gt_labels, num_classes=num_classes, strides=strides,
        norm_on_bbox=norm_on_bbox, regress_ranges=regress_ranges,
        grids=level_grids(sizes, strides, offset=point_offset),
        center_sampling=center_sampling, center_sample_radius=center_sample_radius)
    num_images = cls_scores[0].size(0)
    flat_cls = _flatten_levels(cls_scores).float()  # (M, C)
    flat_bbox = _flatten_levels(bbox_preds).float()  # (M, 4)
    flat_ctr = _flatten_levels(centernesses).float().reshape(-1)  # (M,)
    flat_points = torch.cat([p.repeat(num_images, 1) for p in points])  # (M, 2)

    pos = ((labels >= 0) & (labels < num_classes)).nonzero().reshape(-1)  # (N,)
    num_pos = reduce_mean(torch.tensor(float(pos.numel()), device=device)).clamp(min=1.0)
    onehot = torch.zeros_like(flat_cls)  # (M, C); background rows stay all-zero
    onehot[pos, labels[pos]] = 1.0
    loss_cls = sigmoid_focal_loss(flat_cls, onehot, alpha=0.25, gamma=2.0, reduction="sum") / num_pos

    pos_bbox, pos_ctr = flat_bbox[pos], flat_ctr[pos]  # (N, 4), (N,)
    if pos.numel() == 0:
        # Zero but connected to the graph, so every worker runs the same backward.
        return {"loss_cls": loss_cls, "loss_bbox": pos_bbox.sum(), "loss_centerness": pos_ctr.sum()}
    pos_targets = bbox_targets[pos]  # (N, 4)
    ctr_targets = centerness_target(pos_targets)  # (N,)
    pos_points = flat_points[pos]  # (N, 2)
    pred_boxes = distance2bbox(pos_points, pos_bbox)  # (N, 4)
    target_boxes = distance2bbox(pos_points, pos_targets)  # (N, 4)
    if bbox_loss == "iou":
        per_box = -aligned_iou(pred_boxes, target_boxes, eps=1e-6).clamp(min=1e-6).log()  # (N,)
    else:
        per_box = generalized_box_iou_loss(pred_boxes, target_boxes, reduction="none", eps=1e-6)
    ctr_denorm = reduce_mean(ctr_targets.sum().detach()).clamp(min=1e-6)
    loss_bbox = (per_box * ctr_targets).sum() / ctr_denorm
    loss_ctr = F.binary_cross_entropy_with_logits(pos_ctr, ctr_targets, reduction="sum") / num_pos
    return {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr}


@dataclass(frozen=True, kw_only=True)
class FCOSCriterion:
    """`fcos_loss` with its settings bound: the object the training loop calls."""
    num_classes: int
    strides: tuple[int, ...] = STRIDES
    regress_ranges: tuple[tuple[float, float], ...] = REGRESS_RANGES
    center_sampling: bool = False
    center_sample_radius: float = 1.5
    norm_on_bbox: bool = False
    bbox_loss: str = "iou"
    point_offset: str = "half_stride"  # "zero": torchvision's points at j*stride

    def __call__(self, outputs: FCOSOutputs, targets: Sequence[dict]) -> dict[str, Tensor]:
        return fcos_loss(
            outputs.cls_scores, outputs.bbox_preds, outputs.centernesses,
            [t["boxes"] for t in targets], [t["labels"] for t in targets],
            num_classes=self.num_classes, strides=self.strides,
            regress_ranges=self.regress_ranges, center_sampling=self.center_sampling,
            center_sample_radius=self.center_sample_radius, norm_on_bbox=self.norm_on_bbox,
            bbox_loss=self.bbox_loss, point_offset=self.point_offset)
