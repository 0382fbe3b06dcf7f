"""Start training from weights someone trained: `--set model.init_from=PATH`.

PATH is any fcosdet model file with weights (a run's best.pt / last.pt, a file written by
`fcosdet import-weights`, or an exported .safetensors). Every tensor whose name and shape match is copied: backbone, FPN,
towers, regression and centerness convs. The classification conv (C rows, one per class) is
matched by class name: rows of classes the source also has are copied, the others keep their
fresh initialisation (normal(0, 0.01) weights, bias for a prior of 0.01). Any other tensor
whose shape differs is an error naming the config key to fix; the report lists what was
loaded, re-initialised, or left as initialised.

The source's input normalisation is taken over (its weights expect it), as is the
normalisation torchvision's named backbone weights expect; a change is printed, never silent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from fcosdet.config import Config
from fcosdet.data.transforms import IMAGENET_MEAN_RGB
from fcosdet.errors import UserError
from fcosdet.io.hub import is_torchvision_name, torchvision_weights
from fcosdet.io.model_file import ModelFile

CLS_KEYS = ("head.conv_cls.weight", "head.conv_cls.bias")  # (C, F, 3, 3), (C,)
# settings that change what the weights compute: differing ones are reported
_MEANING = ("norm_on_bbox", "centerness_on_reg", "learnable_scale", "point_offset", "head_norm", "backbone_norm",
            "backbone_style")


@dataclass
class InitReport:
    source: str
    loaded: list[str] = field(default_factory=list)  # copied whole
    reinitialised: list[str] = field(default_factory=list)  # kept this model's fresh initialisation
    not_in_source: list[str] = field(default_factory=list)  # this model has them, the file does not
    skipped: list[str] = field(default_factory=list)  # the file has them, this model does not
    classes_kept: list[str] = field(default_factory=list)  # classification rows copied by name
    classes_new: list[str] = field(default_factory=list)  # classification rows re-initialised
    notes: list[str] = field(default_factory=list)  # settings that differ from the source's (warnings)

    def lines(self) -> list[str]:
        def part(keys: list[str]) -> str:
            return f"{len(keys)}" + (f" ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" if keys else "")
        return [f"init_from {self.source}: {len(self.loaded)} tensors loaded, re-initialised "
                f"{part(self.reinitialised)}, not in the file (kept as initialised) {part(self.not_in_source)}, "
                f"in the file but not in this model (skipped) {part(self.skipped)}",
                f"init_from: classification rows copied for {len(self.classes_kept)} classes matched by "
                f"name ({', '.join(self.classes_kept[:8]) or 'none'}), re-initialised for "
                f"{len(self.classes_new)} ({', '.join(self.classes_new[:8]) or 'none'})"]


def read_source(path: str) -> ModelFile:
    """The checkpoint (.pt, read with weights_only=True) or exported .safetensors file init_from
    names (ModelFile.load: it carries class names and its config)."""
    source = ModelFile.load(path)
    source.require_weights()
    return source


def pretrained_normalize(cfg: Config, source: ModelFile | None) -> tuple[str, str] | None:
    """(normalisation the start weights expect, why), or None when nothing says."""
    if source is not None:
        return source.config["data"]["normalize"], f"model.init_from={cfg.model.init_from}"
    if is_torchvision_name(cfg.model.backbone_weights):
        mean = list(torchvision_weights(cfg.model.backbone_weights).transforms().mean)
        if [round(v, 3) for v in mean] != list(IMAGENET_MEAN_RGB):
            raise UserError(f"{cfg.model.backbone_weights} expects inputs normalised with mean {mean}, "
                            f"which fcosdet does not offer; use ImageNet-normalised ResNet weights")
        return "pytorch", f"model.backbone_weights={cfg.model.backbone_weights}"
    return None


def _copy_class_rows(own: dict[str, Tensor], src: dict[str, Tensor], own_names: list[str],
                     src_names: list[str], report: InitReport) -> dict[str, Tensor]:
    """Classification weight (C, F, 3, 3) / bias (C,): rows of classes both have, by name."""
    out = {}
    index = {n: i for i, n in enumerate(src_names)}
    pairs = [(i, index[n]) for i, n in enumerate(own_names) if n in index]  # (own row, source row)
    report.classes_kept = [own_names[i] for i, _ in pairs]
    report.classes_new = [n for n in own_names if n not in index]
    for key in CLS_KEYS:
        if key not in src or src[key].shape[1:] != own[key].shape[1:]:
            report.reinitialised.append(key)
            report.classes_kept, report.classes_new = [], list(own_names)
            continue
        value = own[key].clone()
        for i, j in pairs:
            value[i] = src[key][j]
        out[key] = value
        (report.loaded if len(pairs) == len(own_names) == len(src_names) else report.reinitialised).append(key)
    return out


def init_from_checkpoint(model: nn.Module, source: ModelFile, *, class_names: list[str],
                         path: str, model_config: dict[str, Any] | None = None) -> InitReport:
    """Copy the source's matching tensors into `model` (in place) and report what happened."""
    report = InitReport(source=path)
    own, src = model.state_dict(), source.model
    update: dict[str, Tensor] = {}
    wrong = []
    for key, value in own.items():
        if key in CLS_KEYS:
            continue
        if key not in src:
            report.not_in_source.append(key)
        elif src[key].shape != value.shape:
            wrong.append(f"{key} {tuple(src[key].shape)} vs {tuple(value.shape)}")
        else:
            update[key] = src[key]
            report.loaded.append(key)
    if wrong:
        raise UserError(f"model.init_from={path} does not fit this model ({len(wrong)} tensors of another "
                        f"shape: {wrong[0]}); use the source's model.depth / fpn_channels / feat_channels / "
                        f"stacked_convs / head_norm (the source has model.depth={source.config['model']['depth']})")
    update.update(_copy_class_rows(own, src, class_names, list(source.class_names), report))
    report.skipped = sorted(k for k in src if k not in own)
    model.load_state_dict(update, strict=False)
    if model_config is not None:
        theirs = source.config["model"]
        # point_offset zero is torchvision's spacing as training can assign it (fcos_r50_finetune)
        same = {("point_offset", "torchvision", "zero")}
        report.notes = [f"model.{k}={model_config[k]} here, {theirs[k]} in the source: its weights were "
                        f"trained for the other setting (--set model.{k}={theirs[k]} uses them as trained)"
                        for k in _MEANING if k in theirs and theirs[k] != model_config[k]
                        and (k, theirs[k], model_config[k]) not in same]
    return report
