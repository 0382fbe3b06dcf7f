"""Inference backends behind `Detector`: the PyTorch graph, and onnxruntime or OpenVINO on an
exported `.onnx`; one call signature.

Dimensions: B images, D detections of the batch. Each backend maps a normalised, padded batch
images (B, 3, Hp, Wp) float32 and the valid image_sizes (B, 2) int64 (h, w) to `Detections`
(boxes (D, 4) in the resized frame, scores (D,), labels (D,), batch_index (D,)).

Model files: a training checkpoint (`.pt`), an exported weights file (`.safetensors`: weights
plus config and class names in its metadata) or an exported ONNX graph (`.onnx`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

import torch
from torch import Tensor, nn

from .errors import UserError
from .model import FCOS
from .postprocess import Detections, FCOSPostProcessor

MODEL_SUFFIXES = (".pt", ".pth", ".safetensors", ".onnx")
META_PREFIX = "fcosdet."  # keys of the metadata that exported files carry


class DetectorGraph(nn.Module):
    """Network + post-processing in one module: what the PyTorch backend runs and what the
    ONNX / TorchScript exports trace. forward(images (B, 3, Hp, Wp), image_sizes (B, 2))."""

    def __init__(self, *, model: FCOS, postprocessor: FCOSPostProcessor) -> None:
        super().__init__()
        self.model = model
        self.postprocessor = postprocessor

    def forward(self, images: Tensor, image_sizes: Tensor) -> Detections:
        return self.postprocessor.detect(self.model(images), image_sizes)


PRECISIONS = ("fp32", "bf16")


class TorchBackend:
    """The PyTorch path: `DetectorGraph` on a device, without autograd. precision "bf16" runs the
    network under bf16 autocast (box regression and post-processing stay float32)."""

    def __init__(self, *, graph: DetectorGraph, device: torch.device | str = "cpu",
                 channels_last: bool = False, precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        self.graph = graph.to(self.device).eval()
        self.channels_last = channels_last
        self.precision = precision

    @torch.inference_mode()
    def __call__(self, images: Tensor, image_sizes: Tensor) -> Detections:
        images = images.to(self.device)  # (B, 3, Hp, Wp)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            outputs = self.graph.model(images)
        return self.graph.postprocessor.detect(outputs, image_sizes.to(self.device))


ONNX_RUNTIMES = ("onnxruntime", "openvino")


class OnnxBackend:
    """An exported `.onnx` detector run on the CPU by onnxruntime or OpenVINO (the same file; OpenVINO
    was 1.4-2.2x faster on this project's CPU with equal outputs). `score_thr` may raise the graph's
    own threshold: dropping the detections at or below it afterwards is exact, since a box can
    only be suppressed by a higher-scoring one and max_per_img keeps the highest scores."""

    def __init__(self, path: Path, *, score_thr: float | None = None, runtime: str = "onnxruntime") -> None:
        if runtime not in ONNX_RUNTIMES:
            raise UserError(f"the ONNX runtime must be one of {', '.join(ONNX_RUNTIMES)}, got {runtime!r}")
        try:
            self._run, props = (_open_openvino if runtime == "openvino" else _open_onnxruntime)(path)
        except Exception as exc:  # noqa: BLE001 - any load failure means a bad file for the user
            raise UserError(f"cannot load ONNX file {path} with {runtime} ({type(exc).__name__}: {exc}); "
                            f"export it again with `fcosdet export CHECKPOINT --format onnx`") from None
        self.metadata = read_onnx_metadata(props, path)
        self.device = torch.device("cpu")
        baked = float(self.metadata["test"]["score_thr"])
        if score_thr is not None and score_thr < baked:
            raise UserError(f"{path} was exported with test.score_thr={baked:g}: it cannot return scores "
                            f"down to {score_thr:g}; export again with --set test.score_thr={score_thr:g}")
        self.score_thr = baked if score_thr is None else score_thr

    def __call__(self, images: Tensor, image_sizes: Tensor) -> Detections:
        feeds = {"images": images.detach().cpu().float().numpy(),
                 "image_sizes": image_sizes.detach().cpu().to(torch.int64).numpy()}
        dets = Detections(*(torch.from_numpy(np.asarray(x)) for x in self._run(feeds)))
        if self.score_thr > float(self.metadata["test"]["score_thr"]):
            keep = dets.scores > self.score_thr  # (D,)
            dets = Detections(*(x[keep] for x in dets))
        return dets


RunGraph = Callable[[dict[str, np.ndarray]], list[np.ndarray]]  # feeds -> boxes, scores, labels, batch_index


def _open_onnxruntime(path: Path) -> tuple[RunGraph, dict[str, str]]:
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (lambda feeds: session.run(None, feeds)), session.get_modelmeta().custom_metadata_map


def _open_openvino(path: Path) -> tuple[RunGraph, dict[str, str]]:
    import onnx
    import openvino as ov
    # f32: on CPUs with bf16 / AMX OpenVINO would otherwise pick bf16 and the detections would move
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = compiled(feeds)
        return [result[output] for output in compiled.outputs]
    return run, props


def read_onnx_metadata(props: dict[str, str], path: Path) -> dict[str, Any]:
    """The fcosdet.* metadata_props of an exported ONNX file, JSON-decoded, without the prefix."""
    meta = {k.removeprefix(META_PREFIX): json.loads(v) for k, v in props.items() if k.startswith(META_PREFIX)}
    missing = {"class_names", "normalize", "scale", "strides", "test"} - set(meta)
    if missing:
        raise UserError(f"{path} is not an ONNX file exported by fcosdet (metadata {sorted(missing)} "
                        f"missing); export it with `fcosdet export CHECKPOINT --format onnx`")
    return meta


def read_weights_file(path: Path) -> dict[str, Any]:
    """An exported `.safetensors` weights file -> a state like a checkpoint's: "model" (tensors),
    "config" and "class_names" (from the metadata). Safe: safetensors runs no code."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        from safetensors import safe_open
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"cannot read weights file {path} ({exc}); export it again with "
                        f"`fcosdet export CHECKPOINT --format weights`") from None
    if f"{META_PREFIX}config" not in meta or f"{META_PREFIX}class_names" not in meta:
        raise UserError(f"{path} has no fcosdet config / class names in its metadata: not a file written "
                        f"by `fcosdet export --format weights`")
    state = {"model": tensors, "config": json.loads(meta[f"{META_PREFIX}config"]),
             "class_names": json.loads(meta[f"{META_PREFIX}class_names"])}
    if f"{META_PREFIX}category_ids" in meta:  # absent in files exported before the key existed
        state["category_ids"] = json.loads(meta[f"{META_PREFIX}category_ids"])
    return state


def read_model_state(path: Path) -> dict[str, Any]:
    """A `.pt` checkpoint or a `.safetensors` weights file -> its state ("model", "config",
    "class_names"); a clear error for anything else."""
    from .engine.checkpoint import load_checkpoint
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError(f"weights file {path} does not exist; check the path")
        return read_weights_file(path)
    if path.suffix == ".onnx":
        raise UserError(f"{path} is an ONNX graph: it runs through Detector.from_file / fcosdet predict, "
                        f"but holds no PyTorch weights; use the .pt or .safetensors file here")
    return load_checkpoint(path)
