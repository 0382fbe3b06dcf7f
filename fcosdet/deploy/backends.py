"""Inference backends behind `Detector`: the PyTorch graph, and onnxruntime or OpenVINO on an
exported `.onnx`, or OpenVINO on an exported IR (`.xml`), fp32 or int8; one call signature.

Dimensions: B images, D detections of the batch. Each backend maps a normalised, padded batch
images (B, 3, Hp, Wp) float32 and the valid image_sizes (B, 2) int64 (h, w) to `Detections`
(boxes (D, 4) in the resized frame, scores (D,), labels (D,), batch_index (D,)).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import torch
from torch import Tensor

from fcosdet.deploy.graph import DetectorGraph
from fcosdet.errors import UserError
from fcosdet.io.model_file import ModelFile, read_ir, read_onnx_metadata
from fcosdet.model.postprocess import Detections

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
    was 1.4-2.2x faster on this project's CPU with equal outputs), or an OpenVINO IR (`.xml`: always
    OpenVINO). fp32 or int8 alike: `metadata["quantization"]` says how an int8 file was calibrated.
    `score_thr` may raise the graph's
    own threshold: dropping the detections at or below it afterwards is exact, since a box can
    only be suppressed by a higher-scoring one and max_per_img keeps the highest scores."""

    def __init__(self, path: Path, *, score_thr: float | None = None, runtime: str = "onnxruntime") -> None:
        if runtime not in ONNX_RUNTIMES:
            raise UserError(f"the ONNX runtime must be one of {', '.join(ONNX_RUNTIMES)}, got {runtime!r}")
        if path.suffix == ".xml":
            self._run, self.metadata = _open_ir(path)
        else:
            try:
                self._run, props = (_open_openvino if runtime == "openvino" else _open_onnxruntime)(path)
            except Exception as exc:  # noqa: BLE001 - any load failure means a bad file for the user
                raise UserError(f"cannot load ONNX file {path} with {runtime} ({type(exc).__name__}: {exc}); "
                                f"export it again with `fcosdet export CHECKPOINT --format onnx`") from None
            self.metadata = read_onnx_metadata(props, path)  # decoded fcosdet.* entries: test settings, scale, ...
        self.model_file = ModelFile.from_metadata(self.metadata, model={}, path=path)  # no weights: in the graph
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
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (lambda feeds: session.run(None, feeds)), session.get_modelmeta().custom_metadata_map


# f32: on CPUs with bf16 / AMX OpenVINO would otherwise run the float layers in bf16 and the
# detections would move (an int8 graph's quantised convolutions stay int8)
OPENVINO_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


def openvino_runner(compiled: ov.CompiledModel) -> RunGraph:
    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = compiled(feeds)
        return [result[output] for output in compiled.outputs]
    return run


def _open_openvino(path: Path) -> tuple[RunGraph, dict[str, str]]:
    compiled = ov.Core().compile_model(str(path), "CPU", OPENVINO_CONFIG)
    return openvino_runner(compiled), {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _open_ir(path: Path) -> tuple[RunGraph, dict[str, Any]]:
    """An OpenVINO IR -> (runner, decoded metadata); read once (ModelFile.load reads it the same way)."""
    model, meta = read_ir(path)
    try:
        compiled = ov.Core().compile_model(model, "CPU", OPENVINO_CONFIG)
    except Exception as exc:  # noqa: BLE001 - any compile failure means a bad file for the user
        raise UserError(f"cannot compile OpenVINO IR {path} ({type(exc).__name__}: {exc}); export it again "
                        f"with `fcosdet export CHECKPOINT --format openvino`") from None
    return openvino_runner(compiled), meta
