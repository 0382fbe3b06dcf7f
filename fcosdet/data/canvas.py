"""Large canvases with the shapes dataset's shapes (`fcosdet.data.synthetic`) pasted at a chosen
scale: small objects on a big image, to measure sliced inference.

A canvas (H, W) holds `count` shapes whose extent is drawn from [lo, hi] pixels (uniform in
sqrt(size), as the shapes dataset), placed without overlapping earlier boxes (a placement is
retried, then the shape is skipped), drawn in their class colours on a textured background.
With `object_size` near the scale a model was trained at (the demo model: 12-96 px shapes on
192-px images) the shapes are at native scale for tiles of the training size, and tiny once the
whole canvas is resized to it.

Output layout (COCO, as the shapes dataset: category ids 1..K, bbox [x, y, w, h]):
    root/images/canvas_00000.png, root/val.json, root/dataset.yaml (the split is "val").
Image i depends only on (seed, i).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from fcosdet.data.synthetic import (
    SYNTHETIC_CLASSES,
    _background,
    _luma,
    _place_polygon,
    _rasterize,
    _shape_colour,
)


def render_canvas(rng: np.random.Generator, *, canvas: tuple[int, int] = (1024, 1024),
                  object_size: tuple[float, float] = (16.0, 48.0),
                  count: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One canvas: image (H, W, 3) uint8, boxes (G, 4) x1y1x2y2 float32, labels (G,) in [0, K)."""
    h, w = canvas
    dark = bool(rng.random() < 0.5)
    image = _background(rng, h, w, dark)  # (H, W, 3) float32
    bg_luma = _luma(image[::8, ::8].reshape(-1, 3).mean(0))
    boxes: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(count):
        label = int(rng.integers(len(SYNTHETIC_CLASSES)))
        size = float(rng.uniform(np.sqrt(object_size[0]), np.sqrt(object_size[1])) ** 2)
        for _attempt in range(20):
            mask, region, box = _rasterize(_place_polygon(label, size, canvas, rng), canvas)
            apart = all(box[2] + 2 <= b[0] or b[2] + 2 <= box[0] or box[3] + 2 <= b[1] or b[3] + 2 <= box[1]
                        for b in boxes)
            if mask.any() and apart:
                break
        else:
            continue
        image[region][mask] = _shape_colour(rng, label, bg_luma, dark, [])
        boxes.append(box)
        labels.append(label)
    image += (rng.random(image.shape, dtype=np.float32) - np.float32(0.5)) * np.float32(0.05)
    pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return pixels, np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64)


def make_canvas_dataset(root: str | Path, *, num_images: int = 4, canvas: tuple[int, int] = (1024, 1024),
                        object_size: tuple[float, float] = (16.0, 48.0), count: int = 12,
                        seed: int = 0) -> dict:
    """Writes `num_images` canvases under `root` (module docstring); returns {"root", "yaml",
    "class_names", "num_boxes"}."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        pixels, boxes, labels = render_canvas(np.random.default_rng([seed, index]), canvas=canvas,
                                              object_size=object_size, count=count)
        file_name = f"canvas_{index:05d}.png"
        Image.fromarray(pixels).save(root / "images" / file_name)
        images.append({"id": index + 1, "file_name": file_name, "width": canvas[1], "height": canvas[0]})
        for (x1, y1, x2, y2), label in zip(boxes.tolist(), labels.tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(SYNTHETIC_CLASSES)]
    (root / "val.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                               "categories": categories}))
    spec = {"format": "coco", "root": ".", "val": {"images": "images", "annotations": "val.json"},
            "names": list(SYNTHETIC_CLASSES)}
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return {"root": str(root), "yaml": str(root / "dataset.yaml"), "class_names": list(SYNTHETIC_CLASSES),
            "num_boxes": len(annotations)}
