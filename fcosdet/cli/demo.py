"""`fcosdet demo`: generate the shapes dataset, train the demo preset, evaluate, print the mAP
table, write the loss curves and images with detections."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from fcosdet.cli.predict import predict_files
from fcosdet.cli.train import train
from fcosdet.console import say
from fcosdet.data.synthetic import ensure_synthetic_dataset
from fcosdet.presets import preset


def add_parser(sub: Any) -> None:
    d = sub.add_parser("demo", help="train and evaluate on the built-in shapes dataset (2 CPU cores, under 10 min); "
                       "replaces its --run-dir")
    d.add_argument("--run-dir", type=Path, default=Path("runs/demo"), help="output folder (replaced)")
    d.add_argument("--data-dir", type=Path, default=Path("runs/shapes-data"),
                   help="where the generated shapes dataset is written (reused when already there)")
    d.add_argument("--epochs", type=int, help="override the demo's number of epochs")
    d.set_defaults(func=lambda args: demo(run_dir=args.run_dir, data_dir=args.data_dir, epochs=args.epochs,
                                          overwrite=True))


def demo(*, run_dir: Path, data_dir: Path, epochs: int | None, overwrite: bool) -> dict[str, Any]:
    cfg = preset("demo")
    info = ensure_synthetic_dataset(data_dir, image_size=(cfg.data.scale[1], cfg.data.scale[1]))
    how = "reused" if info["reused"] else f"generated in {info['seconds']:.1f} s"
    say(f"shapes dataset: {info['num_images']['train']} train / {info['num_images']['val']} val images "
        f"({', '.join(info['class_names'])}) in {data_dir} ({how})")
    cfg.data.dataset = info["yaml"]
    if epochs is not None:
        cfg.train.epochs = epochs
    start = time.perf_counter()
    train(cfg, run_dir=run_dir, overwrite=overwrite or run_dir.exists())
    minutes = (time.perf_counter() - start) / 60
    metrics = json.loads((run_dir / "metrics.json").read_text())
    val_images = sorted((data_dir / "images").glob("val_*.jpg"))[:8]
    predict_files(run_dir / "last.pt", [str(p) for p in val_images], out_dir=run_dir / "detections",
            score_thr=0.05, draw_thr=0.3)
    say(f"demo finished in {minutes:.1f} min: AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}. "
        f"Curves: {run_dir / 'curves.png'}; detections: {run_dir / 'detections'}")
    return metrics
