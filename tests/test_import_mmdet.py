"""mmdetection FCOS checkpoints -> fcosdet (`fcosdet import-weights mmdet-fcos`).

No mmdetection here: an fcosdet model with seeded random weights is written under mmdetection
2.x's key names (the inverse mapping below, written from mmdet's documented layout) with a
`meta` like the model zoo's (CLASSES, config text), imported, and compared tensor by tensor.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_safety import _one_error_line, _Payload

from fcosdet.cli.main import main
from fcosdet.cli.main import run as cli
from fcosdet.errors import UserError
from fcosdet.io.importers.mmdet import import_mmdet_fcos, parse_mmdet_config
from fcosdet.io.importers.torchvision import coco_categories
from fcosdet.io.model_file import ModelFile
from fcosdet.model.backbone import ResNetBackbone
from fcosdet.model.build import build_model
from fcosdet.presets import preset

COCO80 = [n for n in coco_categories() if n not in ("__background__", "N/A")]
COCO_IDS = [i for i, n in enumerate(coco_categories()) if n not in ("__background__", "N/A")]
# the parts of mmcv's Config.pretty_text of fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_1x_coco
# that fcosdet reads, laid out as mmdetection 2.x writes them
TRICKS_CONFIG = """model = dict(
    type='FCOS',
    pretrained='open-mmlab://detectron2/resnet50_caffe',
    backbone=dict(type='ResNet', depth=50, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=False), norm_eval=True, style='caffe'),
    neck=dict(type='FPN', in_channels=[256, 512, 1024, 2048], out_channels=256, start_level=1,
        add_extra_convs='on_output', num_outs=5, relu_before_extra_convs=True),
    bbox_head=dict(type='FCOSHead', num_classes=80, in_channels=256, stacked_convs=4, feat_channels=256,
        strides=[8, 16, 32, 64, 128],
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0),
        norm_cfg=dict(type='GN', num_groups=32, requires_grad=True),
        norm_on_bbox=True, centerness_on_reg=True, dcn_on_last_conv=False, center_sampling=True,
        conv_bias=True),
    test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05, nms=dict(type='nms', iou_threshold=0.6),
        max_per_img=100))
img_norm_cfg = dict(mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], to_rgb=False)
test_pipeline = [dict(type='LoadImageFromFile'), dict(type='MultiScaleFlipAug', img_scale=(1333, 800),
    flip=False, transforms=[dict(type='Resize', keep_ratio=True), dict(type='RandomFlip'),
    dict(type='Normalize', mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], to_rgb=False),
    dict(type='Pad', size_divisor=32)])]
