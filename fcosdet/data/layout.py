"""Dataset folders and dataset YAML files: which format, which split -> one `DatasetSplit`.

Dimensions: G boxes in one image, C classes (as produced by the COCO / VOC / YOLO readers).
Conventions: a folder's format is recognised by its files (`detect_layout`; COCO wins when
several formats are present); a split that is not there is a UserError naming the files looked
for, never a fallback to every image. Paths in a dataset YAML are relative to its `root`.
"""
from __future__ import annotations

from pathlib import Path

from fcosdet.data.coco import read_coco
from fcosdet.data.records import DatasetSplit
from fcosdet.data.validate import MissingSplitError, names_from_value, read_yaml
from fcosdet.data.voc import read_voc
from fcosdet.data.yolo import YOLO_NAME_FILES, read_yolo
from fcosdet.errors import UserError

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
            and any((folder / n).is_file() for n in YOLO_NAME_FILES)):
        return "yolo"
    return None


def _yolo_folder_split(folder: Path, split: str) -> Path | None:
    """A YOLO folder's split: {split}.txt, else its YAML's `split` path, else (for 'train'
    only) None: every image under images/. Any other split that is not found is an error."""
    if (folder / f"{split}.txt").is_file():
        return folder / f"{split}.txt"
    yamls = [folder / n for n in ("data.yaml", "config.yaml", "dataset.yaml") if (folder / n).is_file()]
    for path in yamls:
        data = read_yaml(path)
        entry, base = data.get(split), folder / str(data.get("path") or ".")
        if isinstance(entry, str):
            if not (base / entry).exists():
                raise UserError(f"{path}: '{split}: {entry}' points at {base / entry}, which does not "
                                f"exist; fix the path.")
            return base / entry
    if split == "train":
        return None
    looked = [str(folder / f"{split}.txt")] + [f"'{split}:' in {p}" for p in yamls]
    raise MissingSplitError(f"YOLO dataset {folder} has no split '{split}' (looked for {', '.join(looked)}); "
                            f"add a list of the split's images or choose another split")


def _coco_folder_annotations(folder: Path, split: str) -> Path:
    """{split}.json, or annotations.json (every image) for 'train' only; else an error naming
    the files looked for and the ones there are."""
    if (folder / f"{split}.json").is_file():
        return folder / f"{split}.json"
    if split == "train" and (folder / "annotations.json").is_file():
        return folder / "annotations.json"
    there = sorted(p.stem for p in folder.glob("*.json"))
    raise MissingSplitError(f"COCO dataset {folder} has no split '{split}': looked for "
                            f"{folder / 'annotations'}/instances_{split}*.json and {folder / f'{split}.json'}; "
                            f"splits there: {there}; choose one of them")


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
    spec = read_yaml(path)
    fmt = spec.get("format")
    if fmt is None and "names" in spec:  # Ultralytics data.yaml: path, train, val, names
        fmt, spec = "yolo", {**spec, "root": spec.get("path") or "."}
    root = (path.parent / str(spec.get("root") or ".")).resolve()
    entry = spec.get(split)
    if entry is None:
        raise MissingSplitError(f"Dataset file {path} has no '{split}' entry; add '{split}: ...' naming the "
                                f"split's images or annotations, or choose another split")
    names = names_from_value(spec["names"], path) if spec.get("names") is not None else None
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
