"""What a run says and writes about its budget: `train.max_iters` is announced and its stop
explained, a short run logs every iteration, run.json records the run, and best.pt carries no
optimiser state (last.pt does, for --resume)."""
from __future__ import annotations

import json

import pytest
import torch
from test_safety import SMALL, tiny_bccd

from fcosdet.cli.main import run as cli

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_max_iters_is_announced_explained_and_recorded(tmp_path, shared_data, capsys):
    data = tiny_bccd(tmp_path / "data", shared_data, n_train=8, n_val=1)  # batch 2: 4 iterations per epoch
    run_dir = tmp_path / "run"
    assert cli(["train", "fcos_r18_cpu", "--data", str(data), *SMALL, "--set", "train.epochs=3",
                "--set", "train.max_iters=6", "--set", "train.log_interval=20", "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 epochs, 4 iterations per epoch" in out
    assert "train.max_iters=6 stops it at iteration 6 of 12 (in epoch 2)" in out
    assert "stopped at train.max_iters=6: iteration 6 of 12" in out
    logged = [json.loads(line)["iter"] for line in (run_dir / "log.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert logged == [1, 2, 3, 4, 5, 6]  # 6 planned iterations: every one logged, not only the first
    record = json.loads((run_dir / "run.json").read_text())
    assert (record["stopped"], record["iterations_run"], record["iterations_planned"]) == ("max_iters", 6, 6)
    assert record["epochs_planned"] == 3 and record["dataset"]["splits"]["train"]["images"] == 8
    assert record["dataset"]["splits"]["val"]["images"] == 1 and record["wall_seconds"] > 0
    assert record["checkpoints"] == {"last": str(run_dir / "last.pt"), "best": str(run_dir / "best.pt")}
    last = torch.load(run_dir / "last.pt", weights_only=True)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert "optimizer" in last and "rng" in last
    assert not {"optimizer", "scheduler", "rng", "raw_model"} & set(best)
    assert best["model"].keys() == last["model"].keys() and best["class_names"] == last["class_names"]
    assert (run_dir / "best.pt").stat().st_size < (run_dir / "last.pt").stat().st_size
