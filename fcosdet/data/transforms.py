"""The train / eval transforms (torchvision.transforms.v2 + tv_tensors) and pixel normalisation.

Dimensions: G boxes, H0 x W0 the displayed (EXIF-rotated) image, H x W after resize.
Conventions: boxes (x1, y1, x2, y2) float pixels; they are wrapped as tv_tensors.BoundingBoxes
(XYXY) so resize and flip move them exactly with the pixels. Every transform's randomness comes
from torch's global RNG, which the DataLoader seeds per worker.

Input of a transform: an 8-bit RGB PIL image (`fcosdet.data.images.load_image`) and its target.

Output of a transform: image (3, H, W) float32 normalised, and the target with boxes / labels
(and `iscrowd` when given) resized, degenerate boxes dropped, plus `orig_size` (H0, W0) and
`img_size` (H, W): boxes map back to the original image by (W0 / W, H0 / H). Padding to a
multiple of 32 happens later, in `collate`, at the bottom / right, so it never moves boxes.

Resize modes (`resize`, config `data.resize`), one factor f = min(short / short side, max_long /
long side) for both axes:
- "antialias_uint8" (fcosdet's): (H, W) = int(f * (H0, W0) + 0.5), the 8-bit image resized with
  antialias (and rounded back to 8 bits), then normalised;
- "torchvision" (torchvision's GeneralizedRCNNTransform, for imported torchvision models):
  (H, W) = int(f * (H0, W0)) (rounded down, as interpolate(scale_factor=f,
  recompute_scale_factor=True)), the image normalised first, then resized in float32 bilinear,
  align_corners=False, without antialias. (H, W) is the size torchvision reports, so the boxes
  map back by the same ratios as its `postprocess`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from fcosdet.data.tiles import TileSampler, clip_to_window
from fcosdet.errors import UserError

CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)  # per BGR channel, pixel range 0..255, std 1
# Detectron2's caffe ResNets (mmdetection's open-mmlab://detectron2/resnet50_caffe): another mean
CAFFE_DETECTRON2_MEAN_BGR = (103.530, 116.280, 123.675)
CAFFE_MEANS_BGR = {"caffe": CAFFE_MEAN_BGR, "caffe_detectron2": CAFFE_DETECTRON2_MEAN_BGR}
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # pixel range 0..1
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
NORMALIZE_MODES = ("caffe", "caffe_detectron2", "pytorch")
RESIZE_MODES = ("antialias_uint8", "torchvision")
MIN_BOX_SIZE = 1e-3  # boxes thinner than this (pixels, after transforms) are dropped


def keep_ratio_size(height: int, width: int, *, short: int, max_long: int) -> tuple[int, int]:
    """(new_h, new_w): short side to `short` unless the long side would exceed `max_long`."""
    factor = min(short / min(height, width), max_long / max(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def torchvision_size(height: int, width: int, *, short: int, max_long: int) -> tuple[int, int]:
    """(new_h, new_w) as torchvision's detection models resize: the factor of `keep_ratio_size`,
    each side rounded down (what interpolate(scale_factor=..., recompute_scale_factor=True) does)."""
    factor = min(short / min(height, width), max_long / max(height, width))
    return max(1, int(height * factor)), max(1, int(width * factor))


def resize_bilinear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float (3, H0, W0) -> (3, H, W) = size: bilinear, align_corners=False, no antialias."""
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]  # (3, H, W)


