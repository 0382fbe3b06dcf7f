"""ModelConfig / TestConfig -> the model, the criterion and the post-processor (the model side of `build`;
the data, engine and deploy sides are their folders' build.py). Only these builders and the CLI read a Config."""
from __future__ import annotations

import torch

from fcosdet.config import ModelConfig, TestConfig, TrainConfig
from fcosdet.errors import UserError
from fcosdet.model import FCOS, FCOSFPN, FCOSHead, ResNetBackbone
from fcosdet.model.criterion import FCOSCriterion
from fcosdet.model.points import P2_REGRESS_RANGES, P2_STRIDES, REGRESS_RANGES, STRIDES
from fcosdet.model.postprocess import FCOSPostProcessor

Levels = tuple[tuple[int, ...], tuple[tuple[float, float], ...]]  # (strides, regress ranges), L each


def network_levels(m: ModelConfig) -> Levels:
    """The strides and regression ranges the network, the criterion and the post-processor use.
    Assignment and decoding must use the strides the network's feature maps really have, with one
    range (lo < hi) per level; anything else is silently wrong. The network's levels are P3..P7
    (ResNetBackbone's C3..C5 through FCOSFPN, + P6, P7: `points.STRIDES`), or with model.p2
    P2..P6 (C2..C5, + P6: `points.P2_STRIDES`). model.strides / model.regress_ranges left at
    their defaults (the P3..P7 values) follow the switch: P2's strides and ranges then apply."""
    expected, default_ranges = (P2_STRIDES, P2_REGRESS_RANGES) if m.p2 else (STRIDES, REGRESS_RANGES)
    strides = tuple(m.strides)
    ranges = tuple(tuple(r) for r in m.regress_ranges)
    if m.p2 and strides == STRIDES:
        strides = P2_STRIDES
        ranges = P2_REGRESS_RANGES if ranges == REGRESS_RANGES else ranges
    if strides != expected:
        levels = "P2..P6 (model.p2=true)" if m.p2 else "P3..P7"
        hint = ("; for a stride-4 level set model.p2=true instead" if strides == P2_STRIDES else
                "; remove the override (for small objects set model.p2=true, raise data.scale or train on "
                "tiles with data.tile)")
        raise UserError(f"model.strides={list(m.strides)} is not what the network produces: its FPN "
                        f"levels {levels} have strides {list(expected)}{hint}")
    if len(ranges) != len(strides) or any(len(r) != 2 or not r[0] < r[1] for r in ranges):
        example = ",".join(f"[{lo:g},{hi:.0f}]" for lo, hi in default_ranges)
        raise UserError(f"model.regress_ranges={[list(r) for r in ranges]} needs one [lo, hi] pair with "
                        f"lo < hi per stride {list(strides)}, e.g. [{example}]")
    return strides, ranges


def check_levels(m: ModelConfig) -> None:
    """`network_levels` as a check: a UserError when the config's levels cannot be honoured."""
    network_levels(m)


def build_model(m: ModelConfig) -> FCOS:
    strides, _ = network_levels(m)
    backbone = ResNetBackbone(depth=m.depth, norm=m.backbone_norm, frozen_stages=m.frozen_stages,
                              norm_eval=m.norm_eval, weights=m.backbone_weights, style=m.backbone_style,
                              c2=m.p2)
    fpn = FCOSFPN(in_channels=backbone.out_channels, out_channels=m.fpn_channels, p2=m.p2)
    head = FCOSHead(num_classes=m.num_classes, in_channels=m.fpn_channels,
                    feat_channels=m.feat_channels, stacked_convs=m.stacked_convs,
                    strides=strides, norm=m.head_norm, conv_bias=m.conv_bias,
                    norm_on_bbox=m.norm_on_bbox, centerness_on_reg=m.centerness_on_reg,
                    dcn_on_last_conv=m.dcn_on_last_conv, learnable_scale=m.learnable_scale)
    return FCOS(backbone=backbone, fpn=fpn, head=head)


def uses_channels_last(t: TrainConfig, device: torch.device) -> bool:
    """train.channels_last resolved: null means on the CPU only (where it was measured)."""
    return device.type == "cpu" if t.channels_last is None else t.channels_last


def training_model(model: FCOS, t: TrainConfig, device: torch.device) -> FCOS:
    """The model as training runs it (same losses and state_dict within float rounding): with
    `uses_channels_last`, weights in channels_last (train_step converts the images)."""
    return model.to(memory_format=torch.channels_last) if uses_channels_last(t, device) else model


def build_criterion(m: ModelConfig) -> FCOSCriterion:
    strides, ranges = network_levels(m)
    if m.point_offset == "torchvision":
        raise UserError("model.point_offset=torchvision reproduces the inference of imported torchvision "
                        "weights; training assigns targets on points spaced by the stride: use "
                        "--set model.point_offset=zero (as the fcos_r50_finetune preset does)")
    return FCOSCriterion(num_classes=m.num_classes, strides=strides, regress_ranges=ranges,
                         center_sampling=m.center_sampling,
                         center_sample_radius=m.center_sample_radius,
                         norm_on_bbox=m.norm_on_bbox, bbox_loss=m.bbox_loss,
                         point_offset=m.point_offset)


def build_postprocessor(m: ModelConfig, t: TestConfig) -> FCOSPostProcessor:
    strides, _ = network_levels(m)
    return FCOSPostProcessor(strides=strides, norm_on_bbox=m.norm_on_bbox,
                             nms_pre=t.nms_pre, score_thr=t.score_thr, nms_iou=t.nms_iou,
                             max_per_img=t.max_per_img, sqrt_score=t.sqrt_score,
                             point_offset=m.point_offset)
