"""Named presets (each a Config with fields overridden explicitly) and the config loader:
a preset name, or a YAML file laid over a preset, plus `--set key=value` overrides."""
from __future__ import annotations

from pathlib import Path

import yaml

from fcosdet.config import Config, apply_overrides, flatten_dict, parse_sets
from fcosdet.console import say
from fcosdet.errors import UserError


def _fcos_r50_1x() -> Config:
    """mmdet fcos_r50_caffe_fpn_gn-head_1x_coco."""
    return Config()


def _fcos_r50_tricks_1x() -> Config:
    """mmdet fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_1x_coco."""
    cfg = Config()
    cfg.model.center_sampling = True
    cfg.model.norm_on_bbox = True
    cfg.model.centerness_on_reg = True
    cfg.model.conv_bias = True
    cfg.model.bbox_loss = "giou"
    cfg.test.nms_iou = 0.6
    cfg.train.grad_clip = None
    cfg.train.warmup = "linear"
    return cfg


def _cpu(cfg: Config) -> Config:
    """Small CPU variant: ResNet-18 from scratch (GroupNorm), short side 320-448 in training (384
    at test), long side at most 512."""
    cfg.model.depth = 18
    cfg.model.backbone_norm = "gn"
    cfg.model.frozen_stages = -1
    cfg.model.norm_eval = False
    cfg.model.fpn_channels = 128
    cfg.model.feat_channels = 128
    cfg.data.scale = (512, 384)
    cfg.data.multiscale_short = (320, 352, 384, 416, 448)
    cfg.data.normalize = "pytorch"
    cfg.data.batch_size = 4
    cfg.train.epochs = 24
    cfg.train.schedule = "cosine"
    cfg.train.warmup = "linear"
    cfg.train.warmup_iters = 100
    return cfg


def _r18_tricks_cpu() -> Config:
    """The tricks on the small CPU variant, with scale-jitter crop and photometric augmentation:
    on aquarium from scratch (12 epochs at this scale) they gave AP 0.036 against 0.005 without
    (benchmarks/results/aquarium_ema_aug_12ep_cpu.json; one seed each). EMA stays off (0.033).

    One dataset, one seed, a baseline with a loss spike: the augmentation and EMA defaults await
    the preset sweep over datasets and seeds at this preset's 24-epoch budget (issue 24,
    benchmarks/preset_sweep.py); on two datasets outside the project, 24 epochs and one seed
    each, the augmentation lost 3.3 AP on one and gained 0.6 on the other."""
    cfg = _cpu(_fcos_r50_tricks_1x())
    cfg.data.crop_scale = (0.75, 1.5)
    cfg.data.photometric_prob = 0.5
    return cfg


def _demo() -> Config:
    """The built-in demo: the synthetic shapes dataset, 192 px images, a few minutes on 2 cores.

    A ResNet-10 and AdamW: from scratch in 384 steps, AdamW learns faster than SGD (AP 0.60 vs
    0.53 at 8 epochs) and ResNet-10 costs about half of ResNet-18. These figures (and the 6
    epochs) are one seed each on the shapes dataset: they await a sweep over seeds
    (benchmarks/preset_sweep.py --preset demo --data SHAPES_DIR)."""
    cfg = _cpu(_fcos_r50_tricks_1x())
    cfg.model.num_classes = 5
    cfg.model.depth = 10
    cfg.model.fpn_channels = 64
    cfg.model.feat_channels = 64
    cfg.model.stacked_convs = 2
    cfg.model.head_norm = "gn"
    cfg.data.scale = (192, 192)
    cfg.data.multiscale_short = None
    cfg.data.batch_size = 8
    cfg.train.epochs = 6  # 7 gave the same AP (0.556 vs 0.555 at epoch 6) in 1.3 min more
    cfg.train.optimizer = "adamw"
    cfg.train.lr = 1e-3
    cfg.train.weight_decay = 0.05
    cfg.train.base_batch = 8
    cfg.train.warmup_iters = 50
    cfg.train.eval_interval = 3
    return cfg


