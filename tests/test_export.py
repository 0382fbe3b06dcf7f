"""Export parity on real images: a short bccd run exported as safetensors weights, ONNX and a
torch.export program; each gives the PyTorch Detector's detections (same labels, boxes within
0.5 px, scores within 1e-4) on images of different sizes, one of them with no detection above
the threshold, through Detector.from_file and through `fcosdet predict` / `eval`. The ONNX file
and the program also run in a subprocess that never imports fcosdet."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fcosdet.cli.main import main
from fcosdet.cli.main import run as cli
from fcosdet.deploy.build import build_inference
from fcosdet.deploy.export import export_model, export_onnx, export_program, export_torch_program
from fcosdet.deploy.predictor import Detector
from fcosdet.io.model_file import ModelFile

TINY = ["--set", "model.depth=18", "--set", "model.fpn_channels=32", "--set", "model.feat_channels=32",
        "--set", "model.stacked_convs=1", "--set", "data.scale=[224,160]", "--set", "data.multiscale_short=null",
        "--set", "data.batch_size=2", "--set", "data.workers=0", "--set", "train.warmup_iters=2",
        "--set", "test.max_per_img=30", "--set", "train.epochs=1", "--set", "train.max_iters=3",
        "--set", "train.eval_interval=100"]
IMAGES = ["bccd/images/BloodImage_00000.jpg",  # 640 x 480
          "aquarium/images/IMG_2274_jpeg_jpg.rf.2f319e949748145fb22dcb52bb325a0c.jpg",  # 768 x 1024
          "coco128/images/000000000025.jpg",  # 640 x 426
          "coco128/images/000000000036.jpg",  # 481 x 640
          "coco128/images/000000000042.jpg"]  # 640 x 478

pytestmark = [pytest.mark.slow]


def _close(got, ref):
    """Two Results agree: same labels, boxes within 0.5 px, scores within 1e-4."""
    assert got.labels.tolist() == ref.labels.tolist()
    torch.testing.assert_close(got.boxes, ref.boxes, rtol=0, atol=0.5)
    torch.testing.assert_close(got.scores, ref.scores, rtol=0, atol=1e-4)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, shared_data):
    """Train 3 iterations, pick a score threshold that leaves one image without detections,
    export every format with it."""
    root = tmp_path_factory.mktemp("export")
    cli(["train", "fcos_r18_cpu", "--data", str(shared_data / "bccd"), "--run-dir", str(root / "run"), *TINY])
    ckpt = root / "run" / "last.pt"
    images = [shared_data / p for p in IMAGES]
    crop = Image.open(shared_data / "coco128/images/000000000009.jpg").convert("RGB").crop((40, 30, 340, 230))
    images.append(crop)  # a PIL image, 300 x 200
    best = [float(d.scores.max()) for d in Detector.from_file(ckpt, score_thr=0.0).predict_batch(images)]
    low, second = sorted(best)[:2]
    assert second - low > 1e-5, "two images share their best score: cannot place the threshold"
    thr = (low + second) / 2  # the image with the lowest best score has no detection above it
    parts = build_inference(ModelFile.load(ckpt), overrides={"test.score_thr": thr})
    program = export_program(parts)  # traced once for both graph formats (export_model traces each time)
    files = {"weights": export_model(parts, "weights", root / "model.safetensors"),
             "program": export_torch_program(parts, root / "model.pt2", program=program),
             "onnx": export_onnx(parts, root / "model.onnx", program=program)}
    reference = Detector.from_file(ckpt, score_thr=thr).predict_batch(images)
    counts = [len(d) for d in reference]
    assert counts.count(0) == 1 and min(c for c in counts if c) > 0
    return {"ckpt": ckpt, "images": images, "thr": thr, "files": files, "reference": reference, "root": root}


def test_weights_file_gives_the_checkpoints_detections(exported):
    files = exported["files"]
    assert files["weights"].stat().st_size < exported["ckpt"].stat().st_size  # no optimiser state
    det = Detector.from_file(files["weights"], score_thr=exported["thr"])
    assert det.class_names == ModelFile.load(exported["ckpt"]).class_names
    for got, ref in zip(det.predict_batch(exported["images"]), exported["reference"]):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(getattr(got, key), getattr(ref, key))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_onnx_detector_matches_pytorch_batched_and_one_by_one(exported, runtime):
    det = Detector.from_file(exported["files"]["onnx"], onnx_runtime=runtime)
    assert det.class_names == ModelFile.load(exported["ckpt"]).class_names
    for got, ref in zip(det.predict_batch(exported["images"]), exported["reference"]):
        _close(got, ref)
        assert got.class_names == ref.class_names
    single = Detector.from_file(exported["ckpt"], score_thr=exported["thr"])
    for image in exported["images"][:3]:  # batches of one: other padded sizes
        _close(det.predict(image), single.predict(image))


def test_onnx_score_threshold_can_rise_not_fall(exported):
    from fcosdet.errors import UserError
    with pytest.raises(UserError, match="export again with --set test.score_thr=0"):
        Detector.from_file(exported["files"]["onnx"], score_thr=exported["thr"] / 2)
    with pytest.raises(UserError, match="test.nms_iou"):
        Detector.from_file(exported["files"]["onnx"], test_overrides={"test.nms_iou": 0.3})
    scores = sorted({float(s) for d in exported["reference"] for s in d.scores})
    higher = (scores[-4] + scores[-3]) / 2  # between two distinct scores: keeps the top few
    got = Detector.from_file(exported["files"]["onnx"], score_thr=higher).predict_batch(exported["images"])
    ref = Detector.from_file(exported["ckpt"], score_thr=higher).predict_batch(exported["images"])
    assert 0 < sum(len(d) for d in got) < sum(len(d) for d in exported["reference"])
    for g, r in zip(got, ref):
        _close(g, r)


def test_program_file_gives_the_pytorch_detections_without_torch_export_load(exported, monkeypatch):
    """A .pt2 runs through Detector.from_file as the PyTorch model its weights copy builds: fcosdet
    never hands it to torch.export.load (which unpickles with weights_only=False)."""
    def refuse(*args, **kwargs):
        raise AssertionError("fcosdet called torch.export.load")
    monkeypatch.setattr(torch.export, "load", refuse)
    det = Detector.from_file(exported["files"]["program"])  # the threshold baked into the export
    assert det.class_names == ModelFile.load(exported["ckpt"]).class_names
    assert det.config.test.score_thr == pytest.approx(exported["thr"])
    for got, ref in zip(det.predict_batch(exported["images"]), exported["reference"]):
        _close(got, ref)
        assert got.class_names == ref.class_names
    single = Detector.from_file(exported["ckpt"], score_thr=exported["thr"])
    for image in exported["images"][:3]:
        _close(det.predict(image), single.predict(image))


def test_cli_export_predict_eval_take_every_format(exported, tmp_path, capsys):
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0 and capsys.readouterr().out.startswith("fcosdet ")
    ckpt, files, thr = exported["ckpt"], exported["files"], exported["thr"]
    out = tmp_path / "w.safetensors"
    assert cli(["export", str(ckpt), "--format", "weights", "--out", str(out)]) == 0
    with pytest.raises(SystemExit) as refused:
        main(["export", str(ckpt), "--format", "weights", "--out", str(out)])
    assert refused.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert cli(["export", str(ckpt), "--format", "weights", "--out", str(out), "--overwrite"]) == 0
    program = tmp_path / "m.pt2"
    assert cli(["export", str(ckpt), "--format", "program", "--out", str(program), "--set",
                f"test.score_thr={thr}"]) == 0
    assert f"fcosdet predict {program}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as alias:  # the old name: one warning line, then the usual checks
        main(["export", str(ckpt), "--format", "torchscript", "--out", str(program)])
    err = capsys.readouterr().err.splitlines()
    assert alias.value.code == 2 and len(err) == 2 and "--overwrite" in err[1]
    assert "writes a torch.export program (.pt2), not TorchScript" in err[0] and "--format program" in err[0]
    images = [str(p) for p in exported["images"][:3]]
    torch_det = Detector.from_file(ckpt, score_thr=thr)
    reference = torch_det.predict(images[:2]) + torch_det.predict(images[2:])  # the CLI's batches of 2
    models = [("pt", ckpt), ("onnx", files["onnx"]), ("openvino", files["onnx"]), ("weights", out),
              ("program", program)]
    for name, model in models:
        pred = tmp_path / f"pred_{name}"
        runtime = ["--onnx-runtime", "openvino"] if name == "openvino" else []
        threshold = [] if name in ("onnx", "openvino", "program") else ["--score-thr", str(thr)]  # baked in
        cli(["predict", str(model), *images, "--out", str(pred), "--batch-size", "2", "--device", "cpu",
             *threshold, *runtime])
        assert "predict: 2/2 (100 %)" in capsys.readouterr().err  # progress lines outside a terminal
        got = json.loads((pred / "predictions.json").read_text())
        want = [d for r in reference for d in r.to_coco()]
        assert [(d["file_name"], d["category_id"]) for d in got] == [(d["file_name"], d["category_id"])
                                                                      for d in want], name
        np.testing.assert_allclose([d["bbox"] for d in got], [d["bbox"] for d in want], atol=0.5, rtol=0)
        np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in want], atol=1e-4, rtol=0)
        assert len(got) > 0
    aps = {}
    for name, model in [("pt", ckpt), ("onnx", files["onnx"]), ("program", program)]:
        cli(["eval", str(model), "--out", str(tmp_path / f"eval_{name}"), "--workers", "0",
             "--set", f"test.score_thr={thr}"])
        assert "eval: " in capsys.readouterr().err
        aps[name] = json.loads((tmp_path / f"eval_{name}" / "metrics.json").read_text())["AP50"]
    assert aps["pt"] == pytest.approx(aps["onnx"], abs=1e-3) and aps["pt"] == pytest.approx(aps["program"], abs=1e-3)


# Runs with onnxruntime, numpy and PIL only: preprocessing from the file's metadata.
ONNX_ALONE = r'''
import json, sys
import numpy as np, onnxruntime as ort
from PIL import Image
model, inputs, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = {k[len("fcosdet."):]: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()
        if k.startswith("fcosdet.")}
norm, (long_side, short_side), div = meta["normalize"], meta["scale"], meta["size_divisor"]
results = {}
for i, item in enumerate(inputs):
    if isinstance(item, str):  # an image file: resize, normalise and pad as the metadata says
        image = Image.open(item).convert("RGB")
        w0, h0 = image.size
        f = min(short_side / min(h0, w0), long_side / max(h0, w0))
        h, w = int(h0 * f + 0.5), int(w0 * f + 0.5)
        x = np.asarray(image.resize((w, h), Image.BILINEAR), np.float32)
        order = [2, 1, 0] if norm["channel_order"] == "BGR" else [0, 1, 2]
        x = (x[..., order] * norm["pixel_scale"] - np.array(norm["mean"], np.float32)) / np.array(norm["std"], np.float32)
        batch = np.zeros((1, 3, -(-h // div) * div, -(-w // div) * div), np.float32)
        batch[0, :, :h, :w] = x.transpose(2, 0, 1)
        sizes = np.array([[h, w]], np.int64)
        results[f"input{i}"] = batch
    else:  # the batch fcosdet prepared, to compare the graph alone
        batch, sizes = np.load(item[0]), np.load(item[1])
    boxes, scores, labels, index = session.run(None, {"images": batch, "image_sizes": sizes})
    results.update({f"boxes{i}": boxes, f"scores{i}": scores, f"labels{i}": labels, f"index{i}": index})
np.savez(out, **results)
assert not any(m.startswith("fcosdet") for m in sys.modules), "fcosdet was imported"
'''


def _prepared_batch(det, images, root):
    prepared = [det._prepare(im) for im in images]
    from fcosdet.data.loader import pad_images
    batch = pad_images([x for x, _ in prepared]).numpy()
    sizes = np.array([t["img_size"] for _, t in prepared], np.int64)
    np.save(root / "batch.npy", batch)
    np.save(root / "sizes.npy", sizes)
    return prepared, [str(root / "batch.npy"), str(root / "sizes.npy")]


def test_onnx_runs_in_onnxruntime_without_fcosdet(exported):
    root, det = exported["root"], Detector.from_file(exported["ckpt"], score_thr=exported["thr"])
    prepared, batch_files = _prepared_batch(det, exported["images"], root)
    first = str(exported["images"][0])
    out = root / "alone.npz"
    subprocess.run([sys.executable, "-c", ONNX_ALONE, str(exported["files"]["onnx"]),
                    json.dumps([batch_files, first]), str(out)], check=True, cwd=root)
    got = np.load(out)
    # the graph alone, on fcosdet's batch: the reference before rescaling
    for b, ((_, target), ref) in enumerate(zip(prepared, exported["reference"])):
        mine = got["index0"] == b
        scale = np.array([target["orig_size"][1] / target["img_size"][1], target["orig_size"][0] / target["img_size"][0]] * 2)
        assert got["labels0"][mine].tolist() == ref.labels.tolist()
        np.testing.assert_allclose(got["scores0"][mine], ref.scores.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(got["boxes0"][mine] * scale, ref.boxes.numpy(), atol=0.5, rtol=0)
    # preprocessing from the metadata alone (PIL's resize) reproduces fcosdet's input closely
    np.testing.assert_allclose(got["input1"][0], np.load(batch_files[0])[0][:, :got["input1"].shape[2], :got["input1"].shape[3]],
                               atol=3.0, rtol=0)
    assert len(got["scores1"]) > 0


TORCH_ALONE = r'''
import sys
import numpy as np, torch, torchvision  # torchvision registers the NMS operator
program = torch.export.load(sys.argv[1])
batch, sizes = torch.from_numpy(np.load(sys.argv[2])), torch.from_numpy(np.load(sys.argv[3]))
boxes, scores, labels, index = program.module()(batch, sizes)
np.savez(sys.argv[4], boxes=boxes.numpy(), scores=scores.numpy(), labels=labels.numpy(), index=index.numpy())
assert not any(m.startswith("fcosdet") for m in sys.modules), "fcosdet was imported"
'''


def test_torch_program_runs_without_fcosdet(exported):
    root, det = exported["root"], Detector.from_file(exported["ckpt"], score_thr=exported["thr"])
    prepared, (batch_file, sizes_file) = _prepared_batch(det, exported["images"], root)
    out = root / "program.npz"
    subprocess.run([sys.executable, "-c", TORCH_ALONE, str(exported["files"]["program"]), batch_file,
                    sizes_file, str(out)], check=True, cwd=root)
    got = np.load(out)
    ref = det.backend(torch.from_numpy(np.load(batch_file)), torch.from_numpy(np.load(sizes_file)))
    assert got["labels"].tolist() == ref.labels.tolist() and got["index"].tolist() == ref.batch_index.tolist()
    np.testing.assert_allclose(got["boxes"], ref.boxes.numpy(), atol=1e-3, rtol=0)
    np.testing.assert_allclose(got["scores"], ref.scores.numpy(), atol=1e-5, rtol=0)
