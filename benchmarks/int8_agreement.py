"""int8 vs fp32 on a trained checkpoint: COCO AP of each exported graph and the share of matched detections.

    python benchmarks/int8_agreement.py runs/bccd8/best.pt --data ../shared/data/bccd [--calib-images 300]
        [--max-ap-drop 0.005] [--out /tmp/int8_agreement]

Exports the checkpoint as fp32 and int8 graphs (OpenVINO IR through NNCF; ONNX through onnxruntime's
static QDQ quantiser; both calibrated on --calib-images images of the dataset's train split), then runs
`fcosdet eval`'s path (`evaluate_checkpoint`: Detector, same loader) on --split for each file and the
PyTorch checkpoint. An fp32 detection counts as matched when the same image has an int8 detection of
the same class at IoU >= --iou (greedy by score: `bf16_agreement.matched_share`); each int8 file is
compared with the fp32 file of its own runtime. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bf16_agreement import matched_share  # noqa: E402

from fcosdet.cli.evaluate import evaluate_checkpoint  # noqa: E402
from fcosdet.deploy.build import build_inference  # noqa: E402
from fcosdet.deploy.export import Int8Settings, export_model  # noqa: E402
from fcosdet.io.model_file import ModelFile  # noqa: E402

# side -> (export format, int8?, onnx runtime, the fp32 side it is compared with)
SIDES = {"pytorch_fp32": (None, False, "onnxruntime", None),
         "openvino_fp32": ("openvino", False, "openvino", None),
         "openvino_int8": ("openvino", True, "openvino", "openvino_fp32"),
         "onnxruntime_fp32": ("onnx", False, "onnxruntime", None),
         "onnxruntime_int8": ("onnx", True, "onnxruntime", "onnxruntime_fp32")}
SUFFIX = {"openvino": ".xml", "onnx": ".onnx"}


def export_sides(checkpoint: Path, folder: Path, *, data: str, calib_images: int,
                 max_ap_drop: float | None) -> tuple[dict[str, Path], dict[str, float]]:
    """Every side's model file (the checkpoint for pytorch_fp32) and each export's seconds (the fp32
    ONNX graph is exported once; the IR and the int8 files start from it)."""
    parts = build_inference(ModelFile.load(checkpoint))
    files, seconds = {"pytorch_fp32": checkpoint}, {}
    sides = dict(SIDES)
    if max_ap_drop is not None:
        sides["openvino_int8_accuracy_control"] = ("openvino", True, "openvino", "openvino_fp32")
    start = time.perf_counter()
    files["onnxruntime_fp32"] = export_model(parts, "onnx", folder / "onnxruntime_fp32.onnx", overwrite=True)
    seconds["onnxruntime_fp32"] = round(time.perf_counter() - start, 1)
    for side, (fmt, int8, _, _) in sides.items():
        if side in files:
            continue
        settings = Int8Settings(dataset=data, calib_images=calib_images,
                                max_ap_drop=max_ap_drop if side.endswith("accuracy_control") else None)
        start = time.perf_counter()
        files[side] = export_model(parts, fmt, folder / f"{side}{SUFFIX[fmt]}", overwrite=True,
                                   int8=settings if int8 else None, onnx_file=files["onnxruntime_fp32"])
        seconds[side] = round(time.perf_counter() - start, 1)
    return files, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--calib-images", type=int, default=300)
    parser.add_argument("--max-ap-drop", type=float, default=None,
                        help="also export OpenVINO int8 with NNCF's accuracy control at this AP drop")
    parser.add_argument("--iou", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=Path("/tmp/int8_agreement"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"benchmark": "int8_agreement", "checkpoint": str(args.checkpoint), "data": args.data,
                              "split": args.split, "calib_images": args.calib_images, "iou": args.iou,
                              "threads": torch.get_num_threads()}
    with contextlib.redirect_stdout(sys.stderr):  # the export's and eval's reports; stdout is the JSON alone
        files, result["export_seconds"] = export_sides(args.checkpoint, args.out, data=args.data,
                                                       calib_images=args.calib_images, max_ap_drop=args.max_ap_drop)
        result["sides"] = evaluate_sides(files, args)
    print(json.dumps(result, indent=1))


def evaluate_sides(files: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    """Each side's AP / AP50 through `fcosdet eval`'s path, and each int8 side's AP drop and matched
    share against the fp32 file of its runtime."""
    detections: dict[str, list[dict]] = {}
    sides: dict[str, Any] = {}
    for side, path in files.items():
        runtime = SIDES.get(side, SIDES["openvino_int8"])[2]
        start = time.perf_counter()
        metrics = evaluate_checkpoint(path, dataset=args.data, split=args.split, out_dir=args.out / side,
                                      workers=0, onnx_runtime=runtime)
        detections[side] = json.loads((args.out / side / "detections.json").read_text())
        sides[side] = {"file": path.name, "AP": round(metrics["AP"], 4), "AP50": round(metrics["AP50"], 4),
                       "detections": len(detections[side]), "eval_seconds": round(time.perf_counter() - start, 1)}
        if path.suffix in (".xml", ".onnx"):
            sides[side]["metadata"] = _quantization(path)
    for side, entry in sides.items():
        reference = SIDES.get(side, SIDES["openvino_int8"])[3]
        if reference is None:
            continue
        entry["fp32_side"] = reference
        entry["AP_drop_points"] = round(100 * (sides[reference]["AP"] - entry["AP"]), 2)
        entry["AP50_drop_points"] = round(100 * (sides[reference]["AP50"] - entry["AP50"]), 2)
        for thr in (0.05, 0.3):
            entry[f"matched_share_above_{thr}"] = round(
                matched_share(detections[reference], detections[side], iou=args.iou, score_thr=thr), 4)
    return sides


def _quantization(path: Path) -> dict[str, Any]:
    """The precision and calibration record an exported graph carries (Detector's backend metadata)."""
    from fcosdet.deploy.predictor import Detector
    meta = Detector.from_file(path, onnx_runtime="openvino" if path.suffix == ".xml" else "onnxruntime"
                              ).backend.metadata
    return {"precision": meta.get("precision", "fp32"), "quantization": meta.get("quantization")}


if __name__ == "__main__":
    main()
