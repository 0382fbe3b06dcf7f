"""The built-in demo dataset: procedurally drawn shapes on textured backgrounds.

Each image holds 1-6 filled shapes of SYNTHETIC_CLASSES, each class in its own hue family
(jittered, at random saturation and brightness: outline and colour both carry the class, so a
small model learns it in minutes on a CPU) on a greyish noise / gradient / stripes /
checkerboard background. Shapes contrast strongly with the background: a dark background gets bright
shapes and a light one dark shapes. Later shapes are drawn over earlier ones; a placement is
retried when it would hide more than half of an earlier shape, and any box whose visible
fraction still ends up below MIN_VISIBLE is dropped. Boxes are the shape's full extent,
measured from its rasterised mask, so they are tight to the drawn pixels.

Output layout (COCO; category ids 1..K, bbox [x, y, w, h], area = w * h, iscrowd 0):
    root/images/{train,val}_00000.jpg (JPEG quality 95), root/train.json, root/val.json, root/dataset.yaml,
    root/synthetic_meta.json (the generation parameters, written last).
A fixed seed gives byte-identical files; image i of a split depends only on (seed, split, i).
"""
from __future__ import annotations

import colorsys
import json
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from fcosdet.errors import UserError

SYNTHETIC_CLASSES = ["circle", "square", "triangle", "star", "cross"]
GENERATOR_VERSION = 2
HUE_JITTER = 0.05  # each class has a hue family: colour and outline both carry the class
META_FILE = "synthetic_meta.json"
MIN_VISIBLE = 0.5  # boxes whose unoccluded pixel fraction is below this are dropped
MIN_OBJECTS, MAX_OBJECTS = 1, 6
MIN_SIZE = 12  # smallest shape extent in pixels; the largest is half the shorter image side
_SPLIT_CODES = {"train": 0, "val": 1}


# ---------------------------------------------------------------------- shapes

def _unit_polygon(label: int, rng: np.random.Generator) -> np.ndarray:
    """Vertices (V, 2) of shape `label` centred at 0 with circumradius about 1."""
    name = SYNTHETIC_CLASSES[label]
    if name == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "square":
        aspect = rng.uniform(0.85, 1.15)
        half = np.array([aspect, 1 / aspect]) * np.sqrt(0.5)
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * half
    if name == "triangle":
        t = np.deg2rad([-90, 30, 150])
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "star":
        t = np.deg2rad(-90 + 36 * np.arange(10))
        radius = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
        return np.stack([np.cos(t), np.sin(t)], 1) * radius[:, None]
    # cross: a plus sign with arm half-width a, traced clockwise from the top arm.
    a = rng.uniform(0.28, 0.38)
    pts = np.array([[a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1],
                    [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a], [-a, -1]])
    return pts / np.sqrt(1 + a * a)


def _place_polygon(label: int, size: float, image_hw: tuple[int, int],
                   rng: np.random.Generator) -> np.ndarray:
    """Scales, rotates (+-30 deg) and translates a shape so it lies inside the image: (V, 2)."""
    h, w = image_hw
    theta = np.deg2rad(rng.uniform(-30, 30))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    pts = _unit_polygon(label, rng) @ rot.T * (size / 2)  # (V, 2) xy around the origin
    lo, hi = pts.min(0), pts.max(0)
    cx = rng.uniform(1 - lo[0], w - 1 - hi[0])
    cy = rng.uniform(1 - lo[1], h - 1 - hi[1])
    return pts + np.array([cx, cy])


def _rasterize(polygon: np.ndarray,
               image_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[slice, slice], np.ndarray]:
    """Fills the polygon inside its own bounding crop.

    Returns the crop's mask (h, w) bool, the (rows, cols) slices placing it in the image, and
    the tight box (4,) x1y1x2y2 of its filled pixels in image coordinates.
    """
    x0, y0 = np.floor(polygon.min(0)).astype(int) - 1
    x1, y1 = np.ceil(polygon.max(0)).astype(int) + 2
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, image_hw[1]), min(y1, image_hw[0])
    canvas = Image.new("L", (int(x1 - x0), int(y1 - y0)), 0)
    local = (polygon - np.array([x0, y0])).tolist()
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in local], fill=255)
    mask = np.asarray(canvas) > 0  # (h, w)
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    # Pixel i covers [i, i + 1), so the box's right/bottom edge is the last index + 1.
    box = np.array([cols[0] + x0, rows[0] + y0, cols[-1] + 1 + x0, rows[-1] + 1 + y0],
                   np.float32) if rows.size else np.zeros(4, np.float32)
    return mask, (slice(y0, y1), slice(x0, x1)), box


# ---------------------------------------------------------------------- colours, background

