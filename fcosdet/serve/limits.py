"""What the server refuses, and how: one `Refused(status, reason)` per bad input, decided before the
work it would cost (the upload's size before it is read whole, the image's pixel count from its header
before it is decoded).

Sizes are (width, height) as PIL gives them; a decoded image is 8-bit RGB with its EXIF orientation
applied, exactly as `fcosdet.data.images.load_image` reads a file (so a served image gives the same
detections as `fcosdet predict` on the file).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from fcosdet.data.images import to_rgb8

MB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class Limits:
    """The per-request limits of one server (`fcosdet serve` flags in brackets)."""
    max_upload_bytes: int  # a body above this is 413 [--max-upload-mb]
    max_pixels: int  # an image whose header claims more pixels is 413, never decoded [--max-megapixels]
    timeout_s: float  # the body must arrive within this [--timeout-s]
    result_timeout_s: float  # the detections must come back within this [--result-timeout-s]


class Refused(Exception):
    """A request answered with an HTTP error: `status` (4xx / 5xx) and a one-line `reason`."""

    def __init__(self, status: int, reason: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = " ".join(reason.split())  # one line whatever an exception message held
        self.headers = dict(headers or {})


def too_large(size: int, limits: Limits) -> Refused:
    return Refused(413, f"the upload is {size} bytes or more, over the server's limit of "
                        f"{limits.max_upload_bytes} bytes (--max-upload-mb); send a smaller image")


def check_pixels(width: int, height: int, *, max_pixels: int) -> None:
    """A header's claimed size against the cap (a decompression bomb is a small file claiming a huge one)."""
    if width * height > max_pixels:
        raise Refused(413, f"the image claims {width} x {height} = {width * height / 1e6:.1f} megapixels, over the "
                           f"server's limit of {max_pixels / 1e6:g} (--max-megapixels); it was not decoded")


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Image file bytes -> 8-bit RGB PIL, EXIF orientation applied; the pixel count is checked from
    the header first. Refused(400) for bytes that are not a decodable image, Refused(413) above the cap."""
    if not data:
        raise Refused(400, "the body is empty: send an image file (JPEG, PNG, ...) as the body or as a "
                           "multipart file")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        raise Refused(400, "not an image file PIL can identify (JPEG, PNG, BMP, TIFF, WebP, ...)") from None
    except Image.DecompressionBombError as exc:  # PIL's own cap (about 179 MP) can come first
        raise Refused(413, f"the image is refused before decoding: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - whatever PIL says, the bytes are not an image it reads
        raise Refused(400, f"not an image file PIL can read ({type(exc).__name__}: {exc})") from None
    with image:
        check_pixels(*image.size, max_pixels=max_pixels)
        try:
            image.load()
            oriented = ImageOps.exif_transpose(image)
            return to_rgb8(oriented)
        except Exception as exc:  # noqa: BLE001 - truncated or corrupt image data
            raise Refused(400, f"the image cannot be decoded ({type(exc).__name__}: {exc})") from None
