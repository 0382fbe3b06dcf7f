"""Predictions as label files: `fcosdet predict ... --save-format coco yolo voc labelstudio cvat`.

Each format goes into its own folder under predict's `--out`, written from the format's own
documentation, so the files open in an annotation tool (Label Studio, CVAT) for correcting or
read back as a training set by fcosdet's COCO / YOLO / VOC readers:

    OUT/coco/annotations.json   COCO dataset: images (file_name, width, height), annotations
                                (bbox [x, y, w, h] px, area, iscrowd 0), categories (the model's ids)
    OUT/coco/results.json       COCO results of the same images (image_id, category_id, bbox, score)
    OUT/coco/images -> ROOT
    OUT/yolo/labels/REL.txt     'class cx cy w h' normalised to the image (+ score with save_conf)
    OUT/yolo/train.txt, data.yaml (path ., train train.txt, nc, names); OUT/yolo/images -> ROOT
    OUT/voc/Annotations/KEY.xml Pascal VOC (size, object name / bndbox xmin ymin xmax ymax px)
    OUT/voc/ImageSets/Main/train.txt, dataset.yaml (format voc, names); OUT/voc/JPEGImages -> ROOT
    OUT/labelstudio/tasks.json  Label Studio tasks with `predictions` (rectanglelabels in percent)
    OUT/labelstudio/label_config.xml  the labeling config those results name (label / image)
    OUT/cvat/annotations.xml    CVAT for images 1.1 (<box xtl ytl xbr ybr> px)

Conventions: ROOT is the common folder of the predicted images (the one the drawings mirror);
every image path in a label file is REL, the image's path relative to ROOT with '/' separators.
COCO, YOLO and VOC link their image folder to ROOT (a symbolic link, never a copy), so each
folder is a dataset as it stands (`fcosdet train --data OUT/yolo`). KEY (VOC) is REL without its
suffix, '/' replaced by '__'. Boxes are x1y1x2y2 original pixels in `Results`; a box under
MIN_SIDE_PX wide or high is left out of every label file (readers refuse empty boxes) and
counted. Confidences go into a file only with `save_conf` (COCO annotations 'score', YOLO's 6th
column, VOC <score>, CVAT attribute 'score'), except Label Studio, whose predictions always carry
them (its own fields).
"""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import quote

import numpy as np
import yaml

from fcosdet.deploy.results import Results
from fcosdet.engine.evaluation.coco import coco_boxes
from fcosdet.errors import UserError

SAVE_FORMATS = ("coco", "yolo", "voc", "labelstudio", "cvat")
MIN_SIDE_PX = 1.0  # boxes narrower or lower than this (pixels) are not written as labels
IMAGE_LINKS = {"coco": "images", "yolo": "images", "voc": "JPEGImages"}  # format -> link to ROOT
LS_FROM_NAME, LS_TO_NAME = "label", "image"  # the names in label_config.xml (Label Studio's template)
LS_URL_PREFIX = "/data/local-files/?d="  # Label Studio's local-files serving URL


@dataclass(kw_only=True)
class LabelImage:
    """One predicted image as the label files write it."""
    rel: str  # the image's path relative to the root, '/' separators
    width: int
    height: int
    boxes: np.ndarray  # (K, 4) float64 x1, y1, x2, y2 original pixels
    xywh: np.ndarray  # (K, 4) float64 the same boxes as x, y (top left), w, h pixels
    labels: np.ndarray  # (K,) int64 in [0, C)
    scores: np.ndarray  # (K,) float64


@dataclass(kw_only=True)
class LabelSet:
    """What every format writes: the images, the model's classes and the writing options."""
    root: Path  # the folder the `rel` paths are relative to
    names: list[str]  # (C,) class names, index = label
    category_ids: list[int]  # (C,) the model's category id of each label
    images: list[LabelImage]
    save_conf: bool = False
    model_version: str = "fcosdet"
    dropped: int = 0  # boxes under MIN_SIDE_PX left out


def image_root(paths: Sequence[Path]) -> Path:
    """The common folder of the images' folders (absolute): what label files are relative to."""
    return Path(os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths]))


def relative_name(path: Path, root: Path) -> str:
    return Path(os.path.abspath(path)).relative_to(root).as_posix()


def voc_key(rel: str) -> str:
    """The VOC image id of REL: without the suffix, '/' replaced by '__'."""
    return str(PurePosixPath(rel).with_suffix("")).replace("/", "__")


