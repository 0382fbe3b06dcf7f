"""`fcosdet export MODEL_FILE --format onnx|program|weights --out PATH` (`torchscript`: old name of `program`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fcosdet.cli.common import add_set_option, test_overrides
from fcosdet.console import say
from fcosdet.deploy.build import build_inference
from fcosdet.deploy.export import ALIASES, FORMATS, SUFFIXES, check_out, export_model, resolve_format
from fcosdet.io.model_file import ModelFile


def add_parser(sub: Any) -> None:
    ex = sub.add_parser("export", help="export a trained model: ONNX, torch.export program or safetensors weights",
                        description="Export a checkpoint (or a .safetensors weights file). onnx: the whole "
                        "detector (network, decoding, NMS) in one graph for onnxruntime, metadata included; "
                        "program: the same as a torch.export program (.pt2) for PyTorch without fcosdet, "
                        "with a safetensors copy of the weights that fcosdet reads back; "
                        "weights: safetensors weights with the config and class names (small, safe to load). "
                        "Every format runs through fcosdet predict / eval and Detector.from_file.")
    ex.add_argument("checkpoint", type=Path, help="a .pt checkpoint, or an exported .safetensors / .pt2 file")
    ex.add_argument("--format", required=True, choices=[*FORMATS, *ALIASES],
                    help="onnx (.onnx), program (.pt2: torch.export; 'torchscript' is its old name) or "
                         "weights (.safetensors)")
    ex.add_argument("--out", type=Path, required=True,
                    help=f"the file to write ({', '.join(SUFFIXES[f] for f in FORMATS)})")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    add_set_option(ex, "change a test setting baked into the export, e.g. --set test.score_thr=0.3")
    ex.set_defaults(func=lambda args: export(args.checkpoint, fmt=args.format, out=args.out,
                                             overwrite=args.overwrite, test_sets=args.set))


def export(checkpoint: Path, *, fmt: str, out: Path, overwrite: bool = False,
           test_sets: list[str] = ()) -> Path:
    """A checkpoint or weights file -> an ONNX graph, a torch.export program or safetensors weights."""
    fmt = resolve_format(fmt)
    check_out(out, fmt, overwrite=overwrite)  # before the slow part
    overrides = test_overrides(list(test_sets), command="export")
    parts = build_inference(ModelFile.load(checkpoint), overrides=overrides)
    export_model(parts, fmt, out, overwrite=overwrite)
    say(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB, {fmt}); load it with "
        f"fcosdet.Detector.from_file, `fcosdet predict {out} IMAGES` or `fcosdet eval {out}`")
    return out
