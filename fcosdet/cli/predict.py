"""`fcosdet predict MODEL_FILE IMAGES...`: detections as COCO-style JSON and drawn images, and with
`--save-format` as label files (COCO, YOLO, VOC, Label Studio, CVAT: `fcosdet.deploy.label_formats`)."""
from __future__ import annotations

import inspect
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
from fcosdet.deploy.slicing import DEFAULT_OVERLAP, IOS_THR, MERGES, SLICE_BATCH, Slicing, parse_slice_size
from fcosdet.deploy.sources import Sources, find_sources
from fcosdet.deploy.video import VideoReader, output_stem, predict_video
from fcosdet.errors import UserError
from fcosdet.io.model_file import GRAPH_SUFFIXES, MODEL_SUFFIXES

EXPORTED = [s for s in MODEL_SUFFIXES if s not in (".pt", ".pth")]  # what `fcosdet export` writes


def add_parser(sub: Any) -> None:
    pr = sub.add_parser("predict", help="detect objects in images or folders")
    pr.add_argument("checkpoint", type=Path,
                    help=f"the model file: a .pt checkpoint or an exported {', '.join(EXPORTED)} file")
    pr.add_argument("sources", nargs="+",
                    help="image files, folders, quoted globs (\"photos/*.jpg\"), video files (mp4 mov avi mkv "
                         "webm), http(s) URLs of an image or video, rtsp:// streams or /dev/videoN devices")
    pr.add_argument("--vid-stride", type=int, default=1, metavar="N",
                    help="videos: keep every N-th frame (the annotated video runs at the input's fps / N)")
    pr.add_argument("--track", action="store_true",
                    help="videos: give each detection a track id across frames (ByteTrack), in the .jsonl and "
                         "drawn as #id")
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
    add_slice_options(pr)
    pr.set_defaults(func=lambda args: predict_sources(
        args.checkpoint, args.sources, out_dir=args.out, score_thr=args.score_thr, draw_thr=args.draw_thr,
        device=args.device, batch_size=args.batch_size, precision=args.precision, onnx_runtime=args.onnx_runtime,
        test_sets=args.set, classes=args.classes, save_formats=args.save_format, save_conf=args.save_conf,
        vid_stride=args.vid_stride, track=args.track, slicing=slicing_from_args(args)))


def add_slice_options(parser: Any) -> None:
    """The sliced-inference flags of `predict` and `eval` (`fcosdet.deploy.slicing`)."""
    parser.add_argument("--slice", metavar="SIZE", help="sliced inference for small objects: tiles of SIZE (or W,H) "
                        "original pixels, each resized as the model's images are (pick it near the short side of the "
                        "training scale), e.g. 512; --batch-size tiles go through the model at a time")
    parser.add_argument("--slice-overlap", type=float, default=DEFAULT_OVERLAP, metavar="F",
                        help="share of the tile side neighbouring tiles overlap")
    parser.add_argument("--no-full-image", action="store_true",
                        help="do not merge in the full-image pass (it keeps large objects whole)")
    parser.add_argument("--slice-merge", choices=MERGES, default="nms",
                        help="how the tiles' detections merge: class-aware NMS, or greedy merging on "
                             "intersection over the smaller box (SAHI's default)")
    parser.add_argument("--slice-merge-thr", type=float, default=None, metavar="T",
                        help=f"the merge's threshold (default: test.nms_iou for nms, {IOS_THR:g} for ios)")


def slicing_from_args(args: Any) -> Slicing | None:
    """The --slice* flags as a Slicing (None without --slice; the other flags alone are an error)."""
    if args.slice is None:
        given = [flag for flag, used in (("--slice-overlap", args.slice_overlap != DEFAULT_OVERLAP),
                                         ("--no-full-image", args.no_full_image),
                                         ("--slice-merge", args.slice_merge != "nms"),
                                         ("--slice-merge-thr", args.slice_merge_thr is not None)) if used]
        if given:
            raise UserError(f"{', '.join(given)}: sliced inference only; give --slice SIZE too, e.g. --slice 512")
        return None
    return Slicing(size=parse_slice_size(args.slice), overlap=args.slice_overlap, full_image=not args.no_full_image,
                   merge=args.slice_merge, merge_thr=args.slice_merge_thr)


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


def _predict_chunk(det: Detector, chunk: list[Path], skipped: list[Path], *, classes: list[str] | None,
                   slicing: Slicing | None = None, batch_size: int = SLICE_BATCH) -> list[tuple[Path, Results]]:
    """Detections of a chunk of images (`slicing`: their tiles `batch_size` per pass); the images
    that cannot be decoded are left out and added to `skipped` (any other error stops as before)."""
    try:
        return list(zip(chunk, det.predict_batch(chunk, classes=classes, slicing=slicing, batch_size=batch_size)))
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
        return list(zip(good, det.predict_batch(good, classes=classes, slicing=slicing,
                                                batch_size=batch_size))) if good else []


