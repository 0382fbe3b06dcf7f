"""`fcosdet predict MODEL_FILE IMAGES...`: detections as COCO-style JSON and drawn images, and with
`--save-format` as label files (COCO, YOLO, VOC, Label Studio, CVAT: `fcosdet.deploy.label_formats`)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from fcosdet import distributed as D
from fcosdet.cli.common import add_set_option, test_overrides
from fcosdet.console import progress, say, warn
from fcosdet.data.images import IMAGE_SUFFIXES, list_images, load_image
from fcosdet.deploy.backends import ONNX_RUNTIMES, PRECISIONS
from fcosdet.deploy.label_formats import (
    SAVE_FORMATS,
    label_set,
    prepare_label_dirs,
    write_label_formats,
)
from fcosdet.deploy.predictor import Detector
from fcosdet.deploy.results import DRAW_THR, Results
from fcosdet.errors import UserError
from fcosdet.io.model_file import MODEL_SUFFIXES

EXPORTED = [s for s in MODEL_SUFFIXES if s not in (".pt", ".pth")]  # what `fcosdet export` writes


def add_parser(sub: Any) -> None:
    pr = sub.add_parser("predict", help="detect objects in images or folders")
    pr.add_argument("checkpoint", type=Path,
                    help=f"the model file: a .pt checkpoint or an exported {', '.join(EXPORTED)} file")
    pr.add_argument("sources", nargs="+", help="image files or folders")
    pr.add_argument("--out", type=Path, default=Path("runs/predict"),
                    help="where predictions.json and the drawn images (*_det.*) go")
    pr.add_argument("--score-thr", type=float, default=None,
                    help="keep detections above this score (default: the model file's test.score_thr)")
    pr.add_argument("--draw-thr", type=float, default=DRAW_THR,
                    help="draw detections from this score")
    pr.add_argument("--classes", nargs="+", metavar="NAME",
                    help="keep only these classes' detections (names as the model file has them)")
    add_set_option(pr, "change a test setting, e.g. --set test.nms_iou=0.6 or --set test.max_per_img=20 "
                       "(test.* keys; repeatable)")
    pr.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available; "
                    ".onnx files run on the cpu)")
    pr.add_argument("--batch-size", type=int, default=4, help="images per forward pass")
    pr.add_argument("--onnx-runtime", choices=ONNX_RUNTIMES, default="onnxruntime",
                    help="what runs an .onnx file")
    pr.add_argument("--precision", choices=PRECISIONS, default="fp32",
                    help="bf16: bf16 autocast (opt-in: detections move slightly; fast only with native bf16)")
    pr.add_argument("--save-format", nargs="+", choices=SAVE_FORMATS, default=[], metavar="FORMAT",
                    help=f"also write the detections as label files under --out/FORMAT/ (several allowed: "
                         f"{', '.join(SAVE_FORMATS)}), to correct in Label Studio or CVAT or to train on")
    pr.add_argument("--save-conf", action="store_true",
                    help="add each box's score to the --save-format files (YOLO's 6th column, an attribute "
                         "elsewhere; off by default, so that the files stay readable as a dataset)")
    pr.set_defaults(func=lambda args: predict_files(
        args.checkpoint, args.sources, out_dir=args.out, score_thr=args.score_thr, draw_thr=args.draw_thr,
        device=args.device, batch_size=args.batch_size, precision=args.precision, onnx_runtime=args.onnx_runtime,
        test_sets=args.set, classes=args.classes, save_formats=args.save_format, save_conf=args.save_conf))


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
            raise UserError(f"{src} is neither an image file nor a folder; check the path")  # as typed: Path folds "//"
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


def _predict_chunk(det: Detector, chunk: list[Path], skipped: list[Path], *,
                   classes: list[str] | None) -> list[tuple[Path, Results]]:
    """Detections of a chunk of images; the images that cannot be decoded are left out and
    added to `skipped` (any other error stops as before)."""
    try:
        return list(zip(chunk, det.predict_batch(chunk, classes=classes)))
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
        return list(zip(good, det.predict_batch(good, classes=classes))) if good else []


def _open_detector(checkpoint: Path, *, device: str, overrides: dict[str, Any], precision: str,
                   onnx_runtime: str) -> Detector:
    if device == "auto":  # cuda when available; an .onnx file runs on the cpu
        device = "cuda" if torch.cuda.is_available() and checkpoint.suffix != ".onnx" else "cpu"
    det = Detector.from_file(checkpoint, device=device, test_overrides=overrides, precision=precision,
                             onnx_runtime=onnx_runtime)
    if not det.category_ids_saved:
        warn(f"{checkpoint} predates fcosdet saving each class's dataset category id: predictions.json "
             f"numbers the classes 1..{len(det.class_names)} (label + 1), which is wrong for a COCO dataset "
             f"with other ids; `fcosdet eval {checkpoint} --out DIR` writes its annotation file's ids")
    return det


def _settings(score_thr: float | None, draw_thr: float, batch_size: int, test_sets: list[str]) -> dict[str, Any]:
    """The flags checked, as test overrides: --score-thr is test.score_thr (given once)."""
    for flag, value in (("--score-thr", score_thr), ("--draw-thr", draw_thr)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UserError(f"{flag} {value:g} is outside [0, 1]: it is a detection score threshold")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    overrides = test_overrides(list(test_sets), command="predict")
    if score_thr is not None:
        if "test.score_thr" in overrides and overrides["test.score_thr"] != score_thr:
            raise UserError(f"--score-thr {score_thr:g} and --set test.score_thr={overrides['test.score_thr']} "
                            f"disagree; give the score threshold once")
        overrides["test.score_thr"] = score_thr
    return overrides


def _say_undrawn(results: list[Results], draw_thr: float) -> None:
    """One line when drawings show no box although the image has detections (all below --draw-thr)."""
    hidden = [r for r in results if len(r) and r.max_score < draw_thr]
    if hidden:
        best = max(r.max_score for r in hidden)
        say(f"{len(hidden)} of {len(results)} drawings show no box: their detections all score below "
            f"--draw-thr {draw_thr:g} (highest {best:.3f}); lower --draw-thr (e.g. --draw-thr "
            f"{math.floor(best * 100) / 100:g}) to draw them")


def _write_labels(results: list[Results], out_dir: Path, formats: list[str], *, root: Path, score_thr: float,
                  save_conf: bool, checkpoint: Path) -> None:
    """The --save-format files of the detections scoring >= score_thr, and one line saying where."""
    labels = label_set(results, root=root, score_thr=score_thr, save_conf=save_conf,
                       model_version=f"fcosdet {checkpoint.name}")
    written = write_label_formats(labels, out_dir, formats)
    boxes = sum(len(im.scores) for im in labels.images)
    say(f"label files: {boxes} boxes (score >= {score_thr:g}) on {len(labels.images)} images, image paths relative "
        f"to {root}: " + ", ".join(f"{fmt} -> {path}" for fmt, path in written.items()))
    if labels.dropped:
        say(f"left {labels.dropped} boxes under 1 px wide or high out of the label files")
    if save_conf and "yolo" in written:
        say("--save-conf: the YOLO files have a 6th column (the score), which dataset readers refuse; predict "
            "again without --save-conf to train on them")


def predict_files(checkpoint: Path, sources: list[str], *, out_dir: Path, score_thr: float | None = None,
                  draw_thr: float = DRAW_THR, batch_size: int = 4, device: str = "auto", precision: str = "fp32",
                  onnx_runtime: str = "onnxruntime", test_sets: list[str] = (),
                  classes: list[str] | None = None, save_formats: list[str] = (),
                  save_conf: bool = False) -> list[dict[str, Any]]:
    """Detections of every image as COCO-style JSON (with file names), drawn images and the
    `save_formats` label files (`fcosdet.deploy.label_formats`); returns what predictions.json holds."""
    overrides = _settings(score_thr, draw_thr, batch_size, list(test_sets))
    if save_conf and not save_formats:
        raise UserError("--save-conf adds scores to label files: give --save-format too (e.g. --save-format yolo)")
    paths = collect_images(sources)
    outputs = dict(zip(paths, output_paths(paths, out_dir)))
    replaced = sum(o.exists() for o in [*outputs.values(), out_dir / "predictions.json"])
    det = _open_detector(checkpoint, device=device, overrides=overrides, precision=precision,
                         onnx_runtime=onnx_runtime)
    if classes is not None:
        det.labels_of(classes)  # unknown names: an error before any image is read
    out_dir.mkdir(parents=True, exist_ok=True)
    root = prepare_label_dirs(out_dir, save_formats, paths=paths) if save_formats else None
    results, skipped = [], []
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    for chunk in progress(chunks, total=len(chunks), desc="predict", enabled=D.is_main_process()):
        for path, r in _predict_chunk(det, chunk, skipped, classes=classes):
            results.append(r)
            r.save(outputs[path], score_thr=draw_thr)
    coco = [d for r in results for d in r.to_coco()]
    (out_dir / "predictions.json").write_text(json.dumps(coco))
    if len(skipped) == len(paths):
        raise UserError(f"none of the {len(paths)} images can be decoded (first: {skipped[0]}); check the files")
    if skipped:
        warn(f"skipped {len(skipped)} of {len(paths)} images that cannot be decoded (first: {skipped[0]}); "
             f"replace or remove those files")
    if root is not None:
        _write_labels(results, out_dir, list(save_formats), root=root, score_thr=float(det.config.test.score_thr),
                      save_conf=save_conf, checkpoint=checkpoint)  # --score-thr, else the model file's
    note = f"; replaced {replaced} files already there" if replaced else ""
    drawn = sum(int((r.scores >= draw_thr).sum()) for r in results)
    say(f"{len(coco)} detections on {len(results)} images ({drawn} drawn, score >= --draw-thr {draw_thr:g}) -> "
        f"{out_dir / 'predictions.json'} and the drawn images (*_det.*) under {out_dir}{note}")
    _say_undrawn(results, draw_thr)
    return coco
