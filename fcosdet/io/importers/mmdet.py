"""mmdetection's FCOS checkpoints -> an fcosdet checkpoint that infers the same.

  fcosdet import-weights mmdet-fcos fcos_r50_caffe_fpn_gn-head_1x_coco-821213aa.pth --out fcos_mmdet.pt

An mmdetection 2.x checkpoint is {"state_dict": {...}, "meta": {"CLASSES": (...), "config": text, ...}}
(3.x: meta["dataset_meta"]["classes"]). Keys: backbone.* (the ResNet, torchvision's names),
neck.lateral_convs.{0,1,2}.conv.* (C3..C5 1x1), neck.fpn_convs.{0..4}.conv.* (P3..P5 3x3, then
P6 / P7 on the output with a ReLU before P7), bbox_head.{cls,reg}_convs.{i}.conv.* / .gn.*,
bbox_head.conv_{cls,reg,centerness}.*, bbox_head.scales.{i}.scale. Labels are [0, C) in CLASSES
order, as fcosdet's. The architecture comes from the tensors; what the tensors cannot tell
(norm_on_bbox, centerness_on_reg, the ResNet style, the normalisation, the test settings) from
meta["config"], read with regular expressions and ast.literal_eval (never executed), or, when a
file has no config text, from --variant (one of the two published R-50 configs).
"""
from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path
from typing import Any

from torch import Tensor

from fcosdet.config import Config, apply_overrides, parse_sets
from fcosdet.data.transforms import CAFFE_MEANS_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from fcosdet.errors import UserError
from fcosdet.io.importers.torchvision import NOT_A_CLASS, coco_categories
from fcosdet.io.model_file import ModelFile, read_tensor_file, strip_module_prefix
from fcosdet.model.build import build_model
from fcosdet.presets import preset

MMDET_VARIANTS = {  # --variant -> (fcosdet preset, data.normalize): mmdet's published caffe R-50 configs
    "fcos_r50_1x": ("fcos_r50_1x", "caffe"),  # fcos_r50_caffe_fpn_gn-head_1x_coco (36.6 AP)
    # fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_1x_coco (38.7 AP)
    "fcos_r50_tricks_1x": ("fcos_r50_tricks_1x", "caffe_detectron2"),
}
# data.normalize -> mmdet's img_norm_cfg (mean, std, to_rgb): mmdet's mean / std are in pixels 0..255
_MMDET_NORMS = {
    **{mode: (tuple(mean), (1.0, 1.0, 1.0), False) for mode, mean in CAFFE_MEANS_BGR.items()},
    "pytorch": (tuple(255 * m for m in IMAGENET_MEAN_RGB), tuple(255 * s for s in IMAGENET_STD_RGB), True),
}
_FPN_OUTPUTS = ("layer_blocks.0.0", "layer_blocks.1.0", "layer_blocks.2.0", "extra_blocks.p6", "extra_blocks.p7")
# mmdet before 2.0 named the predictors fcos_cls / fcos_reg / fcos_centerness (2.x renames them on load)
_OLD_PREDICTORS = (("bbox_head.fcos_cls.", "bbox_head.conv_cls."), ("bbox_head.fcos_reg.", "bbox_head.conv_reg."),
                   ("bbox_head.fcos_centerness.", "bbox_head.conv_centerness."))
_MMDET_PREFIXES = (("backbone.", "backbone.body."), ("bbox_head.conv_cls.", "head.conv_cls."),
                   ("bbox_head.conv_reg.", "head.conv_reg."),
                   ("bbox_head.conv_centerness.", "head.conv_centerness."), ("bbox_head.scales.", "head.scales."))
# a Python literal as mmcv's Config.pretty_text writes it: bool, None, string, number, flat list / tuple
_LITERAL = r"(True|False|None|'[^']*'|\"[^\"]*\"|-?[0-9][0-9.eE+-]*|\[[^\[\]]*\]|\([^()]*\))"
_MMDET_FIELDS = ("norm_on_bbox", "centerness_on_reg", "center_sampling", "center_sample_radius",
                 "dcn_on_last_conv", "style", "relu_before_extra_convs", "num_groups", "score_thr", "nms_pre",
                 "iou_threshold", "max_per_img", "mean", "std", "to_rgb", "bgr_to_rgb")