def _check_names(formats: Sequence[str], rels: list[str], root: Path) -> None:
    """Two images that would share a YOLO label file or a VOC id, or a YOLO image path with an
    'images' folder (the reader would look for its labels elsewhere): one UserError."""
    derived = {"yolo": lambda r: str(PurePosixPath(r).with_suffix(".txt")), "voc": voc_key}
    for fmt in [f for f in formats if f in derived]:
        seen: dict[str, str] = {}
        for rel in rels:
            key = derived[fmt](rel)
            if key in seen:
                raise UserError(f"--save-format {fmt}: the images {root / seen[key]} and {root / rel} would share "
                                f"the label file {key}; rename one of them or predict them separately")
            seen[key] = rel
    if "yolo" in formats:
        nested = [r for r in rels if "images" in PurePosixPath(r).parts[:-1]]
        if nested:
            raise UserError(f"--save-format yolo: {root / nested[0]} lies in a sub-folder named 'images' under "
                            f"{root}, where YOLO readers would look for labels beside the images; give that "
                            f"'images' folder (or its parent's images only) as the input instead")


def _link_images(link: Path, root: Path) -> None:
    """`link` -> `root` (a symbolic link); an earlier run's link is replaced, anything else refused."""
    if link.is_symlink():
        if os.readlink(link) == str(root):
            return
        link.unlink()
    elif link.exists():
        raise UserError(f"{link} exists and is not the link to the images that predict makes; remove it or "
                        f"choose another --out")
    try:
        os.symlink(root, link, target_is_directory=True)
    except OSError as exc:
        raise UserError(f"cannot link {link} to the images folder {root} ({exc}); the label files need their "
                        f"images beside them: choose an --out on a file system that allows symbolic links") from None


def prepare_label_dirs(out_dir: Path, formats: Sequence[str], *, paths: Sequence[Path]) -> Path:
    """Check the formats and the image names, make each format's folder and image link before
    any image is predicted; returns the root the label files are relative to."""
    unknown = [f for f in formats if f not in SAVE_FORMATS]
    if unknown:
        raise UserError(f"--save-format {unknown[0]} is not a label format; choose from {', '.join(SAVE_FORMATS)}")
    root = image_root(paths)
    _check_names(formats, [relative_name(p, root) for p in paths], root)
    for fmt in dict.fromkeys(formats):
        (out_dir / fmt).mkdir(parents=True, exist_ok=True)
        if fmt in IMAGE_LINKS:
            _link_images(out_dir / fmt / IMAGE_LINKS[fmt], root)
    return root


def label_set(results: Sequence[Results], *, root: Path, score_thr: float = 0.0, save_conf: bool = False,
              model_version: str = "fcosdet") -> LabelSet:
    """The boxes scoring >= score_thr and at least MIN_SIDE_PX wide and high, per image file."""
    if not results:
        raise ValueError("label_set needs at least one Results")
    images, dropped = [], 0
    for r in results:
        if r.path is None:
            raise ValueError("label files need Results of image files (Results.path is None)")
        boxes = r.boxes.detach().cpu().double().numpy().reshape(-1, 4)  # (D, 4)
        xywh = np.asarray(coco_boxes(boxes), np.float64).reshape(-1, 4)  # (D, 4)
        scores = r.scores.detach().cpu().double().numpy()  # (D,)
        big = (xywh[:, 2:] >= MIN_SIDE_PX).all(axis=1)  # (D,)
        keep = (scores >= score_thr) & big  # (D,)
        dropped += int(((scores >= score_thr) & ~big).sum())
        height, width = r.orig_size
        images.append(LabelImage(rel=relative_name(r.path, root), width=int(width), height=int(height),
                                 boxes=boxes[keep], xywh=xywh[keep], labels=r.labels.cpu().numpy()[keep], scores=scores[keep]))
    first = results[0]
    if len(set(first.category_ids)) != len(first.category_ids):
        raise UserError(f"the model file gives two classes the same category id ({first.category_ids}); a "
                        f"COCO file needs one id per class: import or train the model again")
    return LabelSet(root=root, names=list(first.names), category_ids=[int(i) for i in first.category_ids],
                    images=images, save_conf=save_conf, model_version=model_version, dropped=dropped)


# ----------------------------------------------------------------------------- COCO