def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _background(rng: np.random.Generator, h: int, w: int, dark: bool) -> np.ndarray:
    """A textured background (H, W, 3) float32 within +-0.12 of a base colour."""
    value = rng.uniform(0.08, 0.32) if dark else rng.uniform(0.68, 0.92)
    base = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0, 0.25), value), np.float32)
    ys = np.arange(h, dtype=np.float32)[:, None]  # (H, 1) and (1, W): broadcast to (H, W)
    xs = np.arange(w, dtype=np.float32)[None, :]
    angle = rng.uniform(0, np.pi)
    along = xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))  # (H, W)
    amp = np.float32(rng.uniform(0.05, 0.12))
    kind = rng.integers(4)
    if kind == 0:  # linear gradient
        pattern = (along - along.mean()) / (np.ptp(along) + 1e-6) * 2
    elif kind == 1:  # stripes
        pattern = np.sin(along * 2 * np.pi / rng.uniform(6, 40))
    elif kind == 2:  # checkerboard
        period = int(rng.integers(6, 33))
        pattern = ((xs // period + ys // period) % 2).astype(np.float32) * 2 - 1
    else:  # blotchy low-frequency colour noise
        cell = int(rng.integers(4, 33))
        small = (rng.uniform(0, 255, (h // cell + 2, w // cell + 2, 3))).astype(np.uint8)
        big = Image.fromarray(small).resize((w + 2 * cell, h + 2 * cell), Image.BILINEAR)
        noise = np.asarray(big, np.float32)[cell:cell + h, cell:cell + w] / 127.5 - 1  # (H, W, 3)
        return base + amp * noise  # clipped to [0, 1] once the shapes are drawn
    return base + amp * pattern[..., None]


def _shape_colour(rng: np.random.Generator, label: int, background_luma: float, dark: bool,
                  avoid: list[np.ndarray]) -> np.ndarray:
    """A colour of the class's hue family (hue label / K, jittered by +-HUE_JITTER) whose luma
    differs from the background's by >= 0.3 and which is >= 0.3 (RGB distance) from the
    colours in `avoid` (the shapes it overlaps)."""
    rgb = np.ones(3, np.float32) if dark else np.zeros(3, np.float32)
    for _ in range(20):
        value = rng.uniform(0.75, 1.0) if dark else rng.uniform(0.05, 0.4)
        hue = (label / len(SYNTHETIC_CLASSES) + rng.uniform(-HUE_JITTER, HUE_JITTER)) % 1.0
        candidate = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), value), np.float32)
        if abs(_luma(candidate) - background_luma) < 0.3:
            continue
        rgb = candidate
        if all(np.linalg.norm(candidate - other) >= 0.3 for other in avoid):
            break
    return rgb


# ---------------------------------------------------------------------- one image

def _occlusion(owner: np.ndarray, mask: np.ndarray, num_shapes: int) -> np.ndarray:
    """Pixels (S,) of each of the S shapes drawn so far that `mask` would cover."""
    covered = owner[mask]
    return np.bincount(covered[covered >= 0], minlength=num_shapes)


def _render_image(rng: np.random.Generator, image_hw: tuple[int, int]):
    """Returns image (H, W, 3) uint8, boxes (G, 4) x1y1x2y2 float, labels (G,) in [0, K)."""
    h, w = image_hw
    dark = bool(rng.random() < 0.5)
    image = _background(rng, h, w, dark)
    bg_luma = _luma(image[::4, ::4].reshape(-1, 3).mean(0))
    owner = np.full((h, w), -1, np.int64)  # (H, W) index of the top shape at each pixel
    boxes, labels, areas, colours = [], [], [], []
    visible = np.zeros(0, np.int64)  # (S,) unoccluded pixels of each shape drawn so far
    max_size = min(h, w) / 2
    for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
        label = int(rng.integers(len(SYNTHETIC_CLASSES)))
        # Uniform in sqrt(size): a median near 55 px on 256 px images, few tiny shapes.
        size = float(rng.uniform(np.sqrt(MIN_SIZE), np.sqrt(max_size)) ** 2)
        for _attempt in range(10):
            mask, region, box = _rasterize(_place_polygon(label, size, image_hw, rng), image_hw)
            hidden = _occlusion(owner[region], mask, len(areas))
            if mask.any() and np.all(visible - hidden >= MIN_VISIBLE * np.array(areas)):
                break
        else:
            continue  # no placement keeps the earlier shapes visible enough: skip this one
        covered = [colours[i] for i in np.nonzero(hidden)[0]]
        colours.append(_shape_colour(rng, label, bg_luma, dark, covered))
        image[region][mask] = colours[-1]
        owner[region][mask] = len(areas)
        visible = np.append(visible - hidden, mask.sum())
        boxes.append(box)
        labels.append(label)
        areas.append(int(mask.sum()))
    # Mild uniform sensor noise (+-0.025) over everything.
    image += (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(0.05)
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    keep = [i for i in range(len(areas)) if visible[i] >= MIN_VISIBLE * areas[i]]
    boxes = np.array([boxes[i] for i in keep], np.float32).reshape(-1, 4)  # (G, 4)
    return image, boxes, np.array([labels[i] for i in keep], np.int64)


# ---------------------------------------------------------------------- files

def _write_split(root: Path, split: str, count: int, image_hw: tuple[int, int],
                 seed: int) -> dict:
    """Draws and saves one split's images; returns its COCO dict."""
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
        pixels, boxes, labels = _render_image(rng, image_hw)
        file_name = f"{split}_{index:05d}.jpg"
        Image.fromarray(pixels).save(root / "images" / file_name, quality=95)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name,
                       "width": image_hw[1], "height": image_hw[0]})
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": label + 1, "bbox": [x1, y1, w, h],
                                "area": w * h, "iscrowd": 0})
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"}
                  for k, name in enumerate(SYNTHETIC_CLASSES)]
    return {"info": {"description": "fcosdet synthetic shapes", "version": GENERATOR_VERSION},
            "images": images, "annotations": annotations, "categories": categories}