def read_mmdet_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, meta) of an mmdetection checkpoint, read with torch.load(weights_only=True)
    only: a file holding other Python objects is refused, never loaded another way."""
    if not path.is_file():
        raise UserError(f"mmdetection checkpoint {path} does not exist; check the path")
    ckpt = read_tensor_file(path, refused=lambda exc: _refusal(path, exc), unreadable=lambda exc: (
        f"cannot read {path} ({type(exc).__name__}); give an mmdetection FCOS checkpoint (.pth)"))
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"{path} is not an mmdetection checkpoint (no 'state_dict' of tensors); give the "
                        f".pth file mmdetection's model zoo publishes")
    meta = ckpt.get("meta")
    return state, meta if isinstance(meta, dict) else {}


def _refusal(path: Path, exc: pickle.UnpicklingError) -> str:
    """The error for a checkpoint holding Python objects, naming the first one torch refused."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))  # shown, never branched on
    what = f" ({found.group(1)})" if found else ""
    return (f"refusing {path}: it holds Python objects{what} besides tensors and plain values, which could "
            f"run code when loaded (fcosdet reads checkpoints with weights_only=True only); in an environment "
            f"you trust, re-save its 'state_dict' and 'meta' with CLASSES and config as plain tuples / text")


def _blocks(state: dict[str, Tensor], prefix: str) -> int:
    """How many numbered children `prefix` has (prefix + '{i}.' keys)."""
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def _mmdet_architecture(state: dict[str, Tensor], source: str) -> dict[str, Any]:
    """model.* settings the tensors determine: depth, widths, head norm, conv bias, classes."""
    deformable = sorted(k for k in state if "conv_offset" in k)
    if deformable:
        raise UserError(f"{source} uses deformable convolutions ({deformable[0]}): mmdetection's DCNv2 "
                        f"has no fcosdet equivalent; import a checkpoint trained without dcn")
    needed = ("backbone.layer3.0.conv3.weight", "neck.lateral_convs.0.conv.weight",
              "bbox_head.cls_convs.0.conv.weight", "bbox_head.conv_cls.weight")
    absent = [k for k in needed if k not in state]
    if absent:
        raise UserError(f"{source} is not an mmdetection FCOS with a ResNet-50/101 + FPN (no {absent[0]}); "
                        f"give one of mmdetection's FCOS R-50 / R-101 checkpoints")
    depth = {6: 50, 23: 101}.get(_blocks(state, "backbone.layer3."))
    if depth is None:
        raise UserError(f"{source}: its ResNet has {_blocks(state, 'backbone.layer3.')} blocks in layer3, "
                        f"neither ResNet-50 (6) nor ResNet-101 (23)")
    return {"depth": depth, "num_classes": state["bbox_head.conv_cls.weight"].shape[0],  # (C, F, 3, 3)
            "fpn_channels": state["neck.lateral_convs.0.conv.weight"].shape[0],  # (256, 512, 1, 1)
            "feat_channels": state["bbox_head.cls_convs.0.conv.weight"].shape[0],  # (F, 256, 3, 3)
            "stacked_convs": _blocks(state, "bbox_head.cls_convs."),
            "head_norm": "gn" if "bbox_head.cls_convs.0.gn.weight" in state else None,
            "conv_bias": "bbox_head.cls_convs.0.conv.bias" in state}


