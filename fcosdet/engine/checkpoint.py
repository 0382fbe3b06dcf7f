"""Checkpoint RNG state: Python, numpy and torch generators as tensors and plain values, so
that a checkpoint stays readable with `torch.load(..., weights_only=True)` (numpy's state as a
tensor and plain numbers). Checkpoints themselves are `fcosdet.io.model_file.ModelFile`s.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


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
