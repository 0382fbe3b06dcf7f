"""The training loop: one step, one epoch, one evaluation pass (the policy around them, when to
evaluate and what to save, is `engine.trainer.Trainer`).

Dimensions: B images per worker and step, D detections of one image. Everything here takes
built objects; `engine.build` turns the config into them.
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

from fcosdet.console import progress
from fcosdet.distributed import is_main_process, world_size
from fcosdet.engine.ema import ModelEMA
from fcosdet.engine.logging import RunLogger
from fcosdet.errors import UserError


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
                    after_step: Callable[[TrainState, bool], None] | None = None) -> None:
    """One pass over `loader` (which starts after `state.epoch_iter` batches on a mid-epoch
    resume), stopping early at `max_iters`; `after_step(state, last_batch_of_epoch)` runs after
    every optimizer step (the trainer's mid-epoch checkpoints)."""
    ctx.model.train()
    left = len(loader) if max_iters is None else max(0, min(len(loader), max_iters - state.iteration))
    bar = tqdm(loader, desc=f"epoch {state.epoch + 1}", total=left, disable=not is_main_process(),
               dynamic_ncols=True, leave=False, mininterval=1 if sys.stderr.isatty() else 30)
    seen, start = 0, time.perf_counter()
    epoch_batches = state.epoch_iter + len(loader)
    try:
        for batch in bar:
            if max_iters is not None and state.iteration >= max_iters:
                break
            terms = train_step(ctx, batch, state.iteration)
            state.iteration += 1
            state.epoch_iter += 1
            seen += len(batch.targets) * world_size()
            ips = seen / (time.perf_counter() - start)
            lr = ctx.optimizer.param_groups[0]["lr"]
            bar.set_postfix({**{k.removeprefix("loss_"): f"{v:.3f}" for k, v in terms.items()},
                             "lr": f"{lr:.2e}", "img/s": f"{ips:.1f}"}, refresh=False)
            if state.iteration % log_interval == 0 or state.iteration == 1:
                logger.log({"epoch": state.epoch + 1, "loss": sum(terms.values()), **terms, "lr": lr,
                            "images_per_s": ips}, step=state.iteration)
            if after_step is not None:  # after the log record: a checkpoint here never skips one
                after_step(state, state.epoch_iter == epoch_batches)
    finally:
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
def run_evaluation(*, detect: Detect, loader: Any, evaluator: Any) -> dict[str, Any]:
    """Detections of every image in `loader` (this worker's shard) -> evaluator metrics."""
    evaluator.reset()
    for batch in progress(loader, total=len(loader), desc="eval", enabled=is_main_process()):
        dets = detect(batch.images, [t["img_size"] for t in batch.targets],
                      [t["orig_size"] for t in batch.targets])
        evaluator.process([{"image_id": t["image_id"], **{k: v.cpu() for k, v in d.items()}}
                           for t, d in zip(batch.targets, dets)])
    return evaluator.evaluate()
