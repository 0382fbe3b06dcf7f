"""FCOS points and target assignment: pure functions, no model, no gradients.

Dimensions: L levels, P points of all levels concatenated, G ground-truth boxes, K candidate
(point, box) pairs. Boxes are (x1, y1, x2, y2) pixels; labels in [0, C), background = C.

`assign_targets` gives exactly the reference's (mmdet 2.11 FCOSHead._get_target_single)
labels and regression targets without its (P, G, 4) tensors. A point can only be inside a
box whose grid window covers it, and a box can only be matched on a level whose regress range
admits half its longer side, so we enumerate those (point, box) pairs per level (a few hundred
per box at most) and run the reference's float tests on them alone. Ties go to the smallest
area, then the lowest box index, as `areas.min(dim=1)` does in the reference.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

DEFAULT_STRIDES: tuple[int, ...] = (8, 16, 32, 64, 128)
DEFAULT_REGRESS_RANGES: tuple[tuple[float, float], ...] = (
    (-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8))
INF = 1e8  # the reference's "no box" area


def anchor_points(featmap_sizes: Sequence[Sequence[int]], strides: Sequence[int], *,
                  dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> list[Tensor]:
    """Per level, the (H*W, 2) point coordinates (x, y) = (j*s + s//2, i*s + s//2), row-major."""
    points = []
    for (h, w), stride in zip(featmap_sizes, strides):
        ys = torch.arange(int(h), dtype=dtype, device=device) * stride + stride // 2  # (H,)
        xs = torch.arange(int(w), dtype=dtype, device=device) * stride + stride // 2  # (W,)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")  # (H, W) each
        points.append(torch.stack((xx.reshape(-1), yy.reshape(-1)), dim=-1))  # (H*W, 2)
    return points


def centerness_target(bbox_targets: Tensor) -> Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) for (N, 4) (l, t, r, b) targets -> (N,)."""
    left_right = bbox_targets[:, [0, 2]]  # (N, 2)
    top_bottom = bbox_targets[:, [1, 3]]  # (N, 2)
    ratio = (left_right.min(dim=-1).values / left_right.max(dim=-1).values) * (
        top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values)
    return torch.sqrt(ratio)


def _level_pairs(grid: tuple[int, int, float, float], stride: int, start: int, boxes: Tensor,
                 box_ids: Tensor) -> tuple[Tensor, Tensor]:
    """All (point index, box index) pairs whose grid cell may lie inside the box on one level.

    grid = (H, W, x0, y0), the level's size and its first point. The window is widened by one
    cell on each side so that float rounding can never drop a point the exact test accepts;
    the exact test filters the extra cells out.
    """
    grid_h, grid_w, x0, y0 = grid
    sub = boxes[box_ids]  # (g, 4)
    j0 = torch.floor((sub[:, 0] - x0) / stride).long().clamp(0, grid_w - 1)  # (g,)
    j1 = torch.ceil((sub[:, 2] - x0) / stride).long().clamp(0, grid_w - 1)
    i0 = torch.floor((sub[:, 1] - y0) / stride).long().clamp(0, grid_h - 1)
    i1 = torch.ceil((sub[:, 3] - y0) / stride).long().clamp(0, grid_h - 1)
    nx, ny = j1 - j0 + 1, i1 - i0 + 1  # (g,) window width and height in cells
    counts = nx * ny  # (g,)
    pair_box = torch.repeat_interleave(torch.arange(len(sub), device=boxes.device), counts)  # (k,)
    first = torch.cumsum(counts, 0) - counts  # (g,) offset of each box's first pair
    local = torch.arange(pair_box.numel(), device=boxes.device) - first[pair_box]  # (k,)
    jj = j0[pair_box] + local % nx[pair_box]
    ii = i0[pair_box] + torch.div(local, nx[pair_box], rounding_mode="floor")
    return start + ii * grid_w + jj, box_ids[pair_box]  # (k,), (k,)


def _candidate_pairs(grids: list[tuple[int, int, float, float]], strides: Sequence[int],
                     regress_ranges: Sequence[Sequence[float]], boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(point index, box index, level) for every pair that could pass the reference's tests.

    For a point strictly inside a box, max(l, t, r, b) >= max(w, h) / 2 and <= max(w, h); a box
    whose half longer side exceeds a level's upper range (or whose longer side is below its
    lower range) can never match there. One pixel of slack keeps the pruning conservative.
    """
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])  # (G,)
    pids, gids, lvls, start = [], [], [], 0
    for lvl, (grid, stride, (lo, hi)) in enumerate(zip(grids, strides, regress_ranges)):
        h, w = grid[0], grid[1]
        ok = (side / 2 <= hi + 1) & (side >= lo - 1)  # (G,)
        box_ids = ok.nonzero().squeeze(1)  # (g,)
        if box_ids.numel() and h * w:
            p, g = _level_pairs(grid, stride, start, boxes, box_ids)
            pids.append(p)
            gids.append(g)
            lvls.append(torch.full_like(p, lvl))
        start += h * w
    if not pids:
        empty = boxes.new_zeros((0,), dtype=torch.long)
        return empty, empty, empty
    return torch.cat(pids), torch.cat(gids), torch.cat(lvls)


