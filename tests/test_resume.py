"""Faults survived exactly: a real `kill -9` of `fcosdet train` followed by --resume gives the
weights of an uninterrupted run bit for bit (from an epoch-end and from a mid-epoch checkpoint),
the log holds each iteration once, and an impossible run folder is one line before training."""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_safety import SMALL, tiny_bccd

from fcosdet.cli.main import main
from fcosdet.data import DetectionDataset, build_loader, build_transforms
from fcosdet.data.loader import EpochSampler
from fcosdet.data.records import DatasetSplit, ImageRecord
from fcosdet.engine.logging import truncate_log

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
# 8 training images, batch 2: 4 iterations per epoch, 3 epochs; random flips and scales; no evaluation
RUN = [*SMALL, "--set", "train.epochs=3", "--set", "data.val_split=none", "--set", "train.seed=7",
       "--set", "data.multiscale_short=[128,144]", "--set", "data.workers=0"]


def _train(data: Path, run_dir: Path, *extra: str, max_file_bytes: int | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "fcosdet.cli", "train", "fcos_r18_cpu", "--data", str(data),
           "--run-dir", str(run_dir), *RUN, *extra]

    def limit_file_size() -> None:  # a disk that fills up: writes past the limit fail with EFBIG
        import resource
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit_file_size if max_file_bytes else None)


def _kill_after(proc: subprocess.Popen, log: Path, iteration: int, timeout: float = 120) -> None:
    """SIGKILL `proc` as soon as its log.jsonl reaches `iteration`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and any(json.loads(line).get("iter", 0) >= iteration
                                 for line in log.read_text().splitlines() if line.endswith("}")):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (out + err)[-2000:]


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (out + err)[-3000:]
    return out


def _losses(run_dir: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["iter"], r["loss"], r["lr"]) for r in records]


def test_kill_9_then_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path, shared_data):
    data = tiny_bccd(tmp_path / "data", shared_data, n_train=8, n_val=1)
    straight, epoch_end, mid_epoch = tmp_path / "straight", tmp_path / "epoch_end", tmp_path / "mid"
    procs = [_train(data, straight), _train(data, epoch_end),
             _train(data, mid_epoch, "--set", "train.checkpoint_interval=1")]
    _kill_after(procs[1], epoch_end / "log.jsonl", 6)  # last.pt: the end of epoch 1 (iteration 4)
    _kill_after(procs[2], mid_epoch / "log.jsonl", 6)  # last.pt: iteration 5 or 6, inside epoch 2
    killed = {d: torch.load(d / "last.pt", weights_only=True) for d in (epoch_end, mid_epoch)}
    assert (killed[epoch_end]["iteration"], killed[epoch_end]["epoch_iter"]) == (4, 0)
    assert killed[mid_epoch]["epoch"] == 1 and killed[mid_epoch]["epoch_iter"] in (1, 2)
    resumed = [_train(data, epoch_end, "--resume"),
               _train(data, mid_epoch, "--set", "train.checkpoint_interval=1", "--resume")]
    _finish(procs[0])
    want, want_losses = torch.load(straight / "last.pt", weights_only=True), _losses(straight)
    assert want["iteration"] == 12
    # meanwhile the disk fills up while the next checkpoint of `straight` is written
    full = _train(data, straight, "--set", "train.epochs=4", "--resume", max_file_bytes=2_000_000)
    assert "batches into epoch 2" in _finish(resumed[1])
    _finish(resumed[0])

    for run_dir in (epoch_end, mid_epoch):
        got = torch.load(run_dir / "last.pt", weights_only=True)
        assert got["iteration"] == 12 and got["model"].keys() == want["model"].keys()
        for name, tensor in want["model"].items():
            assert torch.equal(got["model"][name], tensor), (run_dir.name, name)
        for key, value in want["optimizer"]["state"].items():
            assert torch.equal(got["optimizer"]["state"][key]["momentum_buffer"], value["momentum_buffer"])
        assert _losses(run_dir) == want_losses  # every iteration logged once, same values

    # the full disk: one line naming the checkpoint, the old one kept, exit status 2
    out, err = full.communicate(timeout=300)
    assert full.returncode == 2, (out + err)[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"fcosdet: error: cannot write checkpoint {straight / 'last.pt'}")
    assert "the previous last.pt is kept" in err
    assert torch.load(straight / "last.pt", weights_only=True)["iteration"] == 12
    assert not list(straight.glob(".last.pt.*"))  # no temporary file left behind


def test_truncate_log_drops_records_after_the_checkpoint_and_a_torn_line(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"iter": 1, "loss": 3}\n{"iter": 2, "loss": 2}\n{"iter": 2, "AP": 0.1}\n'
                   '{"iter": 3, "loss": 1}\n{"iter": 4, "lo')
    assert truncate_log(log, last_iteration=2) == 2
    assert [json.loads(line)["iter"] for line in log.read_text().splitlines()] == [1, 2, 2]


def _split(n: int) -> DatasetSplit:
    return DatasetSplit(records=[ImageRecord(path=f"{i}.jpg", width=8, height=8, image_id=i) for i in range(n)],
                        class_names=["a"])


def test_data_order_is_a_function_of_seed_and_epoch():
    dataset = DetectionDataset(_split(10), transforms=build_transforms(train=False, scale=(8, 8)))

    def order(sampler: EpochSampler, epoch: int) -> list[int]:
        sampler.set_epoch(epoch)
        return [i for i, _ in sampler]
    a, b = EpochSampler(dataset, seed=3, batch_size=2), EpochSampler(dataset, seed=3, batch_size=2)
    first = [order(a, e) for e in range(3)]
    assert order(b, 2) == first[2] and order(b, 0) == first[0]  # any epoch, in any sequence
    assert first[0] != first[1] and sorted(first[1]) == list(range(10))
    assert order(EpochSampler(dataset, seed=4, batch_size=2), 0) != first[0]
    b.set_epoch(1)
    b.skip_batches(2)
    assert [i for i, _ in b] == first[1][4:] and order(b, 1) == first[1]  # the skip is for one pass
    shards = [EpochSampler(dataset, seed=3, batch_size=2, num_replicas=2, rank=r) for r in (0, 1)]
    assert sorted(order(shards[0], 1) + order(shards[1], 1)) == list(range(10))
    loader = build_loader(dataset, batch_size=2, shuffle=False, num_workers=0, sampler=a)
    assert len(loader) == 5


@pytest.mark.parametrize("where", ["proc", "file", "under_file"])
def test_impossible_run_folder_is_one_line_before_training(tmp_path, where, capsys):
    (tmp_path / "f").write_text("x")
    run_dir = {"proc": Path("/proc/fcosdet-run"), "file": tmp_path / "f", "under_file": tmp_path / "f" / "run"}[where]
    with pytest.raises(SystemExit) as code:
        main(["train", "fcos_r18_cpu", "--data", str(tmp_path / "nodata"), "--run-dir", str(run_dir)])
    err = capsys.readouterr().err.strip()
    assert code.value.code == 2 and len(err.splitlines()) == 1, err
    assert str(run_dir) in err and "--run-dir" in err


def _signal_at(procs: dict[Path, tuple[subprocess.Popen, int]], iteration: int, timeout: float = 120) -> dict:
    """Send each run's signal once, as soon as its log.jsonl reaches `iteration`; their stderr."""
    deadline, waiting = time.monotonic() + timeout, dict(procs)
    while waiting and time.monotonic() < deadline:
        for run_dir, (proc, sig) in list(waiting.items()):
            log = run_dir / "log.jsonl"
            if log.is_file() and any(json.loads(line).get("iter", 0) >= iteration
                                     for line in log.read_text().splitlines() if line.endswith("}")):
                proc.send_signal(sig)
                del waiting[run_dir]
        time.sleep(0.005)
    errs = {}
    for run_dir, (proc, _) in procs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (out + err)[-3000:]
        errs[run_dir] = err
    return errs


