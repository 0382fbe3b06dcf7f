"""torch.distributed helpers shared by the criterion, the engine and the evaluator."""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor, nn

from fcosdet.errors import UserError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def reduce_mean(value: Tensor) -> Tensor:
    """Mean of a tensor over all workers (the reference's `reduce_mean`); identity when alone."""
    if not is_distributed():
        return value
    value = value.clone()
    dist.all_reduce(value.div_(dist.get_world_size()), op=dist.ReduceOp.SUM)
    return value


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when `flag` is True on any worker (all of them call it at the same point)."""
    if not is_distributed():
        return flag
    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def init_from_env(device: str = "auto", *, timeout_s: float = 600.0) -> torch.device:
    """Join the process group when launched by torchrun (WORLD_SIZE, LOCAL_RANK, ...), and
    pick this worker's device: NCCL with cuda:LOCAL_RANK on GPUs, gloo on the CPU.

    A worker that dies makes torchrun stop the others; a collective that waits longer than
    `timeout_s` raises instead of hanging.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise UserError(f"train.device {device!r} is not one of auto, cpu, cuda, cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device is {device!r} but no CUDA GPU is visible; use train.device=cpu")
    # torchrun sets TORCHELASTIC_RUN_ID: a 1-worker launch joins a process group too
    launched = int(os.environ.get("WORLD_SIZE", 1)) > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and not is_distributed():
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group("nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    if not use_cuda:
        return torch.device("cpu")
    index = local_rank if is_distributed() else (torch.device(device).index or 0 if device != "auto" else 0)
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def backend_note() -> str:
    """' (nccl)' / ' (gloo)' when in a process group, '' when alone."""
    return f" ({dist.get_backend()})" if is_distributed() else ""


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
