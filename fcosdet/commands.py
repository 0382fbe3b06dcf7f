"""What the CLI's sub-commands do: config -> objects -> engine. The only readers of Config."""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import distributed as D
from .analysis.report import update_run_report
from .build import (build_criterion, build_inference, build_model, build_postprocessor, check_levels,
                    training_model, uses_channels_last)
from .config import Config, parse_sets, save_config
from .data import (DetectionDataset, build_loader, build_transforms, load_dataset_spec, summarize_problems,
                   verify_images)
from .data.dataset import EpochSampler
from .data.readers import check_same_categories
from .data.records import DatasetSplit
from .engine.checkpoint import load_checkpoint, set_rng_state
from .engine.ema import ModelEMA
from .engine.evaluator import CocoEvaluator, format_table, save_metrics
from .engine.logging import RunLogger
from .engine.optim import WarmupSchedule, build_optimizer
from .engine.trainer import StepContext, TrainState, evaluate, fit
from .errors import UserError
from .progress import progress
from .finetune import init_from_checkpoint, pretrained_normalize, read_source

AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def say(*args: Any) -> None:
    if D.is_main_process():
        print(*args, flush=True)


def warn(message: str) -> None:
    """A loud warning on stderr (rank 0): something works but is probably not what was meant."""
    if D.is_main_process():
        print(f"fcosdet: warning: {message}", file=sys.stderr, flush=True)


def describe_split(split: str, data: DatasetSplit) -> str:
    """'val: 72 images, 1003 boxes from .../val.json' (+ how many boxes were clipped)."""
    boxes = sum(len(r.boxes) for r in data.records)
    line = f"{split}: {len(data.records)} images, {boxes} boxes from {data.source or '?'}"
    if data.clipped:
        line += f"; clipped {data.clipped} boxes that crossed the image border to the image"
    return line


def load_split(cfg: Config, split: str) -> DatasetSplit:
    """One split, with a line saying which file, how many images and boxes; an empty split
    (or one emptied by --skip-invalid) is a UserError."""
    if not cfg.data.dataset:
        raise UserError("no dataset given; pass --data PATH (a dataset YAML or a COCO/VOC/YOLO folder) "
                        "or set data.dataset in the config")
    data = load_dataset_spec(cfg.data.dataset, split, skip_invalid=cfg.data.skip_invalid,
                             allow_outside_root=cfg.data.allow_outside_root)
    if cfg.data.skip_invalid:  # decode every image now, so a truncated one is dropped, not fatal later
        data.records, undecodable = verify_images(data.records, skip_invalid=True)
        data.problems.extend(undecodable)
    if data.problems:
        say(f"{split}: {summarize_problems(data.problems)}")
    say(describe_split(split, data))
    if not data.records:
        dropped = f" after skipping {len(data.problems)} invalid ones" if data.problems else ""
        raise UserError(f"split '{split}' of {cfg.data.dataset} ({data.source or 'no file'}) holds no "
                        f"images{dropped}; fix the dataset or choose another split")
    return data


def warn_shared_images(train: DatasetSplit, val: DatasetSplit) -> None:
    """Val images that are also training images make the val metrics (and best.pt) optimistic."""
    seen = {os.path.abspath(r.path) for r in train.records}
    shared = sum(os.path.abspath(r.path) in seen for r in val.records)
    if shared:
        warn(f"{shared} of the {len(val.records)} val images ({val.source}) are also training images "
             f"({train.source}): the val metrics and the choice of best.pt over-estimate the model; "
             f"use a val split without training images")


