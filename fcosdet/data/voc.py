"""Pascal VOC XML -> one `DatasetSplit`.

Dimensions: G boxes in one image, C classes.
Conventions: boxes are (x1, y1, x2, y2) float pixels of the displayed image (EXIF orientation
applied), labels in [0, C) by class name, `image_id` the 1-based position in the split list.
Validation and skipping as described in `fcosdet.data.validate`.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from fcosdet.data.images import IMAGE_SUFFIXES, read_sizes
from fcosdet.data.records import DatasetSplit, ImageRecord
from fcosdet.data.validate import (
    MissingSplitError,
    Problems,
    as_float,
    leaves_root,
    make_record,
    outside_message,
    text_lines,
)
from fcosdet.errors import UserError


def _parse_voc_xml(path: Path) -> tuple[str | None, list[tuple[str, list[float]]]]:
    """(filename or None, [(class name, [xmin, ymin, xmax, ymax])]); raises ET.ParseError/OSError."""
    root = ET.parse(path).getroot()
    objects: list[tuple[str, list[float]]] = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        box = obj.find("bndbox")
        coords = [as_float(box.findtext(k) if box is not None else None)
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
        raise MissingSplitError(f"VOC split file {list_file} does not exist; use one of {available} or "
                                f"create the list of image ids")
    lines = text_lines(list_file, "VOC split file")
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
    problems = Problems(skip_invalid=skip_invalid)
    parsed: list[tuple[int, Path, list[tuple[str, list[float]]], Path]] = []
    list_file = root / "ImageSets" / "Main" / f"{split}.txt"
    for image_id, key in enumerate(_voc_ids(root, split), start=1):
        if leaves_root(key) and not allow_outside_root:
            problems.report(outside_message(key, root, f"{list_file} (image id {key})"))
            continue
        xml_path = root / "Annotations" / f"{key}.xml"
        try:
            filename, objects = _parse_voc_xml(xml_path)
        except (ET.ParseError, OSError) as exc:
            problems.report(f"Annotation file {xml_path} cannot be read ({exc}); fix or re-export it")
            continue
        if filename is not None and leaves_root(filename) and not allow_outside_root:
            problems.report(outside_message(filename, root, f"Annotation file {xml_path} (<filename>)"))
            continue
        parsed.append((image_id, xml_path, objects, _voc_image_path(root, key, filename)))
    sizes = read_sizes([p[3] for p in parsed], problems, source=f"{root / 'Annotations'}")
    records: list[ImageRecord] = []
    for (image_id, xml_path, objects, image_path), size in zip(parsed, sizes):
        if size is None:
            continue
        known = []
        for index, (name, coords) in enumerate(objects, start=1):
            if name not in label_of:
                problems.report(f"{xml_path}: object {index} has class '{name}', which is not one of "
                                f"{names}; fix the name or the class list")
            else:
                known.append((index, name, coords))
        records.append(make_record(
            image_path, size, [c for _, _, c in known], [label_of[n] for _, n, _ in known],
            [False] * len(known), image_id=image_id, problems=problems,
            describe=lambda i, k=known, x=xml_path: f"{x}: object {k[i][0]} ({k[i][1]}, box {k[i][2]})"))
    source = str(list_file) if split is not None else str(root / "Annotations")
    return DatasetSplit(records=records, class_names=names, problems=problems.messages, source=source,
                        clipped=problems.clipped)
