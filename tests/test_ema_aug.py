"""EMA of the weights (exact on hand-built parameters, end to end in training) and the
scale-jitter crop / photometric augmentation (exact on hand-built boxes)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from test_finetune import _tiny_bccd
from torch import nn

from fcosdet.cli.main import run
from fcosdet.engine.ema import ModelEMA, ema_decay


class _Hand(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.register_buffer("stat", torch.zeros(1))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def _set(m: _Hand, w: list[float], stat: float, count: int) -> None:
    with torch.no_grad():
        m.w.copy_(torch.tensor(w))
        m.stat.fill_(stat)
        m.count.fill_(count)


def test_ema_decay_warmup_formula():
    assert ema_decay(1, decay=0.999, warmup_iters=0) == 0.999
    assert ema_decay(1, decay=0.999, warmup_iters=200) == pytest.approx(0.999 * (1 - math.exp(-1 / 200)))
    assert ema_decay(10_000, decay=0.999, warmup_iters=200) == pytest.approx(0.999)


def test_ema_exact_without_warmup():
    m = _Hand()
    _set(m, [1.0, 2.0], 4.0, 1)
    ema = ModelEMA(m, decay=0.5, warmup_iters=0)
    ema.update(m)  # first update: a copy
    assert ema.module.w.tolist() == [1.0, 2.0]
    _set(m, [3.0, 6.0], 8.0, 2)
    ema.update(m)  # 0.5 * old + 0.5 * new
    assert ema.module.w.tolist() == [2.0, 4.0] and ema.module.stat.tolist() == [6.0]
    _set(m, [6.0, 0.0], 0.0, 3)
    ema.update(m)
    assert ema.module.w.tolist() == [4.0, 2.0] and ema.module.stat.tolist() == [3.0]
    assert ema.module.count.item() == 3  # integer buffers are copied, not averaged
    assert ema.num_updates == 3 and m.w.tolist() == [6.0, 0.0]  # the model itself is untouched


def test_ema_exact_with_warmup_and_reload():
    m = _Hand()
    values = [[1.0, -1.0], [2.0, 5.0], [-3.0, 0.5], [7.0, 7.0]]
    ema = ModelEMA(m, decay=0.9, warmup_iters=2)
    expected = None
    for t, w in enumerate(values):  # t earlier updates
        _set(m, w, 0.0, 0)
        ema.update(m)
        if expected is None:
            expected = torch.tensor(w, dtype=torch.float64)
        else:
            d = 0.9 * (1 - math.exp(-t / 2))
            expected = d * expected + (1 - d) * torch.tensor(w, dtype=torch.float64)
        torch.testing.assert_close(ema.module.w.double(), expected, atol=1e-6, rtol=0)
    again = ModelEMA(_Hand(), decay=0.9, warmup_iters=2)
    again.load(ema.module.state_dict(), ema.num_updates)
    _set(m, [0.0, 0.0], 0.0, 0)
    ema.update(m)
    again.update(m)
    assert torch.equal(again.module.w, ema.module.w)


@pytest.mark.slow
def test_train_with_ema_saves_averaged_weights_and_resumes(tmp_path, shared_data):
    data = _tiny_bccd(tmp_path, shared_data)
    common = ["--data", data, "--set", "data.scale=[192,128]", "--set", "data.multiscale_short=null",
              "--set", "data.batch_size=2", "--set", "data.workers=0", "--set", "train.ema=true",
              "--set", "train.ema_warmup_iters=0", "--set", "train.ema_decay=0.5", "--set", "train.epochs=2",
              "--set", "train.eval_interval=1"]
    assert run(["train", "demo", "--run-dir", str(tmp_path / "a"), *common, "--set", "train.max_iters=2"]) == 0
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert ckpt["ema_updates"] == 2
    key = "head.conv_reg.weight"
    assert not torch.equal(ckpt["model"][key], ckpt["raw_model"][key])
    # evaluating last.pt (its "model": the EMA) gives the metrics training measured on the EMA
    assert run(["eval", str(tmp_path / "a" / "last.pt"), "--out", str(tmp_path / "ev"), "--workers", "0"]) == 0
    trained = json.loads((tmp_path / "a" / "metrics.json").read_text())
    evaluated = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert evaluated["AP"] == pytest.approx(trained["AP"], abs=1e-9)
    assert run(["train", "demo", "--run-dir", str(tmp_path / "a"), "--resume", *common]) == 0
    resumed = torch.load(tmp_path / "a" / "last.pt", weights_only=True)
    assert resumed["ema_updates"] == resumed["iteration"] == 4
    # the average went on from the saved one: 2 more updates with decay 0.5 moved it
    assert not torch.equal(resumed["model"][key], ckpt["model"][key])


# ----------------------------------------------------------------------------- augmentation

from PIL import Image  # noqa: E402
from torchvision import tv_tensors  # noqa: E402

from fcosdet.data.transforms import DetectionTransform, crop, denormalize_image  # noqa: E402


def test_crop_shifts_clips_and_empties_boxes_exactly():
    pixels = tv_tensors.Image(torch.arange(3 * 20 * 30, dtype=torch.uint8).reshape(3, 20, 30))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[5.0, 4.0, 15.0, 10.0],    # inside
                                                   [0.0, 0.0, 8.0, 6.0],      # cut by the top-left corner
                                                   [25.0, 15.0, 29.0, 19.0],  # outside
                                                   [12.0, 2.0, 40.0, 30.0]]),  # covers the window's right part
                                     format="XYXY", canvas_size=(20, 30))
    out_pixels, out_boxes = crop(pixels, boxes, top=3, left=4, height=10, width=12)
    assert torch.equal(out_pixels, pixels[:, 3:13, 4:16])
    assert out_boxes.tolist() == [[1.0, 1.0, 11.0, 7.0], [0.0, 0.0, 4.0, 3.0], [12.0, 10.0, 12.0, 10.0],
                                  [8.0, 0.0, 12.0, 10.0]]
    target = DetectionTransform._finish_target(
        {"boxes": boxes, "labels": torch.tensor([0, 1, 2, 3]), "iscrowd": torch.tensor([0, 0, 1, 1])},
        out_boxes.as_subclass(torch.Tensor), orig_size=(20, 30), img_size=(10, 12))
    assert target["labels"].tolist() == [0, 1, 3] and target["iscrowd"].tolist() == [False, False, True]
    assert target["boxes"].tolist() == [[1.0, 1.0, 11.0, 7.0], [0.0, 0.0, 4.0, 3.0], [8.0, 0.0, 12.0, 10.0]]


def _white_boxes_image() -> tuple[Image.Image, torch.Tensor]:
    """A black 120 x 160 image with white rectangles exactly where its boxes are."""
    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [100.0, 70.0, 150.0, 110.0], [60.0, 4.0, 90.0, 30.0]])
    array = torch.zeros(120, 160, 3, dtype=torch.uint8)
    for x1, y1, x2, y2 in boxes.long().tolist():
        array[y1:y2, x1:x2] = 255
    return Image.fromarray(array.numpy()), boxes


@pytest.mark.parametrize("seed", range(6))
def test_scale_jitter_crop_moves_boxes_with_the_pixels(seed):
    """Every kept box covers the white region it came from, within a pixel of interpolation blur;
    a box whose region left the window is gone."""
    image, boxes = _white_boxes_image()
    t = DetectionTransform(train=True, scale=(160, 120), flip_prob=0.5, normalize="pytorch",
                           crop_scale=(1.5, 2.5))
    torch.manual_seed(seed)
    out, target = t(image, {"boxes": boxes.numpy(), "labels": torch.tensor([0, 1, 2]).numpy()})
    h, w = out.shape[-2:]
    assert (h, w) == tuple(target["img_size"]) and h <= 120 and w <= 160
    white = denormalize_image(out, "pytorch")[0] > 127  # (h, w)
    for box in target["boxes"]:
        x1, y1, x2, y2 = box.tolist()
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        inner = white[math.ceil(y1) + 1:math.floor(y2) - 1, math.ceil(x1) + 1:math.floor(x2) - 1]
        assert inner.numel() == 0 or inner.all()
        ring = torch.zeros_like(white)  # the pixels just outside the box (inside the image)
        ring[max(0, math.floor(y1) - 2):math.ceil(y2) + 2, max(0, math.floor(x1) - 2):math.ceil(x2) + 2] = True
        ring[max(0, math.floor(y1) - 1):math.ceil(y2) + 1, max(0, math.floor(x1) - 1):math.ceil(x2) + 1] = False
        others = torch.zeros_like(white)
        for other in target["boxes"]:
            a1, b1, a2, b2 = other.tolist()
            others[max(0, math.floor(b1) - 1):math.ceil(b2) + 1, max(0, math.floor(a1) - 1):math.ceil(a2) + 1] = True
        assert not (white & ring & ~others).any()  # no white right outside: the box covers its region
    assert white.sum() > 0 or len(target["boxes"]) == 0


def test_scale_jitter_below_one_scales_boxes_without_crop():
    image, boxes = _white_boxes_image()
    t = DetectionTransform(train=True, scale=(160, 120), flip_prob=0.0, crop_scale=(0.5, 0.5))
    out, target = t(image, {"boxes": boxes.numpy(), "labels": torch.tensor([0, 1, 2]).numpy()})
    assert tuple(out.shape[-2:]) == (60, 80)
    assert torch.equal(target["boxes"], boxes * 0.5)


def test_photometric_changes_pixels_not_boxes_and_eval_ignores_augmentation():
    image, boxes = _white_boxes_image()
    plain = DetectionTransform(train=True, scale=(160, 120), flip_prob=0.0)
    photo = DetectionTransform(train=True, scale=(160, 120), flip_prob=0.0, photometric_prob=1.0)
    target = {"boxes": boxes.numpy(), "labels": torch.tensor([0, 1, 2]).numpy()}
    torch.manual_seed(0)
    a, ta = plain(image, target)
    b, tb = photo(image, target)
    assert not torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"])
    evaluation = DetectionTransform(train=False, scale=(160, 120), crop_scale=(1.5, 2.0), photometric_prob=1.0)
    c, tc = evaluation(image, target)
    assert torch.equal(c, a) and torch.equal(tc["boxes"], boxes)