def write_coco(labels: LabelSet, folder: Path) -> Path:
    """annotations.json (a COCO dataset over ROOT's images, linked as images/) and results.json
    (COCO results with the same image ids)."""
    images, annotations, results = [], [], []
    for image_id, im in enumerate(labels.images, start=1):
        images.append({"id": image_id, "file_name": im.rel, "width": im.width, "height": im.height})
        for box, label, score in zip(im.xywh.tolist(), im.labels.tolist(), im.scores.tolist()):
            bbox, category = [round(v, 2) for v in box], labels.category_ids[label]
            ann = {"id": len(annotations) + 1, "image_id": image_id, "category_id": category, "bbox": bbox,
                   "area": round(bbox[2] * bbox[3], 2), "iscrowd": 0}
            if labels.save_conf:
                ann["score"] = round(score, 5)
            annotations.append(ann)
            results.append({"image_id": image_id, "category_id": category, "bbox": bbox, "score": round(score, 5)})
    categories = [{"id": cid, "name": name, "supercategory": "none"}
                  for cid, name in zip(labels.category_ids, labels.names)]
    dataset = {"info": {"description": f"predictions of {labels.model_version}"}, "images": images,
               "annotations": annotations, "categories": categories}
    (folder / "annotations.json").write_text(json.dumps(dataset))
    (folder / "results.json").write_text(json.dumps(results))
    return folder / "annotations.json"


# ----------------------------------------------------------------------------- YOLO


