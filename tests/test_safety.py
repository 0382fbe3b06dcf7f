"""Safety: checkpoints never run code, outputs keep the umask, and data / config mistakes that
used to give silently wrong results are one-line errors or loud warnings."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from fcosdet.cli.main import main
from fcosdet.cli.main import run as cli
from fcosdet.config import apply_overrides
from fcosdet.data.coco import read_coco
from fcosdet.data.layout import load_dataset_spec
from fcosdet.data.voc import read_voc
from fcosdet.data.yolo import read_yolo
from fcosdet.deploy.predictor import Detector
from fcosdet.engine.checkpoint import rng_state, set_rng_state
from fcosdet.errors import UserError
from fcosdet.io.model_file import ModelFile, save_atomic
from fcosdet.model.build import build_model
from fcosdet.presets import preset

SMALL = ["--set", "model.depth=10", "--set", "model.fpn_channels=32", "--set", "model.feat_channels=32",
         "--set", "model.stacked_convs=1", "--set", "data.scale=[192,128]", "--set", "data.multiscale_short=null",
         "--set", "data.batch_size=2", "--set", "data.workers=0", "--set", "train.log_interval=1",
         "--set", "train.warmup_iters=2", "--set", "test.max_per_img=10"]


def tiny_bccd(root: Path, shared_data: Path, *, n_train: int = 6, n_val: int = 2) -> Path:
    """A dataset YAML over the first bccd val images (n_train train, the next n_val val)."""
    src = json.loads((shared_data / "bccd" / "val.json").read_text())
    root.mkdir(parents=True, exist_ok=True)
    for name, images in (("train", src["images"][:n_train]), ("val", src["images"][n_train:n_train + n_val])):
        ids = {im["id"] for im in images}
        ann = {**src, "images": images, "annotations": [a for a in src["annotations"] if a["image_id"] in ids]}
        (root / f"{name}.json").write_text(json.dumps(ann))
    (root / "data.yaml").write_text(
        f"format: coco\nroot: .\ntrain: {{images: {shared_data / 'bccd' / 'images'}, annotations: train.json}}\n"
        f"val: {{images: {shared_data / 'bccd' / 'images'}, annotations: val.json}}\n")
    return root / "data.yaml"


class _Payload:
    """Unpickling this creates a file: the side effect a malicious checkpoint would have."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def _crafted(path: Path, marker: Path) -> Path:
    torch.save({"model": {}, "class_names": ["a"], "config": {}, "x": _Payload(marker)}, path)
    assert not marker.exists()
    return path


def _one_error_line(capsys, code_holder) -> str:
    err = capsys.readouterr().err.strip()
    assert code_holder.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fcosdet: error:"), err
    return err


# ----------------------------------------------------------------------------- checkpoints


def test_crafted_checkpoint_runs_no_code_on_any_load_path(tmp_path, shared_data, capsys):
    marker = tmp_path / "pwned"
    evil = _crafted(tmp_path / "evil.pt", marker)
    with pytest.raises(UserError, match="evil.pt.*weights_only=True"):
        ModelFile.load(evil)
    with pytest.raises(UserError, match="evil.pt"):
        Detector.from_file(evil)
    image = sorted((shared_data / "bccd" / "images").iterdir())[0]
    for argv in (["eval", str(evil), "--data", str(shared_data / "bccd")],
                 ["predict", str(evil), str(image), "--out", str(tmp_path / "pred")]):
        with pytest.raises(SystemExit) as code:
            main(argv)
        assert "evil.pt" in _one_error_line(capsys, code)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _crafted(run_dir / "last.pt", marker)
    data = tiny_bccd(tmp_path / "data", shared_data)
    with pytest.raises(SystemExit) as code:
        main(["train", "fcos_r18_cpu", "--data", str(data), "--run-dir", str(run_dir), *SMALL, "--resume"])
    assert "last.pt" in _one_error_line(capsys, code)
    assert not marker.exists(), "the checkpoint's payload ran"


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    import random

    import numpy as np
    save_atomic({"model": {}, "rng": rng_state()}, tmp_path / "r.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    for _ in range(3):
        random.random(), np.random.rand(), torch.rand(())  # move every generator on
    set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        save_atomic({"model": {"w": torch.ones(1)}}, tmp_path / "a.pt")
        os.umask(0o022)
        save_atomic({"model": {"w": torch.ones(1)}}, tmp_path / "b.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.pt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.pt").stat().st_mode) == 0o644


