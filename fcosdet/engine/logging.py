"""Run logging: a JSON-lines file and TensorBoard scalars, written by rank 0 only."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fcosdet.distributed import is_main_process
from fcosdet.errors import UserError


def truncate_log(path: Path, *, last_iteration: int) -> int:
    """Drop the records of `path` logged after iteration `last_iteration` (a resumed run logs
    them again); returns how many were dropped. A torn last line (a kill mid-write) goes too."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and record.get("iter", 0) > last_iteration:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
    return dropped


class RunLogger:
    """`resume_iteration`: the iteration of the checkpoint a resumed run starts from; records
    (and TensorBoard events) after it, left by the interrupted run, are dropped."""

    def __init__(self, *, run_dir: Path, tensorboard: bool = True, resume_iteration: int | None = None) -> None:
        self.enabled = is_main_process()
        self.path = run_dir / "log.jsonl"
        self.tb = None
        if self.enabled and resume_iteration is not None:
            truncate_log(self.path, last_iteration=resume_iteration)
        if self.enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            purge = None if resume_iteration is None else resume_iteration + 1
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, record: dict[str, Any], *, step: int, prefix: str = "train") -> None:
        if not self.enabled:
            return
        try:
            with self.path.open("a") as f:
                f.write(json.dumps({"iter": step, **record}) + "\n")
        except OSError as exc:
            raise UserError(f"cannot write {self.path} ({exc.strerror or exc}); the last checkpoint is "
                            f"intact: free space or fix the folder, then rerun with --resume") from None
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("iter", "epoch"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
