"""Target assignment of a training batch: one `assign_targets_batch` call vs a loop of
`assign_targets` over the images, on bccd's boxes at short side 320 (max 448).

Prints one JSON object: milliseconds per batch of each way, their ratio and whether the
results are identical. On a GPU the batch call waits for the device once; the loop waits
several times per image.

    python benchmarks/assign_batch.py [--batch 4 16] [--device cpu|cuda] [--repeat 5] [--data DIR]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fcosdet.data import load_dataset_spec
from fcosdet.model.points import STRIDES, anchor_points, level_grids
from fcosdet.model.targets import assign_targets, assign_targets_batch

BCCD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bccd"


def _bccd_batches(data: Path, batch: int, device: str) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """bccd train images' boxes scaled from 640x480 to 448x336 (the 320/448 setting), in batches."""
    records = load_dataset_spec(data, "train").records
    scale = 448 / 640
    images = [(torch.as_tensor(r.boxes, dtype=torch.float32).reshape(-1, 4) * scale,
               torch.as_tensor(r.labels, dtype=torch.long)) for r in records]
    return [([b.to(device) for b, _ in images[i:i + batch]], [lab.to(device) for _, lab in images[i:i + batch]])
            for i in range(0, len(images) - batch + 1, batch)]


def _time(fn, batches, repeat: int, device: str) -> float:
    fn(batches[0])  # warm-up
    best = float("inf")
    for _ in range(repeat):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        for b in batches:
            fn(b)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / len(batches))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--data", type=Path, default=BCCD, help="the bccd folder (default ../shared/data/bccd)")
    args = ap.parse_args()
    sizes = [(-(-336 // s), -(-448 // s)) for s in STRIDES]
    points = anchor_points(sizes, STRIDES, device=args.device)
    grids = level_grids(sizes, STRIDES)
    result = {"benchmark": "assign_batch", "device": args.device, "points": sum(h * w for h, w in sizes)}
    for batch in args.batch:
        batches = _bccd_batches(args.data, batch, args.device)

        def loop(b):
            return [assign_targets(points, boxes, labels, num_classes=3) for boxes, labels in zip(*b)]

        def batched(b):
            return assign_targets_batch(points, *b, num_classes=3, grids=grids)

        def agree(b) -> bool:
            per_image, (labels, targets) = loop(b), batched(b)  # B x ((P,), (P, 4)); (B, P), (B, P, 4)
            return (torch.equal(torch.stack([lab for lab, _ in per_image]), labels) and
                    torch.equal(torch.stack([t for _, t in per_image]), targets))

        same = all(agree(b) for b in batches)
        loop_s, batch_s = _time(loop, batches, args.repeat, args.device), _time(batched, batches, args.repeat, args.device)
        result[f"B{batch}"] = {"loop_ms": round(loop_s * 1e3, 2), "batch_ms": round(batch_s * 1e3, 2),
                               "speedup": round(loop_s / batch_s, 2), "identical": same}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
