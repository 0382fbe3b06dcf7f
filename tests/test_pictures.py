"""Issue 19, "Pictures": what each picture must show, checked on the figure objects.

show-targets: a legend of the boxes and P3 / P4 grid cells large enough to tell the dots apart;
check-data: one readable horizontal bar per class with its count; curves: a sensible AP axis
for one evaluation and markers on short curves; worst images: each half labelled, an empty half
saying why; report.html: the run (dates, epochs, dataset, checkpoints) from run.json, or what
config.yaml / log.jsonl tell when run.json is missing.
"""
import json

import numpy as np
from PIL import Image

from fcosdet.analysis.data_report import report_figure
from fcosdet.analysis.diagnostics import draw_side_by_side, panel_texts
from fcosdet.analysis.report import read_run_info, render
from fcosdet.analysis.targets_view import box_colour, compute_view, targets_figure
from fcosdet.analysis.viz import training_figure
from fcosdet.data import load_dataset_spec
from fcosdet.data.build import build_transform
from fcosdet.data.records import ImageRecord
from fcosdet.model.build import build_criterion
from fcosdet.presets import load_config

GREY = (128, 128, 128)


# ---------------------------------------------------------------------- show-targets

def test_targets_figure_has_a_box_legend_and_legible_p3_p4_cells(shared_data):
    cfg = load_config("fcos_r18_tricks_cpu", ["data.scale=[512,384]"])
    split = load_dataset_spec(shared_data / "bccd", "train")
    criterion = build_criterion(cfg.model)
    view = compute_view(split.records[3], criterion, build_transform(cfg, train=False))
    fig = targets_figure(view, criterion, split.class_names)

    assert len(fig.legends) == 1
    legend = fig.legends[0]
    expected = [f"{g}: {split.class_names[int(label)]}" for g, label in enumerate(view.labels)]
    assert [t.get_text() for t in legend.get_texts()] == expected
    colours = [tuple(np.round(np.array(h.get_markerfacecolor()[:3]) * 255).astype(int)) for h in legend.legend_handles]
    assert colours == [box_colour(g) for g in range(len(view.boxes))]

    # one grid cell in PNG pixels, per level (panels: P3..P7 of the center-sampling row first)
    width = view.size[1]
    cell = [ax.get_window_extent().width * stride / width for ax, stride in zip(fig.axes, criterion.strides)]
    assert cell[0] >= 6, cell  # P3: 80 dpi and 3.2-inch panels gave about 2 px
    assert abs(cell[1] - cell[0]) < 0.15 * cell[0], cell  # P4's panel is half as wide for half the cells
    for ax, c in zip(fig.axes, cell):  # positive dots: 0.75 cell across, so neighbours stay apart
        if len(ax.collections) == 2:
            diameter_px = np.sqrt(ax.collections[1].get_sizes()[0]) * fig.dpi / 72
            assert 0.6 * c < diameter_px < 0.9 * c and diameter_px >= 4


# ---------------------------------------------------------------------- check-data

def _split_report(per_class):
    return {"per_class": per_class, "coco_sizes": {"small": 10, "medium": 20, "large": 30},
            "train_scale": [1333, 800], "train_scale_sizes": {"0-8": 1, "8-16": 4, ">=512": 2},
            "levels": {"P3": 11, "P4": 7, "P5": 3}, "no_positive": 2}


def test_check_data_class_bars_readable_for_80_classes_with_counts():
    names = [f"class name {i:02d}" for i in range(80)]
    report = _split_report({n: i for i, n in enumerate(names)})
    fig = report_figure("train", report)
    fig.draw_without_rendering()
    ax = fig.axes[0]
    # horizontal bars: the count is the width, every class has one, most boxes on top
    assert [p.get_width() for p in ax.patches] == list(range(79, -1, -1))
    assert {p.get_height() for p in ax.patches} == {0.75}
    labels = ax.get_yticklabels()
    assert [t.get_text() for t in labels] == names[::-1]
    assert [t.get_text() for t in ax.texts] == [str(n) for n in range(79, -1, -1)]  # the count on each bar
    boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.y0)
    assert all(a.y1 <= b.y0 for a, b in zip(boxes, boxes[1:])), "class labels overlap"
    assert min(b.height for b in boxes) * 100 / fig.dpi >= 7  # at the saved 100 dpi: >= 7 px letters
    levels = fig.axes[3]
    assert [t.get_text() for t in levels.get_yticklabels()] == ["P3", "P4", "P5", "none"]
    assert [t.get_text() for t in levels.texts] == ["11", "7", "3", "2"]


