"""Run logging: a JSON-lines file and TensorBoard scalars, written by rank 0 only."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..distributed import is_main_process


class RunLogger:
    def __init__(self, *, run_dir: Path, tensorboard: bool = True) -> None:
        self.enabled = is_main_process()
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if self.enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, record: dict[str, Any], *, step: int, prefix: str = "train") -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"iter": step, **record}) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("iter", "epoch"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
