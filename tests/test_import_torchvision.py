"""torchvision fcos_resnet50_fpn -> fcosdet: the imported model infers exactly as torchvision's.

No download: torchvision's model is built with seeded random weights (the head perturbed so that
detections exist), saved as a state_dict and imported. Both models see the same preprocessed
batch of real images; and `fcosdet predict` on image files gives what torchvision's model gives
on the same files (its resize included).
"""
from __future__ import annotations

import json
import urllib.error

import pytest
import torch
from PIL import Image
from torchvision.models.detection import fcos_resnet50_fpn
from torchvision.models.detection.image_list import ImageList
from torchvision.transforms.v2 import functional as TF

from fcosdet.cli.main import run
from fcosdet.data.images import load_image
from fcosdet.data.loader import pad_images
from fcosdet.data.transforms import build_transforms
from fcosdet.deploy.build import config_of
from fcosdet.errors import UserError
from fcosdet.io.importers.torchvision import NOT_A_CLASS, coco_categories, import_torchvision_fcos
from fcosdet.io.model_file import ModelFile
from fcosdet.model.build import build_model, build_postprocessor


def _random_torchvision_fcos(*, cls_bias: float = -8.0, **sizes: int) -> torch.nn.Module:
    """Seeded random weights; `cls_bias` the mean classification bias (how many scores pass
    0.2); `sizes`: torchvision's min_size / max_size."""
    torch.manual_seed(0)
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **sizes).eval()
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial frozen statistics
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.normal_(0, 0.1)
        h = tv.head
        for conv in (h.classification_head.cls_logits, h.regression_head.bbox_reg,
                     h.regression_head.bbox_ctrness):
            conv.weight.normal_(0, 0.02)
        h.classification_head.cls_logits.weight.normal_(0, 0.05)
        h.classification_head.cls_logits.bias.normal_(cls_bias, 1.0)  # -8: a few hundred scores > 0.2
        h.regression_head.bbox_reg.bias.uniform_(0.5, 3.0)  # boxes of 1-4 strides
        h.regression_head.bbox_ctrness.bias.normal_(1.5, 0.5)
    return tv


