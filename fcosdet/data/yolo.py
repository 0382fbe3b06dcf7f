"""YOLO txt labels (Ultralytics layout) -> one `DatasetSplit`.

Dimensions: G boxes in one image, C classes, P points of a polygon label.
Conventions: label lines 'class cx cy w h' (or a polygon) normalised to [0, 1] become
(x1, y1, x2, y2) float pixels of the displayed image (EXIF orientation applied), labels in
[0, C), `image_id` the 1-based position in the image list. Validation and skipping as
described in `fcosdet.data.validate`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fcosdet.data.images import list_images, read_sizes
from fcosdet.data.records import DatasetSplit, ImageRecord
from fcosdet.data.validate import (
    Problems,
    as_float,
    leaves_root,
    make_record,
    names_from_value,
    outside_message,
    read_yaml,
    text_lines,
)
from fcosdet.errors import UserError

YOLO_NAME_FILES = ("data.yaml", "config.yaml", "dataset.yaml", "names.txt", "classes.txt")


def _yolo_names(root: Path) -> list[str]:
    """Class names from data.yaml / config.yaml / dataset.yaml `names`, or names.txt / classes.txt."""
    for file_name in YOLO_NAME_FILES:
        path = root / file_name
        if not path.is_file():
            continue
        if path.suffix == ".txt":
            return [line.strip() for line in text_lines(path, "Class names file") if line.strip()]
        data = read_yaml(path)
        if "names" in data:
            return names_from_value(data["names"], path)
    raise UserError(f"No class names found in {root}; add data.yaml with 'names: [...]' or names.txt "
                    "(one name per line), or pass the names.")


def _yolo_image_paths(root: Path, split_list: Path | None, problems: Problems, *,
                      allow_outside_root: bool) -> list[Path]:
    """Images of a split: all under images/, all under a folder, or those named in a txt list.

    List lines may be relative to the list's folder, to the root, or to root/images; absolute
    or '..' lines only with `allow_outside_root`.
    """
    if split_list is None or split_list.is_dir():
        folder = split_list if split_list is not None else root / "images"
        if not folder.is_dir():
            raise UserError(f"YOLO image folder {folder} does not exist; check the dataset root.")
        return list_images(folder)
    if not split_list.is_file():
        raise UserError(f"YOLO split list {split_list} does not exist; check the path.")
    paths = []
    for line in text_lines(split_list, "YOLO split list"):
        if not line.strip():
            continue
        entry = Path(line.strip())
        if leaves_root(line.strip()) and not allow_outside_root:
            problems.report(outside_message(line.strip(), root, f"YOLO split list {split_list}"))
            continue
        candidates = [entry] if entry.is_absolute() else [split_list.parent / entry, root / entry,
                                                          root / "images" / entry]
        paths.append(next((c for c in candidates if c.exists()), candidates[-1]))
    return paths


def _yolo_label_path(image_path: Path, root: Path) -> Path:
    """Ultralytics rule: the last 'images' folder in the path becomes 'labels', suffix .txt."""
    parts = list(image_path.parts)
    if "images" in parts:
        index = len(parts) - 1 - parts[::-1].index("images")
        return Path(*parts[:index], "labels", *parts[index + 1:]).with_suffix(".txt")
    return root / "labels" / (image_path.stem + ".txt")


def _parse_yolo_line(tokens: list[str]) -> tuple[float, list[float]] | None:
    """(class id, [cx, cy, w, h] normalised) from a box line or a polygon line; None if malformed."""
    if len(tokens) == 5:
        values = [as_float(t) for t in tokens]
        return values[0], values[1:]
    if len(tokens) >= 7 and len(tokens) % 2 == 1:  # segment: class x1 y1 x2 y2 ... (normalised)
        points = np.asarray([as_float(t) for t in tokens[1:]], np.float64).reshape(-1, 2)  # (P, 2)
        lo, hi = points.min(axis=0), points.max(axis=0)  # (2,)
        return as_float(tokens[0]), [*(lo + hi) / 2, *(hi - lo)]
    return None


def _yolo_image_record(image_path: Path, label_path: Path, size: tuple[int, int], *, image_id: int,
                       num_classes: int, problems: Problems) -> ImageRecord:
    """One YOLO image: a missing or empty label file means no boxes (a negative image)."""
    width, height = size
    lines = text_lines(label_path, "YOLO label file") if label_path.is_file() else []
    boxes, labels, where = [], [], []  # boxes (G, 4) x1y1x2y2 pixels
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name = f"{label_path}: line {number} ('{line.strip()}')"
        tokens = line.split()
        parsed = _parse_yolo_line(tokens)
        if parsed is None:
            problems.report(f"{name} is not 'class cx cy w h' (or a polygon); fix or delete the line")
            continue
        cls, (cx, cy, w, h) = parsed
        if not (math.isfinite(cls) and cls == int(cls) and 0 <= cls < num_classes):
            problems.report(f"{name} has class {tokens[0]}, which is not in 0..{num_classes - 1}; "
                            f"fix the class id or the names list")
            continue
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height,
                      (cx + w / 2) * width, (cy + h / 2) * height])
        labels.append(int(cls))
        where.append(name)
    return make_record(image_path, size, boxes, labels, [False] * len(labels), image_id=image_id,
                        describe=lambda i: where[i], problems=problems)


def read_yolo(root: str | Path, *, split_list: str | Path | None = None,
              names: Sequence[str] | None = None, skip_invalid: bool = False,
              allow_outside_root: bool = False) -> DatasetSplit:
    """Read a YOLO folder: images/, labels/*.txt of 'class cx cy w h' normalised to [0, 1].

    `split_list`: a txt of image paths/names, or a folder of images; default all images under
    root/images. Names: `names`, else data.yaml / config.yaml `names` (list or dict), else
    names.txt. Label files without an image are ignored; an image without a label file is a
    negative. `image_id` is the 1-based position in the image list.
    """
    root = Path(root)
    class_names = [str(n) for n in names] if names is not None else _yolo_names(root)
    problems = Problems(skip_invalid=skip_invalid)
    image_paths = _yolo_image_paths(root, Path(split_list) if split_list is not None else None, problems,
                                    allow_outside_root=allow_outside_root)
    source = str(split_list) if split_list is not None else str(root / "images")
    sizes = read_sizes(image_paths, problems, source=source)
    records: list[ImageRecord] = []
    for image_id, (path, size) in enumerate(zip(image_paths, sizes), start=1):
        if size is not None:
            records.append(_yolo_image_record(path, _yolo_label_path(path, root), size, image_id=image_id,
                                              num_classes=len(class_names), problems=problems))
    return DatasetSplit(records=records, class_names=class_names, problems=problems.messages,
                        source=source, clipped=problems.clipped)