def make_loader(cfg: Config, data: DatasetSplit, *, train: bool) -> Any:
    d = cfg.data
    transform = build_transforms(train=train, scale=d.scale, multiscale_short=d.multiscale_short,
                                 flip_prob=d.flip_prob, normalize=d.normalize, crop_scale=d.crop_scale,
                                 photometric_prob=d.photometric_prob)
    dataset = DetectionDataset(data, transforms=transform)
    sampler = None
    if train:  # order and augmentations a function of (seed, epoch), one process or many
        sampler = EpochSampler(dataset, seed=cfg.train.seed, batch_size=d.batch_size,
                               num_replicas=D.world_size(), rank=D.rank())
    elif D.is_distributed():
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=False, drop_last=False)
    return build_loader(dataset, batch_size=d.batch_size, shuffle=train, num_workers=d.workers,
                        sampler=sampler, drop_last=False, seed=cfg.train.seed + D.rank())


def _make_writable_dir(run_dir: Path) -> None:
    """Create `run_dir` and check that a file can be written there, or one UserError line."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".fcosdet-write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"cannot write to the run folder {run_dir} ({exc.strerror or exc}); choose a "
                        f"writable --run-dir") from None


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """A run folder that exists is never overwritten without --resume or --overwrite; one that
    cannot be created or written is refused before training starts."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a folder; choose another --run-dir")
    if run_dir.exists() and any(run_dir.iterdir()) and not (resume or overwrite):
        raise UserError(f"run folder {run_dir} already exists; pass --resume to continue it, "
                        f"--overwrite to start again in it, or choose another --run-dir")
    if resume and not (run_dir / "last.pt").is_file():
        raise UserError(f"cannot resume: {run_dir / 'last.pt'} does not exist; start a new run "
                        f"without --resume")
    D.barrier()
    if D.is_main_process():
        if overwrite and not resume and run_dir.exists():
            shutil.rmtree(run_dir)
        _make_writable_dir(run_dir)
    D.barrier()


@dataclass
class Built:
    """Everything `train` builds from the config."""
    ctx: StepContext
    train_loader: Any
    val_loader: Any | None  # None with data.val_split=none
    val_data: DatasetSplit | None
    postprocessor: Any
    class_names: list[str]
    category_ids: list[int] | None  # the dataset's id of each label (COCO), for results files


def _set_num_classes(cfg: Config, class_names: list[str]) -> None:
    if cfg.model.num_classes != len(class_names):
        say(f"model.num_classes set to {len(class_names)} from the dataset ({', '.join(class_names[:8])}"
            f"{', ...' if len(class_names) > 8 else ''})")
        cfg.model.num_classes = len(class_names)


def check_backbone_init(cfg: Config) -> None:
    """A frozen stem / frozen BatchNorm only makes sense over pretrained weights; torchvision
    weights expect torchvision's input normalisation."""
    m = cfg.model
    if m.backbone_weights is None and m.init_from is None and (m.frozen_stages >= 0
                                                               or m.backbone_norm == "frozen_bn"):
        raise UserError(
            f"model.frozen_stages={m.frozen_stages} and model.backbone_norm={m.backbone_norm} freeze a "
            f"randomly initialised backbone (no model.backbone_weights): it cannot learn well. Give "
            f"ImageNet weights (--set model.backbone_weights=resnet{m.depth}.pth), or train it from "
            f"scratch with --set model.frozen_stages=-1 --set model.backbone_norm=gn")
    if m.backbone_weights is not None and cfg.data.normalize in ("caffe", "caffe_detectron2"):
        warn(f"model.backbone_weights={m.backbone_weights} are torchvision-format weights, trained on "
             f"RGB inputs scaled to [0, 1] with ImageNet mean/std, but data.normalize={cfg.data.normalize} "
             f"feeds BGR 0-255: set --set data.normalize=pytorch unless these weights were converted from caffe")


def _use_pretrained_normalize(cfg: Config, source: dict[str, Any] | None) -> None:
    """Start weights (model.init_from, or torchvision's named backbone weights) fix the input
    normalisation they expect; a change of data.normalize is printed."""
    expected = pretrained_normalize(cfg, source)
    if expected is not None and expected[0] != cfg.data.normalize:
        say(f"data.normalize={expected[0]} (was {cfg.data.normalize}): {expected[1]} expects it")
        cfg.data.normalize = expected[0]


