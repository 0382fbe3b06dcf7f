"""`fcosdet show-targets`: the points each box receives on each FPN level, as training assigns them.

Dimensions: L levels, P points of one image, G boxes of one image, H x W a level's grid.
Per image one figure: a panel per level with the image at the training resize, the anchor
points (grey), the positive points coloured by their box and the centerness target as a heat
map; a second row without center sampling when the config uses it. Plus a text summary:
positives per box and level, and the boxes that get no positive point at all (and how many
get none under the `compare` settings: the level set with / without P2, at a tile size). With
`tile` the image is shown and assigned at the scale a training tile of that side gets
(`assignment.tile_scaled_size`).
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


def compute_view(record: ImageRecord, criterion: FCOSCriterion, transform: DetectionTransform, *,
                 tile: int | None = None) -> TargetsView:
    """One record at the `transform`'s resize (or a `tile`'s scale), assigned as `criterion`
    assigns it (and without center sampling when it samples)."""
    boxes, labels, size = resized_boxes(record, transform, tile=tile)
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


def compare_text(record: ImageRecord, settings: Sequence[tuple[str, FCOSCriterion, int | None]],
                 transform: DetectionTransform) -> tuple[str, list[dict[str, Any]]]:
    """For each (name, criterion, tile) setting, the boxes of `record` with no positive point:
    one summary line and the counts as JSON-ready dicts."""
    counts = []
    for name, crit, tile in settings:
        view = compute_view(record, crit, transform, tile=tile)
        missing = int((view.main.positives_per_box_level().sum(dim=1) == 0).sum())
        counts.append({"setting": name, "tile": tile, "no_positive": missing})
    where = ["whole image" if c["tile"] is None else f"{c['tile']}-px tiles" for c in counts]
    text = "  no positive point by setting: " + "; ".join(
        f"{c['setting']} ({w}) {c['no_positive']}" for c, w in zip(counts, where))
    return text, counts


def _resized_pixels(record: ImageRecord, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) uint8 image at the training resize (the transform's own resize call)."""
    pixels = TF.pil_to_tensor(load_image(record.path))  # (3, H0, W0) uint8
    if tuple(pixels.shape[-2:]) != tuple(size):
        pixels = TF.resize(pixels, list(size), antialias=True)  # (3, H, W)
    return pixels


CELL_PX = 8  # PNG pixels per grid cell of the finest level (stride 8: the image at about 1:1)
MIN_PANEL_PX = 640  # the finest level's panel is never narrower than this
DPI = 100