def test_check_data_figure_height_follows_the_class_count():
    few = report_figure("val", _split_report({"a": 3, "b": 1})).get_size_inches()[1]
    many = report_figure("val", _split_report({f"c{i}": i for i in range(80)})).get_size_inches()[1]
    assert many > 2 * few


# ---------------------------------------------------------------------- curves

def test_one_evaluation_gives_a_sensible_ap_axis_and_short_curves_have_markers():
    rows = [{"iter": 1, "epoch": 1, "loss": 2.0, "loss_cls": 1.0, "lr": 0.01},
            {"iter": 2, "epoch": 1, "loss": 1.5, "loss_cls": 0.8, "lr": 0.01},
            {"iter": 2, "epoch": 1, "AP": 0.03, "AP50": 0.08, "AP75": 0.01}]
    loss_ax, lr_ax, ap_ax = training_figure(rows, lr=True).axes
    lo, hi = ap_ax.get_xlim()
    assert lo <= 0.6 and hi >= 1.4  # epoch 1 mid-panel, not on an axis of 0.96-1.04
    assert [t for t in ap_ax.get_xticks() if lo <= t <= hi] == [1.0]
    bottom, top = ap_ax.get_ylim()
    assert -0.01 < bottom < 0 and 0.08 < top <= 0.2  # an AP of 0.03 is not flat on [0, 1]
    assert all(line.get_marker() == "o" for line in loss_ax.get_lines() + lr_ax.get_lines())
    assert ([t for t in loss_ax.get_xticks() if loss_ax.get_xlim()[0] <= t <= loss_ax.get_xlim()[1]]
            == [1.0, 2.0])  # iterations are whole numbers

    perfect = training_figure([{"epoch": e, "iter": e, "AP": 1.0} for e in (1, 2)]).axes[-1]
    assert 1.0 < perfect.get_ylim()[1] <= 1.05
    long = training_figure([{"iter": i, "loss": 1.0 / (i + 1)} for i in range(200)]).axes[0]
    assert long.get_lines()[0].get_marker() in ("None", None, "")


# ---------------------------------------------------------------------- worst images

def _grey_record(tmp_path, boxes):
    path = tmp_path / "grey.png"
    Image.new("RGB", (200, 160), GREY).save(path)
    return ImageRecord(path=str(path), width=200, height=160, image_id=1,
                       boxes=np.asarray(boxes, np.float32).reshape(-1, 4), labels=np.zeros(len(boxes), np.int64),
                       iscrowd=np.zeros(len(boxes), bool))


