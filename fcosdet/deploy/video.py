"""Videos in and out, and the pipeline between them: decode (PyAV) -> batches through the model
(and the tracker) -> draw + encode (PyAV) and one JSON line per frame.

    [decode thread] --queue--> main thread: B frames per Detector.predict_batch --queue--> [encode thread]
      VideoReader                           (+ Tracker.update per frame)              draw, VideoWriter, JSONL

Both queues are bounded (QUEUE_BATCHES batches), so memory stays constant however long the
video is; PyAV releases the GIL while it decodes and encodes, so those threads overlap the model.

Dimensions: H x W one frame (RGB uint8); B frames per batch; D detections of a frame.
Conventions: a frame's `index` counts every decoded frame from 0 (the stride keeps index % N == 0);
its `time` is seconds since the first frame (pts x time_base). The annotated video is H.264 in
MP4 (libx264, yuv420p, +faststart: it plays in browsers) when the PyAV build has libx264, else
VP9 in WebM (`browser_codec`); its frame rate is the input's divided by the stride.
"""
from __future__ import annotations

import json
import math
import queue
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence, TypeVar

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from fcosdet.analysis.viz import class_colour
from fcosdet.console import progress, warn
from fcosdet.data.images import load_image
from fcosdet.deploy.results import DRAW_THR, Results
from fcosdet.deploy.sources import find_sources, is_live
from fcosdet.errors import UserError

if TYPE_CHECKING:
    from fcosdet.deploy.predictor import Detector

T = TypeVar("T")
QUEUE_BATCHES = 2  # each queue holds at most this many batches of frames
DEFAULT_FPS = Fraction(30)  # a live stream that announces no frame rate
# (encoder, container suffix, what to call it) in order of preference: all three play in browsers
CODECS = (("libx264", ".mp4", "H.264"), ("libvpx-vp9", ".webm", "VP9"))
_ENCODER_OPTIONS = {"libx264": {"crf": "23", "preset": "veryfast"},
                    "libvpx-vp9": {"crf": "32", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}}


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame."""
    index: int  # its position in the source, counting every frame from 0
    time: float | None  # seconds since the first frame; None for a still image
    image: np.ndarray  # (H, W, 3) uint8 RGB


@dataclass(frozen=True)
class FrameResult:
    """One frame and its detections (what `Detector.stream` yields)."""
    source: str  # the video (or image) it comes from
    index: int
    time: float | None
    image: np.ndarray  # (H, W, 3) uint8 RGB
    results: Results  # track_ids set when tracking

    def to_record(self) -> dict[str, Any]:
        """The frame's JSON line: {"frame", "time", "detections": Results.to_coco()}."""
        return {"frame": self.index, "time": None if self.time is None else round(self.time, 6),
                "detections": self.results.to_coco()}


# ----------------------------------------------------------------------------- codecs


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except ValueError:  # av.codec.codec.UnknownCodecError
        return False
    return True


def browser_codec() -> tuple[str, str, str]:
    """(encoder, suffix, name) of the first of CODECS this PyAV build can encode."""
    for codec in CODECS:
        if has_encoder(codec[0]):
            return codec
    raise UserError(f"this PyAV build (av {av.__version__}) has none of the encoders "
                    f"{', '.join(c[0] for c in CODECS)}; install the PyPI `av` wheel, which ships libx264")


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class VideoInfo:
    fps: Fraction | None  # the stream's average frame rate; None when it announces none
    frames: int | None  # the frame count its header announces (None / 0: unknown)
    width: int
    height: int


def _open_input(source: str, name: str) -> Any:
    """A PyAV input container; a file, URL or device that cannot be opened is one UserError."""
    live = is_live(source)
    kwargs: dict[str, Any] = {"timeout": (15.0, 15.0)} if live else {}
    if source.startswith("/dev/video"):
        kwargs["format"] = "v4l2"
    elif source.lower().startswith("rtsp"):
        kwargs["options"] = {"rtsp_transport": "tcp"}
    try:
        container = av.open(source, **kwargs)
    except FileNotFoundError:
        if source.startswith("/dev/video"):
            raise UserError(f"there is no capture device {source} on this machine (`ls /dev/video*` lists "
                            f"them); plug the camera in or give another device") from None
        raise UserError(f"{name} does not exist; check the path") from None
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise UserError(f"{name} cannot be opened as a video ({exc}); check the file, address or device") from None
    if not container.streams.video:
        container.close()
        raise UserError(f"{name} has no video stream; give a video file")
    return container


