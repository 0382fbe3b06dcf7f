"""FPN for FCOS: C3-C5 -> P3-P7 (strides 8..128), or with `p2=True` C2-C5 -> P2-P6 (strides
4..64), with torchvision's FPN pieces.

P6 = conv3x3/2(P5), P7 = conv3x3/2(ReLU(P6)): the reference's add_extra_convs='on_output'
with relu_before_extra_convs=True, which is exactly torchvision's LastLevelP6P7 fed with P5.
With P2 the pyramid starts one level lower and keeps five levels: P6 = conv3x3/2(P5) only
(`LastLevelP6`), so the head (shared across levels) and its per-level Scales stay as they are.
Dimensions: B images, F = out_channels.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelP6P7


class LastLevelP6(ExtraFPNBlock):
    """One extra level on top of the FPN's last output: P6 = conv3x3 stride 2 (P5), initialised
    as torchvision initialises its P6 / P7 convs (kaiming_uniform a=1, zero bias)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, 3, 2, 1)
        nn.init.kaiming_uniform_(self.p6.weight, a=1)
        nn.init.constant_(self.p6.bias, 0)

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        return [*results, self.p6(results[-1])], [*names, "p6"]  # + (B, F, ceil(H5/2), ceil(W5/2))


class FCOSFPN(nn.Module):
    def __init__(self, *, in_channels: Sequence[int], out_channels: int = 256, p2: bool = False) -> None:
        super().__init__()
        if len(in_channels) != (4 if p2 else 3):
            raise ValueError(f"the FPN takes {'C2..C5' if p2 else 'C3..C5'}: got {len(in_channels)} inputs")
        extra = LastLevelP6(out_channels) if p2 else LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork(list(in_channels), out_channels, extra_blocks=extra)
        self.out_channels = out_channels
        self.first_level = 2 if p2 else 3

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        named = OrderedDict((f"c{i + self.first_level}", f) for i, f in enumerate(feats))
        return list(self.fpn(named).values())  # 5 x (B, F, H/s, W/s), s = 8..128 (4..64 with P2)
