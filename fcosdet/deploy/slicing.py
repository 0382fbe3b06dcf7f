"""Sliced inference, the pure pieces: the tile grid, boxes moved back to the image, the rule for
boxes cut by an inner tile edge, and the merge of every view's detections (`Detector` runs the
views through its backend: the slicing lives outside the graph, so .pt, ONNX Runtime and
OpenVINO files slice alike).

Dimensions: T tiles of one image, V views of one image (its T tiles, then the full image when
merged in), N detections of one image over all its views, M kept detections.
Conventions: tiles and boxes are (x1, y1, x2, y2) pixels of the ORIGINAL image; a tile covers
columns [x1, x2) and rows [y1, y2). A tile detection's `view` is its tile's index in [0, T);
the full-image pass is view FULL_VIEW.

The grid: per axis, tiles of `tile` pixels starting every step = tile - round(overlap * tile)
pixels, the last one aligned to the image's far edge (so it overlaps its neighbour by at least
the overlap); an image side not longer than the tile is one tile of the image's side.

Cut boxes: a tile detection within the margin (EDGE_MARGIN of the tile side) of an INNER edge of its tile (one that is not the
image border) is an object the tile sees only in part. It is dropped when
- another tile contains it and reaches past it on every cut side by more than the margin (that
  tile, overlapping across the cut edge, sees the object whole, or further: an object no larger
  than the overlap always lies whole in some tile), or
- (cut or not) the full-image pass has a detection of the same class covering at least
  FULL_COVER of its area, reaching out of its tile (an object too large for the tile: the
  tile saw a fragment) and scoring at least FULL_SCORE_RATIO times as high (so that the full
  pass's low-score guesses over groups of small objects do not remove them).
Cut boxes that neither covers are kept (nothing better sees that object).

Merges (class-aware, over the surviving detections of all views):
- "nms": torchvision's batched_nms at IoU `thr` (default: the model's test.nms_iou);
- "ios": greedy merging on intersection over the smaller box (SAHI's default): by decreasing
  score, each detection not yet absorbed absorbs the later ones of its class whose
  intersection / smaller area >= `thr` (default IOS_THR); the merged box keeps the first
  (highest) score and is the union of its members' boxes, those scoring at least UNION_RATIO
  times that score (SAHI widens it with every member: at fcosdet's score_thr 0.05 low-score
  boxes then swallow neighbours; on the small-object canvases AP50 fell from 0.98 to 0.16).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_area

from fcosdet.errors import UserError

FULL_VIEW = -1  # the view index of the full-image pass
DEFAULT_OVERLAP = 0.2  # share of the tile side that neighbouring tiles share
MERGES = ("nms", "ios")
IOS_THR = 0.5  # "ios" merge: SAHI's default match threshold
UNION_RATIO = 0.5  # "ios" merge: members scoring at least this times the kept box's widen it
FULL_COVER = 0.5  # a tile box this much covered by a larger full-image box of its class is dropped
FULL_SCORE_RATIO = 0.5  # ... when that box scores at least this times the tile box's score
EDGE_MARGIN = 0.01  # a box this share of the tile side (>= MIN_EDGE_MARGIN px) from an inner edge touches it
MIN_EDGE_MARGIN = 2.0
SLICE_BATCH = 8  # views (tiles, full images) per backend call by default


@dataclass(frozen=True, kw_only=True)
class Slicing:
    """How `Detector` slices: tiles of `size` = (w, h) original pixels overlapping by `overlap` of
    the tile side, the full-image pass merged in (`full_image`), merged by `merge` ("nms" | "ios")
    at `merge_thr` (None: test.nms_iou for "nms", IOS_THR for "ios")."""
    size: tuple[int, int]
    overlap: float = DEFAULT_OVERLAP
    full_image: bool = True
    merge: str = "nms"
    merge_thr: float | None = None

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise UserError(f"the slice size {tuple(self.size)} must be one or two positive sizes (W,H), e.g. 512")
        if not 0.0 <= self.overlap < 1.0:
            raise UserError(f"--slice-overlap {self.overlap:g} must be in [0, 1), e.g. 0.2 (a share of the tile side)")
        if self.merge not in MERGES:
            raise UserError(f"--slice-merge {self.merge!r} must be one of {', '.join(MERGES)}")
        if self.merge_thr is not None and not 0.0 < self.merge_thr <= 1.0:
            raise UserError(f"--slice-merge-thr {self.merge_thr:g} must be in (0, 1]")


def parse_slice_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '640,480' -> (640, 480): a tile's (w, h) in original pixels."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values, default=0) < 1:
        raise UserError(f"--slice {text!r} is not a tile size: give SIZE or W,H in pixels, e.g. 512 or 640,480")
    return (values[0], values[-1])


# ---------------------------------------------------------------------- the grid

def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of the tiles along one image side of `length` pixels (see the module docstring)."""
    if length <= tile:
        return [0]
    step = max(1, tile - round(overlap * tile))
    count = math.ceil((length - tile) / step) + 1
    return [min(i * step, length - tile) for i in range(count)]


