"""FCOS head (mmdet 2.11 FCOSHead.forward): shared towers, a learnable Scale per level.

Dimensions: B images, F feature channels, C classes, L levels.
Per level it returns raw outputs: classification logits (B, C, H, W), distances (B, 4, H, W)
and centerness logits (B, 1, H, W). Distances are exp(scale * x) pixels, or, with
norm_on_bbox, ReLU(scale * x) in units of the level's stride: the post-processor multiplies
them by the stride (the reference does that inside the head at test time; here decoding is
the post-processor's job, so the head behaves the same in train and eval mode).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from fcosdet.model.points import STRIDES


class FCOSOutputs(NamedTuple):
    """The model's raw outputs, one tensor per level (L entries each), consumed by
    FCOSCriterion (training) and FCOSPostProcessor (inference)."""
    cls_scores: list[Tensor]  # L x (B, C, H, W) classification logits
    bbox_preds: list[Tensor]  # L x (B, 4, H, W) distances (l, t, r, b): pixels, or strides with norm_on_bbox
    centernesses: list[Tensor]  # L x (B, 1, H, W) centerness logits


class Scale(nn.Module):
    """y = s * x with a learnable scalar s (initialised to 1)."""

    def __init__(self, init: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class DeformConvBlock(nn.Module):
    """3x3 deformable conv with its own offset conv (zero-initialised: starts as a plain conv)."""

    def __init__(self, in_ch: int, out_ch: int, *, bias: bool) -> None:
        super().__init__()
        self.offset = nn.Conv2d(in_ch, 2 * 3 * 3, 3, padding=1)  # zeroed by FCOSHead._init_weights
        self.conv = DeformConv2d(in_ch, out_ch, 3, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x, self.offset(x))


def _tower(in_ch: int, feat_ch: int, depth: int, *, norm: str | None, bias: bool,
           dcn_last: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        c_in = in_ch if i == 0 else feat_ch
        if dcn_last and i == depth - 1:
            layers.append(DeformConvBlock(c_in, feat_ch, bias=bias))
        else:
            layers.append(nn.Conv2d(c_in, feat_ch, 3, padding=1, bias=bias))
        if norm == "gn":
            layers.append(nn.GroupNorm(32, feat_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class FCOSHead(nn.Module):
    def __init__(self, *, num_classes: int, in_channels: int = 256, feat_channels: int = 256,
                 stacked_convs: int = 4, strides: Sequence[int] = STRIDES,
                 norm: str | None = "gn", conv_bias: bool | None = None,
                 norm_on_bbox: bool = False, centerness_on_reg: bool = False,
                 dcn_on_last_conv: bool = False, prior_prob: float = 0.01,
                 learnable_scale: bool = True) -> None:
        """learnable_scale=False drops the per-level Scale (torchvision's FCOSHead has none: with
        norm_on_bbox its distances are ReLU(conv) strides, decoded x stride like here)."""
        super().__init__()
        if norm not in ("gn", None):
            raise ValueError(f"head norm must be 'gn' or None, got {norm!r}")
        bias = (norm is None) if conv_bias is None else conv_bias  # the reference's conv_bias='auto'
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.norm_on_bbox = norm_on_bbox
        self.centerness_on_reg = centerness_on_reg
        tower = dict(norm=norm, bias=bias, dcn_last=dcn_on_last_conv)
        self.cls_tower = _tower(in_channels, feat_channels, stacked_convs, **tower)
        self.reg_tower = _tower(in_channels, feat_channels, stacked_convs, **tower)
        self.conv_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.conv_reg = nn.Conv2d(feat_channels, 4, 3, padding=1)
        self.conv_centerness = nn.Conv2d(feat_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) if learnable_scale else nn.Identity() for _ in self.strides)
        self._init_weights(prior_prob)

    def _init_weights(self, prior_prob: float) -> None:
        """Normal(0, 0.01) convs with zero bias; classification bias for a prior of 0.01."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, DeformConv2d)):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, DeformConvBlock):  # offsets start at zero: a plain conv at first
                nn.init.zeros_(m.offset.weight)
                nn.init.zeros_(m.offset.bias)
        nn.init.constant_(self.conv_cls.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward_level(self, x: Tensor, scale: nn.Module) -> tuple[Tensor, Tensor, Tensor]:
        cls_feat = self.cls_tower(x)  # (B, F, H, W)
        reg_feat = self.reg_tower(x)  # (B, F, H, W)
        cls_score = self.conv_cls(cls_feat)  # (B, C, H, W)
        centerness = self.conv_centerness(reg_feat if self.centerness_on_reg else cls_feat)  # (B, 1, H, W)
        # Regression in float32 even under autocast: exp() of half precision overflows.
        with torch.autocast(device_type=x.device.type, enabled=False):
            bbox = scale(self.conv_reg(reg_feat.float()))  # (B, 4, H, W)
            bbox = F.relu(bbox) if self.norm_on_bbox else bbox.exp()
        return cls_score, bbox, centerness

    def forward(self, feats: Sequence[Tensor]) -> FCOSOutputs:
        if len(feats) != len(self.scales):
            raise ValueError(f"head expects {len(self.scales)} levels, got {len(feats)}")
        outs = [self.forward_level(x, s) for x, s in zip(feats, self.scales)]
        cls_scores, bbox_preds, centernesses = (list(t) for t in zip(*outs))
        return FCOSOutputs(cls_scores, bbox_preds, centernesses)
