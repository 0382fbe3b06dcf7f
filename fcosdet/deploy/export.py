"""Exporters: a trained model as a safetensors weights file, an ONNX graph, an OpenVINO IR or a
torch.export program (`fcosdet export CHECKPOINT --format weights|onnx|openvino|program --out PATH`;
`torchscript` is an old name of `program`: it writes a torch.export program, not TorchScript).
`--int8 --data DATASET` quantises the ONNX graph or the IR (see `fcosdet.deploy.quantize`).

Dimensions: B images, Hp x Wp the padded batch (multiples of 32), D detections of the batch.

The ONNX graph and the torch.export program hold the whole detector: network, per-level
decoding clipped to each image, score, threshold, top-k per level, class-aware NMS and
max_per_img (`DetectorGraph` = FCOS + `FCOSPostProcessor.detect`), traced once by torch.export
with dynamic B, Hp and Wp, so one file serves every image size. Inputs:
  images       (B, 3, Hp, Wp) float32: resized, normalised, zero-padded at the bottom / right
  image_sizes  (B, 2) int64: the valid (h, w) of each image before padding
Outputs: boxes (D, 4) x1, y1, x2, y2 in the resized frame, scores (D,), labels (D,) int64 in
[0, C), batch_index (D,) int64. The ONNX file's metadata_props ("fcosdet.*", JSON values)
carry the class names, the normalisation, the resize scale, the strides and the test settings,
so that onnxruntime alone can run it (see README: "Export"). The program (.pt2) carries the
same metadata as its extra file and a safetensors copy of the weights, which is what fcosdet
reads back (`ModelFile.load`): it never calls torch.export.load, which unpickles.
The OpenVINO IR (.xml + .bin) is the ONNX graph converted by openvino.convert_model (weights
kept float32), its metadata in the rt_info section "fcosdet" (same keys without the prefix, same
JSON values). An int8 file's metadata adds "precision": "int8" and "quantization" (tool,
versions, method, calibration dataset / split / images, max_ap_drop and the AP kept).
"""
from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch

from fcosdet.console import warn
from fcosdet.data.transforms import CAFFE_MEANS_BGR, IMAGENET_MEAN_RGB, IMAGENET_STD_RGB
from fcosdet.deploy.build import InferenceParts
from fcosdet.deploy.graph import DetectorGraph
from fcosdet.errors import UserError
from fcosdet.io.model_file import META_PREFIX, encode_metadata, write_ir_metadata
from fcosdet.model.points import SIZE_DIVISOR

FORMATS = ("onnx", "openvino", "program", "weights")
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "program": ".pt2", "weights": ".safetensors"}
INT8_FORMATS = ("onnx", "openvino")  # what --int8 quantises


@dataclass(frozen=True, kw_only=True)
class Int8Settings:
    """`fcosdet export --int8`: calibrate on `calib_images` train images of `dataset`; `max_ap_drop`
    (OpenVINO only): accuracy-controlled quantisation on the val split, AP may drop this much (0..1)."""
    dataset: str
    calib_images: int
    max_ap_drop: float | None = None

    def __post_init__(self) -> None:
        if self.calib_images < 1:
            raise UserError(f"--calib-images must be at least 1, got {self.calib_images}: int8 needs "
                            f"calibration images")
        if self.max_ap_drop is not None and not 0.0 <= self.max_ap_drop < 1.0:
            raise UserError(f"--max-ap-drop is an absolute AP drop in 0..1 (0.005 = half a point), got "
                            f"{self.max_ap_drop}")
ALIASES = {"torchscript": "program"}  # old names still accepted, with a warning
ONNX_OPSET = 18


def normalisation_metadata(mode: str) -> dict[str, Any]:
    """How to turn 8-bit RGB pixels into the network's input: x = (pixel[order] * scale - mean) / std."""
    if mode in CAFFE_MEANS_BGR:
        return {"mode": mode, "channel_order": "BGR", "pixel_scale": 1.0, "mean": list(CAFFE_MEANS_BGR[mode]),
                "std": [1.0, 1.0, 1.0]}
    return {"mode": mode, "channel_order": "RGB", "pixel_scale": 1.0 / 255.0, "mean": list(IMAGENET_MEAN_RGB),
            "std": list(IMAGENET_STD_RGB)}


