"""Model smoke tests: one train step on a real image, empty GT, odd sizes, inference, weights."""
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from fcosdet.errors import UserError
from fcosdet.model import ResNetBackbone
from fcosdet.model.build import build_criterion, build_model, build_postprocessor
from fcosdet.presets import preset


def _small_cfg(name="fcos_r18_cpu", classes=3):
    cfg = preset(name)
    cfg.model.num_classes = classes
    cfg.model.fpn_channels = cfg.model.feat_channels = 64
    return cfg


def _bccd_image(shared_data):
    img = Image.open(shared_data / "bccd" / "images" / sorted((shared_data / "bccd" / "images").iterdir())[0].name)
    img = img.convert("RGB").resize((320, 240))
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, 240, 320)
    return ((x - 0.45) / 0.25)[None]


@pytest.mark.parametrize("name", ["fcos_r18_cpu", "fcos_r18_tricks_cpu"])
def test_one_train_step_on_a_real_image(shared_data, name):
    cfg = _small_cfg(name)
    model, criterion = build_model(cfg.model), build_criterion(cfg.model)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images = _bccd_image(shared_data)
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 90.0, 100.0], [150.0, 40.0, 300.0, 230.0]]),
                "labels": torch.tensor([0, 2])}]
    before = [p.detach().clone() for p in model.parameters()]
    losses = criterion(model(images), targets)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_centerness"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    opt.step()
    changed = sum(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert changed > 0


def test_empty_ground_truth_and_odd_sizes():
    cfg = _small_cfg()
    model, criterion = build_model(cfg.model), build_criterion(cfg.model)
    model.train()
    for h, w in [(97, 131), (33, 300), (200, 65)]:
        out = model(torch.randn(2, 3, h, w))
        assert [o.shape[-2:] for o in out[0]] == [torch.Size((-(-h // s), -(-w // s))) for s in (8, 16, 32, 64, 128)]
        targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
                   {"boxes": torch.tensor([[3.0, 3.0, 30.0, 25.0]]), "labels": torch.tensor([1])}]
        losses = criterion(out, targets)
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())


def test_inference_returns_well_formed_detections():
    cfg = _small_cfg()
    cfg.test.score_thr = 0.0
    cfg.test.max_per_img = 50
    model, post = build_model(cfg.model).eval(), build_postprocessor(cfg.model, cfg.test)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 128, 160))
    dets = post(out, image_sizes=[(128, 150), (100, 160)], orig_sizes=[(256, 300), (50, 80)])
    for det, (oh, ow) in zip(dets, [(256, 300), (50, 80)]):
        n = det["boxes"].shape[0]
        assert 0 < n <= 50 and det["scores"].shape == (n,) and det["labels"].shape == (n,)
        b = det["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= ow).all() and (b[:, 3] <= oh).all()
        assert (b[:, 2] >= b[:, 0]).all() and (b[:, 3] >= b[:, 1]).all()
        assert ((det["labels"] >= 0) & (det["labels"] < 3)).all()
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])


def test_head_switches_and_regression_dtype():
    cfg = _small_cfg("fcos_r18_tricks_cpu")
    model = build_model(cfg.model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cls, bbox, ctr = model(torch.randn(1, 3, 64, 64))
    assert all(b.dtype == torch.float32 for b in bbox)
    assert all((b >= 0).all() for b in bbox)  # norm_on_bbox: ReLU
    cfg.model.dcn_on_last_conv = True
    dcn = build_model(cfg.model)
    assert sum(isinstance(m, torchvision.ops.DeformConv2d) for m in dcn.modules()) == 2
    out = dcn(torch.randn(1, 3, 64, 64))
    sum(o.sum() for level in out for o in level).backward()
    assert dcn.head.cls_tower[-3].offset.weight.grad is not None
    assert model.head.conv_cls.bias[0].item() == pytest.approx(-np.log(99), rel=1e-5)


def test_backbone_frozen_stages_and_norm_eval():
    bb = ResNetBackbone(depth=18, norm="bn", frozen_stages=1, norm_eval=True).train()
    assert not any(p.requires_grad for p in bb.body.conv1.parameters())
    assert not any(p.requires_grad for p in bb.body.layer1.parameters())
    assert all(p.requires_grad for p in bb.body.layer2.parameters())
    assert all(not m.training for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_loads_torchvision_weights_from_disk(tmp_path):
    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = ResNetBackbone(depth=18, norm="frozen_bn", weights=path)
    assert torch.equal(bb.body.layer3[1].conv2.weight, ref.layer3[1].conv2.weight)
    assert torch.equal(bb.body.bn1.running_var, ref.bn1.running_var)
    with pytest.raises(UserError, match="do not fit"):
        ResNetBackbone(depth=34, norm="frozen_bn", weights=path)
    with pytest.raises(UserError, match="do not fit"):
        ResNetBackbone(depth=18, norm="gn", weights=path)
    with pytest.raises(UserError, match="do not exist"):
        ResNetBackbone(depth=18, weights=tmp_path / "nope.pth")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read"):
        ResNetBackbone(depth=18, weights=tmp_path / "bad.pth")


def test_resnet10_is_one_basic_block_per_stage():
    bb = ResNetBackbone(depth=10, norm="gn", frozen_stages=-1, norm_eval=False)
    assert [len(getattr(bb.body, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    assert bb.out_channels == (128, 256, 512)
    c3, c4, c5 = bb(torch.zeros(1, 3, 96, 160))
    assert c3.shape == (1, 128, 12, 20) and c4.shape == (1, 256, 6, 10) and c5.shape == (1, 512, 3, 5)
    r18 = sum(p.numel() for p in ResNetBackbone(depth=18, norm="gn").parameters())
    assert sum(p.numel() for p in bb.parameters()) < 0.5 * r18
    with pytest.raises(UserError, match="depth 12 is not supported"):
        ResNetBackbone(depth=12)
