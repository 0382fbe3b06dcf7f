"""Videos, streams, URLs, globs and tracking (issue 22): `fcosdet predict` on a generated video of
moving shapes, `Detector.stream`, ByteTrack's ids against the video's ground truth."""
from __future__ import annotations

import functools
import http.server
import json
import math
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from helpers import error_line
from PIL import Image

from fcosdet.cli.main import run as cli
from fcosdet.data.synthetic_video import write_moving_shapes
from fcosdet.deploy.predictor import Detector
from fcosdet.deploy.sources import find_sources
from fcosdet.deploy.tracking import Tracker, id_measures
from fcosdet.deploy.video import VideoWriter, browser_codec, threaded
from fcosdet.errors import UserError

FRAMES, STRIDE = 25, 2  # the predict clip: ceil(25 / 2) = 13 frames kept
SHORT = 6  # frames of the video served over http


@pytest.fixture(scope="module")
def det(demo_model) -> Detector:
    return Detector.from_file(demo_model["model"])


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip") / "shapes.mp4"
    write_moving_shapes(path, num_frames=FRAMES, seed=1)
    return path


def _decode(path: Path) -> tuple[list[np.ndarray], dict]:
    """Every frame (H, W, 3) uint8 RGB of a video, read with PyAV alone, and its stream's facts."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        facts = {"codec": stream.codec_context.name, "pix_fmt": stream.codec_context.pix_fmt,
                 "rate": stream.average_rate, "size": (stream.codec_context.height, stream.codec_context.width)}
    return frames, facts


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- pure parts


def test_id_measures_on_a_hand_built_case():
    box = lambda x: np.array([[x, 0, x + 10, 10]], np.float32)  # noqa: E731
    two = lambda a, b: np.concatenate([box(a), box(b)])  # noqa: E731
    truth = [([1, 2], two(0, 50))] * 4
    # object 1 keeps id 7; object 2 is 8, then 9 for two frames (one switch), then missed; one false box
    predicted = [([7, 8], two(0, 50)), ([7, 9], two(1, 50)), ([7, 9, 5], np.concatenate([two(0, 50), box(100)])),
                 ([7], box(0))]
    m = id_measures(truth, predicted)
    # best pairing 1-7 (4 frames) and 2-9 (2 frames): IDTP 6 of 8 predicted and 8 truth boxes
    assert (m["idtp"], m["idfp"], m["idfn"], m["id_switches"]) == (6, 2, 2, 1)
    assert m["idf1"] == pytest.approx(12 / 16)
    assert id_measures(truth, [([3, 4], two(0, 50))] * 4)["idf1"] == 1.0


def test_the_decode_queue_stays_bounded():
    produced = []

    def items():
        for i in range(50):
            produced.append(i)
            yield i

    consumed = 0
    for _ in threaded(items(), maxsize=3):
        time.sleep(0.002)
        consumed += 1
        assert len(produced) - consumed <= 3 + 1  # the queue, and the one item the producer holds
    assert consumed == 50


def test_the_writer_picks_a_browser_codec_and_pads_odd_sizes(tmp_path):
    encoder, suffix, _ = browser_codec()
    assert (encoder, suffix) == ("libx264", ".mp4"), "the PyPI av wheel ships libx264"
    path = tmp_path / f"odd{suffix}"
    with VideoWriter(path, fps=12, width=33, height=27) as writer:
        for i in range(5):
            writer.write(np.full((27, 33, 3), 40 * i, np.uint8))
    frames, facts = _decode(path)
    assert (len(frames), facts["codec"], facts["pix_fmt"], facts["rate"], facts["size"]) == (5, "h264", "yuv420p", 12,
                                                                                             (28, 34))


# ----------------------------------------------------------------------------- predict on a video


@pytest.mark.slow
def test_predict_a_video_with_a_stride(clip, det, demo_model, tmp_path, capsys):
    out = tmp_path / "out"
    cli(["predict", str(demo_model["model"]), str(clip), "--vid-stride", str(STRIDE), "--batch-size", "4",
         "--track", "--out", str(out)])
    kept = math.ceil(FRAMES / STRIDE)
    lines = _lines(out / "shapes.jsonl")
    assert [row["frame"] for row in lines] == list(range(0, FRAMES, STRIDE)) and len(lines) == kept
    assert [row["time"] for row in lines] == pytest.approx([i / 30 for i in range(0, FRAMES, STRIDE)], abs=1e-6)
    drawn, facts = _decode(out / "shapes_det.mp4")
    assert (len(drawn), facts["codec"], facts["pix_fmt"], facts["rate"]) == (kept, "h264", "yuv420p", 30 / STRIDE)
    # the frames' detections are the decoded frames' through Detector.predict (in the same batches of 4)
    frames = _decode(clip)[0][::STRIDE]
    expected = [r for i in range(0, kept, 4) for r in det.predict(frames[i:i + 4])]
    for row, r in zip(lines, expected):
        dets = row["detections"]
        assert len(dets) == len(r)
        assert np.allclose([d["bbox"] for d in dets], [b for b in _xywh(r.boxes)], atol=0.011)
        assert np.allclose([d["score"] for d in dets], r.scores.numpy(), atol=1e-5)
        assert all("track_id" in d for d in dets)
    best = sorted(lines[-1]["detections"], key=lambda d: -d["score"])[:3]  # the three shapes
    assert len({d["track_id"] for d in best} - {None}) == 3
    assert f"{kept} frames (1 in 2 of {FRAMES}) at 15 fps" in capsys.readouterr().out


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in boxes.tolist()]


@pytest.mark.slow
def test_a_truncated_video_warns_once_and_keeps_the_frames_before(clip, demo_model, tmp_path, capsys):
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])  # +faststart: the index comes first, the frames end early
    capsys.readouterr()
    cli(["predict", str(demo_model["model"]), str(cut), "--out", str(tmp_path / "out")])
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("predict cut:")]
    assert len(err) == 1 and err[0].startswith(f"fcosdet: warning: {cut}:") and "kept" in err[0], err
    lines = _lines(tmp_path / "out" / "cut.jsonl")
    assert 0 < len(lines) < FRAMES and [row["frame"] for row in lines] == list(range(len(lines)))
    assert len(_decode(tmp_path / "out" / "cut_det.mp4")[0]) == len(lines)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(range(256)) * 8)
    assert f"{junk} cannot be opened as a video" in error_line(capsys, ["predict", str(demo_model["model"]), str(junk)])


# ----------------------------------------------------------------------------- other sources


@pytest.fixture
def served(tmp_path, clip):
    """A folder served over http://127.0.0.1:PORT/ for the test (a thread, stopped after)."""
    root = tmp_path / "site"
    root.mkdir()
    write_moving_shapes(root / "clip.mp4", num_frames=SHORT, seed=2)
    Image.fromarray(_decode(clip)[0][3]).save(root / "frame.png")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