def _check_params(num_train: int, num_val: int, image_size: tuple[int, int]) -> None:
    if num_train < 1 or num_val < 1:
        raise UserError(f"The synthetic dataset needs at least one train and one val image "
                        f"(got num_train={num_train}, num_val={num_val}); pass larger counts.")
    if min(image_size) < 64:
        raise UserError(f"Synthetic image_size {tuple(image_size)} is too small; use at least "
                        f"64 pixels per side, e.g. (256, 256).")


def _remove_stale_images(root: Path) -> None:
    """Deletes images of an earlier generation (only called when its meta file is present)."""
    for path in (root / "images").glob("*_[0-9][0-9][0-9][0-9][0-9].jpg"):
        if path.name.split("_")[0] in _SPLIT_CODES:
            path.unlink()


def make_synthetic_dataset(root: str | Path, *, num_train: int = 512, num_val: int = 128,
                           image_size: tuple[int, int] = (256, 256), seed: int = 0) -> dict:
    """Generates the shapes dataset under `root` (image_size is (H, W)).

    Returns {"root", "yaml", "class_names", "num_images": {split: n}, "num_boxes":
    {split: n}, "seconds", "reused": False}.
    """
    image_hw = (int(image_size[0]), int(image_size[1]))
    _check_params(num_train, num_val, image_hw)
    start = time.perf_counter()
    root = Path(root)
    meta_path = root / META_FILE
    if meta_path.exists():
        meta_path.unlink()  # the meta file marks a complete dataset: drop it while rewriting
        _remove_stale_images(root)
    try:
        (root / "images").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Cannot create the synthetic dataset folder {root} ({exc}); "
                        f"choose a writable directory.") from exc
    counts = {"train": num_train, "val": num_val}
    num_boxes = {}
    for split, count in counts.items():
        coco = _write_split(root, split, count, image_hw, seed)
        (root / f"{split}.json").write_text(json.dumps(coco))
        num_boxes[split] = len(coco["annotations"])
    spec = {"format": "coco", "root": ".",
            "train": {"images": "images", "annotations": "train.json"},
            "val": {"images": "images", "annotations": "val.json"},
            "names": list(SYNTHETIC_CLASSES)}
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    params = _params(num_train, num_val, image_hw, seed)
    meta_path.write_text(json.dumps({"generator": __name__, "params": params}, indent=2))
    return {"root": str(root), "yaml": str(root / "dataset.yaml"),
            "class_names": list(SYNTHETIC_CLASSES), "num_images": counts,
            "num_boxes": num_boxes, "seconds": time.perf_counter() - start, "reused": False}


def _params(num_train: int, num_val: int, image_hw: tuple[int, int], seed: int) -> dict:
    return {"version": GENERATOR_VERSION, "num_train": int(num_train), "num_val": int(num_val),
            "image_size": [int(image_hw[0]), int(image_hw[1])], "seed": int(seed)}


def ensure_synthetic_dataset(root: str | Path, *, num_train: int = 512, num_val: int = 128,
                             image_size: tuple[int, int] = (256, 256), seed: int = 0) -> dict:
    """Reuses the dataset under `root` when it was generated with the same parameters and all
    its files are present; otherwise (re)generates it. Returns make_synthetic_dataset's dict
    (with "reused": True and "seconds" the check's time when reused)."""
    start = time.perf_counter()
    root = Path(root)
    wanted = _params(num_train, num_val, (int(image_size[0]), int(image_size[1])), seed)
    try:
        meta = json.loads((root / META_FILE).read_text())
        splits = {split: json.loads((root / f"{split}.json").read_text())
                  for split in _SPLIT_CODES}
        complete = (meta.get("params") == wanted and (root / "dataset.yaml").is_file()
                    and all((root / "images" / img["file_name"]).is_file()
                            for coco in splits.values() for img in coco["images"]))
    except (OSError, ValueError, KeyError, TypeError):
        complete = False
    if not complete:
        return make_synthetic_dataset(root, num_train=num_train, num_val=num_val,
                                      image_size=image_size, seed=seed)
    return {"root": str(root), "yaml": str(root / "dataset.yaml"),
            "class_names": list(SYNTHETIC_CLASSES),
            "num_images": {split: len(coco["images"]) for split, coco in splits.items()},
            "num_boxes": {split: len(coco["annotations"]) for split, coco in splits.items()},
            "seconds": time.perf_counter() - start, "reused": True}
