"""`fcosdet show-targets`: the points each box receives on each FPN level, as training assigns them.

Dimensions: L levels, P points of one image, G boxes of one image, H x W a level's grid.
Per image one figure: a panel per level with the image at the training resize, the anchor
points (grey), the positive points coloured by their box and the centerness target as a heat
map; a second row without center sampling when the config uses it. Plus a text summary:
positives per box and level, and the boxes that get no positive point at all.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torchvision.ops import box_convert
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes

from fcosdet.analysis.assignment import ImageAssignment, assign_images, resized_boxes
from fcosdet.data.images import load_image
from fcosdet.data.records import ImageRecord
from fcosdet.data.transforms import DetectionTransform
from fcosdet.model.criterion import FCOSCriterion


def box_colour(index: int) -> tuple[int, int, int]:
    """A distinct RGB colour per box index (matplotlib's tab20, cycled)."""
    from matplotlib import colormaps
    r, g, b, _ = colormaps["tab20"](index % 20)
    return int(r * 255), int(g * 255), int(b * 255)


@dataclass
class TargetsView:
    """One image's assignment: `main` with the criterion's settings, `plain` without center
    sampling (None when the criterion does not use it)."""
    record: ImageRecord
    boxes: torch.Tensor  # (G, 4) at the training resize
    labels: torch.Tensor  # (G,)
    size: tuple[int, int]  # (H, W) at the training resize
    main: ImageAssignment
    plain: ImageAssignment | None


def compute_view(record: ImageRecord, criterion: FCOSCriterion, transform: DetectionTransform) -> TargetsView:
    """One record at the `transform`'s resize, assigned as `criterion` assigns it (and without
    center sampling when it samples)."""
    boxes, labels, size = resized_boxes(record, transform)
    main = assign_images([boxes], [size], criterion)[0]
    plain = (assign_images([boxes], [size], replace(criterion, center_sampling=False))[0]
             if criterion.center_sampling else None)
    return TargetsView(record=record, boxes=boxes, labels=labels, size=size, main=main, plain=plain)


def summary_text(view: TargetsView, class_names: Sequence[str], criterion: FCOSCriterion) -> str:
    """Positives per box and level (the criterion's settings), and the boxes with none."""
    counts = view.main.positives_per_box_level()  # (G, L)
    levels = [f"P{int(np.log2(s))}" for s in criterion.strides]
    h0, w0, (h, w) = view.record.height, view.record.width, view.size
    lines = [f"{Path(view.record.path).name} ({w0}x{h0} -> {w}x{h}): {len(view.boxes)} boxes, "
             f"{int(counts.sum())} positive points"
             + (f" (center sampling r={criterion.center_sample_radius}; "
                f"{int(view.plain.positives_per_box_level().sum())} without)" if view.plain is not None else "")]
    header = f"  {'box':>4}  {'class':<14} {'w x h px':>11}  " + " ".join(f"{n:>4}" for n in levels) + "  total"
    lines.append(header)
    xywh = box_convert(view.boxes.double(), "xyxy", "xywh")  # (G, 4)
    for g in range(len(view.boxes)):
        bw, bh = xywh[g, 2:].tolist()
        name = class_names[int(view.labels[g])][:14]
        row = " ".join(f"{int(c):>4}" for c in counts[g])
        lines.append(f"  {g:>4}  {name:<14} {f'{bw:.0f}x{bh:.0f}':>11}  {row}  {int(counts[g].sum()):>5}")
    missing = [g for g in range(len(view.boxes)) if counts[g].sum() == 0]
    lines.append(f"  boxes with no positive point: {len(missing)}"
                 + (" (" + ", ".join(str(g) for g in missing) + ")" if missing else ""))
    return "\n".join(lines)


def _resized_pixels(record: ImageRecord, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) uint8 image at the training resize (the transform's own resize call)."""
    pixels = TF.pil_to_tensor(load_image(record.path))  # (3, H0, W0) uint8
    if tuple(pixels.shape[-2:]) != tuple(size):
        pixels = TF.resize(pixels, list(size), antialias=True)  # (3, H, W)
    return pixels


def _panel(ax: Any, pixels: torch.Tensor, view: TargetsView, assignment: ImageAssignment, level: int,
           stride: int, title: str) -> None:
    """One level: image with boxes, anchor points, positives coloured by box, centerness heat map."""
    colours = [box_colour(g) for g in range(len(view.boxes))]
    line = max(2, round(max(view.size) / 200))  # box outline in pixels, visible once the panel is scaled down
    drawn = draw_bounding_boxes(pixels, view.boxes, colors=colours, width=line) if len(view.boxes) else pixels
    ax.imshow(drawn.permute(1, 2, 0).numpy())
    h, w = assignment.sizes[level]
    sl = assignment.level_slices()[level]
    heat = assignment.centerness()[sl].reshape(h, w).numpy()  # (H, W)
    pts = assignment.points[level].numpy()  # (H*W, 2)
    # each heat cell is the stride-wide square centred on its point: (x0 - s/2, y0 - s/2) is
    # the grid's top-left corner, (0, 0) for half-stride points, (-s/2, -s/2) for zero-offset ones
    left, top = (pts[0] - stride / 2).tolist() if len(pts) else (0.0, 0.0)
    ax.imshow(np.ma.masked_equal(heat, 0.0), cmap="magma", vmin=0, vmax=1, alpha=0.55,
              extent=(left, left + w * stride, top + h * stride, top), interpolation="nearest")
    owner = assignment.box_of_point[sl].numpy()  # (H*W,)
    ax.scatter(pts[:, 0], pts[:, 1], s=max(0.3, stride / 16), c="#9a9a9a", linewidths=0)
    pos = owner < assignment.num_boxes
    if pos.any():
        ax.scatter(pts[pos, 0], pts[pos, 1], s=max(4.0, stride / 2),
                   c=[np.array(colours[g]) / 255 for g in owner[pos]], edgecolors="white", linewidths=0.4)
    ax.set_xlim(0, view.size[1])
    ax.set_ylim(view.size[0], 0)
    ax.set_title(f"{title}: {int(pos.sum())} positives", fontsize=7)
    ax.axis("off")


def draw_view(view: TargetsView, criterion: FCOSCriterion, out_png: Path, *, panel_width: float = 3.2) -> Path:
    """The figure: one column per level, a second row without center sampling when used."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pixels = _resized_pixels(view.record, view.size)
    rows = [(view.main, f"center sampling {criterion.center_sample_radius:g}" if criterion.center_sampling
             else "")] + ([(view.plain, "no center sampling")] if view.plain is not None else [])
    levels = len(criterion.strides)
    aspect = view.size[0] / view.size[1]
    fig = Figure(figsize=(panel_width * levels, (panel_width * aspect + 0.3) * len(rows) + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    for r, (assignment, note) in enumerate(rows):
        for level, stride in enumerate(criterion.strides):
            ax = fig.add_subplot(len(rows), levels, r * levels + level + 1)
            name = f"P{int(np.log2(stride))} stride {stride}" + (f", {note}" if note else "")
            _panel(ax, pixels, view, assignment, level, stride, name)
    fig.suptitle(f"{Path(view.record.path).name}: points assigned per level (colour = box), "
                 f"heat = centerness target", fontsize=9)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    return out_png


def show_targets(records: Sequence[ImageRecord], class_names: Sequence[str], *, criterion: FCOSCriterion,
                 transform: DetectionTransform, out_dir: Path) -> list[dict[str, Any]]:
    """Figure + summary for each record, with the training `criterion` (`build_criterion`) at the
    evaluation `transform`'s resize (`build_transform(cfg, train=False)`); returns per image
    {image, png, summary, positives (G, L) list, no_positive}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for record in records:
        view = compute_view(record, criterion, transform)
        png = draw_view(view, criterion, out_dir / f"{Path(record.path).stem}_targets.png")
        text = summary_text(view, class_names, criterion)
        (out_dir / f"{Path(record.path).stem}_targets.txt").write_text(text + "\n")
        counts = view.main.positives_per_box_level()  # (G, L)
        results.append({"image": record.path, "png": str(png), "summary": text,
                        "positives": counts.tolist(),
                        "no_positive": [g for g in range(len(counts)) if counts[g].sum() == 0]})
    return results