def _distances(points: Tensor, boxes: Tensor) -> Tensor:
    """(N, 2) points and (N, 4) boxes -> (N, 4) (left, top, right, bottom), the reference's order of ops."""
    xs, ys = points[:, 0], points[:, 1]
    return torch.stack((xs - boxes[:, 0], ys - boxes[:, 1], boxes[:, 2] - xs, boxes[:, 3] - ys), -1)


def _inside_center_region(points: Tensor, boxes: Tensor, radius: Tensor) -> Tensor:
    """Center sampling: inside the box's centre square of half-side `radius` (stride * r), clipped to the box."""
    cx = (boxes[:, 0] + boxes[:, 2]) / 2  # (K,)
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    x1 = torch.where(cx - radius > boxes[:, 0], cx - radius, boxes[:, 0])
    y1 = torch.where(cy - radius > boxes[:, 1], cy - radius, boxes[:, 1])
    x2 = torch.where(cx + radius > boxes[:, 2], boxes[:, 2], cx + radius)
    y2 = torch.where(cy + radius > boxes[:, 3], boxes[:, 3], cy + radius)
    center = torch.stack((x1, y1, x2, y2), -1)  # (K, 4)
    return _distances(points, center).min(dim=-1).values > 0


@torch.no_grad()
def assign_targets(points: Sequence[Tensor], gt_boxes: Tensor, gt_labels: Tensor, *,
                   num_classes: int,
                   strides: Sequence[int] = DEFAULT_STRIDES,
                   regress_ranges: Sequence[Sequence[float]] = DEFAULT_REGRESS_RANGES,
                   center_sampling: bool = False,
                   center_sample_radius: float = 1.5) -> tuple[Tensor, Tensor]:
    """FCOS targets for ONE image.

    points: per-level (H*W, 2) tensors from `anchor_points`; gt_boxes (G, 4); gt_labels (G,).
    Returns labels (P,) with background = num_classes, and bbox_targets (P, 4) as (l, t, r, b)
    pixel distances to the assigned box (for background points: to box 0, as the reference).
    """
    if len(points) != len(strides) or len(points) != len(regress_ranges):
        raise ValueError(f"got {len(points)} levels of points, {len(strides)} strides and "
                         f"{len(regress_ranges)} regress ranges; they must match")
    all_points = torch.cat(list(points), dim=0)  # (P, 2)
    num_points = all_points.size(0)
    labels = gt_labels.new_full((num_points,), num_classes)  # (P,)
    if gt_boxes.numel() == 0:
        return labels, all_points.new_zeros((num_points, 4))
    gt_boxes = gt_boxes.to(all_points.dtype)
    bbox_targets = _distances(all_points, gt_boxes[:1].expand(num_points, 4))  # (P, 4) towards box 0
    grids = [_level_grid(p) for p in points]
    pid, gid, lvl = _candidate_pairs(grids, strides, regress_ranges, gt_boxes)  # (K,) each
    dist = _distances(all_points[pid], gt_boxes[gid])  # (K, 4)
    if center_sampling:
        radius = all_points.new_tensor([s * center_sample_radius for s in strides])[lvl]  # (K,)
        inside = _inside_center_region(all_points[pid], gt_boxes[gid], radius)
    else:
        inside = dist.min(dim=-1).values > 0
    ranges = all_points.new_tensor(regress_ranges)[lvl]  # (K, 2)
    max_dist = dist.max(dim=-1).values  # (K,)
    areas = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])  # (G,)
    ok = inside & (max_dist >= ranges[:, 0]) & (max_dist <= ranges[:, 1]) & (areas[gid] < INF)
    pid, gid = pid[ok], gid[ok]
    # Rank boxes by (area, index): the smallest rank per point is the reference's argmin.
    order = torch.sort(areas, stable=True).indices  # (G,) rank -> box
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)  # (G,) box -> rank
    best = torch.full((num_points,), order.numel(), dtype=torch.long, device=all_points.device)
    best.scatter_reduce_(0, pid, rank[gid], reduce="amin")  # (P,)
    pos = (best < order.numel()).nonzero().squeeze(1)  # (N,)
    chosen = order[best[pos]]  # (N,) box index of each positive point
    labels[pos] = gt_labels[chosen]
    bbox_targets[pos] = _distances(all_points[pos], gt_boxes[chosen])
    return labels, bbox_targets


def _level_grid(level_points: Tensor) -> tuple[int, int, float, float]:
    """(H, W, x0, y0) of a level from its row-major grid points: W = points in the first row."""
    n = level_points.size(0)
    if n == 0:
        return 0, 0, 0.0, 0.0
    x0, y0 = (float(v) for v in level_points[0])
    w = int((level_points[:, 1] == level_points[0, 1]).sum())
    return n // w, w, x0, y0
