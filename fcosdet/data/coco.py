"""COCO instances JSON -> one `DatasetSplit`.

Dimensions: G boxes in one image, C classes.
Conventions: a COCO bbox (x, y, w, h) becomes (x1, y1, x2, y2) float pixels of the displayed
image (EXIF orientation applied); category ids map to labels in [0, C); `image_id` is the
JSON's image id. Validation and skipping as described in `fcosdet.data.validate`.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from fcosdet.data.images import read_sizes
from fcosdet.data.records import DatasetSplit, ImageRecord
from fcosdet.data.validate import (
    Problems,
    as_float,
    leaves_root,
    make_record,
    outside_message,
)
from fcosdet.errors import UserError


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"Annotation file {path} does not exist; check the path.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"Annotation file {path} is not valid JSON ({exc}); "
                        "fix or re-export it.") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise UserError(f"Annotation file {path} is not a COCO detection file (no 'images' list); "
                        "pass a COCO instances JSON.")
    return data


def _coco_categories(data: dict, path: Path,
                     class_names: Sequence[str] | None) -> tuple[dict[int, int], list[str], list[int]]:
    """(category id -> label, class names, category id of each label): sorted ids become labels
    0..C-1, or a category's label is the index of its name in `class_names`, which must name
    exactly one category each (results files write each label's id)."""
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        raise UserError(f"Annotation file {path} has no 'categories' list; add one entry per class "
                        "with 'id' and 'name'.")
    by_id: dict[int, str] = {}
    for cat in categories:
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or cat["id"] in by_id:
            raise UserError(f"Annotation file {path} has a category without a unique integer 'id' "
                            f"({cat!r}); fix the 'categories' list.")
        by_id[cat["id"]] = str(cat.get("name", cat["id"]))
    if class_names is None:
        ids = sorted(by_id)
        return {cid: label for label, cid in enumerate(ids)}, [by_id[cid] for cid in ids], ids
    names = [str(n) for n in class_names]
    ids: list[int] = []  # (C,) the category id of each label
    for name in names:
        matches = [cid for cid, cat_name in by_id.items() if cat_name == name]
        if len(matches) != 1:
            raise UserError(f"Annotation file {path} has {len(matches)} categories named {name!r} "
                            f"(ids {matches}); the dataset's names need exactly one each: fix the "
                            f"'categories' list or the names list.")
        ids.append(matches[0])
    return {cid: names.index(name) for cid, name in by_id.items() if name in names}, names, ids


def _coco_images(data: dict, path: Path) -> list[dict]:
    images = data["images"]
    seen: set[int] = set()
    for image in images:
        if not isinstance(image, dict) or not isinstance(image.get("id"), int) or "file_name" not in image:
            raise UserError(f"Annotation file {path} has an image entry without integer 'id' and "
                            f"'file_name' ({image!r}); fix the 'images' list.")
        if image["id"] in seen:
            raise UserError(f"Annotation file {path} lists image id {image['id']} twice; "
                            "make image ids unique.")
        seen.add(image["id"])
    return images


def _coco_group_annotations(data: dict, path: Path, image_ids: set[int],
                            problems: Problems) -> dict[int, list[dict]]:
    """Annotations grouped by image id; ones pointing at an unknown image are reported."""
    grouped: dict[int, list[dict]] = {}
    annotations = data.get("annotations") or []
    if not isinstance(annotations, list):
        raise UserError(f"Annotation file {path} has an 'annotations' entry that is not a list; fix it.")
    for ann in annotations:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not isinstance(image_id, int) or image_id not in image_ids:
            name = f"id {ann.get('id')}" if isinstance(ann, dict) else repr(ann)[:80]
            problems.report(f"{path}: annotation {name} refers to image_id {image_id!r}, which is "
                            f"not in 'images'; fix or delete the annotation")
            continue
        grouped.setdefault(image_id, []).append(ann)
    return grouped


def _coco_image_record(image: dict, anns: list[dict], file_path: Path, size: tuple[int, int], *,
                       ann_path: Path, cat_to_label: dict[int, int],
                       problems: Problems) -> ImageRecord | None:
    """One COCO image's record: declared size checked, unknown categories and bad boxes handled."""
    declared = (image.get("width"), image.get("height"))
    if None not in declared and tuple(declared) != size:
        problems.report(f"{ann_path}: image {image['file_name']} is declared {declared[0]}x{declared[1]} "
                        f"but the file is {size[0]}x{size[1]} (after EXIF rotation); fix width/height "
                        f"in the annotation file")
        return None
    kept: list[dict] = []
    boxes: list[list[float]] = []  # (G, 4) x1y1x2y2
    for ann in anns:
        where = f"{ann_path}: annotation id {ann.get('id')} (image {image['file_name']})"
        category = ann.get("category_id")
        if not isinstance(category, int) or category not in cat_to_label:
            problems.report(f"{where} has category_id {ann.get('category_id')!r}, which is not a known "
                            f"category; add the category or fix the id")
            continue
        bbox = ann.get("bbox")
        x, y, w, h = ([as_float(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4
                      else [math.nan] * 4)
        boxes.append([x, y, x + w, y + h])
        kept.append(ann)

    def describe(i: int) -> str:
        return (f"{ann_path}: annotation id {kept[i].get('id')} (image {image['file_name']}, "
                f"bbox {kept[i].get('bbox')!r})")

    return make_record(file_path, size, boxes, [cat_to_label[a["category_id"]] for a in kept],
                        [bool(a.get("iscrowd", 0)) for a in kept], image_id=image["id"],
                        describe=describe, problems=problems)


def read_coco(images_dir: str | Path, ann_file: str | Path, *, class_names: Sequence[str] | None = None,
              skip_invalid: bool = False, allow_outside_root: bool = False) -> DatasetSplit:
    """Read a COCO instances JSON whose `file_name`s are relative to `images_dir`.

    Category ids may be arbitrary (e.g. official COCO's 1..90 with gaps): sorted ids become
    labels 0..C-1 with names from 'categories'. With `class_names`, a category's label is the
    index of its name there instead (categories not in it count as unknown; each name must be
    exactly one category). `category_ids` holds each label's category id, for results files.
    `image_id` is the JSON's image id; records keep the JSON's image order.
    """
    ann_path, images_root = Path(ann_file), Path(images_dir)
    data = _load_json(ann_path)
    cat_to_label, names, category_ids = _coco_categories(data, ann_path, class_names)
    images = _coco_images(data, ann_path)
    problems = Problems(skip_invalid=skip_invalid)
    grouped = _coco_group_annotations(data, ann_path, {im["id"] for im in images}, problems)
    if not allow_outside_root:
        for image in [im for im in images if leaves_root(str(im["file_name"]))]:
            problems.report(outside_message(str(image["file_name"]), images_root,
                                             f"{ann_path}: image id {image['id']}"))
        images = [im for im in images if not leaves_root(str(im["file_name"]))]
    paths = [images_root / str(im["file_name"]) for im in images]
    sizes = read_sizes(paths, problems, source=str(ann_path))
    records: list[ImageRecord] = []
    for image, path, size in zip(images, paths, sizes):
        if size is None:
            continue
        record = _coco_image_record(image, grouped.get(image["id"], []), path, size, ann_path=ann_path,
                                    cat_to_label=cat_to_label, problems=problems)
        if record is not None:
            records.append(record)
    return DatasetSplit(records=records, class_names=names, problems=problems.messages,
                        source=str(ann_path), clipped=problems.clipped, category_ids=category_ids)
