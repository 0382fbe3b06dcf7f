"""Config -> objects. The only place that turns config dataclasses into constructor arguments."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .config import Config, ModelConfig, TestConfig, TrainConfig, apply_overrides, flatten_dict
from .data.transforms import DetectionTransform, build_transforms
from .errors import UserError
from .loss import FCOSCriterion
from .model import FCOS, FCOSFPN, FCOSHead, ResNetBackbone
from .postprocess import FCOSPostProcessor


NETWORK_STRIDES = (8, 16, 32, 64, 128)  # P3..P7: ResNetBackbone's C3..C5 through FCOSFPN (+ P6, P7)


def check_levels(m: ModelConfig) -> None:
    """Assignment and decoding must use the strides the network's feature maps really have,
    with one regression range (lo < hi) per level; anything else is silently wrong."""
    if tuple(m.strides) != NETWORK_STRIDES:
        raise UserError(f"model.strides={list(m.strides)} is not what the network produces: its FPN "
                        f"levels P3..P7 have strides {list(NETWORK_STRIDES)}; remove the override (for "
                        f"small objects raise data.scale or change model.regress_ranges instead)")
    ranges = [tuple(r) for r in m.regress_ranges]
    if len(ranges) != len(m.strides) or any(len(r) != 2 or not r[0] < r[1] for r in ranges):
        raise UserError(f"model.regress_ranges={[list(r) for r in ranges]} needs one [lo, hi] pair with "
                        f"lo < hi per stride {list(m.strides)}, e.g. [[-1,64],[64,128],[128,256],"
                        f"[256,512],[512,100000000]]")


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


class InferenceParts(NamedTuple):
    """What a trained model file turns into (`build_inference`)."""
    model: FCOS  # weights loaded, in eval mode, on the CPU
    postprocessor: FCOSPostProcessor
    transform: DetectionTransform  # the evaluation transform (resize + normalise)
    class_names: list[str]
    config: Config
    category_ids: list[int] | None = None  # the dataset's id of each label (trained on COCO, or imported)
    category_ids_saved: bool = True  # False: a file from before fcosdet saved them (ids unknown, label + 1)


def config_from_state(state: dict[str, Any]) -> Config:
    """The Config saved in a checkpoint (or a weights file's metadata), over today's defaults."""
    cfg = Config()
    apply_overrides(cfg, flatten_dict(state["config"]))
    return cfg


def build_inference(state: dict[str, Any], *, overrides: dict[str, Any] | None = None) -> InferenceParts:
    """A checkpoint's state (or an exported weights file's: "model", "config", "class_names")
    -> the objects inference needs. `overrides` ({"test.score_thr": 0.3}) change test settings."""
    cfg = apply_overrides(config_from_state(state), dict(overrides or {}))
    cfg.model.backbone_weights = None  # the state holds every weight
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    transform = build_transforms(train=False, scale=cfg.data.scale, normalize=cfg.data.normalize)
    return InferenceParts(model=model.eval(), postprocessor=build_postprocessor(cfg.model, cfg.test),
                          transform=transform, class_names=list(state["class_names"]), config=cfg,
                          category_ids=category_ids_of(state), category_ids_saved="category_ids" in state)


def category_ids_of(state: dict[str, Any]) -> list[int] | None:
    """The dataset category id of each label that a model file carries (trained on a COCO-format
    dataset, or imported); None (VOC / YOLO data, or a checkpoint older than the key): label + 1."""
    ids = state.get("category_ids")
    if ids is None:
        return None
    if len(ids) != len(state["class_names"]) or not all(isinstance(i, int) for i in ids):
        raise UserError(f"the model file's category_ids ({len(ids)}) do not give one integer id per class "
                        f"({len(state['class_names'])}); import or train the model again")
    return list(ids)
