"""ModelConfig / TestConfig -> the model, the criterion and the post-processor (the model side of `build`;
the data, engine and deploy sides are their folders' build.py). Only these builders and the CLI read a Config."""
from __future__ import annotations

import torch

from fcosdet.config import ModelConfig, TestConfig, TrainConfig
from fcosdet.errors import UserError
from fcosdet.model import FCOS, FCOSFPN, FCOSHead, ResNetBackbone
from fcosdet.model.criterion import FCOSCriterion
from fcosdet.model.points import REGRESS_RANGES, STRIDES
from fcosdet.model.postprocess import FCOSPostProcessor


def check_levels(m: ModelConfig) -> None:
    """Assignment and decoding must use the strides the network's feature maps really have,
    with one regression range (lo < hi) per level; anything else is silently wrong. The network's
    levels P3..P7 (ResNetBackbone's C3..C5 through FCOSFPN, + P6, P7) have `points.STRIDES`."""
    if tuple(m.strides) != STRIDES:
        raise UserError(f"model.strides={list(m.strides)} is not what the network produces: its FPN "
                        f"levels P3..P7 have strides {list(STRIDES)}; remove the override (for "
                        f"small objects raise data.scale or change model.regress_ranges instead)")
    ranges = [tuple(r) for r in m.regress_ranges]
    if len(ranges) != len(m.strides) or any(len(r) != 2 or not r[0] < r[1] for r in ranges):
        example = ",".join(f"[{lo:g},{hi:.0f}]" for lo, hi in REGRESS_RANGES)
        raise UserError(f"model.regress_ranges={[list(r) for r in ranges]} needs one [lo, hi] pair with "
                        f"lo < hi per stride {list(m.strides)}, e.g. [{example}]")


def build_model(m: ModelConfig) -> FCOS:
    check_levels(m)
    backbone = ResNetBackbone(depth=m.depth, norm=m.backbone_norm, frozen_stages=m.frozen_stages,
                              norm_eval=m.norm_eval, weights=m.backbone_weights, style=m.backbone_style)
    fpn = FCOSFPN(in_channels=backbone.out_channels, out_channels=m.fpn_channels)
    head = FCOSHead(num_classes=m.num_classes, in_channels=m.fpn_channels,
                    feat_channels=m.feat_channels, stacked_convs=m.stacked_convs,
                    strides=m.strides, norm=m.head_norm, conv_bias=m.conv_bias,
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
    check_levels(m)
    if m.point_offset == "torchvision":
        raise UserError("model.point_offset=torchvision reproduces the inference of imported torchvision "
                        "weights; training assigns targets on points spaced by the stride: use "
                        "--set model.point_offset=zero (as the fcos_r50_finetune preset does)")
    return FCOSCriterion(num_classes=m.num_classes, strides=tuple(m.strides),
                         regress_ranges=tuple(tuple(r) for r in m.regress_ranges),
                         center_sampling=m.center_sampling,
                         center_sample_radius=m.center_sample_radius,
                         norm_on_bbox=m.norm_on_bbox, bbox_loss=m.bbox_loss,
                         point_offset=m.point_offset)


def build_postprocessor(m: ModelConfig, t: TestConfig) -> FCOSPostProcessor:
    check_levels(m)
    return FCOSPostProcessor(strides=tuple(m.strides), norm_on_bbox=m.norm_on_bbox,
                             nms_pre=t.nms_pre, score_thr=t.score_thr, nms_iou=t.nms_iou,
                             max_per_img=t.max_per_img, sqrt_score=t.sqrt_score,
                             point_offset=m.point_offset)
