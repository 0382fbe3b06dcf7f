"""Typed configuration: one dataclass tree, presets that override fields explicitly.

Only the CLI (and the builders in `fcosdet.build`) read a Config; the model, loss,
post-processor and engine take plain keyword arguments.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .engine.optim import OptimizerKind
from .errors import UserError


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
    # start from these weights (an fcosdet checkpoint or an imported file; see fcosdet.finetune):
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
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)
    regress_ranges: tuple[tuple[float, float], ...] = (
        (-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8))
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
    # caffe: BGR, 0-255, mean only (Detectron's mean); caffe_detectron2: the same with Detectron2's
    # mean (mmdetection's detectron2/resnet50_caffe models); pytorch: RGB, /255, ImageNet mean/std
    normalize: Literal["caffe", "caffe_detectron2", "pytorch"] = "caffe"
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
    log_interval: int = 20
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
    """Small CPU variant: ResNet-18 from scratch (GroupNorm), short side 320-512."""
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
    (benchmarks/results/aquarium_ema_aug_12ep_cpu.json; one seed each). EMA stays off (0.033)."""
    cfg = _cpu(_fcos_r50_tricks_1x())
    cfg.data.crop_scale = (0.75, 1.5)
    cfg.data.photometric_prob = 0.5
    return cfg


def _demo() -> Config:
    """The built-in demo: the synthetic shapes dataset, 192 px images, a few minutes on 2 cores.

    A ResNet-10 and AdamW: from scratch in 384 steps, AdamW learns faster than SGD (AP 0.60 vs
    0.53 at 8 epochs) and ResNet-10 costs about half of ResNet-18."""
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
    the regression tower, conv bias, pytorch normalisation, frozen BN, sqrt(cls x ctr) > 0.2,
    NMS 0.6, 100 per image. For inference: to train from these weights use fcos_r50_finetune."""
    cfg = _fcos_r50_tricks_1x()
    cfg.model.num_classes = 80
    cfg.model.learnable_scale = False
    cfg.model.point_offset = "torchvision"
    cfg.data.normalize = "pytorch"
    cfg.test.sqrt_score = True
    cfg.test.score_thr = 0.2
    cfg.test.nms_iou = 0.6
    cfg.test.max_per_img = 100
    return cfg


def _fcos_r50_finetune() -> Config:
    """Fine-tune torchvision's architecture on a small dataset: start from an imported COCO
    FCOS (`--set model.init_from=coco_fcos.pt`) or an ImageNet backbone
    (`--set model.backbone_weights=torchvision:ResNet50_Weights.IMAGENET1K_V1`). Frozen BN and
    stem, 12 epochs, half the reference lr, short side 640-800, evaluation threshold 0.05."""
    cfg = _torchvision_fcos_r50()
    cfg.model.point_offset = "zero"  # training assigns on points spaced by the stride
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


def load_config(source: str, sets: list[str] | None = None) -> Config:
    """A preset name or a YAML file (optionally with `preset: NAME` as its base) plus
    `key=value` overrides (values parsed as YAML)."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; give a preset name "
                            f"({', '.join(sorted(PRESETS))}) or a YAML file")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
        if not isinstance(raw, dict):
            raise UserError(f"config file {path} must hold a mapping of sections")
        cfg = preset(raw.pop("preset", "fcos_r50_1x"))
        apply_overrides(cfg, flatten_dict(raw))
    else:
        cfg = preset(source)
    return apply_overrides(cfg, parse_sets(sets or []))


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
