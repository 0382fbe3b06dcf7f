"""Dataset readers: COCO JSON, Pascal VOC XML and YOLO txt, all producing one `DatasetSplit`.

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

Image sizes come from the file header only (no decode); a truncated image body is found by
`verify_images` (full decode) or, at the latest, when the training dataset loads it.

Images without boxes are kept (negatives); crowd boxes are kept with `iscrowd=True`.
"""
from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from fcosdet.data.records import DatasetSplit, ImageRecord
from fcosdet.errors import UserError
from fcosdet.progress import progress

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
BOX_TOLERANCE_PX = 1.0  # clipping a box by at most this much is rounding, not counted
_SKIP_HINT = "or rerun with skip_invalid to drop it"
_NO_VAL_HINT = "or set data.val_split=none to train without evaluation"
_EXIF_ORIENTATION_TAG = 0x0112
_YOLO_NAME_FILES = ("data.yaml", "config.yaml", "dataset.yaml", "names.txt", "classes.txt")


class _Problems:
    """Raises the first problem as a UserError, or collects them all when skipping."""

    def __init__(self, *, skip_invalid: bool) -> None:
        self.skip_invalid = skip_invalid
        self.messages: list[str] = []
        self.clipped = 0  # boxes clipped to their image by more than BOX_TOLERANCE_PX

    def report(self, message: str) -> None:
        if not self.skip_invalid:
            raise UserError(message)
        self.messages.append(message)


def leaves_root(name: str) -> bool:
    """True when a file name from an annotation is absolute or climbs out with '..'."""
    normal = os.path.normpath(str(name).replace("\\", "/"))
    return os.path.isabs(normal) or normal == ".." or normal.startswith("../")


def _outside_message(name: str, root: Path, where: str) -> str:
    return (f"{where} names the image {name!r}, which leaves the dataset folder {root} (an absolute "
            f"path or '..'); move the image under the folder, or set data.allow_outside_root=true "
            f"if you trust this file, {_SKIP_HINT}.")


def _text_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, or a UserError naming it."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{what} {path} cannot be read as UTF-8 text ({exc}); fix or re-export it.") from None


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


# ----------------------------------------------------------------------------- image headers


def _exif_orientation(image: Image.Image) -> int:
    """EXIF orientation 1..8 from the header; PNG's eXIf is read only when it precedes IDAT."""
    if image.format == "PNG":
        raw = image.info.get("exif")
        if not raw:
            return 1  # Pillow's PNG getexif() would decode the whole image to look further
        exif = Image.Exif()
        exif.load(raw)
    else:
        exif = image.getexif()
    value = exif.get(_EXIF_ORIENTATION_TAG, 1)
    return int(value) if isinstance(value, int) else 1


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) as displayed after EXIF orientation, read from the header only."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = _exif_orientation(image)
    if orientation in (5, 6, 7, 8):  # transposed or rotated by 90 degrees: axes swap
        return height, width
    return width, height


def _try_image_size(path: Path) -> tuple[int, int] | BaseException:
    try:
        return image_size(path)
    except Exception as exc:  # any decoder failure is reported per file by the caller
        return exc