def test_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(2)}}, path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=r"cannot write checkpoint .*last\.pt \(No space left on device\); "
                                        r"the previous last\.pt is kept"):
        save_atomic({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


# ----------------------------------------------------------------------------- splits and data


def _jpeg(path: Path, size=(64, 48)) -> Path:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 20, 160)).save(path)
    return path


def _coco(root: Path, name: str, file_names: list[str], boxes: list[list[float]]) -> Path:
    ann = {"images": [{"id": i + 1, "file_name": f} for i, f in enumerate(file_names)],
           "annotations": [{"id": j + 1, "image_id": 1, "bbox": b, "category_id": 1, "iscrowd": 0}
                           for j, b in enumerate(boxes)],
           "categories": [{"id": 1, "name": "thing"}]}
    (root / name).write_text(json.dumps(ann))
    return root / name


def _yolo(root: Path) -> Path:
    _jpeg(root / "images" / "a.jpg")
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text("names: [thing]\n")
    return root


def test_missing_split_is_an_error_naming_the_files_looked_for(tmp_path, shared_data, capsys):
    with pytest.raises(UserError, match=r"no split 'tset'.*tset\.json.*splits there: \['annotations', "
                                        r"'orig_test', 'orig_trainval', 'train', 'val'\]"):
        load_dataset_spec(shared_data / "bccd", "tset")
    with pytest.raises(UserError, match=r"ImageSets/Main/tset\.txt does not exist"):
        read_voc(shared_data / "bccd", "tset")
    yolo = _yolo(tmp_path / "yolo")
    with pytest.raises(UserError, match=r"no split 'val' \(looked for .*val\.txt, 'val:' in .*data\.yaml"):
        load_dataset_spec(yolo, "val")
    (yolo / "data.yaml").write_text("names: [thing]\nval: valid/images\n")
    with pytest.raises(UserError, match=r"'val: valid/images' points at .*valid/images, which does not exist"):
        load_dataset_spec(yolo, "val")
    (tmp_path / "d.yaml").write_text("format: coco\nroot: .\ntrain: train.json\n")
    with pytest.raises(UserError, match=r"d\.yaml has no 'val' entry.*or choose another split\.$"):
        load_dataset_spec(tmp_path / "d.yaml", "val")  # training adds data.val_split=none (test below)
    # the misspelt split of the issue: eval on bccd --split tset printed a table over every image
    ckpt = tmp_path / "model.pt"
    cfg = preset("fcos_r18_cpu")
    cfg.data.dataset, cfg.model.num_classes = str(shared_data / "bccd"), 3
    save_atomic({"model": build_model(cfg.model).state_dict(), "config": cfg.to_dict(),
                 "class_names": ["Platelets", "RBC", "WBC"]}, ckpt)
    with pytest.raises(SystemExit) as code:
        main(["eval", str(ckpt), "--split", "tset"])
    line = _one_error_line(capsys, code)
    assert "tset" in line and "val_split" not in line  # a training setting is no way out for eval


def test_yolo_without_val_trains_only_with_val_split_none(tmp_path, shared_data, capsys):
    yolo = _yolo(tmp_path / "yolo")
    _jpeg(yolo / "images" / "b.jpg")
    args = ["train", "fcos_r18_cpu", "--data", str(yolo), *SMALL, "--set", "train.max_iters=1",
            "--set", "data.scale=[64,64]"]
    with pytest.raises(SystemExit) as code:
        main([*args, "--run-dir", str(tmp_path / "r1")])
    assert "data.val_split=none" in _one_error_line(capsys, code)
    cli([*args, "--run-dir", str(tmp_path / "r2"), "--set", "data.val_split=none"])
    out = capsys.readouterr().out
    assert "no evaluation (data.val_split=none)" in out and "train: 2 images, 1 boxes from" in out
    assert (tmp_path / "r2" / "last.pt").is_file() and not (tmp_path / "r2" / "best.pt").exists()


