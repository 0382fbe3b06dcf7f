"""The opt-in P2 level (model.p2): the network's levels, points and strides, training and
evaluation on bccd, and check-data / show-targets counting the boxes without a
positive point with and without it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_safety import SMALL, tiny_bccd

from fcosdet import config as fconfig
from fcosdet.cli.main import run as cli
from fcosdet.config import ModelConfig
from fcosdet.errors import UserError
from fcosdet.model.build import build_criterion, build_model, build_postprocessor, check_levels, network_levels
from fcosdet.model.points import (
    P2_REGRESS_RANGES,
    P2_STRIDES,
    REGRESS_RANGES,
    STRIDES,
    anchor_points,
    featmap_sizes,
)

TINY = dict(num_classes=3, depth=10, backbone_norm="gn", fpn_channels=32, feat_channels=32, stacked_convs=1)


def test_a_p2_model_has_strides_4_to_64_and_the_default_is_unchanged():
    p2 = ModelConfig(p2=True, **TINY)
    assert network_levels(p2) == (P2_STRIDES, P2_REGRESS_RANGES) == ((4, 8, 16, 32, 64), P2_REGRESS_RANGES)
    assert network_levels(ModelConfig(**TINY)) == (STRIDES, REGRESS_RANGES)
    model = build_model(p2).eval()
    assert model.strides == P2_STRIDES
    assert build_criterion(p2).strides == P2_STRIDES and build_criterion(p2).regress_ranges == P2_REGRESS_RANGES
    assert build_postprocessor(p2, fconfig.TestConfig()).strides == P2_STRIDES
    with torch.no_grad():
        out = model(torch.zeros(2, 3, 64, 96))
    sizes = featmap_sizes((64, 96), P2_STRIDES)
    assert sizes == [(16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    assert [tuple(x.shape) for x in out.cls_scores] == [(2, 3, h, w) for h, w in sizes]
    assert [tuple(x.shape) for x in out.bbox_preds] == [(2, 4, h, w) for h, w in sizes]
    points = anchor_points(sizes, P2_STRIDES)
    assert points[0][:2].tolist() == [[2.0, 2.0], [6.0, 2.0]]  # stride 4, half-stride offset
    keys = set(model.state_dict())
    default_keys = set(build_model(ModelConfig(**TINY)).state_dict())
    assert "fpn.fpn.inner_blocks.3.0.weight" in keys and "fpn.fpn.extra_blocks.p7.weight" not in keys
    assert "fpn.fpn.extra_blocks.p7.weight" in default_keys and "fpn.fpn.inner_blocks.3.0.weight" not in default_keys
    assert len(model.head.scales) == 5  # one shared head, a Scale per level


def test_levels_the_network_does_not_have_are_user_errors():
    with pytest.raises(UserError, match="set model.p2=true"):
        check_levels(ModelConfig(strides=P2_STRIDES))
    with pytest.raises(UserError, match="P2..P6"):
        check_levels(ModelConfig(p2=True, strides=(8, 16, 32, 64, 128, 256)))
    with pytest.raises(UserError, match="one \\[lo, hi\\] pair"):
        check_levels(ModelConfig(p2=True, regress_ranges=((-1, 32), (32, 1e8))))
    check_levels(ModelConfig(p2=True, strides=P2_STRIDES))  # written out: the same levels


@pytest.mark.slow
@pytest.mark.integration
def test_p2_trains_and_evaluates_on_bccd(tmp_path, shared_data, capsys):
    """(ONNX export of a P2 model works too: `fcosdet export last.pt --format onnx` runs with
    onnxruntime; not tested here, it takes about two minutes on 2 cores.)"""
    data = tiny_bccd(tmp_path / "data", shared_data, n_train=2, n_val=2)
    run_dir = tmp_path / "run"
    cli(["train", "fcos_r18_cpu", "--data", str(data), "--run-dir", str(run_dir), *SMALL,
         "--set", "model.p2=true", "--set", "train.epochs=1"])
    assert "p2: true" in (run_dir / "config.yaml").read_text()
    capsys.readouterr()
    cli(["eval", str(run_dir / "last.pt"), "--split", "val"])
    out = capsys.readouterr().out
    assert "val: 2 images, 36 boxes from" in out and "AP50" in out  # the P2 model rebuilt from its file


def _tiny_boxes_dataset(root: Path) -> Path:
    """One 128 x 128 image with three 3 x 3 boxes that lie between the stride-8 points (4, 12,
    20, ...) but each hold a stride-4 point (2, 6, 10, ...)."""
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((128, 128, 3), 120, np.uint8)).save(root / "images" / "a.jpg")
    boxes = [[5, 5, 3, 3], [21, 37, 3, 3], [101, 85, 3, 3]]  # COCO x, y, w, h
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 128, "height": 128}],
            "categories": [{"id": 1, "name": "dot"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": 9, "iscrowd": 0}
                            for i, b in enumerate(boxes)]}
    (root / "train.json").write_text(json.dumps(coco))
    (root / "data.yaml").write_text(f"format: coco\nroot: .\ntrain: {{images: {root / 'images'}, "
                                    f"annotations: train.json}}\n")
    return root / "data.yaml"


def test_check_data_and_show_targets_count_boxes_without_points_with_and_without_p2(tmp_path, capsys):
    data = _tiny_boxes_dataset(tmp_path / "dots")
    base = [str(data), "--config", "fcos_r18_cpu", "--set", "data.scale=[128,128]"]
    cli(["check-data", *base, "--splits", "train", "--out", str(tmp_path / "p3")])
    report = json.loads((tmp_path / "p3" / "report.json").read_text())["train"]
    assert report["no_positive"] == 3
    assert [(c["setting"], c["tile"], c["no_positive"]) for c in report["no_positive_compare"]] == [
        ("model.p2=false", None, 3), ("model.p2=true", None, 0)]
    assert "model.p2=true (P2..P6, whole images) 0 (0.0%)" in capsys.readouterr().out
    cli(["check-data", *base, "--splits", "train", "--p2", "--tile", "64", "--out", str(tmp_path / "p2")])
    report = json.loads((tmp_path / "p2" / "report.json").read_text())["train"]
    assert report["no_positive"] == 0 and report["levels"]["P2"] == 3 and report["tile"] == 64
    # a 64-px tile is resized to 128 (data.scale): the boxes double and reach the stride-8 points
    assert [(c["setting"], c["tile"], c["no_positive"]) for c in report["no_positive_compare"]] == [
        ("model.p2=false", None, 3), ("model.p2=true", None, 0), ("model.p2=false", 64, 0), ("model.p2=true", 64, 0)]
    capsys.readouterr()
    cli(["show-targets", *base, "--out", str(tmp_path / "targets")])
    out = capsys.readouterr().out
    assert "boxes with no positive point: 3 (0, 1, 2)" in out
    assert "no positive point by setting: model.p2=false (whole image) 3; model.p2=true (whole image) 0" in out
