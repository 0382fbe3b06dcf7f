"""Training on tiles (data.tile): the sampler on hand-built boxes, its determinism through the
dataset and sampler, and a few training iterations on real aquarium images through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import error_line
from PIL import Image
from test_safety import SMALL

from fcosdet.cli.main import run as cli
from fcosdet.config import Config, apply_overrides
from fcosdet.data.build import build_tile_sampler, build_transform, load_split
from fcosdet.data.loader import DetectionDataset, EpochSampler
from fcosdet.data.tiles import TileSampler, Window, clip_to_window
from fcosdet.errors import UserError

EMPTY_AQUARIUM_IMAGE = 384  # the aquarium training image without boxes (its empty label file)


def _draws(sampler: TileSampler, boxes: list[list[float]], height: int, width: int, n: int) -> list[Window]:
    gen = torch.Generator().manual_seed(0)
    tensor = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)  # (G, 4)
    return [sampler.window(tensor, height, width, generator=gen) for _ in range(n)]


def test_every_box_centred_tile_contains_its_box_and_lies_inside_the_image():
    boxes = [[10, 20, 30, 50], [900, 700, 1000, 760], [400, 0, 480, 30]]
    sampler = TileSampler(size=256, empty_prob=0.0, min_area=0.5)
    for w in _draws(sampler, boxes, 768, 1024, 300):
        assert (w.height, w.width) == (256, 256)
        assert 0 <= w.top <= 768 - 256 and 0 <= w.left <= 1024 - 256
        inside = [w.left <= x1 and x2 <= w.left + w.width and w.top <= y1 and y2 <= w.top + w.height
                  for x1, y1, x2, y2 in boxes]
        assert any(inside)  # the box it was placed around
    lefts = {w.left for w in _draws(sampler, boxes[:1], 768, 1024, 200)}
    assert min(lefts) == 0 and max(lefts) == 10  # every start containing [10, 30] occurs: 0..10
    assert len(lefts) == 11


def test_clipping_keeps_boxes_above_the_minimum_area_fraction():
    boxes = torch.tensor([[0., 0., 100., 100.],  # half inside
                          [60., 10., 80., 30.],  # wholly inside
                          [140., 0., 250., 10.],  # 10 of 110 columns inside
                          [300., 300., 310., 310.]])  # outside
    window = Window(top=0, left=50, height=100, width=100)
    kept, keep = clip_to_window(boxes, window, min_area=0.5)
    assert keep.tolist() == [True, True, False, False]
    assert kept.tolist() == [[0., 0., 50., 100.], [10., 10., 30., 30.]]  # shifted by (-50, 0), clipped
    _, keep = clip_to_window(boxes, window, min_area=0.51)
    assert keep.tolist() == [False, True, False, False]
    _, keep = clip_to_window(boxes, window, min_area=0.09)
    assert keep.tolist() == [True, True, True, False]


def test_a_box_larger_than_the_tile_stays_when_it_fills_the_tile():
    big = torch.tensor([[0., 0., 1000., 1000.]])
    sampler = TileSampler(size=200, empty_prob=0.0, min_area=0.5)
    window = sampler.window(big, 1000, 1000, generator=torch.Generator().manual_seed(1))
    kept, keep = clip_to_window(big, window, min_area=0.5)
    assert keep.tolist() == [True] and kept.tolist() == [[0., 0., 200., 200.]]


def test_the_empty_share_is_the_configured_one_where_empty_places_exist():
    boxes = [[0, 0, 20, 20], [30, 5, 50, 25]]  # the top-left corner of a large image
    sampler = TileSampler(size=100, empty_prob=0.3, min_area=0.5)
    windows = _draws(sampler, boxes, 1000, 1000, 2000)
    tensor = torch.tensor(boxes, dtype=torch.float32)
    empty = sum(not clip_to_window(tensor, w, min_area=0.5)[1].any() for w in windows)
    assert abs(empty / 2000 - 0.3) < 0.03
    none_empty = _draws(TileSampler(size=100, empty_prob=0.0, min_area=0.5), boxes, 1000, 1000, 200)
    assert all(clip_to_window(tensor, w, min_area=0.5)[1].any() for w in none_empty)


def test_an_image_smaller_than_the_tile_is_one_tile_and_an_image_without_boxes_works():
    sampler = TileSampler(size=512, empty_prob=0.5, min_area=0.5)
    for w in _draws(sampler, [[5, 5, 40, 60]], 300, 200, 20):
        assert (w.top, w.left, w.height, w.width) == (0, 0, 300, 200)
    for w in _draws(sampler, [], 300, 1000, 50):  # no boxes: a random tile of the image
        assert (w.height, w.width) == (300, 512) and 0 <= w.left <= 1000 - 512 and w.top == 0


def test_the_transform_cuts_the_tile_first_and_resizes_it_as_an_image():
    cfg = apply_overrides(Config(), {"data.tile": 64, "data.scale": [256, 128], "data.flip_prob": 0.0})
    transform = build_transform(cfg, train=True)
    small = Image.fromarray(np.full((40, 50, 3), 90, np.uint8))  # smaller than the tile: one tile
    image, target = transform(small, {"boxes": np.array([[10, 10, 30, 20]], np.float32), "labels": np.array([3])})
    assert target["tile"] == (0, 0, 40, 50) and target["orig_size"] == (40, 50)
    # the tile is the image: resized x 128 / 40
    assert image.shape == (3, 128, 160) and target["boxes"].tolist() == [[32., 32., 96., 64.]]
    large = Image.fromarray(np.full((300, 400, 3), 90, np.uint8))
    torch.manual_seed(0)
    image, target = transform(large, {"boxes": np.array([[100, 100, 120, 110], [390, 0, 400, 300]], np.float32),
                                      "labels": np.array([1, 2])})
    top, left, h, w = target["tile"]
    assert (h, w) == (64, 64) and image.shape == (3, 128, 128)
    assert target["labels"].tolist() in ([1], [2], [])  # the other box lies outside or below the minimum area
    assert not build_transform(cfg, train=False).tile  # evaluation sees whole images


def test_bad_tile_settings_are_user_errors(capsys, tmp_path, shared_data):
    for kwargs in ({"size": 16, "empty_prob": 0.1, "min_area": 0.5}, {"size": 256, "empty_prob": 1.0, "min_area": 0.5},
                   {"size": 256, "empty_prob": 0.1, "min_area": 0.0}):
        with pytest.raises(UserError):
            TileSampler(**kwargs)
    data = _tiny_aquarium(tmp_path / "aq", shared_data)
    line = error_line(capsys, ["train", "fcos_r18_tricks_cpu", "--data", str(data), "--set", "data.tile=384",
                               "--run-dir", str(tmp_path / "run")])
    assert "data.crop_scale=null" in line  # the preset's scale-jitter crop would cut the tile again


def _tiny_aquarium(root: Path, shared_data: Path, n_train: int = 3) -> Path:
    """A dataset YAML over the first aquarium train images plus the one without boxes (train),
    and two val images."""
    src = json.loads((shared_data / "aquarium" / "train.json").read_text())
    train = src["images"][:n_train] + [im for im in src["images"] if im["id"] == EMPTY_AQUARIUM_IMAGE]
    val = src["images"][n_train:n_train + 2]
    root.mkdir(parents=True, exist_ok=True)
    for name, images in (("train", train), ("val", val)):
        ids = {im["id"] for im in images}
        ann = {**src, "images": images, "annotations": [a for a in src["annotations"] if a["image_id"] in ids]}
        (root / f"{name}.json").write_text(json.dumps(ann))
    images = shared_data / "aquarium" / "images"
    (root / "data.yaml").write_text(f"format: coco\nroot: .\ntrain: {{images: {images}, annotations: train.json}}\n"
                                    f"val: {{images: {images}, annotations: val.json}}\n")
    return root / "data.yaml"


def _tile_config(data: Path, seed: int = 0) -> Config:
    return apply_overrides(Config(), {"data.dataset": str(data), "data.tile": 256, "data.scale": [256, 256],
                                      "data.normalize": "pytorch", "train.seed": seed})


def test_same_seed_same_tiles_and_a_resumed_epoch_sees_the_same_batches(tmp_path, shared_data):
    data = _tiny_aquarium(tmp_path / "aq", shared_data)
    cfg = _tile_config(data)
    split = load_split(cfg, "train")
    assert build_tile_sampler(cfg) == TileSampler(size=256, empty_prob=0.1, min_area=0.5)  # the documented defaults
    dataset = DetectionDataset(split, transforms=build_transform(cfg, train=True))

    def epoch(sampler: EpochSampler) -> list[tuple]:
        targets = [(i, dataset[(i, s)][1]) for i, s in sampler]
        return [(i, t["tile"], t["boxes"].tolist()) for i, t in targets]

    first = EpochSampler(dataset, seed=0, batch_size=2)
    first.set_epoch(1)
    full = epoch(first)
    again = EpochSampler(dataset, seed=0, batch_size=2)
    again.set_epoch(1)
    assert epoch(again) == full  # same seed, same tiles and boxes
    resumed = EpochSampler(dataset, seed=0, batch_size=2)
    resumed.set_epoch(1)
    resumed.skip_batches(1)
    assert epoch(resumed) == full[2:]  # a mid-epoch resume continues with the same tiles
    other = EpochSampler(dataset, seed=1, batch_size=2)
    other.set_epoch(1)
    assert [t for _, t, _ in epoch(other)] != [t for _, t, _ in full]
    empty_index = next(i for i, r in enumerate(split.records) if r.image_id == EMPTY_AQUARIUM_IMAGE)
    image, target = dataset[(empty_index, 7)]
    assert image.shape == (3, 256, 256) and target["boxes"].shape == (0, 4) and target["orig_size"] == (256, 256)


@pytest.mark.slow
@pytest.mark.integration
def test_training_on_tiles_through_the_cli(tmp_path, shared_data, capsys):
    data = _tiny_aquarium(tmp_path / "aq", shared_data)
    run_dir = tmp_path / "run"
    cli(["train", "fcos_r18_tricks_cpu", "--data", str(data), "--run-dir", str(run_dir), *SMALL,
         "--set", "data.tile=160", "--set", "data.scale=[160,160]", "--set", "data.crop_scale=null",
         "--set", "train.max_iters=2", "--set", "data.val_split=none"])
    assert "train: 4 images" in capsys.readouterr().out
    assert (run_dir / "last.pt").is_file()
    saved = (run_dir / "config.yaml").read_text()
    assert "tile: 160" in saved and "tile_empty: 0.1" in saved and "tile_min_area: 0.5" in saved