def _read_sizes(paths: Sequence[Path], problems: _Problems, *,
                source: str) -> list[tuple[int, int] | None]:
    """Header sizes of many images (thread pool); None where the image is missing or unreadable."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(_try_image_size, paths))
    sizes: list[tuple[int, int] | None] = []
    for path, result in zip(paths, results):
        missing = isinstance(result, BaseException) and not path.exists()
        if isinstance(result, FileNotFoundError) or missing:
            problems.report(f"Image file {path} (listed in {source}) does not exist; "
                            f"fix the path or remove the image, {_SKIP_HINT}.")
            sizes.append(None)
        elif isinstance(result, BaseException):
            problems.report(f"Image file {path} (listed in {source}) cannot be read as an image "
                            f"({type(result).__name__}: {result}); replace the file, {_SKIP_HINT}.")
            sizes.append(None)
        else:
            sizes.append(result)
    return sizes


# ----------------------------------------------------------------------------- box validation


def _validate_boxes(boxes: np.ndarray, width: int, height: int, *, describe: Callable[[int], str],
                    problems: _Problems) -> tuple[np.ndarray, np.ndarray]:
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
        problems.report(f"{describe(int(i))} {reason}; fix or delete the annotation, {_SKIP_HINT}.")
    return clipped.astype(np.float32), keep


def _make_record(path: Path, size: tuple[int, int], boxes: list[list[float]], labels: list[int],
                 crowd: list[bool], *, image_id: int, describe: Callable[[int], str],
                 problems: _Problems) -> ImageRecord:
    """Validate one image's boxes and build its record (invalid boxes dropped or raised)."""
    width, height = size
    raw = np.asarray(boxes, np.float64).reshape(-1, 4)  # (G, 4) x1y1x2y2
    clipped, keep = _validate_boxes(raw, width, height, describe=describe, problems=problems)
    return ImageRecord(
        path=str(path), width=width, height=height,
        boxes=clipped[keep].reshape(-1, 4),  # (G, 4)
        labels=np.asarray(labels, np.int64).reshape(-1)[keep],  # (G,)
        iscrowd=np.asarray(crowd, bool).reshape(-1)[keep],  # (G,)
        image_id=image_id,
    )