def _mmdet_rename(key: str, *, gn: bool) -> str | None:
    """An mmdet FCOS key -> fcosdet's (None: no place for it). fcosdet's towers are Sequentials of
    (conv, GroupNorm, ReLU) per layer, or (conv, ReLU) without norm."""
    parts = key.split(".")
    if len(parts) == 5 and parts[2].isdigit() and parts[3] in ("conv", "gn"):
        i, part, name = int(parts[2]), parts[3], parts[4]
        if parts[:2] == ["neck", "lateral_convs"] and part == "conv":
            return f"fpn.fpn.inner_blocks.{i}.0.{name}"
        if parts[:2] == ["neck", "fpn_convs"] and part == "conv" and i < len(_FPN_OUTPUTS):
            return f"fpn.fpn.{_FPN_OUTPUTS[i]}.{name}"
        if parts[0] == "bbox_head" and parts[1] in ("cls_convs", "reg_convs") and (gn or part == "conv"):
            tower = "cls_tower" if parts[1] == "cls_convs" else "reg_tower"
            return f"head.{tower}.{(3 if gn else 2) * i + (part == 'gn')}.{name}"
        return None
    for old, new in _MMDET_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return None


def convert_mmdet_fcos(state: dict[str, Tensor], *,
                       source: str) -> tuple[dict[str, Tensor], dict[str, str], dict[str, Any]]:
    """mmdet FCOS state_dict -> (fcosdet state_dict, fcosdet key -> mmdet key, model.* settings)."""
    state = strip_module_prefix(state)
    for old, new in _OLD_PREDICTORS:
        state = {new + k[len(old):] if k.startswith(old) else k: v for k, v in state.items()}
    arch = _mmdet_architecture(state, source)
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    unknown = []
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue  # BatchNorm's counter: FrozenBatchNorm2d has none
        new = _mmdet_rename(key, gn=arch["head_norm"] == "gn")
        if new is None:
            unknown.append(key)
            continue
        out[new], origin[new] = value.clone(), key
    if unknown:
        raise UserError(f"{source} has tensors an FCOS ResNet + FPN has no place for ({', '.join(unknown[:3])}); "
                        f"give an mmdetection FCOS checkpoint")
    return out, origin, arch


def parse_mmdet_config(text: str, source: str) -> dict[str, Any]:
    """The settings fcosdet needs from mmdet's config text (Config.pretty_text), found by name
    and read with ast.literal_eval: nothing in it runs. A name given two different values is an error."""
    found: dict[str, Any] = {}
    for name in _MMDET_FIELDS:
        values = []
        for raw in re.findall(rf"(?<![\w.]){name}\s*=\s*{_LITERAL}", text):
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise UserError(f"{source}: cannot read {name}={raw} in its meta['config']") from None
            values.append(list(value) if isinstance(value, tuple) else value)
        distinct = [v for i, v in enumerate(values) if v not in values[:i]]
        if len(distinct) > 1:
            raise UserError(f"{source}: its meta['config'] gives {name} different values {distinct}; "
                            f"fcosdet cannot tell which one the model used")
        if distinct:
            found[name] = distinct[0]
    loss = sorted(set(re.findall(r"loss_bbox\s*=\s*dict\(\s*type\s*=\s*'(\w+)'", text)))
    if loss:  # several types: _mmdet_settings asks for --set model.bbox_loss
        found["loss_bbox"] = loss[0] if len(loss) == 1 else loss
    return found


def _near(values: Any, expected: tuple[float, ...]) -> bool:
    return (isinstance(values, list) and len(values) == len(expected)
            and all(isinstance(v, (int, float)) and abs(v - e) < 1e-3 for v, e in zip(values, expected)))


def _mmdet_normalize(parsed: dict[str, Any], source: str) -> str:
    """mmdet's img_norm_cfg (mean, std, to_rgb; 3.x: bgr_to_rgb) -> fcosdet's data.normalize."""
    mean, std = parsed.get("mean"), parsed.get("std")
    to_rgb = parsed.get("to_rgb", parsed.get("bgr_to_rgb"))
    if mean is None or std is None or to_rgb is None:
        raise UserError(f"{source}: its meta['config'] gives no complete image normalisation (mean, std, "
                        f"to_rgb); pass --set data.normalize=caffe, caffe_detectron2 or pytorch")
    for mode, (m, s, rgb) in _MMDET_NORMS.items():
        if bool(to_rgb) == rgb and _near(mean, m) and _near(std, s):
            return mode
    raise UserError(f"{source} was trained on inputs normalised with mean {mean}, std {std}, to_rgb={to_rgb}, "
                    f"which no fcosdet data.normalize gives (caffe, caffe_detectron2, pytorch)")


