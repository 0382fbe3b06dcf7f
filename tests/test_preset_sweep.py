"""benchmarks/preset_sweep.py: the aggregation and issue 24's decision rule on hand-built results
(exact), and a tiny real sweep (a variant pair x a tiny bccd x 2 seeds) killed while it trains
and run again: finished runs are read, not retrained, and the interrupted one continues."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_safety import SMALL, tiny_bccd

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "preset_sweep.py"


def _module():
    spec = importlib.util.spec_from_file_location("preset_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["preset_sweep"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


ps = _module()


def _runs(table: dict[str, dict[str, list[float]]]) -> dict:
    """{variant: {dataset: [AP of seed 0, seed 1, ...]}} -> the runs dict `summarize` reads."""
    return {v: {d: {seed: {"status": "finished", "AP": ap, "AP50": 2 * ap, "APs": None}
                    for seed, ap in enumerate(aps)} for d, aps in per.items()} for v, per in table.items()}


def test_summary_and_decision_rule_on_hand_built_results():
    runs = _runs({
        "base": {"a": [0.30, 0.32], "b": [0.50, 0.54]},  # means 0.31 / 0.52, stds 0.014142 / 0.028284
        "wins": {"a": [0.33, 0.35], "b": [0.49, 0.53]},  # +0.03 / -0.01 (inside b's spread 0.028284)
        "loses_b": {"a": [0.40, 0.40], "b": [0.45, 0.47]},  # mean +0.015, but b -0.06 beyond 0.028284
        "lower": {"a": [0.29, 0.31], "b": [0.52, 0.52]},  # mean 0.41 < 0.415
    })
    runs["one_seed"] = {"a": {0: {"status": "finished", "AP": 0.9}, 1: {"status": "failed"}},
                        "b": {0: {"status": "finished", "AP": 0.9}, 1: {"status": "finished", "AP": 0.9}}}
    summary = ps.summarize(runs)
    assert summary["base"]["datasets"]["a"] == {
        "n": 2, "AP": {"mean": 0.31, "std": 0.014142, "min": 0.3, "max": 0.32},
        "AP50": {"mean": 0.62, "std": 0.028284, "min": 0.6, "max": 0.64},
        "APs": {"mean": None, "std": None, "min": None, "max": None}}
    assert summary["base"]["mean_over_datasets"] == {"AP": 0.415, "AP50": 0.83, "APs": None}
    assert summary["wins"]["mean_over_datasets"]["AP"] == 0.425
    assert summary["one_seed"]["datasets"]["a"]["n"] == 1
    decision = ps.decide(summary, baseline="base", metric="AP")
    v = decision["variants"]
    assert v["wins"]["beats_baseline"] is True and v["wins"]["mean_delta"] == 0.01
    assert v["wins"]["per_dataset"] == {
        "a": {"delta": 0.03, "spread": 0.014142, "loses_beyond_spread": False},
        "b": {"delta": -0.01, "spread": 0.028284, "loses_beyond_spread": False}}
    assert v["loses_b"]["beats_baseline"] is False and v["loses_b"]["mean_delta"] == 0.015
    assert v["loses_b"]["per_dataset"]["b"] == {"delta": -0.06, "spread": 0.028284, "loses_beyond_spread": True}
    assert v["loses_b"]["verdict"] == "loses beyond the seed spread on b"
    assert v["lower"] == {"beats_baseline": False, "mean_delta": -0.005, "verdict": "does not win on the mean",
                          "per_dataset": v["lower"]["per_dataset"]}
    assert v["one_seed"] == {"beats_baseline": None, "verdict": "undecided: fewer than 2 finished seeds on a"}
    assert "base" not in v and decision["baseline"] == "base"
    assert ps.decide(summary, baseline="base", metric="APs")["variants"]["wins"]["verdict"] == \
        "undecided: no APs on a, b"


def test_variant_and_set_parsing():
    assert ps.split_sets("a=1,data.crop_scale=[0.5,2.0], b='x,y'") == ["a=1", "data.crop_scale=[0.5,2.0]", "b='x,y'"]
    assert ps.parse_variant("aug=") == ps.Variant("aug", ())
    assert ps.parse_variant("noaug=data.crop_scale=null,data.photometric_prob=0") == \
        ps.Variant("noaug", ("data.crop_scale=null", "data.photometric_prob=0"))
    assert ps.parse_variant("flip_only") == ps.Variant("flip_only", ps.BUILTIN_VARIANTS["flip_only"])
    for bad in ("nosuch", "x=lr", "=a=1"):
        with pytest.raises(ps.SweepError):
            ps.parse_variant(bad)
    assert ps.budget_sets(epochs=None, iters=40, eval_every_epoch=False) == [
        "train.max_iters=40", f"train.epochs={ps.UNBOUNDED}", f"train.eval_interval={ps.UNBOUNDED}"]
    assert ps.budget_sets(epochs=24, iters=None, eval_every_epoch=True) == ["train.epochs=24"]


def test_train_rate_weighs_each_epochs_running_rate(tmp_path):
    # epoch 1: 10 iterations at 4 img/s (batch 2: 5 s); epoch 2: 5 more at 1 img/s (10 s)
    records = [{"iter": 1, "epoch": 1, "loss": 1.0, "images_per_s": 3.0},
               {"iter": 10, "epoch": 1, "loss": 1.0, "images_per_s": 4.0},
               {"iter": 10, "epoch": 1, "AP": 0.0},
               {"iter": 15, "epoch": 2, "loss": 1.0, "images_per_s": 1.0}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert ps.train_rate(tmp_path, batch=2) == pytest.approx(30 / 15)


def _sweep_cmd(data: Path, sweep_dir: Path, out: Path) -> list[str]:
    sets = [x for i, x in enumerate(SMALL) if i % 2 == 1 and not x.startswith("data.scale")]
    return [sys.executable, str(SCRIPT), "--iters", "30", "--variant", "aug=", "--variant", "flip_only",
            "--data", f"tiny={data}", "--seeds", "0", "1", "--jobs", "2", "--scale", "96", "64",
            "--sweep-dir", str(sweep_dir), "--out", str(out), *[y for s in sets for y in ("--set", s)]]


def _finished(run_dir: Path) -> bool:
    return (run_dir / "run.json").is_file() and '"max_iters"' in (run_dir / "run.json").read_text()


def _training(run_dir: Path) -> bool:
    """The run has logged a step: its stop handler is installed and it is mid-budget."""
    return (run_dir / "log.jsonl").is_file() and '"loss"' in (run_dir / "log.jsonl").read_text()


def _wait(condition, proc: subprocess.Popen, timeout: float = 150) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        if condition():
            return
        time.sleep(0.05)
    pytest.fail("the sweep did not get there in time")


def test_a_killed_sweep_resumes_without_retraining_finished_runs(tmp_path, shared_data):
    data = tiny_bccd(tmp_path / "data", shared_data, n_train=6, n_val=2)
    sweep_dir, out = tmp_path / "sweep", tmp_path / "result.json"
    cmd = _sweep_cmd(data, sweep_dir, out)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    runs = sweep_dir / "runs"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait(lambda: _finished(runs / "aug__tiny__seed0") and _finished(runs / "aug__tiny__seed1")
          and _training(runs / "flip_only__tiny__seed0"), proc)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    partial = json.loads(stdout.strip().splitlines()[-1])
    assert not partial["complete"] and not out.exists()  # --out only holds a finished sweep
    assert {s: partial["runs"]["aug"]["tiny"][s]["status"] for s in ("0", "1")} == {"0": "finished", "1": "finished"}
    assert partial["runs"]["flip_only"]["tiny"]["0"]["status"] == "interrupted"
    kept = {s: (runs / f"aug__tiny__seed{s}" / "run.json").read_text() for s in (0, 1)}
    stopped_at = json.loads((runs / "flip_only__tiny__seed0" / "run.json").read_text())["iterations_run"]
    assert 0 < stopped_at < 30

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr[-2000:]
    result = json.loads(again.stdout.strip().splitlines()[-1])
    assert result == json.loads(out.read_text()) and result["complete"]
    assert "start aug/" not in again.stderr  # finished runs are read, not retrained
    assert {s: (runs / f"aug__tiny__seed{s}" / "run.json").read_text() for s in (0, 1)} == kept
    segments = json.loads((sweep_dir / "specs" / "flip_only__tiny__seed0.json").read_text())["segments"]
    assert [(s["mode"], s["iter_from"], s["iter_to"]) for s in segments] == \
        [("new", 0, stopped_at), ("resume", stopped_at, 30)]
    for variant in ("aug", "flip_only"):
        for seed in ("0", "1"):
            run = result["runs"][variant]["tiny"][seed]
            assert run["status"] == "finished" and run["iterations"] == 30 and 0 <= run["AP"] <= 1
            assert run["APs"] is None  # the two val images hold no small box
    assert result["runs"]["aug"]["tiny"]["0"]["segments"] == 1
    assert result["runs"]["flip_only"]["tiny"]["0"]["wall_s"] == round(sum(s["wall_s"] for s in segments), 1)
    assert result["summary"]["aug"]["datasets"]["tiny"]["n"] == 2
    assert result["decision"]["baseline"] == "aug" and "flip_only" in result["decision"]["variants"]
    assert [h["interrupted"] for h in result["invocations"]] == [True, False]
    assert result["wall_s_total"] == round(sum(h["wall_s"] for h in result["invocations"]), 1)
    assert result["timings"]["tiny"]["train_images"] == 6 and result["timings"]["tiny"]["train_images_per_s"] > 0
