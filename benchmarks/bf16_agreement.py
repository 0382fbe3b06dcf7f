"""bf16 autocast vs fp32 on a trained checkpoint: COCO AP of each and the share of matched detections.

    python benchmarks/bf16_agreement.py runs/train/best.pt --data ../shared/data/bccd --split val

Both precisions run through `fcosdet eval`'s path (Detector, same loader). A fp32 detection counts as
matched when the same image has a bf16 detection of the same class at IoU >= --iou (greedy, by score).
Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torchvision.ops import box_convert, box_iou

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fcosdet.cli.evaluate import evaluate_checkpoint  # noqa: E402


def _by_image(detections: list[dict]) -> dict[tuple[int, int], list[tuple[float, list[float]]]]:
    """(image_id, category_id) -> [(score, [x1, y1, x2, y2])] from COCO results ([x, y, w, h])."""
    groups: dict[tuple[int, int], list[tuple[float, list[float]]]] = defaultdict(list)
    boxes = box_convert(torch.tensor([d["bbox"] for d in detections]).view(-1, 4), "xywh", "xyxy")  # (D, 4)
    for d, box in zip(detections, boxes.tolist()):
        groups[(d["image_id"], d["category_id"])].append((d["score"], box))
    return groups


def matched_share(reference: list[dict], other: list[dict], *, iou: float, score_thr: float) -> float:
    """Share of `reference` detections above score_thr with a same-class `other` detection at IoU >= iou."""
    ref, oth = _by_image(reference), _by_image(other)
    total = matched = 0
    for key, dets in ref.items():
        dets = sorted((d for d in dets if d[0] >= score_thr), key=lambda d: -d[0])
        total += len(dets)
        candidates = oth.get(key, [])
        if not dets or not candidates:
            continue
        ious = box_iou(torch.tensor([d[1] for d in dets]), torch.tensor([c[1] for c in candidates]))  # (N, M)
        free = torch.ones(len(candidates), dtype=torch.bool)
        for row in ious:
            row = torch.where(free, row, torch.zeros_like(row))  # (M,)
            best = int(row.argmax())
            if row[best] >= iou:
                free[best] = False
                matched += 1
    return matched / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--iou", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bf16_agreement"))
    args = parser.parse_args()
    result: dict = {"benchmark": "bf16_agreement", "checkpoint": str(args.checkpoint), "data": args.data,
                    "split": args.split, "iou": args.iou}
    detections = {}
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        metrics = evaluate_checkpoint(args.checkpoint, dataset=args.data, split=args.split,
                                      out_dir=args.out / precision, precision=precision, workers=0)
        result[f"{precision}_seconds"] = round(time.perf_counter() - start, 1)
        result[f"{precision}_AP"], result[f"{precision}_AP50"] = round(metrics["AP"], 4), round(metrics["AP50"], 4)
        detections[precision] = json.loads((args.out / precision / "detections.json").read_text())
        result[f"{precision}_detections"] = len(detections[precision])
    result["AP_difference"] = round(result["bf16_AP"] - result["fp32_AP"], 4)
    for thr in (0.05, 0.3):
        result[f"matched_share_above_{thr}"] = round(
            matched_share(detections["fp32"], detections["bf16"], iou=args.iou, score_thr=thr), 4)
    result["cpu_flags_bf16"] = "avx512_bf16" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else None
    print(json.dumps(result))


if __name__ == "__main__":
    main()
