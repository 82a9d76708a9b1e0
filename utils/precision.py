"""Mixed precision: which precision a device gets, its autocast context and its gradient scaler.

- ``fp32``: no autocast, no scaler (CPUs by default).
- ``bf16``: ``torch.autocast(dtype=torch.bfloat16)``. bf16 has fp32's exponent range, so gradients
  do not underflow and need no scaling (Ampere and later GPUs; also works on CPUs).
- ``fp16``: ``torch.autocast(dtype=torch.float16)`` plus a ``GradScaler``: fp16's narrow range
  makes small gradients underflow to zero, so the loss is multiplied by a large factor before
  ``backward()`` and the gradients divided by it before the update (GPUs without bf16, e.g. the T4).

In every case the parameters (the "master weights") and the optimizer state stay in fp32; only
the forward and backward computations run in 16 bits where that is safe.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
AUTOCAST_DTYPES: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def cuda_has_native_bf16() -> bool:
    """Whether the current CUDA GPU has bf16 tensor cores (emulated bf16 does not count)."""
    # Recent torch reports bf16 as "supported" on pre-Ampere GPUs (e.g. the T4) because it can be
    # emulated -- slowly. Native bf16 tensor cores are what mixed precision needs.
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except (
        TypeError
    ):  # torch < 2.3 has no including_emulation and does not count emulation
        return torch.cuda.is_bf16_supported()


def resolve_precision(
    precision: str, device: torch.device, bf16_supported: bool | None = None
) -> str:
    """Turn ``"auto"|"fp32"|"bf16"|"fp16"`` into the precision actually used on ``device``.

    ``auto``: bf16 autocast on a CUDA GPU with native bf16 (Ampere and later), fp16 autocast with
    gradient scaling on older GPUs (e.g. Colab's T4), fp32 elsewhere. fp16 needs a CUDA device
    (its ``GradScaler`` path is CUDA-only here); bf16 autocast also works on the CPU.
    ``bf16_supported`` overrides the detection (for tests).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    if device.type != "cuda":
        if precision == "fp16":
            raise ValueError(
                f"precision='fp16' needs a CUDA device (device is {device}); "
                "use 'bf16' (CPU autocast) or 'fp32'"
            )
        return "fp32" if precision == "auto" else precision
    if bf16_supported is None:
        bf16_supported = cuda_has_native_bf16()
    if precision == "auto":
        return "bf16" if bf16_supported else "fp16"
    if precision == "bf16" and not bf16_supported:
        raise ValueError(
            "precision='bf16' but this GPU has no native bf16; use 'fp16' or 'auto'"
        )
    return precision


def autocast_dtype(
    device: torch.device | str,
    precision: str = "auto",
    bf16_supported: bool | None = None,
) -> torch.dtype | None:
    """The autocast dtype :func:`resolve_precision` picks on ``device``; ``None`` for fp32.

    With ``precision="auto"``: ``torch.bfloat16`` on a CUDA GPU with native bf16, ``torch.float16``
    on older GPUs (e.g. the T4; pair it with a ``GradScaler``), ``None`` elsewhere (the CPU
    trains in fp32). The one rule; :func:`utils.nb.autocast_dtype` calls it.
    """
    return AUTOCAST_DTYPES.get(resolve_precision(precision, device, bf16_supported))


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context the forward pass runs in: ``torch.autocast`` for bf16/fp16, nothing for fp32.

    ``precision`` is a resolved one (``"fp32"``, ``"bf16"`` or ``"fp16"``).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(
        device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[precision]
    )


def make_grad_scaler(device: torch.device, precision: str) -> Any:
    """A ``GradScaler`` for fp16, ``None`` otherwise (bf16 and fp32 need no loss scaling)."""
    if precision != "fp16":
        return None
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(torch.device(device).type)
    return torch.cuda.amp.GradScaler()  # torch < 2.3


def forget_unfinished_step(scaler: Any) -> None:
    """Let ``scaler`` start a fresh step after one was interrupted (e.g. Ctrl-C) between
    ``unscale_`` and ``update``, which would otherwise refuse to unscale again. The scale and
    its growth tracker stay as they are; ``None`` (no scaler) is fine."""
    if scaler is not None:
        getattr(scaler, "_per_optimizer_states", {}).clear()  # what update() ends with
