"""What `fcosdet predict` and `Detector.stream` read: the kinds of source and how each is found.

    image files and folders     a.jpg, photos/            (IMAGE_SUFFIXES; folders recursively)
    globs                       "photos/*.jpg", "clips/**/*.mp4"  (quoted, so that fcosdet expands them)
    video files                 clip.mp4 .mov .avi .mkv .webm (VIDEO_SUFFIXES), decoded with PyAV
    http(s) URLs                an image or a video, downloaded to a temporary file (at most
                                MAX_DOWNLOAD_BYTES) and then read as a file of its kind
    live streams                rtsp:// rtmp:// (PyAV / FFmpeg's network demuxers) and capture
                                devices: /dev/videoN or a bare N on Linux (FFmpeg's v4l2 input)

A source is classified by its text, never by trying to decode it: an existing path by its
suffix, then URLs by their scheme, then globs by their wildcards. Anything else is a UserError.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from fcosdet.data.images import IMAGE_SUFFIXES, is_image_file, list_images
from fcosdet.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm")  # lower case
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "srt", "udp")  # opened live by FFmpeg
MAX_DOWNLOAD_BYTES = 1 << 30  # a URL larger than this is refused (1 GiB)
DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation
_GLOB_CHARS = re.compile(r"[*?\[]")
_CONTENT_SUFFIX = {"image/jpeg": ".jpg", "image/png": ".png", "image/bmp": ".bmp", "image/webp": ".webp",
                   "image/tiff": ".tiff", "video/mp4": ".mp4", "video/quicktime": ".mov", "video/webm": ".webm",
                   "video/x-matroska": ".mkv", "video/x-msvideo": ".avi"}


def is_video_file(path: str | Path) -> bool:
    """True when the file name ends in one of VIDEO_SUFFIXES (any case); the file is not opened."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def is_url(source: str) -> bool:
    return urllib.parse.urlsplit(str(source)).scheme.lower() in ("http", "https")


def is_live(source: str) -> bool:
    """A network stream (rtsp://, ...) or a capture device (/dev/videoN, or a bare N on Linux)."""
    text = str(source)
    return (urllib.parse.urlsplit(text).scheme.lower() in STREAM_SCHEMES or text.startswith("/dev/video")
            or (text.isdigit() and not Path(text).exists()))


def device_path(source: str) -> str:
    """A bare device number -> its Linux path (0 -> /dev/video0); other live sources unchanged."""
    if not source.isdigit():
        return source
    if not sys.platform.startswith("linux"):
        raise UserError(f"capture device {source}: fcosdet opens cameras through FFmpeg's v4l2 input, which "
                        f"is Linux only; on this platform stream the camera as rtsp:// or record a video file")
    return f"/dev/video{source}"


# ----------------------------------------------------------------------------- downloads


def _download_suffix(url: str, content_type: str) -> str:
    """The suffix a downloaded file gets: the URL path's when it is an image or video one, else
    the Content-Type's; '' when neither says."""
    suffix = Path(urllib.parse.urlsplit(url).path).suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES:
        return suffix
    return _CONTENT_SUFFIX.get(content_type.split(";")[0].strip().lower(), "")


def download(url: str, folder: Path, *, max_bytes: int = MAX_DOWNLOAD_BYTES,
             timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """An http(s) URL -> a file under `folder` named after the URL (its suffix from the URL or
    the Content-Type). Any failure (network, HTTP status, too large, not an image or video) is a
    one-line UserError naming the URL; a partial file is removed."""
    name = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).stem or "download"
    folder.mkdir(parents=True, exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "fcosdet"})
    target: Path | None = None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            size = response.headers.get("Content-Length")
            if size is not None and size.isdigit() and int(size) > max_bytes:
                raise UserError(f"{url} is {int(size) / 2**20:.1f} MiB, over the {max_bytes / 2**20:.0f} MiB "
                                f"download cap; download it yourself and pass the file")
            suffix = _download_suffix(url, response.headers.get("Content-Type", ""))
            if not suffix:
                raise UserError(f"{url} is not an image or video (Content-Type "
                                f"{response.headers.get('Content-Type') or 'missing'}, no image or video suffix); "
                                f"check the address")
            target = folder / f"{name}{suffix}"
            _copy_capped(response, target, url=url, max_bytes=max_bytes)
    except UserError:
        if target is not None:
            target.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTPError is a URLError
        if target is not None:
            target.unlink(missing_ok=True)
        plain = isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError)
        reason = exc.reason if plain else exc  # "HTTP Error 404: Not Found" / "[Errno 111] Connection refused"
        raise UserError(f"cannot download {url} ({reason}); check the address and "
                        f"the network, or download it yourself and pass the file") from None
    return target