def write_yolo(labels: LabelSet, folder: Path) -> Path:
    """labels/REL.txt per image (an empty file: no box), train.txt ('./images/REL' lines) and
    data.yaml (path, train, nc, names)."""
    lines_of_list = []
    for im in labels.images:
        rows = []
        for (x, y, w, h), label, score in zip(im.xywh.tolist(), im.labels.tolist(), im.scores.tolist()):
            cx, cy = (x + w / 2) / im.width, (y + h / 2) / im.height
            row = f"{label} {cx:.6f} {cy:.6f} {w / im.width:.6f} {h / im.height:.6f}"
            rows.append(row + (f" {score:.5f}" if labels.save_conf else ""))
        label_file = folder / "labels" / PurePosixPath(im.rel).with_suffix(".txt")
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("".join(f"{row}\n" for row in rows))
        lines_of_list.append(f"./images/{im.rel}\n")
    (folder / "labels").mkdir(exist_ok=True)
    (folder / "train.txt").write_text("".join(lines_of_list))
    spec = {"path": ".", "train": "train.txt", "nc": len(labels.names), "names": list(labels.names)}
    (folder / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return folder / "data.yaml"


# ----------------------------------------------------------------------------- Pascal VOC


def _sub(parent: ET.Element, tag: str, text: object | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    if text is not None:
        element.text = str(text)
    return element


def _voc_xml(im: LabelImage, labels: LabelSet) -> ET.ElementTree:
    root = ET.Element("annotation")
    _sub(root, "folder", IMAGE_LINKS["voc"])
    _sub(root, "filename", im.rel)
    _sub(_sub(root, "source"), "database", labels.model_version)
    size = _sub(root, "size")
    for tag, value in (("width", im.width), ("height", im.height), ("depth", 3)):
        _sub(size, tag, value)
    _sub(root, "segmented", 0)
    for box, label, score in zip(im.boxes.tolist(), im.labels.tolist(), im.scores.tolist()):
        obj = _sub(root, "object")
        for tag, value in (("name", labels.names[label]), ("pose", "Unspecified"), ("truncated", 0),
                           ("difficult", 0)):
            _sub(obj, tag, value)
        if labels.save_conf:
            _sub(obj, "score", f"{score:.5f}")
        bndbox = _sub(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
            _sub(bndbox, tag, f"{value:.2f}")
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def write_voc(labels: LabelSet, folder: Path) -> Path:
    """Annotations/KEY.xml per image, ImageSets/Main/train.txt (the keys) and dataset.yaml
    (format voc, train split, the model's class names in label order)."""
    (folder / "Annotations").mkdir(exist_ok=True)
    (folder / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    keys = []
    for im in labels.images:
        key = voc_key(im.rel)
        _voc_xml(im, labels).write(folder / "Annotations" / f"{key}.xml", encoding="utf-8", xml_declaration=True)
        keys.append(f"{key}\n")
    (folder / "ImageSets" / "Main" / "train.txt").write_text("".join(keys))
    spec = {"format": "voc", "root": ".", "train": "train", "names": list(labels.names)}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return folder / "dataset.yaml"


# ----------------------------------------------------------------------------- Label Studio


def _ls_region(index: int, box: list[float], name: str, score: float, im: LabelImage) -> dict:
    """One `rectanglelabels` result: x, y (top left), width, height in percent of the original size."""
    x, y, w, h = box  # pixels
    value = {"x": 100.0 * x / im.width, "y": 100.0 * y / im.height, "width": 100.0 * w / im.width,
             "height": 100.0 * h / im.height, "rotation": 0, "rectanglelabels": [name]}
    return {"id": f"r{index}", "type": "rectanglelabels", "from_name": LS_FROM_NAME, "to_name": LS_TO_NAME,
            "original_width": im.width, "original_height": im.height, "image_rotation": 0,
            "value": {k: round(v, 4) if isinstance(v, float) else v for k, v in value.items()},
            "score": round(score, 5)}


def write_labelstudio(labels: LabelSet, folder: Path) -> Path:
    """tasks.json: one task per image, `data.image` Label Studio's local-files URL of
    ROOT_NAME/REL, one prediction (model_version, score = the mean box score, result); and
    label_config.xml with the classes."""
    tasks = []
    for im in labels.images:
        result = [_ls_region(i, box, labels.names[label], score, im)
                  for i, (box, label, score) in enumerate(zip(im.xywh.tolist(), im.labels.tolist(),
                                                              im.scores.tolist()))]
        prediction = {"model_version": labels.model_version, "result": result}
        if result:
            prediction["score"] = round(float(im.scores.mean()), 5)
        url = LS_URL_PREFIX + quote(f"{labels.root.name}/{im.rel}", safe="/")
        tasks.append({"data": {LS_TO_NAME: url}, "predictions": [prediction]})
    (folder / "tasks.json").write_text(json.dumps(tasks, indent=1))
    view = ET.Element("View")
    _sub(view, "Image", name=LS_TO_NAME, value=f"${LS_TO_NAME}")
    rect = _sub(view, "RectangleLabels", name=LS_FROM_NAME, toName=LS_TO_NAME)
    for name in labels.names:
        _sub(rect, "Label", value=name)
    tree = ET.ElementTree(view)
    ET.indent(tree)
    tree.write(folder / "label_config.xml", encoding="unicode")
    return folder / "tasks.json"


# ----------------------------------------------------------------------------- CVAT


def _cvat_meta(root: ET.Element, labels: LabelSet) -> None:
    task = _sub(_sub(root, "meta"), "task")
    for tag, value in (("name", f"predictions of {labels.model_version}"), ("size", len(labels.images)),
                       ("mode", "annotation")):
        _sub(task, tag, value)
    label_list = _sub(task, "labels")
    for name in labels.names:
        label = _sub(label_list, "label")
        _sub(label, "name", name)
        _sub(label, "type", "bbox")
        attributes = _sub(label, "attributes")
        if labels.save_conf:
            attribute = _sub(attributes, "attribute")
            for tag, value in (("name", "score"), ("mutable", "False"), ("input_type", "text"),
                               ("default_value", ""), ("values", "")):
                _sub(attribute, tag, value)


def write_cvat(labels: LabelSet, folder: Path) -> Path:
    """annotations.xml in CVAT for images 1.1: <image id name=REL width height> in name order
    (CVAT's default frame order), one <box label xtl ytl xbr ybr occluded z_order source> each."""
    root = ET.Element("annotations")
    _sub(root, "version", "1.1")
    _cvat_meta(root, labels)
    for image_id, im in enumerate(sorted(labels.images, key=lambda i: i.rel)):
        image = _sub(root, "image", id=str(image_id), name=im.rel, width=str(im.width), height=str(im.height))
        for box, label, score in zip(im.boxes.tolist(), im.labels.tolist(), im.scores.tolist()):
            coords = {k: f"{v:.2f}" for k, v in zip(("xtl", "ytl", "xbr", "ybr"), box)}
            element = _sub(image, "box", label=labels.names[label], source="auto", occluded="0", **coords,
                           z_order="0")
            if labels.save_conf:
                _sub(element, "attribute", f"{score:.5f}", name="score")
    tree = ET.ElementTree(root)
    ET.indent(tree)
    tree.write(folder / "annotations.xml", encoding="utf-8", xml_declaration=True)
    return folder / "annotations.xml"


WRITERS = {"coco": write_coco, "yolo": write_yolo, "voc": write_voc, "labelstudio": write_labelstudio,
           "cvat": write_cvat}


def write_label_formats(labels: LabelSet, out_dir: Path, formats: Sequence[str]) -> dict[str, Path]:
    """Each format under out_dir/FORMAT (folders and links made by `prepare_label_dirs`);
    returns the main file of each."""
    return {fmt: WRITERS[fmt](labels, out_dir / fmt) for fmt in dict.fromkeys(formats)}
