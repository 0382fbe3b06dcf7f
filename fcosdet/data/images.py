"""Image files: suffixes, EXIF orientation, header sizes, full decode to 8-bit RGB, decode checks.

Dimensions: H x W one image as displayed (EXIF orientation applied); sizes are (width, height).
Conventions: image sizes come from the file header only (no decode); a truncated image body is
found by `verify_images` (full decode) or, at the latest, when the training dataset loads it
with `load_image`. A missing or undecodable image is a UserError naming the file.
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from fcosdet.console import progress
from fcosdet.data.records import ImageRecord
from fcosdet.data.validate import Problems
from fcosdet.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")  # lower case
_EXIF_ORIENTATION_TAG = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def is_image_file(path: str | Path) -> bool:
    """True when the file name ends in one of IMAGE_SUFFIXES (any case); the file is not opened."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """Every image file under `folder` (recursive), sorted."""
    return sorted(p for p in folder.rglob("*") if is_image_file(p) and p.is_file())


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


def read_sizes(paths: Sequence[Path], problems: Problems, *,
                source: str) -> list[tuple[int, int] | None]:
    """Header sizes of many images (thread pool); None where the image is missing or unreadable."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(_try_image_size, paths))
    sizes: list[tuple[int, int] | None] = []
    for path, result in zip(paths, results):
        missing = isinstance(result, BaseException) and not path.exists()
        if isinstance(result, FileNotFoundError) or missing:
            problems.report(f"Image file {path} (listed in {source}) does not exist; "
                            f"fix the path or remove the image")
            sizes.append(None)
        elif isinstance(result, BaseException):
            problems.report(f"Image file {path} (listed in {source}) cannot be read as an image "
                            f"({type(result).__name__}: {result}); replace the file")
            sizes.append(None)
        else:
            sizes.append(result)
    return sizes


# ----------------------------------------------------------------------------- full decode


def to_rgb8(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB.

    16-bit ('I;16*') and 32-bit integer ('I') images are taken as 16-bit data and scaled by
    255/65535; images with alpha (RGBA, LA, palette with transparency) are composited on black;
    grayscale, palette, CMYK, ... go through PIL's own conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float32)  # (H, W)
        scaled = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)  # (H, W)
        return Image.fromarray(scaled).convert("RGB")
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(path: str | Path) -> Image.Image:
    """Fully decode an image, apply its EXIF orientation and convert it to 8-bit RGB.

    Any failure (missing, corrupt, truncated) raises UserError naming the file.
    """
    try:
        with Image.open(path) as image:
            image.load()
            oriented = ImageOps.exif_transpose(image)
        return to_rgb8(oriented)
    except FileNotFoundError:
        raise UserError(f"Image file {path} does not exist; check the path or restore the file.") from None
    except Exception as exc:  # every decoder error means the same to the user
        raise UserError(f"Image file {path} cannot be decoded ({type(exc).__name__}: {exc}); "
                        "replace the file.") from None


def _decode_problem(record: ImageRecord) -> str | None:
    """None if the image decodes fully at the recorded size, else a one-sentence message."""
    try:
        image = load_image(record.path)
    except UserError as exc:
        return str(exc).rstrip(".")  # Problems.report ends the sentence
    if image.size != (record.width, record.height):
        return (f"Image file {record.path} decodes to {image.size[0]}x{image.size[1]} but its header "
                f"said {record.width}x{record.height}; re-save the image")
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
    problems = Problems(skip_invalid=skip_invalid)
    good: list[ImageRecord] = []
    for record, message in zip(records, messages):
        if message is None:
            good.append(record)
        else:
            problems.report(message)
    return good, problems.messages