def normalize_image(pixels: torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 RGB (3, H, W) -> float32 (3, H, W): 'caffe' / 'caffe_detectron2' BGR minus that mean
    (0..255, std 1) or 'pytorch' RGB / 255 with ImageNet mean / std. One output allocation, the rest in place."""
    out = torch.empty(pixels.shape, dtype=torch.float32)  # (3, H, W)
    if mode in CAFFE_MEANS_BGR:
        for channel in range(3):  # RGB -> BGR while converting to float
            out[channel].copy_(pixels[2 - channel]).sub_(CAFFE_MEANS_BGR[mode][channel])
        return out
    out.copy_(pixels).div_(255.0)
    for channel in range(3):
        out[channel].sub_(IMAGENET_MEAN_RGB[channel]).div_(IMAGENET_STD_RGB[channel])
    return out


def denormalize_image(image: torch.Tensor, mode: str) -> torch.Tensor:
    """Inverse of `normalize_image`: float (3, H, W) -> uint8 RGB (3, H, W), e.g. for drawing."""
    if mode in CAFFE_MEANS_BGR:
        mean = torch.tensor(CAFFE_MEANS_BGR[mode], dtype=image.dtype, device=image.device).view(3, 1, 1)
        rgb = (image + mean).flip(0)  # (3, H, W) 0..255
    else:
        mean = torch.tensor(IMAGENET_MEAN_RGB, dtype=image.dtype, device=image.device).view(3, 1, 1)
        std = torch.tensor(IMAGENET_STD_RGB, dtype=image.dtype, device=image.device).view(3, 1, 1)
        rgb = (image * std + mean) * 255.0  # (3, H, W) 0..255
    return rgb.round().clamp(0, 255).to(torch.uint8)


class DetectionTransform:
    """Keep-ratio resize (optionally multi-scale), optional scale-jitter crop, horizontal flip,
    optional photometric distortion, normalisation.

    Scale-jitter crop (`crop_scale=(lo, hi)`, training only): the image is resized to f times
    the size the plain resize gives, f uniform in [lo, hi]; when that is larger than the plain
    size (h, w), a random window of at most (h, w) is cut out. Boxes move with the pixels,
    are clipped to the window, and those left thinner than MIN_BOX_SIZE (outside the window)
    are dropped with their labels. Photometric distortion (`photometric_prob` > 0, training
    only): torchvision's RandomPhotometricDistort (brightness, contrast, saturation, hue,
    channel order, each with that probability) on the 8-bit image; boxes are unchanged.

    `resize` (see the module docstring): "antialias_uint8" resizes, crops, flips and distorts the
    8-bit image, then normalises; "torchvision" follows torchvision's order: photometric
    distortion on the decoded image, normalisation, then the float resize, crop and flip.

    Tiles (`tile`, a `fcosdet.data.tiles.TileSampler`, training only): first of all, a window of
    the original image is cut out and its boxes clipped (those below the sampler's min_area are
    dropped with their labels); the tile is then the image every later step sees, `orig_size`
    is the tile's size and `tile` (top, left, height, width) where it lay. Without a tile no
    random draw changes (the default path is the one it always was).

    Called as transform(image PIL RGB, target) -> (image (3, H, W) float32, target); target
    holds boxes (G, 4) x1y1x2y2 and labels (G,) (tensors or arrays), optionally iscrowd (G,);
    other keys pass through unchanged.
    """

    def __init__(self, *, train: bool, scale: Sequence[int] = (1333, 800),
                 multiscale_short: Sequence[int] | None = None, flip_prob: float = 0.5,
                 normalize: str = "caffe", crop_scale: Sequence[float] | None = None,
                 photometric_prob: float = 0.0, resize: str = "antialias_uint8",
                 tile: TileSampler | None = None) -> None:
        if resize not in RESIZE_MODES:
            raise UserError(f"Unknown resize {resize!r}; use one of {RESIZE_MODES}.")
        if crop_scale is not None and (len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1]):
            raise UserError(f"data.crop_scale {crop_scale!r} must be two factors 0 < lo <= hi, e.g. [0.5, 1.5].")
        if not 0.0 <= photometric_prob <= 1.0:
            raise UserError(f"data.photometric_prob {photometric_prob} must be in [0, 1].")
        if normalize not in NORMALIZE_MODES:
            raise UserError(f"Unknown normalisation {normalize!r}; use one of {NORMALIZE_MODES}.")
        if len(scale) != 2 or min(scale) <= 0:
            raise UserError(f"Image scale {tuple(scale)} must be two positive sizes like (1333, 800).")
        if multiscale_short is not None and (len(multiscale_short) == 0 or min(multiscale_short) <= 0):
            raise UserError(f"Multi-scale short sides {multiscale_short!r} must be positive sizes.")
        self.train = train
        self.max_long = int(max(scale))
        self.short = int(min(scale))
        use_multiscale = train and multiscale_short is not None
        self.short_choices = [int(s) for s in multiscale_short] if use_multiscale else [self.short]
        self.flip_prob = float(flip_prob) if train else 0.0
        self.normalize = normalize
        self.resize = resize
        self.crop_scale = tuple(float(f) for f in crop_scale) if train and crop_scale is not None else None
        self.photometric = v2.RandomPhotometricDistort(p=photometric_prob) if train and photometric_prob > 0 else None
        if tile is not None and crop_scale is not None:
            raise UserError(f"data.tile={tile.size} and data.crop_scale={list(crop_scale)} both crop: the "
                            f"scale-jitter window could cut away the box the tile was placed around; set "
                            f"--set data.crop_scale=null (data.multiscale_short still jitters the tile's scale)")
        self.tile = tile if train else None

    def __repr__(self) -> str:
        return (f"DetectionTransform(train={self.train}, max_long={self.max_long}, "
                f"short_choices={self.short_choices}, flip_prob={self.flip_prob}, "
                f"normalize={self.normalize!r}, resize={self.resize!r}, crop_scale={self.crop_scale}, photometric={self.photometric}, "
                f"tile={self.tile})")

    def _pick_short(self) -> int:
        if len(self.short_choices) == 1:
            return self.short_choices[0]
        return self.short_choices[int(torch.randint(len(self.short_choices), ()).item())]

    def resized_size(self, height: int, width: int, *, short: int | None = None) -> tuple[int, int]:
        """(H, W) this transform's resize gives an (height, width) image (short side `short`,
        default the evaluation one), before any scale-jitter crop."""
        size = torchvision_size if self.resize == "torchvision" else keep_ratio_size
        return size(height, width, short=self.short if short is None else short, max_long=self.max_long)

    def __call__(self, image: Image.Image, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        pixels = tv_tensors.Image(TF.pil_to_tensor(image))  # (3, H0, W0) uint8
        height0, width0 = pixels.shape[-2:]
        boxes = tv_tensors.BoundingBoxes(
            torch.as_tensor(np.asarray(target["boxes"]), dtype=torch.float32).reshape(-1, 4),  # (G, 4)
            format=tv_tensors.BoundingBoxFormat.XYXY, canvas_size=(height0, width0))
        if self.tile is not None:
            pixels, boxes, target = self._cut_tile(pixels, boxes, target)  # (3, h, w), (K, 4)
            height0, width0 = pixels.shape[-2:]
        if self.resize == "torchvision":  # torchvision's order: distort, normalise, then resize the floats
            if self.photometric is not None:
                pixels = self.photometric(pixels)  # (3, H0, W0) uint8, boxes unchanged
            pixels = tv_tensors.Image(normalize_image(pixels.as_subclass(torch.Tensor), self.normalize))  # (3, H0, W0) float32
        pixels, boxes = self._resize_crop_flip(pixels, boxes)  # (3, H, W), (G, 4)
        height, width = pixels.shape[-2:]
        if self.resize == "torchvision":
            out = pixels.as_subclass(torch.Tensor)  # (3, H, W) float32
        else:
            if self.photometric is not None:
                pixels = self.photometric(pixels)  # (3, H, W) uint8, boxes unchanged
            out = normalize_image(pixels.as_subclass(torch.Tensor), self.normalize)  # (3, H, W) float32
        return out, self._finish_target(target, boxes.as_subclass(torch.Tensor), orig_size=(height0, width0),
                                        img_size=(height, width))

    def _cut_tile(self, pixels: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes, target: dict[str, Any],
                  ) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes, dict[str, Any]]:
        """(3, H0, W0) uint8 -> the tile (3, h, w); boxes (G, 4) -> (K, 4) in the tile's frame; the
        target's labels (and iscrowd) filtered alike, `tile` (top, left, height, width) added."""
        plain = boxes.as_subclass(torch.Tensor)  # (G, 4)
        window = self.tile.window(plain, int(pixels.shape[-2]), int(pixels.shape[-1]))
        kept, keep = clip_to_window(plain, window, min_area=self.tile.min_area)  # (K, 4), (G,)
        out = dict(target)
        mask = keep.numpy()
        out["labels"] = np.asarray(target["labels"], np.int64).reshape(-1)[mask]  # (K,)
        if "iscrowd" in target:
            out["iscrowd"] = np.asarray(target["iscrowd"], bool).reshape(-1)[mask]  # (K,)
        out["tile"] = (window.top, window.left, window.height, window.width)
        tile_pixels = tv_tensors.Image(TF.crop(pixels.as_subclass(torch.Tensor), window.top, window.left,
                                               window.height, window.width))  # (3, h, w)
        tile_boxes = tv_tensors.BoundingBoxes(kept, format=tv_tensors.BoundingBoxFormat.XYXY,
                                              canvas_size=(window.height, window.width))  # (K, 4)
        return tile_pixels, tile_boxes, out

    def _resize_crop_flip(self, pixels: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes,
                          ) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes]:
        """(3, H0, W0) uint8 ("antialias_uint8") or normalised float32 ("torchvision") -> (3, H, W)
        of the same dtype; boxes (G, 4) moved with the pixels."""
        height0, width0 = pixels.shape[-2:]
        height, width = self.resized_size(height0, width0, short=self._pick_short())
        window = None
        if self.crop_scale is not None:
            factor = float(torch.empty(()).uniform_(*self.crop_scale))
            window = (height, width)
            height, width = max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))
        if (height, width) != (height0, width0):
            if self.resize == "torchvision":
                pixels = tv_tensors.Image(resize_bilinear(pixels.as_subclass(torch.Tensor), (height, width)))
            else:
                pixels = TF.resize(pixels, [height, width], antialias=True)  # (3, H, W)
            boxes = TF.resize(boxes, [height, width])  # (G, 4) scaled by (W / W0, H / H0)
        if window is not None and (height > window[0] or width > window[1]):
            top = int(torch.randint(height - min(height, window[0]) + 1, ()))
            left = int(torch.randint(width - min(width, window[1]) + 1, ()))
            height, width = min(height, window[0]), min(width, window[1])
            pixels, boxes = crop(pixels, boxes, top=top, left=left, height=height, width=width)
        if self.flip_prob > 0 and torch.rand(()).item() < self.flip_prob:
            pixels = TF.horizontal_flip(pixels)
            boxes = TF.horizontal_flip(boxes)  # x1' = W - x2, x2' = W - x1
        return pixels, boxes

    @staticmethod
    def _finish_target(target: dict[str, Any], boxes: torch.Tensor, *, orig_size: tuple[int, int],
                       img_size: tuple[int, int]) -> dict[str, Any]:
        """Drop degenerate boxes with their labels / iscrowd, record the sizes."""
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]  # (G,), (G,)
        keep = (widths > MIN_BOX_SIZE) & (heights > MIN_BOX_SIZE)  # (G,)
        out = dict(target)
        out["boxes"] = boxes[keep].reshape(-1, 4)  # (G, 4)
        labels = torch.as_tensor(np.asarray(target["labels"]), dtype=torch.int64).reshape(-1)  # (G,)
        out["labels"] = labels[keep]
        if "iscrowd" in target:
            crowd = torch.as_tensor(np.asarray(target["iscrowd"]), dtype=torch.bool).reshape(-1)  # (G,)
            out["iscrowd"] = crowd[keep]
        out["orig_size"] = (int(orig_size[0]), int(orig_size[1]))
        out["img_size"] = (int(img_size[0]), int(img_size[1]))
        return out


