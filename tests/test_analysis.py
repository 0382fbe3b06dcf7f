"""The analysis tools: show-targets, the check-data report, evaluation diagnostics.

Exact checks on hand-built cases, and the commands on the real datasets in ../shared/data.
"""
import json

import numpy as np
import pytest
import torch

from fcosdet.analysis.targets_view import compute_view
from fcosdet.cli.data import check_data
from fcosdet.cli.main import run as cli
from fcosdet.data import DetectionDataset, build_transforms, load_dataset_spec
from fcosdet.data.build import build_transform
from fcosdet.data.loader import pad_images
from fcosdet.model.build import build_criterion, build_model
from fcosdet.model.points import anchor_points, featmap_sizes, level_grids
from fcosdet.model.targets import assign_targets, assign_targets_batch
from fcosdet.presets import load_config

SMALL = ["--set", "data.scale=[320,256]"]


def test_featmap_sizes_match_the_model():
    cfg = load_config("fcos_r18_cpu", ["model.fpn_channels=32", "model.feat_channels=32", "model.stacked_convs=1"])
    model = build_model(cfg.model).eval()
    for h, w in ((256, 320), (300, 421), (257, 383)):
        images = pad_images([torch.zeros(3, h, w)])  # (1, 3, Hp, Wp)
        with torch.no_grad():
            cls_scores = model(images)[0]
        assert featmap_sizes((h, w), cfg.model.strides) == [tuple(c.shape[-2:]) for c in cls_scores]


def test_show_targets_positives_equal_assign_targets_on_bccd(tmp_path, shared_data, capsys):
    """The figure's positives are assign_targets' own on the image the training pipeline makes."""
    data = shared_data / "bccd"
    cfg = load_config("fcos_r18_tricks_cpu", ["data.scale=[512,384]"])
    assert cfg.model.center_sampling
    split = load_dataset_spec(data, "train")
    record = split.records[3]
    assert cli(["show-targets", str(data), record.path, "--config", "fcos_r18_tricks_cpu",
                "--set", "data.scale=[512,384]", "--out", str(tmp_path)]) == 0
    stem = record.path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    assert (tmp_path / f"{stem}_targets.png").stat().st_size > 10_000
    summary = (tmp_path / f"{stem}_targets.txt").read_text()

    # independent path: the evaluation transform through the Dataset, then assign_targets
    dataset = DetectionDataset(split, transforms=build_transforms(train=False, scale=cfg.data.scale,
                                                                  normalize=cfg.data.normalize))
    image, target = dataset[3]
    sizes = featmap_sizes(image.shape[-2:], cfg.model.strides)
    points = anchor_points(sizes, cfg.model.strides)
    labels, _ = assign_targets(points, target["boxes"], target["labels"], num_classes=3,
                               strides=cfg.model.strides, regress_ranges=cfg.model.regress_ranges,
                               center_sampling=True, center_sample_radius=cfg.model.center_sample_radius)
    view = compute_view(record, build_criterion(cfg.model), build_transform(cfg, train=False))  # what show-targets draws
    assert view.size == tuple(image.shape[-2:]) and torch.equal(view.boxes, target["boxes"])
    owner = view.main.box_of_point
    positive = owner < len(target["boxes"])
    assert positive.sum() > 0
    assert torch.equal(positive, labels < 3)
    assert torch.equal(target["labels"][owner[positive]], labels[labels < 3])
    # the printed summary holds the same totals
    assert f"{int(positive.sum())} positive points" in summary
    assert summary in capsys.readouterr().out


@pytest.mark.parametrize("name,config", [("aquarium", "fcos_r50_1x"), ("coco128", "fcos_r18_cpu")])
def test_show_targets_runs_on_aquarium_and_coco128(tmp_path, shared_data, capsys, name, config):
    assert cli(["show-targets", str(shared_data / name), "--images", "2", "--config", config, *SMALL,
                "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*_targets.png"))) == 2
    out = capsys.readouterr().out
    assert out.count("boxes with no positive point") == 2


