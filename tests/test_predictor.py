"""Detector: every input type gives the same detections; the fast path (BatchNorm folded,
channels_last) equals the plain fp32 path within float rounding; weights files; bad input."""
import numpy as np
import pytest
import torch
from PIL import Image

from fcosdet.deploy.build import build_inference
from fcosdet.deploy.export import export_model
from fcosdet.deploy.fastpath import fast_inference_model, fold_batchnorm
from fcosdet.deploy.predictor import Detector
from fcosdet.errors import UserError
from fcosdet.io.model_file import ModelFile
from fcosdet.model.build import build_model
from fcosdet.presets import preset

BCCD_IMAGE = "bccd/images/BloodImage_00000.jpg"


def _state(norm: str = "frozen_bn", seed: int = 0) -> ModelFile:
    """A small random FCOS whose BatchNorm statistics are not the identity (so folding matters)
    and whose classification logits spread (so scores do not tie)."""
    cfg = preset("fcos_r18_cpu")
    cfg.model.num_classes, cfg.model.backbone_norm = 3, norm
    cfg.model.fpn_channels = cfg.model.feat_channels = 32
    cfg.model.stacked_convs, cfg.data.scale = 1, (256, 192)
    cfg.test.score_thr, cfg.test.max_per_img = 0.05, 40
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    with torch.no_grad():
        for m in model.backbone.modules():
            if hasattr(m, "running_var"):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.head.conv_cls.weight.mul_(300.0)
        model.head.conv_cls.bias.fill_(-1.0)
    return ModelFile(model=model.state_dict(), config=cfg.to_dict(), class_names=["a", "b", "c"])


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pred") / "model.safetensors"
    return export_model(build_inference(_state()), "weights", path)


def test_every_input_type_gives_the_same_detections(weights_file, shared_data):
    det = Detector.from_file(weights_file)
    path = shared_data / BCCD_IMAGE
    ref = det.predict(path)
    assert 0 < len(ref.scores) <= 40 and ref.boxes.shape == (len(ref.scores), 4)
    pil = Image.open(path)
    pixels = np.array(pil.convert("RGB"))  # (H, W, 3) uint8
    inputs = [str(path), pil, pixels, pixels.astype(np.float32) / 255.0, pixels / 255.0,
              torch.from_numpy(pixels).permute(2, 0, 1), torch.from_numpy(pixels).permute(2, 0, 1).float() / 255]
    for got in det.predict(inputs):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(getattr(got, key), getattr(ref, key)), key
        assert got.class_names == ref.class_names


@pytest.mark.parametrize("bad, message", [
    (np.full((8, 8, 3), 2.0, np.float32), "0..1"),
    (np.zeros((8, 8), np.uint8), "(H, W, 3)"),
    (torch.zeros(8, 8, 3), "(3, H, W)"),
    (np.zeros((8, 8, 3), np.int32), "uint8"),
    (3, "not int"),
])
def test_bad_image_inputs_raise_one_clear_error(weights_file, bad, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Detector.from_file(weights_file).predict(bad)


def test_fold_batchnorm_counts_and_keeps_outputs():
    parts = build_inference(_state())
    assert fold_batchnorm(fast_inference_model(parts.model, channels_last=False).backbone) == 0  # done
    plain = parts.model.eval()
    import copy
    folded = copy.deepcopy(plain)
    assert fold_batchnorm(folded.backbone) == 20  # ResNet-18: stem + 2 x 8 blocks + 3 downsamples
    x = torch.randn(2, 3, 160, 224)
    with torch.no_grad():
        for a, b in zip(plain(x), folded(x)):
            for p, q in zip(a, b):
                # float rounding: relative to the tensor's scale (the spread logits reach ~100)
                torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5 * float(p.abs().max()))


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "gn"])
def test_fast_path_equals_plain_fp32(tmp_path, shared_data, norm):
    path = export_model(build_inference(_state(norm, seed=1)), "weights", tmp_path / "m.safetensors")
    images = [shared_data / BCCD_IMAGE, shared_data / "coco128/images/000000000036.jpg"]
    plain = Detector.from_file(path, fast=False).predict(images)
    fast = Detector.from_file(path).predict(images)
    assert Detector.from_file(path).backend.channels_last
    for p, f in zip(plain, fast):
        assert len(p.scores) > 5
        assert f.labels.tolist() == p.labels.tolist()
        torch.testing.assert_close(f.boxes, p.boxes, rtol=0, atol=1e-2)
        torch.testing.assert_close(f.scores, p.scores, rtol=0, atol=1e-5)


def test_bf16_is_opt_in_and_close(weights_file, shared_data):
    fp32 = Detector.from_file(weights_file)
    bf16 = Detector.from_file(weights_file, precision="bf16")
    assert fp32.backend.precision == "fp32"
    a, b = fp32.predict(shared_data / BCCD_IMAGE), bf16.predict(shared_data / BCCD_IMAGE)
    assert len(b.scores) > 0 and abs(float(a.scores[0]) - float(b.scores[0])) < 0.1
    with pytest.raises(UserError, match="precision"):
        Detector.from_file(weights_file, precision="fp8")
