"""torchrun with 2 gloo workers on the CPU: the same losses and gradients as one process, a
short distributed training run with distributed evaluation and resume, and a worker that dies."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.integration]

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    return env


def test_two_workers_match_one_process(tmp_path, shared_data):
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    script = str(HERE / "dist_equivalence.py")
    subprocess.run([sys.executable, script, str(shared_data / "bccd"), str(one)], check=True, env=_env())
    subprocess.run(TORCHRUN + [script, str(shared_data / "bccd"), str(two)], check=True, env=_env(),
                   timeout=300)
    a, b = torch.load(one), torch.load(two)
    assert a["world"] == 1 and b["world"] == 2
    for k in a["losses"]:
        assert torch.allclose(a["losses"][k], b["losses"][k], rtol=1e-5, atol=1e-6), k
    assert a["grads"].keys() == b["grads"].keys()
    for n in a["grads"]:
        assert torch.allclose(a["grads"][n], b["grads"][n], rtol=1e-3, atol=1e-6), n


def _train_args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["-m", "fcosdet.cli", "train", "fcos_r18_cpu", "--data", str(data), "--run-dir", str(run_dir),
            "--skip-invalid", "--set", "model.depth=18", "--set", "model.fpn_channels=32",
            "--set", "model.feat_channels=32", "--set", "model.stacked_convs=1",
            "--set", "data.scale=[224,160]", "--set", "data.multiscale_short=null",
            "--set", "data.batch_size=2", "--set", "data.workers=0", "--set", "train.log_interval=1", *extra]


def test_one_worker_launch_joins_a_process_group(tmp_path, shared_data):
    """torchrun with one worker (one GPU) still forms a process group (NCCL on a GPU, gloo here)."""
    run_dir = tmp_path / "run"
    args = _train_args(shared_data / "bccd", run_dir, "--set", "train.epochs=1", "--set", "train.max_iters=1")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    proc = subprocess.run([*launch, "--no-python", sys.executable, *args],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "on cpu x1 (gloo)" in proc.stdout
    assert (run_dir / "last.pt").is_file()


def _voc_yaml(tmp_path: Path, shared_data: Path) -> Path:
    data = tmp_path / "voc.yaml"
    data.write_text(f"format: voc\nroot: {shared_data / 'bccd'}\ntrain: val\nval: test\n")
    return data


def test_distributed_training_and_evaluation(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    data = _voc_yaml(tmp_path, shared_data)
    args = _train_args(data, run_dir, "--set", "train.epochs=1", "--set", "train.max_iters=3")
    proc = subprocess.run([*TORCHRUN, "--no-python", sys.executable, *args],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in run_dir.glob("*.pt")) == ["best.pt", "last.pt"]
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if "loss" in r] == [1, 2, 3]  # one writer, not two
    assert proc.stdout.count("training ") == 1 and "on cpu x2 (gloo)" in proc.stdout
    dist_metrics = json.loads((run_dir / "metrics.json").read_text())
    # the same checkpoint evaluated by one process gives the same mAP
    single = subprocess.run([sys.executable, "-m", "fcosdet.cli", "eval", str(run_dir / "last.pt"),
                             "--out", str(tmp_path / "ev")], env=_env(), capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    single_metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    for k in ("AP", "AP50", "AP75"):
        assert dist_metrics[k] == pytest.approx(single_metrics[k], abs=1e-9), k

    # resume the distributed run: iterations 4 and 5 follow, logged once, on every rank
    args = _train_args(data, run_dir, "--set", "train.epochs=2", "--set", "train.max_iters=5", "--resume")
    proc = subprocess.run([*TORCHRUN, "--no-python", sys.executable, *args],
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("resumed") == 1
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if "loss" in r] == [1, 2, 3, 4, 5]
    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert state["iteration"] == 5 and state["epoch"] == 2


def _worker_pids(parent: int) -> dict[int, int]:
    """LOCAL_RANK -> pid of the worker processes torchrun (pid `parent`) started (Linux /proc)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (proc / "environ").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue  # the process ended while we looked
        env = dict(kv.split("=", 1) for kv in environ if "=" in kv)
        if ppid == parent and "LOCAL_RANK" in env:
            found[int(env["LOCAL_RANK"])] = int(proc.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through Linux /proc")
def test_dead_worker_stops_the_run_in_bounded_time(tmp_path, shared_data):
    """SIGKILL rank 1 mid-training: rank 0 must not hang in a collective; the launch fails fast,
    says which worker failed, and the checkpoint saved before stays loadable."""
    run_dir = tmp_path / "run"
    data = _voc_yaml(tmp_path, shared_data)
    args = _train_args(data, run_dir, "--set", "train.epochs=100", "--set", "train.eval_interval=100")
    launch = subprocess.Popen([*TORCHRUN, "--no-python", sys.executable, *args], env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "last.pt").is_file():  # one epoch done and saved
            assert launch.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.5)
        os.kill(_worker_pids(launch.pid)[1], signal.SIGKILL)
        killed = time.monotonic()
        _, err = launch.communicate(timeout=120)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert time.monotonic() - killed < 120
    assert launch.returncode != 0
    assert "Signals.SIGKILL" in err or "-9" in err, err[-2000:]  # torchrun names the failed worker
    assert torch.load(run_dir / "last.pt", weights_only=False)["epoch"] >= 1  # written atomically