class VideoReader:
    """The frames of one video file, URL or device, every `vid_stride`-th (`index % vid_stride == 0`).

    A decoding error ends the frames early: `fault` then says where (one sentence naming the
    source), as it does when a file ends more than a frame before its header's frame count."""

    def __init__(self, source: str, *, vid_stride: int = 1, name: str | None = None) -> None:
        if vid_stride < 1:
            raise UserError(f"--vid-stride must be at least 1, got {vid_stride}")
        self.source, self.name, self.vid_stride = str(source), name or str(source), vid_stride
        self.container = _open_input(self.source, self.name)
        stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads in the decoder
        self.stream = stream
        self.info = VideoInfo(fps=stream.average_rate or stream.guessed_rate, frames=stream.frames or None,
                              width=stream.codec_context.width, height=stream.codec_context.height)
        self.decoded = 0  # frames decoded so far (before the stride)
        self.fault: str | None = None

    @property
    def output_fps(self) -> Fraction:
        """The frame rate of what the stride keeps (DEFAULT_FPS / stride when the source says none)."""
        return Fraction(self.info.fps or DEFAULT_FPS) / self.vid_stride

    def __iter__(self) -> Iterator[VideoFrame]:
        origin = None
        frames = self.container.decode(self.stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except (av.error.FFmpegError, OSError) as exc:
                self.fault = f"{self.name}: decoding stopped at frame {self.decoded} ({exc}); the frames before it are kept"
                return
            index, self.decoded = self.decoded, self.decoded + 1
            seconds = frame.time if frame.time is not None else index / float(self.info.fps or DEFAULT_FPS)
            origin = seconds if origin is None else origin
            if index % self.vid_stride == 0:
                yield VideoFrame(index=index, time=seconds - origin, image=frame.to_ndarray(format="rgb24"))
        expected = self.info.frames
        if expected and self.decoded < expected - 1:
            self.fault = (f"{self.name}: the file ends after {self.decoded} of the {expected} frames its header "
                          f"announces (truncated?); the frames before the end are kept")

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def image_frames(paths: Sequence[Path], *, vid_stride: int = 1) -> Iterator[VideoFrame]:
    """Still images as frames (index = position in `paths`, time None), every `vid_stride`-th."""
    for i in range(0, len(paths), vid_stride):
        yield VideoFrame(index=i, time=None, image=np.asarray(load_image(paths[i])))


# ----------------------------------------------------------------------------- writing


class VideoWriter:
    """Encodes (H, W, 3) uint8 RGB frames at `fps` into a browser-playable file (`browser_codec`).
    Odd sizes are padded by one black row / column (yuv420p needs even ones)."""

    def __init__(self, path: str | Path, *, fps: Fraction, width: int, height: int, codec: str | None = None) -> None:
        self.codec = codec or browser_codec()[0]
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        options = {"movflags": "+faststart"} if self.path.suffix.lower() in (".mp4", ".mov") else {}
        try:
            self.container = av.open(str(self.path), "w", options=options)
        except (av.error.FFmpegError, OSError) as exc:
            raise UserError(f"cannot write the video {self.path} ({exc}); choose a writable --out") from None
        self.fps = Fraction(fps).limit_denominator(100_000)
        self.stream = self.container.add_stream(self.codec, rate=self.fps)
        self.width, self.height = width, height
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = dict(_ENCODER_OPTIONS.get(self.codec, {}))
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if image.shape != (self.height, self.width, 3):
            raise ValueError(f"frame {image.shape} != ({self.height}, {self.width}, 3)")
        if self.width % 2 or self.height % 2:
            image = np.pad(image, ((0, self.height % 2), (0, self.width % 2), (0, 0)))  # (H even, W even, 3)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        frame.pts, frame.time_base = self.frames, 1 / self.fps
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        if self.container is not None:
            self.container.mux(self.stream.encode(None))  # flush the encoder's delayed frames
            self.container.close()
            self.container = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def draw_frame(fr: FrameResult, *, draw_thr: float = DRAW_THR) -> np.ndarray:
    """The frame with its detections scoring >= draw_thr drawn (Results.draw) and, when tracked,
    a "#id" tag at each box's lower left corner: (H, W, 3) uint8."""
    r = fr.results
    image = r.draw(fr.image, score_thr=draw_thr)
    if r.track_ids is not None and len(r):
        _draw_track_ids(image, r, draw_thr)
    return np.asarray(image)


def _draw_track_ids(image: Image.Image, r: Results, draw_thr: float) -> None:
    draw, font = ImageDraw.Draw(image), ImageFont.load_default()
    for box, score, label, tid in zip(r.boxes.tolist(), r.scores.tolist(), r.labels.tolist(), r.track_ids.tolist()):
        if score < draw_thr or tid < 0:
            continue
        left, top, right, bottom = draw.textbbox((0, 0), f"#{tid}", font=font)
        x1, y2 = box[0], box[3]
        colour = class_colour(label)
        ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140 else (255, 255, 255)
        draw.rectangle([x1, y2 - (bottom - top) - 4, x1 + right - left + 4, y2], fill=colour)
        draw.text((x1 + 2 - left, y2 - (bottom - top) - 2 - top), f"#{tid}", fill=ink, font=font)


# ----------------------------------------------------------------------------- the pipeline


def threaded(items: Iterable[T], *, maxsize: int) -> Iterator[T]:
    """`items` produced by a daemon thread at most `maxsize` ahead of the consumer; an error in
    the thread is raised here; closing this generator early stops the thread."""
    slots: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Failure(exc))

    thread = threading.Thread(target=produce, name="fcosdet-decode", daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


@dataclass(frozen=True)
class _Failure:
    exc: BaseException


class Worker:
    """Calls `fn(item)` for each `put` item in one thread, with at most `maxsize` waiting;
    `close()` waits for the rest and raises the thread's error, if any (so does the next `put`)."""

    def __init__(self, fn: Callable[[T], None], *, maxsize: int, name: str = "fcosdet-encode") -> None:
        self.fn, self.items = fn, queue.Queue(maxsize=max(1, maxsize))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.items.get()) is not None:
            if self.error is None:
                try:
                    self.fn(item)
                except BaseException as exc:  # raised in the caller's thread
                    self.error = exc

    def put(self, item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.items.put(item)

    def close(self) -> None:
        self.items.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def detect_frames(det: Detector, frames: Iterable[VideoFrame], *, source: str, batch_size: int,
                  classes: Sequence[str] | None = None, tracker: Any | None = None) -> Iterator[FrameResult]:
    """Frames -> batches of `batch_size` through `det.predict_batch` -> one FrameResult per frame,
    in order (`tracker.update` gives track ids, frame by frame)."""
    for batch in batched(frames, batch_size):
        results = det.predict_batch([f.image for f in batch], classes=classes)  # B Results
        for frame, r in zip(batch, results):
            if tracker is not None:
                r = tracker.update(r)
            yield FrameResult(source=source, index=frame.index, time=frame.time, image=frame.image, results=r)


def _queue_size(batch_size: int) -> int:
    return QUEUE_BATCHES * batch_size


def stream(det: Detector, source: str | Path, *, batch_size: int = 4, vid_stride: int = 1, track: bool = False,
           classes: Sequence[str] | None = None) -> Iterator[FrameResult]:
    """`Detector.stream`: every frame of a video file / URL / device / rtsp:// stream (or the
    images of a file, folder or glob) with its detections, decoded one queue ahead of the model;
    videos that stop early warn once, naming the file (the frames before are yielded)."""
    from fcosdet.deploy.tracking import Tracker

    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    found = find_sources([str(source)])
    try:
        if found.images:
            tracker = Tracker(frame_rate=float(DEFAULT_FPS / vid_stride)) if track else None
            frames = threaded(image_frames(found.images, vid_stride=vid_stride), maxsize=_queue_size(batch_size))
            try:
                yield from detect_frames(det, frames, source=str(source), batch_size=batch_size, classes=classes,
                                         tracker=tracker)
            finally:
                frames.close()  # a consumer that stops early stops the decode thread too
        for video in found.videos:
            with VideoReader(video, vid_stride=vid_stride, name=found.display_name(video)) as reader:
                tracker = Tracker(frame_rate=float(reader.output_fps)) if track else None
                frames = threaded(reader, maxsize=_queue_size(batch_size))
                try:
                    yield from detect_frames(det, frames, source=found.display_name(video), batch_size=batch_size,
                                             classes=classes, tracker=tracker)
                finally:
                    frames.close()  # before the container closes
            if reader.fault:
                warn(reader.fault)
    finally:
        found.cleanup()


# ----------------------------------------------------------------------------- predict on a video


@dataclass(frozen=True)
class VideoOutputs:
    video: Path  # the annotated video
    jsonl: Path  # one JSON line per frame
    frames: int  # frames written (ceil(decoded / stride))
    decoded: int  # frames decoded (before the stride)
    detections: int
    fps: Fraction  # the annotated video's frame rate
    codec: str  # "H.264" / "VP9"
    fault: str | None  # why decoding stopped early, if it did
    interrupted: bool  # a live stream stopped with Ctrl-C


def output_stem(source: str) -> str:
    """The outputs' name: the file's stem; for a device or stream its path, sanitised (video0, cam_1)."""
    if is_live(source):
        text = source.split("://", 1)[-1]
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in text.strip("/")).strip("_")[-80:] or "stream"
    return Path(source).stem


