import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the tests need ../shared/data beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="session")
def demo_model(tmp_path_factory) -> dict:
    """The demo preset trained for 3 epochs on the built-in shapes dataset (about 2 min on 2 cores):
    a model that finds the shapes, for the video, tracking and slicing tests. Returns {"model": last.pt,
    "data": the dataset folder}. While developing, FCOSDET_TEST_DEMO_RUN=runs/demo reuses a finished
    `fcosdet demo` run instead (its last.pt, and the shapes data beside it in runs/shapes-data)."""
    reuse = os.environ.get("FCOSDET_TEST_DEMO_RUN")
    if reuse:
        run = Path(reuse)
        return {"model": run / "last.pt", "data": run.parent / "shapes-data"}
    from fcosdet.cli.train import train
    from fcosdet.data.synthetic import ensure_synthetic_dataset
    from fcosdet.presets import preset

    root = tmp_path_factory.mktemp("demo-model")
    cfg = preset("demo")
    info = ensure_synthetic_dataset(root / "shapes-data", image_size=(cfg.data.scale[1], cfg.data.scale[1]))
    cfg.data.dataset = info["yaml"]
    cfg.train.epochs = 3
    train(cfg, run_dir=root / "run")
    return {"model": root / "run" / "last.pt", "data": root / "shapes-data"}
