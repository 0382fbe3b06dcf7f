"""The training policy around the loop: epochs, when to evaluate, which weights to evaluate and
save (EMA), best / last / mid-epoch checkpoints, the record of evaluations, and stopping at a
signal (SIGINT / SIGTERM: finish the step, write a resumable last.pt, raise `TrainingStopped`).

    trainer = Trainer(ctx=ctx, train_loader=..., val_loader=..., postprocessor=..., evaluator=...,
                      logger=..., run_dir=run_dir, epochs=12, model_info={...})
    state = trainer.fit(TrainState())     # or a state restored from last.pt
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from fcosdet.distributed import any_rank, is_main_process, unwrap
from fcosdet.engine.checkpoint import rng_state
from fcosdet.engine.logging import RunLogger
from fcosdet.engine.loop import StepContext, TrainState, model_detect, run_evaluation, train_one_epoch
from fcosdet.io.model_file import ModelFile


def planned_iterations(iters_per_epoch: int, epochs: int, max_iters: int | None) -> int:
    """Optimizer steps a run takes: epochs x batches per epoch, cut at max_iters."""
    total = iters_per_epoch * epochs
    return total if max_iters is None else min(total, max_iters)


@dataclass
class StopRequest:
    """Set by `stop_on_signals` when SIGINT / SIGTERM arrives; the trainer reads it after every step."""
    signal_name: str | None = None


class TrainingStopped(Exception):
    """Training stopped at a StopRequest after writing last.pt at `state` (resumable)."""

    def __init__(self, state: TrainState, signal_name: str) -> None:
        super().__init__(signal_name)
        self.state, self.signal_name = state, signal_name


@contextlib.contextmanager
def stop_on_signals(request: StopRequest) -> Iterator[StopRequest]:
    """While training: the first SIGINT or SIGTERM asks the trainer to stop after the current step
    (a second SIGINT stops at once, as Ctrl-C does elsewhere); the handlers are restored after."""
    def handle(signum: int, frame: Any) -> None:
        request.signal_name = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C: KeyboardInterrupt
        if is_main_process():
            print(f"fcosdet: {request.signal_name}: finishing this step and writing a checkpoint "
                  f"(Ctrl-C again stops at once)", file=sys.stderr, flush=True)
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield request
        return
    previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@dataclass(kw_only=True)
class Trainer:
    """Epochs from state.epoch to `epochs`: train, evaluate every `eval_interval` epochs and at
    the end, then write last.pt (and best.pt when AP improved) atomically; with
    `checkpoint_interval`, last.pt also every that many iterations inside an epoch.

    The loader's sampler must have `set_epoch` (its order a function of the seed and epoch, e.g.
    `EpochSampler`), so that a resumed run trains on exactly the batches of an uninterrupted one;
    a mid-epoch resume (`state.epoch_iter` > 0) also needs its `skip_batches`."""
    ctx: StepContext
    train_loader: Any
    val_loader: Any | None  # None: no evaluation, no best.pt
    postprocessor: Callable
    evaluator: Any | None
    logger: RunLogger
    run_dir: Path
    epochs: int
    model_info: dict[str, Any]  # what every checkpoint carries besides weights: config, class_names, category_ids
    eval_interval: int = 1
    log_interval: int = 20
    max_iters: int | None = None
    checkpoint_interval: int | None = None
    on_eval: Callable[[dict[str, Any]], None] | None = None
    stop: StopRequest = field(default_factory=StopRequest)

    def fit(self, state: TrainState) -> TrainState:
        sampler = getattr(self.train_loader, "sampler", None)
        if not hasattr(sampler, "set_epoch"):
            raise TypeError("Trainer needs a train loader whose sampler has set_epoch (e.g. EpochSampler)")
        for epoch in range(state.epoch, self.epochs):
            sampler.set_epoch(epoch)  # the order of this epoch: a function of (seed, epoch)
            if state.epoch_iter:
                sampler.skip_batches(state.epoch_iter)  # resume inside the epoch
            train_one_epoch(self.ctx, self.train_loader, state, logger=self.logger,
                            log_interval=self.log_interval, max_iters=self.max_iters,
                            after_step=self._after_step)
            state.epoch, state.epoch_iter = epoch + 1, 0
            done = state.epoch == self.epochs or self._budget_spent(state)
            best = self._validate(state) if self._evaluates(state, done) else False
            self.save(state, best=best)
            if done:
                break
            if self._stop_requested():
                raise TrainingStopped(state, self.stop.signal_name or "stop")
        return state

    def planned_iterations(self) -> int:
        return planned_iterations(len(self.train_loader), self.epochs, self.max_iters)

    def _budget_spent(self, state: TrainState) -> bool:
        return self.max_iters is not None and state.iteration >= self.max_iters

    def _stop_requested(self) -> bool:
        return any_rank(self.stop.signal_name is not None, self.ctx.device)  # every worker stops at one step

    def _evaluates(self, state: TrainState, done: bool) -> bool:
        return self.val_loader is not None and (state.epoch % self.eval_interval == 0 or done)

    def _after_step(self, state: TrainState, last_batch: bool) -> None:
        """Mid-epoch last.pt every `checkpoint_interval` iterations, and at a stop request; the
        epoch's last batch is saved after the evaluation instead (and a stop follows that save)."""
        if last_batch:
            return
        if self._stop_requested():
            self.save(state, best=False)
            raise TrainingStopped(state, self.stop.signal_name or "stop")
        if self.checkpoint_interval and state.iteration % self.checkpoint_interval == 0:
            self.save(state, best=False)

    @property
    def inference_model(self) -> Any:
        """The weights evaluation and inference use: the EMA's when there is one."""
        return self.ctx.model if self.ctx.ema is None else self.ctx.ema.module

    def _validate(self, state: TrainState) -> bool:
        """Evaluate, log and record; True when the AP is the best so far."""
        detect = model_detect(model=self.inference_model, postprocessor=self.postprocessor,
                              device=self.ctx.device, amp_dtype=self.ctx.amp_dtype)
        metrics = run_evaluation(detect=detect, loader=self.val_loader, evaluator=self.evaluator)
        summary = {k: v for k, v in metrics.items() if isinstance(v, float)}
        state.history.append({"epoch": state.epoch, **summary})
        self.logger.log({"epoch": state.epoch, **summary}, step=state.iteration, prefix="val")
        ap = metrics.get("AP")
        best = ap is not None and not math.isnan(ap) and ap > state.best_ap
        if best:
            state.best_ap = ap
        if self.on_eval is not None:
            self.on_eval(metrics)
        return best

    def checkpoint(self, state: TrainState) -> ModelFile:
        """What last.pt / best.pt hold. With EMA, `model` (what inference loads) holds the
        averaged weights and `raw_model` the trained ones (what a resume continues from)."""
        ctx, bare = self.ctx, unwrap(self.ctx.model)
        return ModelFile(model=unwrap(self.inference_model).state_dict(),
                         raw_model=bare.state_dict() if ctx.ema is not None else None,
                         ema_updates=ctx.ema.num_updates if ctx.ema is not None else None,
                         optimizer=ctx.optimizer.state_dict(), scheduler=ctx.scheduler.state_dict(),
                         scaler=ctx.scaler.state_dict() if ctx.scaler is not None else None,
                         epoch=state.epoch, iteration=state.iteration, epoch_iter=state.epoch_iter,
                         best_ap=state.best_ap, history=state.history, rng=rng_state(), **self.model_info)

    def save(self, state: TrainState, *, best: bool) -> None:
        """last.pt (resumable); best.pt without the optimiser, schedule and RNG state (inference
        and fine-tuning read it; a resume continues from last.pt)."""
        if not is_main_process():
            return
        ckpt = self.checkpoint(state)
        ckpt.save(self.run_dir / "last.pt")
        if best:
            dataclasses.replace(ckpt, raw_model=None, ema_updates=None, optimizer=None, scheduler=None,
                                scaler=None, rng=None).save(self.run_dir / "best.pt")
