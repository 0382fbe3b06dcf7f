"""Annotation validation shared by the readers: the problem collector, box checks, record building.

Dimensions: G boxes in one image, C classes.
Conventions: boxes are (x1, y1, x2, y2) float pixels of the displayed image (EXIF orientation
applied), labels in [0, C), `image_id` unique within a split.

Validation (every reader): a missing or unreadable image, an unknown category / class, a box
with a NaN, a zero or negative size, or nothing inside the image raises `UserError` naming the
file and the annotation. A box partly outside the image is clipped to it; the ones that crossed
the border by more than 1 px are counted in `DatasetSplit.clipped`. An image file name that
leaves the dataset folder (absolute, or with '..') is refused unless `allow_outside_root=True`.
With `skip_invalid=True` the bad annotation (or the whole image for an image-level problem) is
dropped instead and its message is appended to `DatasetSplit.problems`.

Images without boxes are kept (negatives); crowd boxes are kept with `iscrowd=True`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from fcosdet.data.records import DatasetSplit, ImageRecord
from fcosdet.errors import UserError

BOX_TOLERANCE_PX = 1.0  # clipping a box by at most this much is rounding, not counted
SKIP_HINT = "or rerun with --skip-invalid to drop it"  # added by Problems when it stops; not when skipping


class MissingSplitError(UserError):
    """The dataset has no such split. `base` is the message without its full stop, so that a caller
    can add its own way out (training: data.val_split=none; eval: another --split)."""

    def __init__(self, base: str) -> None:
        super().__init__(f"{base}.")
        self.base = " ".join(base.split())


class Problems:
    """Raises the first problem as a UserError, or collects them all when skipping."""

    def __init__(self, *, skip_invalid: bool) -> None:
        self.skip_invalid = skip_invalid
        self.messages: list[str] = []
        self.clipped = 0  # boxes clipped to their image by more than BOX_TOLERANCE_PX

    def report(self, message: str) -> None:
        """`message` names the file and the fix ("...; fix or delete the annotation"); stopping
        adds how to skip such problems instead, skipping records it as a sentence."""
        if not self.skip_invalid:
            raise UserError(f"{message}, {SKIP_HINT}.")
        self.messages.append(f"{message}.")


def leaves_root(name: str) -> bool:
    """True when a file name from an annotation is absolute or climbs out with '..'."""
    normal = os.path.normpath(str(name).replace("\\", "/"))
    return os.path.isabs(normal) or normal == ".." or normal.startswith("../")


def outside_message(name: str, root: Path, where: str) -> str:
    return (f"{where} names the image {name!r}, which leaves the dataset folder {root} (an absolute "
            f"path or '..'); move the image under the folder, or set data.allow_outside_root=true "
            f"if you trust this file")


def summarize_problems(problems: Sequence[str]) -> str:
    """One line for the end of a run: how many annotations/images were skipped, and the first."""
    if not problems:
        return "skipped 0 invalid annotations/images"
    return f"skipped {len(problems)} invalid annotations/images (first: {problems[0]})"


def _describe_categories(split: DatasetSplit) -> str:
    ids = "no ids" if split.category_ids is None else f"ids {split.category_ids[:10]}"
    return f"{split.source or '?'} (names {split.class_names[:10]}, {ids})"


def check_same_categories(train: DatasetSplit, val: DatasetSplit) -> None:
    """Train and val must give each label the same class name and category id (COCO: the same
    'categories'), else the evaluation and the results files mix up classes: one UserError."""
    if (train.class_names, train.category_ids) != (val.class_names, val.category_ids):
        raise UserError(f"the train and val splits label their classes differently: "
                        f"{_describe_categories(train)} vs {_describe_categories(val)}; give both "
                        f"annotation files the same 'categories' list (same ids, same names).")


# ----------------------------------------------------------------------------- box validation


def validate_boxes(boxes: np.ndarray, width: int, height: int, *, describe: Callable[[int], str],
                    problems: Problems) -> tuple[np.ndarray, np.ndarray]:
    """Check boxes (G, 4) x1y1x2y2 against a width x height image.

    Returns (clipped boxes (G, 4) float32, keep (G,) bool); each rejected box is reported with
    `describe(i)` naming the annotation.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)  # (G, 4)
    finite = np.isfinite(boxes).all(axis=1)  # (G,)
    safe = np.where(np.isfinite(boxes), boxes, 0.0)  # (G, 4) NaN-free for the comparisons
    clipped = safe.copy()  # (G, 4)
    clipped[:, 0::2] = clipped[:, 0::2].clip(0.0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0.0, height)
    degenerate = (safe[:, 2] <= safe[:, 0]) | (safe[:, 3] <= safe[:, 1])  # (G,) as written
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])  # (G,) after clipping
    keep = finite & ~empty  # (G,)
    moved = np.abs(clipped - safe).max(axis=1, initial=0.0) > BOX_TOLERANCE_PX  # (G,)
    problems.clipped += int((keep & moved).sum())
    for i in np.flatnonzero(~keep):
        if not finite[i]:
            reason = "has a NaN or infinite coordinate"
        elif degenerate[i]:
            reason = "has zero or negative width or height"
        else:
            reason = f"lies entirely outside the {width}x{height} image"
        problems.report(f"{describe(int(i))} {reason}; fix or delete the annotation")
    return clipped.astype(np.float32), keep


def make_record(path: Path, size: tuple[int, int], boxes: list[list[float]], labels: list[int],
                 crowd: list[bool], *, image_id: int, describe: Callable[[int], str],
                 problems: Problems) -> ImageRecord:
    """Validate one image's boxes and build its record (invalid boxes dropped or raised)."""
    width, height = size
    raw = np.asarray(boxes, np.float64).reshape(-1, 4)  # (G, 4) x1y1x2y2
    clipped, keep = validate_boxes(raw, width, height, describe=describe, problems=problems)
    return ImageRecord(
        path=str(path), width=width, height=height,
        boxes=clipped[keep].reshape(-1, 4),  # (G, 4)
        labels=np.asarray(labels, np.int64).reshape(-1)[keep],  # (G,)
        iscrowd=np.asarray(crowd, bool).reshape(-1)[keep],  # (G,)
        image_id=image_id,
    )


# ----------------------------------------------------------------------------- annotation files: an unreadable file or a malformed entry is one UserError


def text_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, or a UserError naming it."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} cannot be read as UTF-8 text ({exc}); fix or re-export it.") from None


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"Cannot read YAML file {path} ({' '.join(str(exc).split())}); fix it.") from None
    if not isinstance(data, dict):
        raise UserError(f"YAML file {path} does not hold a mapping of keys; fix it.")
    return data


def names_from_value(value: Any, source: Path) -> list[str]:
    """Class names from a YAML `names` entry: a list, or a dict {0: name, 1: name, ...}."""
    if isinstance(value, list) and value:
        return [str(v) for v in value]
    if isinstance(value, dict) and value:
        try:
            keys = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            keys = []
        if keys == list(range(len(value))):
            return [str(value[k] if k in value else value[str(k)]) for k in keys]
    raise UserError(f"{source} has a 'names' entry that is neither a list of class names nor a "
                    "dict {0: name, 1: name, ...}; fix it.")


def as_float(value: Any) -> float:
    """A coordinate from a file; anything that is not a number becomes NaN (reported later)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
