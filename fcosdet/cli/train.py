"""`fcosdet train CONFIG --data DATASET`: config -> built objects (engine.build) -> Trainer."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from fcosdet import distributed as D
from fcosdet.analysis.report import update_run_report
from fcosdet.analysis.viz import plot_curves
from fcosdet.cli.common import add_set_option
from fcosdet.config import Config, save_config
from fcosdet.console import say
from fcosdet.engine.build import build_trainer, build_training, restore
from fcosdet.engine.evaluation.coco import format_table, save_metrics
from fcosdet.engine.logging import RunLogger
from fcosdet.engine.loop import TrainState
from fcosdet.errors import UserError
from fcosdet.presets import PRESETS, load_config


def add_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train a detector", description="Train FCOS on a dataset. "
                       "Launch with torchrun for several GPUs or nodes.")
    t.add_argument("config", help=f"a preset ({', '.join(PRESETS)}) or a YAML config file")
    t.add_argument("--data", help="dataset YAML or folder (COCO / VOC / YOLO layout); sets data.dataset")
    add_set_option(t, "override a config field, e.g. --set train.epochs=24 (repeatable)")
    t.add_argument("--run-dir", type=Path, default=Path("runs/train"), help="output folder (default runs/train)")
    t.add_argument("--resume", action="store_true", help="continue the run in --run-dir from last.pt")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --run-dir")
    t.add_argument("--skip-invalid", action="store_true",
                   help="drop invalid annotations/images (counted and reported) instead of stopping")
    t.set_defaults(func=run)


def run(args: Any) -> None:
    cfg = load_config(args.config, args.set)
    if args.data:
        cfg.data.dataset = args.data
    cfg.data.skip_invalid = cfg.data.skip_invalid or args.skip_invalid
    train(cfg, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite)


def _make_writable_dir(run_dir: Path) -> None:
    """Create `run_dir` and check that a file can be written there, or one UserError line."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".fcosdet-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the run folder {run_dir} ({exc.strerror or exc}); choose a "
                        f"writable --run-dir") from None


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """A run folder that exists is never overwritten without --resume or --overwrite; one that
    cannot be created or written is refused before training starts."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a folder; choose another --run-dir")
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or overwrite):
        raise UserError(f"run folder {run_dir} already exists; pass --resume to continue it, "
                        f"--overwrite to start again in it, or choose another --run-dir")
    if resume and not (run_dir / "last.pt").is_file():
        raise UserError(f"cannot resume: {run_dir / 'last.pt'} does not exist; start a new run "
                        f"without --resume")
    D.barrier()
    if D.is_main_process():
        if overwrite and not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        _make_writable_dir(run_dir)
    D.barrier()


def train(cfg: Config, *, run_dir: Path, resume: bool = False, overwrite: bool = False) -> TrainState:
    device = D.init_from_env(cfg.train.device)
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    built = build_training(cfg, device)
    state = restore(built, run_dir / "last.pt") if resume else TrainState()
    if D.is_main_process():
        save_config(cfg, run_dir / "config.yaml")
    logger = RunLogger(run_dir=run_dir, resume_iteration=state.iteration if resume else None)

    def report(metrics: dict[str, Any]) -> None:
        say(format_table(metrics))
        if D.is_main_process():
            save_metrics(metrics, run_dir / "metrics.json")
            update_run_report(run_dir, evaluator=trainer.evaluator)

    trainer = build_trainer(cfg, built, run_dir=run_dir, logger=logger, on_eval=report)
    say(f"training {len(built.train_loader.dataset)} images, {cfg.train.epochs} epochs, "
        f"{len(built.train_loader)} iterations per epoch on {device} x{D.world_size()}{D.backend_note()} -> {run_dir}")
    try:
        state = trainer.fit(state)
    finally:
        logger.close()
    if D.is_main_process():
        plot_curves(run_dir / "log.jsonl", run_dir / "curves.png")
        say(f"report: {update_run_report(run_dir)}")
    return state