def export_metadata(parts: InferenceParts) -> dict[str, Any]:
    """What a graph file tells its users, before `encode_metadata`: how to feed the graph (normalisation,
    resize, padding, inputs / outputs), its baked test settings, and the model file's own metadata
    (config, class names, category ids, version)."""
    cfg = parts.config
    long_side, short_side = max(cfg.data.scale), min(cfg.data.scale)
    return {"normalize": normalisation_metadata(cfg.data.normalize),
            "scale": [long_side, short_side],
            "resize": (f"keep the aspect ratio: factor = min({short_side} / short side, {long_side} / long side), "
                       + ("new size = int(size * factor) (rounded down), the normalised float32 image resized "
                          "bilinear, align_corners=False, without antialias (torchvision's GeneralizedRCNNTransform)"
                          if cfg.data.resize == "torchvision" else
                          "new size = int(size * factor + 0.5), bilinear with antialias")),
            "size_divisor": SIZE_DIVISOR, "strides": list(parts.postprocessor.strides),
            "test": {"score_thr": cfg.test.score_thr, "nms_iou": cfg.test.nms_iou, "nms_pre": cfg.test.nms_pre,
                     "max_per_img": cfg.test.max_per_img, "sqrt_score": cfg.test.sqrt_score},
            "inputs": "images (B, 3, H, W) float32 normalised, zero-padded to multiples of size_divisor; "
                      "image_sizes (B, 2) int64 valid (h, w)",
            "outputs": "boxes (D, 4) x1y1x2y2 in the resized frame, scores (D,), labels (D,), batch_index (D,)",
            **parts.model_file().metadata()}


def resolve_format(fmt: str) -> str:
    """A format name or an old alias -> the format's name (an alias prints one warning line)."""
    if fmt in ALIASES:
        warn(f"--format {fmt} writes a torch.export program (.pt2), not TorchScript; call it "
             f"--format {ALIASES[fmt]}")
        return ALIASES[fmt]
    return fmt


def check_out(out: Path, fmt: str, *, overwrite: bool, int8: Int8Settings | None = None) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if int8 is not None and fmt not in INT8_FORMATS:
        raise UserError(f"--int8 quantises --format {' or '.join(INT8_FORMATS)}, not {fmt}")
    if int8 is not None and int8.max_ap_drop is not None and fmt != "openvino":
        raise UserError("--max-ap-drop needs --format openvino (NNCF's accuracy control); onnxruntime's "
                        "quantiser has none: drop --max-ap-drop or export --format openvino")
    if int8 is not None and fmt == "openvino":  # before the slow part: NNCF is an optional extra
        from fcosdet.deploy.quantize import INSTALL_INT8, require_module
        require_module("nncf", fix=INSTALL_INT8)
    if out.suffix != SUFFIXES[fmt]:
        raise UserError(f"--out {out} must end in {SUFFIXES[fmt]} for --format {fmt}")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")


def export_weights(parts: InferenceParts, out: Path) -> Path:
    """Weights only (no optimiser state), config and class names in the metadata."""
    return parts.model_file().save(out)


class _PlainOutputs(torch.nn.Module):
    """Returns (boxes, scores, labels, batch_index) as a plain tuple: a program loaded without
    fcosdet cannot rebuild the `Detections` NamedTuple."""

    def __init__(self, detector: DetectorGraph) -> None:
        super().__init__()
        self.detector = detector  # not `graph`: torch.fx's GraphModule owns that name

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.detector(images, image_sizes))


def export_program(parts: InferenceParts) -> torch.export.ExportedProgram:
    """`DetectorGraph` traced by torch.export with a dynamic batch, height and width."""
    if parts.config.model.dcn_on_last_conv:
        raise UserError("models with model.dcn_on_last_conv=true cannot be exported (deformable "
                        "convolution has no ONNX operator); use the .pt or .safetensors file")
    graph = _PlainOutputs(DetectorGraph(model=parts.model.eval(), postprocessor=parts.postprocessor)).eval()
    images = torch.zeros(2, 3, 12 * SIZE_DIVISOR, 15 * SIZE_DIVISOR)  # (B, 3, Hp, Wp) example
    sizes = torch.tensor([[12 * SIZE_DIVISOR, 15 * SIZE_DIVISOR], [300, 400]])  # (B, 2)
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = SIZE_DIVISOR * torch.export.Dim("height_32", min=2, max=512)
    width = SIZE_DIVISOR * torch.export.Dim("width_32", min=2, max=512)
    dynamic = {"images": {0: batch, 2: height, 3: width}, "image_sizes": {0: batch}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's meta kernels warn about deprecated names
        return torch.export.export(graph, (images, sizes), dynamic_shapes=dynamic, strict=False)


def export_onnx(parts: InferenceParts, out: Path, *,
                program: torch.export.ExportedProgram | None = None) -> Path:
    """The ONNX graph (torch.onnx's dynamo exporter over `export_program`) with the metadata."""
    program = export_program(parts) if program is None else program
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=ONNX_OPSET, verbose=False,
                                         input_names=["images", "image_sizes"],
                                         output_names=["boxes", "scores", "labels", "batch_index"])
    model = onnx_program.model_proto
    set_onnx_metadata(model, export_metadata(parts))
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out))
    return out


