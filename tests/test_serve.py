"""`fcosdet serve` under load and bad input, on loopback: 8 clients for LOAD_SECONDS mixed with bad
requests (no 5xx for a good one, every bad one its 4xx, the server alive after, each answer equal to
`fcosdet predict` on the same file); a stalled body times out while others are served; a full queue
is 503 with Retry-After; per-request options equal the Detector's; the pure parts on hand-built cases.
A tiny random-weights model file (fast), mixed image sizes from ../shared/data."""
from __future__ import annotations

import io
import json
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import httpx
import pytest
import torch
from helpers import SPREAD_IDS, SPREAD_NAMES, SPREAD_TINY, error_line, spread_model

from fcosdet.cli.main import build_parser
from fcosdet.cli.predict import predict_files
from fcosdet.deploy.predictor import Detector
from fcosdet.deploy.results import Results
from fcosdet.engine.evaluation.coco import coco_boxes
from fcosdet.io.model_file import ModelFile
from fcosdet.serve.app import ServeSettings, create_app, make_server
from fcosdet.serve.batching import group_by, padded_shape
from fcosdet.serve.limits import Limits
from fcosdet.serve.options import Options, apply_options

LOAD_SECONDS = 60  # what the issue asks: 8 concurrent clients for 60 s
CLIENTS = 8
NAMES, IDS, TINY = SPREAD_NAMES, SPREAD_IDS, SPREAD_TINY
IMAGES = ["bccd/images/BloodImage_00000.jpg", "bccd/images/BloodImage_00001.jpg",  # 640 x 480
          "coco128/images/000000000036.jpg",  # 481 x 640
          "coco128/images/000000000061.jpg",
          "aquarium/images/IMG_2274_jpeg_jpg.rf.2f319e949748145fb22dcb52bb325a0c.jpg"]  # 768 x 1024
SERVER_FLAGS = ["--max-batch", "8", "--max-upload-mb", "1", "--max-megapixels", "4", "--timeout-s", "2",
                "--queue-size", "64"]


def tiny_model(path: Path) -> Path:
    return spread_model(path)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("serve-model") / "model.pt")


@pytest.fixture(scope="module")
def images(shared_data) -> list[Path]:
    return [shared_data / rel for rel in IMAGES]


