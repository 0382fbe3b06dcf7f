"""Target assignment: fcosdet's pair enumeration vs a straightforward (P, G, 4) implementation.

Prints one JSON object: time per call and peak memory of each, their ratios, and whether the
results are identical. Each implementation runs in a fresh subprocess so peak memory (VmHWM
growth on CPU, max_memory_allocated on CUDA) is its own.

    python benchmarks/assign_targets.py [--height 800 --width 1216 --boxes 1000 --device cpu]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _inputs(args):
    import torch

    from fcosdet.model.points import STRIDES, anchor_points
    g = torch.Generator().manual_seed(0)
    sizes = [(-(-args.height // s), -(-args.width // s)) for s in STRIDES]
    points = anchor_points(sizes, STRIDES, device=args.device)
    xy = torch.rand(args.boxes, 2, generator=g) * torch.tensor([args.width, args.height])
    wh = torch.rand(args.boxes, 2, generator=g) ** 3 * 400 + 4  # mostly small: crowded scenes
    boxes = torch.cat([xy, xy + wh], 1).to(args.device)
    labels = torch.randint(0, 80, (args.boxes,), generator=g).to(args.device)
    return points, boxes, labels


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1])
    return 0


def _current_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1])
    return 0


def worker(args) -> None:
    import torch
    sys.path.insert(0, str(ROOT / "tests"))
    from dense_reference import dense_assign

    from fcosdet.model.points import REGRESS_RANGES, STRIDES
    from fcosdet.model.targets import assign_targets
    points, boxes, labels = _inputs(args)
    fn = assign_targets if args.impl == "fcosdet" else dense_assign
    kw = dict(num_classes=80, strides=STRIDES, regress_ranges=REGRESS_RANGES,
              center_sampling=args.center_sampling)
    cuda = args.device.startswith("cuda")
    base = _current_rss_kib()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    out = fn(points, boxes, labels, **kw)  # first call also measures peak memory
    peak = (torch.cuda.max_memory_allocated() - base_cuda) if cuda else (_peak_rss_kib() - base) * 1024
    times = []
    for _ in range(args.repeat):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(points, boxes, labels, **kw)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    torch.save([t.cpu() for t in out], args.out)
    print(json.dumps({"seconds": sorted(times)[len(times) // 2], "peak_bytes": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--height", type=int, default=800)
    ap.add_argument("--width", type=int, default=1216)
    ap.add_argument("--boxes", type=int, default=1000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--center-sampling", action="store_true")
    ap.add_argument("--impl", choices=["fcosdet", "dense"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.impl:
        return worker(args)
    import tempfile

    import torch

    from fcosdet.model.points import STRIDES
    results, outs = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ("fcosdet", "dense"):
            out = Path(tmp) / f"{impl}.pt"
            cmd = [sys.executable, __file__, "--impl", impl, "--out", str(out)] + sys.argv[1:]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            results[impl] = json.loads(proc.stdout.strip().splitlines()[-1])
            outs[impl] = torch.load(out)
    points = sum(-(-args.height // s) * -(-args.width // s) for s in STRIDES)
    print(json.dumps({
        "benchmark": "assign_targets", "device": args.device, "points": points, "boxes": args.boxes,
        "center_sampling": args.center_sampling,
        "fcosdet_ms": round(results["fcosdet"]["seconds"] * 1e3, 2),
        "dense_ms": round(results["dense"]["seconds"] * 1e3, 2),
        "speedup": round(results["dense"]["seconds"] / results["fcosdet"]["seconds"], 2),
        "fcosdet_peak_mib": round(results["fcosdet"]["peak_bytes"] / 2**20, 1),
        "dense_peak_mib": round(results["dense"]["peak_bytes"] / 2**20, 1),
        "memory_ratio": round(results["fcosdet"]["peak_bytes"] / max(results["dense"]["peak_bytes"], 1), 4),
        "identical": all(torch.equal(a, b) for a, b in zip(outs["fcosdet"], outs["dense"])),
    }))


if __name__ == "__main__":
    main()