def _middle_is_grey(image, left):
    """Whether the 40 x 20 px middle of the half starting at `left` is the untouched grey."""
    w, h = 200, image.height
    crop = image.crop((left + w // 2 - 20, h // 2 - 10, left + w // 2 + 20, h // 2 + 10))
    return [colour for _, colour in crop.getcolors()] == [GREY]


def test_side_by_side_titles_each_half_and_says_why_a_half_is_empty(tmp_path):
    record = _grey_record(tmp_path, [[5, 5, 40, 40]])  # one box in a corner, the middle stays grey
    below = (np.array([[150, 120, 190, 150]], np.float64), np.array([0.1]), np.array([0]))
    (gt_title, gt_why), (det_title, det_why) = panel_texts(record, below, 0.3)
    assert gt_title == "ground truth: 1 box" and gt_why is None
    assert det_title == "detections >= 0.30: 0"
    assert "no detection scoring >= 0.30" in det_why and "best 0.10" in det_why
    image = draw_side_by_side(record, below, ["cell"], 0.3)
    assert image.width == 2 * 200 + 8 and image.height > 160  # a title strip above both halves
    strip = image.crop((0, 0, image.width, image.height - 160)).convert("L")
    assert strip.getextrema()[0] < 100  # dark title text on white
    assert _middle_is_grey(image.crop((0, image.height - 160, image.width, image.height)), 0)
    assert not _middle_is_grey(image.crop((0, image.height - 160, image.width, image.height)), 208)

    empty = _grey_record(tmp_path, [])
    (gt_title, gt_why), (_, det_why) = panel_texts(empty, None, 0.3)
    assert gt_title == "ground truth: 0 boxes" and gt_why == "no ground-truth box in this image"
    assert "the model returned none" in det_why
    image = draw_side_by_side(empty, None, ["cell"], 0.3)
    assert not _middle_is_grey(image.crop((0, image.height - 160, image.width, image.height)), 0)


# ---------------------------------------------------------------------- report.html

RUN_JSON = {"started": "2026-12-01T23:20:00+00:00", "finished": "2026-12-01T23:22:03+00:00", "wall_seconds": 123.4,
            "epochs_planned": 12, "epochs_run": 3, "iterations_planned": 219, "iterations_run": 73,
            "stopped": "max_iters", "device": "cpu x1",
            "dataset": {"path": "/data/bccd", "classes": ["RBC", "WBC", "Platelets"],
                        "splits": {"train": {"source": "/data/bccd/train.json", "images": 292, "boxes": 4000},
                                   "val": {"source": "/data/bccd/val.json", "images": 73, "boxes": 1000}}},
            "checkpoints": {"last": "runs/x/last.pt", "best": None}}


def _log(run_dir, last_iter):
    run_dir.mkdir(exist_ok=True)
    rows = [{"iter": i, "epoch": 1 + i // 25, "loss": 1.0, "lr": 0.01, "images_per_s": 5.0}
            for i in range(1, last_iter + 1)]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_shows_the_run_from_run_json_at_the_top(tmp_path):
    run_dir = tmp_path / "run"
    _log(run_dir, 73)
    (run_dir / "run.json").write_text(json.dumps(RUN_JSON))
    assert read_run_info(run_dir) == (RUN_JSON, "")
    page = render(run_dir)
    assert page.index("<h2>Run</h2>") < page.index("<h2>Training</h2>")
    for text in ("2026-12-01T23:20:00+00:00", "2026-12-01T23:22:03+00:00", "2 min 03 s (123.4 s)",
                 "3 of 12 planned", "73 of 219 planned", "max_iters", "cpu x1", "runs/x/last.pt",
                 "none (no evaluation kept one)", "/data/bccd", "3: RBC, WBC, Platelets",
                 "<td>train</td><td>/data/bccd/train.json</td><td>292</td><td>4000</td>",
                 "<td>val</td><td>/data/bccd/val.json</td><td>73</td><td>1000</td>"):
        assert text in page, text
    assert "unknown" not in page.split("<h2>Training</h2>")[0]


def test_report_without_run_json_shows_config_and_log_and_says_the_rest_is_unknown(tmp_path):
    run_dir = tmp_path / "old"
    _log(run_dir, 40)
    (run_dir / "config.yaml").write_text("train:\n  epochs: 12\n  max_iters: null\ndata:\n  dataset: /data/bccd\n")
    (run_dir / "last.pt").write_bytes(b"")
    info, why = read_run_info(run_dir)
    assert info is None and "no run.json" in why
    page = render(run_dir)
    top = page.split("<h2>Training</h2>")[0]
    for text in ("no run.json", "<th>started</th><td>unknown</td>", "<th>wall time</th><td>unknown</td>",
                 "2 of 12 planned", "40 of unknown planned", "/data/bccd", str(run_dir / "last.pt"),
                 "split files and image / box counts: unknown"):
        assert text in top, text


def test_report_notes_a_run_json_older_than_the_log(tmp_path):
    run_dir = tmp_path / "resumed"
    _log(run_dir, 90)  # a resumed run logging past the earlier session's run.json
    (run_dir / "run.json").write_text(json.dumps(RUN_JSON))
    assert "run.json is from an earlier session (iteration 73); the log now reaches iteration 90" in render(run_dir)
    (run_dir / "run.json").write_text("{cut")
    assert "run.json is unreadable" in render(run_dir)