@pytest.fixture(scope="module")
def imported(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("tv")
    tv = _random_torchvision_fcos()
    torch.save(tv.state_dict(), tmp / "tv_fcos.pth")
    out = tmp / "imported.pt"
    assert run(["import-weights", "torchvision-fcos", str(tmp / "tv_fcos.pth"), "--out", str(out)]) == 0
    state = torch.load(out, map_location="cpu", weights_only=True)  # plain types and tensors only
    cfg = config_of(ModelFile.load(out))
    model = build_model(cfg.model).eval()
    model.load_state_dict(state["model"])
    # two real images, short side 256: bccd 256x341 (landscape), coco128 336x256 (portrait)
    paths = [sorted((shared_data / "bccd" / "images").glob("*.jpg"))[0],
             sorted((shared_data / "coco128" / "images").glob("*.jpg"))[6]]
    transform = build_transforms(train=False, scale=(384, 256), normalize=cfg.data.normalize)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    prepared = [transform(load_image(p), empty) for p in paths]
    batch = pad_images([x for x, _ in prepared])  # (2, 3, 352, 352): padded to a multiple of 32
    sizes = [t["img_size"] for _, t in prepared]
    return dict(tv=tv, state=state, cfg=cfg, model=model, batch=batch, sizes=sizes)


def test_import_keeps_the_80_coco_classes_with_their_ids(imported):
    state = imported["state"]
    names = coco_categories()
    assert len(names) == 91 and len(state["class_names"]) == 80
    assert state["class_names"][:3] == ["person", "bicycle", "car"]
    assert state["category_ids"][:3] == [1, 2, 3] and state["category_ids"][-1] == 90
    assert all(names[i] == n for i, n in zip(state["category_ids"], state["class_names"]))
    cfg = imported["cfg"]
    assert (cfg.model.point_offset, cfg.model.learnable_scale, cfg.test.sqrt_score) == ("torchvision", False, True)
    assert (cfg.data.normalize, cfg.data.resize) == ("pytorch", "torchvision")
    assert (cfg.test.score_thr, cfg.test.nms_iou, cfg.test.max_per_img) == (0.2, 0.6, 100)
    assert not any("scales" in k for k in state["model"])


def test_imported_file_runs_through_the_detector(imported, shared_data, tmp_path):
    """The product's inference path reads the imported file: class names are COCO's."""
    from fcosdet.deploy.predictor import Detector
    path = tmp_path / "imported.pt"
    small = dict(imported["state"], config={**imported["state"]["config"]})
    small["config"]["data"] = dict(small["config"]["data"], scale=(384, 256))  # a quick test
    torch.save(small, path)
    det = Detector.from_file(path, fast=False)
    out = det.predict(sorted((shared_data / "coco128" / "images").glob("*.jpg"))[3])
    assert len(out.labels) > 0 and int(out.labels.max()) < 80
    assert out.class_names == [imported["state"]["class_names"][i] for i in out.labels.tolist()]
    fast = Detector.from_file(path).predict(sorted((shared_data / "coco128" / "images").glob("*.jpg"))[3])
    assert torch.equal(fast.labels, out.labels)  # BatchNorm folded: the same within rounding
    torch.testing.assert_close(fast.scores, out.scores, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast.boxes, out.boxes, atol=0.5, rtol=0)


@torch.no_grad()
def test_parity_head_outputs_and_detections(imported):
    """Per level equal head outputs; equal detections with the same batch and settings.

    The batch is 352 x 352: P6 (6 x 6) and P7 (3 x 3) were rounded up, and torchvision spaces
    their anchors by 352 // 6 = 58 and 352 // 3 = 117 instead of the strides 64 and 128, which
    model.point_offset=torchvision reproduces (asserted below, so the test covers it)."""
    tv, model, batch, sizes = imported["tv"], imported["model"], imported["batch"], imported["sizes"]
    keep = imported["state"]["category_ids"]  # torchvision label of each fcosdet label
    ours = model(batch)
    feats = list(tv.backbone(batch).values())
    head = tv.head(feats)  # (B, sum HW, K) each
    counts = [f.shape[-2] * f.shape[-1] for f in feats]
    assert [352 // f.shape[-1] for f in feats] == [8, 16, 32, 58, 117]
    split = {k: list(v.split(counts, dim=1)) for k, v in head.items()}
    for lvl in range(5):
        def flat(x):  # (B, X, H, W) -> (B, HW, X)
            return x.flatten(2).transpose(1, 2)
        torch.testing.assert_close(flat(ours[0][lvl]), split["cls_logits"][lvl][..., keep], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(flat(ours[1][lvl]), split["bbox_regression"][lvl], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(flat(ours[2][lvl]), split["bbox_ctrness"][lvl], atol=1e-4, rtol=1e-4)
    # Same settings, with the cut per image raised to 1000 on both sides: torchvision's
    # background / 'N/A' outputs, which fcosdet drops, could otherwise take some of the 100 places.
    # torchvision keeps the best 1000 (point, class) pairs above 0.2 per level, fcosdet the best
    # 1000 points: the same candidates while fewer than 1000 pairs pass, as asserted here.
    scores = (head["cls_logits"].sigmoid() * head["bbox_ctrness"].sigmoid()).sqrt()  # (B, sum HW, K)
    assert max(int((s > 0.2).sum(dim=(1, 2)).max()) for s in scores.split(counts, dim=1)) < 1000
    tv.detections_per_img = 1000
    anchors = tv.anchor_generator(ImageList(batch, sizes), feats)
    theirs = tv.postprocess_detections(split, [list(a.split(counts)) for a in anchors], sizes)
    test_cfg = imported["cfg"].test
    test_cfg.max_per_img = 1000
    mine = build_postprocessor(imported["cfg"].model, test_cfg)(ours, sizes)
    label_map = torch.full((91,), -1, dtype=torch.int64)
    label_map[keep] = torch.arange(len(keep))
    total = 0
    for t, m in zip(theirs, mine):
        real = label_map[t["labels"]] >= 0  # torchvision's background / 'N/A' outputs have no fcosdet label
        assert len(t["boxes"]) < 1000  # the cut is not reached
        t_boxes, t_scores, t_labels = t["boxes"][real], t["scores"][real], label_map[t["labels"][real]]
        order_t, order_m = t_scores.argsort(descending=True), m["scores"].argsort(descending=True)
        assert len(order_t) == len(order_m)
        torch.testing.assert_close(m["scores"][order_m], t_scores[order_t], atol=1e-4, rtol=0)
        torch.testing.assert_close(m["boxes"][order_m], t_boxes[order_t], atol=0.5, rtol=0)
        assert torch.equal(m["labels"][order_m], t_labels[order_t])
        total += len(order_m)
    assert total >= 100  # the comparison covers real detections


def _xywh(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], 1)  # (D, 4)


@torch.no_grad()
def test_predict_from_files_equals_torchvision_on_the_same_files(tmp_path, shared_data):
    """`fcosdet import-weights torchvision-fcos` then `fcosdet predict` on coco128 files (portrait,
    landscape, square, downscaled) against torchvision's model on the same files read as float
    [0, 1]: the same detections, boxes within 0.01 px and scores within 1e-4 (predictions.json
    rounds boxes to 0.01 and scores to 1e-5). fcosdet's own resize (antialias_uint8) misses by
    ~1e-2 in score and ~1 px. Short side 320 / long 512 on both sides (the file's data.scale set
    as a user edits a config), a quick test."""
    tv = _random_torchvision_fcos(cls_bias=-8.5, min_size=320, max_size=512)
    with torch.no_grad():  # background and 'N/A' outputs, which fcosdet drops, never detect
        bias = tv.head.classification_head.cls_logits.bias
        bias[[i for i, n in enumerate(coco_categories()) if n in NOT_A_CLASS]] = -30.0
    torch.save(tv.state_dict(), tmp_path / "tv_fcos.pth")
    model = tmp_path / "imported.pt"
    assert run(["import-weights", "torchvision-fcos", str(tmp_path / "tv_fcos.pth"), "--out", str(model)]) == 0
    state = torch.load(model, map_location="cpu", weights_only=True)
    state["config"]["data"]["scale"] = [512, 320]
    torch.save(state, model)
    images = sorted((shared_data / "coco128" / "images").glob("*.jpg"))
    paths = [images[4], images[6], images[14]]  # 640x481 portrait, 500x381 landscape, 612x612
    assert run(["predict", str(model), *map(str, paths), "--out", str(tmp_path / "pred"), "--score-thr", "0.2",
                "--batch-size", "3", "--device", "cpu"]) == 0  # one batch: padded as torchvision pads it
    preds = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    theirs = tv([TF.pil_to_tensor(Image.open(p).convert("RGB")).float() / 255 for p in paths])
    total = 0
    for path, t in zip(paths, theirs):
        mine = [d for d in preds if d["file_name"] == str(path)]
        assert 0 < len(mine) == len(t["scores"]) < 100  # the same count, the 100 cut not reached
        boxes = torch.tensor([d["bbox"] for d in mine])  # (D, 4) xywh
        scores = torch.tensor([d["score"] for d in mine])  # (D,)
        ids = torch.tensor([d["category_id"] for d in mine])  # (D,) COCO ids = torchvision labels
        for box, score, label in zip(_xywh(t["boxes"]), t["scores"], t["labels"]):
            gap = torch.where(ids == label, (boxes - box).abs().amax(1), torch.inf)  # (D,)
            j = int(gap.argmin())
            assert gap[j] <= 0.01 and abs(float(scores[j] - score)) <= 1e-4, (path.name, float(gap[j]))
            ids[j] = -1  # matched once
        total += len(mine)
    assert total >= 60  # the comparison covers many detections


def test_offline_coco_v1_names_the_cache_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as err:
        import_torchvision_fcos("COCO_V1", tmp_path / "x.pt")
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "fcos_resnet50_fpn_coco-99b0c9b7.pth") in message
    with pytest.raises(UserError, match="neither a file nor"):
        import_torchvision_fcos("COCO_V9", tmp_path / "x.pt")


def test_anchor_points_zero_offset_for_torchvision_and_the_reference_default():
    from fcosdet.model.points import anchor_points, level_grids
    (zero,) = anchor_points([(2, 3)], [8], offset="zero")
    assert zero.tolist() == [[0, 0], [8, 0], [16, 0], [0, 8], [8, 8], [16, 8]]
    (half,) = anchor_points([(2, 3)], [8])  # default: the reference's s // 2
    assert half.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert level_grids([(2, 3), (1, 2)], [8, 16], offset="zero") == [(2, 3, 0.0, 0.0), (1, 2, 0.0, 0.0)]
    assert level_grids([(2, 3)], [8]) == [(2, 3, 4.0, 4.0)]
    p6, p7 = anchor_points([(44, 40), (22, 20), (11, 10), (6, 5), (3, 3)], [8, 16, 32, 64, 128],
                           offset="torchvision")[3:]  # a 352 x 320 input: spacing 352 // 6, 320 // 5, ...
    assert p6[:2].tolist() == [[0, 0], [64, 0]] and p6[5].tolist() == [0, 58]
    assert p7[:3].tolist() == [[0, 0], [106, 0], [212, 0]] and p7[3].tolist() == [0, 117]
    from fcosdet.model.points import level_points
    sizes, strides = [(44, 40), (22, 20), (11, 10), (6, 5), (3, 3)], [8, 16, 32, 64, 128]
    first = torch.zeros(1, 2, 44, 40)
    for (h, w), s, ref in zip(sizes, strides, anchor_points(sizes, strides, offset="torchvision")):
        assert torch.equal(level_points(torch.zeros(1, 2, h, w).shape[-2:], s, "torchvision",
                                        padded=(first.shape[-2] * 8, first.shape[-1] * 8)), ref)
    with pytest.raises(ValueError, match="for inference"):
        level_grids([(2, 3)], [8], offset="torchvision")
    with pytest.raises(ValueError, match="point offset"):
        anchor_points([(2, 3)], [8], offset="quarter")


def test_assignment_with_zero_offset_points_equals_the_dense_oracle():
    """Training with torchvision's points (model.point_offset=zero): the batch assignment, with
    the zero-offset grids the criterion passes, equals the reference's dense computation."""
    from dense_reference import dense_assign

    from fcosdet.model.points import REGRESS_RANGES, STRIDES, anchor_points, level_grids
    from fcosdet.model.targets import assign_targets_batch
    torch.manual_seed(3)
    sizes = [(40, 56), (20, 28), (10, 14), (5, 7), (3, 4)]
    pts = anchor_points(sizes, STRIDES, offset="zero")
    xy = torch.round(torch.rand(60, 2) * torch.tensor([448.0, 320.0]) / 4) * 4
    wh = torch.round((torch.rand(60, 2) ** 2 * 400 + 0.5) / 8) * 8 + 1
    boxes, labels = torch.cat([xy, xy + wh], 1), torch.randint(0, 4, (60,))
    for cs in (False, True):
        lab, tgt = assign_targets_batch(pts, [boxes], [labels], num_classes=4, center_sampling=cs,
                                        grids=level_grids(sizes, STRIDES, offset="zero"))
        ref = dense_assign(pts, boxes, labels, num_classes=4, strides=STRIDES,
                           regress_ranges=REGRESS_RANGES, center_sampling=cs)
        assert torch.equal(lab[0], ref[0]) and torch.equal(tgt[0], ref[1])
        assert (lab[0] < 4).sum() > 50  # positives exist
