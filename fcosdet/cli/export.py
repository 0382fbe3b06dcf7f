"""`fcosdet export MODEL_FILE --format onnx|openvino|program|weights --out PATH [--int8 --data DATASET]`
(`torchscript`: old name of `program`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fcosdet.cli.common import add_set_option, test_overrides
from fcosdet.console import say
from fcosdet.deploy.build import build_inference
from fcosdet.deploy.export import (
    ALIASES,
    FORMATS,
    SUFFIXES,
    Int8Settings,
    check_out,
    export_model,
    resolve_format,
)
from fcosdet.deploy.quantize import CALIB_IMAGES
from fcosdet.errors import UserError
from fcosdet.io.model_file import ModelFile


def add_parser(sub: Any) -> None:
    ex = sub.add_parser("export", help="export a trained model: ONNX, OpenVINO IR (fp32 or int8), torch.export "
                        "program or safetensors weights",
                        description="Export a checkpoint (or a .safetensors weights file). onnx: the whole "
                        "detector (network, decoding, NMS) in one graph for onnxruntime, metadata included; "
                        "openvino: the same graph as an OpenVINO IR (.xml + .bin); "
                        "program: the same as a torch.export program (.pt2) for PyTorch without fcosdet, "
                        "with a safetensors copy of the weights that fcosdet reads back; "
                        "weights: safetensors weights with the config and class names (small, safe to load). "
                        "Every format runs through fcosdet predict / eval and Detector.from_file.")
    ex.add_argument("checkpoint", type=Path, help="a .pt checkpoint, or an exported .safetensors / .pt2 file")
    ex.add_argument("--format", required=True, choices=[*FORMATS, *ALIASES],
                    help="onnx (.onnx), openvino (.xml + .bin), program (.pt2: torch.export; 'torchscript' is "
                         "its old name) or weights (.safetensors)")
    ex.add_argument("--out", type=Path, required=True,
                    help=f"the file to write ({', '.join(SUFFIXES[f] for f in FORMATS)})")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_set_option(ex, "change a test setting baked into the export, e.g. --set test.score_thr=0.3")
    q = ex.add_argument_group("int8 (--format onnx / openvino)")
    q.add_argument("--int8", action="store_true",
                   help="post-training int8 quantisation of the network's convolutions (decoding and NMS stay "
                        "float): NNCF for openvino (pip install 'fcosdet[int8]'), onnxruntime for onnx")
    q.add_argument("--data", help="--int8: the dataset whose train split calibrates (YAML or folder)")
    q.add_argument("--calib-images", type=int, default=CALIB_IMAGES,
                   help=f"--int8: how many train images calibrate (default {CALIB_IMAGES})")
    q.add_argument("--max-ap-drop", type=float, default=None,
                   help="--int8 --format openvino: accuracy-controlled quantisation on the val split; the "
                        "COCO AP may drop at most this much (absolute, 0.005 = half a point)")
    ex.set_defaults(func=lambda args: export(args.checkpoint, fmt=args.format, out=args.out,
                                             overwrite=args.overwrite, test_sets=args.set,
                                             int8=int8_settings(args.int8, data=args.data,
                                                                calib_images=args.calib_images,
                                                                max_ap_drop=args.max_ap_drop)))


def int8_settings(int8: bool, *, data: str | None, calib_images: int = CALIB_IMAGES,
                  max_ap_drop: float | None = None) -> Int8Settings | None:
    """The --int8 options as settings (None without --int8); options without --int8 are an error."""
    if not int8:
        if data is not None or max_ap_drop is not None or calib_images != CALIB_IMAGES:
            raise UserError("--data / --calib-images / --max-ap-drop only apply with --int8; add --int8")
        return None
    if not data:
        raise UserError("--int8 needs calibration images: pass --data DATASET (its train split calibrates)")
    return Int8Settings(dataset=data, calib_images=calib_images, max_ap_drop=max_ap_drop)


def export(checkpoint: Path, *, fmt: str, out: Path, overwrite: bool = False,
           test_sets: list[str] = (), int8: Int8Settings | None = None) -> Path:
    """A checkpoint or weights file -> an ONNX graph, an OpenVINO IR (fp32, or int8 with `int8`), a
    torch.export program or safetensors weights."""
    fmt = resolve_format(fmt)
    check_out(out, fmt, overwrite=overwrite, int8=int8)  # before the slow part
    overrides = test_overrides(list(test_sets), command="export")
    parts = build_inference(ModelFile.load(checkpoint), overrides=overrides)
    export_model(parts, fmt, out, overwrite=overwrite, int8=int8)
    size = out.stat().st_size + (out.with_suffix(".bin").stat().st_size if fmt == "openvino" else 0)
    kind = f"{fmt}, int8" if int8 is not None else fmt
    say(f"wrote {out} ({size / 2 ** 20:.1f} MiB, {kind}); load it with "
        f"fcosdet.Detector.from_file, `fcosdet predict {out} IMAGES` or `fcosdet eval {out}`")
    return out
