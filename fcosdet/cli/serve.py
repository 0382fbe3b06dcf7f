"""`fcosdet serve MODEL_FILE`: the model over HTTP (POST /predict, GET /health, /info, /metrics), with
micro-batching and limits on bad input (fcosdet.serve.app). Binds to 127.0.0.1 unless --host says otherwise."""
from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Any

from fcosdet.cli.common import add_set_option, test_overrides
from fcosdet.console import say, warn
from fcosdet.deploy.backends import ONNX_RUNTIMES
from fcosdet.errors import UserError
from fcosdet.io.model_file import MODEL_SUFFIXES

# the one place the serve defaults are set (measured in benchmarks/results/serve_load_cpu.json)
DEFAULTS = {"host": "127.0.0.1", "port": 8000, "max_batch": 8, "max_wait_ms": 0.0, "max_upload_mb": 20.0,
            "max_megapixels": 40.0, "queue_size": 32, "timeout_s": 30.0,
            "result_timeout_s": 60.0, "keep_alive_s": 5}


def add_parser(sub: Any) -> None:
    sv = sub.add_parser("serve", help="serve a model over HTTP (POST /predict, /health, /info, /metrics)",
                        description="Serve a model file over HTTP with FastAPI + uvicorn. POST /predict takes an "
                        "image (raw body or multipart file) and query score_thr, classes, max_det; it answers "
                        "the detections as JSON (boxes in original pixels). Concurrent requests are batched.")
    sv.add_argument("model", type=Path, help=f"the model file ({', '.join(MODEL_SUFFIXES)})")
    sv.add_argument("--host", default=DEFAULTS["host"],
                    help="the address to listen on (0.0.0.0: every interface; there is no authentication)")
    sv.add_argument("--port", type=int, default=DEFAULTS["port"], help="the TCP port")
    sv.add_argument("--max-batch", type=int, default=DEFAULTS["max_batch"],
                    help="images per forward pass at most (1: no batching)")
    sv.add_argument("--max-wait-ms", type=float, default=DEFAULTS["max_wait_ms"],
                    help="how long a batch waits for more requests once it has one (default: 0, it takes "
                         "what is queued and never waits)")
    sv.add_argument("--queue-size", type=int, default=DEFAULTS["queue_size"],
                    help="images waiting at most; beyond it a request gets 503 with Retry-After")
    sv.add_argument("--max-upload-mb", type=float, default=DEFAULTS["max_upload_mb"],
                    help="the largest request body (413 above it)")
    sv.add_argument("--max-megapixels", type=float, default=DEFAULTS["max_megapixels"],
                    help="the largest image its header may claim (413 above it, never decoded)")
    sv.add_argument("--timeout-s", type=float, default=DEFAULTS["timeout_s"],
                    help="a request body must arrive within this, else 408 (a slow or stalled client)")
    sv.add_argument("--result-timeout-s", type=float, default=DEFAULTS["result_timeout_s"],
                    help="the detections must come back within this, else 503 with Retry-After")
    sv.add_argument("--score-thr", type=float, default=None,
                    help="the model's score threshold (default: the model file's test.score_thr); requests "
                         "may only raise it")
    add_set_option(sv, "change a test setting, e.g. --set test.nms_iou=0.6 (test.* keys; repeatable)")
    sv.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (.onnx files run on the cpu)")
    sv.add_argument("--onnx-runtime", choices=ONNX_RUNTIMES, default="onnxruntime", help="what runs an .onnx file")
    sv.set_defaults(func=lambda a: serve(
        a.model, host=a.host, port=a.port, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
        queue_size=a.queue_size, max_upload_mb=a.max_upload_mb, max_megapixels=a.max_megapixels,
        timeout_s=a.timeout_s, result_timeout_s=a.result_timeout_s, score_thr=a.score_thr, test_sets=a.set,
        device=a.device, onnx_runtime=a.onnx_runtime))


def check_settings(*, port: int, max_batch: int, max_wait_ms: float, queue_size: int, max_upload_mb: float,
                   max_megapixels: float, timeout_s: float, result_timeout_s: float, score_thr: float | None) -> None:
    """One UserError naming the flag for a value the server cannot run with."""
    checks = [("--port", port, 0 <= port <= 65535, "0..65535"), ("--max-batch", max_batch, max_batch >= 1, ">= 1"),
              ("--max-wait-ms", max_wait_ms, max_wait_ms >= 0, ">= 0"), ("--queue-size", queue_size, queue_size >= 1,
              ">= 1"), ("--max-upload-mb", max_upload_mb, max_upload_mb > 0, "> 0"),
              ("--max-megapixels", max_megapixels, max_megapixels > 0, "> 0"), ("--timeout-s", timeout_s,
              timeout_s > 0, "> 0"), ("--result-timeout-s", result_timeout_s, result_timeout_s > 0, "> 0"),
              ("--score-thr", score_thr, score_thr is None or 0 <= score_thr <= 1, "in [0, 1]")]
    for flag, value, ok, rule in checks:
        if not ok:
            raise UserError(f"{flag} {value:g} must be {rule}")


def _check_port(host: str, port: int) -> None:
    """A one-line error before the model loads when the address cannot be listened on."""
    try:
        socket.create_server((host, port)).close()
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or "
                        f"--host") from None


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def serve(model: Path, *, host: str = DEFAULTS["host"], port: int = DEFAULTS["port"],
          max_batch: int = DEFAULTS["max_batch"], max_wait_ms: float = DEFAULTS["max_wait_ms"],
          queue_size: int = DEFAULTS["queue_size"], max_upload_mb: float = DEFAULTS["max_upload_mb"],
          max_megapixels: float = DEFAULTS["max_megapixels"], timeout_s: float = DEFAULTS["timeout_s"],
          result_timeout_s: float = DEFAULTS["result_timeout_s"],
          score_thr: float | None = None, test_sets: list[str] = (), device: str = "cpu",
          onnx_runtime: str = "onnxruntime") -> None:
    """Load the model (Detector.from_file: the safe loaders) and serve it until interrupted."""
    from fcosdet.deploy.predictor import Detector
    from fcosdet.serve.app import ServeSettings, create_app, make_server
    from fcosdet.serve.limits import MB, Limits

    check_settings(port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                   max_upload_mb=max_upload_mb, max_megapixels=max_megapixels, timeout_s=timeout_s,
                   result_timeout_s=result_timeout_s, score_thr=score_thr)
    overrides = test_overrides(list(test_sets), command="serve")
    _check_port(host, port)
    detector = Detector.from_file(model, device=device, score_thr=score_thr, test_overrides=overrides,
                                  onnx_runtime=onnx_runtime)
    limits = Limits(max_upload_bytes=int(max_upload_mb * MB), max_pixels=int(max_megapixels * 1e6),
                    timeout_s=timeout_s, result_timeout_s=result_timeout_s)
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size, limits=limits,
                             keep_alive_s=min(DEFAULTS["keep_alive_s"], max(1, int(timeout_s))))
    if not _is_loopback(host):
        warn(f"listening on {host}: anyone who reaches this machine can send images (there is no authentication)")
    say(f"serving {model} ({len(detector.class_names)} classes) on http://{host}:{port}: POST /predict, "
        f"GET /health, /info, /metrics (Ctrl-C stops)")
    make_server(create_app(detector, model_path=model, settings=settings), host=host, port=port,
                settings=settings).run()