def test_sigint_and_sigterm_write_a_checkpoint_that_resumes_bit_for_bit(tmp_path, shared_data):
    """Default settings (no checkpoint_interval): a real SIGINT / SIGTERM in the first epoch
    writes last.pt at the current iteration and prints the command that continues; running that
    command ends with the uninterrupted run's weights and losses, bit for bit."""
    data = tiny_bccd(tmp_path / "data", shared_data, n_train=8, n_val=1)
    straight, by_int, by_term = tmp_path / "straight", tmp_path / "int", tmp_path / "term"
    procs = {d: _train(data, d) for d in (straight, by_int, by_term)}
    errs = _signal_at({by_int: (procs[by_int], signal.SIGINT), by_term: (procs[by_term], signal.SIGTERM)}, 2)
    _finish(procs[straight])
    want, want_losses = torch.load(straight / "last.pt", weights_only=True), _losses(straight)
    for run_dir, name in ((by_int, "SIGINT"), (by_term, "SIGTERM")):
        last = errs[run_dir].strip().splitlines()[-1]
        saved = torch.load(run_dir / "last.pt", weights_only=True)
        assert saved["epoch"] == 0 and 2 <= saved["iteration"] < 4 and saved["epoch_iter"] == saved["iteration"]
        assert last.startswith(f"fcosdet: interrupted ({name}) at iteration {saved['iteration']} "
                               f"({saved['iteration']} of 4 batches into epoch 1): wrote {run_dir / 'last.pt'}")
        command = shlex.split(last.split("continue with: ", 1)[1])
        assert command[0] == "fcosdet" and command[-1] == "--resume" and str(run_dir) in command
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
        resumed = subprocess.run([sys.executable, "-m", "fcosdet.cli", *command[1:]], env=env,
                                 capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-3000:]
        got = torch.load(run_dir / "last.pt", weights_only=True)
        assert got["iteration"] == 12
        for key, tensor in want["model"].items():
            assert torch.equal(got["model"][key], tensor), (name, key)
        assert _losses(run_dir) == want_losses
        assert json.loads((run_dir / "run.json").read_text())["stopped"] == "completed"


def test_a_folder_left_before_the_first_checkpoint_does_not_block_the_rerun(tmp_path, shared_data, capsys):
    data = tiny_bccd(tmp_path / "data", shared_data, n_train=2, n_val=1)
    run_dir = tmp_path / "run"
    (run_dir / "tensorboard").mkdir(parents=True)
    (run_dir / "config.yaml").write_text("model: {}\n")
    (run_dir / "log.jsonl").write_text("")
    args = ["train", "fcos_r18_cpu", "--data", str(data), *SMALL, "--set", "train.max_iters=1",
            "--set", "data.val_split=none", "--run-dir", str(run_dir)]
    main_exit = pytest.raises(SystemExit)
    with main_exit as code:
        main(args)
    assert code.value.code == 0
    assert "holds no checkpoint (a run that stopped before its first one)" in capsys.readouterr().out
    assert (run_dir / "last.pt").is_file()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")  # not what a run writes: still refused
    with pytest.raises(SystemExit) as code:
        main([*args[:-1], str(tmp_path / "other")])
    assert code.value.code == 2 and "already exists" in capsys.readouterr().err
