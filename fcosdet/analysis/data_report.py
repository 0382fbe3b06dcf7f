"""The dataset report of `fcosdet check-data`: counts, box sizes and how the config assigns the boxes.

Dimensions: G boxes, L levels, C classes. Sizes: COCO's small / medium / large use the area in
original pixels (here with exclusive bounds: small < 32², medium < 96², large the rest); the
training-scale sizes are sqrt(w * h) of the box after the evaluation transform's resize
(`data.scale`). A box's level is the level holding most of its positive points (ties go to the
finer level). The assignment is the training criterion's (`FCOSCriterion`: its strides, regress
ranges, center sampling and point offset).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from fcosdet.analysis.assignment import assign_images, resized_boxes
from fcosdet.analysis.viz import draw_detections
from fcosdet.data.images import load_image
from fcosdet.data.records import ImageRecord
from fcosdet.data.transforms import DetectionTransform
from fcosdet.model.criterion import FCOSCriterion

COCO_BOUNDS = (32 ** 2, 96 ** 2)  # area bounds of small / medium / large, original pixels
SIZE_EDGES = (0, 8, 16, 32, 64, 128, 256, 512, float("inf"))  # sqrt(area) bins at the training scale
SUGGEST_SHARE = 0.01  # suggest other settings when more than this share of boxes gets no point
CHUNK = 32  # images assigned per call


def level_names(strides: Sequence[int]) -> list[str]:
    return [f"P{int(np.log2(s))}" for s in strides]


def assign_split(records: Sequence[ImageRecord], *, criterion: FCOSCriterion,
                 transform: DetectionTransform, tile: int | None = None) -> dict[str, Any]:
    """Assignment statistics of every (non-crowd) box at the `transform`'s resize (with `tile`, at
    the scale of a training tile of that side: `assignment.tile_scaled_size`), assigned as
    `criterion` assigns it: per-level box counts (by majority level), boxes with no positive
    point (as (image path, box index) pairs), positives per box, and the sqrt(area) of each box
    at the training scale."""
    levels = len(criterion.strides)
    per_level = np.zeros(levels, dtype=np.int64)  # (L,) boxes per majority level
    missing, positives, sizes = [], [], []
    for start in range(0, len(records), CHUNK):
        chunk = records[start:start + CHUNK]
        resized = [resized_boxes(r, transform, tile=tile) for r in chunk]
        views = assign_images([b for b, _, _ in resized], [s for _, _, s in resized], criterion)
        for record, (boxes, _, _), view in zip(chunk, resized, views):
            counts = view.positives_per_box_level()  # (G, L)
            total = counts.sum(dim=1)  # (G,)
            major = counts.argmax(dim=1)  # (G,) first maximum = the finer level on ties
            per_level += np.bincount(major[total > 0].numpy(), minlength=levels)
            missing += [(record.path, int(g)) for g in torch.nonzero(total == 0).reshape(-1)]
            positives += total.tolist()
            wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)  # (G, 2)
            sizes += torch.sqrt(wh[:, 0] * wh[:, 1]).tolist()
    return {"per_level": per_level, "missing": missing, "positives": positives, "sizes": sizes}


def _candidates(criterion: FCOSCriterion) -> list[tuple[str, FCOSCriterion]]:
    """Other settings worth trying when boxes get no point: every regress-range bound x2 and x4
    (small and thin boxes go to finer levels, with more points), and with center sampling a
    radius of 2.5 strides or no center sampling."""
    out = []
    for factor in (2, 4):
        ranges = tuple((lo if lo < 0 else lo * factor, hi if hi >= 1e8 else hi * factor)
                       for lo, hi in criterion.regress_ranges)
        text = "[" + ",".join(f"[{lo:g},{hi:g}]" for lo, hi in ranges) + "]"
        out.append((f"model.regress_ranges={text}", replace(criterion, regress_ranges=ranges)))
    if criterion.center_sampling:
        out.append(("model.center_sample_radius=2.5", replace(criterion, center_sample_radius=2.5)))
        out.append(("model.center_sampling=false", replace(criterion, center_sampling=False)))
    return out


def suggest(records: Sequence[ImageRecord], *, criterion: FCOSCriterion,
            transform: DetectionTransform, tile: int | None = None) -> list[dict[str, Any]]:
    """The boxes without a positive point under each candidate setting, best first."""
    tried = [{"set": text, "no_positive": len(assign_split(records, criterion=c, transform=transform,
                                                           tile=tile)["missing"])}
             for text, c in _candidates(criterion)]
    return sorted(tried, key=lambda t: t["no_positive"])


def compare_settings(records: Sequence[ImageRecord], settings: Sequence[tuple[str, FCOSCriterion, int | None]], *,
                     transform: DetectionTransform) -> list[dict[str, Any]]:
    """Boxes without a positive point under each (name, criterion, tile) setting: the level sets
    with and without P2 (criteria `build_criterion` made), on whole images and at a tile size."""
    out = []
    for name, c, tile in settings:
        levels = level_names(c.strides)
        missing = assign_split(records, criterion=c, transform=transform, tile=tile)["missing"]
        out.append({"setting": name, "levels": f"{levels[0]}..{levels[-1]}", "tile": tile, "no_positive": len(missing)})
    return out


def split_report(records: Sequence[ImageRecord], class_names: Sequence[str], *, criterion: FCOSCriterion,
                 transform: DetectionTransform, tile: int | None = None,
                 compare: Sequence[tuple[str, FCOSCriterion, int | None]] = ()) -> dict[str, Any]:
    """Everything the report says about one split, JSON-ready: the training `criterion`
    (`build_criterion(cfg.model)`) at the evaluation `transform`'s resize
    (`build_transform(cfg, train=False)`), or at the scale of training tiles of side `tile`
    (data.tile); `compare`: (name, criterion, tile) settings whose boxes without a positive
    point are counted too (`compare_settings`)."""
    labels, areas = [], []
    for r in records:
        crowd = np.asarray(r.iscrowd, bool).reshape(-1)
        keep = ~crowd if crowd.size else np.ones(len(r.labels), bool)
        labels += np.asarray(r.labels, np.int64).reshape(-1)[keep].tolist()
        b = np.asarray(r.boxes, np.float64).reshape(-1, 4)[keep]  # (G, 4)
        areas += ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).tolist()
    per_class = np.bincount(np.asarray(labels, np.int64), minlength=len(class_names))  # (C,)
    present = per_class[per_class > 0]
    areas_np = np.asarray(areas)
    coco = {"small": int((areas_np < COCO_BOUNDS[0]).sum()),
            "medium": int(((areas_np >= COCO_BOUNDS[0]) & (areas_np < COCO_BOUNDS[1])).sum()),
            "large": int((areas_np >= COCO_BOUNDS[1]).sum())}
    assigned = assign_split(records, criterion=criterion, transform=transform, tile=tile)
    hist, _ = np.histogram(assigned["sizes"], bins=SIZE_EDGES)
    names = level_names(criterion.strides)
    missing = len(assigned["missing"])
    report = {
        "images": len(records), "boxes": len(labels),
        "images_without_boxes": sum(1 for r in records if len(r.boxes) == 0),
        "per_class": {name: int(n) for name, n in zip(class_names, per_class)},
        "imbalance": float(present.max() / present.min()) if present.size else None,
        "coco_sizes": coco,
        "train_scale": [transform.max_long, transform.short],
        "tile": tile,
        "train_scale_sizes": {_bin_name(a, b): int(n) for a, b, n in zip(SIZE_EDGES[:-1], SIZE_EDGES[1:], hist)},
        "levels": {n: int(c) for n, c in zip(names, assigned["per_level"])},
        "no_positive": missing,
        "no_positive_examples": [{"image": p, "box": g} for p, g in assigned["missing"][:20]],
        "mean_positives_per_box": float(np.mean(assigned["positives"])) if assigned["positives"] else 0.0,
        "suggestions": [],
        "no_positive_compare": compare_settings(records, compare, transform=transform),
    }
    if report["boxes"] and missing > SUGGEST_SHARE * report["boxes"]:
        report["suggestions"] = suggest(records, criterion=criterion, transform=transform, tile=tile)
    return report


def _bin_name(lo: float, hi: float) -> str:
    return f"{lo:g}-{hi:g}" if hi != float("inf") else f">={lo:g}"


def _share(n: int, total: int) -> str:
    return f"{n} ({100.0 * n / total:.1f}%)" if total else str(n)


def _where(tile: int | None) -> str:
    return f"{tile}-px tiles" if tile else "whole images"


def format_report(report: dict[str, Any], *, fmt: str, config: str) -> str:
    """The lines check-data prints under a split's summary line (which names the file read)."""
    total = report["boxes"]
    ranked = sorted(report["per_class"].items(), key=lambda kv: -kv[1])
    classes = ", ".join(f"{k} {v}" for k, v in ranked[:12])
    classes += f", ... {len(ranked) - 12} more" if len(ranked) > 12 else ""
    empty = [k for k, v in ranked if v == 0]
    imbalance = "n/a" if report["imbalance"] is None else f"{report['imbalance']:.1f}:1"
    lines = [f"  format: {fmt}",
             f"  boxes per class: {classes} (imbalance most/least {imbalance}"
             + (f"; {len(empty)} classes without boxes: {', '.join(empty[:8])})" if empty else ")"),
             "  COCO sizes (original pixels): " + ", ".join(f"{k} {_share(v, total)}"
                                                          for k, v in report["coco_sizes"].items()),
             f"  sqrt(area) at training scale {tuple(report['train_scale'])}"
             + (f" on {report['tile']}-px tiles" if report.get("tile") else "") + ": "
             + ", ".join(f"{k}px {v}" for k, v in report["train_scale_sizes"].items() if v),
             f"  levels ({config}): " + ", ".join(f"{k} {_share(v, total)}" for k, v in report["levels"].items())
             + f"; no positive point: {_share(report['no_positive'], total)}; "
             f"{report['mean_positives_per_box']:.1f} positives per box"]
    if report.get("no_positive_compare"):
        lines.append("  no positive point by setting: " + "; ".join(
            f"{c['setting']} ({c['levels']}, {_where(c['tile'])}) {_share(c['no_positive'], total)}"
            for c in report["no_positive_compare"]))
    if report["suggestions"]:
        best = report["suggestions"][0]
        if best["no_positive"] < report["no_positive"]:
            lines.append(f"  suggestion: --set {best['set']} leaves {best['no_positive']} boxes without a point "
                         f"(instead of {report['no_positive']}); tried: "
                         + "; ".join(f"{s['set']} -> {s['no_positive']}" for s in report["suggestions"][1:]))
        else:
            lines.append("  no regress_ranges / center sampling change gives these boxes a point: they are "
                         "smaller than the stride-8 grid at this scale; a larger data.scale would")
    return "\n".join(lines)


