"""FCOS target assignment: pure functions, no model, no gradients (the points: `points.py`).

Dimensions: B images, L levels, P points of all levels concatenated (of one image), G
ground-truth boxes (of all images in a batch), K candidate (point, box) pairs. Boxes are
(x1, y1, x2, y2) pixels; labels in [0, C), background = C.

`assign_targets` gives exactly the reference's (mmdet 2.11 FCOSHead._get_target_single)
labels and regression targets without its (P, G, 4) tensors. A point can only be inside a
box whose grid window covers it, and a box can only be matched on a level whose regress range
admits half its longer side, so we enumerate those (point, box) pairs, for every level and
every image of a batch at once (a few hundred per box at most), and run the reference's float
tests on them alone. Ties go to the smallest area, then the lowest box index, as
`areas.min(dim=1)` does in the reference.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from fcosdet.model.points import REGRESS_RANGES, STRIDES

INF = 1e8  # the reference's "no box" area


def centerness_target(bbox_targets: Tensor) -> Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)) for (N, 4) (l, t, r, b) targets -> (N,)."""
    left_right = bbox_targets[:, [0, 2]]  # (N, 2)
    top_bottom = bbox_targets[:, [1, 3]]  # (N, 2)
    ratio = (left_right.min(dim=-1).values / left_right.max(dim=-1).values) * (
        top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values)
    return torch.sqrt(ratio)


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
                   strides: Sequence[int] = STRIDES,
                   regress_ranges: Sequence[Sequence[float]] = REGRESS_RANGES,
                   center_sampling: bool = False,
                   center_sample_radius: float = 1.5) -> tuple[Tensor, Tensor]:
    """FCOS targets for ONE image.

    points: per-level (H*W, 2) tensors from `points.anchor_points`; gt_boxes (G, 4); gt_labels (G,).
    Returns labels (P,) with background = num_classes, and bbox_targets (P, 4) as (l, t, r, b)
    pixel distances to the assigned box (for background points: to box 0, as the reference).
    """
    labels, targets = assign_targets_batch(
        points, [gt_boxes], [gt_labels], num_classes=num_classes, strides=strides,
        regress_ranges=regress_ranges, center_sampling=center_sampling,
        center_sample_radius=center_sample_radius)
    return labels[0], targets[0]


@torch.no_grad()
def assign_targets_batch(points: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor], *,
                         num_classes: int,
                         strides: Sequence[int] = STRIDES,
                         regress_ranges: Sequence[Sequence[float]] = REGRESS_RANGES,
                         center_sampling: bool = False,
                         center_sample_radius: float = 1.5,
                         grids: Sequence[tuple[int, int, float, float]] | None = None) -> tuple[Tensor, Tensor]:
    """`assign_targets` for B images at once: labels (B, P) and bbox_targets (B, P, 4).

    One pass over the boxes of all images (B0 boxes then B1 boxes ...): on a GPU it waits for
    the device once (the size of the candidate pairs), where a per-image loop waits dozens of
    times. `grids`, each level's (H, W, x0, y0), saves reading them back from `points`.
    """
    if len(points) != len(strides) or len(points) != len(regress_ranges):
        raise ValueError(f"got {len(points)} levels of points, {len(strides)} strides and "
                         f"{len(regress_ranges)} regress ranges; they must match")
    all_points = torch.cat(list(points), dim=0)  # (P, 2)
    num_images, num_points, device = len(gt_boxes), all_points.size(0), all_points.device
    counts = [b.shape[0] for b in gt_boxes]  # boxes per image
    boxes = torch.cat([b.reshape(-1, 4) for b in gt_boxes]).to(all_points.dtype)  # (G, 4) all images
    box_labels = torch.cat([lab.reshape(-1) for lab in gt_labels])  # (G,)
    labels = box_labels.new_full((num_images, num_points), num_classes)  # (B, P)
    if boxes.numel() == 0:
        return labels, all_points.new_zeros((num_images, num_points, 4))
    image_of_box = torch.repeat_interleave(torch.arange(num_images, device=device),
                                           torch.tensor(counts, device=device), output_size=len(boxes))  # (G,)
    grids = list(grids) if grids is not None else [_level_grid(p) for p in points]
    pid, gid, lvl = _candidate_pairs(grids, strides, regress_ranges, boxes)  # (K,) each
    dist = _distances(all_points[pid], boxes[gid])  # (K, 4)
    if center_sampling:
        radius = all_points.new_tensor([s * center_sample_radius for s in strides])[lvl]  # (K,)
        inside = _inside_center_region(all_points[pid], boxes[gid], radius)
    else:
        inside = dist.min(dim=-1).values > 0
    ranges = all_points.new_tensor(regress_ranges)[lvl]  # (K, 2)
    max_dist = dist.max(dim=-1).values  # (K,)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (G,)
    ok = inside & (max_dist >= ranges[:, 0]) & (max_dist <= ranges[:, 1]) & (areas[gid] < INF)  # (K,)
    # Rank boxes by (area, index): the smallest rank per point is the reference's argmin; a
    # point's pairs all hold boxes of its own image, so one global ranking serves every image.
    num_boxes = len(boxes)
    order = torch.sort(areas, stable=True).indices  # (G,) rank -> box
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num_boxes, device=device)  # (G,) box -> rank
    best = torch.full((num_images * num_points,), num_boxes, dtype=torch.long, device=device)
    best.scatter_reduce_(0, image_of_box[gid] * num_points + pid,
                         torch.where(ok, rank[gid], num_boxes), reduce="amin")  # (B*P,)
    pos = best < num_boxes  # (B*P,)
    # Unmatched points keep the reference's targets: distances to their image's box 0 (zeros
    # for an image without boxes).
    box0 = torch.tensor([sum(counts[:i]) if n else 0 for i, n in enumerate(counts)], device=device)  # (B,)
    chosen = torch.where(pos, order[best.clamp(max=num_boxes - 1)],
                         box0.repeat_interleave(num_points))  # (B*P,) box of each point
    labels = torch.where(pos, box_labels[chosen], num_classes).view(num_images, num_points)  # (B, P)
    targets = _distances(all_points.repeat(num_images, 1), boxes[chosen]).view(num_images, num_points, 4)
    targets[[i for i, n in enumerate(counts) if not n]] = 0  # (B, P, 4)
    return labels, targets