@pytest.fixture(scope="module")
def reference(model_file, images, tmp_path_factory) -> dict[str, list[dict]]:
    """`fcosdet predict` (one image per forward pass) on the files: file name -> its COCO-style detections."""
    coco = predict_files(model_file, [str(p) for p in images], out_dir=tmp_path_factory.mktemp("ref"),
                         batch_size=1, device="cpu")
    return {str(p): [d for d in coco if d["file_name"] == str(p)] for p in images}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen | None = None, log=None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the server exited with {proc.returncode}: {log.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not come up within {timeout} s")


@pytest.fixture(scope="module")
def server(model_file, tmp_path_factory):
    """`fcosdet serve` in a subprocess (the command a user runs) on a free loopback port."""
    port = _free_port()
    log = (tmp_path_factory.mktemp("server") / "server.log").open("w+b")  # a file: a full pipe would block it
    proc = subprocess.Popen([sys.executable, "-m", "fcosdet.cli", "serve", str(model_file), "--port", str(port),
                             *SERVER_FLAGS], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield {"url": url, "port": port, "proc": proc}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


# ----------------------------------------------------------------------------- bad requests


def _png_claiming(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims width x height pixels (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def _chunked(data: bytes):
    for start in range(0, len(data), 64 * 1024):
        yield data[start:start + 64 * 1024]


def _bad_requests(images: list[Path]) -> list[tuple[str, Callable[[], dict], int]]:
    """(name, a function giving httpx.post's keyword arguments, the status it must get)."""
    jpeg = images[0].read_bytes()
    big = random.Random(0).randbytes(1_300_000)  # over --max-upload-mb 1
    boundary = "fcosdetboundary"
    no_file = f"--{boundary}\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--{boundary}--\r\n"
    return [
        ("undecodable", lambda: {"content": b"this is not an image"}, 400),
        ("truncated jpeg", lambda: {"content": jpeg[: len(jpeg) // 3]}, 400),
        ("empty body", lambda: {"content": b""}, 400),
        ("bomb 40000 x 40000", lambda: {"content": _png_claiming(40000, 40000)}, 413),
        ("3000 x 3000 over --max-megapixels 4", lambda: {"content": _png_claiming(3000, 3000)}, 413),
        ("over --max-upload-mb (Content-Length)", lambda: {"content": big}, 413),
        ("over --max-upload-mb (chunked, counted)", lambda: {"content": _chunked(big)}, 413),
        ("multipart without a file", lambda: {"content": no_file.encode(), "headers": {
            "Content-Type": f"multipart/form-data; boundary={boundary}"}}, 400),
        ("unknown class", lambda: {"content": jpeg, "params": {"classes": "dog"}}, 400),
        ("score_thr not a number", lambda: {"content": jpeg, "params": {"score_thr": "high"}}, 400),
        ("score_thr below the model's", lambda: {"content": jpeg, "params": {"score_thr": "0.01"}}, 400),
        ("unknown parameter", lambda: {"content": jpeg, "params": {"thr": "0.5"}}, 400),
    ]


# ----------------------------------------------------------------------------- comparing with `fcosdet predict`


def _as_coco(response: dict) -> list[tuple[int, float, list[float]]]:
    """A /predict answer as `fcosdet predict` writes it: category id, score (5 decimals), bbox xywh (0.01 px)."""
    dets = response["detections"]
    boxes = torch.tensor([d["box"] for d in dets], dtype=torch.float32).reshape(-1, 4)  # (D, 4) the float32 values
    return [(d["category_id"], round(d["score"], 5), [round(v, 2) for v in box])
            for d, box in zip(dets, coco_boxes(boxes))]


def assert_same_as_predict(response: dict, expected: list[dict], what: str) -> None:
    """Equal to `fcosdet predict` within the rounding of batched convolutions (~1e-4 px, ~1e-6 in scores)."""
    got = _as_coco(response)
    assert len(got) == len(expected), f"{what}: {len(got)} detections, `fcosdet predict` has {len(expected)}"
    for (cat, score, box), ref in zip(got, expected):
        assert cat == ref["category_id"], what
        assert abs(score - ref["score"]) <= 2e-5, what
        assert max(abs(a - b) for a, b in zip(box, ref["bbox"])) <= 0.02, what


# ----------------------------------------------------------------------------- the load test


def _client(url: str, images: list[Path], bad: list, reference: dict, stop_at: float, seed: int) -> dict:
    """One client's loop until stop_at: mostly good requests (raw body or multipart), every 4th a bad one."""
    rng, tally = random.Random(seed), {"good": 0, "bad": 0, "failures": []}
    blobs = {str(p): p.read_bytes() for p in images}
    with httpx.Client(base_url=url, timeout=30.0) as http:
        step = 0
        while time.monotonic() < stop_at:
            step += 1
            if step % 4 == 0:
                name, make, status = bad[rng.randrange(len(bad))]
                r = http.post("/predict", **make())
                tally["bad"] += 1
                body = r.json()
                if r.status_code != status or "\n" in body.get("error", "\n"):
                    tally["failures"].append(f"{name}: {r.status_code} {r.text[:200]}")
                continue
            path = rng.choice(list(blobs))
            if step % 2:
                r = http.post("/predict", content=blobs[path])
            else:
                r = http.post("/predict", files={"file": (Path(path).name, blobs[path], "image/jpeg")})
            tally["good"] += 1
            if r.status_code != 200:
                tally["failures"].append(f"good {path}: {r.status_code} {r.text[:200]}")
                continue
            try:
                assert_same_as_predict(r.json(), reference[path], path)
            except AssertionError as exc:
                tally["failures"].append(f"differs from fcosdet predict: {exc}")
    return tally


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


@pytest.mark.slow
@pytest.mark.integration
def test_8_clients_with_bad_requests_get_their_answers_and_the_server_lives(server, images, reference):
    url = server["url"]
    before = httpx.get(f"{url}/metrics").text
    stop_at = time.monotonic() + LOAD_SECONDS
    with ThreadPoolExecutor(CLIENTS) as pool:
        tallies = list(pool.map(lambda seed: _client(url, images, _bad_requests(images), reference, stop_at, seed),
                                range(CLIENTS)))
    failures = [f for t in tallies for f in t["failures"]]
    good, bad = sum(t["good"] for t in tallies), sum(t["bad"] for t in tallies)
    assert not failures, f"{len(failures)} of {good + bad} requests: {failures[:5]}"
    assert good >= CLIENTS and bad >= CLIENTS, (good, bad)
    assert server["proc"].poll() is None and httpx.get(f"{url}/health").json()["status"] == "ok"
    after = httpx.get(f"{url}/metrics").text
    ok = 'fcosdet_requests_total{code="200",endpoint="/predict"}'
    assert _metric(after, ok) - _metric(before, ok) == good
    assert _metric(after, "fcosdet_errors_total") - _metric(before, "fcosdet_errors_total") == bad
    assert _metric(after, "fcosdet_batch_size_count") - _metric(before, "fcosdet_batch_size_count") <= good
    assert _metric(after, "fcosdet_errors_total{code=\"500\"}") == 0


def _stall_while_served(server, images, reference, sent: bytes) -> tuple[socket.socket, float]:
    """Open a connection, send `sent` and stop; meanwhile a good request must be answered as
    `fcosdet predict` answers it. Returns the stalled socket (10 s read timeout) and when it started."""
    stalled = socket.create_connection(("127.0.0.1", server["port"]))
    start = time.monotonic()
    stalled.sendall(sent)
    r = httpx.post(f"{server['url']}/predict", content=images[0].read_bytes(), timeout=30.0)
    assert r.status_code == 200
    assert_same_as_predict(r.json(), reference[str(images[0])], f"while a client stalls after {sent[:20]!r}")
    stalled.settimeout(10.0)
    return stalled, start


@pytest.mark.slow
@pytest.mark.integration
def test_half_sent_headers_time_out_while_others_are_served(server, images, reference):
    """A client opens a connection and sends half a request line, then nothing: the server closes it
    after --timeout-s 2 (uvicorn alone would keep it open for ever); a good request meanwhile is answered."""
    hung, start = _stall_while_served(server, images, reference, b"POST /pre")
    assert hung.recv(4096) == b""  # closed by the server, not by this timeout (that would raise)
    hung.close()
    assert 1.8 <= time.monotonic() - start <= 8.0
    silent = socket.create_connection(("127.0.0.1", server["port"]))  # connects, sends nothing
    silent.settimeout(10.0)
    start = time.monotonic()
    assert silent.recv(4096) == b"" and 1.8 <= time.monotonic() - start <= 8.0
    silent.close()


@pytest.mark.slow
@pytest.mark.integration
def test_a_stalled_body_times_out_while_others_are_served(server, images, reference):
    """A client sends the headers and 10 of 1000 bytes, then nothing: 408 after --timeout-s 2, the connection
    closed; a good request meanwhile is answered at once."""
    stalled, start = _stall_while_served(
        server, images, reference, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
    answer = b""
    while chunk := stalled.recv(4096):  # until the server closes the connection
        answer += chunk
    stalled.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"--timeout-s" in answer, answer[:300]
    assert 1.8 <= time.monotonic() - start <= 8.0


@pytest.mark.slow
@pytest.mark.integration
def test_info_and_per_request_options_equal_the_detector(server, model_file, images):
    info = httpx.get(f"{server['url']}/info").json()
    assert info["classes"] == NAMES and info["category_ids"] == IDS and info["model"] == str(model_file)
    assert info["serve"]["max_batch"] == 8 and info["serve"]["max_megapixels"] == 4.0
    assert info["test"]["score_thr"] == 0.05 and info["test"]["max_per_img"] == 12
    data = images[2].read_bytes()
    full = httpx.post(f"{server['url']}/predict", content=data).json()["detections"]
    scores = sorted((d["score"] for d in full), reverse=True)
    thr = (scores[2] + scores[3]) / 2  # between two detections: exactly three are above it
    high = httpx.post(f"{server['url']}/predict", content=data, params={"score_thr": thr}).json()
    at_thr = Detector.from_file(model_file, score_thr=thr).predict(images[2])  # the model run at that threshold
    assert len(high["detections"]) == len(at_thr) == 3
    assert torch.allclose(torch.tensor([d["box"] for d in high["detections"]]), at_thr.boxes, atol=1e-3)
    only = httpx.post(f"{server['url']}/predict", content=data, params=[("classes", "RBC,WBC")]).json()["detections"]
    assert only == [d for d in full if d["class_name"] in ("RBC", "WBC")]
    top2 = httpx.post(f"{server['url']}/predict", content=data, params={"max_det": 2}).json()["detections"]
    assert top2 == full[:2] and top2[0]["score"] >= top2[1]["score"]


def _thread_server(model_file: Path, *, queue_size: int, max_batch: int):
    """An in-process uvicorn server (a thread) -> (url, stop())."""
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=0.0, queue_size=queue_size, keep_alive_s=5,
                             limits=Limits(max_upload_bytes=2 ** 22, max_pixels=4_000_000, timeout_s=30.0,
                                           result_timeout_s=60.0))
    port = _free_port()
    app = create_app(Detector.from_file(model_file), model_path=model_file, settings=settings)
    srv = make_server(app, host="127.0.0.1", port=port, settings=settings)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    _wait_healthy(url)

    def stop() -> None:
        srv.should_exit = True
        thread.join(timeout=30)
    return url, stop


@pytest.mark.slow
def test_a_full_queue_is_503_with_retry_after_and_the_rest_are_answered(model_file, images):
    url, stop = _thread_server(model_file, queue_size=1, max_batch=1)
    try:
        data = images[-1].read_bytes()  # the largest image
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda _: httpx.post(f"{url}/predict", content=data, timeout=60.0), range(12)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 503} and codes.count(200) >= 1, codes
        busy = [r for r in responses if r.status_code == 503]
        assert all(r.headers["retry-after"] == "1" and "--queue-size" in r.json()["error"] for r in busy)
        assert httpx.post(f"{url}/predict", content=data, timeout=60.0).status_code == 200  # and it carries on
    finally:
        stop()


@pytest.mark.slow
def test_an_exported_weights_file_serves_what_predict_gives(model_file, images, reference, tmp_path):
    from fcosdet.deploy.build import build_inference
    from fcosdet.deploy.export import export_model

    weights = export_model(build_inference(ModelFile.load(model_file)), "weights", tmp_path / "model.safetensors")
    url, stop = _thread_server(weights, queue_size=8, max_batch=4)
    try:
        assert httpx.get(f"{url}/info").json()["model"] == str(weights)
        for path in images[1:3]:
            r = httpx.post(f"{url}/predict", files={"file": (path.name, path.read_bytes())}, timeout=60.0)
            assert_same_as_predict(r.json(), reference[str(path)], f"{path} through {weights.name}")
    finally:
        stop()


# ----------------------------------------------------------------------------- the command line


def test_serve_binds_to_loopback_unless_told_and_bad_flags_are_one_line(tmp_path, model_file, capsys):
    args = build_parser().parse_args(["serve", "model.pt"])
    assert (args.host, args.port) == ("127.0.0.1", 8000)
    assert "missing.pt" in error_line(capsys, ["serve", str(tmp_path / "missing.pt"), "--port", "0"])
    assert "--max-batch" in error_line(capsys, ["serve", str(model_file), "--max-batch", "0"])
    assert "test.*" in error_line(capsys, ["serve", str(model_file), "--set", "model.depth=50"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        line = error_line(capsys, ["serve", str(model_file), "--port", str(taken.getsockname()[1])])
    assert "--port" in line


# ----------------------------------------------------------------------------- pure parts


def test_group_by_keeps_first_seen_order():
    assert group_by([]) == []
    assert group_by([(1, 2), (3, 4), (1, 2), (5, 6), (3, 4)]) == [[0, 2], [1, 4], [3]]


def test_padded_shape_is_the_resize_rounded_up_to_32(model_file):
    det = Detector.from_file(model_file)  # data.scale (224, 160): short side 160, long side at most 224
    assert padded_shape(det, 640, 480) == (160, 224)  # resized (160, 213) -> padded (160, 224)
    assert padded_shape(det, 481, 640) == (224, 160)  # resized (213, 160)
    assert padded_shape(det, 160, 160) == (160, 160)


def test_apply_options_on_hand_built_results():
    r = Results(boxes=torch.arange(16, dtype=torch.float32).reshape(4, 4), scores=torch.tensor([0.9, 0.2, 0.6, 0.4]),
                labels=torch.tensor([0, 1, 1, 2]), names=NAMES, category_ids=IDS, orig_size=(10, 20))
    assert apply_options(r, Options()).scores.tolist() == r.scores.tolist()
    assert apply_options(r, Options(score_thr=0.4)).scores.tolist() == pytest.approx([0.9, 0.6])  # strictly above
    assert apply_options(r, Options(labels=(1, 2))).labels.tolist() == [1, 1, 2]
    kept = apply_options(r, Options(max_det=2))
    assert kept.scores.tolist() == pytest.approx([0.9, 0.6]) and kept.boxes[1].tolist() == [8, 9, 10, 11]
    both = apply_options(r, Options(labels=(1, 2), max_det=1))
    assert both.labels.tolist() == [1] and both.scores.tolist() == pytest.approx([0.6])
    d = kept.to_dict()
    assert d["width"] == 20 and d["height"] == 10 and d["file_name"] is None
    assert d["detections"][1] == {"box": [8.0, 9.0, 10.0, 11.0], "score": pytest.approx(0.6), "label": 1,
                                  "class_name": "RBC", "category_id": 5}
    assert json.loads(json.dumps(d)) == d


def test_decode_refuses_before_decoding_and_reads_like_load_image(images):
    from PIL import Image

    from fcosdet.data.images import load_image
    from fcosdet.serve.limits import Refused, decode_image

    for data, status in [(b"", 400), (b"nope", 400), (_png_claiming(40000, 40000), 413),
                         (_png_claiming(3000, 3000), 413), (_png_claiming(100, 100), 400)]:
        with pytest.raises(Refused) as info:
            decode_image(data, max_pixels=4_000_000)
        assert info.value.status == status and "\n" not in info.value.reason
    buffer = io.BytesIO()
    Image.open(images[2]).convert("L").save(buffer, format="PNG")  # grayscale: converted to RGB as files are
    decoded = decode_image(buffer.getvalue(), max_pixels=4_000_000)
    assert decoded.mode == "RGB" and decoded.tobytes() == load_image(io.BytesIO(buffer.getvalue())).tobytes()
    assert decode_image(images[0].read_bytes(), max_pixels=4_000_000).tobytes() == load_image(images[0]).tobytes()
