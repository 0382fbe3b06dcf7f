"""Config -> the objects training runs (the engine side of `build`): the splits, the model
(initialised from `model.init_from` when given, SyncBN / DDP when distributed), the optimiser
with the linear lr scaling rule, the warmup + decay schedule, AMP and EMA; and a resume from
last.pt back into them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcosdet import distributed as D
from fcosdet.config import Config
from fcosdet.console import say, warn
from fcosdet.data.build import load_split, make_loader, warn_shared_images
from fcosdet.data.records import DatasetSplit
from fcosdet.data.validate import check_same_categories
from fcosdet.engine.checkpoint import set_rng_state
from fcosdet.engine.ema import ModelEMA
from fcosdet.engine.evaluation.coco import CocoEvaluator
from fcosdet.engine.finetune import init_from_checkpoint, pretrained_normalize, read_source
from fcosdet.engine.loop import StepContext, TrainState
from fcosdet.engine.optim import WarmupSchedule, build_optimizer
from fcosdet.engine.trainer import Trainer, planned_iterations
from fcosdet.errors import UserError
from fcosdet.io.model_file import ModelFile
from fcosdet.model.build import (
    build_criterion,
    build_model,
    build_postprocessor,
    check_levels,
    training_model,
    uses_channels_last,
)

AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
LOG_POINTS = 100  # log at least this many points per run (train.log_interval is the longest gap)


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


def use_pretrained_normalize(cfg: Config, source: ModelFile | None) -> None:
    """Start weights (model.init_from, or torchvision's named backbone weights) fix the input
    normalisation they expect; a change of data.normalize is printed."""
    expected = pretrained_normalize(cfg, source)
    if expected is not None and expected[0] != cfg.data.normalize:
        say(f"data.normalize={expected[0]} (was {cfg.data.normalize}): {expected[1]} expects it")
        cfg.data.normalize = expected[0]


def _read_splits(cfg: Config) -> tuple[DatasetSplit, DatasetSplit | None]:
    """The train split and the val split (None with data.val_split=none); num_classes from the data."""
    train_data = load_split(cfg, cfg.data.train_split, training=True)
    val_data = None if cfg.data.val_split == "none" else load_split(cfg, cfg.data.val_split, training=True)
    if val_data is None:
        say("no evaluation (data.val_split=none): best.pt is not written; last.pt is the final model")
    else:
        warn_shared_images(train_data, val_data)
        check_same_categories(train_data, val_data)
    names = train_data.class_names
    if cfg.model.num_classes != len(names):
        say(f"model.num_classes set to {len(names)} from the dataset ({', '.join(names[:8])}"
            f"{', ...' if len(names) > 8 else ''})")
        cfg.model.num_classes = len(names)
    return train_data, val_data


def _initialise(model: nn.Module, source: ModelFile, cfg: Config, class_names: list[str]) -> None:
    report = init_from_checkpoint(model, source, class_names=class_names, path=cfg.model.init_from,
                                  model_config=cfg.to_dict()["model"])
    for line in report.lines():
        say(line)
    for note in report.notes:  # the weights compute something else here: loud, not a log line
        warn(f"init_from: {note}")


def _optimization(cfg: Config, model: nn.Module, iters_per_epoch: int) -> tuple[Any, Any]:
    """The optimiser (lr scaled linearly from train.base_batch to the real batch) and its schedule."""
    t = cfg.train
    lr = t.lr * cfg.data.batch_size * D.world_size() / t.base_batch  # linear scaling rule
    optimizer = build_optimizer(model, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay,
                                bias_lr_mult=t.bias_lr_mult, bias_decay_mult=t.bias_decay_mult,
                                kind=t.optimizer, fused=True)
    schedule = WarmupSchedule(iters_per_epoch=iters_per_epoch,
                              total_iters=planned_iterations(iters_per_epoch, t.epochs, t.max_iters), warmup=t.warmup,
                              warmup_iters=t.warmup_iters, warmup_ratio=t.warmup_ratio,
                              schedule=t.schedule, steps=tuple(t.steps))
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _check_train_settings(cfg: Config, device: torch.device) -> None:
    t = cfg.train
    check_levels(cfg.model)  # before the data is read: fail fast
    if t.checkpoint_interval is not None and t.checkpoint_interval < 1:
        raise UserError(f"train.checkpoint_interval={t.checkpoint_interval} must be a number of iterations "
                        f">= 1, or null for checkpoints at the end of each epoch only")
    if t.amp != "none" and device.type != "cuda":
        raise UserError(f"train.amp={t.amp} needs a CUDA GPU; use train.amp=none on the CPU")


def build_training(cfg: Config, device: torch.device) -> Built:
    t = cfg.train
    torch.manual_seed(t.seed + D.rank())
    source = read_source(cfg.model.init_from) if cfg.model.init_from else None
    use_pretrained_normalize(cfg, source)
    check_backbone_init(cfg)
    _check_train_settings(cfg, device)
    train_data, val_data = _read_splits(cfg)
    model = build_model(cfg.model).to(device)
    if source is not None:
        _initialise(model, source, cfg, train_data.class_names)
    if t.sync_bn and D.is_distributed():
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = training_model(model, t, device)  # same losses, faster: channels_last on the CPU
    ema = ModelEMA(model, decay=t.ema_decay, warmup_iters=t.ema_warmup_iters) if t.ema else None
    train_loader = make_loader(cfg, train_data, train=True)
    optimizer, scheduler = _optimization(cfg, model, len(train_loader))
    if D.is_distributed():
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    ctx = StepContext(model=model, criterion=build_criterion(cfg.model), optimizer=optimizer,
                      scheduler=scheduler, scaler=torch.amp.GradScaler("cuda") if t.amp == "fp16" else None,
                      device=device, amp_dtype=AMP[t.amp], grad_clip=t.grad_clip, ema=ema,
                      channels_last=uses_channels_last(t, device))
    val_loader = make_loader(cfg, val_data, train=False) if val_data is not None else None
    return Built(ctx=ctx, train_loader=train_loader, val_loader=val_loader, val_data=val_data,
                 postprocessor=build_postprocessor(cfg.model, cfg.test),
                 class_names=train_data.class_names, category_ids=train_data.category_ids)


def restore(b: Built, path: Path) -> TrainState:
    """Weights, EMA, optimiser, schedule, scaler and RNG of last.pt back into `b`; its TrainState."""
    mf = ModelFile.load(path)
    D.unwrap(b.ctx.model).load_state_dict(mf.raw_model or mf.model)  # raw_model: written with EMA
    if b.ctx.ema is not None:
        if mf.raw_model is None:
            raise UserError(f"cannot resume {path} with train.ema=true: it was trained "
                            f"without EMA; resume with --set train.ema=false")
        b.ctx.ema.load(mf.model, mf.ema_updates)
    if mf.optimizer is None:
        raise UserError(f"cannot resume {path}: it holds no optimiser state (a best.pt or an exported / "
                        f"imported file); resume from the run's last.pt")
    b.ctx.optimizer.load_state_dict(mf.optimizer)
    b.ctx.scheduler.load_state_dict(mf.scheduler)
    if b.ctx.scaler is not None and mf.scaler:
        b.ctx.scaler.load_state_dict(mf.scaler)
    set_rng_state(mf.rng)
    epoch_iter = int(mf.epoch_iter or 0)
    where = f", {epoch_iter} batches into epoch {mf.epoch + 1}" if epoch_iter else ""
    say(f"resumed {path} at epoch {mf.epoch}, iteration {mf.iteration}{where}")
    return TrainState(epoch=mf.epoch, iteration=mf.iteration, epoch_iter=epoch_iter,
                      best_ap=mf.best_ap, history=mf.history or [])


def build_trainer(cfg: Config, b: Built, *, run_dir: Path, logger: Any,
                  on_eval: Any = None) -> Trainer:
    """The training policy of a config over the built objects."""
    t = cfg.train
    evaluator = (CocoEvaluator(records=b.val_data.records, class_names=b.class_names)
                 if b.val_data is not None else None)
    planned = planned_iterations(len(b.train_loader), t.epochs, t.max_iters)
    log_interval = max(1, min(t.log_interval, planned // LOG_POINTS))  # a short run still draws a curve
    return Trainer(ctx=b.ctx, train_loader=b.train_loader, val_loader=b.val_loader,
                   postprocessor=b.postprocessor, evaluator=evaluator, logger=logger, run_dir=run_dir,
                   epochs=t.epochs, eval_interval=t.eval_interval, log_interval=log_interval,
                   max_iters=t.max_iters, checkpoint_interval=t.checkpoint_interval, on_eval=on_eval,
                   model_info={"config": cfg.to_dict(), "class_names": b.class_names,
                               "category_ids": b.category_ids})