def _torchvision_fcos_r50() -> Config:
    """torchvision's fcos_resnet50_fpn at inference (what `fcosdet import-weights torchvision-fcos`
    writes): points at torchvision's anchor centres (j * padded size // level size: j*stride when
    the padded size is a multiple of 128), ReLU distances x stride without a learnable Scale, centerness on
    the regression tower, conv bias, pytorch normalisation and torchvision's resize (the normalised
    float image, bilinear without antialias), frozen BN, sqrt(cls x ctr) > 0.2, NMS 0.6, 100 per
    image. For inference: to train from these weights use fcos_r50_finetune."""
    cfg = _fcos_r50_tricks_1x()
    cfg.model.num_classes = 80
    cfg.model.learnable_scale = False
    cfg.model.point_offset = "torchvision"
    cfg.data.normalize = "pytorch"
    cfg.data.resize = "torchvision"
    cfg.test.sqrt_score = True
    cfg.test.score_thr = 0.2
    cfg.test.nms_iou = 0.6
    cfg.test.max_per_img = 100
    return cfg


def _fcos_r50_finetune() -> Config:
    """Fine-tune torchvision's architecture on a small dataset: start from an imported COCO
    FCOS (`--set model.init_from=coco_fcos.pt`) or an ImageNet backbone
    (`--set model.backbone_weights=torchvision:ResNet50_Weights.IMAGENET1K_V1`). Frozen BN and
    stem, 12 epochs, half the reference lr, short side 640-800, evaluation threshold 0.05,
    fcosdet's resize (the model trains and is evaluated with one resize)."""
    cfg = _torchvision_fcos_r50()
    cfg.model.point_offset = "zero"  # training assigns on points spaced by the stride
    cfg.data.resize = "antialias_uint8"
    cfg.data.scale = (1333, 800)
    cfg.data.multiscale_short = (640, 672, 704, 736, 768, 800)
    cfg.data.batch_size = 4
    cfg.test.score_thr = 0.05
    cfg.train.lr = 0.005
    cfg.train.warmup_iters = 100
    cfg.train.epochs = 12
    cfg.train.steps = (8, 11)
    return cfg


PRESETS = {
    "fcos_r50_1x": _fcos_r50_1x,
    "fcos_r50_tricks_1x": _fcos_r50_tricks_1x,
    "fcos_r18_cpu": lambda: _cpu(_fcos_r50_1x()),
    "fcos_r18_tricks_cpu": _r18_tricks_cpu,
    "demo": _demo,
    "torchvision_fcos_r50": _torchvision_fcos_r50,
    "fcos_r50_finetune": _fcos_r50_finetune,
}


def preset(name: str) -> Config:
    if not isinstance(name, str) or name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))} "
                        f"or give a YAML config file")
    return PRESETS[name]()


DEFAULT_BASE = "fcos_r50_1x"  # what a YAML file without `base:` is laid over


def load_config(source: str, sets: list[str] | None = None) -> Config:
    """A preset name or a YAML config file, plus `key=value` overrides (values parsed as YAML).

    A YAML file holds sections (model, test, data, train) of the fields it changes, laid over the
    preset its `base:` names (`preset:` is accepted too); a partial file without one is laid over
    fcos_r50_1x, and says so. A run's saved config.yaml holds every field and needs no base."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        raw = _read_yaml_config(path)
        base = raw.pop("base", None) or raw.pop("preset", None)
        values = flatten_dict(raw)
        if base is None and not set(flatten_dict(Config().to_dict())) <= set(values):
            say(f"{path} has no `base:`: laid over {DEFAULT_BASE}; add `base: PRESET` ({', '.join(PRESETS)}) "
                f"to change another preset")
        cfg = apply_overrides(preset(base or DEFAULT_BASE), values)
    else:
        cfg = preset(source)
    return apply_overrides(cfg, parse_sets(sets or []))


def _read_yaml_config(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"config file {path} does not exist; give a preset name "
                        f"({', '.join(sorted(PRESETS))}) or a YAML file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (model, test, data, train)")
    return raw