def crop(pixels: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes, *, top: int, left: int, height: int,
         width: int) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes]:
    """The window rows [top, top + height), columns [left, left + width): image (3, height, width);
    boxes (G, 4) shifted by (-left, -top) and clipped to the window (outside ones become empty
    and are dropped later with their labels)."""
    return TF.crop(pixels, top, left, height, width), TF.crop(boxes, top, left, height, width)


def build_transforms(*, train: bool, scale: Sequence[int] = (1333, 800),
                     multiscale_short: Sequence[int] | None = None, flip_prob: float = 0.5,
                     normalize: str = "caffe", crop_scale: Sequence[float] | None = None,
                     photometric_prob: float = 0.0, resize: str = "antialias_uint8",
                     tile: TileSampler | None = None) -> DetectionTransform:
    """The transform for training (`train=True`: random short side from `multiscale_short`,
    flip with `flip_prob`) or evaluation (fixed `scale`, no flip).

    `scale` (long, short) follows mmdet: the short side goes to min(scale) unless the long side
    would exceed max(scale). `multiscale_short` is a list of short sides to choose from; pass
    e.g. `range(640, 801, 32)` for a range. `normalize`: 'caffe' (BGR, 0..255 minus the Caffe
    mean, for Caffe-style backbones), 'caffe_detectron2' (the same with Detectron2's mean) or
    'pytorch' (RGB, /255, ImageNet mean/std). `resize`: 'antialias_uint8' (fcosdet's) or
    'torchvision' (torchvision's detection models', for imported torchvision weights).
    `tile`: train on tiles (`fcosdet.data.tiles`), cut before everything else.
    """
    return DetectionTransform(train=train, scale=scale, multiscale_short=multiscale_short,
                              flip_prob=flip_prob, normalize=normalize, crop_scale=crop_scale,
                              photometric_prob=photometric_prob, resize=resize, tile=tile)
