"""Sliced inference (fcosdet.deploy.slicing, Detector(slicing=...), predict / eval --slice): exact
tests of the grid, the cut-box rule and the merges on hand-built boxes, then the demo model on
generated 1024-px canvases (small shapes at the scale it was trained at, large ones filling the
canvas), through the CLI and an exported ONNX graph."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import error_line
from PIL import Image

from fcosdet.cli.evaluate import evaluate_checkpoint
from fcosdet.cli.main import run as cli
from fcosdet.data.canvas import make_canvas_dataset
from fcosdet.deploy.build import build_inference
from fcosdet.deploy.export import export_onnx
from fcosdet.deploy.predictor import Detector
from fcosdet.deploy.slicing import (
    FULL_VIEW,
    Slicing,
    greedy_keep,
    image_views,
    keep_uncut,
    merge_ios,
    merge_nms,
    merge_views,
    offset_boxes,
    parse_slice_size,
    tile_grid,
    tile_starts,
)
from fcosdet.errors import UserError
from fcosdet.io.model_file import ModelFile

T = torch.tensor
TILE = 192  # the demo model's training size: tiles of it keep the canvas shapes at native scale


# ---------------------------------------------------------------------- the grid

def test_tile_starts_on_hand_built_sizes():
    assert tile_starts(1024, 192, 0.2) == [0, 154, 308, 462, 616, 770, 832]  # step 192 - 38, last at the edge
    assert tile_starts(192, 192, 0.2) == [0]
    assert tile_starts(100, 192, 0.2) == [0]  # smaller than a tile: one tile
    assert tile_starts(193, 192, 0.2) == [0, 1]
    assert tile_starts(384, 192, 0.0) == [0, 192]
    assert tile_starts(400, 192, 0.0) == [0, 192, 208]


def test_tile_grid_and_views():
    assert tile_grid(300, 100, size=(192, 192), overlap=0.2).tolist() == [[0, 0, 192, 100], [108, 0, 300, 100]]
    assert tile_grid(640, 480, size=(320, 240), overlap=0.0).tolist() == [
        [0, 0, 320, 240], [320, 0, 640, 240], [0, 240, 320, 480], [320, 240, 640, 480]]  # W,H tiles, row-major
    tiles, full = image_views(150, 90, Slicing(size=(192, 192)))
    assert tiles.tolist() == [[0, 0, 150, 90]] and not full  # one tile is the whole image: no second pass
    tiles, full = image_views(1024, 768, Slicing(size=(512, 512)))
    assert len(tiles) == 6 and full
    assert not image_views(1024, 768, Slicing(size=(512, 512), full_image=False))[1]


def test_slice_settings_are_checked():
    assert parse_slice_size("512") == (512, 512) and parse_slice_size("640, 480") == (640, 480)
    for bad in ("0", "a", "1,2,3", "-5", ""):
        with pytest.raises(UserError, match="--slice"):
            parse_slice_size(bad)
    with pytest.raises(UserError, match="--slice-overlap"):
        Slicing(size=(512, 512), overlap=1.0)
    with pytest.raises(UserError, match="--slice-merge"):
        Slicing(size=(512, 512), merge="wbf")


def test_offset_boxes():
    boxes = T([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 10.0, 5.0]])
    assert offset_boxes(boxes, T([100, 50])).tolist() == [[101, 52, 103, 54], [100, 50, 110, 55]]


# ---------------------------------------------------------------------- cut boxes

# A 350 x 200 image in two tiles of 200 overlapping by 50: tile 0 = x [0, 200), tile 1 = x [150, 350).
# Inner edges: tile 0's right (x = 200) and tile 1's left (x = 150); the margin is 2 px.
TILES = tile_grid(350, 200, size=(200, 200), overlap=0.25)


def _keep(rows):
    """rows: (x1, y1, x2, y2, score, label, view) -> the keep_uncut mask as a list."""
    t = T(rows, dtype=torch.float32)
    return keep_uncut(t[:, :4], t[:, 4], t[:, 5].long(), t[:, 6].long(), TILES, width=350, height=200).tolist()


def test_cut_box_inside_the_neighbours_overlap_is_dropped():
    assert TILES.tolist() == [[0, 0, 200, 200], [150, 0, 350, 200]]
    small_cut = (170, 50, 200, 90, 0.9, 0, 0)  # tile 0 sees the left part of an object in x [170, 230)
    small_whole = (170, 50, 230, 90, 0.8, 0, 1)  # tile 1 sees it whole
    border = (0, 10, 40, 50, 0.7, 0, 0)  # touches the image border, not an inner edge
    cut_near_edge = (151, 120, 199, 160, 0.6, 0, 0)  # tile 0, 1 px from its right edge: cut, inside tile 1
    assert _keep([small_cut, small_whole, border, cut_near_edge]) == [False, True, True, False]


def test_fragments_of_a_large_object_go_when_the_full_pass_has_it_whole():
    left = (100, 100, 200, 150, 0.6, 2, 0)  # an object x [100, 260): larger than the overlap, in no tile whole
    right = (150, 100, 260, 150, 0.5, 2, 1)
    assert _keep([left, right]) == [True, True]  # without the full pass nothing sees it better
    whole = (101, 99, 259, 151, 0.5, 2, FULL_VIEW)
    assert _keep([left, right, whole]) == [False, False, True]
    assert _keep([left, right, (*whole[:5], 3, FULL_VIEW)]) == [True, True, True]  # another class: kept
    assert _keep([left, right, (*whole[:4], 0.2, 2, FULL_VIEW)]) == [True, True, True]  # a weak full box: kept
    inner = (30, 30, 50, 50, 0.5, 2, 0)  # a fragment inside a large object, away from the edges
    assert _keep([inner, (20, 20, 300, 120, 0.5, 2, FULL_VIEW)]) == [False, True]
    # a small object inside a full-image box that tile 0 sees whole: the tile's own detection stays
    assert _keep([inner, (20, 20, 120, 120, 0.5, 2, FULL_VIEW)]) == [True, True]


# ---------------------------------------------------------------------- merges

def test_nms_merge_is_class_aware():
    boxes = T([[0.0, 0, 10, 10], [0, 0, 10, 11], [0, 0, 10, 10]])
    out = merge_nms(boxes, T([0.9, 0.8, 0.7]), T([0, 0, 1]), thr=0.5)
    assert out.scores.tolist() == pytest.approx([0.9, 0.7]) and out.labels.tolist() == [0, 1]


def test_ios_merge_is_greedy_with_unions():
    boxes = T([[0.0, 0, 10, 10], [0, 0, 20, 10], [0, 0, 30, 10], [100, 100, 110, 110], [0, 0, 10, 10]])
    scores, labels = T([0.9, 0.8, 0.3, 0.5, 0.6]), T([0, 0, 0, 0, 1])
    out = merge_ios(boxes, scores, labels, thr=0.5)
    # A absorbs B (widens it: 0.8 >= 0.5 * 0.9) and C (contained, too weak to widen it)
    assert out.boxes.tolist() == [[0, 0, 20, 10], [0, 0, 10, 10], [100, 100, 110, 110]]
    assert out.scores.tolist() == pytest.approx([0.9, 0.6, 0.5]) and out.labels.tolist() == [0, 1, 0]
    # a chain X - Y - Z: Y joins X, so Z (matched only by Y) stays: greedy, not transitive
    chain = merge_ios(T([[0.0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]]), T([0.9, 0.8, 0.7]), T([0, 0, 0]),
                      thr=0.5)
    assert chain.boxes.tolist() == [[0, 0, 15, 10], [10, 0, 20, 10]]


def test_greedy_keep_matches_a_loop():
    rng = np.random.default_rng(0)
    for n in (1, 5, 40):
        match = torch.from_numpy(rng.random((n, n)) < 0.2)
        kept = []
        for i in range(n):  # the reference: a loop over the boxes by decreasing score
            kept.append(not any(match[j, i] and kept[j] for j in range(i)))
        assert greedy_keep(match).tolist() == kept


def test_merge_views_without_detections():
    empty = torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    for merge in ("nms", "ios"):
        out = merge_views(*empty, TILES, width=350, height=200, merge=merge, thr=0.5, max_per_img=100)
        assert out.boxes.shape == (0, 4) and len(out.scores) == len(out.labels) == 0


# ---------------------------------------------------------------------- the demo model

@pytest.fixture(scope="module")
def canvases(tmp_path_factory):
    root = tmp_path_factory.mktemp("canvases")
    make_canvas_dataset(root / "small", num_images=1, object_size=(16.0, 48.0), count=20, seed=0)
    make_canvas_dataset(root / "large", num_images=2, canvas=(768, 768), object_size=(200.0, 450.0), count=3, seed=0)
    make_canvas_dataset(root / "little", num_images=1, canvas=(320, 400), count=5, seed=1)
    return {"small": root / "small", "large": root / "large", "little": root / "little"}


def _eval(model, data, slicing=None) -> dict:
    return evaluate_checkpoint(model, dataset=str(data), split="val", out_dir=None, workers=0, batch_size=8,
                               slicing=slicing)


@pytest.mark.slow
@pytest.mark.integration
def test_sliced_eval_finds_small_objects_and_keeps_large_ones(demo_model, canvases, tmp_path):
    """Small shapes (16-48 px) on a 1024-px canvas: lost when the canvas is resized to 192 px, found
    in 192-px tiles; large ones (200-450 px on 768 px): the full-image pass keeps them whole."""
    model = demo_model["model"]
    full = _eval(model, canvases["small"])
    cli(["eval", str(model), "--data", str(canvases["small"]), "--workers", "0", "--batch-size", "8",
         "--slice", str(TILE), "--no-full-image", "--out", str(tmp_path)])
    sliced = json.loads((tmp_path / "metrics.json").read_text())
    assert full["AP50"] <= 0.1 and sliced["AP50"] >= 0.5, (full["AP50"], sliced["AP50"])
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert detections and all(0 <= d["bbox"][0] and d["bbox"][0] + d["bbox"][2] <= 1024 for d in detections)
    full = _eval(model, canvases["large"])
    both = _eval(model, canvases["large"], Slicing(size=(TILE, TILE)))
    assert full["AP50"] >= 0.5 and both["AP50"] >= full["AP50"] and both["AP"] >= full["AP"] - 0.01, (full, both)


@pytest.mark.slow
@pytest.mark.integration
def test_predict_slice_through_the_cli(demo_model, canvases, tmp_path, capsys):
    images = sorted((canvases["little"] / "images").glob("*.png"))
    cli(["predict", str(demo_model["model"]), *map(str, images), "--slice", "192,160", "--slice-merge", "ios",
         "--batch-size", "3", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "predictions.json").read_text())
    slicing = Slicing(size=(192, 160), merge="ios")
    expected = Detector.from_file(demo_model["model"]).predict_batch(images, slicing=slicing, batch_size=5)
    assert len(written) == sum(len(r) for r in expected) > 0
    first = [d for d in written if d["file_name"].endswith(images[0].name)]
    torch.testing.assert_close(torch.tensor([d["bbox"] for d in first]).reshape(-1, 4)[:, :2],
                               expected[0].boxes[:, :2], rtol=0, atol=0.02)  # batches of 3 or 5 views: same boxes
    assert (tmp_path / f"{images[0].stem}_det.png").is_file()
    for argv, words in ((["--slice-overlap", "0.3"], "give --slice SIZE too"), (["--slice", "x"], "not a tile size"),
                        (["--slice", "192", "--slice-overlap", "1.5"], "--slice-overlap")):
        assert words in error_line(capsys, ["predict", str(demo_model["model"]), str(images[0]), *argv,
                                            "--out", str(tmp_path)])


@pytest.mark.slow
def test_images_without_objects_and_small_images(demo_model):
    det = Detector.from_file(demo_model["model"], score_thr=0.99)  # nothing scores that high: no detections
    blank = Image.new("RGB", (500, 300), (128, 128, 128))
    for merge in ("nms", "ios"):
        r = det.predict([blank, np.zeros((100, 80, 3), np.uint8)], slicing=Slicing(size=(192, 192), merge=merge))
        assert [len(x) for x in r] == [0, 0] and r[0].orig_size == (300, 500) and r[1].orig_size == (100, 80)
    det = Detector.from_file(demo_model["model"])
    image = Image.open(sorted((demo_model["data"] / "images").glob("val_*.jpg"))[0]).convert("RGB")
    one_tile = det.predict(image, slicing=Slicing(size=(512, 512)))  # smaller than a tile: the plain pass
    plain = det.predict(image)
    assert torch.equal(one_tile.labels, plain.labels)
    torch.testing.assert_close(one_tile.boxes, plain.boxes, rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_an_exported_onnx_file_slices_as_the_checkpoint(demo_model, canvases, tmp_path_factory, runtime):
    path = tmp_path_factory.getbasetemp() / "slicing-demo.onnx"
    if not path.exists():  # exported once for both runtimes
        export_onnx(build_inference(ModelFile.load(demo_model["model"]), overrides={"test.score_thr": 0.3}), path)
    images = sorted((canvases["little"] / "images").glob("*.png"))
    slicing = Slicing(size=(192, 192))
    ref = Detector.from_file(demo_model["model"], score_thr=0.3).predict_batch(images, slicing=slicing)
    got = Detector.from_file(path, onnx_runtime=runtime).predict_batch(images, slicing=slicing)
    assert sum(len(r) for r in ref) > 0
    for g, r in zip(got, ref):
        assert g.labels.tolist() == r.labels.tolist()
        torch.testing.assert_close(g.boxes, r.boxes, rtol=0, atol=0.5)
        torch.testing.assert_close(g.scores, r.scores, rtol=0, atol=1e-4)
