"""OpenVINO vs onnxruntime on fcosdet's exported ONNX detector (issue 10), one JSON object.

Random weights (classification head widened so that boxes pass the threshold), exported with
`fcosdet.deploy.export.export_onnx` (the whole detector: network, decoding, NonMaxSuppression, dynamic
batch / height / width). Cases: fcos_r18_tricks_cpu at a 320 x 427 image (padded 320 x 448) and
fcos_r50_1x at 800 x 1216, batch 1. The same random normalised input goes to onnxruntime and to
OpenVINO (the dynamic-shape model as exported, and reshaped to the static input shape); they
alternate run by run, one warm-up (plus the first call) then the median of --repeats runs
(compare ratios, not absolute times: this project's CPU swings 2x). Agreement: same number of
detections, same labels and batch indices, boxes within 0.5 px, after sorting by (image, label,
-score).

OpenVINO is not a project dependency: time it from a separate environment, e.g.
    python3.11 -m venv /tmp/ov && /tmp/ov/bin/pip install openvino onnxruntime numpy
    .venv/bin/python benchmarks/openvino_vs_onnxruntime.py --ov-python /tmp/ov/bin/python \
        [--repeats 5] [--threads 2] [--quick] [--out FILE]
The export runs here (fcosdet, torch); the timing runs in --ov-python, which imports neither
(`--time ONNX H W` is that half alone). --quick: fcos_r18_tricks_cpu only, 128 x 192, 1 repeat.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report_json import emit  # noqa: E402

CASES = {"r18_cpu_320x427": ("fcos_r18_tricks_cpu", 320, 427), "r50_800x1216": ("fcos_r50_1x", 800, 1216)}
QUICK = {"r18_cpu_128x192": ("fcos_r18_tricks_cpu", 128, 192)}


def export(preset_name: str, out: Path) -> Path:
    """A random-weight detector of the preset (20 classes) as an ONNX file."""
    import torch

    from fcosdet.deploy.build import build_inference
    from fcosdet.deploy.export import export_onnx
    from fcosdet.io.model_file import ModelFile
    from fcosdet.model.build import build_model
    from fcosdet.presets import preset
    torch.manual_seed(0)
    cfg = preset(preset_name)
    cfg.model.num_classes, cfg.model.backbone_weights = 20, None
    model = build_model(cfg.model).eval()
    with torch.no_grad():  # the default init scores ~0.01 everywhere: below score_thr, no boxes
        torch.nn.init.normal_(model.head.conv_cls.weight, std=0.05)
        torch.nn.init.constant_(model.head.conv_cls.bias, -2.5)
    model_file = ModelFile(model=model.state_dict(), config=cfg.to_dict(), class_names=[f"c{i}" for i in range(20)])
    return export_onnx(build_inference(model_file), out)


def time_onnx(path: str, h: int, w: int, repeats: int, threads: int) -> dict:
    """onnxruntime vs OpenVINO (dynamic and static shape) on one file; no fcosdet / torch import."""
    import numpy as np
    import onnxruntime as ort
    import openvino as ov
    hp, wp = -(-h // 32) * 32, -(-w // 32) * 32
    images = np.zeros((1, 3, hp, wp), np.float32)
    images[:, :, :h, :w] = np.random.default_rng(0).standard_normal((1, 3, h, w), dtype=np.float32)
    feeds = {"images": images, "image_sizes": np.array([[h, w]], np.int64)}
    result: dict = {"input": [1, 3, hp, wp], "valid_hw": [h, w], "threads": threads,
                    "onnxruntime": ort.__version__, "openvino": ov.__version__}
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    runners = {"onnxruntime": lambda: sess.run(None, feeds)}
    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    for name in ("openvino_dynamic", "openvino_static"):
        try:
            model = core.read_model(path)
            if name == "openvino_static":
                model.reshape({"images": [1, 3, hp, wp], "image_sizes": [1, 2]})
            start = time.perf_counter()
            compiled = core.compile_model(model, "CPU", config)
            result[f"{name}_compile_s"] = round(time.perf_counter() - start, 3)
            request = compiled.create_infer_request()
            def run(req=request, outs=compiled.outputs) -> list:
                res = req.infer(feeds)  # one inference, then its four outputs
                return [res[o] for o in outs]
            runners[name] = run
            runners[name]()
        except Exception as e:  # noqa: BLE001 - a model OpenVINO cannot take is an answer, not a crash
            result[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:500]}"
            runners.pop(name, None)
    outputs = {name: fn() for name, fn in runners.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            start = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - start)
    result["median_ms"] = {n: round(statistics.median(t) * 1000, 1) for n, t in times.items()}
    result["ratio_ort_over"] = {n: round(statistics.median(times["onnxruntime"]) / statistics.median(t), 3)
                                for n, t in times.items() if n != "onnxruntime"}

    def ordered(out: list) -> list:
        boxes, scores, labels, batch = (np.asarray(x) for x in out)
        k = np.lexsort((-scores, labels, batch))
        return [boxes[k], scores[k], labels[k], batch[k]]
    ref = ordered(outputs["onnxruntime"])
    result["detections"] = {"onnxruntime": len(ref[1])}
    for name in runners:
        if name == "onnxruntime":
            continue
        other = ordered(outputs[name])
        same = len(other[1]) == len(ref[1]) and all(np.array_equal(a, b) for a, b in zip(ref[2:], other[2:]))
        diff = float(np.abs(ref[0] - other[0]).max()) if same and len(ref[1]) else 0.0
        result["detections"][name] = len(other[1])
        result[f"{name}_agrees"] = bool(same and diff <= 0.5)
        result[f"{name}_max_box_diff_px"] = diff if same else None
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ov-python", default=sys.executable, help="a python with openvino and onnxruntime")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path)
    p.add_argument("--time", nargs=3, metavar=("ONNX", "H", "W"), help="time one exported file (no fcosdet)")
    args = p.parse_args()
    if args.time:
        print(json.dumps(time_onnx(args.time[0], int(args.time[1]), int(args.time[2]),
                                   args.repeats, args.threads)))
        return
    repeats = 1 if args.quick else args.repeats
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, (preset_name, h, w) in (QUICK if args.quick else CASES).items():
            path = export(preset_name, Path(tmp) / f"{case}.onnx")
            run = subprocess.run([args.ov_python, __file__, "--time", str(path), str(h), str(w),
                                  "--repeats", str(repeats), "--threads", str(args.threads)],
                                 capture_output=True, text=True, check=True)
            report[case] = {"preset": preset_name, **json.loads(run.stdout.strip().splitlines()[-1])}
            print(case, json.dumps(report[case]), file=sys.stderr, flush=True)
    emit(report, args.out)


if __name__ == "__main__":
    main()