"""


def _to_mmdet(state: dict[str, torch.Tensor], *, gn: bool) -> dict[str, torch.Tensor]:
    """fcosdet keys -> mmdetection 2.x FCOS keys (with BatchNorm's num_batches_tracked, as mmdet saves)."""
    out = {}
    fpn_out = {"layer_blocks.0.0": 0, "layer_blocks.1.0": 1, "layer_blocks.2.0": 2, "extra_blocks.p6": 3,
               "extra_blocks.p7": 4}
    per_layer = 3 if gn else 2  # conv, GroupNorm, ReLU
    for key, value in state.items():
        *path, name = key.split(".")
        if key.startswith("backbone.body."):
            new = "backbone." + key[len("backbone.body."):]
            if name == "running_var":
                out[new.replace("running_var", "num_batches_tracked")] = torch.tensor(1000)
        elif key.startswith("fpn.fpn.inner_blocks."):
            new = f"neck.lateral_convs.{path[3]}.conv.{name}"
        elif key.startswith("fpn.fpn."):
            new = f"neck.fpn_convs.{fpn_out['.'.join(path[2:])]}.conv.{name}"
        elif path[1] in ("cls_tower", "reg_tower"):
            j = int(path[2])
            part = "conv" if j % per_layer == 0 else "gn"
            new = f"bbox_head.{path[1][:3]}_convs.{j // per_layer}.{part}.{name}"
        else:  # head.conv_cls / conv_reg / conv_centerness / scales.i
            new = "bbox_head." + key[len("head."):]
        out[new] = value
    return out


def _source_model(preset_name: str, *, conv_bias: bool) -> torch.nn.Module:
    """A caffe-style FCOS R-50 with every tensor distinct and scores above 0.05 on real images."""
    cfg = preset(preset_name)
    cfg.model.backbone_style, cfg.model.conv_bias = "caffe", conv_bias
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                t.normal_(0, 0.1)
            elif t.ndim == 1:  # BatchNorm / GroupNorm weights
                t.uniform_(0.5, 1.0)
        head = model.head
        head.conv_cls.bias.normal_(-4.5, 1.0)  # a few classes per point above 0.05: a quick NMS
        head.conv_centerness.bias.fill_(2.0)
        head.conv_reg.bias.uniform_(0.5, 2.0)
        for i, s in enumerate(head.scales):
            s.scale.fill_(1.0 + 0.1 * i)
    return model


def _save_mmdet(path, model, *, gn=True, config: str | None = TRICKS_CONFIG, classes=tuple(COCO80),
                old_names: bool = False):
    meta = {"mmdet_version": "2.11.0", "epoch": 12, "iter": 87960, "time": "Sat Mar 27 00:00:00 2021"}
    if config is not None:
        meta["config"] = config
    if classes is not None:
        meta["CLASSES"] = classes
    state = _to_mmdet(model.state_dict(), gn=gn)
    if old_names:  # mmdet before 2.0: bbox_head.fcos_cls / fcos_reg / fcos_centerness
        state = {k.replace("bbox_head.conv_", "bbox_head.fcos_"): v for k, v in state.items()}
    torch.save({"state_dict": state, "meta": meta}, path)
    return path


@pytest.fixture(scope="module")
def tricks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mmdet")
    model = _source_model("fcos_r50_tricks_1x", conv_bias=True)
    src = _save_mmdet(tmp / "fcos_tricks.pth", model)
    out = tmp / "imported.pt"
    assert cli(["import-weights", "mmdet-fcos", str(src), "--out", str(out), "--set", "data.scale=[320,256]"]) == 0
    return {"model": model, "src": src, "out": out, "state": ModelFile.load(out).to_state(), "tmp": tmp}


def test_every_tensor_lands_with_the_config_the_text_gives(tricks):
    state, source = tricks["state"], tricks["model"].state_dict()
    assert set(state["model"]) == set(source)
    for key, value in source.items():
        assert torch.equal(state["model"][key], value), key
    assert state["class_names"] == COCO80 and state["category_ids"] == COCO_IDS
    m, t, d = state["config"]["model"], state["config"]["test"], state["config"]["data"]
    assert (m["backbone_style"], m["depth"], m["backbone_norm"], m["frozen_stages"]) == ("caffe", 50, "frozen_bn", 1)
    assert (m["norm_on_bbox"], m["centerness_on_reg"], m["center_sampling"], m["bbox_loss"]) == (True, True, True,
                                                                                                 "giou")
    assert (m["conv_bias"], m["head_norm"], m["learnable_scale"], m["point_offset"]) == (True, "gn", True,
                                                                                         "half_stride")
    assert (t["score_thr"], t["nms_pre"], t["nms_iou"], t["max_per_img"], t["sqrt_score"]) == (0.05, 1000, 0.6,
                                                                                                 100, False)
    assert d["normalize"] == "caffe_detectron2" and list(d["scale"]) == [320, 256]  # --set applied last


def test_normalisation_caffe_detectron2_is_bgr_0_255_minus_detectron2_mean():
    from fcosdet.data.transforms import denormalize_image, normalize_image
    pixels = torch.tensor([[[0, 255]], [[10, 20]], [[200, 100]]], dtype=torch.uint8)  # (3, 1, 2) RGB
    out = normalize_image(pixels, "caffe_detectron2")
    assert out[:, 0, 0].tolist() == pytest.approx([200 - 103.53, 10 - 116.28, 0 - 123.675])  # B, G, R
    assert out[:, 0, 1].tolist() == pytest.approx([100 - 103.53, 20 - 116.28, 255 - 123.675])
    assert torch.equal(denormalize_image(out, "caffe_detectron2"), pixels)
    from fcosdet.deploy.export import normalisation_metadata  # what an exported .onnx tells its users
    meta = normalisation_metadata("caffe_detectron2")
    assert (meta["channel_order"], meta["pixel_scale"], meta["mean"], meta["std"]) == (
        "BGR", 1.0, [103.53, 116.28, 123.675], [1.0, 1.0, 1.0])
    assert normalisation_metadata("caffe")["mean"] == [102.9801, 115.9465, 122.7717]


def test_caffe_style_moves_the_stride_to_the_first_1x1_conv():
    torch.manual_seed(0)
    caffe = ResNetBackbone(depth=50, norm="frozen_bn", frozen_stages=-1, style="caffe").eval()
    pytorch = ResNetBackbone(depth=50, norm="frozen_bn", frozen_stages=-1).eval()
    pytorch.load_state_dict(caffe.state_dict())
    b = caffe.body
    assert (b.layer1[0].conv1.stride, b.layer1[0].conv2.stride) == ((1, 1), (1, 1))
    for layer in (b.layer2, b.layer3, b.layer4):
        assert (layer[0].conv1.stride, layer[0].conv2.stride, layer[0].downsample[0].stride) == ((2, 2), (1, 1),
                                                                                                 (2, 2))
        assert all(blk.conv1.stride == blk.conv2.stride == (1, 1) for blk in layer[1:])
    p = pytorch.body.layer3[0]
    assert (p.conv1.stride, p.conv2.stride) == ((1, 1), (2, 2))  # torchvision's placement
    # layer2's first block by hand: 1x1 stride-2 conv, 3x3 stride-1 conv, 1x1 conv, + downsampled shortcut
    x = torch.randn(1, 256, 16, 20)
    blk = b.layer2[0]
    h = F.relu(blk.bn1(F.conv2d(x, blk.conv1.weight, stride=2)))  # (1, 128, 8, 10)
    h = F.relu(blk.bn2(F.conv2d(h, blk.conv2.weight, padding=1)))
    ref = F.relu(blk.bn3(F.conv2d(h, blk.conv3.weight)) + blk.downsample[1](F.conv2d(x, blk.downsample[0].weight,
                                                                                     stride=2)))
    torch.testing.assert_close(blk(x), ref)
    images = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        ours, theirs = caffe(images), pytorch(images)
    assert [tuple(c.shape) for c in ours] == [tuple(c.shape) for c in theirs] == [(1, 512, 12, 20),
                                                                                  (1, 1024, 6, 10), (1, 2048, 3, 5)]
    assert not torch.allclose(ours[0], theirs[0])  # same weights, other features: the style matters
    with pytest.raises(UserError, match="Bottleneck ResNet"):
        ResNetBackbone(depth=18, norm="gn", frozen_stages=-1, style="caffe")


def test_parse_config_text_reads_literals_and_refuses_conflicts():
    parsed = parse_mmdet_config(TRICKS_CONFIG, "x.pth")
    assert parsed["mean"] == [103.53, 116.28, 123.675] and parsed["to_rgb"] is False
    assert (parsed["style"], parsed["iou_threshold"], parsed["loss_bbox"]) == ("caffe", 0.6, "GIoULoss")
    assert "running_mean" not in parsed and parsed["num_groups"] == 32
    assert parse_mmdet_config("bbox_head=dict(norm_on_bbox=False)\nx.norm_on_bbox=True", "x.pth") == {
        "norm_on_bbox": False}  # an attribute is not a config field
    with pytest.raises(UserError, match="x.pth.*iou_threshold.*different values"):
        parse_mmdet_config("nms=dict(iou_threshold=0.5), nms=dict(iou_threshold=0.6)", "x.pth")
    assert parse_mmdet_config("evil=__import__('os').system('true'), score_thr=0.3", "x.pth") == {"score_thr": 0.3}


def test_mmdet_normalisations_map_to_fcosdet_modes_or_are_refused():
    from fcosdet.io.importers.mmdet import _mmdet_normalize

    def mode(text):
        return _mmdet_normalize(parse_mmdet_config(text, "x.pth"), "x.pth")
    assert mode("mean=[102.9801, 115.9465, 122.7717], std=[1.0, 1.0, 1.0], to_rgb=False") == "caffe"
    assert mode("mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], bgr_to_rgb=False") == "caffe_detectron2"  # 3.x
    assert mode("mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True") == "pytorch"
    with pytest.raises(UserError, match="x.pth was trained on inputs normalised with mean"):
        mode("mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], to_rgb=True")  # RGB order: no such mode
    with pytest.raises(UserError, match="--set data.normalize="):
        mode("mean=[103.53, 116.28, 123.675]")


def test_without_config_text_the_variant_is_required(tmp_path):
    model = _source_model("fcos_r50_1x", conv_bias=False)  # GN head without conv bias: mmdet's 'auto'
    src = _save_mmdet(tmp_path / "fcos_base.pth", model, config=None, old_names=True)
    with pytest.raises(UserError, match="fcos_base.pth has no meta\\['config'\\].*--variant"):
        import_mmdet_fcos(src, tmp_path / "a.pt")
    import_mmdet_fcos(src, tmp_path / "a.pt", variant="fcos_r50_1x")
    state = ModelFile.load(tmp_path / "a.pt").to_state()
    for key, value in model.state_dict().items():
        assert torch.equal(state["model"][key], value), key
    m = state["config"]["model"]
    assert (m["backbone_style"], m["norm_on_bbox"], m["centerness_on_reg"], m["conv_bias"]) == ("caffe", False,
                                                                                                False, False)
    assert state["config"]["data"]["normalize"] == "caffe" and state["config"]["test"]["nms_iou"] == 0.5
    with pytest.raises(UserError, match="no meta\\['CLASSES'\\].*--class-names"):
        import_mmdet_fcos(_save_mmdet(tmp_path / "nc.pth", model, config=None, classes=None), tmp_path / "b.pt",
                          variant="fcos_r50_1x")


@pytest.mark.parametrize("damage, message", [
    ("missing", "no tensor for .*head.conv_centerness.bias"),
    ("extra", "no place for .*bbox_head.conv_extra.weight"),
    ("extra_level", "unexpected neck.lateral_convs.3.conv.weight"),
    ("shape", "wrong shape: bbox_head.conv_reg.weight \\(5, 256, 3, 3\\)"),
])
def test_damaged_checkpoint_is_one_error_line(tricks, tmp_path, capsys, damage, message):
    ckpt = torch.load(tricks["src"], weights_only=True)
    sd = ckpt["state_dict"]
    if damage == "missing":
        del sd["bbox_head.conv_centerness.bias"]
    elif damage == "extra":
        sd["bbox_head.conv_extra.weight"] = torch.zeros(3)
    elif damage == "extra_level":
        sd["neck.lateral_convs.3.conv.weight"] = torch.zeros(256, 256, 1, 1)
    else:
        sd["bbox_head.conv_reg.weight"] = torch.zeros(5, 256, 3, 3)
    torch.save(ckpt, tmp_path / "bad.pth")
    with pytest.raises(SystemExit) as code:
        main(["import-weights", "mmdet-fcos", str(tmp_path / "bad.pth"), "--out", str(tmp_path / "x.pt")])
    err = _one_error_line(capsys, code)
    assert "bad.pth" in err
    assert __import__("re").search(message, err), err
    assert not (tmp_path / "x.pt").exists()


def test_a_pickled_payload_is_refused_and_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"
    sd = {"backbone.conv1.weight": torch.zeros(64, 3, 7, 7)}
    torch.save({"state_dict": sd, "meta": {"CLASSES": ("a",), "hook": _Payload(marker)}}, tmp_path / "evil.pth")
    with pytest.raises(SystemExit) as code:
        main(["import-weights", "mmdet-fcos", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "x.pt")])
    err = _one_error_line(capsys, code)
    assert "refusing" in err and "evil.pth" in err and "weights_only=True" in err
    assert not marker.exists(), "the checkpoint's payload ran"


