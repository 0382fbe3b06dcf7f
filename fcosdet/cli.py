"""fcosdet command line: train | eval | predict | demo | check-data.

User errors (bad paths, corrupt data, wrong flags) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fcosdet", description="FCOS object detection: train, evaluate, predict.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a detector", description="Train FCOS on a dataset. "
                       "Launch with torchrun for several GPUs or nodes.")
    t.add_argument("config", help="a preset (fcos_r50_1x, fcos_r50_tricks_1x, fcos_r18_cpu, "
                   "fcos_r18_tricks_cpu, demo) or a YAML config file")
    t.add_argument("--data", help="dataset YAML or folder (COCO / VOC / YOLO layout); sets data.dataset")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.epochs=24 (repeatable)")
    t.add_argument("--run-dir", type=Path, default=Path("runs/train"), help="output folder (default runs/train)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from last.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --run-dir")
    t.add_argument("--skip-invalid", action="store_true",
                   help="drop invalid annotations/images (counted and reported) instead of stopping")

    e = sub.add_parser("eval", help="COCO mAP of a checkpoint on a dataset split")
    e.add_argument("checkpoint", type=Path)
    e.add_argument("--data", help="dataset YAML or folder (default: the one the model was trained on)")
    e.add_argument("--split", default="val")
    e.add_argument("--out", type=Path, help="write metrics.json and detections.json here")
    e.add_argument("--batch-size", type=int, default=2)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="change a test setting, e.g. --set test.nms_iou=0.6 (test.* keys; repeatable)")

    pr = sub.add_parser("predict", help="detect objects in images or folders")
    pr.add_argument("checkpoint", type=Path)
    pr.add_argument("sources", nargs="+", help="image files or folders")
    pr.add_argument("--out", type=Path, default=Path("runs/predict"))
    pr.add_argument("--score-thr", type=float, default=0.05, help="keep detections above this score")
    pr.add_argument("--draw-thr", type=float, default=0.3, help="draw detections above this score")

    d = sub.add_parser("demo", help="train and evaluate on the built-in shapes dataset (2 CPU cores, under 10 min); "
                       "replaces its --run-dir")
    d.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    d.add_argument("--data-dir", type=Path, default=Path("runs/shapes-data"))
    d.add_argument("--epochs", type=int, help="override the demo's number of epochs")

    c = sub.add_parser("check-data", help="decode every image and validate every annotation")
    c.add_argument("dataset", help="dataset YAML or folder")
    c.add_argument("--splits", nargs="+", default=["train", "val"])
    c.add_argument("--skip-invalid", action="store_true", help="count problems instead of stopping at the first")
    return p


def run(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from . import commands
    if args.command == "train":
        from .config import load_config
        cfg = load_config(args.config, args.set)
        if args.data:
            cfg.data.dataset = args.data
        cfg.data.skip_invalid = cfg.data.skip_invalid or args.skip_invalid
        commands.train(cfg, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite)
    elif args.command == "eval":
        commands.evaluate_checkpoint(args.checkpoint, dataset=args.data, split=args.split,
                                     out_dir=args.out, batch_size=args.batch_size, workers=args.workers,
                                     test_sets=args.set)
    elif args.command == "predict":
        commands.predict(args.checkpoint, args.sources, out_dir=args.out, score_thr=args.score_thr,
                         draw_thr=args.draw_thr)
    elif args.command == "demo":
        commands.demo(run_dir=args.run_dir, data_dir=args.data_dir, epochs=args.epochs, overwrite=True)
    elif args.command == "check-data":
        commands.check_data(args.dataset, args.splits, skip_invalid=args.skip_invalid)
    return 0


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except UserError as exc:
        print(f"fcosdet: error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("fcosdet: interrupted; checkpoints written so far are intact", file=sys.stderr)
        code = 130
    finally:
        from . import distributed
        distributed.cleanup()
    sys.exit(code)


if __name__ == "__main__":
    main()
