"""Evaluation diagnostics: confusion matrix, precision-recall curves, worst images.

Dimensions: C classes, G ground-truth boxes of one image, N detections of one image.
Boxes (x1, y1, x2, y2) pixels of the original image, labels in [0, C).

Confusion matrix, (C + 1) x (C + 1): rows are the ground-truth class, columns the detected
class, index C is background. Detections scoring >= score_thr, highest score first, each take
one unmatched ground-truth box with IoU >= iou_thr: the best-overlapping box of their own
class if there is one, else the best-overlapping box of any class (a confusion). A detection
that takes none counts in the background row, unless it overlaps a crowd region by iou_thr
(ignored, as COCO ignores it); a ground-truth box no detection takes counts in the background
column. An image's errors are its off-diagonal counts (missed, false and confused boxes).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.ops import box_iou

from fcosdet.analysis.viz import draw_detections
from fcosdet.data.images import load_image
from fcosdet.data.records import ImageRecord


def _match_image(gt: np.ndarray, gt_labels: np.ndarray, crowd: np.ndarray, dets: np.ndarray,
                 det_labels: np.ndarray, num_classes: int, iou_thr: float) -> np.ndarray:
    """One image's (C + 1, C + 1) counts; dets sorted by score, highest first."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    real, crowd_boxes = gt[~crowd], gt[crowd]  # (G, 4), (Gc, 4)
    real_labels = gt_labels[~crowd]  # (G,)
    iou = box_iou(torch.as_tensor(dets), torch.as_tensor(real)).numpy()  # (N, G)
    crowd_iou = box_iou(torch.as_tensor(dets), torch.as_tensor(crowd_boxes)).numpy()  # (N, Gc)
    taken = np.zeros(len(real), dtype=bool)  # (G,)
    for i, label in enumerate(det_labels):
        free = (iou[i] >= iou_thr) & ~taken  # (G,)
        same = free & (real_labels == label)
        pool = same if same.any() else free
        if pool.any():
            g = int(np.argmax(np.where(pool, iou[i], -1.0)))
            taken[g] = True
            matrix[real_labels[g], label] += 1
        elif not (crowd_iou.shape[1] and (crowd_iou[i] >= iou_thr).any()):
            matrix[num_classes, label] += 1
    for g in np.flatnonzero(~taken):
        matrix[real_labels[g], num_classes] += 1
    return matrix


def confusion_matrix(records: Sequence[ImageRecord], predictions: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
                     num_classes: int, *, score_thr: float = 0.3,
                     iou_thr: float = 0.5) -> tuple[np.ndarray, dict[int, int]]:
    """The (C + 1, C + 1) matrix over all records and each image's number of errors
    (image_id -> off-diagonal count). Images without predictions count as having none."""
    total = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    errors = {}
    nothing = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    for rec in records:
        boxes, scores, labels = predictions.get(int(rec.image_id), nothing)
        keep = np.asarray(scores) >= score_thr  # (N,)
        order = np.argsort(-np.asarray(scores)[keep], kind="stable")
        dets = np.asarray(boxes, np.float64).reshape(-1, 4)[keep][order]  # (N, 4) highest score first
        det_labels = np.asarray(labels, np.int64).reshape(-1)[keep][order]  # (N,)
        gt = np.asarray(rec.boxes, np.float64).reshape(-1, 4)  # (G, 4)
        crowd = np.asarray(rec.iscrowd, bool).reshape(-1)
        crowd = crowd if crowd.size == len(gt) else np.zeros(len(gt), bool)
        m = _match_image(gt, np.asarray(rec.labels, np.int64).reshape(-1), crowd, dets, det_labels,
                         num_classes, iou_thr)
        total += m
        errors[int(rec.image_id)] = int(m.sum() - np.trace(m[:num_classes, :num_classes]))
    return total, errors


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], out_png: Path, *, max_classes: int = 30) -> Path:
    """Counts with colours normalised per ground-truth row; at most `max_classes` classes
    (those with the most boxes) plus background."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_classes = len(class_names)
    weight = matrix[:num_classes].sum(1) + matrix[:, :num_classes].sum(0)  # (C,)
    keep = sorted(np.argsort(-weight, kind="stable")[:max_classes].tolist()) + [num_classes]
    sub = matrix[np.ix_(keep, keep)]  # (K + 1, K + 1)
    names = [class_names[k] for k in keep[:-1]] + ["background"]
    rows = sub.sum(1, keepdims=True)
    norm = np.divide(sub, rows, out=np.zeros(sub.shape), where=rows > 0)
    side = 2.5 + 0.45 * len(keep)
    fig = Figure(figsize=(side + 1, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if len(keep) <= 16:
        for i in range(len(keep)):
            for j in range(len(keep)):
                if sub[i, j]:
                    ax.text(j, i, str(sub[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(keep)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(keep)), names, fontsize=7)
    ax.set_xlabel("detected")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix (colour: share of the row)", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    return out_png


def plot_pr_curves(pr_curves: dict[str, Any], out_png: Path) -> Path:
    """Per-class precision over recall at IoU 0.5 (classes without ground truth left out)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    curves = {k: v for k, v in pr_curves["precision"].items() if v is not None}
    for name, precision in curves.items():
        ap50 = float(np.mean(precision))
        ax.plot(pr_curves["recall"], precision, linewidth=1.2, label=f"{name} {ap50:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall at IoU 0.5 (legend: AP50)", fontsize=9)
    ax.grid(alpha=0.3)
    if 0 < len(curves) <= 20:
        ax.legend(fontsize=7)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    return out_png