BAR_INCH = 0.2  # height of one class's bar row in the class panel, inches (80 classes: 16 in)


def _hbars(ax: Any, values: dict[str, int], title: str, *, none_key: str | None = None, rows: int = 0) -> None:
    """Horizontal bars, first key at the top, each with its count at its end; with `rows` the
    axis holds at least that many bar slots (a few classes keep thin bars at the top)."""
    keys = list(values)
    colours = ["#c0392b" if k == none_key else "#2e86c1" for k in keys]
    bars = ax.barh(range(len(keys)), [values[k] for k in keys], color=colours, height=0.75)
    ax.bar_label(bars, labels=[str(values[k]) for k in keys], padding=2, fontsize=7)
    ax.set_yticks(range(len(keys)), keys, fontsize=7)
    ax.set_ylim(max(len(keys), rows) - 0.5, -0.5)  # first key on top
    ax.set_xlim(0, max([*values.values(), 1]) * 1.15)  # room for the count after the longest bar
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def report_figure(split: str, report: dict[str, Any]) -> Any:
    """The split's picture as a matplotlib Figure (Agg): boxes of every class (most first) as
    horizontal bars in a column as tall as the class list, and beside it COCO sizes, sizes at
    the training scale and boxes per FPN level; every bar carries its count."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ranked = dict(sorted(report["per_class"].items(), key=lambda kv: -kv[1]))
    height = max(7.5, BAR_INCH * len(ranked) + 1.2)
    fig = Figure(figsize=(13, height), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 2, width_ratios=(1, 1.2))
    _hbars(fig.add_subplot(grid[:, 0]), ranked, f"{split}: boxes per class ({len(ranked)} classes)",
           rows=int((height - 1.2) / BAR_INCH))
    side = [("COCO sizes (original px)", report["coco_sizes"], None),
            (f"sqrt(area) px at scale {tuple(report['train_scale'])}", report["train_scale_sizes"], None),
            ("boxes per FPN level (none: no positive point)", {**report["levels"], "none": report["no_positive"]},
             "none")]
    for row, (title, values, none_key) in enumerate(side):
        _hbars(fig.add_subplot(grid[row, 1]), values, f"{split}: {title}", none_key=none_key)
    return fig


def plot_report(split: str, report: dict[str, Any], out_png: Path) -> Path:
    """`report_figure` as a PNG."""
    fig = report_figure(split, report)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def write_report(reports: dict[str, dict[str, Any]], out_dir: Path) -> list[Path]:
    """report.json (every split) and one PNG per split."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(reports, indent=2) + "\n")
    return [out_dir / "report.json"] + [plot_report(s, r, out_dir / f"{s}_report.png") for s, r in reports.items()]


def draw_labels(records: Sequence[ImageRecord], class_names: Sequence[str], count: int, out_dir: Path) -> int:
    """The first `count` images with their boxes and class names drawn (original pixels)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for r in records[:count]:
        drawn = draw_detections(load_image(r.path), boxes=r.boxes, labels=r.labels, scores=None,
                                class_names=list(class_names))
        drawn.save(out_dir / f"{Path(r.path).stem}_labels.jpg", quality=90)
    return min(count, len(records))
