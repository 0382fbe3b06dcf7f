"""Training on tiles (`data.tile`): a square window of the original image at its own resolution,
placed around a random box (or, with probability `empty_prob`, where no box is kept), with the
boxes clipped to it. The tile then IS the training image: the usual resize (`data.scale`,
`data.multiscale_short`), flip and photometric distortion apply to it, exactly as sliced
inference (`fcosdet eval --slice SIZE`) resizes each slice with the evaluation scale. A tile side
equal to the short side of `data.scale` therefore trains at native resolution (tile 384 with the
CPU presets' scale (512, 384)).

Dimensions: G boxes of the image, K boxes kept in the tile; H0 x W0 the image, h x w the tile
(h = min(size, H0), w = min(size, W0): an image smaller than the tile is one tile of its size).
Conventions: boxes (x1, y1, x2, y2) float pixels; a window is (top, left, height, width) in
integer pixels of the image. Every draw comes from torch's RNG (`generator`, default the global
one, which `EpochSampler` seeds per (seed, epoch, index)): the same seed gives the same tiles,
and a resumed run the same batches.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fcosdet.errors import UserError

EMPTY_TRIES = 10  # random positions tried for a tile without boxes before taking the last one


@dataclass(frozen=True)
class Window:
    top: int
    left: int
    height: int
    width: int


def _randint(lo: int, hi: int, generator: torch.Generator | None) -> int:
    """A uniform integer in [lo, hi] (lo <= hi)."""
    return lo + int(torch.randint(hi - lo + 1, (), generator=generator))


def _offset_containing(lo: float, hi: float, side: int, image_side: int,
                       generator: torch.Generator | None) -> int:
    """A random integer start s in [0, image_side - side] with [s, s + side) containing [lo, hi]
    (a box side longer than the tile: the tile lies inside it instead)."""
    first, last = sorted((lo, hi - side))  # starts that contain the box (or fit inside it)
    start = max(0, math.ceil(first - 1e-6))
    stop = min(image_side - side, math.floor(last + 1e-6))
    if start > stop:  # fractional box ends: no integer start contains it exactly, take the nearest
        start = stop = min(max(0, round(first)), image_side - side)
    return _randint(start, stop, generator)


def clip_to_window(boxes: Tensor, window: Window, *, min_area: float) -> tuple[Tensor, Tensor]:
    """boxes (G, 4) of the image -> (boxes (K, 4) in the tile's frame, keep (G,) bool): each box
    clipped to the window and kept when the clipped area is at least `min_area` times its own,
    or, for a box larger than the tile, `min_area` times the tile's (an object filling most of
    the tile stays an object, clipped to it, rather than becoming background); degenerate
    clipped boxes are dropped."""
    x1 = (boxes[:, 0] - window.left).clamp(0, window.width)  # (G,)
    y1 = (boxes[:, 1] - window.top).clamp(0, window.height)
    x2 = (boxes[:, 2] - window.left).clamp(0, window.width)
    y2 = (boxes[:, 3] - window.top).clamp(0, window.height)
    clipped = torch.stack((x1, y1, x2, y2), dim=1)  # (G, 4)
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)  # (G,)
    kept_area = (x2 - x1) * (y2 - y1)  # (G,)
    reference = area.clamp(max=float(window.height * window.width))  # (G,)
    keep = (x2 > x1) & (y2 > y1) & (kept_area >= min_area * reference)  # (G,)
    return clipped[keep].reshape(-1, 4), keep


@dataclass(frozen=True)
class TileSampler:
    """Where the training tile of an image lies. `size`: the tile side in original pixels;
    `empty_prob`: the share of tiles placed without boxes; `min_area`: the fraction of a box's
    area that must stay inside the tile for the box to be kept (see `clip_to_window`)."""
    size: int
    empty_prob: float
    min_area: float

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 32:
            raise UserError(f"data.tile={self.size!r} must be a tile side of at least 32 pixels, e.g. "
                            f"--set data.tile=384, or null to train on whole images")
        if not 0.0 <= self.empty_prob < 1.0:
            raise UserError(f"data.tile_empty={self.empty_prob} must be in [0, 1): the share of tiles "
                            f"without boxes, e.g. 0.1")
        if not 0.0 < self.min_area <= 1.0:
            raise UserError(f"data.tile_min_area={self.min_area} must be in (0, 1]: the fraction of a "
                            f"clipped box's area kept in the tile, e.g. 0.5")

    def window(self, boxes: Tensor, height: int, width: int, *,
               generator: torch.Generator | None = None) -> Window:
        """The tile of an (height, width) image with boxes (G, 4). Draws, in this order: empty
        or not (one uniform), then the box (one integer) and its two offsets, or up to
        EMPTY_TRIES random positions for a tile where `clip_to_window` keeps no box (the last
        one when every try holds a box: a dense image may have no empty place). An image
        without boxes gets a random tile."""
        th, tw = min(self.size, height), min(self.size, width)
        empty = float(torch.rand((), generator=generator)) < self.empty_prob
        if len(boxes) and not empty:
            box = boxes[_randint(0, len(boxes) - 1, generator)].tolist()
            top = _offset_containing(box[1], box[3], th, height, generator)
            left = _offset_containing(box[0], box[2], tw, width, generator)
            return Window(top, left, th, tw)
        for _ in range(EMPTY_TRIES):
            window = Window(_randint(0, height - th, generator), _randint(0, width - tw, generator), th, tw)
            if not len(boxes) or not clip_to_window(boxes, window, min_area=self.min_area)[1].any():
                break
        return window