def tile_grid(width: int, height: int, *, size: tuple[int, int], overlap: float) -> Tensor:
    """(T, 4) int64 tiles x1, y1, x2, y2 covering a (height, width) image, row-major."""
    tile_w, tile_h = min(size[0], width), min(size[1], height)
    xs = torch.tensor(tile_starts(width, size[0], overlap), dtype=torch.int64)  # (Tx,)
    ys = torch.tensor(tile_starts(height, size[1], overlap), dtype=torch.int64)  # (Ty,)
    y1, x1 = torch.meshgrid(ys, xs, indexing="ij")  # (Ty, Tx) each
    return torch.stack([x1, y1, x1 + tile_w, y1 + tile_h], -1).reshape(-1, 4)  # (T, 4)


def image_views(width: int, height: int, slicing: Slicing) -> tuple[Tensor, bool]:
    """An image's tiles (T, 4) and whether the full-image pass runs too (not when one tile is
    already the whole image)."""
    tiles = tile_grid(width, height, size=slicing.size, overlap=slicing.overlap)  # (T, 4)
    return tiles, slicing.full_image and len(tiles) > 1


def offset_boxes(boxes: Tensor, origin: Tensor) -> Tensor:
    """Boxes (N, 4) in their tile's frame -> the image's: + origin (x1, y1) of the tile ((2,) or (N, 2))."""
    origin = origin.to(boxes.dtype)
    return boxes + torch.cat([origin, origin], -1)  # (N, 4)


# ---------------------------------------------------------------------- cut boxes

def edge_margin(tiles: Tensor) -> Tensor:
    """(T,) the distance from an edge within which a box of each tile touches it."""
    sides = torch.minimum(tiles[:, 2] - tiles[:, 0], tiles[:, 3] - tiles[:, 1]).float()  # (T,)
    return (sides * EDGE_MARGIN).clamp(min=MIN_EDGE_MARGIN)


def cut_sides(boxes: Tensor, tiles: Tensor, views: Tensor, *, width: int, height: int) -> Tensor:
    """(N, 4) bool: box side (left, top, right, bottom) within the margin of its tile's edge on that
    side while that edge is inside the image. Full-image detections (view FULL_VIEW) have none."""
    if len(tiles) == 0:
        return torch.zeros((len(boxes), 4), dtype=torch.bool)
    own = tiles[views.clamp(min=0)].float()  # (N, 4) each box's tile
    margin = edge_margin(tiles)[views.clamp(min=0)][:, None]  # (N, 1)
    near = (boxes - own).abs() <= margin  # (N, 4)
    inner = torch.stack([own[:, 0] > 0, own[:, 1] > 0, own[:, 2] < width, own[:, 3] < height], 1)  # (N, 4)
    return near & inner & (views >= 0)[:, None]


def covered_by_tile(boxes: Tensor, cut: Tensor, tiles: Tensor, views: Tensor) -> Tensor:
    """(N,) bool: another tile contains the box and reaches past it by more than the margin on
    each of its cut sides (`cut` (N, 4) from `cut_sides`)."""
    if len(tiles) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    t = tiles.float()[None]  # (1, T, 4)
    b = boxes[:, None]  # (N, 1, 4)
    margin = edge_margin(tiles)[None, :, None]  # (1, T, 1)
    # how far each tile reaches past each box side, outward (negative: the side sticks out)
    room = torch.cat([b[..., :2] - t[..., :2], t[..., 2:] - b[..., 2:]], -1)  # (N, T, 4)
    contains = (room >= -1e-3).all(-1)  # (N, T)
    past = ((room > margin) | ~cut[:, None]).all(-1)  # (N, T)
    other = torch.arange(len(tiles))[None] != views[:, None]  # (N, T)
    return (contains & past & other).any(1)


def covered_by_full(boxes: Tensor, labels: Tensor, scores: Tensor, views: Tensor, tiles: Tensor, *,
                    full_boxes: Tensor, full_labels: Tensor, full_scores: Tensor, thr: float = FULL_COVER,
                    score_ratio: float = FULL_SCORE_RATIO) -> Tensor:
    """(N,) bool: tile detections (view >= 0) of which a full-image detection (F, ...) of the same
    class covers >= thr of the area while reaching out of their tile by more than the margin
    (an object the tile cannot see whole), scoring at least score_ratio times theirs."""
    if len(boxes) == 0 or len(full_boxes) == 0 or len(tiles) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool)
    own = tiles[views.clamp(min=0)].float()  # (N, 4)
    margin = edge_margin(tiles)[views.clamp(min=0)][:, None]  # (N, 1)
    cover = intersection(boxes, full_boxes) / box_area(boxes).clamp(min=1e-6)[:, None]  # (N, F)
    outside = torch.cat([own[:, None, :2] - full_boxes[None, :, :2],
                         full_boxes[None, :, 2:] - own[:, None, 2:]], -1)  # (N, F, 4) > 0: past the tile
    larger = (outside > margin[..., None]).any(-1)  # (N, F)
    same = labels[:, None] == full_labels[None]  # (N, F)
    strong = full_scores[None] >= score_ratio * scores[:, None]  # (N, F)
    return ((cover >= thr) & larger & same & strong).any(1) & (views >= 0)


