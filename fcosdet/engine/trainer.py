"""The training loop (one screen), evaluation, and the epoch driver around them.

Dimensions: B images per worker and step. Everything here takes built objects; the CLI turns
the config into them.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm import tqdm

from ..distributed import is_main_process, world_size
from ..errors import UserError
from ..progress import progress
from .checkpoint import rng_state, save_atomic
from .ema import ModelEMA
from .logging import RunLogger


class NonFiniteLossError(UserError):
    """A loss became NaN or infinite; the message names the iteration and the batch's images."""


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    iteration: int = 0  # optimizer steps taken
    epoch_iter: int = 0  # batches done in the unfinished epoch `epoch` (a mid-epoch checkpoint)
    best_ap: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)  # evaluation results per epoch


@dataclass(kw_only=True)
class StepContext:
    """What one training step needs besides the batch."""
    model: nn.Module
    criterion: Callable[..., dict[str, torch.Tensor]]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    device: torch.device
    amp_dtype: torch.dtype | None
    grad_clip: float | None
    ema: ModelEMA | None = None  # averaged weights, updated after every optimizer step
    channels_last: bool = False  # images to channels_last (the model's weights are: build.training_model)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def train_step(ctx: StepContext, batch: Any, iteration: int) -> dict[str, float]:
    batch = batch.to(ctx.device, non_blocking=True)
    images = batch.images.contiguous(memory_format=torch.channels_last) if ctx.channels_last else batch.images
    with autocast(ctx.device, ctx.amp_dtype):
        outputs = ctx.model(images)  # (B, 3, H, W)
    losses = ctx.criterion(outputs, batch.targets)  # float32: the criterion casts
    loss = sum(losses.values())
    # one wait for the device per step (not one per term and one for the check): the values of
    # the terms serve both the finiteness check and the log
    values = dict(zip(losses, torch.stack([v.detach() for v in losses.values()]).tolist()))
    if not all(math.isfinite(v) for v in values.values()):
        names = ", ".join(Path(t["path"]).name for t in batch.targets)
        terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        raise NonFiniteLossError(
            f"non-finite loss at iteration {iteration + 1} ({terms}) on images {names}; the last "
            f"checkpoint is intact. Lower train.lr, keep train.grad_clip, check these images' boxes, "
            f"or use train.amp=bf16 instead of fp16")
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.unscale_(ctx.optimizer)
    else:
        loss.backward()
    if ctx.grad_clip:
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), ctx.grad_clip)
    if ctx.scaler is not None:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        ctx.optimizer.step()
    ctx.scheduler.step()
    if ctx.ema is not None:
        ctx.ema.update(ctx.model)
    return values


def train_one_epoch(ctx: StepContext, loader: Any, state: TrainState, *, logger: RunLogger,
                    log_interval: int = 20, max_iters: int | None = None,
                    checkpoint_interval: int | None = None,
                    save_checkpoint: Callable[[], None] | None = None) -> None:
    """One pass over `loader` (which starts after `state.epoch_iter` batches on a mid-epoch
    resume); every `checkpoint_interval` iterations `save_checkpoint()` writes last.pt, except
    at the epoch's last batch, whose checkpoint follows the evaluation."""
    ctx.model.train()
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}", disable=not is_main_process(),
               dynamic_ncols=True, leave=False, mininterval=1 if sys.stderr.isatty() else 30)
    seen, start = 0, time.perf_counter()
    epoch_batches = state.epoch_iter + len(loader)
    for batch in bar:
        if max_iters is not None and state.iteration >= max_iters:
            break
        terms = train_step(ctx, batch, state.iteration)
        state.iteration += 1
        state.epoch_iter += 1
        if (checkpoint_interval and save_checkpoint is not None and state.iteration % checkpoint_interval == 0
                and state.epoch_iter < epoch_batches):
            save_checkpoint()
        seen += len(batch.targets) * world_size()
        ips = seen / (time.perf_counter() - start)
        lr = ctx.optimizer.param_groups[0]["lr"]
        bar.set_postfix({**{k.removeprefix("loss_"): f"{v:.3f}" for k, v in terms.items()},
                         "lr": f"{lr:.2e}", "img/s": f"{ips:.1f}"}, refresh=False)
        if state.iteration % log_interval == 0 or state.iteration == 1:
            logger.log({"epoch": state.epoch + 1, "loss": sum(terms.values()), **terms, "lr": lr,
                        "images_per_s": ips}, step=state.iteration)
    bar.close()


# images (B, 3, Hp, Wp), resized (h, w) and original (H, W) of each image -> per image boxes
# (D, 4) in the original frame, scores (D,), labels (D,)
Detect = Callable[[torch.Tensor, list, list], list[dict[str, torch.Tensor]]]


def model_detect(*, model: nn.Module, postprocessor: Callable, device: torch.device,
                 amp_dtype: torch.dtype | None = None) -> Detect:
    """The training model + post-processor as a `Detect` (a Detector's `detect` is another)."""
    def detect(images: torch.Tensor, image_sizes: list, orig_sizes: list) -> list[dict[str, torch.Tensor]]:
        model.eval()
        with autocast(device, amp_dtype):
            outputs = model(images.to(device, non_blocking=True))
        return postprocessor(outputs, image_sizes, orig_sizes)
    return detect


