"""`fcosdet serve` under load: requests/s and p50 / p99 latency with 1 and 8 concurrent clients, with
and without micro-batching, and the server's overhead over an in-process `Detector.predict` on the
same 640x480 image (target <= 10 ms). Prints one JSON object.

    .venv/bin/python benchmarks/serve_load.py [--model FILE] [--seconds 10] [--rounds 3] [--threads 1] \
        [--out benchmarks/results/serve_load_cpu.json]

Without --model: random weights of the fcos_r18_cpu preset at its scale (512x384; speed does not depend
on the weights). Each configuration is its own `fcosdet serve` subprocess on loopback, all up at once;
the measuring windows alternate between them in rounds (so a change in the machine's load hits every
configuration alike). Clients are threads with one httpx connection each, posting the raw bytes of bccd
640x480 JPEGs in turn. The overhead alternates the two sides too (one HTTP request from one client, then
one in-process `Detector.predict(path).to_dict()` on the same file), median of the pairwise differences.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report_json import emit  # noqa: E402

from fcosdet.deploy.predictor import Detector  # noqa: E402
from fcosdet.io.model_file import ModelFile  # noqa: E402
from fcosdet.model.build import build_model  # noqa: E402
from fcosdet.presets import preset  # noqa: E402

IMAGES = sorted((ROOT.parent / "shared" / "data" / "bccd" / "images").glob("*.jpg"))[:8]  # all 640 x 480
CONFIGS = [("no batching", ["--max-batch", "1"]),
           ("batch 8, wait 0 ms", ["--max-batch", "8", "--max-wait-ms", "0"]),
           ("batch 8, wait 5 ms", ["--max-batch", "8", "--max-wait-ms", "5"])]


def random_model(path: Path) -> Path:
    torch.manual_seed(0)
    cfg = preset("fcos_r18_cpu")
    cfg.model.num_classes = 3
    ModelFile(model=build_model(cfg.model).state_dict(), config=cfg.to_dict(), class_names=["a", "b", "c"]).save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, flags: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fcosdet.cli", "serve", str(model), "--port", str(port),
                             "--queue-size", "256", "--timeout-s", "120", *flags], cwd=ROOT,
                            env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.25)
    raise SystemExit("the server did not come up")


def client(url: str, blobs: list[bytes], stop_at: float, seed: int) -> list[float]:
    latencies = []
    with httpx.Client(base_url=url, timeout=120.0) as http:
        i = seed
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            r = http.post("/predict", content=blobs[i % len(blobs)])
            latencies.append(time.perf_counter() - start)
            if r.status_code != 200:
                raise SystemExit(f"{r.status_code}: {r.text}")
            i += 1
    return latencies


def window(url: str, blobs: list[bytes], *, clients: int, seconds: float) -> tuple[list[float], float]:
    """`clients` threads posting for `seconds` -> (latencies, wall seconds)."""
    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        runs = list(pool.map(lambda k: client(url, blobs, start + seconds, k), range(clients)))
    return [x for run in runs for x in run], time.monotonic() - start


def batch_sizes(url: str) -> tuple[float, float]:
    """(images, batches) the server's /metrics counted so far."""
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    value = {name: sum(float(x.split()[-1]) for x in lines if x.startswith(name))
             for name in ("fcosdet_batch_size_sum", "fcosdet_batch_size_count")}
    return value["fcosdet_batch_size_sum"], value["fcosdet_batch_size_count"]


def summary(latencies: list[float], wall: float, images_batches: tuple[float, float]) -> dict:
    lat = sorted(latencies)
    images, batches = images_batches
    return {"requests": len(lat), "requests_per_s": round(len(lat) / wall, 2),
            "p50_ms": round(1000 * lat[len(lat) // 2], 1),
            "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
            "mean_batch_size": round(images / batches, 2) if batches else None}


def overhead(url: str, detector: Detector, pairs: int) -> dict:
    """HTTP request vs in-process predict on the same file, alternating; medians and the median difference."""
    http_ms, local_ms = [], []
    with httpx.Client(base_url=url, timeout=120.0) as http:
        for i in range(pairs):
            path = IMAGES[i % len(IMAGES)]
            start = time.perf_counter()
            assert http.post("/predict", content=path.read_bytes()).status_code == 200
            http_ms.append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            detector.predict(path).to_dict()
            local_ms.append(1000 * (time.perf_counter() - start))
    diffs = [a - b for a, b in zip(http_ms, local_ms)]
    return {"pairs": pairs, "http_p50_ms": round(statistics.median(http_ms), 1),
            "in_process_p50_ms": round(statistics.median(local_ms), 1),
            "overhead_p50_ms": round(statistics.median(diffs), 1), "target_ms": 10}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--seconds", type=float, default=10.0, help="one measuring window")
    ap.add_argument("--rounds", type=int, default=3, help="rounds over every (configuration, clients) window")
    ap.add_argument("--pairs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the servers and of the in-process side (1: a shared, loaded CPU "
                         "makes 2-thread barriers stall; say so with the figures)")
    ap.add_argument("--note", default="", help="what else ran on the machine (saved as 'conditions')")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model or random_model(Path(tempfile.mkdtemp()) / "fcos_r18_cpu_random.pt")
    blobs = [p.read_bytes() for p in IMAGES]
    report = {"benchmark": "serve_load", "model": str(args.model or "fcos_r18_cpu preset, random weights"),
              "image": "bccd 640x480 JPEGs (raw body)",
              "method": f"{args.rounds} rounds; each round runs every (configuration, clients) window of "
                        f"{args.seconds:g} s in turn, all servers up at once (idle ones cost nothing); figures "
                        f"pool the rounds",
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "torch_threads": torch.get_num_threads(), "conditions": args.note, "results": {}}
    servers = {name: start_server(model, flags) for name, flags in CONFIGS}
    try:
        pooled: dict[tuple[str, int], list] = {(name, c): [[], 0.0] for name, _ in CONFIGS for c in (1, 8)}
        for _, url in servers.values():
            client(url, blobs, time.monotonic() + 3.0, 0)  # warm-up
        counts = {name: [batch_sizes(url)] for name, (_, url) in servers.items()}
        for _ in range(args.rounds):
            for name, _ in CONFIGS:
                for c in (1, 8):
                    lat, wall = window(servers[name][1], blobs, clients=c, seconds=args.seconds)
                    pooled[name, c][0] += lat
                    pooled[name, c][1] += wall
                    counts[name].append(batch_sizes(servers[name][1]))
        for name, flags in CONFIGS:
            report["results"][name] = {"flags": " ".join(flags)}
            for k, c in enumerate((1, 8)):  # batch sizes: the metrics' increments over this window kind
                steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(counts[name][:-1], counts[name][1:])][k::2]
                report["results"][name][f"{c}_clients"] = summary(*pooled[name, c],
                                                                   (sum(s[0] for s in steps), sum(s[1] for s in steps)))
            print(json.dumps({name: report["results"][name]}), file=sys.stderr, flush=True)
        report["overhead_640x480"] = overhead(servers["batch 8, wait 0 ms"][1], Detector.from_file(model), args.pairs)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(timeout=60)
    emit(report, args.out)


if __name__ == "__main__":
    main()
