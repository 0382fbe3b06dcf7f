"""Decode raw FCOS outputs into detections (mmdet 2.11 FCOSHead.get_bboxes + multiclass_nms).

Dimensions: B images, L levels, C classes, K candidates of one level (<= nms_pre), N candidates
of one image over all levels, D kept detections (<= max_per_img).

Per level: score = sigmoid(cls) * sigmoid(centerness) (or its square root), keep the nms_pre
points with the highest best-class score, decode with distance2bbox clipped to the resized
image. Per image: every (point, class) pair above score_thr, class-aware NMS, the best
max_per_img, boxes rescaled to the original image. `detect` does all of it for the whole batch
without a Python loop over images (tensor ops only, so torch.export and ONNX trace it); the
boxes stay in the resized frame there, and `__call__` splits the batch and rescales.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor
from torchvision.ops import nms

from fcosdet.model.boxes import distance2bbox
from fcosdet.model.head import FCOSOutputs
from fcosdet.model.points import STRIDES, anchor_points


class Detections(NamedTuple):
    """The detections of a whole batch in one flat list (D over all images, by decreasing
    score), boxes in the resized frame: what `FCOSPostProcessor.detect` and the exported
    graphs return."""
    boxes: Tensor  # (D, 4) x1, y1, x2, y2 pixels of the resized image
    scores: Tensor  # (D,)
    labels: Tensor  # (D,) in [0, C)
    batch_index: Tensor  # (D,) the image each detection belongs to


@dataclass(frozen=True, kw_only=True)
class FCOSPostProcessor:
    strides: tuple[int, ...] = STRIDES
    norm_on_bbox: bool = False  # distances come in strides: multiply by the level's stride
    nms_pre: int = 1000
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100
    sqrt_score: bool = False
    point_offset: str = "half_stride"  # "zero": torchvision's points at j*stride

    @torch.no_grad()
    def __call__(self, outputs: FCOSOutputs, image_sizes: Sequence[Sequence[int]],
                 orig_sizes: Sequence[Sequence[int]] | None = None) -> list[dict[str, Tensor]]:
        """image_sizes: (h, w) of each resized image before padding; orig_sizes: (H, W) to
        rescale to (None keeps the resized frame). Returns per image boxes (D, 4), scores (D,),
        labels (D,)."""
        sizes = torch.as_tensor([[int(h), int(w)] for h, w in image_sizes],
                                device=outputs[0][0].device)  # (B, 2)
        return split_per_image(self.detect(outputs, sizes), image_sizes, orig_sizes)

    @torch.no_grad()
    def detect(self, outputs: FCOSOutputs, image_sizes: Tensor) -> Detections:
        """The whole batch at once, in the resized frame: no Python loop over images and no
        host sync, so torch.export / ONNX trace it with dynamic B, H, W. image_sizes (B, 2):
        the valid (h, w) of each image in the padded batch."""
        boxes, scores = self._candidates(outputs, image_sizes)  # (B, N, 4), (B, N, C)
        return self._select(boxes, scores)

    def _candidates(self, outputs: FCOSOutputs, image_sizes: Tensor) -> tuple[Tensor, Tensor]:
        """Per level: scores, the nms_pre best points, decoding clipped to each image ->
        boxes (B, N, 4), scores (B, N, C), N = sum over levels of K = min(nms_pre, H*W)."""
        cls_scores, bbox_preds, centernesses = outputs
        # L x (H*W, 2), built from the tensors' own sizes (symbolic under torch.export)
        points = anchor_points([x.shape[-2:] for x in cls_scores], self.strides,
                               device=cls_scores[0].device, offset=self.point_offset)
        upper = image_sizes.flip(-1).repeat(1, 2).float()[:, None, :]  # (B, 1, 4) = (w, h, w, h)
        boxes, scores = [], []
        for cls, bbox, ctr, pts, stride in zip(cls_scores, bbox_preds, centernesses, points,
                                               self.strides):
            score = cls.flatten(2).transpose(1, 2).float().sigmoid()  # (B, HW, C)
            score = score * ctr.flatten(2).transpose(1, 2).float().sigmoid()  # (B, HW, C)
            if self.sqrt_score:
                score = score.sqrt()
            dist = bbox.flatten(2).transpose(1, 2).float()  # (B, HW, 4)
            if self.norm_on_bbox:
                dist = dist * stride
            pts = pts.expand(score.shape[0], -1, -1)  # (B, HW, 2)
            if self.nms_pre > 0:
                k = torch.sym_min(self.nms_pre, score.shape[1])  # symbolic under torch.export
                keep = score.max(dim=2).values.topk(k, dim=1).indices  # (B, K)
                score = score.gather(1, keep[..., None].expand(-1, -1, score.shape[2]))  # (B, K, C)
                dist = dist.gather(1, keep[..., None].expand(-1, -1, 4))  # (B, K, 4)
                pts = pts.gather(1, keep[..., None].expand(-1, -1, 2))  # (B, K, 2)
            box = distance2bbox(pts, dist)  # (B, K, 4)
            boxes.append(torch.minimum(box.clamp(min=0), upper))  # clipped to [0, w] x [0, h]
            scores.append(score)
        return torch.cat(boxes, 1), torch.cat(scores, 1)

    def _select(self, boxes: Tensor, scores: Tensor) -> Detections:
        """(B, N, 4) boxes, (B, N, C) scores -> every (point, class) above score_thr, NMS per
        image and class, the best max_per_img of each image."""
        num_images, num_classes = scores.shape[0], scores.shape[2]
        img, idx, labels = (scores > self.score_thr).nonzero(as_tuple=True)  # (n,) each
        cand_boxes, cand_scores = boxes[img, idx], scores[img, idx, labels]  # (n, 4), (n,)
        # One NMS for every (image, class) group: each group's boxes are shifted by a multiple of
        # the largest coordinate, so boxes of different groups never overlap.
        group = (img * num_classes + labels).to(boxes.dtype)  # (n,)
        shifted = cand_boxes + (group * (boxes.max() + 1))[:, None]  # (n, 4)
        keep = nms(shifted, cand_scores, self.nms_iou)  # (m,) by decreasing score
        # rank of each kept detection within its image: keep the first max_per_img
        onehot = (img[keep][:, None] == torch.arange(num_images, device=img.device)).long()  # (m, B)
        rank = (onehot.cumsum(0) * onehot).sum(1) - 1  # (m,)
        keep = keep[rank < self.max_per_img]  # (D,)
        return Detections(boxes=cand_boxes[keep], scores=cand_scores[keep], labels=labels[keep],
                          batch_index=img[keep])


def split_per_image(dets: Detections, image_sizes: Sequence[Sequence[int]],
                    orig_sizes: Sequence[Sequence[int]] | None = None) -> list[dict[str, Tensor]]:
    """A batch's detections -> per image boxes (D_b, 4), scores (D_b,), labels (D_b,), boxes
    rescaled from the resized (h, w) to the original (H, W) frame when `orig_sizes` is given."""
    results = []
    for b, size in enumerate(image_sizes):
        mine = dets.batch_index == b  # (D,) this image's detections, by decreasing score
        boxes = dets.boxes[mine]  # (D_b, 4)
        if orig_sizes is not None:
            boxes = _rescale(boxes, size, orig_sizes[b])
        results.append({"boxes": boxes, "scores": dets.scores[mine], "labels": dets.labels[mine]})
    return results


def _rescale(boxes: Tensor, image_size: Sequence[int], orig_size: Sequence[int]) -> Tensor:
    """Boxes (N, 4) in the resized (h, w) frame -> the original (H, W) frame, clipped to it."""
    (h, w), (oh, ow) = image_size, orig_size
    factor = boxes.new_tensor([w / ow, h / oh, w / ow, h / oh])  # (4,)
    upper = boxes.new_tensor([ow, oh, ow, oh])
    return torch.minimum((boxes / factor).clamp(min=0), upper)