def test_show_targets_unknown_image_is_one_line(tmp_path, shared_data, capsys):
    with pytest.raises(SystemExit) as exc:
        from fcosdet.cli.main import main
        main(["show-targets", str(shared_data / "bccd"), "nope.jpg", "--out", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope.jpg is not in split 'train'" in err[0]


def test_analysis_points_follow_the_criterions_point_offset(shared_data):
    """fcos_r50_finetune trains on points at j*stride (model.point_offset=zero): the analysis
    assigns on those points (each level's grid starts at 0, not stride // 2), with the positives
    `assign_targets_batch` gives on that grid for the image the evaluation transform makes."""
    cfg = load_config("fcos_r50_finetune", ["data.scale=[512,384]"])
    criterion, transform = build_criterion(cfg.model), build_transform(cfg, train=False)
    assert criterion.point_offset == "zero"
    split = load_dataset_spec(shared_data / "bccd", "train")
    view = compute_view(split.records[3], criterion, transform)
    image, target = DetectionDataset(split, transforms=transform)[3]
    sizes = featmap_sizes(image.shape[-2:], criterion.strides)
    points = anchor_points(sizes, criterion.strides, offset="zero")  # L x (H*W, 2)
    assert view.main.sizes == sizes
    for level, stride in enumerate(criterion.strides):
        assert view.main.points[level][0].tolist() == [0.0, 0.0] != [stride // 2] * 2
        assert torch.equal(view.main.points[level], points[level])
    kw = dict(num_classes=3, strides=criterion.strides, regress_ranges=criterion.regress_ranges,
              center_sampling=criterion.center_sampling, center_sample_radius=criterion.center_sample_radius)
    labels, _ = assign_targets_batch(points, [target["boxes"]], [target["labels"]],
                                     grids=level_grids(sizes, criterion.strides, offset="zero"), **kw)  # (1, P)
    owner = view.main.box_of_point  # (P,)
    positive = owner < len(target["boxes"])
    assert positive.sum() > 0 and torch.equal(positive, labels[0] < 3)
    assert torch.equal(target["labels"][owner[positive]], labels[0][labels[0] < 3])
    half, _ = assign_targets(anchor_points(sizes, criterion.strides), target["boxes"], target["labels"], **kw)
    assert not torch.equal(positive, half < 3)  # the half-stride grid assigns other points here


def _hand_built_coco(root):
    """Four 128x128 images, one box each, at the default strides / regress ranges, no resize:
    A [8,8,39,39]: 4x4 stride-8 points inside, max distance <= 31 -> 16 positives on P3;
    B [0,0,128,128]: 8x8 stride-16 points inside, max distance 72..120 -> 64 positives on P4
    (stride-8 points all have a side >= 68, stride-32 points <= 112 < 128);
    C [53,53,58,58]: no stride-8 point inside, the stride-16 point (56,56) has distance 3 -> none;
    D [0,58,128,63]: the stride-8 row y=60 is inside but every point has a side >= 64 -> none;
    with every regress-range bound doubled P3 takes up to 128, so D gets its 16 row points."""
    from PIL import Image
    (root / "images").mkdir(parents=True)
    boxes = {"a.png": ([8, 8, 39, 39], 1), "b.png": ([0, 0, 128, 128], 2), "c.png": ([53, 53, 58, 58], 1),
             "d.png": ([0, 58, 128, 63], 2)}
    images, anns = [], []
    for i, (name, ((x1, y1, x2, y2), cat)) in enumerate(boxes.items(), start=1):
        Image.new("RGB", (128, 128), (40 * i, 90, 160)).save(root / "images" / name)
        images.append({"id": i, "file_name": name, "width": 128, "height": 128})
        anns.append({"id": i, "image_id": i, "category_id": cat, "bbox": [x1, y1, x2 - x1, y2 - y1],
                     "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    (root / "train.json").write_text(json.dumps(coco))
    return root


def test_check_data_report_levels_and_no_positive_boxes_exact(tmp_path, capsys):
    data = _hand_built_coco(tmp_path / "data")
    out = tmp_path / "report"
    assert cli(["check-data", str(data), "--splits", "train", "--set", "data.scale=[128,128]",
                "--out", str(out), "--draw", "2"]) == 0
    report = json.loads((out / "report.json").read_text())["train"]
    assert report["images"] == 4 and report["boxes"] == 4
    assert report["per_class"] == {"cat": 2, "dog": 2} and report["imbalance"] == 1.0
    assert report["coco_sizes"] == {"small": 3, "medium": 0, "large": 1}
    assert report["levels"] == {"P3": 1, "P4": 1, "P5": 0, "P6": 0, "P7": 0}
    assert report["no_positive"] == 2
    assert sorted(e["image"].rsplit("/", 1)[-1] for e in report["no_positive_examples"]) == ["c.png", "d.png"]
    assert report["mean_positives_per_box"] == (16 + 64) / 4
    best = report["suggestions"][0]
    assert best["set"] == "model.regress_ranges=[[-1,128],[128,256],[256,512],[512,1024],[1024,1e+08]]"
    assert best["no_positive"] == 1
    again = check_data(str(data), ["train"], skip_invalid=False, sets=["data.scale=[128,128]", best["set"]])
    assert again["train"]["no_positive"] == 1  # the printed --set does what it says
    assert (out / "train_report.png").stat().st_size > 5_000
    assert len(list((out / "train_labels").glob("*_labels.jpg"))) == 2
    captured = capsys.readouterr()
    printed = captured.out
    assert "decoding images: 4/4 (100 %)" in captured.err  # progress outside a terminal too
    assert "no positive point: 2 (50.0%)" in printed and "suggestion: --set model.regress_ranges=" in printed


def test_check_data_and_show_targets_use_the_zero_offset_points_of_fcos_r50_finetune(tmp_path, capsys):
    """The hand-built boxes under fcos_r50_finetune (points at j*stride, center sampling 1.5):
    A [8,8,39,39] gets the 3x3 stride-8 points 16..32; B [0,0,128,128] the 3x3 stride-16 points
    48..80 in its centre region and the stride-8 point (64, 64) (max distance 64 <= 64); C
    [53,53,58,58] the stride-8 point (56, 56), which the half-stride grid (52, 60) misses;
    D [0,58,128,63] lies between the rows y = 56 and 64: none."""
    data = _hand_built_coco(tmp_path / "data")
    finetune = ["--config", "fcos_r50_finetune", "--set", "data.scale=[128,128]"]
    assert cli(["check-data", str(data), "--splits", "train", *finetune, "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())["train"]
    assert report["levels"] == {"P3": 2, "P4": 1, "P5": 0, "P6": 0, "P7": 0}
    assert report["no_positive"] == 1 and report["no_positive_examples"][0]["image"].endswith("d.png")
    assert report["mean_positives_per_box"] == (9 + 10 + 1 + 0) / 4
    assert cli(["show-targets", str(data), "c.png", "b.png", *finetune, "--out", str(tmp_path / "targets")]) == 0
    summary_c = (tmp_path / "targets" / "c_targets.txt").read_text()
    assert "1 boxes, 1 positive points" in summary_c and "boxes with no positive point: 0" in summary_c
    assert "1 boxes, 10 positive points" in (tmp_path / "targets" / "b_targets.txt").read_text()


@pytest.mark.parametrize("name", ["bccd", "aquarium", "coco128"])
def test_check_data_report_on_shared_data(tmp_path, shared_data, name):
    reports = check_data(
        str(shared_data / name), ["val"], skip_invalid=True, config="fcos_r18_cpu", sets=["data.scale=[512,384]"],
        out_dir=tmp_path)
    val = reports["val"]
    boxes = json.loads((shared_data / name / "val.json").read_text())["annotations"]
    assert val["boxes"] == len(boxes) == sum(val["per_class"].values()) == sum(val["coco_sizes"].values())
    assert sum(val["levels"].values()) + val["no_positive"] == val["boxes"]
    assert (tmp_path / "val_report.png").is_file()


def _record(image_id, boxes, labels, crowd=None):
    from fcosdet.data.records import ImageRecord
    return ImageRecord(path=f"/none/{image_id}.jpg", width=200, height=200, image_id=image_id,
                       boxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=np.asarray(labels, np.int64),
                       iscrowd=np.asarray(crowd if crowd is not None else [False] * len(labels), bool))


def _pred(boxes, scores, labels):
    return (np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(scores, np.float64),
            np.asarray(labels, np.int64))


def test_confusion_matrix_exact_on_hand_built_detections():
    from fcosdet.analysis.diagnostics import confusion_matrix
    cat, dog, bg = 0, 1, 2
    records = [
        _record(1, [[0, 0, 50, 50], [100, 100, 150, 150]], [cat, dog]),
        _record(2, [[10, 10, 60, 60]], [dog]),
        # D (cat) and E (dog) overlap; the cat detection overlaps E more (IoU 0.9) than D (0.6)
        _record(3, [[0, 0, 100, 60], [0, 0, 100, 90]], [cat, dog]),
        _record(4, [[0, 0, 80, 80], [100, 100, 200, 200]], [cat, cat], crowd=[False, True]),
    ]
    preds = {
        1: _pred([[0, 0, 50, 50], [100, 100, 150, 150], [160, 0, 199, 40], [0, 0, 50, 50]],
                 [0.9, 0.8, 0.7, 0.1], [cat, cat, dog, dog]),  # the 0.1 one is under score_thr
        3: _pred([[0, 0, 100, 100]], [0.9], [cat]),
        4: _pred([[100, 100, 200, 200], [0, 0, 80, 80]], [0.95, 0.5], [cat, cat]),  # first on the crowd region
    }
    matrix, errors = confusion_matrix(records, preds, 2, score_thr=0.3, iou_thr=0.5)
    expected = np.zeros((3, 3), np.int64)
    expected[cat, cat] = 1 + 1 + 1  # image 1 box A, image 3 box D (own class preferred), image 4
    expected[dog, cat] = 1  # image 1: dog B detected as cat
    expected[bg, dog] = 1  # image 1: dog detection on empty background
    expected[dog, bg] = 1 + 1  # image 2: C missed; image 3: E left over
    assert matrix.tolist() == expected.tolist()
    assert errors == {1: 2, 2: 1, 3: 1, 4: 0}


def test_average_recall_exact_on_hand_built_detections():
    """Image 1: two exact detections of two boxes; image 2: one detection at IoU 0.62 (matched
    at thresholds .50, .55, .60 only). AR100 = (3 * 3/3 + 7 * 2/3) / 10; with one detection
    per image image 1 finds one box: AR1 = (3 * 2/3 + 7 * 1/3) / 10."""
    from fcosdet.engine.evaluation.coco import CocoEvaluator, format_table
    records = [_record(1, [[0, 0, 50, 50], [100, 100, 150, 150]], [0, 0]), _record(2, [[0, 0, 100, 100]], [0])]
    ev = CocoEvaluator(records=records, class_names=["cell", "empty"])
    ev.process([{"image_id": 1, **dict(zip(("boxes", "scores", "labels"),
                                           _pred([[0, 0, 50, 50], [100, 100, 150, 150]], [0.9, 0.8], [0, 0])))},
                {"image_id": 2, **dict(zip(("boxes", "scores", "labels"), _pred([[0, 0, 100, 62]], [0.7], [0])))}])
    m = ev.evaluate()
    assert m["AR100"] == pytest.approx((3 + 7 * 2 / 3) / 10, abs=1e-9)
    assert m["AR10"] == pytest.approx(m["AR100"], abs=1e-9)
    assert m["AR1"] == pytest.approx((3 * 2 / 3 + 7 / 3) / 10, abs=1e-9)
    assert m["images"] == 2 and m["boxes"] == 3
    assert m["boxes_by_size"] == {"small": 0, "medium": 2, "large": 1}
    table = format_table(m)
    assert "AR100" in table and table.splitlines()[1].split()[3] == "n/a"  # APs: no small box
    assert "2 images, 3 boxes" in table
    assert ev.pr_curves["precision"]["empty"] is None and len(ev.pr_curves["precision"]["cell"]) == 101