def set_onnx_metadata(model: onnx.ModelProto, values: dict[str, Any]) -> None:
    """Replace the fcosdet.* metadata_props of an ONNX model with `encode_metadata(values)`."""
    kept = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith(META_PREFIX)]
    del model.metadata_props[:]
    for key, value in [*kept, *encode_metadata(values).items()]:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def export_onnx_int8(parts: InferenceParts, out: Path, *, int8: Int8Settings,
                     onnx_file: Path | None = None) -> Path:
    """The ONNX graph quantised by onnxruntime (static QDQ, per-channel weights, Conv only), with
    the metadata and how it was calibrated. `onnx_file`: the fp32 graph when already exported."""
    from fcosdet.deploy.quantize import calibration_feeds, quantize_onnx
    feeds = calibration_feeds(parts.config, int8.dataset, split=parts.config.data.train_split,
                              images=int8.calib_images)  # before the slow export: a bad dataset fails fast
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = onnx_file or export_onnx(parts, Path(tmp) / "fp32.onnx")
        info = quantize_onnx(fp32, out, feeds, cfg=parts.config, dataset=int8.dataset)
    model = onnx.load(str(out))
    set_onnx_metadata(model, {**export_metadata(parts), "precision": "int8", "quantization": info})
    onnx.save(model, str(out))
    return out


def export_openvino(parts: InferenceParts, out: Path, *, int8: Int8Settings | None = None,
                    onnx_file: Path | None = None) -> Path:
    """The ONNX graph as an OpenVINO IR (out .xml + its .bin), float32 weights; `int8`: quantised
    by NNCF, the post-processing left float. `onnx_file`: the fp32 graph when already exported."""
    from fcosdet.deploy.quantize import calibration_feeds, quantize_openvino, require_module
    ov = require_module("openvino", fix="pip install openvino")
    feeds = None if int8 is None else calibration_feeds(parts.config, int8.dataset, images=int8.calib_images,
                                                         split=parts.config.data.train_split)
    with tempfile.TemporaryDirectory() as tmp:
        model = ov.convert_model(str(onnx_file or export_onnx(parts, Path(tmp) / "fp32.onnx")))
    meta = {**export_metadata(parts), "precision": "fp32"}
    if int8 is not None:
        model, meta["quantization"] = quantize_openvino(model, feeds, cfg=parts.config, dataset=int8.dataset,
                                                        class_names=list(parts.class_names),
                                                        max_ap_drop=int8.max_ap_drop)
        meta["precision"] = "int8"
    write_ir_metadata(model, meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out), compress_to_fp16=False)
    return out


def export_torch_program(parts: InferenceParts, out: Path, *,
                         program: torch.export.ExportedProgram | None = None) -> Path:
    """A torch.export program (.pt2): torch.export.load(path).module()(images, image_sizes),
    with `import torchvision` for its NMS operator. The metadata rides along as the extra file
    PROGRAM_METADATA (encode_metadata's "fcosdet.*" keys, JSON values), the weights as a
    safetensors copy (what Detector.from_file / predict / eval read: see ModelFile.load)."""
    program = export_program(parts) if program is None else program
    return parts.model_file().save_program(program, out, metadata=export_metadata(parts))


def export_model(parts: InferenceParts, fmt: str, out: Path, *, overwrite: bool = False,
                 int8: Int8Settings | None = None, onnx_file: Path | None = None) -> Path:
    """`fmt` -> `out`; `int8` quantises (onnx, openvino); `onnx_file` (onnx with int8, openvino):
    this model's fp32 ONNX graph when already exported, to skip exporting it again."""
    fmt = resolve_format(fmt)
    check_out(out, fmt, overwrite=overwrite, int8=int8)
    if fmt == "openvino" or int8 is not None:
        (export_openvino if fmt == "openvino" else export_onnx_int8)(parts, out, int8=int8, onnx_file=onnx_file)
        return out
    {"weights": export_weights, "onnx": export_onnx, "program": export_torch_program}[fmt](parts, out)
    return out