def _mmdet_settings(parsed: dict[str, Any], source: str, given: set[str]) -> dict[str, Any]:
    """Config text settings -> fcosdet overrides. Absent names take mmdetection's defaults (the
    text is the whole resolved config); keys in `given` (the user's --set) are left to the user."""
    if parsed.get("relu_before_extra_convs") is not True:
        raise UserError(f"{source}: its meta['config'] gives the FPN relu_before_extra_convs="
                        f"{parsed.get('relu_before_extra_convs', False)} (mmdetection's default when absent); "
                        f"fcosdet's P7 always follows a ReLU, as in mmdetection's FCOS configs (if that text is "
                        f"not the model's config, save the file without meta['config'] and pass --variant)")
    if parsed.get("num_groups", 32) != 32 or parsed.get("dcn_on_last_conv", False):
        raise UserError(f"{source}: its head uses GroupNorm({parsed.get('num_groups')}) or a deformable last "
                        f"conv; fcosdet's head has GroupNorm(32) and plain convolutions here")
    out = {"model.backbone_style": parsed.get("style", "pytorch"),  # mmdet ResNet's default style
           "model.norm_on_bbox": parsed.get("norm_on_bbox", False),
           "model.centerness_on_reg": parsed.get("centerness_on_reg", False),
           "model.center_sampling": parsed.get("center_sampling", False),
           "model.center_sample_radius": parsed.get("center_sample_radius", 1.5)}
    out.update({f"test.{ours}": parsed[theirs] for ours, theirs in (
        ("score_thr", "score_thr"), ("nms_pre", "nms_pre"), ("nms_iou", "iou_threshold"),
        ("max_per_img", "max_per_img")) if theirs in parsed})
    if out["model.backbone_style"] not in ("pytorch", "caffe"):
        raise UserError(f"{source}: its ResNet has style={out['model.backbone_style']!r}; fcosdet has "
                        f"'pytorch' and 'caffe'")
    if "model.bbox_loss" not in given:
        loss = parsed.get("loss_bbox", "IoULoss")
        if not isinstance(loss, str) or loss not in ("IoULoss", "GIoULoss"):
            raise UserError(f"{source} was trained with loss_bbox {loss}, which fcosdet does not have; pass "
                            f"--set model.bbox_loss=iou or giou for fine-tuning from it")
        out["model.bbox_loss"] = "giou" if loss == "GIoULoss" else "iou"
    if "data.normalize" not in given:
        out["data.normalize"] = _mmdet_normalize(parsed, source)
    return {k: v for k, v in out.items() if k not in given}


def mmdet_config(arch: dict[str, Any], text: str | None, *, variant: str | None, source: str,
                 sets: list[str]) -> tuple[Config, str]:
    """(the Config reproducing the checkpoint's model and test settings, where its settings came
    from): meta["config"] text when the file has it, else --variant; --set last."""
    overrides = parse_sets(sets)
    if text is None:
        if variant not in MMDET_VARIANTS:
            raise UserError(f"{source} has no meta['config'], so norm_on_bbox, centerness_on_reg, the ResNet "
                            f"style and the normalisation cannot be read from it: pass --variant "
                            f"{' or '.join(MMDET_VARIANTS)} (mmdetection's published R-50 configs), and --set "
                            f"for anything that differs")
        name, normalize = MMDET_VARIANTS[variant]
        cfg = preset(name)
        cfg.model.backbone_style, cfg.data.normalize = "caffe", normalize
        origin = f"--variant {variant}"
    else:
        if variant is not None:
            raise UserError(f"{source} carries its mmdetection config (meta['config']), which fcosdet reads; "
                            f"drop --variant (change a setting with --set)")
        cfg = preset("fcos_r50_1x")
        apply_overrides(cfg, _mmdet_settings(parse_mmdet_config(text, source), source, set(overrides)))
        origin = "meta['config']"
    apply_overrides(cfg, {f"model.{k}": v for k, v in arch.items()})
    apply_overrides(cfg, overrides)
    return cfg, origin


