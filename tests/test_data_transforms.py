"""Transforms, image loading, the Dataset, collate and the loader, on hand-built exact cases."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from fcosdet.data.images import image_size, load_image
from fcosdet.data.loader import (
    Batch,
    DetectionDataset,
    build_loader,
    collate,
    pad_images,
)
from fcosdet.data.records import DatasetSplit, ImageRecord
from fcosdet.data.transforms import (
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    build_transforms,
    denormalize_image,
    keep_ratio_size,
    torchvision_size,
)
from fcosdet.errors import UserError
from fcosdet.presets import load_config


def _target(boxes, labels) -> dict:
    return {"boxes": np.asarray(boxes, np.float32).reshape(-1, 4),  # (G, 4)
            "labels": np.asarray(labels, np.int64)}  # (G,)


# ----------------------------------------------------------------------------- resize


@pytest.mark.parametrize("hw, scale, expected", [
    ((480, 640), (1333, 800), (800, 1067)),  # short side decides
    ((100, 1000), (1333, 800), (133, 1333)),  # long side capped
    ((48, 64), (200, 96), (96, 128)),
    ((50, 200), (300, 100), (75, 300)),
])
def test_keep_ratio_size(hw, scale, expected):
    assert keep_ratio_size(*hw, short=min(scale), max_long=max(scale)) == expected


def test_resize_scales_boxes_and_records_sizes():
    transform = build_transforms(train=False, scale=(100, 72))
    image = Image.new("RGB", (64, 48), (10, 20, 30))
    out, target = transform(image, _target([[8, 6, 32, 24]], [3]))
    assert out.shape == (3, 72, 96) and out.dtype == torch.float32
    assert target["orig_size"] == (48, 64) and target["img_size"] == (72, 96)
    torch.testing.assert_close(target["boxes"], torch.tensor([[12.0, 9.0, 48.0, 36.0]]))
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [3]
    # mapping back to the original image uses (W0 / W, H0 / H)
    back = target["boxes"] * torch.tensor([64 / 96, 48 / 72, 64 / 96, 48 / 72])
    torch.testing.assert_close(back, torch.tensor([[8.0, 6.0, 32.0, 24.0]]))


def test_long_side_limit_applies_per_axis_factors():
    transform = build_transforms(train=False, scale=(300, 100))
    _, target = transform(Image.new("RGB", (200, 50)), _target([[0, 0, 200, 50]], [0]))
    assert target["img_size"] == (75, 300)
    torch.testing.assert_close(target["boxes"], torch.tensor([[0.0, 0.0, 300.0, 75.0]]))


def test_multiscale_picks_short_sides_from_the_list():
    transform = build_transforms(train=True, scale=(1000, 48), multiscale_short=[32, 40], flip_prob=0.0)
    torch.manual_seed(0)
    shorts = {transform(Image.new("RGB", (64, 48)), _target([], []))[1]["img_size"][0] for _ in range(20)}
    assert shorts == {32, 40}
    # evaluation ignores the multi-scale list
    evaluation = build_transforms(train=False, scale=(1000, 48), multiscale_short=[32, 40])
    assert evaluation(Image.new("RGB", (64, 48)), _target([], []))[1]["img_size"] == (48, 64)


def _noise_image(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("wh, scale", [((640, 480), (1333, 800)), ((481, 640), (512, 320)),
                                       ((500, 381), (512, 320)), ((612, 612), (512, 320)), ((200, 37), (300, 100))])
def test_torchvision_resize_equals_torchvisions_detection_transform(wh, scale):
    """resize=torchvision: pixels, size and boxes as torchvision's GeneralizedRCNNTransform gives
    them from the same image as float [0, 1] (eval mode), the pixels bit for bit."""
    image = _noise_image(*wh, seed=wh[0])
    boxes = [[10.5, 7.25, 120.0, 30.0], [0.0, 0.0, wh[0], wh[1]]]
    transform = build_transforms(train=False, scale=scale, normalize="pytorch", resize="torchvision")
    out, target = transform(image, _target(boxes, [0, 1]))
    reference = GeneralizedRCNNTransform(min(scale), max(scale), IMAGENET_MEAN_RGB, IMAGENET_STD_RGB).eval()
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255  # (3, H0, W0)
    batch, theirs = reference([pixels], [{"boxes": torch.tensor(boxes)}])
    height, width = batch.image_sizes[0]
    assert target["img_size"] == (height, width) == transform.resized_size(wh[1], wh[0])
    assert torch.equal(out, batch.tensors[0, :, :height, :width])
    torch.testing.assert_close(target["boxes"], theirs[0]["boxes"], atol=1e-4, rtol=0)


def test_torchvision_sizes_round_down_where_fcosdet_rounds():
    assert torchvision_size(480, 640, short=800, max_long=1333) == (800, 1066)  # 640 * 800 / 480 = 1066.7
    assert keep_ratio_size(480, 640, short=800, max_long=1333) == (800, 1067)
    default = build_transforms(train=False, scale=(1333, 800))
    assert default.resize == "antialias_uint8" and default.resized_size(480, 640) == (800, 1067)


def test_torchvision_resize_trains_with_flip_crop_and_photometric():
    image = _noise_image(64, 48, seed=1)
    boxes = _target([[8, 6, 32, 24], [0, 0, 64, 48]], [1, 2])
    plain = build_transforms(train=False, scale=(80, 60), normalize="pytorch", resize="torchvision")
    flip = build_transforms(train=True, scale=(80, 60), flip_prob=1.0, normalize="pytorch", resize="torchvision")
    (out, target), (ref, ref_target) = flip(image, boxes), plain(image, boxes)
    assert out.shape == (3, 60, 80) and torch.equal(out, ref.flip(-1))  # flip after the float resize
    torch.testing.assert_close(target["boxes"], torch.tensor([[40.0, 7.5, 70.0, 30.0], [0.0, 0.0, 80.0, 60.0]]))
    assert ref_target["boxes"][0].tolist() == [10.0, 7.5, 40.0, 30.0]
    jitter = build_transforms(train=True, scale=(80, 60), flip_prob=0.5, normalize="pytorch", resize="torchvision",
                              crop_scale=(1.5, 2.0), photometric_prob=1.0)
    torch.manual_seed(0)
    for _ in range(5):
        out, target = jitter(image, boxes)
        assert out.shape == (3, 60, 80) and out.dtype == torch.float32  # cut back to the plain size
        assert len(target["boxes"]) >= 1 and target["boxes"].min() >= 0
        assert (target["boxes"][:, 2] <= 80).all() and (target["boxes"][:, 3] <= 60).all()


# ----------------------------------------------------------------------------- flip, normalise


def test_flip_moves_boxes_and_pixels():
    pixels = np.zeros((48, 64, 3), np.uint8)  # (H, W, 3)
    pixels[:, :16] = (255, 0, 0)  # red stripe on the left quarter
    image = Image.fromarray(pixels)
    flip = build_transforms(train=True, scale=(64, 48), flip_prob=1.0, normalize="pytorch")
    out, target = flip(image, _target([[8, 6, 32, 24], [0, 0, 64, 48]], [1, 2]))
    expected = torch.tensor([[32.0, 6.0, 56.0, 24.0], [0.0, 0.0, 64.0, 48.0]])  # x1' = W - x2
    torch.testing.assert_close(target["boxes"], expected)
    red = (1.0 - IMAGENET_MEAN_RGB[0]) / IMAGENET_STD_RGB[0]
    assert out[0, :, -16:].allclose(torch.tensor(red)) and out[0, :, :48].max() < 0
    keep = build_transforms(train=True, scale=(64, 48), flip_prob=0.0)
    assert keep(image, _target([[8, 6, 32, 24]], [1]))[1]["boxes"].tolist() == [[8, 6, 32, 24]]


def test_caffe_normalisation_is_bgr_minus_mean():
    transform = build_transforms(train=False, scale=(8, 8))
    out, _ = transform(Image.new("RGB", (8, 8), (255, 0, 0)), _target([], []))
    expected = [0 - CAFFE_MEAN_BGR[0], 0 - CAFFE_MEAN_BGR[1], 255 - CAFFE_MEAN_BGR[2]]  # B, G, R
    torch.testing.assert_close(out[:, 0, 0], torch.tensor(expected, dtype=torch.float32))
    assert out.std(dim=(1, 2)).max() == 0
    restored = denormalize_image(out, "caffe")
    assert restored[:, 0, 0].tolist() == [255, 0, 0]


def test_pytorch_normalisation_round_trips():
    transform = build_transforms(train=False, scale=(8, 8), normalize="pytorch")
    out, _ = transform(Image.new("RGB", (8, 8), (10, 128, 250)), _target([], []))
    assert denormalize_image(out, "pytorch")[:, 3, 3].tolist() == [10, 128, 250]


def test_degenerate_boxes_are_dropped_with_their_labels():
    transform = build_transforms(train=False, scale=(100, 24))  # 64x48 -> 32x24
    boxes = [[10, 10, 10, 20], [1, 1, 20, 20], [5, 5, 5.0015, 9], [0, 0, 64, 48]]
    target = {**_target(boxes, [0, 1, 2, 3]), "iscrowd": np.zeros(4, bool)}
    _, out = transform(Image.new("RGB", (64, 48)), target)
    assert out["labels"].tolist() == [1, 3] and out["iscrowd"].tolist() == [False, False]
    assert out["boxes"].shape == (2, 4)


def test_bad_transform_settings_raise_user_error():
    with pytest.raises(UserError, match="normalisation"):
        build_transforms(train=True, normalize="tf")
    with pytest.raises(UserError, match="scale"):
        build_transforms(train=True, scale=(0, 800))
    with pytest.raises(UserError, match="resize"):
        build_transforms(train=False, resize="bicubic")
    with pytest.raises(UserError, match="antialias_uint8") as err:
        load_config("demo", ["data.resize=bicubic"])
    assert "\n" not in str(err.value)
    assert load_config("demo", ["data.resize=torchvision"]).data.resize == "torchvision"


# ----------------------------------------------------------------------------- loading modes


def test_grayscale_rgba_palette_and_16bit_load_as_rgb(tmp_path: Path):
    Image.new("L", (30, 20), 77).save(tmp_path / "gray.png")
    rgba = Image.new("RGBA", (30, 20), (200, 100, 50, 255))
    rgba.putpixel((0, 0), (255, 255, 255, 0))  # fully transparent: black after compositing
    rgba.save(tmp_path / "rgba.png")
    palette = Image.new("P", (30, 20), 1)
    palette.putpalette([0, 0, 0, 12, 34, 56] + [0] * 762)
    palette.save(tmp_path / "pal.png")
    deep = np.full((20, 30), 65535, np.uint16)  # (H, W)
    deep[0, 0] = 32896  # 32896 / 257 = 128
    Image.fromarray(deep).save(tmp_path / "deep.png")
    expected = {"gray.png": (77, 77, 77), "rgba.png": (200, 100, 50), "pal.png": (12, 34, 56),
                "deep.png": (255, 255, 255)}
    for name, color in expected.items():
        image = load_image(tmp_path / name)
        assert image.mode == "RGB" and image.size == (30, 20), name
        assert image.getpixel((5, 5)) == color, name
    assert load_image(tmp_path / "rgba.png").getpixel((0, 0)) == (0, 0, 0)
    assert load_image(tmp_path / "deep.png").getpixel((0, 0)) == (128, 128, 128)
    assert Image.open(tmp_path / "deep.png").mode in ("I;16", "I")


def test_exif_rotated_image_loads_with_displayed_size(tmp_path: Path):
    stored = np.zeros((20, 40, 3), np.uint8)  # (H, W, 3) stored 40 wide, 20 high
    stored[:, :20] = (255, 255, 255)  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90 degrees clockwise: 20 wide, 40 high
    Image.fromarray(stored).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    image = load_image(tmp_path / "rot.jpg")
    assert image.size == (20, 40) == image_size(tmp_path / "rot.jpg")
    assert image.getpixel((10, 5))[0] > 200 and image.getpixel((10, 35))[0] < 50  # white on top
    _, target = build_transforms(train=False, scale=(80, 40))(image, _target([], []))
    assert target["orig_size"] == (40, 20)


def test_missing_and_corrupt_images_raise_naming_the_file(tmp_path: Path):
    with pytest.raises(UserError, match="nothere.jpg"):
        load_image(tmp_path / "nothere.jpg")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG junk")
    with pytest.raises(UserError, match="junk.png"):
        load_image(tmp_path / "junk.png")


# ----------------------------------------------------------------------------- collate, dataset, loader


def test_padding_to_multiple_of_32_with_zeros():
    first, second = torch.ones(3, 50, 70), torch.full((3, 64, 33), 2.0)
    batch = collate([(first, {"image_id": 1}), (second, {"image_id": 2})])
    assert isinstance(batch, Batch) and batch.images.shape == (2, 3, 64, 96)
    assert batch.images[0, :, :50, :70].eq(1).all() and batch.images[0, :, 50:].eq(0).all()
    assert batch.images[0, :, :, 70:].eq(0).all() and batch.images[1, :, :, 33:].eq(0).all()
    assert [t["image_id"] for t in batch.targets] == [1, 2]
    assert pad_images([torch.ones(3, 32, 64)]).shape == (1, 3, 32, 64)
    assert pad_images([torch.ones(3, 33, 64)], size_divisor=1).shape == (1, 3, 33, 64)


def _split(tmp_path: Path, count: int = 6) -> DatasetSplit:
    records = []
    for i in range(count):
        path = tmp_path / f"img{i}.jpg"
        Image.new("RGB", (64, 48), (i * 40, 0, 0)).save(path)
        records.append(ImageRecord(path=str(path), width=64, height=48, image_id=i + 10,
                                   boxes=np.array([[1, 2, 30, 40], [5, 5, 20, 20]], np.float32),  # (G, 4)
                                   labels=np.array([i % 2, 1], np.int64), iscrowd=np.array([False, True])))
    return DatasetSplit(records=records, class_names=["a", "b"])


def test_dataset_item_contents(tmp_path: Path):
    dataset = DetectionDataset(_split(tmp_path), transforms=build_transforms(train=False, scale=(128, 96)))
    assert len(dataset) == 6 and dataset.num_classes == 2
    image, target = dataset[1]
    assert image.shape == (3, 96, 128) and image.dtype == torch.float32
    assert target["boxes"].dtype == torch.float32 and target["boxes"].tolist() == [[2, 4, 60, 80]]
    assert target["labels"].tolist() == [1]  # the crowd box is gone
    assert target["image_id"] == 11 and target["path"].endswith("img1.jpg")
    assert target["orig_size"] == (48, 64) and target["img_size"] == (96, 128)


def test_dataset_rejects_image_whose_size_changed(tmp_path: Path):
    split = _split(tmp_path, 1)
    split.records[0].width = 65
    dataset = DetectionDataset(split, transforms=build_transforms(train=False))
    with pytest.raises(UserError, match="img0.jpg"):
        dataset[0]


def _epoch(loader) -> list[tuple[int, float]]:
    return [(t["image_id"], float(t["boxes"][0, 0])) for batch in loader for t in batch.targets]


def test_loader_is_reproducible(tmp_path: Path):
    dataset = DetectionDataset(_split(tmp_path), transforms=build_transforms(train=True, scale=(64, 48)))
    first = build_loader(dataset, batch_size=2, shuffle=True, num_workers=1, seed=3)
    second = build_loader(dataset, batch_size=2, shuffle=True, num_workers=1, seed=3)
    epoch = _epoch(first)
    assert epoch == _epoch(second) and len(epoch) == 6
    assert {x for _, x in epoch} == {1.0, 34.0}  # flipped and not flipped both happen
    other = _epoch(build_loader(dataset, batch_size=2, shuffle=True, num_workers=0, seed=4))
    assert [i for i, _ in other] != [i for i, _ in epoch]  # another seed, another order


def _error_message(loader) -> str:
    """The UserError message of the first batch (no ExceptionInfo kept: it would hold the
    workers alive in a reference cycle)."""
    try:
        next(iter(loader))
    except UserError as exc:
        return str(exc)
    raise AssertionError("expected a UserError")


def test_loader_reports_worker_errors_as_one_sentence(tmp_path: Path):
    split = _split(tmp_path)
    Path(split.records[0].path).write_bytes(b"garbage")
    dataset = DetectionDataset(split, transforms=build_transforms(train=False, scale=(64, 48)))
    message = _error_message(build_loader(dataset, batch_size=6, shuffle=False, num_workers=1))
    assert "img0.jpg" in message and "Traceback" not in message and "\n" not in message
