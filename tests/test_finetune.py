"""model.init_from: tensors copied by name and shape, classification rows by class name;
torchvision's named backbone weights; fine-tuning an imported COCO FCOS on bccd."""
from __future__ import annotations

import json
import math
import urllib.error

import pytest
import torch
import yaml
from torchvision.models.detection import fcos_resnet50_fpn

from fcosdet.cli.main import run
from fcosdet.engine.finetune import init_from_checkpoint
from fcosdet.errors import UserError
from fcosdet.io.model_file import ModelFile
from fcosdet.model.backbone import ResNetBackbone
from fcosdet.model.build import build_model
from fcosdet.presets import preset


def _source(names: list[str], seed: int = 1) -> ModelFile:
    cfg = preset("demo")
    cfg.model.num_classes = len(names)
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # nothing equals a fresh initialisation by chance
    return ModelFile(model=model.state_dict(), config=cfg.to_dict(), class_names=names)


def _target(names: list[str]) -> torch.nn.Module:
    cfg = preset("demo")
    cfg.model.num_classes = len(names)
    torch.manual_seed(2)
    return build_model(cfg.model)


def test_init_from_copies_tensors_and_class_rows_by_name():
    source = _source(["RBC", "WBC", "Platelets"])
    model = _target(["Platelets", "cat"])
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_checkpoint(model, source, class_names=["Platelets", "cat"], path="src.pt")
    own, src = model.state_dict(), source.model
    for key in own:
        if not key.startswith("head.conv_cls."):
            assert torch.equal(own[key], src[key]), key
    assert torch.equal(own["head.conv_cls.weight"][0], src["head.conv_cls.weight"][2])  # Platelets
    assert torch.equal(own["head.conv_cls.bias"][0], src["head.conv_cls.bias"][2])
    assert torch.equal(own["head.conv_cls.weight"][1], fresh["head.conv_cls.weight"][1])  # cat: fresh
    assert own["head.conv_cls.bias"][1].item() == pytest.approx(-math.log(99))  # prior 0.01
    assert report.classes_kept == ["Platelets"] and report.classes_new == ["cat"]
    assert report.reinitialised == ["head.conv_cls.weight", "head.conv_cls.bias"]
    assert len(report.loaded) == len(own) - 2 and not report.skipped and not report.not_in_source


def test_init_from_same_classes_in_another_order_loads_everything():
    source = _source(["a", "b", "c"])
    model = _target(["c", "a", "b"])
    report = init_from_checkpoint(model, source, class_names=["c", "a", "b"], path="src.pt")
    w = model.state_dict()["head.conv_cls.weight"]
    assert torch.equal(w, source.model["head.conv_cls.weight"][[2, 0, 1]])
    assert not report.reinitialised and report.classes_new == []


def test_init_from_another_architecture_is_one_clear_error():
    source = _source(["a"])
    cfg = preset("demo")
    cfg.model.feat_channels = 32
    with pytest.raises(UserError, match="does not fit this model"):
        init_from_checkpoint(build_model(cfg.model), source, class_names=["a"], path="src.pt")


def test_backbone_weights_by_torchvision_name_offline_and_unknown(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as err:
        ResNetBackbone(depth=50, weights="torchvision:ResNet50_Weights.IMAGENET1K_V2")
    assert "\n" not in str(err.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in str(err.value)
    with pytest.raises(UserError, match="not one of torchvision's weights"):
        ResNetBackbone(depth=50, weights="torchvision:ResNet50_Weights.NOPE")


def test_backbone_weights_by_name_from_the_cache_and_normalisation(tmp_path, monkeypatch):
    """A file already in torch.hub's cache is used (no download) and sets data.normalize."""
    from fcosdet.engine.build import use_pretrained_normalize
    from fcosdet.io.hub import cache_path, torchvision_weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = torchvision_weights("torchvision:ResNet18_Weights.IMAGENET1K_V1")
    from torchvision.models import resnet18
    torch.manual_seed(0)
    reference = resnet18()
    cache_path(weights).parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cache_path(weights))

    def no_download(*args, **kwargs):
        raise AssertionError("a file in the cache must not be downloaded again")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    backbone = ResNetBackbone(depth=18, norm="frozen_bn", weights="torchvision:ResNet18_Weights.IMAGENET1K_V1")
    assert torch.equal(backbone.body.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    cfg = preset("fcos_r50_1x")
    cfg.model.backbone_weights = "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert cfg.data.normalize == "caffe"
    use_pretrained_normalize(cfg, None)
    assert cfg.data.normalize == "pytorch"


def _tiny_bccd(tmp_path, shared_data) -> str:
    """A dataset YAML over 4 train / 2 val bccd images (written in tmp_path)."""
    full = json.loads((shared_data / "bccd" / "train.json").read_text())
    spec = {"format": "coco", "root": str(shared_data / "bccd")}
    for split, ids in (("train", full["images"][:4]), ("val", full["images"][4:6])):
        keep = {im["id"] for im in ids}
        part = dict(full, images=ids, annotations=[a for a in full["annotations"] if a["image_id"] in keep])
        (tmp_path / f"{split}.json").write_text(json.dumps(part))
        spec[split] = {"images": "images", "annotations": str(tmp_path / f"{split}.json")}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "data.yaml")


@pytest.mark.slow
def test_finetune_imported_coco_fcos_on_bccd(tmp_path, shared_data, capsys):
    torch.manual_seed(0)
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    assert run(["import-weights", "torchvision-fcos", str(tmp_path / "tv.pth"), "--out", str(tmp_path / "coco.pt")]) == 0
    data = _tiny_bccd(tmp_path, shared_data)
    run_dir = tmp_path / "run"
    assert run(["train", "fcos_r50_finetune", "--data", data, "--run-dir", str(run_dir),
                "--set", f"model.init_from={tmp_path / 'coco.pt'}", "--set", "data.scale=[192,128]",
                "--set", "data.multiscale_short=null", "--set", "data.batch_size=2", "--set", "data.workers=0",
                "--set", "train.max_iters=2", "--set", "train.warmup_iters=1"]) == 0
    out, err = capsys.readouterr()
    assert "classification rows copied for 0 classes" in out and "re-initialised for 3 (WBC, RBC, Platelets)" in out
    # the preset's point_offset=zero is torchvision's spacing as training assigns it: no false alarm
    # (settings that do change what the weights compute are loud warnings: test_import_mmdet.py)
    assert "warning: init_from" not in err
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    src = torch.load(tmp_path / "coco.pt", weights_only=True)
    assert ckpt["model"]["head.conv_cls.weight"].shape[0] == 3
    # the frozen stem is exactly the imported one after training
    assert torch.equal(ckpt["model"]["backbone.body.conv1.weight"], src["model"]["backbone.body.conv1.weight"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["AP"] <= 1.0