def _candidate_pairs(grids: Sequence[tuple[int, int, float, float]], strides: Sequence[int],
                     regress_ranges: Sequence[Sequence[float]], boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(point index within its image, box index, level) of every pair that could pass the
    reference's tests, for all levels at once -> (K,) each.

    grids[l] = (H, W, x0, y0), level l's size and first point. On each level a box gets the
    window of grid cells its extent covers, widened by one cell on each side so that float
    rounding can never drop a point the exact test accepts (the exact test filters the extra
    cells out). For a point strictly inside a box, max(l, t, r, b) >= max(w, h) / 2 and
    <= max(w, h): a box whose half longer side exceeds a level's upper range (or whose longer
    side is below its lower range) can never match there; one pixel of slack keeps this safe.
    """
    def column(values: Sequence[float], dtype: torch.dtype = boxes.dtype) -> Tensor:
        return torch.tensor(list(values), dtype=dtype, device=boxes.device).view(-1, 1)  # (L, 1)

    h, w = column([g[0] for g in grids], torch.long), column([g[1] for g in grids], torch.long)
    x0, y0, stride = column([g[2] for g in grids]), column([g[3] for g in grids]), column(strides)
    lo, hi = column([r[0] for r in regress_ranges]), column([r[1] for r in regress_ranges])
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])  # (G,)
    ok = (side / 2 <= hi + 1) & (side >= lo - 1) & (h * w > 0)  # (L, G)
    j0 = torch.floor((boxes[:, 0] - x0) / stride).long().clamp(min=0).minimum(w - 1)  # (L, G)
    j1 = torch.ceil((boxes[:, 2] - x0) / stride).long().clamp(min=0).minimum(w - 1)
    i0 = torch.floor((boxes[:, 1] - y0) / stride).long().clamp(min=0).minimum(h - 1)
    i1 = torch.ceil((boxes[:, 3] - y0) / stride).long().clamp(min=0).minimum(h - 1)
    nx, ny = (j1 - j0 + 1).reshape(-1), (i1 - i0 + 1).reshape(-1)  # (L*G,) window size in cells
    counts = torch.where(ok.reshape(-1), nx * ny, 0)  # (L*G,)
    window = torch.repeat_interleave(torch.arange(counts.numel(), device=boxes.device), counts)  # (K,)
    first = torch.cumsum(counts, 0) - counts  # (L*G,) offset of each window's first pair
    local = torch.arange(window.numel(), device=boxes.device) - first[window]  # (K,)
    jj = j0.reshape(-1)[window] + local % nx[window]  # (K,)
    ii = i0.reshape(-1)[window] + torch.div(local, nx[window], rounding_mode="floor")
    lvl, gid = torch.div(window, len(boxes), rounding_mode="floor"), window % len(boxes)  # (K,)
    start = torch.cumsum(h * w, 0).view(-1) - (h * w).view(-1)  # (L,) first point of each level
    return start[lvl] + ii * w.view(-1)[lvl] + jj, gid, lvl


def _level_grid(level_points: Tensor) -> tuple[int, int, float, float]:
    """(H, W, x0, y0) of a level from its row-major grid points: W = points in the first row."""
    n = level_points.size(0)
    if n == 0:
        return 0, 0, 0.0, 0.0
    x0, y0 = (float(v) for v in level_points[0])
    w = int((level_points[:, 1] == level_points[0, 1]).sum())
    return n // w, w, x0, y0