def test_val_sharing_training_images_is_warned_with_the_count(tmp_path, shared_data, capsys):
    data = tiny_bccd(tmp_path / "data", shared_data, n_train=4, n_val=2)
    train = json.loads((tmp_path / "data" / "train.json").read_text())
    (tmp_path / "data" / "val.json").write_text(json.dumps(train))  # val = the training images
    cli(["train", "fcos_r18_cpu", "--data", str(data), "--run-dir", str(tmp_path / "run"), *SMALL,
         "--set", "train.max_iters=1"])
    captured = capsys.readouterr()
    assert "fcosdet: warning: 4 of the 4 val images" in captured.err
    assert f"val: 4 images, {len(train['annotations'])} boxes from {tmp_path / 'data' / 'val.json'}" in captured.out
    cli(["eval", str(tmp_path / "run" / "last.pt"), "--split", "val"])
    assert f"val: 4 images, {len(train['annotations'])} boxes from" in capsys.readouterr().out
    cli(["check-data", str(data), "--splits", "train"])
    assert f"train: 4 images, {len(train['annotations'])} boxes from" in capsys.readouterr().out


def test_file_names_leaving_the_dataset_root_are_refused_unless_allowed(tmp_path):
    _jpeg(tmp_path / "outside.jpg")
    root = tmp_path / "ds"
    _jpeg(root / "images" / "in.jpg")
    for name in ("../../outside.jpg", str(tmp_path / "outside.jpg")):
        ann = _coco(root, "train.json", ["in.jpg", name], [[1, 1, 5, 5]])
        with pytest.raises(UserError, match=r"train\.json: image id 2 names the image .*outside\.jpg.*leaves "
                                            r"the dataset folder.*data\.allow_outside_root=true"):
            read_coco(root / "images", ann)
        assert len(read_coco(root / "images", ann, allow_outside_root=True).records) == 2
    yolo = _yolo(tmp_path / "yolo")
    (yolo / "train.txt").write_text(f"images/a.jpg\n{tmp_path / 'outside.jpg'}\n")
    with pytest.raises(UserError, match=r"train\.txt names the image .*outside\.jpg.*leaves"):
        read_yolo(yolo, split_list=yolo / "train.txt")
    assert len(read_yolo(yolo, split_list=yolo / "train.txt", allow_outside_root=True).records) == 2
    voc = tmp_path / "voc"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("x\n")
    (voc / "Annotations" / "x.xml").write_text("<annotation><filename>../../outside.jpg</filename></annotation>")
    with pytest.raises(UserError, match=r"x\.xml \(<filename>\) names the image '\.\./\.\./outside\.jpg'"):
        read_voc(voc, "train")


def test_boxes_partly_outside_are_clipped_and_counted_fully_outside_refused(tmp_path):
    root = tmp_path / "ds"
    _jpeg(root / "images" / "a.jpg", size=(64, 48))
    ann = _coco(root, "train.json", ["a.jpg"], [[-10, 5, 30, 10], [50, 40, 30, 30], [10, 10, 5, 5],
                                                [-0.5, 1, 10, 10]])
    split = read_coco(root / "images", ann)
    assert split.records[0].boxes.tolist() == [[0, 5, 20, 15], [50, 40, 64, 48], [10, 10, 15, 15],
                                               [0, 1, 9.5, 11]]
    assert split.clipped == 2  # the 0.5 px one is rounding, not counted
    ann = _coco(root, "train.json", ["a.jpg"], [[1, 1, 5, 5], [70, 10, 5, 5]])
    with pytest.raises(UserError, match=r"annotation id 2 .* lies entirely outside the 64x48 image"):
        read_coco(root / "images", ann)


def test_empty_split_is_one_line(tmp_path, shared_data, capsys):
    root = tmp_path / "ds"
    _jpeg(root / "images" / "a.jpg")
    _coco(root, "train.json", [], [])
    _coco(root, "val.json", ["a.jpg"], [[1, 1, 5, 5]])
    args = ["train", "fcos_r18_cpu", "--data", str(root), *SMALL, "--run-dir"]
    with pytest.raises(SystemExit) as code:
        main([*args, str(tmp_path / "r1")])
    err = _one_error_line(capsys, code)
    assert "split 'train'" in err and "train.json" in err and "holds no images;" in err
    _coco(root, "train.json", ["missing.jpg"], [[1, 1, 5, 5]])
    with pytest.raises(SystemExit) as code:
        main([*args, str(tmp_path / "r2"), "--skip-invalid"])
    err = _one_error_line(capsys, code)
    assert "holds no images after skipping 1 invalid ones" in err


