"""Checkpoints: written atomically with the user's umask, read with `weights_only=True`.

A checkpoint holds only tensors and plain Python values (dict, list, tuple, str, int, float,
bool, None), so `torch.load(..., weights_only=True)` reads it and nothing in the file can run
code. RNG states are stored in that form too (numpy's as a tensor and plain numbers).
"""
from __future__ import annotations

import errno
import io
import os
import pickle
import random
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError


def _temporary_file(path: Path) -> tuple[int, Path]:
    """A new file beside `path`, created with mode 0o666 minus the umask (like any output)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise UserError(f"cannot create a temporary file beside {path}; clean up {path.parent}")


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write `state` to a temporary file in the same folder, then rename it over `path`: a
    crash or a full disk leaves the previous `path` intact. A failed write is a UserError
    naming the file."""
    path = Path(path)
    # serialise in memory first: torch's zip writer turns a failed write (a full disk) into a
    # RuntimeError about stream positions, while a plain file write raises OSError (ENOSPC)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary_file(path)
    except OSError as exc:
        raise UserError(f"cannot write checkpoint {path} ({exc.strerror or exc}); choose a writable "
                        f"--run-dir") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        kept = f"the previous {path.name} is kept" if path.exists() else "no checkpoint was written"
        raise UserError(f"cannot write checkpoint {path} ({exc.strerror or exc}); {kept}. "
                        f"{'Free disk space' if full else 'Check the folder'} and rerun with --resume"
                        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The state dict of an fcosdet checkpoint, read with weights_only=True: a file holding
    anything but tensors and plain values is refused (no code from it runs)."""
    if not Path(path).is_file():
        raise UserError(f"checkpoint {path} does not exist; give a run folder's last.pt or best.pt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # a global outside torch's weights-only allow-list
        raise UserError(f"refusing checkpoint {path}: it holds Python objects other than tensors and "
                        f"plain values (which could run code when loaded), or it is damaged; fcosdet "
                        f"reads checkpoints with weights_only=True: use one written by this fcosdet "
                        f"version, from a source you trust") from None
    except Exception as exc:  # noqa: BLE001 - an unreadable checkpoint is the user's to fix
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot read checkpoint {path} ({first}); it may be truncated: "
                        f"use the run's other checkpoint (last.pt / best.pt)") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not an fcosdet checkpoint (no 'model' entry)")
    return state


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and plain values (weights_only-loadable)."""
    version, internal, gauss = random.getstate()  # (int, tuple of 625 ints, float | None)
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # keys (624,) uint32
    state: dict[str, Any] = {
        "python": [int(version), [int(v) for v in internal], gauss],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), int(n["pos"]),
                         int(n["has_gauss"]), float(n["cached_gaussian"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
