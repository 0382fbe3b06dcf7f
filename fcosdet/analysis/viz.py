"""Drawing detections on images and plotting training curves.

Dimensions: N detections. Boxes are (x1, y1, x2, y2) pixels of the image being drawn on;
labels are in [0, C) and index `class_names`.
"""
from __future__ import annotations

import colorsys
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcosdet.engine.evaluation.coco import to_numpy
from fcosdet.errors import UserError


def class_colour(label: int) -> tuple[int, int, int]:
    """A bright RGB colour per class; golden-ratio hue steps keep neighbours distinct."""
    hue = (label * 0.618033988749895 + 0.05) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _text_colour(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    luma = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def draw_detections(image: Image.Image, *, boxes: Any, labels: Any, scores: Any | None,
                    class_names: list[str], score_thr: float = 0.3) -> Image.Image:
    """A copy of `image` (RGB) with each detection scoring >= score_thr drawn as a box in its
    class colour and a "name 0.87" tag on a filled background above it (inside the box when
    there is no room above). Pass scores=None to draw ground truth (tags show the name only).
    """
    out = image.convert("RGB")  # always a copy, even for RGB input
    boxes = to_numpy(boxes, np.float64).reshape(-1, 4)  # (N, 4)
    labels = to_numpy(labels, np.int64).reshape(-1)  # (N,)
    scores_np = None if scores is None else to_numpy(scores, np.float64).reshape(-1)  # (N,)
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    width = max(1, round(min(out.size) / 250))
    order = range(len(boxes)) if scores_np is None else np.argsort(scores_np, kind="stable")
    for i in order:  # lowest score first, so the most confident tag ends on top
        if scores_np is not None and scores_np[i] < score_thr:
            continue
        label = int(labels[i])
        name = class_names[label] if 0 <= label < len(class_names) else str(label)
        text = name if scores_np is None else f"{name} {scores_np[i]:.2f}"
        colour = class_colour(label)
        x1, y1, x2, y2 = boxes[i].tolist()
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 4
        ty = y1 - th if y1 - th >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw, ty + th], fill=colour)
        draw.text((x1 + 2 - left, ty + 2 - top), text, fill=_text_colour(colour), font=font)
    return out


# ---------------------------------------------------------------------- training curves

def read_log(log_jsonl: Path) -> list[dict]:
    try:
        lines = Path(log_jsonl).read_text().splitlines()
    except OSError as exc:
        raise UserError(f"Cannot read the training log {log_jsonl} ({exc.strerror}); "
                        f"pass the metrics .jsonl file written by training.") from exc
    rows = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by an interrupted run
        if isinstance(row, dict):
            rows.append(row)
    return rows


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def training_figure(rows: list[dict], *, lr: bool = False, panel_size: tuple[float, float] = (6.5, 4.5)) -> Any:
    """The training log's curves as a matplotlib Figure (Agg), one panel each: every "loss*"
    key against "iter"; with `lr`, the learning rate against "iter"; when evaluation rows (with
    "AP") exist, AP / AP50 / AP75 against "epoch" (or "iter"). `plot_curves` and the run
    report both draw it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train_rows = [r for r in rows if is_number(r.get("iter")) and "AP" not in r]
    eval_rows = [r for r in rows if is_number(r.get("AP"))]
    panels = 1 + int(lr) + int(bool(eval_rows))
    fig = Figure(figsize=(panel_size[0] * panels, panel_size[1]))
    FigureCanvasAgg(fig)
    _plot_losses(fig.add_subplot(1, panels, 1), train_rows)
    if lr:
        _plot_lr(fig.add_subplot(1, panels, 2), train_rows)
    if eval_rows:
        _plot_eval(fig.add_subplot(1, panels, panels), eval_rows)
    fig.tight_layout()
    return fig


def plot_curves(log_jsonl: str | Path, out_png: str | Path) -> Path:
    """`training_figure` of a log.jsonl (losses, and AP when evaluated) as a PNG."""
    fig = training_figure(read_log(Path(log_jsonl)))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


FEW_POINTS = 30  # curves with at most this many points also mark each point


def _line_style(count: int) -> dict[str, Any]:
    """Markers on a curve with few points (a run of 3 logs is 3 dots, not a faint segment)."""
    return {"marker": "o", "markersize": 3.5} if count <= FEW_POINTS else {}


def fit_x_axis(ax: Any, xs: list[float]) -> None:
    """Integer ticks for integer steps (epochs, iterations) and a padded range, so that one point
    sits mid-panel at its own tick instead of on an axis of 0.96-1.04."""
    from matplotlib.ticker import MaxNLocator

    if not xs:
        return
    lo, hi = min(xs), max(xs)
    if all(float(x).is_integer() for x in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    pad = 0.5 if hi - lo < 1 else 0.04 * (hi - lo)
    ax.set_xlim(lo - pad, hi + pad)


def ap_limits(values: list[float]) -> tuple[float, float]:
    """The AP axis: from just below 0 (an AP of 0 is a visible line, not the frame) to a margin
    above the best value (at least 0.05, at most 1.05), so that an AP of 0.03 is not a flat line
    on [0, 1] and an AP of 1.0 is not on the frame."""
    top = min(1.05, max(0.05, max([v for v in values if is_number(v)], default=0.0) * 1.15 + 0.01))
    return -0.03 * top, top


def _plot_losses(ax: Any, train_rows: list[dict]) -> None:
    loss_keys = sorted({k for r in train_rows for k, v in r.items()
                        if k.startswith("loss") and is_number(v)})
    xs = []
    for key in loss_keys:
        points = [(r["iter"], r[key]) for r in train_rows if is_number(r.get(key))]
        ax.plot(*zip(*points), label=key, linewidth=1.2 if key == "loss" else 0.9, **_line_style(len(points)))
        xs += [x for x, _ in points]
    fit_x_axis(ax, xs)
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("training losses" if loss_keys else "training losses (none logged)")
    ax.grid(alpha=0.3)
    if loss_keys:
        ax.legend(fontsize=8)


def _plot_lr(ax: Any, train_rows: list[dict]) -> None:
    points = [(r["iter"], r["lr"]) for r in train_rows if is_number(r.get("lr"))]
    if points:
        ax.plot(*zip(*points), color="#8e44ad", **_line_style(len(points)))
        fit_x_axis(ax, [x for x, _ in points])
    ax.set(xlabel="iteration", title="learning rate")
    ax.grid(alpha=0.3)


def _plot_eval(ax: Any, eval_rows: list[dict]) -> None:
    x_key = "epoch" if all(is_number(r.get("epoch")) for r in eval_rows) else "iter"
    xs, ys = [], []
    for key in ("AP", "AP50", "AP75"):
        points = [(r.get(x_key, i), r[key]) for i, r in enumerate(eval_rows)
                  if is_number(r.get(key))]
        if points:
            ax.plot(*zip(*points), label=key, **{"marker": "o", "markersize": 3, **_line_style(len(points))})
            xs += [x for x, _ in points]
            ys += [y for _, y in points]
    fit_x_axis(ax, xs)
    ax.set_xlabel(x_key if all(x_key in r for r in eval_rows) else "evaluation")
    ax.set_ylabel("COCO box AP")
    ax.set_ylim(*ap_limits(ys))
    ax.set_title("validation AP" + (f" (one evaluation: {ys[0]:.3f})" if len(eval_rows) == 1 and ys else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