@torch.no_grad()
def evaluate(*, detect: Detect, loader: Any, evaluator: Any) -> dict[str, Any]:
    """Detections of every image in `loader` (this worker's shard) -> evaluator metrics."""
    evaluator.reset()
    for batch in progress(loader, total=len(loader), desc="eval", enabled=is_main_process()):
        dets = detect(batch.images, [t["img_size"] for t in batch.targets],
                      [t["orig_size"] for t in batch.targets])
        evaluator.process([{"image_id": t["image_id"], **{k: v.cpu() for k, v in d.items()}}
                           for t, d in zip(batch.targets, dets)])
    return evaluator.evaluate()


def checkpoint_state(*, model: nn.Module, ctx: StepContext, state: TrainState,
                     config: dict[str, Any], class_names: list[str],
                     category_ids: list[int] | None = None) -> dict[str, Any]:
    """What last.pt / best.pt hold; `category_ids` (the dataset's id of each label, None for
    datasets without ids) is the key imported model files carry too: results files write it."""
    bare = model.module if hasattr(model, "module") else model
    # with EMA, "model" (what inference loads) holds the averaged weights, "raw_model" the
    # trained ones (what a resume continues from)
    ema = {} if ctx.ema is None else {"raw_model": bare.state_dict(), "ema_updates": ctx.ema.num_updates}
    weights = bare.state_dict() if ctx.ema is None else ctx.ema.module.state_dict()
    return {"model": weights, **ema, "optimizer": ctx.optimizer.state_dict(),
            "scheduler": ctx.scheduler.state_dict(),
            "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else None,
            "epoch": state.epoch, "iteration": state.iteration, "epoch_iter": state.epoch_iter,
            "best_ap": state.best_ap,
            "history": state.history, "rng": rng_state(), "config": config,
            "class_names": class_names, "category_ids": category_ids}


def is_better(metrics: dict[str, Any], state: TrainState) -> bool:
    ap = metrics.get("AP")
    return ap is not None and not math.isnan(ap) and ap > state.best_ap


def save_checkpoints(run_dir: Path, ckpt: dict[str, Any], *, best: bool) -> None:
    if not is_main_process():
        return
    save_atomic(ckpt, run_dir / "last.pt")
    if best:
        save_atomic(ckpt, run_dir / "best.pt")


def fit(ctx: StepContext, state: TrainState, *, train_loader: Any, val_loader: Any | None,
        postprocessor: Callable, evaluator: Any | None, epochs: int, eval_interval: int,
        run_dir: Path, logger: RunLogger, config: dict[str, Any], class_names: list[str],
        category_ids: list[int] | None = None, log_interval: int = 20, max_iters: int | None = None,
        on_eval: Callable[[dict[str, Any]], None] | None = None,
        checkpoint_interval: int | None = None) -> TrainState:
    """Epochs from state.epoch to `epochs`: train, evaluate every `eval_interval` epochs and at
    the end, then write last.pt (and best.pt when AP improved) atomically; with
    `checkpoint_interval`, last.pt also every that many iterations.

    The loader's sampler must have `set_epoch` (its order a function of the seed and epoch, e.g.
    `EpochSampler`), so that a resumed run trains on exactly the batches of an uninterrupted one;
    a mid-epoch resume (`state.epoch_iter` > 0) also needs its `skip_batches`."""
    sampler = getattr(train_loader, "sampler", None)
    if not hasattr(sampler, "set_epoch"):
        raise TypeError("fit() needs a train loader whose sampler has set_epoch (e.g. EpochSampler)")

    def save_mid_epoch() -> None:
        save_checkpoints(run_dir, checkpoint_state(model=ctx.model, ctx=ctx, state=state, config=config,
                                                   class_names=class_names, category_ids=category_ids),
                         best=False)

    for epoch in range(state.epoch, epochs):
        sampler.set_epoch(epoch)  # the order of this epoch: a function of (seed, epoch)
        if state.epoch_iter:
            sampler.skip_batches(state.epoch_iter)  # resume inside the epoch
        train_one_epoch(ctx, train_loader, state, logger=logger, log_interval=log_interval,
                        max_iters=max_iters, checkpoint_interval=checkpoint_interval,
                        save_checkpoint=save_mid_epoch)
        state.epoch, state.epoch_iter = epoch + 1, 0
        done = state.epoch == epochs or (max_iters is not None and state.iteration >= max_iters)
        best = False
        if val_loader is not None and (state.epoch % eval_interval == 0 or done):
            detect = model_detect(model=ctx.model if ctx.ema is None else ctx.ema.module,
                                  postprocessor=postprocessor, device=ctx.device, amp_dtype=ctx.amp_dtype)
            metrics = evaluate(detect=detect, loader=val_loader, evaluator=evaluator)
            summary = {k: v for k, v in metrics.items() if isinstance(v, float)}
            state.history.append({"epoch": state.epoch, **summary})
            logger.log({"epoch": state.epoch, **summary}, step=state.iteration, prefix="val")
            best = is_better(metrics, state)
            if best:
                state.best_ap = metrics["AP"]
            if on_eval is not None:
                on_eval(metrics)
        save_checkpoints(run_dir, checkpoint_state(model=ctx.model, ctx=ctx, state=state, config=config,
                                                   class_names=class_names, category_ids=category_ids),
                         best=best)
        if done:
            break
    return state
