"""What the CLI's sub-commands do: config -> objects -> engine. The only readers of Config."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import distributed as D
from .build import build_criterion, build_model, build_postprocessor
from .config import Config, apply_overrides, parse_sets, save_config
from .data import (DetectionDataset, build_loader, build_transforms, load_dataset_spec, summarize_problems,
                   verify_images)
from .data.records import DatasetSplit
from .engine.checkpoint import load_checkpoint, set_rng_state
from .engine.evaluator import CocoEvaluator, format_table, save_metrics
from .engine.logging import RunLogger
from .engine.optim import WarmupSchedule, build_optimizer
from .engine.trainer import StepContext, TrainState, evaluate, fit
from .errors import UserError

AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def say(*args: Any) -> None:
    if D.is_main_process():
        print(*args, flush=True)


def load_split(cfg: Config, split: str) -> DatasetSplit:
    if not cfg.data.dataset:
        raise UserError("no dataset given; pass --data PATH (a dataset YAML or a COCO/VOC/YOLO folder) "
                        "or set data.dataset in the config")
    data = load_dataset_spec(cfg.data.dataset, split, skip_invalid=cfg.data.skip_invalid)
    if cfg.data.skip_invalid:  # decode every image now, so a truncated one is dropped, not fatal later
        data.records, undecodable = verify_images(data.records, skip_invalid=True)
        data.problems.extend(undecodable)
    if data.problems:
        say(f"{split}: {summarize_problems(data.problems)}")
    return data


def make_loader(cfg: Config, data: DatasetSplit, *, train: bool) -> Any:
    d = cfg.data
    transform = build_transforms(train=train, scale=d.scale, multiscale_short=d.multiscale_short,
                                 flip_prob=d.flip_prob, normalize=d.normalize)
    dataset = DetectionDataset(data, transforms=transform)
    sampler = None
    if D.is_distributed():
        sampler = torch.utils.data.DistributedSampler(dataset, shuffle=train, seed=cfg.train.seed,
                                                      drop_last=False)
    return build_loader(dataset, batch_size=d.batch_size, shuffle=train, num_workers=d.workers,
                        sampler=sampler, drop_last=False, seed=cfg.train.seed + D.rank())


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """A run folder that exists is never overwritten without --resume or --overwrite."""
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
        run_dir.mkdir(parents=True, exist_ok=True)
    D.barrier()


@dataclass
class Built:
    """Everything `train` builds from the config."""
    ctx: StepContext
    train_loader: Any
    val_loader: Any
    val_data: DatasetSplit
    postprocessor: Any
    class_names: list[str]


def _set_num_classes(cfg: Config, class_names: list[str]) -> None:
    if cfg.model.num_classes != len(class_names):
        say(f"model.num_classes set to {len(class_names)} from the dataset ({', '.join(class_names[:8])}"
            f"{', ...' if len(class_names) > 8 else ''})")
        cfg.model.num_classes = len(class_names)


def build_training(cfg: Config, device: torch.device) -> Built:
    t = cfg.train
    torch.manual_seed(t.seed + D.rank())
    train_data, val_data = load_split(cfg, cfg.data.train_split), load_split(cfg, cfg.data.val_split)
    _set_num_classes(cfg, train_data.class_names)
    model = build_model(cfg.model).to(device)
    if t.sync_bn and D.is_distributed():
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_loader = make_loader(cfg, train_data, train=True)
    total_batch = cfg.data.batch_size * D.world_size()
    lr = t.lr * total_batch / t.base_batch  # linear scaling rule
    optimizer = build_optimizer(model, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay,
                                bias_lr_mult=t.bias_lr_mult, bias_decay_mult=t.bias_decay_mult,
                                kind=t.optimizer)
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
                      grad_clip=t.grad_clip)
    return Built(ctx=ctx, train_loader=train_loader, val_loader=make_loader(cfg, val_data, train=False),
                 val_data=val_data, postprocessor=build_postprocessor(cfg.model, cfg.test),
                 class_names=train_data.class_names)


def _restore(b: Built, run_dir: Path) -> TrainState:
    state = load_checkpoint(run_dir / "last.pt")
    bare = b.ctx.model.module if hasattr(b.ctx.model, "module") else b.ctx.model
    bare.load_state_dict(state["model"])
    b.ctx.optimizer.load_state_dict(state["optimizer"])
    b.ctx.scheduler.load_state_dict(state["scheduler"])
    if b.ctx.scaler is not None and state.get("scaler"):
        b.ctx.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    say(f"resumed {run_dir / 'last.pt'} at epoch {state['epoch']}, iteration {state['iteration']}")
    return TrainState(epoch=state["epoch"], iteration=state["iteration"], best_ap=state["best_ap"],
                      history=state.get("history", []))


def train(cfg: Config, *, run_dir: Path, resume: bool = False, overwrite: bool = False) -> TrainState:
    device = D.init_from_env(cfg.train.device)
    prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    b = build_training(cfg, device)
    state = _restore(b, run_dir) if resume else TrainState()
    if D.is_main_process():
        save_config(cfg, run_dir / "config.yaml")
    logger = RunLogger(run_dir=run_dir)
    evaluator = CocoEvaluator(records=b.val_data.records, class_names=b.class_names)

    def report(metrics: dict[str, Any]) -> None:
        say(format_table(metrics))
        if D.is_main_process():
            save_metrics(metrics, run_dir / "metrics.json")

    say(f"training {len(b.train_loader.dataset)} images, {cfg.train.epochs} epochs, "
        f"{len(b.train_loader)} iterations per epoch on {device} x{D.world_size()}{D.backend_note()} -> {run_dir}")
    try:
        fit(b.ctx, state, train_loader=b.train_loader, val_loader=b.val_loader,
            postprocessor=b.postprocessor, evaluator=evaluator, epochs=cfg.train.epochs,
            eval_interval=cfg.train.eval_interval, run_dir=run_dir, logger=logger,
            config=cfg.to_dict(), class_names=b.class_names, log_interval=cfg.train.log_interval,
            max_iters=cfg.train.max_iters, on_eval=report)
    finally:
        logger.close()
    if D.is_main_process():
        from .viz import plot_curves
        plot_curves(run_dir / "log.jsonl", run_dir / "curves.png")
    return state


def evaluate_checkpoint(checkpoint: Path, *, dataset: str | None, split: str, out_dir: Path | None,
                        batch_size: int = 2, workers: int = 2, test_sets: list[str] = ()) -> dict[str, Any]:
    """COCO metrics of a checkpoint; `test_sets` ("test.nms_iou=0.6") change the test settings."""
    from .predictor import config_from_checkpoint
    overrides = parse_sets(list(test_sets))
    for key in overrides:
        if not key.startswith("test."):
            raise UserError(f"eval --set takes test.* keys (test.nms_iou, test.score_thr, test.max_per_img, "
                            f"...), got {key!r}: the model's other settings come from the checkpoint")
    device = D.init_from_env("auto")
    state = load_checkpoint(checkpoint)
    cfg = apply_overrides(config_from_checkpoint(state), overrides)
    cfg.data.dataset = dataset or cfg.data.dataset
    cfg.data.batch_size, cfg.data.workers, cfg.model.backbone_weights = batch_size, workers, None
    data = load_split(cfg, split)
    if data.class_names != state["class_names"]:
        raise UserError(f"the dataset's classes {data.class_names[:5]} differ from the checkpoint's "
                        f"{state['class_names'][:5]}; evaluate on the dataset the model was trained for")
    model = build_model(cfg.model).to(device)
    model.load_state_dict(state["model"])
    evaluator = CocoEvaluator(records=data.records, class_names=data.class_names)
    metrics = evaluate(model=model, postprocessor=build_postprocessor(cfg.model, cfg.test),
                       loader=make_loader(cfg, data, train=False), evaluator=evaluator, device=device)
    say(format_table(metrics))
    if out_dir is not None and D.is_main_process():
        out_dir.mkdir(parents=True, exist_ok=True)
        save_metrics(metrics, out_dir / "metrics.json")
        evaluator.save_results(out_dir / "detections.json")
        say(f"wrote {out_dir / 'metrics.json'} and {out_dir / 'detections.json'}")
    return metrics


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


def predict(checkpoint: Path, sources: list[str], *, out_dir: Path, score_thr: float,
            draw_thr: float, batch_size: int = 4) -> list[dict[str, Any]]:
    """Detections of every image as COCO-style JSON (with file names) and drawn images."""
    from .data.transforms import load_image
    from .predictor import Detector
    from .viz import draw_detections
    paths = _collect_images(sources)
    det = Detector.from_checkpoint(checkpoint, device="cuda" if torch.cuda.is_available() else "cpu",
                                   score_thr=score_thr)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i in range(0, len(paths), batch_size):
        chunk = paths[i:i + batch_size]
        for path, d in zip(chunk, det.predict_batch(chunk)):
            for box, score, label in zip(d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist()):
                x1, y1, x2, y2 = box
                results.append({"file_name": str(path), "category_id": label + 1,
                                "category": det.class_names[label], "score": round(score, 5),
                                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]})
            drawn = draw_detections(load_image(path), boxes=d["boxes"], labels=d["labels"],
                                    scores=d["scores"], class_names=det.class_names, score_thr=draw_thr)
            drawn.save(out_dir / f"{path.stem}_det.jpg", quality=90)
    (out_dir / "predictions.json").write_text(json.dumps(results))
    say(f"{len(results)} detections on {len(paths)} images -> {out_dir / 'predictions.json'} "
        f"and {out_dir}/*_det.jpg")
    return results


def check_data(dataset: str, splits: list[str], *, skip_invalid: bool) -> None:
    for split in splits:
        data = load_dataset_spec(dataset, split, skip_invalid=skip_invalid)
        records, problems = verify_images(data.records, skip_invalid=skip_invalid)
        problems = list(data.problems) + list(problems)
        boxes = sum(len(r.boxes) for r in records)
        say(f"{split}: {len(records)} images, {boxes} boxes, {len(data.class_names)} classes "
            f"({', '.join(data.class_names[:10])}); {summarize_problems(problems)}")


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
