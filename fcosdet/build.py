"""Config -> objects. The only place that turns config dataclasses into constructor arguments."""
from __future__ import annotations

from .config import ModelConfig, TestConfig
from .loss import FCOSCriterion
from .model import FCOS, FCOSFPN, FCOSHead, ResNetBackbone
from .postprocess import FCOSPostProcessor


def build_model(m: ModelConfig) -> FCOS:
    backbone = ResNetBackbone(depth=m.depth, norm=m.backbone_norm, frozen_stages=m.frozen_stages,
                              norm_eval=m.norm_eval, weights=m.backbone_weights)
    fpn = FCOSFPN(in_channels=backbone.out_channels, out_channels=m.fpn_channels)
    head = FCOSHead(num_classes=m.num_classes, in_channels=m.fpn_channels,
                    feat_channels=m.feat_channels, stacked_convs=m.stacked_convs,
                    strides=m.strides, norm=m.head_norm, conv_bias=m.conv_bias,
                    norm_on_bbox=m.norm_on_bbox, centerness_on_reg=m.centerness_on_reg,
                    dcn_on_last_conv=m.dcn_on_last_conv)
    return FCOS(backbone=backbone, fpn=fpn, head=head)


def build_criterion(m: ModelConfig) -> FCOSCriterion:
    return FCOSCriterion(num_classes=m.num_classes, strides=tuple(m.strides),
                         regress_ranges=tuple(tuple(r) for r in m.regress_ranges),
                         center_sampling=m.center_sampling,
                         center_sample_radius=m.center_sample_radius,
                         norm_on_bbox=m.norm_on_bbox, bbox_loss=m.bbox_loss)


def build_postprocessor(m: ModelConfig, t: TestConfig) -> FCOSPostProcessor:
    return FCOSPostProcessor(strides=tuple(m.strides), norm_on_bbox=m.norm_on_bbox,
                             nms_pre=t.nms_pre, score_thr=t.score_thr, nms_iou=t.nms_iou,
                             max_per_img=t.max_per_img, sqrt_score=t.sqrt_score)
