"""Engine pieces: the schedule, parameter groups, non-finite loss, atomic checkpoints, bad data."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fcosdet.cli.main import main
from fcosdet.config import apply_overrides
from fcosdet.data.loader import Batch
from fcosdet.engine.loop import NonFiniteLossError, StepContext, train_step
from fcosdet.engine.optim import WarmupSchedule, build_optimizer
from fcosdet.errors import UserError
from fcosdet.io.model_file import ModelFile, save_atomic
from fcosdet.presets import preset


def test_warmup_and_schedules():
    step = WarmupSchedule(iters_per_epoch=10, total_iters=120, warmup="constant", warmup_iters=5,
                          warmup_ratio=1 / 3, schedule="step", steps=(8, 11))
    assert step(0) == pytest.approx(1 / 3) and step(4) == pytest.approx(1 / 3) and step(5) == 1
    assert step(79) == 1 and step(80) == pytest.approx(0.1) and step(110) == pytest.approx(0.01)
    lin = WarmupSchedule(iters_per_epoch=10, total_iters=100, warmup="linear", warmup_iters=10,
                         warmup_ratio=0.5, schedule="cosine")
    assert lin(0) == pytest.approx(0.5) and lin(5) == pytest.approx(0.75 * (0.5 * (1 + torch.cos(torch.tensor(torch.pi * 0.05))).item()))
    assert lin(50) == pytest.approx(0.5) and lin(100) == pytest.approx(0.0, abs=1e-12)


def test_parameter_groups_bias_lr_and_no_decay():
    model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.GroupNorm(32, 32), nn.Conv2d(32, 4, 1))
    opt = build_optimizer(model, lr=0.01, weight_decay=1e-4, bias_lr_mult=2.0, bias_decay_mult=0.0)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert by_id[id(model[0].weight)]["weight_decay"] == 1e-4 and by_id[id(model[0].weight)]["lr"] == 0.01
    assert by_id[id(model[0].bias)]["lr"] == 0.02 and by_id[id(model[0].bias)]["weight_decay"] == 0
    assert by_id[id(model[1].weight)]["weight_decay"] == 0 and by_id[id(model[1].weight)]["lr"] == 0.01
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
    adamw = build_optimizer(model, lr=1e-3, weight_decay=0.05, kind="adamw")
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.9, 0.999)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.05, 0.0, 0.0]
    assert [g["lr"] for g in adamw.param_groups] == [1e-3, 1e-3, 2e-3]


def test_config_choices_are_checked():
    cfg = apply_overrides(preset("fcos_r18_cpu"), {"train.optimizer": "adamw", "model.head_norm": None,
                                                   "model.bbox_loss": "giou"})
    assert (cfg.train.optimizer, cfg.model.head_norm, cfg.model.bbox_loss) == ("adamw", None, "giou")
    for key, value in [("train.schedule", "cosin"), ("train.amp", "bf17"), ("model.backbone_norm", 1),
                       ("data.normalize", None), ("train.warmup", True)]:
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            apply_overrides(preset("fcos_r18_cpu"), {key: value})


def test_non_finite_loss_names_iteration_and_images():
    model = nn.Conv2d(3, 1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ctx = StepContext(model=model, criterion=lambda out, t: {"loss_cls": out.sum() * float("nan")},
                      optimizer=opt, scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0),
                      scaler=None, device=torch.device("cpu"), amp_dtype=None, grad_clip=35.0)
    batch = Batch(images=torch.ones(2, 3, 4, 4), targets=[{"path": "/d/a.jpg"}, {"path": "/d/b.png"}])
    before = model.weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match=r"iteration 8 .*a\.jpg, b\.png"):
        train_step(ctx, batch, 7)
    assert torch.equal(before, model.weight)  # no step was taken


def test_atomic_save_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(2)}}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        save_atomic({"model": Boom()}, path)
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="cut.pt"):
        ModelFile.load(tmp_path / "cut.pt")


def _tiny_coco(tmp_path: Path, shared_data: Path) -> Path:
    """A 4-image COCO copy of bccd's first images, one of them truncated."""
    src = json.loads((shared_data / "bccd" / "val.json").read_text())
    images = src["images"][:4]
    ids = {im["id"] for im in images}
    (tmp_path / "images").mkdir(parents=True)
    for im in images:
        data = (shared_data / "bccd" / "images" / im["file_name"]).read_bytes()
        (tmp_path / "images" / im["file_name"]).write_bytes(data if im is not images[1] else data[: len(data) // 3])
    ann = {**src, "images": images, "annotations": [a for a in src["annotations"] if a["image_id"] in ids]}
    (tmp_path / "train.json").write_text(json.dumps(ann))
    (tmp_path / "val.json").write_text(json.dumps(ann))
    return images[1]["file_name"]


def test_truncated_image_stops_with_one_line_or_is_skipped(tmp_path, shared_data, capsys):
    bad = _tiny_coco(tmp_path / "data", shared_data)
    args = ["train", "fcos_r18_cpu", "--data", str(tmp_path / "data"), "--set", "model.fpn_channels=32",
            "--set", "model.feat_channels=32", "--set", "data.scale=[160,128]", "--set", "data.workers=1",
            "--set", "data.multiscale_short=null", "--set", "train.epochs=1", "--set", "train.max_iters=1"]
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--run-dir", str(tmp_path / "r1")])
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if "error" in line]
    assert exit_info.value.code == 2 and len(errors) == 1 and bad in errors[0], err
    assert "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(args + ["--run-dir", str(tmp_path / "r2"), "--skip-invalid"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "skipped 1 invalid" in out and bad in out
    assert (tmp_path / "r2" / "last.pt").is_file()
