"""Decode raw FCOS outputs into detections (mmdet 2.11 FCOSHead.get_bboxes + multiclass_nms).

Dimensions: B images, L levels, C classes, K candidates of one level (<= nms_pre), N candidates
of one image over all levels, D kept detections (<= max_per_img).

Per level: score = sigmoid(cls) * sigmoid(centerness) (or its square root), keep the nms_pre
points with the highest best-class score, decode with distance2bbox clipped to the resized
image. Per image: every (point, class) pair above score_thr, class-aware NMS, the best
max_per_img, boxes rescaled to the original image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from .boxes import distance2bbox
from .targets import anchor_points


@dataclass(frozen=True, kw_only=True)
class FCOSPostProcessor:
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    norm_on_bbox: bool = False  # distances come in strides: multiply by the level's stride
    nms_pre: int = 1000
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100
    sqrt_score: bool = False

    @torch.no_grad()
    def __call__(self, outputs: tuple[Sequence[Tensor], Sequence[Tensor], Sequence[Tensor]],
                 image_sizes: Sequence[Sequence[int]],
                 orig_sizes: Sequence[Sequence[int]] | None = None) -> list[dict[str, Tensor]]:
        """image_sizes: (h, w) of each resized image before padding; orig_sizes: (H, W) to
        rescale to (None keeps the resized frame). Returns per image boxes (D, 4), scores (D,),
        labels (D,)."""
        cls_scores, bbox_preds, centernesses = outputs
        points = anchor_points([x.shape[-2:] for x in cls_scores], self.strides,
                               device=cls_scores[0].device)
        results = []
        for b, (h, w) in enumerate(image_sizes):
            boxes, scores = [], []
            for lvl, stride in enumerate(self.strides):
                bx, sc = self._level(cls_scores[lvl][b], bbox_preds[lvl][b], centernesses[lvl][b],
                                     points[lvl], stride, (h, w))
                boxes.append(bx)
                scores.append(sc)
            boxes_all, scores_all = torch.cat(boxes), torch.cat(scores)  # (N, 4), (N, C)
            if orig_sizes is not None:
                boxes_all = _rescale(boxes_all, (h, w), orig_sizes[b])
            results.append(self._nms(boxes_all, scores_all))
        return results

    def _level(self, cls: Tensor, bbox: Tensor, ctr: Tensor, points: Tensor, stride: int,
               image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """One image, one level: (C, H, W), (4, H, W), (1, H, W) -> boxes (K, 4), scores (K, C)."""
        num_classes = cls.size(0)
        scores = cls.permute(1, 2, 0).reshape(-1, num_classes).float().sigmoid()  # (HW, C)
        scores = scores * ctr.reshape(-1, 1).float().sigmoid()  # (HW, C)
        if self.sqrt_score:
            scores = scores.sqrt()
        dist = bbox.permute(1, 2, 0).reshape(-1, 4).float()  # (HW, 4)
        if self.norm_on_bbox:
            dist = dist * stride
        if 0 < self.nms_pre < scores.size(0):
            keep = scores.max(dim=1).values.topk(self.nms_pre).indices  # (K,)
            scores, dist, points = scores[keep], dist[keep], points[keep]
        return distance2bbox(points, dist, max_shape=image_size), scores

    def _nms(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """(N, 4) boxes and (N, C) scores -> the best max_per_img after class-aware NMS."""
        idx, labels = (scores > self.score_thr).nonzero(as_tuple=True)  # (n,), (n,)
        cand_boxes, cand_scores = boxes[idx], scores[idx, labels]  # (n, 4), (n,)
        keep = batched_nms(cand_boxes, cand_scores, labels, self.nms_iou)[: self.max_per_img]  # (D,)
        return {"boxes": cand_boxes[keep], "scores": cand_scores[keep], "labels": labels[keep]}


def _rescale(boxes: Tensor, image_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
    """Boxes (N, 4) in the resized (h, w) frame -> the original (H, W) frame, clipped to it."""
    (h, w), (oh, ow) = image_size, orig_size
    factor = boxes.new_tensor([w / ow, h / oh, w / ow, h / oh])  # (4,)
    upper = boxes.new_tensor([ow, oh, ow, oh])
    return torch.minimum((boxes / factor).clamp(min=0), upper)