def _copy_capped(response, target: Path, *, url: str, max_bytes: int) -> None:
    """Streams the body to `target` in 1 MiB chunks, stopping past `max_bytes` (a server that
    sends no or a wrong Content-Length is capped too)."""
    written = 0
    with open(target, "wb") as out:
        while chunk := response.read(1 << 20):
            written += len(chunk)
            if written > max_bytes:
                raise UserError(f"{url} is over the {max_bytes / 2**20:.0f} MiB download cap; download it "
                                f"yourself and pass the file")
            out.write(chunk)


# ----------------------------------------------------------------------------- sorting sources


@dataclass
class Sources:
    """The inputs, by kind, in the order given: image files, and videos (files and live streams,
    as strings PyAV opens). `downloads`: the temporary folder of the URLs fetched (removed when
    this object is garbage-collected or the program ends; `cleanup()` removes it at once)."""
    images: list[Path] = field(default_factory=list)
    videos: list[str] = field(default_factory=list)
    downloads: Path | None = None
    names: dict[str, str] = field(default_factory=dict)  # downloaded file -> the URL it came from

    def download_folder(self) -> Path:
        if self.downloads is None:
            self.downloads = Path(tempfile.mkdtemp(prefix="fcosdet-url-"))
            self._finalizer = weakref.finalize(self, shutil.rmtree, self.downloads, True)
        return self.downloads

    def cleanup(self) -> None:
        if self.downloads is not None:
            self._finalizer()

    def display_name(self, source: str | Path) -> str:
        """What messages call a source: the URL of a downloaded file, else the source itself."""
        return self.names.get(str(source), str(source))


def _add_file(found: Sources, path: Path, *, as_typed: str) -> None:
    if is_video_file(path):
        found.videos.append(str(path))
    elif is_image_file(path):
        found.images.append(path)
    else:
        raise UserError(f"{as_typed} is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a video "
                        f"({', '.join(VIDEO_SUFFIXES)}); rename it with the right suffix or convert it")


def _add_glob(found: Sources, pattern: str) -> None:
    matches = sorted(Path(m) for m in glob.glob(pattern, recursive=True))
    files = [m for m in matches if m.is_file() and (is_image_file(m) or is_video_file(m))]
    if not files:
        raise UserError(f"the pattern {pattern} matches no image or video file; check it (and quote it, "
                        f"so that fcosdet expands it rather than the shell)")
    for path in files:
        _add_file(found, path, as_typed=str(path))


def find_sources(sources: list[str], *, max_download_bytes: int = MAX_DOWNLOAD_BYTES) -> Sources:
    """Every source sorted into images and videos (see the module docstring); URLs are
    downloaded now. Each image file once; an unknown path is one error naming it."""
    found = Sources()
    for src in map(str, sources):
        p = Path(src)
        if p.is_dir():
            found.images += list_images(p)
        elif p.is_file():
            _add_file(found, p, as_typed=src)
        elif is_url(src):
            folder = found.download_folder() / str(len(found.names))  # two URLs may end in the same name
            path = download(src, folder, max_bytes=max_download_bytes)
            found.names[str(path)] = src
            _add_file(found, path, as_typed=src)
        elif is_live(src):
            found.videos.append(device_path(src))
        elif _GLOB_CHARS.search(src):
            _add_glob(found, src)
        else:
            raise UserError(f"{src} is not an image or video file, a folder, a glob, an http(s) URL, an "
                            f"rtsp:// stream or a /dev/video device; check the path")  # as typed: Path folds "//"
    if not found.images and not found.videos:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) or videos "
                        f"({', '.join(VIDEO_SUFFIXES)}) found in {', '.join(map(str, sources))}")
    found.images = list({os.path.abspath(p): p for p in found.images}.values())
    return found