def _open_detector(checkpoint: Path, *, device: str, overrides: dict[str, Any], precision: str,
                   onnx_runtime: str) -> Detector:
    if device == "auto":  # cuda when available; an .onnx file runs on the cpu
        device = "cuda" if torch.cuda.is_available() and checkpoint.suffix not in GRAPH_SUFFIXES else "cpu"
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
                  save_conf: bool = False, slicing: Slicing | None = None) -> list[dict[str, Any]]:
    """Detections of every image as COCO-style JSON (with file names), drawn images and the
    `save_formats` label files (`fcosdet.deploy.label_formats`); returns what predictions.json holds.
    `slicing`: sliced inference (the tiles of each chunk of `batch_size` images, `batch_size` per pass)."""
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
        for path, r in _predict_chunk(det, chunk, skipped, classes=classes, slicing=slicing, batch_size=batch_size):
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


# ----------------------------------------------------------------------------- videos, streams, URLs, globs


def predict_sources(checkpoint: Path, sources: list[str], *, vid_stride: int = 1, track: bool = False,
                    **options: Any) -> list[dict[str, Any]]:
    """Any sources (`fcosdet.deploy.sources.find_sources`): the images (files, folders, globs,
    downloaded URLs) through `predict_files` with `options` (its keyword arguments), each video
    or stream through `fcosdet.deploy.video.predict_video`; returns what predictions.json holds."""
    args = inspect.signature(predict_files).bind(checkpoint, sources, **options)
    args.apply_defaults()
    a = args.arguments
    _settings(a["score_thr"], a["draw_thr"], a["batch_size"], list(a["test_sets"]))  # flag errors before downloads
    if vid_stride < 1:
        raise UserError(f"--vid-stride must be at least 1, got {vid_stride}")
    found = find_sources(sources)
    try:
        if found.videos:
            _video_flags_apply(found, a)
            _predict_videos(checkpoint, found, a, vid_stride=vid_stride, track=track)
        elif track or vid_stride != 1:
            raise UserError(f"--track / --vid-stride work on videos; {', '.join(sources)} holds only images")
        if not found.images:
            return []
        if found.names and a["save_formats"]:
            raise UserError("--save-format writes label files that point at the image files: download the URL "
                            "images first and predict on the files")
        coco = predict_files(checkpoint, [str(p) for p in found.images], **{k: a[k] for k in options})
        if found.names:  # downloaded images: predictions.json names the URLs, not the temporary files
            coco = [{**d, "file_name": found.names.get(d.get("file_name"), d.get("file_name"))} for d in coco]
            (a["out_dir"] / "predictions.json").write_text(json.dumps(coco))
        return coco
    finally:
        found.cleanup()


def _video_flags_apply(found: Sources, a: dict[str, Any]) -> None:
    """An error for the flags that do not apply to videos, and for two videos with one output name."""
    if a.get("slicing") is not None:
        raise UserError("--slice works on images; predict the videos without it, or their frames as image files")
    if a["save_formats"]:
        raise UserError("--save-format writes label files for images; a video's detections go to its .jsonl "
                        "(one line per frame): predict the videos and the images in two commands")
    stems = [output_stem(v) for v in found.videos]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise UserError(f"two videos would be written to the same {twice[0]}_det / {twice[0]}.jsonl under "
                        f"{a['out_dir']}; predict them with different --out folders")


def _predict_videos(checkpoint: Path, found: Sources, a: dict[str, Any], *, vid_stride: int, track: bool) -> None:
    overrides = _settings(a["score_thr"], a["draw_thr"], a["batch_size"], list(a["test_sets"]))
    det = None
    for video in found.videos:
        name = found.display_name(video)
        reader = VideoReader(video, vid_stride=vid_stride, name=name)  # a missing device: an error before the model loads
        if det is None:
            det = _open_detector(checkpoint, device=a["device"], overrides=overrides, precision=a["precision"],
                                 onnx_runtime=a["onnx_runtime"])
            if a["classes"] is not None:
                det.labels_of(a["classes"])
        out = predict_video(det, reader, out_dir=a["out_dir"], name=name, batch_size=a["batch_size"],
                            vid_stride=vid_stride, track=track, classes=a["classes"], draw_thr=a["draw_thr"])
        if out.fault:
            warn(out.fault)
        every = "every frame" if vid_stride == 1 else f"1 in {vid_stride}"
        tracked = ", tracked (ByteTrack)" if track else ""
        say(f"{name}: {out.frames} frames ({every} of {out.decoded}) at {float(out.fps):g} fps, {out.detections} "
            f"detections{tracked} -> {out.video} ({out.codec}) and {out.jsonl}"
            + ("; stopped with Ctrl-C, both files are complete" if out.interrupted else ""))
