"""The bccd side-by-side benchmark runs end to end (one epoch on an 8-image slice of bccd) and
prints both models' figures, so its GPU and CPU runs can be trusted to finish."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]


def _bccd_slice(bccd: Path, out: Path) -> Path:
    out.mkdir()
    (out / "images").symlink_to(bccd / "images")
    for split, n in (("train", 8), ("val", 4)):
        coco = json.loads((bccd / f"{split}.json").read_text())
        coco["images"] = coco["images"][:n]
        keep = {im["id"] for im in coco["images"]}
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
        (out / f"{split}.json").write_text(json.dumps(coco))
    return out


def test_benchmark_trains_both_models_and_prints_figures(tmp_path, shared_data):
    data = _bccd_slice(shared_data / "bccd", tmp_path / "bccd")
    out = tmp_path / "result.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bccd_vs_torchvision.py"), "--epochs", "1",
           "--width", "32", "--data", str(data), "--device", "cpu", "--workers", "0",
           "--set", "model.center_sampling=true", "--out", str(out)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="2")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == result
    assert result["sets"] == ["model.center_sampling=true"] and result["device"].startswith("cpu")
    for name in ("fcosdet", "torchvision"):
        assert 0.0 <= result[f"{name}_AP"] <= result[f"{name}_AP50"] <= 1.0
        assert set(result[f"{name}_per_class"]) == {"WBC", "RBC", "Platelets"}
        assert result[f"{name}_seconds"] > 0
    assert result["time_ratio"] > 0
