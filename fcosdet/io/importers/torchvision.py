"""torchvision's trained fcos_resnet50_fpn -> an fcosdet checkpoint that infers the same.

    fcosdet import-weights torchvision-fcos COCO_V1 --out coco_fcos.pt       # downloads (online)
    fcosdet import-weights torchvision-fcos fcos_resnet50_fpn_coco.pth --out coco_fcos.pt

The checkpoint carries the `torchvision_fcos_r50` preset (torchvision's normalisation and resize,
`data.resize=torchvision`: the normalised float image, bilinear without antialias; points at
j*stride, ReLU distances x stride without Scale, centerness on the regression tower,
sqrt(cls x ctr) > 0.2, NMS 0.6, 100 per image), so `fcosdet predict` on an image file gives what
torchvision's model gives on that file read as float [0, 1], and only tensors and plain types
(readable with torch.load(weights_only=True)).

Labels: torchvision's classifier has 91 outputs, index = COCO category id, with 0 the
background and 11 'N/A' ids no image uses. fcosdet keeps only the 80 real categories, in id
order: fcosdet label k is COCO id `category_ids[k]` (stored in the checkpoint). Dropping the
other rows changes no score of a real class (each class has its own sigmoid).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from fcosdet.errors import UserError
from fcosdet.io.hub import load_torchvision_state_dict
from fcosdet.io.model_file import ModelFile, error_line, read_tensor_file, strip_module_prefix
from fcosdet.model.build import build_model
from fcosdet.presets import preset

PRESET = "torchvision_fcos_r50"
NOT_A_CLASS = ("__background__", "N/A")
# torchvision prefix -> fcosdet prefix; the head's tower layers keep their Sequential indices
_PREFIXES = (
    ("backbone.body.", "backbone.body."),
    ("backbone.fpn.", "fpn.fpn."),
    ("head.classification_head.conv.", "head.cls_tower."),
    ("head.classification_head.cls_logits.", "head.conv_cls."),
    ("head.regression_head.conv.", "head.reg_tower."),
    ("head.regression_head.bbox_reg.", "head.conv_reg."),
    ("head.regression_head.bbox_ctrness.", "head.conv_centerness."),
)


def coco_categories() -> list[str]:
    """torchvision's 91 COCO names, index = category id ('__background__' at 0, 'N/A' gaps)."""
    from torchvision.models.detection import FCOS_ResNet50_FPN_Weights
    return list(FCOS_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def read_torchvision_fcos(source: str) -> dict[str, Tensor]:
    """A state_dict file, or the name of torchvision's published weights (COCO_V1 / DEFAULT /
    FCOS_ResNet50_FPN_Weights.COCO_V1), downloaded into torch.hub's cache when online."""
    path = Path(source)
    if path.is_file():
        state = read_tensor_file(path, unreadable=lambda exc: (
            f"cannot read {path} ({error_line(exc)}); give a torchvision fcos_resnet50_fpn state_dict "
            f"saved with torch.save(model.state_dict(), path)"))
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise UserError(f"{path} is not a state_dict (a mapping of names to tensors); save one with "
                            f"torch.save(model.state_dict(), path)")
        return state
    from torchvision.models.detection import FCOS_ResNet50_FPN_Weights
    name = source.removeprefix("FCOS_ResNet50_FPN_Weights.")
    if name not in FCOS_ResNet50_FPN_Weights.__members__:
        raise UserError(f"{source} is neither a file nor one of torchvision's FCOS weights "
                        f"({', '.join(FCOS_ResNet50_FPN_Weights.__members__)}); check the path")
    return load_torchvision_state_dict(FCOS_ResNet50_FPN_Weights[name])


def _rename(key: str) -> str | None:
    for old, new in _PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def convert_torchvision_fcos(state: dict[str, Tensor], *, class_names: list[str] | None = None,
                             source: str = "state_dict") -> tuple[dict[str, Tensor], list[str], list[int]]:
    """torchvision FCOS state_dict -> (fcosdet state_dict, class names, torchvision label of each
    fcosdet label). `class_names` name torchvision's outputs 1.. (0 is its background); None:
    COCO's 91-id list, whose background and 'N/A' rows are dropped."""
    state = strip_module_prefix(state)
    unknown = sorted(k for k in state if _rename(k) is None)
    if unknown:
        raise UserError(f"{source} is not a torchvision fcos_resnet50_fpn state_dict (unexpected "
                        f"keys {unknown[:3]})")
    logits = state["head.classification_head.cls_logits.weight"]  # (K, 256, 3, 3), K incl. background
    names = coco_categories() if class_names is None else ["__background__", *class_names]
    if len(names) != logits.size(0):
        raise UserError(f"{source} has {logits.size(0)} class outputs (background included) but "
                        f"{len(names)} names are known; pass --class-names with its "
                        f"{logits.size(0) - 1} class names in label order")
    keep = [i for i, n in enumerate(names) if n not in NOT_A_CLASS]  # torchvision labels kept
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # BatchNorm's counter: FrozenBatchNorm2d has none
        new = _rename(key)
        out[new] = value[keep].clone() if new.startswith("head.conv_cls.") else value.clone()
    return out, [names[i] for i in keep], keep


def import_torchvision_fcos(source: str, out: Path, *, class_names: list[str] | None = None) -> dict[str, Any]:
    """Convert, check that every tensor fits the preset's model (strict load), save atomically."""
    converted, names, labels = convert_torchvision_fcos(read_torchvision_fcos(source),
                                                        class_names=class_names, source=source)
    cfg = preset(PRESET)
    cfg.model.num_classes = len(names)
    model = build_model(cfg.model)
    try:
        result = model.load_state_dict(converted, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape: not the R-50 FPN-256 architecture
        raise UserError(f"{source} does not fit torchvision's fcos_resnet50_fpn: "
                        f"{str(exc).splitlines()[-1].strip()}") from None
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"{source} does not fit torchvision's fcos_resnet50_fpn (missing "
                        f"{result.missing_keys[:3]}, unexpected {result.unexpected_keys[:3]})")
    ModelFile(model=model.state_dict(), config=cfg.to_dict(), class_names=names, category_ids=labels,
              imported_from=f"torchvision-fcos:{source}").save(Path(out))
    return {"out": str(out), "tensors": len(converted), "classes": len(names), "preset": PRESET}
