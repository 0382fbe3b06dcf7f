"""Sliced inference, measured: COCO AP of one model on one split full-image vs sliced vs sliced +
full (`fcosdet eval --slice`), and the speed of batched tiles (`Detector.predict_batch(...,
slicing=...)`: the tiles of several images through the backend `--batch-size` at a time) vs a
per-tile loop (one `Detector.predict` call per tile, SAHI's way), on the same images, the two
sides alternating within one run. Prints one JSON object.

    python benchmarks/sliced_inference.py runs/aq/best.pt --data ../shared/data/aquarium --slice 512
    python benchmarks/sliced_inference.py runs/demo/last.pt --canvas small --slice 192   # generated canvases

`--canvas small|large` evaluates on generated 1024-px canvases (`fcosdet.data.canvas`: 16-48 px or
250-600 px shapes) instead of `--data`. One model, one seed: the figures say nothing about spread.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from fcosdet.cli.evaluate import evaluate_checkpoint
from fcosdet.data.build import load_split
from fcosdet.data.canvas import make_canvas_dataset
from fcosdet.data.images import load_image
from fcosdet.deploy.predictor import Detector
from fcosdet.deploy.slicing import (
    FULL_VIEW,
    IOS_THR,
    Slicing,
    image_views,
    merge_views,
    offset_boxes,
    parse_slice_size,
)

KEYS = ("AP", "AP50", "APs", "APm", "APl")
CANVASES = {"small": {"object_size": (16.0, 48.0), "count": 20}, "large": {"object_size": (250.0, 600.0), "count": 3}}


def accuracy(model: Path, data: str, split: str, slicing: Slicing, batch_size: int) -> dict:
    """AP of full-image, sliced and sliced + full inference (each through `evaluate_checkpoint`)."""
    variants = {"full_image": None, "sliced": Slicing(size=slicing.size, overlap=slicing.overlap, full_image=False,
                                                      merge=slicing.merge),
                "sliced_plus_full": slicing}
    out = {}
    for name, sl in variants.items():
        start = time.perf_counter()
        m = evaluate_checkpoint(model, dataset=data, split=split, out_dir=None, batch_size=batch_size, workers=0,
                                slicing=sl)
        out[name] = {**{k: round(float(m[k]), 4) for k in KEYS}, "seconds": round(time.perf_counter() - start, 1)}
        out["boxes_by_size"] = m.get("boxes_by_size")
    return out


def per_tile_loop(det: Detector, image: Image.Image, slicing: Slicing) -> dict:
    """One image, one `Detector.predict` call per view, then the same cut-box rule and merge."""
    tiles, full = image_views(image.width, image.height, slicing)
    views = [(v, tiles[v]) for v in range(len(tiles))]
    views += [(FULL_VIEW, torch.tensor([0, 0, image.width, image.height]))] if full else []
    parts = []
    for v, box in views:
        r = det.predict(image.crop(tuple(box.tolist())))
        parts.append((offset_boxes(r.boxes, box[:2]), r.scores, r.labels, torch.full(r.labels.shape, v)))
    boxes, scores, labels, view = (torch.cat(x) for x in zip(*parts))
    thr = slicing.merge_thr or (IOS_THR if slicing.merge == "ios" else float(det.config.test.nms_iou))
    m = merge_views(boxes, scores, labels, view, tiles, width=image.width, height=image.height, merge=slicing.merge,
                    thr=thr, max_per_img=int(det.config.test.max_per_img))
    return {"boxes": m.boxes, "scores": m.scores, "labels": m.labels}


def speed(model: Path, paths: list[Path], slicing: Slicing, *, batch_size: int, images_per_call: int,
          repeats: int) -> dict:
    """images/s of batched tiles vs the per-tile loop on the same decoded images, alternating."""
    det = Detector.from_file(model)
    images = [load_image(p) for p in paths]
    views = sum(len(image_views(im.width, im.height, slicing)[0]) + image_views(im.width, im.height, slicing)[1]
                for im in images)

    def batched() -> list:
        out = []
        for i in range(0, len(images), images_per_call):
            out += det.predict_batch(images[i:i + images_per_call], slicing=slicing, batch_size=batch_size)
        return [{"boxes": r.boxes, "scores": r.scores, "labels": r.labels} for r in out]

    def loop() -> list:
        return [per_tile_loop(det, im, slicing) for im in images]

    batched(), loop()  # warm-up
    rates: dict[str, list[float]] = {"batched": [], "per_tile_loop": []}
    results = {}
    for r in range(repeats):
        for name, fn in ((("batched", batched), ("per_tile_loop", loop)) if r % 2 == 0 else
                         (("per_tile_loop", loop), ("batched", batched))):
            start = time.perf_counter()
            results[name] = fn()
            rates[name].append(len(images) / (time.perf_counter() - start))
    diff = max((float((a["boxes"] - b["boxes"]).abs().max()) for a, b in zip(results["batched"],
                                                                              results["per_tile_loop"])
                if len(a["boxes"]) == len(b["boxes"]) and len(a["boxes"])), default=0.0)
    same = all(a["labels"].tolist() == b["labels"].tolist() for a, b in zip(results["batched"],
                                                                              results["per_tile_loop"]))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"images": len(images), "views": views, "batch_size": batch_size, "images_per_call": images_per_call,
            "repeats": repeats, "images_per_s": {k: [round(x, 3) for x in v] for k, v in rates.items()},
            "median_images_per_s": {k: round(v, 3) for k, v in med.items()},
            "ratio_batched_over_loop": round(med["batched"] / med["per_tile_loop"], 3),
            "same_labels": same, "max_box_diff_px": round(diff, 4)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", help="dataset (default: the model's)")
    ap.add_argument("--canvas", choices=sorted(CANVASES), help="generated canvases instead of --data")
    ap.add_argument("--canvas-images", type=int, default=8)
    ap.add_argument("--split", default="val")
    ap.add_argument("--slice", default="512")
    ap.add_argument("--overlap", type=float, default=0.2)
    ap.add_argument("--merge", default="nms")
    ap.add_argument("--batch-size", type=int, default=8, help="views per backend call")
    ap.add_argument("--images-per-call", type=int, default=4, help="images per predict_batch call (batched side)")
    ap.add_argument("--speed-images", type=int, default=8, help="images timed (the split's first ones)")
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):  # fcosdet's progress lines: stdout holds the JSON only
        out = measure(args)
    json.dump(out, sys.stdout, indent=1)
    print()


def measure(args: argparse.Namespace) -> dict:
    slicing = Slicing(size=parse_slice_size(args.slice), overlap=args.overlap, merge=args.merge)
    tmp = tempfile.TemporaryDirectory()
    data, split = args.data, args.split
    if args.canvas:
        data = make_canvas_dataset(Path(tmp.name) / args.canvas, num_images=args.canvas_images, seed=0,
                                   **CANVASES[args.canvas])["yaml"]
        split = "val"
    out = {"model": str(args.model), "data": data if not args.canvas else f"canvas:{args.canvas}", "split": split,
           "slice": list(slicing.size), "overlap": slicing.overlap, "merge": slicing.merge,
           "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
           "note": "one model, one seed; speed sides alternate within this run"}
    if not args.skip_accuracy:
        out["accuracy"] = accuracy(args.model, data, split, slicing, args.batch_size)
    if not args.skip_speed:
        det = Detector.from_file(args.model)
        cfg = det.config
        cfg.data.dataset = data or cfg.data.dataset
        records = load_split(cfg, split).records[:args.speed_images]
        out["speed"] = speed(args.model, [Path(r.path) for r in records], slicing, batch_size=args.batch_size,
                             images_per_call=args.images_per_call, repeats=args.repeats)
    out["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    tmp.cleanup()
    return out


if __name__ == "__main__":
    main()
