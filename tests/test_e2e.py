"""End to end on real data from ../shared/data: train a few iterations, evaluate, resume, predict."""
import json

import pytest
import torch

from fcosdet.cli.main import main
from fcosdet.cli.main import run as cli
from fcosdet.deploy.predictor import Detector

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TINY = ["--set", "model.depth=18", "--set", "model.fpn_channels=32", "--set", "model.feat_channels=32",
        "--set", "model.stacked_convs=1", "--set", "data.scale=[224,160]", "--set", "data.multiscale_short=null",
        "--set", "data.batch_size=2", "--set", "data.workers=0", "--set", "train.log_interval=1",
        "--set", "train.warmup_iters=2", "--set", "test.max_per_img=20"]


def _train(tmp_path, data, *extra, name="run"):
    run_dir = tmp_path / name
    cli(["train", "fcos_r18_cpu", "--data", str(data), "--run-dir", str(run_dir), *TINY, *extra])
    return run_dir


def test_train_eval_resume_predict_on_bccd(tmp_path, shared_data, capsys):
    run_dir = _train(tmp_path, shared_data / "bccd", "--set", "train.epochs=2", "--set", "train.max_iters=3")
    for name in ("last.pt", "best.pt", "config.yaml", "log.jsonl", "metrics.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "per_class"}
    assert set(metrics["per_class"]) == {"Platelets", "RBC", "WBC"}
    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert state["iteration"] == 3 and state["epoch"] == 1
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log if "loss" in r] == [1, 2, 3]

    # resume continues from iteration 3 to 5 with the optimiser's momentum restored
    cli(["train", "fcos_r18_cpu", "--data", str(shared_data / "bccd"), "--run-dir", str(run_dir), *TINY,
         "--set", "train.epochs=2", "--set", "train.max_iters=5", "--resume"])
    resumed = torch.load(run_dir / "last.pt", weights_only=False)
    assert resumed["iteration"] == 5 and resumed["epoch"] == 2
    assert resumed["optimizer"]["state"], "momentum buffers are saved"
    assert "resumed" in capsys.readouterr().out

    out = tmp_path / "eval"
    ev = cli(["eval", str(run_dir / "last.pt"), "--split", "val", "--out", str(out)])
    assert ev == 0 and (out / "metrics.json").is_file() and (out / "detections.json").is_file()
    # test settings change at evaluation: every score kept, one detection per image
    cli(["eval", str(run_dir / "last.pt"), "--out", str(tmp_path / "ev1"), "--set", "test.score_thr=0",
         "--set", "test.max_per_img=1"])
    per_image = [d["image_id"] for d in json.loads((tmp_path / "ev1" / "detections.json").read_text())]
    val_ids = [im["id"] for im in json.loads((shared_data / "bccd" / "val.json").read_text())["images"]]
    assert sorted(per_image) == sorted(val_ids)

    images = sorted((shared_data / "bccd" / "images").iterdir())[:2]
    pred_dir = tmp_path / "pred"
    cli(["predict", str(run_dir / "last.pt"), *map(str, images), "--out", str(pred_dir)])
    preds = json.loads((pred_dir / "predictions.json").read_text())
    assert len(list(pred_dir.glob("*_det.jpg"))) == 2
    assert all(len(p["bbox"]) == 4 and p["category"] in {"Platelets", "RBC", "WBC"} for p in preds)

    det = Detector.from_file(run_dir / "last.pt", score_thr=0.0)
    result = det.predict(images[0])
    assert result.boxes.shape[1] == 4 and len(result.class_names) == len(result.scores)
    assert (result.boxes[:, 2] <= 640).all() and (result.boxes[:, 3] <= 480).all()


@pytest.mark.parametrize("layout", ["aquarium", "bccd_voc"])
def test_train_and_evaluate_yolo_and_voc_layouts(tmp_path, shared_data, layout, capsys):
    # Both sources hold a few zero-size boxes (their COCO JSONs dropped them): --skip-invalid
    # drops and counts them.
    if layout == "aquarium":  # YOLO txt labels + data.yaml
        data = tmp_path / "aq.yaml"
        data.write_text(f"format: yolo\nroot: {shared_data / 'aquarium'}\ntrain: orig_valid.txt\nval: orig_test.txt\n")
    else:  # Pascal VOC XML + ImageSets
        data = tmp_path / "voc.yaml"
        data.write_text(f"format: voc\nroot: {shared_data / 'bccd'}\ntrain: val\nval: test\n")
    run_dir = _train(tmp_path, data, "--set", "train.epochs=1", "--set", "train.max_iters=2", "--skip-invalid")
    assert "skipped" in capsys.readouterr().out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["AP"] <= 1.0
    state = torch.load(run_dir / "last.pt", weights_only=False)
    assert state["config"]["model"]["num_classes"] == len(state["class_names"])


def test_existing_run_dir_is_not_overwritten_and_errors_are_one_line(tmp_path, shared_data, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"precious")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "fcos_r18_cpu", "--data", str(shared_data / "bccd"), "--run-dir", str(run_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume" in err and "Traceback" not in err
    assert (run_dir / "last.pt").read_bytes() == b"precious"
    for argv in (["train", "nope_preset", "--data", "x"],
                 ["train", "fcos_r18_cpu", "--data", str(tmp_path / "missing")],
                 ["train", "fcos_r18_cpu", "--set", "train.lr=fast", "--data", "x"],
                 ["train", "fcos_r18_cpu", "--set", "train.nope=1", "--data", "x"],
                 ["train", "fcos_r18_cpu", "--set", "train.schedule=cosin", "--data", "x"],
                 ["train", "fcos_r18_cpu", "--set", "train.optimizer=adam", "--data", "x"],
                 ["eval", str(tmp_path / "none.pt")],
                 ["eval", str(tmp_path / "none.pt"), "--set", "model.depth=50"],
                 ["eval", str(tmp_path / "none.pt"), "--set", "test.nms_iou"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv + ["--run-dir", str(tmp_path / "r2")] if argv[0] == "train" else argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("fcosdet: error:"), err


def test_demo_command_end_to_end(tmp_path, monkeypatch, capsys):
    """`fcosdet demo` as `make demo` runs it, cut to 3 iterations: generates the 192 px shapes
    data, trains the demo preset (ResNet-10, AdamW), evaluates, draws detections."""
    from PIL import Image

    from fcosdet import presets

    def short_demo():
        cfg = presets._demo()
        cfg.train.max_iters = 3
        return cfg
    monkeypatch.setitem(presets.PRESETS, "demo", short_demo)
    run_dir, data_dir = tmp_path / "demo", tmp_path / "shapes"
    assert cli(["demo", "--run-dir", str(run_dir), "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert "512 train / 128 val images" in out and "demo finished in" in out and "AP" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["AP"] <= 1.0 and set(metrics["per_class"]) == {"circle", "square", "triangle",
                                                                          "star", "cross"}
    with Image.open(next((data_dir / "images").glob("val_*.jpg"))) as im:
        assert im.size == (192, 192)
    saved = (run_dir / "config.yaml").read_text()
    assert "depth: 10" in saved and "optimizer: adamw" in saved
    assert (run_dir / "curves.png").is_file() and len(list((run_dir / "detections").glob("*_det.jpg"))) == 8
