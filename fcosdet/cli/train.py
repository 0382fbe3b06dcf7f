"""`fcosdet train CONFIG --data DATASET`: config -> built objects (engine.build) -> Trainer."""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import time
from datetime import datetime, timezone
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
from fcosdet.engine.trainer import Trainer, TrainingStopped, stop_on_signals
from fcosdet.errors import Interrupted, UserError
from fcosdet.presets import PRESETS, load_config


def add_parser(sub: Any) -> None:
    t = sub.add_parser("train", help="train a detector", description="Train FCOS on a dataset. "
                       "Launch with torchrun for several GPUs or nodes.")
    t.add_argument("config", help=f"a preset ({', '.join(PRESETS)}) or a YAML config file")
    t.add_argument("--data", help="dataset YAML or folder (COCO / VOC / YOLO layout); sets data.dataset")
    add_set_option(t, "override a config field, e.g. --set train.epochs=24 (repeatable)")
    t.add_argument("--run-dir", type=Path, default=Path("runs/train"), help="output folder")
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
    train(cfg, run_dir=args.run_dir, resume=args.resume, overwrite=args.overwrite, command=args.argv)


def continue_command(command: list[str] | None, run_dir: Path) -> str:
    """The command line that continues this run: the same one with --resume (and no --overwrite)."""
    argv = [a for a in (command or ["train", "CONFIG", "--run-dir", str(run_dir)]) if a != "--overwrite"]
    return shlex.join(["fcosdet", *argv, *([] if "--resume" in argv else ["--resume"])])


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


STARTUP_FILES = {"config.yaml", "log.jsonl", "tensorboard", "run.json"}  # what a run writes before last.pt


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """A run folder that exists is never overwritten without --resume or --overwrite (unless it
    holds only what a run that stopped before its first checkpoint wrote); one that cannot be
    created or written is refused before training starts."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a folder; choose another --run-dir")
    leftover = run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= STARTUP_FILES
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or overwrite or leftover):
        raise UserError(f"run folder {run_dir} already exists; pass --resume to continue it, "
                        f"--overwrite to start again in it, or choose another --run-dir")
    if resume and not (run_dir / "last.pt").is_file():
        raise UserError(f"cannot resume: {run_dir / 'last.pt'} does not exist; start a new run "
                        f"without --resume")
    D.barrier()
    if D.is_main_process():
        if leftover and not resume and any(run_dir.iterdir()):
            say(f"{run_dir} holds no checkpoint (a run that stopped before its first one): starting again in it")
        if (overwrite or leftover) and not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        _make_writable_dir(run_dir)
    D.barrier()


def train(cfg: Config, *, run_dir: Path, resume: bool = False, overwrite: bool = False,
          command: list[str] | None = None) -> TrainState:
    """Train `cfg` into `run_dir`. SIGINT / SIGTERM: last.pt at the current iteration, then
    `Interrupted` naming it and the command (`command`: this run's argv) that continues."""
    started = time.time()
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
    say(describe_budget(cfg, trainer, device, run_dir))
    stopped = "error"
    try:
        with stop_on_signals(trainer.stop):
            state = trainer.fit(state)
        stopped = "max_iters" if trainer.planned_iterations() < len(trainer.train_loader) * cfg.train.epochs \
            else "completed"
    except TrainingStopped as exc:
        state, stopped = exc.state, f"interrupted ({exc.signal_name})"
    except KeyboardInterrupt:
        stopped = "interrupted (at once)"
    finally:
        logger.close()
        if D.is_main_process():
            write_run_record(run_dir, cfg=cfg, built=built, trainer=trainer, state=state, stopped=stopped,
                             started=started, device=f"{device} x{D.world_size()}")
    if stopped.startswith("interrupted"):
        raise Interrupted(interrupted_message(stopped, state, trainer, run_dir, command))
    if D.is_main_process():
        plot_curves(run_dir / "log.jsonl", run_dir / "curves.png")
        if stopped == "max_iters":
            say(f"stopped at train.max_iters={cfg.train.max_iters}: iteration {state.iteration} of "
                f"{len(trainer.train_loader) * cfg.train.epochs} ({cfg.train.epochs} epochs of "
                f"{len(trainer.train_loader)}); last.pt holds it")
        say(f"report: {update_run_report(run_dir)}")
    return state


def describe_budget(cfg: Config, trainer: Trainer, device: Any, run_dir: Path) -> str:
    """The header line: images, epochs, iterations that will really run (train.max_iters included)."""
    per_epoch, planned = len(trainer.train_loader), trainer.planned_iterations()
    line = (f"training {len(trainer.train_loader.dataset)} images, {cfg.train.epochs} epochs, {per_epoch} "
            f"iterations per epoch on {device} x{D.world_size()}{D.backend_note()} -> {run_dir}")
    if planned < per_epoch * cfg.train.epochs:
        line += (f"; train.max_iters={cfg.train.max_iters} stops it at iteration {planned} of "
                 f"{per_epoch * cfg.train.epochs} (in epoch {math.ceil(planned / per_epoch)})")
    return line


def interrupted_message(stopped: str, state: TrainState, trainer: Trainer, run_dir: Path,
                        command: list[str] | None) -> str:
    last = run_dir / "last.pt"
    if stopped == "interrupted (at once)" or not last.is_file():
        saved = (f"the last checkpoint written is {last}" if last.is_file()
                 else "nothing was saved (no checkpoint yet); rerun the same command to start again")
        return f"{stopped}: {saved}" + (f"; continue with: {continue_command(command, run_dir)}"
                                         if last.is_file() else "")
    where = (f"{state.epoch_iter} of {len(trainer.train_loader)} batches into epoch {state.epoch + 1}"
             if state.epoch_iter else f"after epoch {state.epoch}")
    return (f"{stopped} at iteration {state.iteration} ({where}): wrote {last}; continue with: "
            f"{continue_command(command, run_dir)}")


def write_run_record(run_dir: Path, *, cfg: Config, built: Any, trainer: Trainer, state: TrainState,
                     stopped: str, started: float, device: str) -> Path:
    """run.json: what ran, on which data, for how long and why it stopped (report.html reads it)."""
    train_split = trainer.train_loader.dataset.split
    splits = {"train": train_split, **({"val": built.val_data} if built.val_data is not None else {})}
    record = {
        "started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - started, 1), "epochs_planned": cfg.train.epochs,
        "epochs_run": state.epoch, "iterations_planned": trainer.planned_iterations(),
        "iterations_run": state.iteration, "stopped": stopped, "device": device,
        "dataset": {"path": str(cfg.data.dataset), "classes": list(built.class_names),
                    "splits": {name: {"source": str(d.source), "images": len(d.records),
                                      "boxes": sum(len(r.boxes) for r in d.records)} for name, d in splits.items()}},
        "checkpoints": {name: str(run_dir / f"{name}.pt") if (run_dir / f"{name}.pt").is_file() else None
                        for name in ("last", "best")},
    }
    path = run_dir / "run.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path