# ----------------------------------------------------------------------------- model settings


def test_frozen_random_backbone_is_refused_naming_the_fix(tmp_path, shared_data, capsys):
    data = tiny_bccd(tmp_path / "data", shared_data)
    with pytest.raises(SystemExit) as code:
        main(["train", "fcos_r50_1x", "--data", str(data), "--run-dir", str(tmp_path / "run"), *SMALL,
              "--set", "model.depth=50", "--set", "train.max_iters=1"])
    err = _one_error_line(capsys, code)
    assert "model.backbone_weights=" in err and "model.frozen_stages=-1 --set model.backbone_norm=gn" in err


def test_torchvision_weights_with_caffe_normalisation_warn(capsys):
    from fcosdet.engine.build import check_backbone_init
    cfg = apply_overrides(preset("fcos_r50_1x"), {"model.backbone_weights": "resnet50.pth"})
    check_backbone_init(cfg)
    assert "data.normalize=caffe feeds BGR 0-255: set --set data.normalize=pytorch" in capsys.readouterr().err
    check_backbone_init(apply_overrides(cfg, {"data.normalize": "pytorch"}))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("override, phrase", [
    ("model.strides=[4,8,16,32,64]", "strides [8, 16, 32, 64, 128]"),
    ("model.regress_ranges=[[-1,64],[64,100000000]]", "one [lo, hi] pair"),
    ("model.regress_ranges=[[-1,64],[64,128],[128,256],[256,512],[512,100]]", "lo < hi"),
])
def test_strides_the_network_does_not_produce_are_refused(tmp_path, shared_data, override, phrase, capsys):
    data = tiny_bccd(tmp_path / "data", shared_data, n_train=2, n_val=1)
    with pytest.raises(SystemExit) as code:  # before: trained with assignment strides != feature strides
        main(["train", "fcos_r18_cpu", "--data", str(data), "--run-dir", str(tmp_path / "run"), *SMALL,
              "--set", "train.max_iters=1", "--set", override])
    assert phrase in _one_error_line(capsys, code)


# ----------------------------------------------------------------------------- predict


def _checkpoint(path: Path) -> Path:
    cfg = apply_overrides(preset("fcos_r18_cpu"), {"model.depth": 10, "model.fpn_channels": 32,
                                                   "model.feat_channels": 32, "model.stacked_convs": 1,
                                                   "model.num_classes": 2, "data.scale": [128, 128]})
    save_atomic({"model": build_model(cfg.model).state_dict(), "config": cfg.to_dict(),
                 "class_names": ["a", "b"], "category_ids": None}, path)
    return path


def test_predict_keeps_relative_paths_skips_undecodable_and_checks_thresholds(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "m.pt")
    images = tmp_path / "images"
    _jpeg(images / "a" / "x.jpg", size=(96, 80))
    _jpeg(images / "b" / "x.jpg", size=(80, 96))
    (images / "b" / "broken.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "pred"
    cli(["predict", str(ckpt), str(images), "--out", str(out), "--score-thr", "0"])
    captured = capsys.readouterr()
    assert (out / "a" / "x_det.jpg").is_file() and (out / "b" / "x_det.jpg").is_file()
    assert "skipped 1 of 3 images that cannot be decoded (first: " in captured.err and "broken.jpg" in captured.err
    assert "dataset" not in captured.err + captured.out
    files = {p["file_name"] for p in json.loads((out / "predictions.json").read_text())}
    assert files <= {str(images / "a" / "x.jpg"), str(images / "b" / "x.jpg")}
    cli(["predict", str(ckpt), str(images / "a" / "x.jpg"), str(images / "b" / "x.jpg"), "--out", str(out)])
    assert "replaced 3 files already there" in capsys.readouterr().out
    for flag in ("--score-thr", "--draw-thr"):
        with pytest.raises(SystemExit) as code:
            main(["predict", str(ckpt), str(images), "--out", str(out), flag, "1.5"])
        assert f"{flag} 1.5 is outside [0, 1]" in _one_error_line(capsys, code)
