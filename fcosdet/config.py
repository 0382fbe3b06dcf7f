"""Typed configuration: one dataclass tree, presets that override fields explicitly.

Only the CLI (and the builders in `fcosdet.model.build`) read a Config; the model, loss,
post-processor and engine take plain keyword arguments.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from fcosdet.errors import UserError
from fcosdet.model.points import REGRESS_RANGES, STRIDES

OptimizerKind = Literal["sgd", "adamw"]  # engine.optim.build_optimizer's `kind`


@dataclass
class ModelConfig:
    num_classes: int = 80
    depth: int = 50
    backbone_norm: Literal["frozen_bn", "bn", "gn"] = "frozen_bn"
    # pytorch: torchvision's ResNet (stride on the 3x3 conv); caffe: mmdetection's caffe-style
    # ResNet (stride on the first 1x1 conv; its published FCOS checkpoints; depth 50 / 101 only)
    backbone_style: Literal["pytorch", "caffe"] = "pytorch"
    frozen_stages: int = 1
    norm_eval: bool = True
    # a torchvision ResNet state_dict on disk, or torchvision's enum by name:
    # "torchvision:ResNet50_Weights.IMAGENET1K_V2" (downloaded into torch.hub.get_dir() when online)
    backbone_weights: str | None = None
    # start from these weights (an fcosdet checkpoint or an imported file; see fcosdet.engine.finetune):
    # backbone, FPN, towers, regression; classification rows kept for classes whose names match
    init_from: str | None = None
    fpn_channels: int = 256
    feat_channels: int = 256
    stacked_convs: int = 4
    head_norm: Literal["gn"] | None = "gn"
    conv_bias: bool | None = None  # None: bias only where no norm follows (the reference's 'auto')
    dcn_on_last_conv: bool = False
    norm_on_bbox: bool = False
    centerness_on_reg: bool = False
    # a stride-4 level for small objects: P2..P6 from C2..C5 (+ P6) instead of P3..P7, the head
    # shared; strides / regress_ranges left at these defaults then take points.P2_STRIDES /
    # P2_REGRESS_RANGES (fcosdet.model.build.network_levels)
    p2: bool = False
    strides: tuple[int, ...] = STRIDES
    regress_ranges: tuple[tuple[float, float], ...] = REGRESS_RANGES
    center_sampling: bool = False
    center_sample_radius: float = 1.5
    bbox_loss: Literal["iou", "giou"] = "iou"  # iou: -log IoU
    learnable_scale: bool = True  # false: no per-level Scale (torchvision's FCOS)
    # zero: points at j*stride (torchvision's FCOS); torchvision: also its spacing of
    # (padded size) // (level size), for exact inference of imported weights (not for training)
    point_offset: Literal["half_stride", "zero", "torchvision"] = "half_stride"


@dataclass
class TestConfig:
    nms_pre: int = 1000
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100
    sqrt_score: bool = False


@dataclass
class DataConfig:
    dataset: str = ""  # a dataset YAML or a folder in COCO / VOC / YOLO layout
    train_split: str = "train"
    val_split: str = "val"  # "none": train without evaluation (no best.pt)
    scale: tuple[int, int] = (1333, 800)  # (max long side, short side)
    multiscale_short: tuple[int, ...] | None = None  # random short side per image in training
    flip_prob: float = 0.5
    # training augmentation (fcosdet.data.transforms.DetectionTransform): scale-jitter crop, the
    # resize factor drawn from [lo, hi] then a crop back to the plain size; photometric distortion
    crop_scale: tuple[float, float] | None = None
    photometric_prob: float = 0.0
    # training on tiles (fcosdet.data.tiles): a tile side in original pixels, cut around a random
    # box before the resize (the tile is the training image: data.scale resizes it as sliced
    # inference resizes each slice); tile_empty: the share of tiles placed where no box is kept
    # (0.1: box-centred tiles already hold much background, and 9 in 10 steps stay on objects);
    # tile_min_area: a box clipped by the tile stays when it keeps at least this fraction of its
    # area (of the tile's, for a box larger than the tile): 0.5 keeps boxes that are mostly
    # inside, drops fragments that would teach the model to detect parts of objects
    tile: int | None = None
    tile_empty: float = 0.1
    tile_min_area: float = 0.5
    # caffe: BGR, 0-255, mean only (Detectron's mean); caffe_detectron2: the same with Detectron2's
    # mean (mmdetection's detectron2/resnet50_caffe models); pytorch: RGB, /255, ImageNet mean/std
    normalize: Literal["caffe", "caffe_detectron2", "pytorch"] = "caffe"
    # antialias_uint8: the 8-bit image, antialiased, new size int(size * factor + 0.5), rounded
    # to 8 bits; torchvision: its detection models' resize (the normalised float image, bilinear
    # without antialias, new size int(size * factor)), for imported torchvision models
    resize: Literal["antialias_uint8", "torchvision"] = "antialias_uint8"
    batch_size: int = 2  # images per worker
    workers: int = 2
    skip_invalid: bool = False
    # accept image file names in annotations that leave the dataset folder (absolute or '..')
    allow_outside_root: bool = False


@dataclass
class TrainConfig:
    epochs: int = 12
    optimizer: OptimizerKind = "sgd"  # sgd: the reference
    lr: float = 0.01  # for `base_batch` images per step; scaled linearly to the real batch
    base_batch: int = 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bias_lr_mult: float = 2.0
    bias_decay_mult: float = 0.0  # also applies to norm weights
    warmup: Literal["constant", "linear", "none"] = "constant"
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3
    schedule: Literal["step", "cosine"] = "step"
    steps: tuple[int, ...] = (8, 11)  # epochs at which lr drops x0.1
    grad_clip: float | None = 35.0
    amp: Literal["none", "bf16", "fp16"] = "none"  # CUDA only
    eval_interval: int = 1  # epochs
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    sync_bn: bool = False
    log_interval: int = 20  # iterations between log records at most (short runs log ~100 points)
    max_iters: int | None = None  # stop early (smoke runs)
    # EMA of the weights (fcosdet.engine.ema): evaluated and saved as the model best/last carry
    ema: bool = False
    ema_decay: float = 0.999
    ema_warmup_iters: int = 200  # decay_t = ema_decay * (1 - exp(-t / ema_warmup_iters))
    checkpoint_interval: int | None = None  # also write last.pt every N iterations (mid-epoch)
    # weights and activations in channels_last: the same losses within float rounding, a faster
    # step on the CPU (benchmarks/speed_vs_torchvision.py); null (default): on the CPU only (not
    # measured on a GPU yet)
    channels_last: bool | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    test: TestConfig = field(default_factory=TestConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert a YAML / --set value to the field's declared type, or raise a UserError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        if hint is type(None) or type(None) in args:
            return None
        raise UserError(f"config key {key} cannot be empty")
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        options = [a for a in args if a is not type(None)]
        errors = []
        for opt in options:
            try:
                return _coerce(value, opt, key)
            except UserError as exc:
                errors.append(str(exc))
        raise UserError(errors[0])
    if origin is Literal:  # a choice: the allowed values are the type
        if isinstance(value, (str, int)) and not isinstance(value, bool) and value in args:
            return value
        raise UserError(f"config key {key} must be one of {', '.join(map(str, args))}; got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {key} needs a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise UserError(f"config key {key} needs {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise UserError(f"config key {key} needs true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise UserError(f"config key {key} needs a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise UserError(f"config key {key} needs a number, got {value!r}") from None
        if hint is int and not number.is_integer():
            raise UserError(f"config key {key} needs an integer, got {value!r}")
        return int(number) if hint is int else number
    if hint is str:
        return str(value)
    raise UserError(f"config key {key} has an unsupported type")


def apply_overrides(cfg: Config, overrides: dict[str, Any]) -> Config:
    """Set dotted keys (`train.lr`, `model.depth`) with type checks; unknown keys are errors."""
    for key, value in overrides.items():
        key = str(key)
        parts = key.split(".")
        target: Any = cfg
        for part in parts[:-1]:
            if not dataclasses.is_dataclass(target) or not hasattr(target, part):
                raise UserError(f"unknown config key {key!r}; see the keys in the run's config.yaml")
            target = getattr(target, part)
        hints = typing.get_type_hints(type(target)) if dataclasses.is_dataclass(target) else {}
        name = parts[-1]
        if name not in hints or dataclasses.is_dataclass(getattr(target, name)):
            raise UserError(f"unknown config key {key!r}; see the keys in the run's config.yaml")
        setattr(target, name, _coerce(value, hints[name], key))
    return cfg


def flatten_dict(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """`--set key=value` strings -> {key: value}, values parsed as YAML."""
    overrides = {}
    for item in sets:
        if "=" not in item:
            raise UserError(f"--set {item!r} needs the form key=value, e.g. --set train.lr=0.005")
        key, value = item.split("=", 1)
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UserError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(exc).split())}); "
                            f"quote it or fix it, e.g. --set train.lr=0.005") from None
    return overrides


def save_config(cfg: Config, path: Path) -> None:
    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x
    path.write_text(yaml.safe_dump(plain(cfg.to_dict()), sort_keys=False))