def panel_texts(record: ImageRecord, prediction: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                score_thr: float) -> tuple[tuple[str, str | None], tuple[str, str | None]]:
    """((title, why empty or None), (title, why empty or None)) of the ground-truth and the
    detection half of `draw_side_by_side`."""
    gt = len(np.asarray(record.boxes).reshape(-1, 4))
    scores = np.zeros(0) if prediction is None else np.asarray(prediction[1], np.float64).reshape(-1)  # (N,)
    shown = int((scores >= score_thr).sum())
    left = (f"ground truth: {gt} box{'' if gt == 1 else 'es'}",
            None if gt else "no ground-truth box in this image")
    why = None
    if not shown:
        why = (f"no detection scoring >= {score_thr:.2f}\n"
               + (f"({len(scores)} below it, best {scores.max():.2f})" if len(scores) else "(the model returned none)"))
    return left, (f"detections >= {score_thr:.2f}: {shown}", why)


def _captioned(image: Image.Image, title: str, why: str | None) -> Image.Image:
    """`image` under a white strip holding `title`; `why` written large across its middle."""
    size = max(12, round(image.width / 28))  # text height in pixels, about 17 px once halves are shown 480 wide
    font = ImageFont.load_default(size=size)
    strip = round(size * 1.6)
    out = Image.new("RGB", (image.width, image.height + strip), (255, 255, 255))
    out.paste(image, (0, strip))
    draw = ImageDraw.Draw(out)
    draw.text((6, strip // 2), title, fill=(0, 0, 0), font=font, anchor="lm")
    if why:
        centre = (image.width // 2, strip + image.height // 2)
        box = draw.multiline_textbbox(centre, why, font=font, anchor="mm", align="center")
        draw.rectangle([box[0] - 8, box[1] - 8, box[2] + 8, box[3] + 8], fill=(255, 255, 255), outline=(192, 57, 43),
                       width=2)
        draw.multiline_text(centre, why, fill=(192, 57, 43), font=font, anchor="mm", align="center")
    return out


def draw_side_by_side(record: ImageRecord, prediction: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                      class_names: Sequence[str], score_thr: float, *, max_side: int = 480) -> Any:
    """A PIL image: ground truth on the left, detections >= score_thr on the right, each half
    titled in a strip above it ("ground truth: 12 boxes" | "detections >= 0.30: 9") and, when a
    half shows nothing, saying why across its middle."""
    image = load_image(record.path)
    boxes, scores, labels = prediction if prediction is not None else (np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    left = draw_detections(image, boxes=record.boxes, labels=record.labels, scores=None, class_names=list(class_names))
    right = draw_detections(image, boxes=boxes, labels=labels, scores=scores, class_names=list(class_names),
                            score_thr=score_thr)
    (left_title, left_why), (right_title, right_why) = panel_texts(record, prediction, score_thr)
    left, right = _captioned(left, left_title, left_why), _captioned(right, right_title, right_why)
    both = Image.new("RGB", (left.width * 2 + 8, left.height), (255, 255, 255))
    both.paste(left, (0, 0))
    both.paste(right, (left.width + 8, 0))
    factor = max_side * 2 / both.width
    if factor < 1:
        both = both.resize((int(both.width * factor), int(both.height * factor)), Image.LANCZOS)
    return both


def _draw_all(records: Sequence[ImageRecord], preds: dict, names: Sequence[str], score_thr: float, folder: Path,
              label: Any) -> list[Path]:
    """GT | detections pictures of `records` in `folder` (emptied first: names change between runs)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    paths = []
    for rank, rec in enumerate(records):
        path = folder / f"{rank:02d}_{Path(rec.path).stem}{label(rec)}.jpg"
        draw_side_by_side(rec, preds.get(int(rec.image_id)), names, score_thr).save(path, quality=85)
        paths.append(path)
    return paths


def write_diagnostics(evaluator: Any, out_dir: Path, *, score_thr: float = 0.3, iou_thr: float = 0.5,
                      worst: int = 6, samples: int = 0) -> dict[str, Any]:
    """confusion_matrix.json/.png, pr_curves.json/.png, worst/*.jpg (GT | detections of the
    images with most errors) and samples/*.jpg (the first `samples` images) under out_dir,
    from an evaluator after `evaluate()`. Returns the paths, the matrix and the errors."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names, records, preds = evaluator.class_names, evaluator.records, evaluator.predictions()
    matrix, errors = confusion_matrix(records, preds, len(names), score_thr=score_thr, iou_thr=iou_thr)
    (out_dir / "confusion_matrix.json").write_text(json.dumps({
        "classes": list(names) + ["background"], "rows": "ground truth", "columns": "detected",
        "score_thr": score_thr, "iou_thr": iou_thr, "matrix": matrix.tolist()}, indent=1) + "\n")
    paths = {"confusion_json": out_dir / "confusion_matrix.json",
             "confusion_png": plot_confusion(matrix, names, out_dir / "confusion_matrix.png")}
    if evaluator.pr_curves is not None:
        (out_dir / "pr_curves.json").write_text(json.dumps(evaluator.pr_curves) + "\n")
        paths["pr_png"] = plot_pr_curves(evaluator.pr_curves, out_dir / "pr_curves.png")
    ranked = sorted(records, key=lambda r: (-errors[int(r.image_id)], int(r.image_id)))[:worst]
    paths["worst"] = _draw_all(ranked, preds, names, score_thr, out_dir / "worst",
                               lambda r: f"_{errors[int(r.image_id)]}err")
    if samples:
        paths["samples"] = _draw_all(records[:samples], preds, names, score_thr, out_dir / "samples", lambda r: "")
    return {"paths": paths, "matrix": matrix, "errors": errors}
