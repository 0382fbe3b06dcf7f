"""FPN for FCOS: C3-C5 -> P3-P7 (strides 8..128) with torchvision's FPN pieces.

P6 = conv3x3/2(P5), P7 = conv3x3/2(ReLU(P6)): the reference's add_extra_convs='on_output'
with relu_before_extra_convs=True, which is exactly torchvision's LastLevelP6P7 fed with P5.
Dimensions: B images, F = out_channels.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7


class FCOSFPN(nn.Module):
    def __init__(self, *, in_channels: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.fpn = FeaturePyramidNetwork(
            list(in_channels), out_channels, extra_blocks=LastLevelP6P7(out_channels, out_channels))
        self.out_channels = out_channels

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        named = OrderedDict((f"c{i + 3}", f) for i, f in enumerate(feats))
        return list(self.fpn(named).values())  # 5 x (B, F, H/s, W/s), s = 8..128