def _layout(fig: Any, levels: int, rows: int) -> list[list[Any]]:
    """Per row (center sampling, without), per level, a gridspec slot: the finest level in a large
    panel, the coarser ones at half its width in a block beside it (2 rows of ceil((L - 1) / 2)),
    so that P4's cells are as large as P3's and coarser ones larger."""
    cols = _block_columns(levels)
    grid = fig.add_gridspec(2 * rows, 1 + cols, width_ratios=(2,) + (1,) * cols)
    return [[grid[2 * r:2 * r + 2, 0]] + [grid[2 * r + (level - 1) // cols, 1 + (level - 1) % cols]
                                         for level in range(1, levels)] for r in range(rows)]


def _block_columns(levels: int) -> int:
    """Columns of the half-size block holding the levels after the first (2 rows)."""
    return max(1, -(-(levels - 1) // 2))


def _big_panel_inches(view: TargetsView, criterion: FCOSCriterion) -> float:
    """Width of the finest level's panel: CELL_PX pixels per grid cell, at least MIN_PANEL_PX."""
    return max(MIN_PANEL_PX, view.size[1] / criterion.strides[0] * CELL_PX) / DPI


def _panel(ax: Any, pixels: torch.Tensor, view: TargetsView, assignment: ImageAssignment, level: int,
           stride: int, title: str, tags: bool) -> list[Any]:
    """One level: image with boxes, anchor points, positives coloured by box, centerness heat map.
    With `tags` each box carries its index at its top-left corner (the legend's number). Returns
    the (anchor, positive) scatters, which `_size_markers` sizes once the layout is known."""
    colours = [box_colour(g) for g in range(len(view.boxes))]
    line = max(2, round(max(view.size) / 300))  # box outline in pixels of the resized image
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
    scatters = [ax.scatter(pts[:, 0], pts[:, 1], c="#9a9a9a", linewidths=0)]
    pos = owner < assignment.num_boxes
    if pos.any():
        scatters.append(ax.scatter(pts[pos, 0], pts[pos, 1], c=[np.array(colours[g]) / 255 for g in owner[pos]],
                                   edgecolors="white"))
    if tags:
        for g, (x1, y1, _, _) in enumerate(view.boxes.tolist()):
            ax.text(x1, y1, str(g), fontsize=7, color="white", va="bottom", ha="left", clip_on=True,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": np.array(colours[g]) / 255, "linewidth": 0})
    ax.set_xlim(0, view.size[1])
    ax.set_ylim(view.size[0], 0)
    ax.set_title(f"{title}: {int(pos.sum())} positives", fontsize=9)
    ax.axis("off")
    return scatters


def _size_markers(ax: Any, scatters: list[Any], stride: int, image_width: int) -> None:
    """Anchor dots of 0.2 grid cell, positive dots of 0.75 cell with a thin white rim, from the panel's
    laid-out width (a cell is `stride` of the `image_width` pixels the panel spans; sizes are
    in points², 72 points per inch)."""
    cell_pt = ax.get_window_extent().width / ax.figure.dpi * 72 * stride / image_width
    scatters[0].set_sizes([max(0.25, 0.2 * cell_pt) ** 2])
    if len(scatters) > 1:
        scatters[1].set_sizes([(0.75 * cell_pt) ** 2])
        scatters[1].set_linewidth(max(0.25, 0.05 * cell_pt))


def _legend(fig: Any, view: TargetsView, class_names: Sequence[str]) -> None:
    """Below the panels: one entry per box, "index: class" in the box's colour."""
    from matplotlib.lines import Line2D

    if not len(view.boxes):
        return
    handles = [Line2D([], [], linestyle="none", marker="o", markersize=8, markeredgecolor="white",
                      markerfacecolor=np.array(box_colour(g)) / 255) for g in range(len(view.boxes))]
    labels = [box_label(g, class_names, view.labels) for g in range(len(view.boxes))]
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 10), fontsize=9,
               title="box index: class (colour of its box and of its positive points)", title_fontsize=9)


def box_label(index: int, class_names: Sequence[str], labels: torch.Tensor) -> str:
    """The legend's text of box `index`: "3: RBC"."""
    label = int(labels[index])
    return f"{index}: {class_names[label] if 0 <= label < len(class_names) else label}"


def targets_figure(view: TargetsView, criterion: FCOSCriterion, class_names: Sequence[str]) -> Any:
    """The figure (Agg, DPI dots per inch): per row (with center sampling, and without it when
    used) the finest level large and the others beside it (`_layout`), and the box legend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pixels = _resized_pixels(view.record, view.size)
    rows = [(view.main, f"center sampling {criterion.center_sample_radius:g}" if criterion.center_sampling
             else "")] + ([(view.plain, "no center sampling")] if view.plain is not None else [])
    aspect = view.size[0] / view.size[1]
    big_in = _big_panel_inches(view, criterion)
    legend_in = 0.6 + 0.25 * -(-len(view.boxes) // 10)
    width_in = big_in * (2 + _block_columns(len(criterion.strides))) / 2
    fig = Figure(figsize=(width_in, (big_in * aspect + 0.6) * len(rows) + 0.4 + legend_in), dpi=DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    drawn = []  # (axes, scatters, stride) of every panel
    for (assignment, note), slots in zip(rows, _layout(fig, len(criterion.strides), len(rows))):
        for level, (stride, slot) in enumerate(zip(criterion.strides, slots)):
            name = f"P{int(np.log2(stride))} stride {stride}" + (f", {note}" if note else "")
            ax = fig.add_subplot(slot)
            drawn.append((ax, _panel(ax, pixels, view, assignment, level, stride, name, tags=level == 0), stride))
    _legend(fig, view, class_names)
    fig.suptitle(f"{Path(view.record.path).name} at {view.size[1]}x{view.size[0]}: points assigned per level "
                 f"(colour = box, grey = anchor points), heat = centerness target", fontsize=11)
    fig.draw_without_rendering()  # lays the panels out: their widths size the markers
    for ax, scatters, stride in drawn:
        _size_markers(ax, scatters, stride, view.size[1])
    return fig


def draw_view(view: TargetsView, criterion: FCOSCriterion, out_png: Path, class_names: Sequence[str]) -> Path:
    """`targets_figure` as a PNG."""
    out_png.parent.mkdir(parents=True, exist_ok=True)
    targets_figure(view, criterion, class_names).savefig(out_png, dpi=DPI)
    return out_png


def show_targets(records: Sequence[ImageRecord], class_names: Sequence[str], *, criterion: FCOSCriterion,
                 transform: DetectionTransform, out_dir: Path, tile: int | None = None,
                 compare: Sequence[tuple[str, FCOSCriterion, int | None]] = ()) -> list[dict[str, Any]]:
    """Figure + summary for each record, with the training `criterion` (`build_criterion`) at the
    evaluation `transform`'s resize (`build_transform(cfg, train=False)`) or a training `tile`'s
    scale; returns per image {image, png, summary, positives (G, L) list, no_positive,
    compare: [{setting, tile, no_positive}] for the `compare` settings}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for record in records:
        view = compute_view(record, criterion, transform, tile=tile)
        png = draw_view(view, criterion, out_dir / f"{Path(record.path).stem}_targets.png", class_names)
        text = summary_text(view, class_names, criterion)
        compared: list[dict[str, Any]] = []
        if compare:
            line, compared = compare_text(record, compare, transform)
            text += "\n" + line
        (out_dir / f"{Path(record.path).stem}_targets.txt").write_text(text + "\n")
        counts = view.main.positives_per_box_level()  # (G, L)
        results.append({"image": record.path, "png": str(png), "summary": text,
                        "positives": counts.tolist(),
                        "no_positive": [g for g in range(len(counts)) if counts[g].sum() == 0],
                        "compare": compared})
    return results
