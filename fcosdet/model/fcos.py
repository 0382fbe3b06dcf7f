"""FCOS = backbone + FPN + head. Returns raw per-level outputs; no loss, no decoding.

Dimensions: B images, C classes, L = 5 levels (strides `points.STRIDES`, 8..128, or with the
P2 level `points.P2_STRIDES`, 4..64).
"""
from __future__ import annotations

from torch import Tensor, nn

from fcosdet.model.backbone import ResNetBackbone
from fcosdet.model.fpn import FCOSFPN
from fcosdet.model.head import FCOSHead, FCOSOutputs


class FCOS(nn.Module):
    def __init__(self, *, backbone: ResNetBackbone, fpn: FCOSFPN, head: FCOSHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.fpn = fpn
        self.head = head

    @property
    def strides(self) -> tuple[int, ...]:
        return self.head.strides

    def forward(self, images: Tensor) -> FCOSOutputs:
        """images (B, 3, H, W) -> per level: cls (B, C, h, w), bbox (B, 4, h, w), ctr (B, 1, h, w)."""
        return self.head(self.fpn(self.backbone(images)))
