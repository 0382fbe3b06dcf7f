"""The whole detector as one module: network + post-processing.

Dimensions: B images, D detections of the batch.
"""
from __future__ import annotations

from torch import Tensor, nn

from fcosdet.model import FCOS
from fcosdet.model.postprocess import Detections, FCOSPostProcessor


class DetectorGraph(nn.Module):
    """Network + post-processing in one module: what the PyTorch backend runs and what the
    ONNX / torch.export program exports trace. forward(images (B, 3, Hp, Wp), image_sizes (B, 2))."""

    def __init__(self, *, model: FCOS, postprocessor: FCOSPostProcessor) -> None:
        super().__init__()
        self.model = model
        self.postprocessor = postprocessor

    def forward(self, images: Tensor, image_sizes: Tensor) -> Detections:
        return self.postprocessor.detect(self.model(images), image_sizes)
