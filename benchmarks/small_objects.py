"""Small objects on aquarium at one iteration budget (issue 20): the preset, tile training (+ sliced
inference) and the P2 level, AP and APs side by side. Prints one JSON object.

The runs are trained beforehand, one seed each (train.seed=0), the same budget (2 epochs of the
511 training images at batch 4 = 256 iterations; each row reports the iterations its run made):

    fcosdet train fcos_r18_tricks_cpu --data ../shared/data/aquarium --set train.epochs=2 --run-dir runs/aq_preset4
    fcosdet train fcos_r18_tricks_cpu --data ../shared/data/aquarium --set train.epochs=2 \\
        --set data.tile=384 --set data.crop_scale=null --run-dir runs/aq_tile384
    fcosdet train fcos_r18_tricks_cpu --data ../shared/data/aquarium --set train.epochs=2 \\
        --set model.p2=true --run-dir runs/aq_p2

    python benchmarks/small_objects.py [--preset runs/aq_preset4] [--tile runs/aq_tile384] [--p2 runs/aq_p2]
        [--slice 384] [--out-dir runs/small_objects_eval] [--assignment-only]

First, without any training: how many aquarium boxes get no positive point, with and without P2,
on whole images (the preset's evaluation scale) and at the scale of 384-px tiles: the counts
`fcosdet check-data --config fcos_r18_tricks_cpu --tile 384` prints, from the criterion and
transform training builds (`fcosdet.cli.data.assignment_objects`).

Each run's last.pt is evaluated on the val split with `fcosdet eval` (whole images), and the
tile run and the preset also with `fcosdet eval --slice SIZE` (sliced inference, the full-image
pass merged in: the CLI's default) when that option exists; otherwise those rows say so.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import yaml

from fcosdet.analysis.data_report import compare_settings
from fcosdet.cli.data import assignment_objects
from fcosdet.cli.main import build_parser, run
from fcosdet.data.build import load_split
from fcosdet.presets import load_config

METRICS = ("AP", "AP50", "APs", "APm", "APl")


def has_slice_option() -> bool:
    """Whether `fcosdet eval` takes --slice (sliced inference, issue 20 part 1)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        build_parser().parse_args(["eval", "--help"])
    return "--slice" in out.getvalue()


def run_record(run_dir: Path) -> dict[str, Any]:
    """What a run trained with: iterations, wall time, and the settings this comparison varies."""
    run = json.loads((run_dir / "run.json").read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return {"run": str(run_dir), "iterations": run.get("iterations_run"), "stopped": run.get("stopped"),
            "train_wall_s": run.get("wall_seconds"), "seed": cfg["train"]["seed"],
            "settings": {"data.tile": cfg["data"].get("tile"), "model.p2": cfg["model"].get("p2", False),
                         "data.scale": cfg["data"]["scale"], "data.multiscale_short": cfg["data"]["multiscale_short"],
                         "data.crop_scale": cfg["data"]["crop_scale"]}}


def evaluate(run_dir: Path, out_dir: Path, *, slice_size: int | None) -> dict[str, Any]:
    """`fcosdet eval RUN/last.pt` on val (with --slice SIZE): the metrics and the wall time."""
    argv = ["eval", str(run_dir / "last.pt"), "--split", "val", "--out", str(out_dir), "--workers", "0"]
    if slice_size is not None:
        argv += ["--slice", str(slice_size)]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run(argv)  # a UserError propagates with its one line
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return {**{k: metrics[k] for k in METRICS}, "eval_wall_s": round(time.perf_counter() - start, 1)}


def assignment_table(dataset: str, tile: int) -> dict[str, Any]:
    """Per split, boxes and boxes without a positive point under model.p2 false / true, on whole
    images and on `tile`-px tiles (fcos_r18_tricks_cpu's assignment and scale)."""
    cfg = load_config("fcos_r18_tricks_cpu", [f"data.dataset={dataset}", f"data.tile={tile}"])
    objects = assignment_objects(cfg)
    out = {}
    for split in ("train", "val"):
        with contextlib.redirect_stdout(io.StringIO()):
            records = load_split(cfg, split).records
        boxes = sum(len(r.boxes) for r in records)
        out[split] = {"boxes": boxes, "no_positive": compare_settings(records, objects["compare"],
                                                                      transform=objects["transform"])}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", type=Path, default=Path("runs/aq_preset4"))
    p.add_argument("--tile", type=Path, default=Path("runs/aq_tile384"))
    p.add_argument("--p2", type=Path, default=Path("runs/aq_p2"))
    p.add_argument("--slice", type=int, default=384, help="slice side for sliced inference (the tile size)")
    p.add_argument("--out-dir", type=Path, default=Path("runs/small_objects_eval"))
    p.add_argument("--data", default="../shared/data/aquarium")
    p.add_argument("--assignment-only", action="store_true", help="only the boxes-without-a-point counts")
    args = p.parse_args()
    assignment = assignment_table(args.data, args.slice)
    if args.assignment_only:
        print(json.dumps({"benchmark": "small_objects_assignment", "dataset": args.data,
                          "config": "fcos_r18_tricks_cpu", "tile": args.slice, "assignment": assignment}, indent=1))
        return
    sliced = has_slice_option()
    plan = [("preset", args.preset, None), ("preset", args.preset, args.slice), ("tile", args.tile, None),
            ("tile", args.tile, args.slice), ("p2", args.p2, None)]
    rows = []
    for variant, run_dir, slice_size in plan:
        row: dict[str, Any] = {"variant": variant, "inference": "whole image" if slice_size is None else
                               f"sliced {slice_size} px, overlap 0.2, + whole image"}
        if not (run_dir / "last.pt").is_file() or not (run_dir / "run.json").is_file():
            rows.append({**row, "missing": f"{run_dir} has no finished run (last.pt, run.json)"})
            continue
        if slice_size is not None and not sliced:
            rows.append({**row, "missing": "fcosdet eval has no --slice option in this checkout"})
            continue
        name = f"{variant}_{'full' if slice_size is None else f'slice{slice_size}'}"
        rows.append({**row, **run_record(run_dir), **evaluate(run_dir, args.out_dir / name, slice_size=slice_size)})
    print(json.dumps({"benchmark": "small_objects", "dataset": "aquarium val (127 images, 923 boxes)",
                      "preset": "fcos_r18_tricks_cpu",
                      "budget": "the preset run's train.epochs x 128 iterations of batch 4 (each row's iterations)",
                      "seeds": "one seed per variant (train.seed=0)", "assignment": assignment, "rows": rows},
                     indent=1))


if __name__ == "__main__":
    main()