def build_training(cfg: Config, device: torch.device) -> Built:
    t = cfg.train
    torch.manual_seed(t.seed + D.rank())
    source = read_source(cfg.model.init_from) if cfg.model.init_from else None
    _use_pretrained_normalize(cfg, source)
    check_backbone_init(cfg)
    check_levels(cfg.model)  # before the data is read: fail fast
    if t.checkpoint_interval is not None and t.checkpoint_interval < 1:
        raise UserError(f"train.checkpoint_interval={t.checkpoint_interval} must be a number of iterations "
                        f">= 1, or null for checkpoints at the end of each epoch only")
    train_data = load_split(cfg, cfg.data.train_split)
    val_data = None if cfg.data.val_split == "none" else load_split(cfg, cfg.data.val_split)
    if val_data is None:
        say("no evaluation (data.val_split=none): best.pt is not written; last.pt is the final model")
    else:
        warn_shared_images(train_data, val_data)
        check_same_categories(train_data, val_data)
    _set_num_classes(cfg, train_data.class_names)
    model = build_model(cfg.model).to(device)
    if source is not None:
        report = init_from_checkpoint(model, source, class_names=train_data.class_names,
                                      path=cfg.model.init_from, model_config=cfg.to_dict()["model"])
        for line in report.lines():
            say(line)
        for note in report.notes:  # the weights compute something else here: loud, not a log line
            warn(f"init_from: {note}")
    if t.sync_bn and D.is_distributed():
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = training_model(model, t, device)  # same losses, faster: channels_last on the CPU
    ema = ModelEMA(model, decay=t.ema_decay, warmup_iters=t.ema_warmup_iters) if t.ema else None
    train_loader = make_loader(cfg, train_data, train=True)
    total_batch = cfg.data.batch_size * D.world_size()
    lr = t.lr * total_batch / t.base_batch  # linear scaling rule
    optimizer = build_optimizer(model, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay,
                                bias_lr_mult=t.bias_lr_mult, bias_decay_mult=t.bias_decay_mult,
                                kind=t.optimizer, fused=True)
    ipe = len(train_loader)
    total = ipe * t.epochs if t.max_iters is None else min(ipe * t.epochs, t.max_iters)
    schedule = WarmupSchedule(iters_per_epoch=ipe, total_iters=total, warmup=t.warmup,
                              warmup_iters=t.warmup_iters, warmup_ratio=t.warmup_ratio,
                              schedule=t.schedule, steps=tuple(t.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if t.amp != "none" and device.type != "cuda":
        raise UserError(f"train.amp={t.amp} needs a CUDA GPU; use train.amp=none on the CPU")
    scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None
    if D.is_distributed():
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    ctx = StepContext(model=model, criterion=build_criterion(cfg.model), optimizer=optimizer,
                      scheduler=scheduler, scaler=scaler, device=device, amp_dtype=AMP[t.amp],
                      grad_clip=t.grad_clip, ema=ema, channels_last=uses_channels_last(t, device))
    val_loader = make_loader(cfg, val_data, train=False) if val_data is not None else None
    return Built(ctx=ctx, train_loader=train_loader, val_loader=val_loader, val_data=val_data,
                 postprocessor=build_postprocessor(cfg.model, cfg.test),
                 class_names=train_data.class_names, category_ids=train_data.category_ids)


def _restore(b: Built, run_dir: Path) -> TrainState:
    state = load_checkpoint(run_dir / "last.pt")
    bare = b.ctx.model.module if hasattr(b.ctx.model, "module") else b.ctx.model
    bare.load_state_dict(state.get("raw_model", state["model"]))  # raw_model: written with EMA
    if b.ctx.ema is not None:
        if "raw_model" not in state:
            raise UserError(f"cannot resume {run_dir / 'last.pt'} with train.ema=true: it was trained "
                            f"without EMA; resume with --set train.ema=false")
        b.ctx.ema.load(state["model"], state["ema_updates"])
    b.ctx.optimizer.load_state_dict(state["optimizer"])
    b.ctx.scheduler.load_state_dict(state["scheduler"])
    if b.ctx.scaler is not None and state.get("scaler"):
        b.ctx.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    epoch_iter = int(state.get("epoch_iter", 0))
    where = f", {epoch_iter} batches into epoch {state['epoch'] + 1}" if epoch_iter else ""
    say(f"resumed {run_dir / 'last.pt'} at epoch {state['epoch']}, iteration {state['iteration']}{where}")
    return TrainState(epoch=state["epoch"], iteration=state["iteration"], epoch_iter=epoch_iter,
                      best_ap=state["best_ap"], history=state.get("history", []))


def train(cfg: Config, *, run_dir: Path, resume: bool = False, overwrite: bool = False) -> TrainState:
    device = D.init_from_env(cfg.train.device)
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    b = build_training(cfg, device)
    state = _restore(b, run_dir) if resume else TrainState()
    if D.is_main_process():
        save_config(cfg, run_dir / "config.yaml")
    logger = RunLogger(run_dir=run_dir, resume_iteration=state.iteration if resume else None)
    evaluator = (CocoEvaluator(records=b.val_data.records, class_names=b.class_names)
                 if b.val_data is not None else None)

    def report(metrics: dict[str, Any]) -> None:
        say(format_table(metrics))
        if D.is_main_process():
            save_metrics(metrics, run_dir / "metrics.json")
            update_run_report(run_dir, evaluator=evaluator)

    say(f"training {len(b.train_loader.dataset)} images, {cfg.train.epochs} epochs, "
        f"{len(b.train_loader)} iterations per epoch on {device} x{D.world_size()}{D.backend_note()} -> {run_dir}")
    try:
        fit(b.ctx, state, train_loader=b.train_loader, val_loader=b.val_loader,
            postprocessor=b.postprocessor, evaluator=evaluator, epochs=cfg.train.epochs,
            eval_interval=cfg.train.eval_interval, run_dir=run_dir, logger=logger,
            config=cfg.to_dict(), class_names=b.class_names, category_ids=b.category_ids,
            log_interval=cfg.train.log_interval,
            max_iters=cfg.train.max_iters, on_eval=report,
            checkpoint_interval=cfg.train.checkpoint_interval)
    finally:
        logger.close()
    if D.is_main_process():
        from .viz import plot_curves
        plot_curves(run_dir / "log.jsonl", run_dir / "curves.png")
        say(f"report: {update_run_report(run_dir)}")
    return state


def evaluate_checkpoint(checkpoint: Path, *, dataset: str | None, split: str, out_dir: Path | None,
                        batch_size: int = 2, workers: int = 2, test_sets: list[str] = (),
                        precision: str = "fp32", onnx_runtime: str = "onnxruntime") -> dict[str, Any]:
    """COCO metrics of a checkpoint; `test_sets` ("test.nms_iou=0.6") change the test settings."""
    from .predictor import Detector
    overrides = parse_sets(list(test_sets))
    for key in overrides:
        if not key.startswith("test."):
            raise UserError(f"eval --set takes test.* keys (test.nms_iou, test.score_thr, test.max_per_img, "
                            f"...), got {key!r}: the model's other settings come from the checkpoint")
    device = D.init_from_env("auto")
    # .pt / .safetensors through build_inference (BatchNorm folded: equal within float rounding); .onnx
    # through onnxruntime or OpenVINO
    det = Detector.from_file(checkpoint, device=str(device) if checkpoint.suffix != ".onnx" else "cpu",
                             test_overrides=overrides, precision=precision, onnx_runtime=onnx_runtime)
    cfg = det.config
    cfg.data.dataset = dataset or cfg.data.dataset
    cfg.data.batch_size, cfg.data.workers = batch_size, workers
    data = load_split(cfg, split)
    if data.class_names != det.class_names:
        raise UserError(f"the dataset's classes {data.class_names[:5]} differ from the checkpoint's "
                        f"{det.class_names[:5]}; evaluate on the dataset the model was trained for")
    evaluator = CocoEvaluator(records=data.records, class_names=data.class_names)
    metrics = evaluate(detect=det.detect, loader=make_loader(cfg, data, train=False), evaluator=evaluator)
    say(format_table(metrics))
    if out_dir is not None and D.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_metrics(metrics, out_dir / "metrics.json")
        # detections.json is read against the evaluated annotation file: its ids (COCO) where it has
        # them (the class names match the model's), else the model file's, else label + 1
        ids = data.category_ids if data.category_ids is not None else det.category_ids
        if det.category_ids is not None and ids != det.category_ids:
            say(f"detections.json uses the category ids of {data.source} ({ids[:5]}...), not the model "
                f"file's ({det.category_ids[:5]}...): same class names, numbered differently")
        evaluator.save_results(out_dir / "detections.json", category_ids=ids)
        say(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'detections.json'}")
        from .analysis.diagnostics import write_diagnostics
        diag = write_diagnostics(evaluator, out_dir)["paths"]
        say(f"wrote {diag['confusion_png'].name}, {diag.get('pr_png', Path('-')).name} (+ JSON) and "
            f"{len(diag['worst'])} worst images (ground truth | detections) to {out_dir}")
    return metrics


def _inference_device(device: str, model_file: Path) -> str:
    """--device auto: cuda when available (an .onnx file runs on the cpu)."""
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() and Path(model_file).suffix != ".onnx" else "cpu"


def export(checkpoint: Path, *, fmt: str, out: Path, overwrite: bool = False,
           test_sets: list[str] = ()) -> Path:
    """A checkpoint or weights file -> an ONNX graph, a torch.export program or safetensors weights."""
    from .export import check_out, export_model
    from .runtime import read_model_state
    check_out(out, fmt, overwrite=overwrite)  # before the slow part
    overrides = parse_sets(list(test_sets))
    for key in overrides:
        if not key.startswith("test."):
            raise UserError(f"export --set takes test.* keys (test.score_thr, test.nms_iou, ...), got {key!r}")
    parts = build_inference(read_model_state(checkpoint), overrides=overrides)
    export_model(parts, fmt, out, overwrite=overwrite)
    say(f"wrote {out} ({out.stat().st_size / 2 ** 20:.1f} MiB, {fmt}); load it with "
        f"fcosdet.Detector.from_file or `fcosdet predict {out} IMAGES`")
    return out


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


def _collect_images(sources: list[str]) -> list[Path]:
    paths: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            paths.append(p)
        else:
            raise UserError(f"{p} is neither an image file nor a folder; check the path")
    if not paths:
        raise UserError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found in {', '.join(sources)}")
    return paths


def _output_paths(paths: list[Path], out_dir: Path) -> list[Path]:
    """Where each drawn image goes: its path relative to the inputs' common folder, under
    `out_dir`, with `_det` before the suffix (a/x.jpg and b/x.jpg stay apart)."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    common = Path(os.path.commonpath([str(a.parent) for a in absolute]))
    outs = [out_dir / a.relative_to(common).with_name(f"{a.stem}_det{a.suffix}") for a in absolute]
    if len(set(outs)) != len(outs):
        raise UserError(f"two input images would be drawn to the same file under {out_dir}; give each "
                        f"image once")
    return outs


def _predict_chunk(det: Any, chunk: list[Path], skipped: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """Detections of a chunk of images; the images that cannot be decoded are left out and
    added to `skipped` (any other error stops as before)."""
    from .data.transforms import load_image
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


def predict(checkpoint: Path, sources: list[str], *, out_dir: Path, score_thr: float,
            draw_thr: float, batch_size: int = 4, device: str = "auto",
            precision: str = "fp32", onnx_runtime: str = "onnxruntime") -> list[dict[str, Any]]:
    """Detections of every image as COCO-style JSON (with file names) and drawn images."""
    from .data.transforms import load_image
    from .predictor import Detector
    from .viz import draw_detections
    for flag, value in (("--score-thr", score_thr), ("--draw-thr", draw_thr)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{flag} {value:g} is outside [0, 1]: it is a detection score threshold")
    paths = list({os.path.abspath(p): p for p in _collect_images(sources)}.values())  # each file once
    outputs = dict(zip(paths, _output_paths(paths, out_dir)))
    replaced = sum(o.exists() for o in [*outputs.values(), out_dir / "predictions.json"])
    skipped: list[Path] = []
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    det = Detector.from_file(checkpoint, device=_inference_device(device, checkpoint), score_thr=score_thr,
                             precision=precision, onnx_runtime=onnx_runtime)
    if not det.category_ids_saved:
        warn(f"{checkpoint} predates fcosdet saving each class's dataset category id: predictions.json "
             f"numbers the classes 1..{len(det.class_names)} (label + 1), which is wrong for a COCO dataset "
             f"with other ids; `fcosdet eval {checkpoint} --out DIR` writes its annotation file's ids")
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    for chunk in progress(chunks, total=len(chunks), desc="predict", enabled=D.is_main_process()):
        for path, d in _predict_chunk(det, chunk, skipped):
            for box, score, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
                x1, y1, x2, y2 = box
                results.append({"file_name": str(path), "category_id": det.category_id(label),
                                "category": det.class_names[label], "score": round(score, 5),
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]})
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


def assign_settings(cfg: Config) -> Any:
    """The config fields label assignment depends on, for the analysis tools."""
    from .analysis.assignment import AssignSettings
    m = cfg.model
    return AssignSettings(strides=tuple(m.strides), regress_ranges=tuple(tuple(r) for r in m.regress_ranges),
                          center_sampling=m.center_sampling, center_sample_radius=m.center_sample_radius,
                          scale=tuple(cfg.data.scale))


def _pick_records(data: DatasetSplit, images: list[str], count: int, where: str) -> list[Any]:
    """The records named by `images` (file names or paths), else the first `count`."""
    if not images:
        return data.records[:count]
    by_name = {Path(r.path).name: r for r in data.records}
    by_path = {str(Path(r.path).resolve()): r for r in data.records}
    picked = []
    for name in images:
        rec = by_path.get(str(Path(name).resolve())) or by_name.get(Path(name).name)
        if rec is None:
            raise UserError(f"image {name} is not in {where}; give a file name of that split "
                            f"(e.g. {Path(data.records[0].path).name}) or choose another --split")
        picked.append(rec)
    return picked


def show_targets(dataset: str, images: list[str], *, count: int, config: str, sets: list[str],
                 split: str, out_dir: Path) -> list[dict[str, Any]]:
    """Per image, the points each box gets on each level (figure + summary), as training assigns them."""
    from .analysis.targets_view import show_targets as draw_targets
    from .config import load_config
    cfg = load_config(config, sets)
    data = load_dataset_spec(dataset, split)
    if not data.records:
        raise UserError(f"split '{split}' of {dataset} has no images; choose another --split")
    settings = assign_settings(cfg)
    if cfg.data.multiscale_short:
        say(f"shown at the evaluation scale {tuple(cfg.data.scale)}; training also draws the short side "
            f"from {tuple(cfg.data.multiscale_short)}, which moves boxes between levels")
    results = draw_targets(_pick_records(data, images, count, f"split '{split}' of {dataset}"),
                           data.class_names, settings, out_dir)
    for r in results:
        say(r["summary"])
    say(f"wrote {len(results)} figures and summaries to {out_dir}")
    return results


def _dataset_format(dataset: str) -> str:
    from .data import detect_layout
    path = Path(dataset)
    if path.is_dir():
        return detect_layout(path) or "unknown"
    import yaml
    spec = yaml.safe_load(path.read_text()) or {}
    return f"{spec.get('format', 'yolo')} (dataset YAML {path.name})"


def _report_split(split: str, data: DatasetSplit, records: list[Any], dataset: str, cfg: Config,
                  config: str, *, draw: int, out_dir: Path | None) -> dict[str, Any]:
    """The dataset report of one split (printed), with --draw images written under out_dir."""
    from .analysis.data_report import draw_labels, format_report, split_report
    report = split_report(records, data.class_names, assign_settings(cfg))
    report["format"], report["source"] = _dataset_format(dataset), data.source
    say(format_report(report, fmt=report["format"], config=config))
    if draw and out_dir is not None:
        n = draw_labels(records, data.class_names, draw, out_dir / f"{split}_labels")
        say(f"  drew {n} images with their labels to {out_dir / f'{split}_labels'}")
    return report


def check_data(dataset: str, splits: list[str], *, skip_invalid: bool, config: str = "fcos_r50_1x",
               sets: list[str] = (), draw: int = 0, out_dir: Path | None = None) -> dict[str, Any]:
    """Decode and validate every split, then report its counts, box sizes and level assignment
    under `config`; `out_dir` gets report.json and PNG plots (and `draw` images with labels)."""
    from .config import load_config
    if draw and out_dir is None:
        raise UserError("check-data --draw needs --out DIR for the drawn images")
    cfg = load_config(config, list(sets))
    reports = {}
    for split in splits:
        data = load_dataset_spec(dataset, split, skip_invalid=skip_invalid,
                                 allow_outside_root=cfg.data.allow_outside_root)
        records, problems = verify_images(data.records, skip_invalid=skip_invalid, show_progress=True)
        problems = list(data.problems) + list(problems)
        boxes = sum(len(r.boxes) for r in records)
        clipped = f"; clipped {data.clipped} boxes to their image" if data.clipped else ""
        say(f"{split}: {len(records)} images, {boxes} boxes from {data.source}, {len(data.class_names)} "
            f"classes ({', '.join(data.class_names[:10])}){clipped}; {summarize_problems(problems)}")
        reports[split] = _report_split(split, data, records, dataset, cfg, config, draw=draw, out_dir=out_dir)
    if out_dir is not None and D.is_main_process():
        from .analysis.data_report import write_report
        written = write_report(reports, out_dir)
        say(f"wrote {', '.join(str(p) for p in written)}")
    return reports


def demo(*, run_dir: Path, data_dir: Path, epochs: int | None, overwrite: bool) -> dict[str, Any]:
    """The built-in demo: generate the shapes dataset, train the demo preset, evaluate,
    print the mAP table, write the loss curves and images with detections."""
    import time

    from .config import preset
    from .data.synthetic import ensure_synthetic_dataset
    cfg = preset("demo")
    info = ensure_synthetic_dataset(data_dir, image_size=(cfg.data.scale[1], cfg.data.scale[1]))
    how = "reused" if info["reused"] else f"generated in {info['seconds']:.1f} s"
    say(f"shapes dataset: {info['num_images']['train']} train / {info['num_images']['val']} val images "
        f"({', '.join(info['class_names'])}) in {data_dir} ({how})")
    cfg.data.dataset = info["yaml"]
    if epochs is not None:
        cfg.train.epochs = epochs
    start = time.perf_counter()
    train(cfg, run_dir=run_dir, overwrite=overwrite or run_dir.exists())
    minutes = (time.perf_counter() - start) / 60
    metrics = json.loads((run_dir / "metrics.json").read_text())
    val_images = sorted((data_dir / "images").glob("val_*.jpg"))[:8]
    predict(run_dir / "last.pt", [str(p) for p in val_images], out_dir=run_dir / "detections",
            score_thr=0.05, draw_thr=0.3)
    say(f"demo finished in {minutes:.1f} min: AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}. "
        f"Curves: {run_dir / 'curves.png'}; detections: {run_dir / 'detections'}")
    return metrics