def predict_video(det: Detector, source: str | VideoReader, *, out_dir: Path, name: str | None = None, batch_size: int = 4,
                  vid_stride: int = 1, track: bool = False, classes: Sequence[str] | None = None,
                  draw_thr: float = DRAW_THR, stem: str | None = None, show_progress: bool = True) -> VideoOutputs:
    """One video through the pipeline -> `out_dir/STEM_det.mp4` (or .webm) and `out_dir/STEM.jsonl`.
    Ctrl-C on a live stream (or any video) ends it cleanly: both files are closed and complete.
    `source`: a path / URL / device, or a VideoReader already open (its stride is used; it is closed)."""
    from fcosdet.deploy.tracking import Tracker

    encoder, suffix, codec_name = browser_codec()
    opened = source if isinstance(source, VideoReader) else VideoReader(source, vid_stride=vid_stride, name=name)
    vid_stride = opened.vid_stride
    stem = stem or output_stem(opened.source)
    with opened as reader:
        fps = reader.output_fps
        writer = VideoWriter(out_dir / f"{stem}_det{suffix}", fps=fps, width=reader.info.width,
                             height=reader.info.height, codec=encoder)
        jsonl_path = out_dir / f"{stem}.jsonl"
        counts = {"frames": 0, "detections": 0}
        with open(jsonl_path, "w") as jsonl:
            def emit(fr: FrameResult) -> None:
                writer.write(draw_frame(fr, draw_thr=draw_thr))
                jsonl.write(json.dumps(fr.to_record()) + "\n")
                counts["frames"] += 1
                counts["detections"] += len(fr.results)

            worker = Worker(emit, maxsize=_queue_size(batch_size))
            tracker = Tracker(frame_rate=float(fps)) if track else None
            frames = threaded(reader, maxsize=_queue_size(batch_size))
            interrupted = False
            results = detect_frames(det, frames, source=reader.name, batch_size=batch_size, classes=classes,
                                    tracker=tracker)
            total = expected_frames(reader.info.frames or 0, vid_stride)
            try:
                for fr in progress(results, total=total, desc=f"predict {stem}", enabled=show_progress):
                    worker.put(fr)
            except KeyboardInterrupt:
                interrupted = True
            finally:
                frames.close()  # stops the decode thread before the container closes
                worker.close()
                writer.close()
    if counts["frames"] == 0:
        writer.path.unlink(missing_ok=True)
        jsonl_path.unlink(missing_ok=True)
        raise UserError(reader.fault or f"{reader.name} holds no video frame; check the file")
    return VideoOutputs(video=writer.path, jsonl=jsonl_path, frames=counts["frames"], decoded=reader.decoded,
                        detections=counts["detections"], fps=fps, codec=codec_name, fault=reader.fault,
                        interrupted=interrupted)


def expected_frames(decoded: int, vid_stride: int) -> int:
    """Frames the stride keeps of `decoded`: ceil(decoded / vid_stride)."""
    return math.ceil(decoded / vid_stride)