def test_urls_of_an_image_and_a_video(served, demo_model, tmp_path, capsys):
    out = tmp_path / "out"
    cli(["predict", str(demo_model["model"]), f"{served}/frame.png", f"{served}/clip.mp4", "--out", str(out)])
    assert len(_lines(out / "clip.jsonl")) == SHORT
    coco = json.loads((out / "predictions.json").read_text())
    assert coco and {d["file_name"] for d in coco} == {f"{served}/frame.png"}
    assert (out / "frame_det.png").is_file()
    assert "404" in error_line(capsys, ["predict", str(demo_model["model"]), f"{served}/missing.jpg"])
    with pytest.raises(UserError, match="download cap"):
        find_sources([f"{served}/clip.mp4"], max_download_bytes=1000)


@pytest.mark.slow
def test_a_quoted_glob_of_images(clip, demo_model, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, frame in enumerate(_decode(clip)[0][:3]):
        Image.fromarray(frame).save(folder / f"f{i}.png")
    (folder / "notes.txt").write_text("not an image")
    cli(["predict", str(demo_model["model"]), str(folder / "*.png"), "--out", str(tmp_path / "out")])
    coco = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {Path(d["file_name"]).name for d in coco} == {"f0.png", "f1.png", "f2.png"}
    assert "matches no image or video" in error_line(capsys, ["predict", str(demo_model["model"]),
                                                              str(folder / "*.jpg")])


def test_devices_and_streams_that_are_not_there_are_one_line(capsys, demo_model):
    model = str(demo_model["model"])
    assert "no capture device /dev/video97" in error_line(capsys, ["predict", model, "/dev/video97"])
    assert "rtsp://127.0.0.1:9/live cannot be opened" in error_line(capsys, ["predict", model, "rtsp://127.0.0.1:9/live"])


# ----------------------------------------------------------------------------- tracking


@pytest.mark.slow
def test_tracking_the_moving_shapes(det, clip, tmp_path, monkeypatch):
    truth = write_moving_shapes(tmp_path / "long.mp4", num_frames=100, seed=3)
    rates, init = [], Tracker.__init__

    def spy(self, **kw):
        rates.append(kw["frame_rate"])
        init(self, **kw)

    monkeypatch.setattr(Tracker, "__init__", spy)
    frames = list(det.stream(tmp_path / "long.mp4", batch_size=4, track=True))
    assert rates == [30.0] and [f.index for f in frames] == list(range(100))
    tracked = [f.results.select(f.results.track_ids >= 0) for f in frames]
    predicted = [(r.track_ids.tolist(), r.boxes.numpy()) for r in tracked]
    m = id_measures([(i.tolist(), b) for i, b in zip(truth.ids, truth.boxes)], predicted)
    assert m["idf1"] >= 0.9 and m["id_switches"] <= 1, m
    assert len(list(det.stream(clip, batch_size=4, vid_stride=4, track=True))) == math.ceil(FRAMES / 4)
    threads = threading.active_count()
    early = det.stream(clip, batch_size=2)
    assert next(early).index == 0
    early.close()  # a consumer that stops early stops the decode thread
    assert threading.active_count() == threads
    assert rates[-1] == 7.5  # the tracker runs at the rate of the frames it sees
