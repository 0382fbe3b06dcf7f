"""Exponential moving average of the model's weights (torch.optim.swa_utils.AveragedModel).

After optimizer step t (t = 1, 2, ...), every floating-point parameter and buffer becomes

    ema_t = d_t * ema_{t-1} + (1 - d_t) * w_t,   d_t = decay * (1 - exp(-(t - 1) / warmup_iters))

with ema_1 = w_1 (AveragedModel copies the first weights). The warm-up keeps d_t small while
the weights move fast (the average follows them instead of remembering the random start);
d_t approaches `decay` after a few `warmup_iters` (warmup_iters = 0: d_t = decay from the
second step). Integer buffers (BatchNorm's num_batches_tracked) are copied, not averaged.
The averaged weights are what evaluation, best.pt and last.pt's "model" carry; the raw
weights stay in the optimizer's model for training and resume.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from fcosdet.distributed import unwrap
from fcosdet.errors import UserError


def ema_decay(step: int, *, decay: float, warmup_iters: int) -> float:
    """d_t for the update that follows `step` earlier averaged updates (step >= 1)."""
    if warmup_iters <= 0:
        return decay
    return decay * (1.0 - math.exp(-step / warmup_iters))


class ModelEMA:
    def __init__(self, model: nn.Module, *, decay: float, warmup_iters: int) -> None:
        if not 0.0 <= decay < 1.0:
            raise UserError(f"EMA decay (train.ema_decay) must be in [0, 1), got {decay}; 0.999 is usual")
        self.decay = decay
        self.warmup_iters = warmup_iters
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.requires_grad_(False)

    @torch.no_grad()
    def _average(self, ema: Sequence[Tensor], current: Sequence[Tensor], num_averaged: Tensor) -> None:
        """One group of same-dtype tensors: ema <- lerp(ema, current, 1 - d_t)."""
        d = ema_decay(int(num_averaged), decay=self.decay, warmup_iters=self.warmup_iters)
        if torch.is_floating_point(ema[0]):
            torch._foreach_lerp_(list(ema), list(current), 1.0 - d)
        else:
            for e, c in zip(ema, current, strict=True):
                e.copy_(c)

    @property
    def module(self) -> nn.Module:
        """The averaged model (an FCOS): evaluate and save this one."""
        return self.averaged.module

    @property
    def num_updates(self) -> int:
        return int(self.averaged.n_averaged)

    def update(self, model: nn.Module) -> None:
        """Average in the model's current weights (call after each optimizer step)."""
        self.averaged.update_parameters(unwrap(model))

    def load(self, weights: dict[str, Tensor], num_updates: int) -> None:
        """Restore from a checkpoint: the averaged weights and how many updates they hold."""
        self.module.load_state_dict(weights)
        self.averaged.n_averaged.fill_(num_updates)
