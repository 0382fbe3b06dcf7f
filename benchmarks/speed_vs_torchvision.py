"""Inference and training speed: fcosdet vs torchvision's FCOS, in one process, one JSON object.

Every figure is the median of --repeats runs after one warm-up run; the contenders of a section
alternate run by run, so a change in the machine's speed hits them alike (compare ratios, not
absolute times: this project's CPU swings 2x). Random weights on both sides.

1. predict_r50: the whole predict path from a decoded RGB photo (uint8 H x W x 3: resize,
   normalise, network, decoding, NMS, rescale), batch 1, an 800 x 1216 photo: torchvision
   fcos_resnet50_fpn (91 classes) vs fcosdet fcos_r50_1x (80 classes) plain fp32, fast fp32
   (BatchNorm folded, channels_last), bf16 autocast, onnxruntime and OpenVINO (the exported .onnx),
   and int8: the OpenVINO IR quantised by NNCF and the ONNX graph quantised by onnxruntime (QDQ),
   both calibrated on --int8-calib-images coco128 train images (random weights: a speed figure only;
   `--no-int8` leaves them out). `--openvino-profile` adds OpenVINO's per-layer counters (PERF_COUNT)
   of the fp32 and int8 IR: time per layer type and kernel (which layers run int8, reorders).
2. predict_cpu: the same at the CPU preset's size: ResNet-18 GroupNorm FPN, width 128, short
   side 320 / long side <= 448, vs torchvision built the same way (benchmarks/bccd_vs_torchvision).
3. train_r50: one training step (forward, loss, backward, SGD) at batch 2, 800 x 1216; fcosdet as
   `fcosdet train` runs it (build.training_model: channels_last on the CPU; fused SGD), torchvision as fcos_resnet50_fpn builds it with random weights (all
   stages trainable, BatchNorm in training mode).
4. flops: the fcos_r50_1x network's forward GFLOP (torch.utils.flop_counter) over its time
   (plain and fast), next to this machine's rate on one large 3x3 convolution.

    python benchmarks/speed_vs_torchvision.py [--repeats 5] [--device cpu|cuda] [--quick] [--out FILE]
        [--sections predict_cpu flops predict_r50 train_r50] [--contenders torchvision fcosdet_openvino ...]
        [--no-int8] [--int8-calib-images 8] [--openvino-profile]

--quick: a smoke test (128 x 192 images, 1 repeat, no ONNX export): to check the script runs. On a GPU
(--device cuda) the figures are also given as images/s, "bf16" is AMP and ONNX is skipped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
QUICK_HW = (128, 192)
SECTIONS = ["predict_cpu", "flops", "predict_r50", "train_r50"]
PHOTO = ROOT.parent / "shared" / "data" / "coco128" / "images" / "000000000009.jpg"
CALIBRATION = ROOT.parent / "shared" / "data" / "coco128"  # int8 calibration images (its train split)


def photo(height: int, width: int) -> np.ndarray:
    """A real photo (coco128) resized to height x width, uint8 (H, W, 3); noise without the data."""
    from PIL import Image
    if PHOTO.is_file():
        return np.array(Image.open(PHOTO).convert("RGB").resize((width, height), Image.BILINEAR))
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def race(contenders: dict[str, Callable[[], Any]], *, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each contender: one warm-up each, then `repeats` rounds, alternating."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for name, fn in contenders.items():
        fn()
    for _ in range(repeats):
        for name, fn in contenders.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def fcosdet_weights(preset_name: str, folder: Path, *, scale: tuple[int, int] | None = None,
                    width: int | None = None, num_classes: int = 80) -> Path:
    """A random fcosdet model of a preset as an exported .safetensors weights file."""
    from fcosdet.deploy.build import build_inference
    from fcosdet.deploy.export import export_model
    from fcosdet.io.model_file import ModelFile
    from fcosdet.model.build import build_model
    from fcosdet.presets import preset
    cfg = preset(preset_name)
    cfg.model.num_classes = num_classes
    if scale is not None:
        cfg.data.scale = scale
    if width is not None:
        cfg.model.fpn_channels = cfg.model.feat_channels = width
    model_file = ModelFile(model=build_model(cfg.model).state_dict(), config=cfg.to_dict(),
                           class_names=[f"class{i}" for i in range(num_classes)])
    return export_model(build_inference(model_file), "weights", folder / f"{preset_name}.safetensors", overwrite=True)


def torchvision_predict(model: nn.Module, image: np.ndarray, device: torch.device) -> Callable[[], Any]:
    from torchvision.transforms.functional import to_tensor

    @torch.inference_mode()
    def run() -> Any:
        out = model([to_tensor(image).to(device)])[0]  # (3, H, W) 0..1; the model resizes and normalises
        return {k: v.cpu() for k, v in out.items()}
    return run


def predict_section(args, folder: Path, device: torch.device, *, r50: bool) -> dict[str, Any]:
    from bccd_vs_torchvision import _torchvision_model
    from torchvision.models.detection import fcos_resnet50_fpn

    from fcosdet.deploy.predictor import Detector
    if r50:
        size = QUICK_HW if args.quick else (800, 1216)
        weights = fcosdet_weights("fcos_r50_1x", folder, scale=(max(size), min(size)) if args.quick else None)
        tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
        if args.quick:
            tv.transform.min_size, tv.transform.max_size = (min(size),), max(size)
    else:
        size = (480, 640)  # a 640 x 480 photo, resized to short side 320 / long side <= 448 by both
        weights = fcosdet_weights("fcos_r18_cpu", folder, scale=(448, 320), width=128)
        tv = _torchvision_model(80, 128)
    image = photo(*size)
    tv = tv.eval().to(device)
    dev = str(device)
    contenders = {"torchvision": torchvision_predict(tv, image, device)}
    for name, kw in [("fcosdet_plain_fp32", dict(fast=False)), ("fcosdet_fast_fp32", dict(fast=True)),
                     ("fcosdet_bf16", dict(fast=True, precision="bf16"))]:
        det = Detector.from_file(weights, device=dev, **kw)
        contenders[name] = (lambda d: lambda: d.predict(image))(det)
    if not args.quick and device.type == "cpu":
        from fcosdet.deploy.build import build_inference
        from fcosdet.deploy.export import export_model
        from fcosdet.io.model_file import ModelFile
        start = time.perf_counter()
        onnx_file = export_model(build_inference(ModelFile.load(weights)), "onnx", weights.with_suffix(".onnx"),
                                 overwrite=True)
        export_seconds = time.perf_counter() - start
        for runtime in ("onnxruntime", "openvino"):  # the same exported file
            det = Detector.from_file(onnx_file, onnx_runtime=runtime)
            contenders[f"fcosdet_{runtime}"] = (lambda d: lambda: d.predict(image))(det)
        if args.int8:
            int8_files, int8_info = int8_exports(weights, onnx_file, calib_images=args.int8_calib_images)
            for name, path in int8_files.items():
                contenders[name] = (lambda d: lambda: d.predict(image))(Detector.from_file(path))
    contenders = {k: v for k, v in contenders.items() if not args.contenders or k in args.contenders}
    seconds = race(contenders, repeats=args.repeats, device=device)
    result: dict[str, Any] = {"image_hw": list(size), "seconds": seconds,
                              "speedup_vs_torchvision": {k: seconds["torchvision"] / v for k, v in seconds.items()
                                                         if k != "torchvision"}}
    if not args.quick and device.type == "cpu":
        result["onnx_export_seconds"] = export_seconds
        if args.int8:
            result["int8"] = int8_info
            if "fcosdet_openvino" in seconds and "fcosdet_openvino_int8" in seconds:
                result["openvino_int8_vs_fp32"] = seconds["fcosdet_openvino"] / seconds["fcosdet_openvino_int8"]
        if args.openvino_profile and args.int8:
            result["openvino_profile"] = {name: openvino_profile(path, image, repeats=3) for name, path in
                                          (("fp32", onnx_file), ("int8", int8_files["fcosdet_openvino_int8"]))}
    if device.type == "cuda":
        result["images_per_s"] = {k: 1.0 / v for k, v in seconds.items()}
    return result


def int8_exports(weights: Path, onnx_file: Path, *, calib_images: int) -> tuple[dict[str, Path], dict[str, Any]]:
    """The fp32 graph quantised by NNCF (an OpenVINO IR) and by onnxruntime (QDQ ONNX), calibrated on
    `calib_images` coco128 train images: {contender: file}, {seconds and the files' int8 records}."""
    from fcosdet.deploy.build import build_inference
    from fcosdet.deploy.export import Int8Settings, export_model
    from fcosdet.io.model_file import ModelFile
    parts = build_inference(ModelFile.load(weights))
    settings = Int8Settings(dataset=str(CALIBRATION), calib_images=calib_images)
    files, info = {}, {"calib_images": calib_images, "calibration": str(CALIBRATION)}
    for name, fmt, suffix in (("fcosdet_openvino_int8", "openvino", ".xml"),
                              ("fcosdet_onnxruntime_int8", "onnx", ".onnx")):
        start = time.perf_counter()
        files[name] = export_model(parts, fmt, weights.with_name(f"{weights.stem}_int8{suffix}"), overwrite=True,
                                   int8=settings, onnx_file=onnx_file)
        info[f"{name}_export_seconds"] = time.perf_counter() - start
    return files, info


def openvino_profile(path: Path, image: np.ndarray, *, repeats: int) -> dict[str, Any]:
    """OpenVINO's per-layer counters (PERF_COUNT) of one graph file on `image`, averaged over `repeats`
    runs: seconds per layer type and per kernel ("..._I8" = int8, "..._FP32" = float), the share of
    the convolution time that ran int8, and the reorders (layout / precision conversions)."""
    import openvino as ov

    from fcosdet.data.loader import pad_images
    from fcosdet.deploy.backends import OPENVINO_CONFIG
    from fcosdet.deploy.predictor import Detector
    x, target = Detector.from_file(path, onnx_runtime="openvino")._prepare(image)  # (3, h, w)
    feeds = {"images": pad_images([x]).numpy(), "image_sizes": np.asarray([target["img_size"]], np.int64)}
    compiled = ov.Core().compile_model(str(path), "CPU", {**OPENVINO_CONFIG, "PERF_COUNT": "YES"})
    request = compiled.create_infer_request()
    by_type: dict[str, float] = {}
    by_kernel: dict[str, float] = {}
    for _ in range(repeats):
        request.infer(feeds)
        for layer in request.profiling_info:
            seconds = layer.real_time.total_seconds() / repeats
            by_type[layer.node_type] = by_type.get(layer.node_type, 0.0) + seconds
            key = f"{layer.node_type}:{layer.exec_type}"
            by_kernel[key] = by_kernel.get(key, 0.0) + seconds
    conv = {k: v for k, v in by_kernel.items() if k.startswith("Convolution:")}
    return {"total_layer_seconds": sum(by_type.values()),
            "seconds_by_type": dict(sorted(by_type.items(), key=lambda kv: -kv[1])[:10]),
            "top_kernels_seconds": dict(sorted(by_kernel.items(), key=lambda kv: -kv[1])[:12]),
            "convolution_int8_share": sum(v for k, v in conv.items() if "I8" in k) / max(sum(conv.values()), 1e-12),
            "reorder_seconds": by_type.get("Reorder", 0.0)}


def train_section(args, device: torch.device) -> dict[str, Any]:
    from torchvision.models.detection import fcos_resnet50_fpn

    from fcosdet.engine.optim import build_optimizer
    from fcosdet.model.build import build_criterion, build_model, training_model, uses_channels_last
    from fcosdet.presets import preset
    height, width = QUICK_HW if args.quick else (800, 1216)
    torch.manual_seed(0)
    boxes = [torch.tensor([[40.0, 60, 300, 400], [500, 100, 700, 380], [20, 20, 90, 70]]) * (height / 800)
             for _ in range(2)]
    labels = [torch.tensor([1, 5, 17]) for _ in range(2)]
    images = torch.rand(2, 3, height, width, device=device)  # (B, 3, H, W)
    cfg = preset("fcos_r50_1x")
    # as `fcosdet train` runs it: FrozenBN applied to the conv weights, channels_last, fused SGD
    ours = training_model(build_model(cfg.model).to(device).train(), cfg.train, device)
    criterion = build_criterion(cfg.model)
    channels_last = uses_channels_last(cfg.train, device)
    ours_images = images.contiguous(memory_format=torch.channels_last) if channels_last else images
    tv = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).to(device).train()
    tv.transform.min_size, tv.transform.max_size = (height,), max(width, 1333)
    targets = [{"boxes": b.to(device), "labels": lab.to(device)} for b, lab in zip(boxes, labels)]
    tv_targets = [{"boxes": b.to(device), "labels": lab.to(device) + 1} for b, lab in zip(boxes, labels)]
    opt_ours = build_optimizer(ours, lr=1e-4, momentum=0.9, fused=True)
    opt_tv = torch.optim.SGD([p for p in tv.parameters() if p.requires_grad], lr=1e-4, momentum=0.9)

    def step_ours() -> None:
        loss = sum(criterion(ours(ours_images), targets).values())
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def step_tv() -> None:
        loss = sum(tv(list(images), tv_targets).values())
        opt_tv.zero_grad(set_to_none=True)
        loss.backward()
        opt_tv.step()
    seconds = race({"torchvision": step_tv, "fcosdet": step_ours}, repeats=args.repeats, device=device)
    result = {"batch": 2, "image_hw": [height, width], "seconds": seconds, "fcosdet_channels_last": channels_last,
              "speedup_vs_torchvision": seconds["torchvision"] / seconds["fcosdet"]}
    if device.type == "cuda":
        result["images_per_s"] = {k: 2.0 / v for k, v in seconds.items()}
    return result


