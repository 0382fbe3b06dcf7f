"""`fcosdet predict MODEL_FILE IMAGES...`: detections as COCO-style JSON and drawn images."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fcosdet import distributed as D
from fcosdet.analysis.viz import draw_detections
from fcosdet.console import progress, say, warn
from fcosdet.data.images import IMAGE_SUFFIXES, list_images, load_image
from fcosdet.deploy.backends import ONNX_RUNTIMES, PRECISIONS
from fcosdet.deploy.predictor import Detector
from fcosdet.engine.evaluation.coco import coco_boxes
from fcosdet.errors import UserError


def add_parser(sub: Any) -> None:
    pr = sub.add_parser("predict", help="detect objects in images or folders")
    pr.add_argument("checkpoint", type=Path)
    pr.add_argument("sources", nargs="+", help="image files or folders")
    pr.add_argument("--out", type=Path, default=Path("runs/predict"))
    pr.add_argument("--score-thr", type=float, default=0.05, help="keep detections above this score")
    pr.add_argument("--draw-thr", type=float, default=0.3, help="draw detections above this score")
    pr.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available; "
                    ".onnx files run on the cpu)")
    pr.add_argument("--batch-size", type=int, default=4, help="images per forward pass (default 4)")
    pr.add_argument("--onnx-runtime", choices=ONNX_RUNTIMES, default="onnxruntime",
                    help="what runs an .onnx file (default onnxruntime; openvino was faster on our CPU)")
    pr.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="bf16: bf16 autocast (opt-in: detections move slightly; fast only with native bf16)")
    pr.set_defaults(func=lambda args: predict_files(
        args.checkpoint, args.sources, out_dir=args.out, score_thr=args.score_thr, draw_thr=args.draw_thr,
        device=args.device, batch_size=args.batch_size, precision=args.precision, onnx_runtime=args.onnx_runtime))


def collect_images(sources: list[str]) -> list[Path]:
    """Image files and the images under folders, each file once (in the order given)."""
    paths: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            paths += list_images(p)
        elif p.is_file():
            paths.append(p)
        else:
            raise UserError(f"{p} is neither an image file nor a folder; check the path")
    if not paths:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(sources)}")
    return list({os.path.abspath(p): p for p in paths}.values())


def output_paths(paths: list[Path], out_dir: Path) -> list[Path]:
    """Where each drawn image goes: its path relative to the inputs' common folder, under
    `out_dir`, with `_det` before the suffix (a/x.jpg and b/x.jpg stay apart)."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    common = Path(os.path.commonpath([str(a.parent) for a in absolute]))
    outs = [out_dir / a.relative_to(common).with_name(f"{a.stem}_det{a.suffix}") for a in absolute]
    if len(set(outs)) != len(outs):
        raise UserError(f"two input images would be drawn to the same file under {out_dir}; give each "
                        f"image once")
    return outs


def _predict_chunk(det: Detector, chunk: list[Path], skipped: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Detections of a chunk of images; the images that cannot be decoded are left out and
    added to `skipped` (any other error stops as before)."""
    try:
        return list(zip(chunk, det.predict_batch(chunk)))
    except UserError:
        bad = []
        for path in chunk:
            try:
                load_image(path)
            except UserError:
                bad.append(path)
        if not bad:
            raise
        skipped.extend(bad)
        good = [p for p in chunk if p not in bad]
        return list(zip(good, det.predict_batch(good))) if good else []


def _results(det: Detector, path: Path, d: dict[str, Any]) -> list[dict[str, Any]]:
    """One image's detections as COCO-style results with the file name (bbox [x, y, w, h])."""
    xywh = coco_boxes(d["boxes"])  # D x [x, y, w, h]
    return [{"file_name": str(path), "category_id": det.category_id(label), "category": det.class_names[label],
             "score": round(score, 5), "bbox": [round(v, 2) for v in box]}
            for box, score, label in zip(xywh, d["scores"].tolist(), d["labels"].tolist())]


def _open_detector(checkpoint: Path, *, device: str, score_thr: float, precision: str,
                   onnx_runtime: str) -> Detector:
    if device == "auto":  # cuda when available; an .onnx file runs on the cpu
        device = "cuda" if torch.cuda.is_available() and checkpoint.suffix != ".onnx" else "cpu"
    det = Detector.from_file(checkpoint, device=device, score_thr=score_thr, precision=precision,
                             onnx_runtime=onnx_runtime)
    if not det.category_ids_saved:
        warn(f"{checkpoint} predates fcosdet saving each class's dataset category id: predictions.json "
             f"numbers the classes 1..{len(det.class_names)} (label + 1), which is wrong for a COCO dataset "
             f"with other ids; `fcosdet eval {checkpoint} --out DIR` writes its annotation file's ids")
    return det


def predict_files(checkpoint: Path, sources: list[str], *, out_dir: Path, score_thr: float,
            draw_thr: float, batch_size: int = 4, device: str = "auto",
            precision: str = "fp32", onnx_runtime: str = "onnxruntime") -> list[dict[str, Any]]:
    """Detections of every image as COCO-style JSON (with file names) and drawn images."""
    for flag, value in (("--score-thr", score_thr), ("--draw-thr", draw_thr)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{flag} {value:g} is outside [0, 1]: it is a detection score threshold")
    paths = collect_images(sources)
    outputs = dict(zip(paths, output_paths(paths, out_dir)))
    replaced = sum(o.exists() for o in [*outputs.values(), out_dir / "predictions.json"])
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    det = _open_detector(checkpoint, device=device, score_thr=score_thr, precision=precision,
                         onnx_runtime=onnx_runtime)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, skipped = [], []
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    for chunk in progress(chunks, total=len(chunks), desc="predict", enabled=D.is_main_process()):
        for path, d in _predict_chunk(det, chunk, skipped):
            results += _results(det, path, d)
            drawn = draw_detections(load_image(path), boxes=d["boxes"], labels=d["labels"],
                                    scores=d["scores"], class_names=det.class_names, score_thr=draw_thr)
            outputs[path].parent.mkdir(parents=True, exist_ok=True)
            drawn.save(outputs[path], quality=90)
    (out_dir / "predictions.json").write_text(json.dumps(results))
    if len(skipped) == len(paths):
        raise UserError(f"none of the {len(paths)} images can be decoded (first: {skipped[0]}); check the files")
    if skipped:
        warn(f"skipped {len(skipped)} of {len(paths)} images that cannot be decoded (first: {skipped[0]}); "
             f"replace or remove those files")
    note = f"; replaced {replaced} files already there" if replaced else ""
    say(f"{len(results)} detections on {len(paths) - len(skipped)} images -> {out_dir / 'predictions.json'} "
        f"and the drawn images (*_det.*) under {out_dir}{note}")
    return results