def intersection(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) intersection areas of boxes a (N, 4) and b (M, 4)."""
    low = torch.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    high = torch.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    return (high - low).clamp(min=0).prod(-1)


def keep_uncut(boxes: Tensor, scores: Tensor, labels: Tensor, views: Tensor, tiles: Tensor, *, width: int,
               height: int) -> Tensor:
    """(N,) bool: the detections that survive the cut-box rule (module docstring)."""
    cut = cut_sides(boxes, tiles, views, width=width, height=height)  # (N, 4)
    is_cut = cut.any(1)  # (N,)
    full = views == FULL_VIEW  # (N,)
    drop = is_cut & covered_by_tile(boxes, cut, tiles, views)
    drop |= covered_by_full(boxes, labels, scores, views, tiles, full_boxes=boxes[full], full_labels=labels[full],
                            full_scores=scores[full])
    return ~drop


# ---------------------------------------------------------------------- merging

class Merged(NamedTuple):
    boxes: Tensor  # (M, 4) original pixels, by decreasing score
    scores: Tensor  # (M,)
    labels: Tensor  # (M,)


def merge_nms(boxes: Tensor, scores: Tensor, labels: Tensor, *, thr: float) -> Merged:
    """Class-aware NMS at IoU thr."""
    keep = batched_nms(boxes, scores, labels, thr)  # (M,) by decreasing score
    return Merged(boxes[keep], scores[keep], labels[keep])


def greedy_keep(match: Tensor) -> Tensor:
    """Greedy selection over a pairwise match matrix (N, N) of boxes sorted by decreasing score:
    box i is kept unless a kept box j < i matches it. Computed as the fixed point of
    kept = ~any_j(match[j, i] & kept[j], j < i), reached from kept = all in at most N rounds (the
    first r entries are final after r rounds); each round is one matrix-vector product."""
    n = match.shape[0]
    earlier = torch.ones(n, n, dtype=torch.bool).triu(1)  # (N, N) j < i
    suppress = (match & earlier).float()  # (N, N) [j, i]
    kept = torch.ones(n, dtype=torch.bool)
    for _ in range(n):
        new = (kept.float() @ suppress) == 0  # (N,)
        if torch.equal(new, kept):
            break
        kept = new
    return kept


def merge_ios(boxes: Tensor, scores: Tensor, labels: Tensor, *, thr: float,
              union_ratio: float = UNION_RATIO) -> Merged:
    """Greedy merging on intersection over the smaller box (module docstring), vectorised over
    the (N, N) pairwise matrix."""
    if len(boxes) == 0:
        return Merged(boxes, scores, labels)
    order = scores.argsort(descending=True, stable=True)  # (N,)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    area = box_area(boxes)  # (N,)
    ios = intersection(boxes, boxes) / torch.minimum(area[:, None], area[None]).clamp(min=1e-6)  # (N, N)
    match = (ios >= thr) & (labels[:, None] == labels[None]) | torch.eye(len(boxes), dtype=torch.bool)  # (N, N)
    kept = greedy_keep(match)  # (N,)
    # each box joins the first kept box matching it (itself when kept)
    joins = match & kept[:, None] & torch.ones_like(match).triu()  # (N, N) [i, j]: j joins kept i <= j
    owner = joins.float().argmax(0)  # (N,) first True row of each column
    grows = scores >= union_ratio * scores[owner]  # (N,) members that widen their owner's box
    flipped = torch.cat([boxes[:, :2].neg(), boxes[:, 2:]], 1)  # (N, 4) -x1, -y1, x2, y2: the union is a max
    union = flipped.clone().scatter_reduce_(0, owner[grows, None].expand(-1, 4), flipped[grows], "amax")  # (N, 4)
    union = torch.cat([union[:, :2].neg(), union[:, 2:]], 1)  # (N, 4) back to x1, y1, x2, y2
    return Merged(union[kept], scores[kept], labels[kept])


def merge_views(boxes: Tensor, scores: Tensor, labels: Tensor, views: Tensor, tiles: Tensor, *,
                width: int, height: int, merge: str, thr: float, max_per_img: int) -> Merged:
    """One image's detections of all views (N, ... in the image frame; views (N,) tile index or
    FULL_VIEW) -> the cut-box rule, the merge, the best max_per_img."""
    keep = keep_uncut(boxes, scores, labels, views, tiles, width=width, height=height)  # (N,)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    out = (merge_ios if merge == "ios" else merge_nms)(boxes, scores, labels, thr=thr)
    order = out.scores.argsort(descending=True, stable=True)[:max_per_img]  # (M,)
    return Merged(out.boxes[order], out.scores[order], out.labels[order])