def flops_section(args, device: torch.device) -> dict[str, Any]:
    from torch.utils.flop_counter import FlopCounterMode

    from fcosdet.deploy.fastpath import fast_inference_model
    from fcosdet.model.build import build_model
    from fcosdet.presets import preset
    height, width = QUICK_HW if args.quick else (800, 1216)
    model = build_model(preset("fcos_r50_1x").model).to(device).eval()
    fast = fast_inference_model(model)
    x = torch.randn(1, 3, height, width, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(x)
    flop = counter.get_total_flops()
    conv = nn.Conv2d(256, 256, 3, padding=1).to(device).eval()
    big = torch.randn(1, 256, 100, 152, device=device).contiguous(memory_format=torch.channels_last)
    conv_cl = conv.to(memory_format=torch.channels_last)
    conv_flop = 2 * 256 * 256 * 9 * 100 * 152

    def timed(fn: Callable[[], Any]) -> Callable[[], Any]:
        return lambda: torch.inference_mode()(fn)()
    seconds = race({"forward_plain": timed(lambda: model(x)), "forward_fast": timed(lambda: fast(x_cl)),
                    "conv3x3_256": timed(lambda: conv_cl(big))}, repeats=args.repeats, device=device)
    rate = {k: flop / v / 1e9 for k, v in seconds.items() if k.startswith("forward")}
    conv_rate = conv_flop / seconds["conv3x3_256"] / 1e9
    return {"forward_gflop": flop / 1e9, "image_hw": [height, width], "seconds": seconds,
            "achieved_gflop_per_s": rate, "conv3x3_gflop_per_s": conv_rate,
            "share_of_conv_rate": {k: v / conv_rate for k, v in rate.items()}}


def run_sections(sections: dict[str, Callable[[], Any]], names: list[str], result: dict[str, Any], *,
                 start: float, out: Path | None) -> None:
    """Run the named sections into `result`, then print it as JSON (and write it to `out`)."""
    for name in names:
        result[name] = sections[name]()
        # each section's figures as soon as they exist: a run cut short keeps them
        print(f"{name} ({time.perf_counter() - start:.0f} s): {json.dumps(result[name])}",
              file=sys.stderr, flush=True)
    result["total_seconds"] = time.perf_counter() - start
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        out.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="smoke test: 128 x 192 images, 1 repeat, no ONNX")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--sections", nargs="+", default=SECTIONS, choices=SECTIONS,
                   help="which sections to run (default: all)")
    p.add_argument("--contenders", nargs="+", default=None,
                   help="predict sections: race only these (e.g. torchvision fcosdet_openvino fcosdet_openvino_int8)")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="leave out the int8 contenders")
    p.add_argument("--int8-calib-images", type=int, default=8,
                   help="coco128 train images calibrating the int8 graphs (random weights: speed only)")
    p.add_argument("--openvino-profile", action="store_true",
                   help="add OpenVINO's per-layer counters of the fp32 and int8 graphs to the predict sections")
    args = p.parse_args()
    if args.quick:
        args.repeats = 1
    device = torch.device(args.device)
    start = time.perf_counter()
    result: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads(), "repeats": args.repeats,
                              "quick": args.quick, "torch": torch.__version__}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory() as tmp:
        sections = {"predict_cpu": lambda: predict_section(args, Path(tmp), device, r50=False),
                    "flops": lambda: flops_section(args, device),
                    "predict_r50": lambda: predict_section(args, Path(tmp), device, r50=True),
                    "train_r50": lambda: train_section(args, device)}
        run_sections(sections, args.sections, result, start=start, out=args.out)


if __name__ == "__main__":
    main()