def _mmdet_class_names(meta: dict[str, Any], given: list[str] | None, num_classes: int, source: str) -> list[str]:
    """meta["CLASSES"] (2.x) or meta["dataset_meta"]["classes"] (3.x), else --class-names."""
    found = meta.get("CLASSES")
    if found is None and isinstance(meta.get("dataset_meta"), dict):
        found = meta["dataset_meta"].get("classes")
    if found is not None:
        if isinstance(found, str) or not all(isinstance(n, str) for n in found):
            raise UserError(f"{source}: meta['CLASSES'] is not a list of names; pass --class-names")
        if given is not None and list(given) != list(found):
            raise UserError(f"{source} names its classes in meta['CLASSES'], and --class-names differs; drop "
                            f"--class-names")
    names = list(found) if found is not None else given
    if names is None:
        raise UserError(f"{source} has no meta['CLASSES']: pass --class-names with its {num_classes} class "
                        f"names in label order")
    if len(names) != num_classes:
        raise UserError(f"{source} has {num_classes} class outputs but {len(names)} class names")
    return names


def _coco_ids(names: list[str]) -> list[int] | None:
    """COCO's category id of each label when `names` are COCO's 80 classes in id order, else None."""
    coco = coco_categories()
    ids = [i for i, n in enumerate(coco) if n not in NOT_A_CLASS]
    return ids if names == [coco[i] for i in ids] else None


def _check_fit(own: dict[str, Tensor], converted: dict[str, Tensor], origin: dict[str, str], source: str) -> None:
    """Every tensor of the model present with its shape, and nothing else: one line otherwise."""
    missing = [k for k in own if k not in converted]
    extra = [origin[k] for k in converted if k not in own]
    wrong = [f"{origin[k]} {tuple(converted[k].shape)} instead of {tuple(own[k].shape)}"
             for k in converted if k in own and converted[k].shape != own[k].shape]
    problems = [f"{what} {', '.join(keys[:3])}" for what, keys in
                (("no tensor for (fcosdet names)", missing), ("unexpected", extra), ("wrong shape:", wrong)) if keys]
    if problems:
        raise UserError(f"{source} does not fit the FCOS its tensors describe: {'; '.join(problems)}")


def import_mmdet_fcos(source: str | Path, out: Path, *, variant: str | None = None,
                      class_names: list[str] | None = None, sets: list[str] | None = None) -> dict[str, Any]:
    """Convert an mmdetection FCOS checkpoint, check every tensor lands (strict, shapes), save."""
    path = Path(source)
    state, meta = read_mmdet_checkpoint(path)
    converted, origin, arch = convert_mmdet_fcos(state, source=str(path))
    text = meta.get("config")
    if text is not None and not isinstance(text, str):
        raise UserError(f"{path}: meta['config'] is not text; pass --variant instead after removing it")
    cfg, settings_from = mmdet_config(arch, text, variant=variant, source=str(path), sets=list(sets or []))
    names = _mmdet_class_names(meta, class_names, arch["num_classes"], str(path))
    model = build_model(cfg.model)
    _check_fit(model.state_dict(), converted, origin, str(path))
    model.load_state_dict(converted)
    ids = _coco_ids(names)  # None: not COCO's classes; the file then has no category_ids (predict warns)
    ModelFile(model=model.state_dict(), config=cfg.to_dict(), class_names=names, category_ids=ids,
              category_ids_saved=ids is not None, imported_from=f"mmdet-fcos:{path}").save(Path(out))
    m = cfg.model
    return {"out": str(out), "tensors": len(converted), "classes": len(names), "settings_from": settings_from,
            "summary": f"{m.backbone_style}-style ResNet-{m.depth}, data.normalize={cfg.data.normalize}, "
                       f"norm_on_bbox={m.norm_on_bbox}, centerness_on_reg={m.centerness_on_reg}, "
                       f"NMS {cfg.test.nms_iou}"}
