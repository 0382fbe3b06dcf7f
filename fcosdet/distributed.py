"""torch.distributed helpers shared by the loss, the engine and the evaluator."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def reduce_mean(value: Tensor) -> Tensor:
    """Mean of a tensor over all workers (the reference's `reduce_mean`); identity when alone."""
    if not is_distributed():
        return value
    value = value.clone()
    dist.all_reduce(value.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return value
