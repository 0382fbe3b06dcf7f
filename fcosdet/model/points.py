"""The point grid: where each FPN level's locations lie in the input image. The one definition
every other module imports (assignment, losses, decoding, the analysis tools, the config's
defaults).

Dimensions: L levels; a level's grid has H rows and W columns, H*W points row-major.
Point (i, j) of a level with stride s is (x, y) = (j*s + o, i*s + o), o = s//2 (offset
"half_stride", mmdet 2.11's reference) or 0 ("zero", torchvision's FCOS). Offset "torchvision"
also spaces the points as torchvision's AnchorGenerator does (inference of imported weights only).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)  # P3..P7: ResNet C3..C5 through the FPN (+ P6, P7)
# Per level, the (lo, hi] range of max(l, t, r, b) a positive point may regress (reference's values).
REGRESS_RANGES: tuple[tuple[float, float], ...] = (
    (-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8))
# The opt-in P2 level set (model.p2): P2..P6 from C2..C5 through the FPN (+ P6). Each level's
# upper bound stays 8 strides, as the reference's (64 = 8 x 8 on P3): P2 takes max(l, t, r, b) up
# to 32 px, P3 32-64 ..., and P6, now the last level, everything above 256 (P7's share included).
P2_STRIDES: tuple[int, ...] = (4, 8, 16, 32, 64)
P2_REGRESS_RANGES: tuple[tuple[float, float], ...] = (
    (-1, 32), (32, 64), (64, 128), (128, 256), (256, 1e8))
POINT_OFFSETS = ("half_stride", "zero", "torchvision")
SIZE_DIVISOR = 32  # the collate pads a batch's images to multiples of this


def point_offset(stride: int, offset: str = "half_stride") -> int:
    """Where the first point of a level lies: s//2 (the reference) or 0 (torchvision's FCOS)."""
    if offset not in POINT_OFFSETS:
        raise ValueError(f"point offset must be one of {POINT_OFFSETS}, got {offset!r}")
    return stride // 2 if offset == "half_stride" else 0


def level_points(size: Sequence[int], stride: int, offset: str = "half_stride", *,
                 padded: Sequence[int] | None = None, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Tensor:
    """One level's (H*W, 2) points (x, y), row-major, for its (H, W) `size`.

    The sizes are used as given, never through int(): with a tensor's shape (SymInts under
    torch.export) H and W stay symbolic. "torchvision" spaces the points by (padded input
    size) // (level size) per axis, which differs from the stride on levels whose size was
    rounded up (a 320-row input: P7 has 3 rows, spaced 320 // 3 = 106); `padded` is that
    padded (h, w), the first level's size times its stride."""
    height, width = size[0], size[1]
    start = point_offset(stride, offset)
    step_y = step_x = stride
    if offset == "torchvision":
        if padded is None:
            raise ValueError("offset 'torchvision' needs the padded input size (padded=(h, w))")
        step_y, step_x = padded[0] // height, padded[1] // width
    ys = torch.arange(height, device=device).to(dtype) * step_y + start  # (H,)
    xs = torch.arange(width, device=device).to(dtype) * step_x + start  # (W,)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
    return torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1)  # (H*W, 2)


def anchor_points(featmap_sizes: Sequence[Sequence[int]], strides: Sequence[int], *,
                  dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None,
                  offset: str = "half_stride") -> list[Tensor]:
    """Per level, the (H*W, 2) `level_points` of that level's (H, W) (L entries). The padded
    input size that offset "torchvision" divides is the first level's size times its stride."""
    if not featmap_sizes:
        return []
    padded = (featmap_sizes[0][0] * strides[0], featmap_sizes[0][1] * strides[0])  # (h, w)
    return [level_points(size, stride, offset, padded=padded, dtype=dtype, device=device)
            for size, stride in zip(featmap_sizes, strides)]


def level_grids(featmap_sizes: Sequence[Sequence[int]], strides: Sequence[int], *,
                offset: str = "half_stride") -> list[tuple[int, int, float, float]]:
    """Per level, (H, W, x0, y0) of the points `anchor_points` makes: x0 = y0 = its offset."""
    if offset == "torchvision":
        raise ValueError("assignment needs points spaced by the stride; offset 'torchvision' is for inference")
    return [(int(h), int(w), float(point_offset(s, offset)), float(point_offset(s, offset)))
            for (h, w), s in zip(featmap_sizes, strides)]


def featmap_sizes(image_hw: Sequence[int], strides: Sequence[int], *,
                  size_divisor: int = SIZE_DIVISOR) -> list[tuple[int, int]]:
    """Per level, the (H, W) of the model's feature map for an image of `image_hw` padded to a
    multiple of `size_divisor`: ceil(padded / stride) (P6, P7 are 3x3 stride-2 convs with
    padding 1, which round up)."""
    hp = -(-int(image_hw[0]) // size_divisor) * size_divisor
    wp = -(-int(image_hw[1]) // size_divisor) * size_divisor
    return [(-(-hp // s), -(-wp // s)) for s in strides]
