"""Checkpoint files and random-number-generator state, for runs that resume *exactly*.

A resumed run reproduces the uninterrupted one bit for bit only if everything that influences the
next step is restored: parameters, optimizer state (e.g. Adam's moments), the schedule's position,
the fp16 gradient scale, which data comes next, and the state of every random-number generator
(dropout masks, shuffling). :class:`utils.train.Trainer` assembles that state; this module writes
and reads it safely and captures / restores the generators.

Checkpoints hold only tensors and primitive containers (numbers, strings, lists, dicts), so they
load with ``torch.load(..., weights_only=True)``, which cannot run code hidden in a file.
"""

from __future__ import annotations

import os
import random
import warnings
from typing import Any

import numpy as np
import torch

from utils.atomic import atomic_path

CHECKPOINT_FORMAT = 1  # stored in every file; bump it when the layout changes


def seed_rngs(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict[str, Any]:
    """The state of every global random-number generator, as weights-only-loadable values.

    ``{"python": ..., "numpy": ..., "torch": uint8 tensor, "cuda": [uint8 tensor per GPU] | None}``.
    """
    numpy_state = np.random.get_state(
        legacy=False
    )  # dict; its key array -> list of ints
    numpy_state["state"] = {
        "key": numpy_state["state"]["key"].tolist(),
        "pos": int(numpy_state["state"]["pos"]),
    }
    return {
        "python": random.getstate(),  # (version, tuple of 625 ints, None): primitive already
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only on as many GPUs as were saved)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {
        "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
        "pos": numpy_state["state"]["pos"],
    }
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(
                f"checkpoint has CUDA RNG states for {len(cuda)} devices, this machine has "
                f"{torch.cuda.device_count()}: CUDA randomness is not restored",
                stacklevel=3,
            )


def save_atomically(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, then rename it: a crash leaves the old file or the new."""
    with atomic_path(path) as tmp_path:  # os.replace: atomic on POSIX and Windows
        torch.save(obj, tmp_path)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint onto the CPU with ``weights_only=True`` and check its format number."""
    path = os.fspath(path)
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if (
        not isinstance(checkpoint, dict)
        or checkpoint.get("format") != CHECKPOINT_FORMAT
    ):
        raise ValueError(
            f"{path} is not a utils.train checkpoint (format {CHECKPOINT_FORMAT})"
        )
    return checkpoint