def test_imported_file_predicts_on_bccd_with_coco_category_ids(tricks, shared_data, tmp_path):
    """`fcosdet predict` reads the imported file; predictions.json carries COCO's ids (label 11,
    'stop sign', is COCO id 13), not label + 1."""
    image = shared_data / "bccd" / "images" / "BloodImage_00000.jpg"
    assert cli(["predict", str(tricks["out"]), str(image), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    results = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert 0 < len(results) <= 100
    assert all(r["category_id"] == COCO_IDS[COCO80.index(r["category"])] for r in results)
    assert any(r["category_id"] != COCO80.index(r["category"]) + 1 for r in results)  # ids past the first gap


def test_eval_results_file_carries_the_model_files_category_ids(tmp_path):
    """`fcosdet eval --out` writes detections.json for the user: an imported COCO model's labels
    become COCO ids there (label + 1 otherwise); the metrics keep their internal numbering."""
    from fcosdet.data.records import ImageRecord
    from fcosdet.engine.evaluation.coco import CocoEvaluator
    rec = ImageRecord(path="a.jpg", width=50, height=40, boxes=torch.tensor([[0.0, 0, 10, 10]]).numpy(),
                      labels=torch.tensor([1]).numpy(), image_id=7)
    ev = CocoEvaluator(records=[rec], class_names=["bicycle", "stop sign"])
    ev.process([{"image_id": 7, "boxes": torch.tensor([[0.0, 0, 10, 10], [5.0, 5, 20, 20]]),
                 "scores": torch.tensor([0.9, 0.4]), "labels": torch.tensor([1, 0])}])
    plain = json.loads(ev.save_results(tmp_path / "plain.json").read_text())
    coco = json.loads(ev.save_results(tmp_path / "coco.json", category_ids=[2, 13]).read_text())
    assert [r["category_id"] for r in plain] == [2, 1]
    assert [r["category_id"] for r in coco] == [13, 2]
    assert [r["bbox"] for r in coco] == [r["bbox"] for r in plain]
    assert ev.evaluate()["AP"] == pytest.approx(1.0)  # the ground truth still matches label + 1


# ------------------------------------------------- ONNX export of an imported torchvision FCOS


def _small_torchvision_fcos(*, weights=None, weights_backbone=None, num_classes: int = 91) -> torch.nn.Module:
    """torchvision's FCOS (its head, anchors and post-processing) on a ResNet-18 with a 64-channel
    FPN and one conv per tower: fcos_resnet50_fpn's layout at a fraction of the export time."""
    from torchvision.models import resnet18
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.fcos import FCOSHead
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    assert weights is None and weights_backbone is None
    body = resnet18(norm_layer=FrozenBatchNorm2d)
    backbone = BackboneWithFPN(body, return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
                               in_channels_list=[128, 256, 512], out_channels=64, extra_blocks=LastLevelP6P7(64, 64))
    return FCOS(backbone, num_classes=num_classes, head=FCOSHead(64, 1, num_classes, num_convs=1))


@pytest.fixture(scope="module")
def exported_torchvision(tmp_path_factory, shared_data):
    """The small torchvision FCOS, seeded and perturbed by test_import_torchvision's helper, converted
    by the importer, written with the torchvision_fcos_r50 settings at depth 18 / width 64 / one
    conv per tower, exported."""
    import test_import_torchvision as tvtest

    from fcosdet.io.importers.torchvision import convert_torchvision_fcos
    from fcosdet.io.model_file import save_atomic
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tvtest, "fcos_resnet50_fpn", _small_torchvision_fcos)
        tv = tvtest._random_torchvision_fcos()
    with torch.no_grad():  # this network's logits spread otherwise: 30-50 detections per image, under the cut
        tv.head.classification_head.cls_logits.bias.normal_(-6.0, 0.3)
    tmp = tmp_path_factory.mktemp("tv_export")
    converted, names, ids = convert_torchvision_fcos(tv.state_dict())
    cfg = preset("torchvision_fcos_r50")
    cfg.model.depth, cfg.model.fpn_channels, cfg.model.feat_channels, cfg.model.num_classes = 18, 64, 64, 80
    cfg.model.stacked_convs = 1
    cfg.data.scale = (384, 256)
    model = build_model(cfg.model)
    model.load_state_dict(converted)  # strict: every tensor has its place
    ckpt = tmp / "imported.pt"
    save_atomic({"model": model.state_dict(), "config": cfg.to_dict(), "class_names": names, "category_ids": ids},
                ckpt)
    onnx = tmp / "imported.onnx"
    assert cli(["export", str(ckpt), "--format", "onnx", "--out", str(onnx)]) == 0
    # 640 x 480 -> 341 x 256, padded 352 x 256: P6 / P7 (6 x 4, 3 x 2) spaced 58 / 117 px, not 64 / 128;
    # 640 x 426 -> 384 x 256 (padded 384 x 256)
    images = [shared_data / "bccd/images/BloodImage_00000.jpg", shared_data / "coco128/images/000000000025.jpg"]
    return {"ckpt": ckpt, "onnx": onnx, "images": images, "ids": ids}


@pytest.mark.slow
def test_onnx_export_of_an_imported_torchvision_fcos_gives_the_pytorch_detections(exported_torchvision):

    from fcosdet.deploy.predictor import Detector
    ckpt, onnx, images = (exported_torchvision[k] for k in ("ckpt", "onnx", "images"))
    reference = Detector.from_file(ckpt)
    cfg = reference.config
    assert (cfg.model.point_offset, cfg.model.learnable_scale, cfg.test.sqrt_score) == ("torchvision", False, True)
    graph = Detector.from_file(onnx)
    assert graph.category_ids == reference.category_ids == exported_torchvision["ids"]  # COCO ids survive export
    weights = onnx.with_suffix(".safetensors")
    assert cli(["export", str(ckpt), "--format", "weights", "--out", str(weights)]) == 0
    assert Detector.from_file(weights).category_ids == exported_torchvision["ids"]
    counts = []
    for got, ref in zip(graph.predict_batch(images), reference.predict_batch(images)):  # padded to 384 x 352
        _matched(got, ref)
        counts.append(len(ref))
    for image in images:  # one by one: each image's own padded size
        got, ref = graph.predict(image), reference.predict(image)
        _matched(got, ref)
        counts.append(len(ref))
    assert 0 < min(counts) and max(counts) < 100, counts  # real detections, below the max_per_img cut


def _matched(got, ref) -> None:
    """The same detections in any order: random weights give near-ties (1e-7) in score, which ONNX
    and PyTorch may order differently. Each reference detection pairs with one of the same label,
    box within 0.5 px and score within 1e-4."""
    assert len(got) == len(ref) and sorted(got.labels.tolist()) == sorted(ref.labels.tolist())
    free = set(range(len(got)))
    for i in range(len(ref)):
        same = [j for j in free if got.labels[j] == ref.labels[i]]
        j = min(same, key=lambda k: float((got.boxes[k] - ref.boxes[i]).abs().max()))
        assert float((got.boxes[j] - ref.boxes[i]).abs().max()) <= 0.5, (i, got.boxes[j], ref.boxes[i])
        assert abs(float(got.scores[j] - ref.scores[i])) <= 1e-4
        free.discard(j)


def test_fine_tuning_an_import_with_another_backbone_style_says_so():
    """model.init_from=<an imported caffe-style file> into a pytorch-style model: same shapes, other
    features; the run prints it (the README's fine-tune command sets model.backbone_style=caffe)."""
    from fcosdet.engine.finetune import init_from_checkpoint
    cfg = preset("demo")
    model = build_model(cfg.model)
    source_cfg = cfg.to_dict()
    source_cfg["model"] = dict(source_cfg["model"], backbone_style="caffe")
    source = ModelFile(model=model.state_dict(), config=source_cfg, class_names=[str(i) for i in range(5)])
    report = init_from_checkpoint(model, source, class_names=[str(i) for i in range(5)], path="mmdet.pt",
                                  model_config=cfg.to_dict()["model"])
    assert any(n.startswith("model.backbone_style=pytorch here, caffe in the source") for n in report.notes)
    # printed as a loud warning (fcosdet: warning: init_from: ...) naming the fix
    assert any("--set model.backbone_style=caffe uses them as trained" in n for n in report.notes)
