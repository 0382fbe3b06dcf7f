"""Ray Data (`fcosdet.deploy.ray_data`): `map_batches(RayDetector, ...)` on a local Ray instance over
mixed-size shared-data images read as bytes gives what `fcosdet predict` gives on the same files;
an undecodable file is an error row, not a failed job; the same class runs without Ray on paths;
without the extra installed, one UserError names the install command."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from test_serve import assert_same_as_predict, tiny_model

from fcosdet.cli.predict import predict_files
from fcosdet.deploy.ray_data import RayDetector, read_images, require_ray
from fcosdet.errors import UserError

N_IMAGES = {"coco128": 12, "bccd": 4, "aquarium": 4}  # 20 images of many sizes (coco128 has 91)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("ray")
    model = tiny_model(root / "model.pt")
    images = [p for name, n in N_IMAGES.items() for p in sorted((shared_data / name / "images").glob("*.jpg"))[:n]]
    coco = predict_files(model, [str(p) for p in images], out_dir=root / "predict", batch_size=1, device="cpu")
    reference = {str(p): [d for d in coco if d["file_name"] == str(p)] for p in images}
    broken = root / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    return {"model": model, "images": images, "reference": reference, "broken": broken}


@pytest.mark.slow
@pytest.mark.integration
def test_map_batches_over_mixed_sizes_equals_fcosdet_predict(setup):
    ray = pytest.importorskip("ray", reason="the optional extra: pip install 'fcosdet[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = read_images([*setup["images"], setup["broken"]])
        out = ds.map_batches(RayDetector, fn_constructor_kwargs={"model": setup["model"]}, batch_size=8,
                             concurrency=1, num_cpus=1, batch_format="numpy")  # 1 CPU left for the reads
        rows = {row["path"]: row for row in out.take_all()}
    finally:
        ray.shutdown()
    assert len(rows) == len(setup["images"]) + 1
    assert "broken.jpg" in rows[str(setup["broken"])]["error"] and rows[str(setup["broken"])]["results"] == ""
    sizes = set()
    for path, expected in setup["reference"].items():
        row = rows[path]
        assert row["error"] == "", row["error"]
        results = json.loads(row["results"])
        assert results["file_name"] == path and row["num_detections"] == len(results["detections"]) > 0
        assert_same_as_predict(results, expected, path)
        sizes.add((results["width"], results["height"]))
    assert len(sizes) >= 6  # mixed sizes in the same batches


def test_the_class_runs_on_paths_without_ray(setup):
    images = setup["images"][:3] + setup["images"][-2:]  # coco128 and aquarium sizes in one batch
    out = RayDetector(setup["model"])({"path": np.array([str(p) for p in images] + [str(setup["broken"])])})
    assert list(out) == ["path", "results", "num_detections", "error"] and len(out["path"]) == 6
    for path, results in zip(out["path"][:5], out["results"][:5]):
        assert_same_as_predict(json.loads(results), setup["reference"][path], path)
    assert out["results"][5] == "" and "broken.jpg cannot be read" in out["error"][5]


def test_without_ray_one_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UserError, match=r"pip install 'fcosdet\[ray\]'"):
        require_ray()
