"""A preset benchmark: preset variants x datasets x seeds, each a `fcosdet train` run at one budget.

    python benchmarks/preset_sweep.py --iters 40 [--epochs N] [--preset fcos_r18_tricks_cpu]
        [--variant NAME | --variant "NAME=key=value,key=value" ...] [--baseline NAME]
        [--data DIR|NAME=DIR ...] [--seeds 0 1] [--jobs J] [--threads T] [--scale LONG SHORT]
        [--set KEY=VALUE ...] [--sweep-dir runs/preset_sweep] [--out benchmarks/results/preset_sweep.json]

Variants are `--set` lists laid over the preset: a built-in name (BUILTIN_VARIANTS, the question of
issue 24; all of them when no --variant is given) or `NAME=KEY=VALUE,KEY=VALUE` (commas inside
brackets stay in the value: `crop=data.crop_scale=[0.5,2.0]`; `NAME=` is the preset as it is).
Datasets default to bccd, aquarium and coco128 in ../shared/data. The budget is `--epochs N`
(the preset's schedule over N epochs) or `--iters N` (train.max_iters: the schedule ends at N);
either way the run is evaluated once, at its end (`--eval-every-epoch` keeps the preset's
interval). `--scale LONG SHORT` trains and evaluates at one smaller size for quick looks;
`--set` applies to every run (after the budget and the scale, before the variant's own sets).

Each run is a subprocess `fcosdet train PRESET --data DIR --run-dir SWEEP/runs/ID --set ...` with
OMP_NUM_THREADS = cores / J, J at once: a crash in one run is recorded and the others go on.
Resumable: a run whose run.json says it finished (completed / max_iters) and that has metrics.json
is read, not retrained; one with a last.pt continues with `--resume`; the rest start afresh.
SIGINT / SIGTERM: the running trainings are asked to stop (they write last.pt), the partial JSON
is printed and the next invocation with the same arguments continues. A run whose recorded command
differs from this invocation's (another budget, scale or set) is refused, not mixed in.

Prints one JSON object: AP / AP50 / APs per variant, dataset and seed; mean, std (sample, over
seeds), min and max per variant and dataset; the mean over datasets per variant; the decision rule
of issue 24 against the baseline (see `decide`); each run's wall time, its training rate and the
extrapolated time of `--extrapolate-epochs` epochs per dataset; the sweep's wall time in all.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
DEFAULT_DATASETS = ("bccd", "aquarium", "coco128")
METRICS = ("AP", "AP50", "APs")
FINISHED = ("completed", "max_iters")  # run.json `stopped` of a run that spent its budget
INTERRUPTED_CODES = (130, -signal.SIGTERM, -signal.SIGINT)  # fcosdet's Interrupted, or a signal before training
UNBOUNDED = 1_000_000  # train.epochs / eval_interval under --iters: max_iters ends the run
BUILTIN_VARIANTS: dict[str, tuple[str, ...]] = {
    "preset": (),  # the preset as it is (fcos_r18_tricks_cpu: crop [0.75, 1.5] + photometric 0.5)
    "flip_only": ("data.crop_scale=null", "data.photometric_prob=0"),
    "crop_only": ("data.crop_scale=[0.75,1.5]", "data.photometric_prob=0"),
    "photometric_only": ("data.crop_scale=null", "data.photometric_prob=0.5"),
    "ema": ("train.ema=true",),
}


class SweepError(Exception):
    """Bad input to the sweep: printed as one `preset_sweep: error: ...` line, exit status 2."""


@dataclass(frozen=True)
class Variant:
    name: str
    sets: tuple[str, ...]


@dataclass(frozen=True)
class Task:
    """One training: a variant on a dataset with a seed, in `sweep_dir/runs/<id>`."""
    variant: str
    dataset: str
    seed: int
    argv: tuple[str, ...]  # the `fcosdet` arguments of a fresh run (no --resume / --overwrite)
    run_dir: Path
    spec: Path  # beside the run dir (a fresh start may empty the run dir): argv + time segments
    log: Path

    @property
    def id(self) -> str:
        return f"{self.variant}/{self.dataset}/seed{self.seed}"


# ---- parsing -----------------------------------------------------------------------------------

def split_sets(text: str) -> list[str]:
    """'a=1,b=[2,3]' -> ['a=1', 'b=[2,3]']: commas split, except inside [] / {} / quotes."""
    parts, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
            continue
        current += ch
    parts.append(current.strip())
    return [p for p in parts if p]


def parse_variant(text: str) -> Variant:
    """'flip_only' (a built-in) or 'NAME=key=value,key=value' ('NAME=': no sets)."""
    name, eq, rest = text.partition("=")
    name = name.strip()
    if not eq:
        if name not in BUILTIN_VARIANTS:
            raise SweepError(f"--variant {text!r} is no built-in variant ({', '.join(BUILTIN_VARIANTS)}); "
                             f"give NAME=KEY=VALUE,KEY=VALUE")
        return Variant(name, BUILTIN_VARIANTS[name])
    if not name or "/" in name:
        raise SweepError(f"--variant {text!r} needs a name without '/' before the first '=', "
                         f"e.g. noaug=data.photometric_prob=0")
    sets = tuple(split_sets(rest))
    bad = [s for s in sets if "=" not in s]
    if bad:
        raise SweepError(f"--variant {text!r}: {bad[0]!r} is not KEY=VALUE")
    return Variant(name, sets)


def parse_dataset(text: str) -> tuple[str, Path]:
    """'DIR' (named after the folder, or a YAML's folder) or 'NAME=DIR'."""
    name, eq, path = text.partition("=")
    if not eq or "/" in name:
        name, path = "", text
    p = Path(path)
    if not p.exists():
        raise SweepError(f"--data {text!r}: {p} does not exist; give a dataset folder or YAML file")
    p = p.resolve()
    return (name or (p.parent.name if p.is_file() else p.name)), p


def budget_sets(*, epochs: int | None, iters: int | None, eval_every_epoch: bool) -> list[str]:
    """The budget as --set items: evaluated once at the end unless `eval_every_epoch`."""
    if iters is not None:
        sets = [f"train.max_iters={iters}", f"train.epochs={UNBOUNDED}"]
        return sets + ([] if eval_every_epoch else [f"train.eval_interval={UNBOUNDED}"])
    return [f"train.epochs={epochs}"] + ([] if eval_every_epoch else [f"train.eval_interval={epochs}"])


def scale_sets(scale: list[int] | None) -> list[str]:
    return [] if scale is None else [f"data.scale=[{scale[0]},{scale[1]}]", "data.multiscale_short=null"]


def plan(args: argparse.Namespace, variants: list[Variant], datasets: dict[str, Path]) -> list[Task]:
    common = [*budget_sets(epochs=args.epochs, iters=args.iters, eval_every_epoch=args.eval_every_epoch),
              *scale_sets(args.scale), *args.set]
    if args.device:
        common.append(f"train.device={args.device}")
    tasks = []
    for v in variants:
        for d, path in datasets.items():
            for seed in args.seeds:
                run_id = f"{v.name}__{d}__seed{seed}"
                sets = [*common, *v.sets, f"train.seed={seed}"]
                argv = ["train", args.preset, "--data", str(path), "--run-dir", str(args.sweep_dir / "runs" / run_id)]
                argv += [x for s in sets for x in ("--set", s)]
                tasks.append(Task(variant=v.name, dataset=d, seed=seed, argv=tuple(argv),
                                  run_dir=args.sweep_dir / "runs" / run_id,
                                  spec=args.sweep_dir / "specs" / f"{run_id}.json",
                                  log=args.sweep_dir / "logs" / f"{run_id}.log"))
    return tasks


# ---- one run: state, launch, record --------------------------------------------------------------

def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def run_state(task: Task) -> str:
    """'done' (read it), 'resume' (continue from last.pt) or 'new'."""
    record = read_json(task.run_dir / "run.json") or {}
    if record.get("stopped") in FINISHED and (task.run_dir / "metrics.json").is_file():
        return "done"
    return "resume" if (task.run_dir / "last.pt").is_file() else "new"


def load_spec(task: Task) -> dict[str, Any]:
    """The run's recorded command and time segments; a different command is refused."""
    spec = read_json(task.spec)
    if spec is None:
        return {"argv": list(task.argv), "segments": []}
    if spec.get("argv") != list(task.argv):
        raise SweepError(f"{task.run_dir} was trained by another command ({' '.join(spec.get('argv') or [])}); "
                         f"use another --sweep-dir, or delete that run and {task.spec} to retrain it")
    return spec


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the sweep dies (even by SIGKILL), so no training
    outlives it and writes into a run folder that the next sweep resumes (Linux; no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def launch(task: Task, state: str, threads: int) -> tuple[subprocess.Popen, float, int]:
    """Start the training (`--resume` from last.pt, else a fresh start in an emptied folder)."""
    extra = ["--resume"] if state == "resume" else (["--overwrite"] if task.run_dir.exists() else [])
    cmd = [sys.executable, "-m", "fcosdet.cli.main", *task.argv, *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    task.log.parent.mkdir(parents=True, exist_ok=True)
    start_iter = (read_json(task.run_dir / "run.json") or {}).get("iterations_run", 0) if state == "resume" else 0
    with task.log.open("a") as log:
        log.write(f"\n==== {datetime.now(timezone.utc).isoformat(timespec='seconds')} {state}: "
                  f"OMP_NUM_THREADS={threads} {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                preexec_fn=_die_with_parent)
    return proc, time.time(), int(start_iter or 0)


def record_segment(task: Task, spec: dict[str, Any], *, state: str, started: float, start_iter: int,
                   returncode: int) -> None:
    """Append this invocation's time on the run to its spec file."""
    record = read_json(task.run_dir / "run.json") or {}
    spec["segments"].append({"mode": state, "started": datetime.fromtimestamp(started, timezone.utc)
                             .isoformat(timespec="seconds"), "wall_s": round(time.time() - started, 1),
                             "iter_from": start_iter, "iter_to": record.get("iterations_run"),
                             "returncode": returncode, "stopped": record.get("stopped")})
    task.spec.parent.mkdir(parents=True, exist_ok=True)
    task.spec.write_text(json.dumps(spec, indent=1) + "\n")


def last_log_line(path: Path) -> str | None:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    return lines[-1][-300:] if lines else None


# ---- the pool ------------------------------------------------------------------------------------

class Stop:
    """SIGINT / SIGTERM to the sweep: forward SIGTERM to the trainings (they checkpoint and exit),
    then stop launching; a second signal forwards SIGINT (the trainings stop at once)."""

    def __init__(self) -> None:
        self.count, self.children = 0, []

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        print(f"preset_sweep: {signal.Signals(signum).name}: stopping the running trainings (they write "
              f"last.pt); rerun the same command to continue", file=sys.stderr, flush=True)
        for proc in self.children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if self.count == 1 else signal.SIGINT)


def run_pool(tasks: list[Task], specs: dict[str, dict[str, Any]], *, jobs: int, threads: int, stop: Stop) -> None:
    """Train the tasks that are not done, `jobs` at a time; each finish is recorded at once."""
    queue = [t for t in tasks if run_state(t) != "done"]
    running: dict[str, tuple[Task, str, subprocess.Popen, float, int]] = {}
    total, finished = len(queue), 0
    while (queue and not stop.count) or running:
        while queue and len(running) < jobs and not stop.count:
            task = queue.pop(0)
            state = run_state(task)
            proc, started, start_iter = launch(task, state, threads)
            running[task.id] = (task, state, proc, started, start_iter)
            stop.children.append(proc)
            print(f"preset_sweep: start {task.id} ({state})", file=sys.stderr, flush=True)
        time.sleep(0.2)
        for run_id, (task, state, proc, started, start_iter) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[run_id]
            stop.children.remove(proc)
            record_segment(task, specs[run_id], state=state, started=started, start_iter=start_iter,
                           returncode=proc.returncode)
            finished += 1
            outcome = run_state(task)
            print(f"preset_sweep: [{finished}/{total}] {run_id}: "
                  f"{'done' if outcome == 'done' else f'stopped (exit {proc.returncode})'} "
                  f"in {time.time() - started:.0f} s", file=sys.stderr, flush=True)


# ---- results -------------------------------------------------------------------------------------

def train_rate(run_dir: Path, batch: int) -> float | None:
    """Training images per second from log.jsonl: the last train record of each epoch carries the
    running images/s since the epoch (or its resumed part) began; weighted by each epoch's iterations."""
    try:
        lines = (run_dir / "log.jsonl").read_text().splitlines()
        records = [r for r in map(json.loads, filter(None, lines)) if "loss" in r and r.get("images_per_s")]
    except (OSError, ValueError):
        return None
    last_of_epoch = {r["epoch"]: r for r in records}  # records are in iteration order
    images = seconds = 0.0
    previous = 0
    for r in last_of_epoch.values():
        n = (r["iter"] - previous) * batch
        images, seconds, previous = images + n, seconds + n / r["images_per_s"], r["iter"]
    return images / seconds if seconds else None


def run_batch_size(run_dir: Path) -> int | None:
    """data.batch_size of the run's saved config.yaml (what it trained with)."""
    try:
        return int(yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["batch_size"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
        return None


def collect(task: Task) -> dict[str, Any]:
    """One run's figures: its final evaluation (metrics.json), iterations, time and rate."""
    state = run_state(task)
    spec = read_json(task.spec) or {"segments": []}
    record = read_json(task.run_dir / "run.json") or {}
    code = spec["segments"][-1]["returncode"] if spec["segments"] else None
    status = ("finished" if state == "done" else "not run" if code is None
              else "interrupted" if code in INTERRUPTED_CODES else "failed")
    out: dict[str, Any] = {"status": status, "run_dir": str(task.run_dir)}
    if state == "done":
        metrics = read_json(task.run_dir / "metrics.json") or {}
        out.update({k: metrics.get(k) for k in METRICS})
        if (metrics.get("boxes_by_size") or {}).get("small") == 0:
            out["APs"] = None  # the evaluator writes 0.0 where val has no small box: not a figure
    elif status == "failed":
        out["error"] = f"exit {code}: {last_log_line(task.log)}"
    out["iterations"] = record.get("iterations_run")
    out["train_images"] = ((record.get("dataset") or {}).get("splits") or {}).get("train", {}).get("images")
    out["wall_s"] = round(sum(s["wall_s"] for s in spec["segments"]), 1)
    out["segments"] = len(spec["segments"])
    out["batch_size"] = batch = run_batch_size(task.run_dir)
    rate = None if batch is None else train_rate(task.run_dir, batch)
    out["train_images_per_s"] = None if rate is None else round(rate, 3)
    return out


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": round(statistics.fmean(values), 6),
            "std": round(statistics.stdev(values), 6) if len(values) > 1 else None,
            "min": round(min(values), 6), "max": round(max(values), 6)}


def summarize(runs: dict[str, dict[str, dict[int, dict[str, Any]]]]) -> dict[str, Any]:
    """runs[variant][dataset][seed] = {AP, AP50, APs, status...} -> per variant and dataset the
    mean / std (sample) / min / max over the finished seeds of each metric, and per variant the
    mean over datasets of the per-dataset means (each dataset weighs the same)."""
    summary: dict[str, Any] = {}
    for variant, per_dataset in runs.items():
        entry: dict[str, Any] = {"datasets": {}}
        for dataset, seeds in per_dataset.items():
            done = [r for r in seeds.values() if r.get("status") == "finished"]
            entry["datasets"][dataset] = {"n": len(done), **{m: _stats([r[m] for r in done if r.get(m) is not None])
                                                              for m in METRICS}}
        means = {m: [d[m]["mean"] for d in entry["datasets"].values()] for m in METRICS}
        entry["mean_over_datasets"] = {m: round(statistics.fmean(v), 6) if v and None not in v else None
                                       for m, v in means.items()}
        summary[variant] = entry
    return summary


RULE = ("a variant beats the baseline when its mean over datasets (of the per-dataset means over seeds) is "
        "higher and on no dataset its mean is below the baseline's by more than that dataset's seed spread "
        "(the larger of the two sample stds over seeds)")


def decide(summary: dict[str, Any], *, baseline: str, metric: str = "AP", min_seeds: int = 2) -> dict[str, Any]:
    """Issue 24's rule (RULE): a variant beats the baseline when its mean over datasets (of the per-dataset
    means over seeds) is higher and on no dataset its mean is below the baseline's by more than
    that dataset's seed spread, the larger of the two sample stds over seeds. Undecided until both
    have `min_seeds` finished seeds on every dataset."""
    base = summary[baseline]
    verdicts: dict[str, Any] = {}
    for name, entry in summary.items():
        if name == baseline:
            continue
        short = [d for d, s in entry["datasets"].items()
                 if s["n"] < min_seeds or base["datasets"].get(d, {}).get("n", 0) < min_seeds]
        if short:
            verdicts[name] = {"beats_baseline": None,
                              "verdict": f"undecided: fewer than {min_seeds} finished seeds on {', '.join(short)}"}
            continue
        missing = [d for d, s in entry["datasets"].items()
                   if None in (s[metric]["std"], base["datasets"][d][metric]["std"])]
        if missing:
            verdicts[name] = {"beats_baseline": None, "verdict": f"undecided: no {metric} on {', '.join(missing)}"}
            continue
        per = {}
        for d, s in entry["datasets"].items():
            b = base["datasets"][d][metric]
            delta = round(s[metric]["mean"] - b["mean"], 6)
            spread = max(s[metric]["std"], b["std"])
            per[d] = {"delta": delta, "spread": spread, "loses_beyond_spread": delta < -spread}
        mean_delta = round(entry["mean_over_datasets"][metric] - base["mean_over_datasets"][metric], 6)
        losers = [d for d, p in per.items() if p["loses_beyond_spread"]]
        beats = mean_delta > 0 and not losers
        why = ("wins on the mean and loses on no dataset beyond its seed spread" if beats
               else "does not win on the mean" if mean_delta <= 0
               else f"loses beyond the seed spread on {', '.join(losers)}")
        verdicts[name] = {"beats_baseline": beats, "mean_delta": mean_delta, "per_dataset": per, "verdict": why}
    return {"metric": metric, "baseline": baseline, "rule": RULE, "variants": verdicts}


def timings(runs: list[dict[str, Any]], *, epochs: int) -> dict[str, Any]:
    """Per dataset, from the finished runs of every variant: the median training rate and the
    median overhead (wall time not spent training: start-up and the final evaluation), and what
    `epochs` epochs would take at that rate (extrapolated, evaluated once at the end)."""
    out: dict[str, Any] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        done = [r for r in runs if r["dataset"] == dataset and r["status"] == "finished" and r["train_images_per_s"]]
        if not done:
            continue
        rate = statistics.median(r["train_images_per_s"] for r in done)
        overhead = statistics.median(max(r["wall_s"] - r["iterations"] * r["batch_size"] / r["train_images_per_s"], 0.0)
                                     for r in done)
        images, batch = done[0]["train_images"], done[0]["batch_size"]
        per_epoch = images / rate
        out[dataset] = {"runs": len(done), "train_images": images, "iters_per_epoch": math.ceil(images / batch),
                        "train_images_per_s": round(rate, 3), "overhead_s": round(overhead, 1),
                        "train_s_per_epoch": round(per_epoch, 1), "extrapolated_epochs": epochs,
                        "extrapolated_s": round(epochs * per_epoch + overhead)}
    return out


# ---- main ----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--epochs", type=int, help="train N epochs (the preset's schedule over N)")
    budget.add_argument("--iters", type=int, help="train N iterations (train.max_iters; the schedule ends at N)")
    p.add_argument("--preset", default="fcos_r18_tricks_cpu", help="preset or YAML config the variants lay over")
    p.add_argument("--variant", action="append", default=[], help="built-in name or NAME=KEY=VALUE,... (repeatable)")
    p.add_argument("--baseline", help="the variant the others are decided against (default: the first)")
    p.add_argument("--data", action="append", default=[], help="dataset folder / YAML, or NAME=PATH (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--jobs", type=int, default=1, help="trainings at once")
    p.add_argument("--threads", type=int, help="torch threads per training (default: cores / jobs)")
    p.add_argument("--scale", type=int, nargs=2, metavar=("LONG", "SHORT"), help="one smaller train/eval size")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for every run (repeatable)")
    p.add_argument("--device", help="train.device for every run (default: the preset's, auto)")
    p.add_argument("--eval-every-epoch", action="store_true", help="keep the preset's eval interval")
    p.add_argument("--metric", default="AP", choices=METRICS, help="what the decision rule compares")
    p.add_argument("--extrapolate-epochs", type=int, default=24, help="epochs the time estimate is for")
    p.add_argument("--sweep-dir", type=Path, default=ROOT / "runs" / "preset_sweep")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "preset_sweep.json")
    args = p.parse_args(argv)
    args.sweep_dir = args.sweep_dir.resolve()
    if (args.epochs or args.iters or 0) < 1 or args.jobs < 1 or (args.threads is not None and args.threads < 1):
        raise SweepError("--epochs / --iters, --jobs and --threads must be at least 1")
    if any(s.split("=", 1)[0].strip() == "train.seed" for s in args.set):
        raise SweepError("--set train.seed=... would give every run one seed; use --seeds")
    return args


def check_configs(args: argparse.Namespace, tasks: list[Task]) -> None:
    """The config of every run about to start afresh loads (a bad key fails here, once, not in
    each subprocess); runs already started were checked when they started (same command)."""
    fresh = [t for t in tasks if run_state(t) == "new"]
    if not fresh:
        return  # nothing to check: no import of torch for a sweep that only resumes or reads
    from fcosdet.errors import UserError
    from fcosdet.presets import load_config
    for task in fresh:
        sets = [task.argv[i + 1] for i, a in enumerate(task.argv) if a == "--set"]
        try:
            load_config(args.preset, sets)
        except UserError as exc:
            raise SweepError(f"{task.id}: {exc}") from None


def take_lock(sweep_dir: Path) -> Path:
    lock = sweep_dir / "sweep.lock"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    try:
        pid = int(lock.read_text())
        os.kill(pid, 0)
        raise SweepError(f"another sweep (pid {pid}) is running in {sweep_dir}; wait for it or use another --sweep-dir")
    except (OSError, ValueError):
        pass
    lock.write_text(str(os.getpid()))
    return lock


def report(args: argparse.Namespace, variants: list[Variant], datasets: dict[str, Path], tasks: list[Task],
           history: list[dict[str, Any]]) -> dict[str, Any]:
    runs: dict[str, Any] = {v.name: {d: {} for d in datasets} for v in variants}
    flat = []
    for task in tasks:
        figures = collect(task)
        runs[task.variant][task.dataset][task.seed] = figures
        flat.append({"variant": task.variant, "dataset": task.dataset, "seed": task.seed, **figures})
    summary = summarize(runs)
    baseline = args.baseline or variants[0].name
    return {
        "benchmark": "preset_sweep", "preset": args.preset, "complete": all(r["status"] == "finished" for r in flat),
        "budget": {"epochs": args.epochs} if args.epochs else {"iters": args.iters},
        "scale": args.scale, "sets": args.set, "eval_every_epoch": args.eval_every_epoch,
        "variants": {v.name: list(v.sets) for v in variants}, "datasets": {d: str(p) for d, p in datasets.items()},
        "seeds": args.seeds, "jobs": args.jobs, "threads_per_run": args.threads, "cores": _cores(),
        "runs": runs, "summary": summary,
        "decision": decide(summary, baseline=baseline, metric=args.metric),
        "timings": timings(flat, epochs=args.extrapolate_epochs),
        "wall_s_runs": round(sum(r["wall_s"] for r in flat), 1),
        "wall_s_total": round(sum(h["wall_s"] for h in history), 1), "invocations": history,
        "sweep_dir": str(args.sweep_dir),
    }


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def sweep(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    variants = [parse_variant(v) for v in args.variant] or [Variant(n, s) for n, s in BUILTIN_VARIANTS.items()]
    if len({v.name for v in variants}) != len(variants):
        raise SweepError("two --variant share a name; name each one differently")
    if args.baseline and args.baseline not in {v.name for v in variants}:
        raise SweepError(f"--baseline {args.baseline} is none of the variants ({', '.join(v.name for v in variants)})")
    datasets = dict(parse_dataset(d) for d in (args.data or [str(SHARED_DATA / n) for n in DEFAULT_DATASETS]))
    if len(datasets) != len(args.data or DEFAULT_DATASETS):
        raise SweepError("two --data share a folder name; give them as NAME=PATH")
    args.threads = args.threads or max(1, _cores() // args.jobs)
    tasks = plan(args, variants, datasets)
    check_configs(args, tasks)
    specs = {t.id: load_spec(t) for t in tasks}  # every recorded command checked before anything starts
    lock = take_lock(args.sweep_dir)
    history_path = args.sweep_dir / "invocations.json"
    history = read_json(history_path) or []
    started, stop = time.time(), Stop()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        run_pool(tasks, specs, jobs=args.jobs, threads=args.threads, stop=stop)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        history.append({"started": datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
                        "wall_s": round(time.time() - started, 1), "interrupted": bool(stop.count),
                        "load_avg_1min_end": round(os.getloadavg()[0], 2)})
        history_path.write_text(json.dumps(history, indent=1) + "\n")
        lock.unlink(missing_ok=True)
    result = report(args, variants, datasets, tasks, history)
    (args.sweep_dir / "sweep.json").write_text(json.dumps(result, indent=1) + "\n")
    if not stop.count:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))
    return 130 if stop.count else 0


def main() -> None:
    try:
        code = sweep()
    except SweepError as exc:
        print(f"preset_sweep: error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