def _as_float(value: Any) -> float:
    """A coordinate from a file; anything that is not a number becomes NaN (reported later)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------- COCO


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
                            problems: _Problems) -> dict[int, list[dict]]:
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
                            f"not in 'images'; fix or delete the annotation, {_SKIP_HINT}.")
            continue
        grouped.setdefault(image_id, []).append(ann)
    return grouped


def _coco_image_record(image: dict, anns: list[dict], file_path: Path, size: tuple[int, int], *,
                       ann_path: Path, cat_to_label: dict[int, int],
                       problems: _Problems) -> ImageRecord | None:
    """One COCO image's record: declared size checked, unknown categories and bad boxes handled."""
    declared = (image.get("width"), image.get("height"))
    if None not in declared and tuple(declared) != size:
        problems.report(f"{ann_path}: image {image['file_name']} is declared {declared[0]}x{declared[1]} "
                        f"but the file is {size[0]}x{size[1]} (after EXIF rotation); fix width/height "
                        f"in the annotation file, {_SKIP_HINT}.")
        return None
    kept: list[dict] = []
    boxes: list[list[float]] = []  # (G, 4) x1y1x2y2
    for ann in anns:
        where = f"{ann_path}: annotation id {ann.get('id')} (image {image['file_name']})"
        category = ann.get("category_id")
        if not isinstance(category, int) or category not in cat_to_label:
            problems.report(f"{where} has category_id {ann.get('category_id')!r}, which is not a known "
                            f"category; add the category or fix the id, {_SKIP_HINT}.")
            continue
        bbox = ann.get("bbox")
        x, y, w, h = ([_as_float(v) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4
                      else [math.nan] * 4)
        boxes.append([x, y, x + w, y + h])
        kept.append(ann)

    def describe(i: int) -> str:
        return (f"{ann_path}: annotation id {kept[i].get('id')} (image {image['file_name']}, "
                f"bbox {kept[i].get('bbox')!r})")

    return _make_record(file_path, size, boxes, [cat_to_label[a["category_id"]] for a in kept],
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
    problems = _Problems(skip_invalid=skip_invalid)
    grouped = _coco_group_annotations(data, ann_path, {im["id"] for im in images}, problems)
    if not allow_outside_root:
        for image in [im for im in images if leaves_root(str(im["file_name"]))]:
            problems.report(_outside_message(str(image["file_name"]), images_root,
                                             f"{ann_path}: image id {image['id']}"))
        images = [im for im in images if not leaves_root(str(im["file_name"]))]
    paths = [images_root / str(im["file_name"]) for im in images]
    sizes = _read_sizes(paths, problems, source=str(ann_path))
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


# ----------------------------------------------------------------------------- Pascal VOC


def _parse_voc_xml(path: Path) -> tuple[str | None, list[tuple[str, list[float]]]]:
    """(filename or None, [(class name, [xmin, ymin, xmax, ymax])]); raises ET.ParseError/OSError."""
    root = ET.parse(path).getroot()
    objects: list[tuple[str, list[float]]] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        coords = [_as_float(box.findtext(k) if box is not None else None)
                  for k in ("xmin", "ymin", "xmax", "ymax")]
        objects.append((name, coords))
    filename = (root.findtext("filename") or "").strip() or None
    return filename, objects


def _voc_class_names(annotations_dir: Path) -> list[str]:
    """Sorted class names over every XML in Annotations/ (all splits, so labels agree)."""
    names: set[str] = set()
    for xml_path in sorted(annotations_dir.glob("*.xml")):
        try:
            names.update(name for name, _ in _parse_voc_xml(xml_path)[1] if name)
        except (ET.ParseError, OSError):
            continue  # reported when the split holding it is read
    return sorted(names)


def _voc_ids(root: Path, split: str | None) -> list[str]:
    if split is None:
        return sorted(p.stem for p in (root / "Annotations").glob("*.xml"))
    list_file = root / "ImageSets" / "Main" / f"{split}.txt"
    if not list_file.is_file():
        available = sorted(p.stem for p in (root / "ImageSets" / "Main").glob("*.txt"))
        raise UserError(f"VOC split file {list_file} does not exist; use one of {available}, create "
                        f"the list of image ids, {_NO_VAL_HINT}.")
    lines = _text_lines(list_file, "VOC split file")
    return [line.split()[0] for line in lines if line.strip()]


def _voc_image_path(root: Path, image_key: str, filename: str | None) -> Path:
    """The image beside a VOC annotation: JPEGImages/ or images/, by <filename> or by id."""
    folders = [root / "JPEGImages", root / "images"]
    names = ([filename] if filename else []) + [image_key + s for s in IMAGE_SUFFIXES]
    for name in names:
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
    folder = folders[0] if folders[0].is_dir() else folders[1]
    return folder / (filename or image_key + ".jpg")  # missing: reported by the size reader


def read_voc(root: str | Path, split: str | None, *, class_names: Sequence[str] | None = None,
             skip_invalid: bool = False, allow_outside_root: bool = False) -> DatasetSplit:
    """Read a Pascal VOC folder: Annotations/*.xml, ImageSets/Main/{split}.txt, images in
    JPEGImages/ or images/. `split=None` reads every XML in Annotations/.

    Coordinates are taken as written (xmin, ymin, xmax, ymax) without the classic VOC "-1":
    that is what makes BCCD's XML equal its COCO JSON. `difficult` objects are kept as normal
    boxes (iscrowd False). Without `class_names`, classes are the sorted names found in all
    of Annotations/. `image_id` is the 1-based position in the split list.
    """
    root = Path(root)
    if not (root / "Annotations").is_dir():
        raise UserError(f"{root} has no Annotations/ folder; point at the VOC root holding "
                        "Annotations/, ImageSets/Main/ and JPEGImages/ (or images/).")
    if class_names is None:
        names = _voc_class_names(root / "Annotations")
    else:
        names = [str(n) for n in class_names]
    label_of = {name: i for i, name in enumerate(names)}
    problems = _Problems(skip_invalid=skip_invalid)
    parsed: list[tuple[int, Path, list[tuple[str, list[float]]], Path]] = []
    list_file = root / "ImageSets" / "Main" / f"{split}.txt"
    for image_id, key in enumerate(_voc_ids(root, split), start=1):
        if leaves_root(key) and not allow_outside_root:
            problems.report(_outside_message(key, root, f"{list_file} (image id {key})"))
            continue
        xml_path = root / "Annotations" / f"{key}.xml"
        try:
            filename, objects = _parse_voc_xml(xml_path)
        except (ET.ParseError, OSError) as exc:
            problems.report(f"Annotation file {xml_path} cannot be read ({exc}); fix or re-export it, "
                            f"{_SKIP_HINT}.")
            continue
        if filename is not None and leaves_root(filename) and not allow_outside_root:
            problems.report(_outside_message(filename, root, f"Annotation file {xml_path} (<filename>)"))
            continue
        parsed.append((image_id, xml_path, objects, _voc_image_path(root, key, filename)))
    sizes = _read_sizes([p[3] for p in parsed], problems, source=f"{root / 'Annotations'}")
    records: list[ImageRecord] = []
    for (image_id, xml_path, objects, image_path), size in zip(parsed, sizes):
        if size is None:
            continue
        known = []
        for index, (name, coords) in enumerate(objects, start=1):
            if name not in label_of:
                problems.report(f"{xml_path}: object {index} has class '{name}', which is not one of "
                                f"{names}; fix the name or the class list, {_SKIP_HINT}.")
            else:
                known.append((index, name, coords))
        records.append(_make_record(
            image_path, size, [c for _, _, c in known], [label_of[n] for _, n, _ in known],
            [False] * len(known), image_id=image_id, problems=problems,
            describe=lambda i, k=known, x=xml_path: f"{x}: object {k[i][0]} ({k[i][1]}, box {k[i][2]})"))
    source = str(list_file) if split is not None else str(root / "Annotations")
    return DatasetSplit(records=records, class_names=names, problems=problems.messages, source=source,
                        clipped=problems.clipped)


# ----------------------------------------------------------------------------- YOLO


def _names_from_value(value: Any, source: Path) -> list[str]:
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


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"Cannot read YAML file {path} ({' '.join(str(exc).split())}); fix it.") from None
    if not isinstance(data, dict):
        raise UserError(f"YAML file {path} does not hold a mapping of keys; fix it.")
    return data


def _yolo_names(root: Path) -> list[str]:
    """Class names from data.yaml / config.yaml / dataset.yaml `names`, or names.txt / classes.txt."""
    for file_name in _YOLO_NAME_FILES:
        path = root / file_name
        if not path.is_file():
            continue
        if path.suffix == ".txt":
            return [line.strip() for line in _text_lines(path, "Class names file") if line.strip()]
        data = _read_yaml(path)
        if "names" in data:
            return _names_from_value(data["names"], path)
    raise UserError(f"No class names found in {root}; add data.yaml with 'names: [...]' or names.txt "
                    "(one name per line), or pass the names.")


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _yolo_image_paths(root: Path, split_list: Path | None, problems: _Problems, *,
                      allow_outside_root: bool) -> list[Path]:
    """Images of a split: all under images/, all under a folder, or those named in a txt list.

    List lines may be relative to the list's folder, to the root, or to root/images; absolute
    or '..' lines only with `allow_outside_root`.
    """
    if split_list is None or split_list.is_dir():
        folder = split_list if split_list is not None else root / "images"
        if not folder.is_dir():
            raise UserError(f"YOLO image folder {folder} does not exist; check the dataset root.")
        return _list_images(folder)
    if not split_list.is_file():
        raise UserError(f"YOLO split list {split_list} does not exist; check the path.")
    paths = []
    for line in _text_lines(split_list, "YOLO split list"):
        if not line.strip():
            continue
        entry = Path(line.strip())
        if leaves_root(line.strip()) and not allow_outside_root:
            problems.report(_outside_message(line.strip(), root, f"YOLO split list {split_list}"))
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
        values = [_as_float(t) for t in tokens]
        return values[0], values[1:]
    if len(tokens) >= 7 and len(tokens) % 2 == 1:  # segment: class x1 y1 x2 y2 ... (normalised)
        points = np.asarray([_as_float(t) for t in tokens[1:]], np.float64).reshape(-1, 2)  # (P, 2)
        lo, hi = points.min(axis=0), points.max(axis=0)  # (2,)
        return _as_float(tokens[0]), [*(lo + hi) / 2, *(hi - lo)]
    return None


def _yolo_image_record(image_path: Path, label_path: Path, size: tuple[int, int], *, image_id: int,
                       num_classes: int, problems: _Problems) -> ImageRecord:
    """One YOLO image: a missing or empty label file means no boxes (a negative image)."""
    width, height = size
    lines = _text_lines(label_path, "YOLO label file") if label_path.is_file() else []
    boxes, labels, where = [], [], []  # boxes (G, 4) x1y1x2y2 pixels
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        name = f"{label_path}: line {number} ('{line.strip()}')"
        tokens = line.split()
        parsed = _parse_yolo_line(tokens)
        if parsed is None:
            problems.report(f"{name} is not 'class cx cy w h' (or a polygon); fix or delete the line, "
                            f"{_SKIP_HINT}.")
            continue
        cls, (cx, cy, w, h) = parsed
        if not (math.isfinite(cls) and cls == int(cls) and 0 <= cls < num_classes):
            problems.report(f"{name} has class {tokens[0]}, which is not in 0..{num_classes - 1}; "
                            f"fix the class id or the names list, {_SKIP_HINT}.")
            continue
        boxes.append([(cx - w / 2) * width, (cy - h / 2) * height,
                      (cx + w / 2) * width, (cy + h / 2) * height])
        labels.append(int(cls))
        where.append(name)
    return _make_record(image_path, size, boxes, labels, [False] * len(labels), image_id=image_id,
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
    problems = _Problems(skip_invalid=skip_invalid)
    image_paths = _yolo_image_paths(root, Path(split_list) if split_list is not None else None, problems,
                                    allow_outside_root=allow_outside_root)
    source = str(split_list) if split_list is not None else str(root / "images")
    sizes = _read_sizes(image_paths, problems, source=source)
    records: list[ImageRecord] = []
    for image_id, (path, size) in enumerate(zip(image_paths, sizes), start=1):
        if size is not None:
            records.append(_yolo_image_record(path, _yolo_label_path(path, root), size, image_id=image_id,
                                              num_classes=len(class_names), problems=problems))
    return DatasetSplit(records=records, class_names=class_names, problems=problems.messages,
                        source=source, clipped=problems.clipped)


# ----------------------------------------------------------------------------- full decode check


def _decode_problem(record: ImageRecord) -> str | None:
    """None if the image decodes fully at the recorded size, else a one-sentence message."""
    from fcosdet.data.transforms import load_image  # transforms does not import readers

    try:
        image = load_image(record.path)
    except UserError as exc:
        return str(exc)
    if image.size != (record.width, record.height):
        return (f"Image file {record.path} decodes to {image.size[0]}x{image.size[1]} but its header "
                f"said {record.width}x{record.height}; re-save the image, {_SKIP_HINT}.")
    return None


def verify_images(records: Sequence[ImageRecord], *, skip_invalid: bool = False,
                  num_threads: int = 4, show_progress: bool = False) -> tuple[list[ImageRecord], list[str]]:
    """Fully decode every image (thread pool) to find truncated or corrupt files.

    Returns (records that decode, problem messages). Without `skip_invalid` the first bad
    image (in record order) raises UserError naming the file. `show_progress` reports on stderr
    (a bar in a terminal, a line every 5 % in a log).
    """
    with ThreadPoolExecutor(max_workers=max(1, num_threads)) as pool:
        messages = list(progress(pool.map(_decode_problem, records), total=len(records),
                                 desc="decoding images", enabled=show_progress))
    problems = _Problems(skip_invalid=skip_invalid)
    good: list[ImageRecord] = []
    for record, message in zip(records, messages):
        if message is None:
            good.append(record)
        else:
            problems.report(message)
    return good, problems.messages


# ----------------------------------------------------------------------------- dataset specs

_LAYOUT_HELP = ("expected a dataset YAML, or a folder with images/ and annotations.json, train.json or "
                "val.json (COCO), annotations/instances_<split>2017.json and <split>2017/ (official "
                "COCO), Annotations/ and ImageSets/Main/ (VOC), or images/, labels/ and "
                "data.yaml, config.yaml or names.txt (YOLO)")


def _official_coco_files(folder: Path, split: str) -> list[Path]:
    """annotations/instances_{split}*.json, e.g. instances_train2017.json for split 'train'."""
    return sorted((folder / "annotations").glob(f"instances_{split}*.json"))


def _official_coco_split(folder: Path, split: str) -> tuple[Path, Path] | None:
    """(images dir, annotation file) of the official COCO layout, or None when it has no such
    split. The images of instances_val2017.json are in val2017/ or images/val2017/."""
    files = _official_coco_files(folder, split)
    if not files:
        return None
    if len(files) > 1:
        raise UserError(f"{folder / 'annotations'} has several files for split '{split}' "
                        f"({', '.join(f.name for f in files)}); name one in a dataset YAML.")
    name = files[0].stem[len("instances_"):]
    for images in (folder / name, folder / "images" / name):
        if images.is_dir():
            return images, files[0]
    raise UserError(f"Found {files[0]} but no image folder {folder / name} or "
                    f"{folder / 'images' / name}; put the split's images there.")


def detect_layout(folder: Path) -> str | None:
    """'coco', 'voc' or 'yolo' from the files in `folder` (checked in that order), else None."""
    if (folder / "images").is_dir() and any((folder / n).is_file()
                                            for n in ("annotations.json", "train.json", "val.json")):
        return "coco"
    if _official_coco_files(folder, ""):
        return "coco"
    if (folder / "Annotations").is_dir() and (folder / "ImageSets" / "Main").is_dir():
        return "voc"
    if ((folder / "images").is_dir() and (folder / "labels").is_dir()
            and any((folder / n).is_file() for n in _YOLO_NAME_FILES)):
        return "yolo"
    return None


def _yolo_folder_split(folder: Path, split: str) -> Path | None:
    """A YOLO folder's split: {split}.txt, else its YAML's `split` path, else (for 'train'
    only) None: every image under images/. Any other split that is not found is an error."""
    if (folder / f"{split}.txt").is_file():
        return folder / f"{split}.txt"
    yamls = [folder / n for n in ("data.yaml", "config.yaml", "dataset.yaml") if (folder / n).is_file()]
    for path in yamls:
        data = _read_yaml(path)
        entry, base = data.get(split), folder / str(data.get("path") or ".")
        if isinstance(entry, str):
            if not (base / entry).exists():
                raise UserError(f"{path}: '{split}: {entry}' points at {base / entry}, which does not "
                                f"exist; fix the path.")
            return base / entry
    if split == "train":
        return None
    looked = [str(folder / f"{split}.txt")] + [f"'{split}:' in {p}" for p in yamls]
    raise UserError(f"YOLO dataset {folder} has no split '{split}' (looked for {', '.join(looked)}); "
                    f"add a list of the split's images, choose another split, {_NO_VAL_HINT}.")


def _coco_folder_annotations(folder: Path, split: str) -> Path:
    """{split}.json, or annotations.json (every image) for 'train' only; else an error naming
    the files looked for and the ones there are."""
    if (folder / f"{split}.json").is_file():
        return folder / f"{split}.json"
    if split == "train" and (folder / "annotations.json").is_file():
        return folder / "annotations.json"
    there = sorted(p.stem for p in folder.glob("*.json"))
    raise UserError(f"COCO dataset {folder} has no split '{split}': looked for "
                    f"{folder / 'annotations'}/instances_{split}*.json and {folder / f'{split}.json'}; "
                    f"splits there: {there}; choose one of them, {_NO_VAL_HINT}.")


def _load_folder(folder: Path, split: str, *, skip_invalid: bool, allow_outside_root: bool) -> DatasetSplit:
    """A dataset folder by its layout. Splits: COCO annotations/instances_{split}*.json (official
    layout), else {split}.json (for 'train' also annotations.json); VOC ImageSets/Main/{split}.txt;
    YOLO {split}.txt or the YAML's `split` path (for 'train' also every image under images/).
    A split that is not there is an error naming the files looked for: never a fallback to
    every image."""
    layout = detect_layout(folder)
    flags = {"skip_invalid": skip_invalid, "allow_outside_root": allow_outside_root}
    if layout == "coco":
        official = _official_coco_split(folder, split)
        if official is not None:
            return read_coco(*official, **flags)
        return read_coco(folder / "images", _coco_folder_annotations(folder, split), **flags)
    if layout == "voc":
        return read_voc(folder, split, **flags)
    if layout == "yolo":
        return read_yolo(folder, split_list=_yolo_folder_split(folder, split), **flags)
    raise UserError(f"Cannot tell the dataset format of {folder}: {_LAYOUT_HELP}.")


def _load_spec_file(path: Path, split: str, *, skip_invalid: bool, allow_outside_root: bool) -> DatasetSplit:
    """A dataset YAML: {format, root, train, val, names}; an Ultralytics data.yaml also works."""
    spec = _read_yaml(path)
    fmt = spec.get("format")
    if fmt is None and "names" in spec:  # Ultralytics data.yaml: path, train, val, names
        fmt, spec = "yolo", {**spec, "root": spec.get("path") or "."}
    root = (path.parent / str(spec.get("root") or ".")).resolve()
    entry = spec.get(split)
    if entry is None:
        raise UserError(f"Dataset file {path} has no '{split}' entry; add '{split}: ...' naming the "
                        f"split's images or annotations, choose another split, {_NO_VAL_HINT}.")
    names = _names_from_value(spec["names"], path) if spec.get("names") is not None else None
    if fmt == "coco":
        if isinstance(entry, dict) and "annotations" in entry:
            images = root / str(entry.get("images", "images"))
            return read_coco(images, root / str(entry["annotations"]), class_names=names,
                             skip_invalid=skip_invalid, allow_outside_root=allow_outside_root)
        if isinstance(entry, str):
            return read_coco(root / "images", root / entry, class_names=names, skip_invalid=skip_invalid,
                             allow_outside_root=allow_outside_root)
        raise UserError(f"Dataset file {path}: '{split}' must be an annotation file or "
                        "{images: dir, annotations: file}; fix it.")
    if fmt == "voc":
        return read_voc(root, str(entry), class_names=names, skip_invalid=skip_invalid,
                        allow_outside_root=allow_outside_root)
    if fmt == "yolo":
        split_path = root / str(entry)
        if not split_path.exists():
            raise UserError(f"Dataset file {path}: '{split}' points at {split_path}, which does not "
                            "exist; fix the path (relative to the root).")
        return read_yolo(root, split_list=split_path, names=names, skip_invalid=skip_invalid,
                         allow_outside_root=allow_outside_root)
    raise UserError(f"Dataset file {path} has format {fmt!r}; use 'coco', 'voc' or 'yolo'.")


def load_dataset_spec(path_or_dir: str | Path, split: str, *, skip_invalid: bool = False,
                      allow_outside_root: bool = False) -> DatasetSplit:
    """Load split `split` ("train", "val", ...) of a dataset YAML file or a dataset folder.

    YAML: `format: coco|voc|yolo`, `root` (relative to the YAML), `names` (optional) and one
    entry per split: COCO an annotation file (images in root/images) or {images, annotations};
    VOC an ImageSets/Main split name; YOLO an image-list txt or an images folder. A folder is
    recognised by its files (see `detect_layout`; COCO wins when several formats are present).
    """
    path = Path(path_or_dir)
    if not path.exists():
        raise UserError(f"Dataset path {path} does not exist; {_LAYOUT_HELP}.")
    if path.is_dir():
        return _load_folder(path, split, skip_invalid=skip_invalid, allow_outside_root=allow_outside_root)
    if path.suffix.lower() not in (".yaml", ".yml"):
        raise UserError(f"Dataset path {path} is not a folder or a .yaml file; {_LAYOUT_HELP}.")
    return _load_spec_file(path, split, skip_invalid=skip_invalid, allow_outside_root=allow_outside_root)
