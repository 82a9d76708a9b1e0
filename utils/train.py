"""One training loop for every chapter.

The pieces, from the bottom up:

- **Loss functions** are plain callables ``loss_fn(model, batch) -> (loss, metrics, n_tokens)``:
  ``loss`` is a scalar tensor (a *mean*), ``metrics`` a dict of floats (also means) and
  ``n_tokens`` the number of predictions the mean is over. :func:`lm_loss` (next-token prediction)
  and :func:`classification_loss` are provided; write your own with the same signature.
- :func:`evaluate` averages a loss function over batches, weighting each batch by ``n_tokens``.
- :class:`TrainConfig` holds every knob of a run, validated; :class:`Trainer` runs it:
  gradient accumulation, clipping, mixed precision, a schedule, evaluation, throughput and MFU,
  a progress bar, and checkpoints that resume *exactly* (same losses, same parameters).
- :class:`History` records the run (what the plots read) and travels inside checkpoints.

Learning-rate schedules (``warmup_cosine``, ``step_decay``, ``inverse_sqrt``) live in
:mod:`utils.optim`, next to the teaching optimizers; pass one as ``Trainer(..., scheduler=...)``.

**Data, and why resume is exact.** ``Trainer.fit(train_batches)`` takes either

1. a function ``batch_at(i) -> batch`` of the *micro-batch index* ``i = 0, 1, 2, ...`` (optimizer
   step ``s`` (counted from 0) uses micro-batches ``s * grad_accum_steps + j`` for
   ``j < grad_accum_steps``). Make it deterministic, e.g. seed a ``torch.Generator`` with ``i``;
   on resume the trainer simply continues at the next index. This is the recommended form.
2. or a re-iterable collection of batches (a list, a ``DataLoader``, any object whose
   ``__iter__`` starts again from the beginning). It is cycled: when it runs out, a new pass
   starts. On resume the trainer skips the micro-batches already consumed (lists and tuples by
   index; other iterables by reading and discarding them). Exact resume then needs the order to
   be the same every time the object is re-created, e.g. a ``DataLoader`` with ``shuffle=False`` or
   with its own seeded ``generator=``. A one-shot iterator (a generator) works for a single run,
   but raises an error when it runs out.

The random-number generators (Python, NumPy, torch CPU and CUDA) are restored *after* that
skipping, so dropout and any other randomness continue exactly where the checkpoint left them.

**Steps** are counted from 1 in :class:`History`: ``history.steps[i]`` is the number of optimizer
updates done, ``history.train_loss[i]`` the loss of the batch that update was computed from, and an
evaluation record at step ``s`` is taken after ``s`` updates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import random
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

__all__ = [
    "PEAK_FLOPS",
    "PRECISIONS",
    "History",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "classification_loss",
    "evaluate",
    "lm_loss",
    "logits_of",
    "move_to_device",
    "peak_flops_for",
    "resolve_device",
    "resolve_precision",
    "training_flops_per_token",
]

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT_FORMAT = 1

# Dense (no structured sparsity) tensor-core peaks in FLOP/s at 16-bit precision: bf16 where the
# GPU has it, fp16 otherwise (T4, V100). From NVIDIA's datasheets, which quote the sparse figure
# (2x) first: A100 312 TFLOP/s bf16; H100 SXM 989 (1979 sparse), H100 PCIe 756 (1513 sparse);
# H200 989 (same compute as H100 SXM); L4 121 (242 sparse); L40S 362 (733 sparse); A10 125
# (250 sparse); T4 65 fp16 (mixed precision); V100 SXM2 125 fp16, V100 PCIe 112.
# Keys are matched as whole words against torch.cuda.get_device_name(), more specific keys first.
PEAK_FLOPS: dict[str, float] = {
    "H100 PCIE": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "A10": 125e12,
    "T4": 65e12,
    "V100 PCIE": 112e12,
    "V100": 125e12,
}


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or gradient norm); ``step`` says when.

    Raised *before* the optimizer step, so the parameters are still those of the previous step.
    """

    def __init__(self, step: int, value: float, quantity: str = "loss") -> None:
        self.step, self.value, self.quantity = step, value, quantity
        super().__init__(
            f"non-finite training {quantity} ({value}) at step {step}. Usual causes: a learning "
            "rate too high (lower it or lengthen the warm-up), no gradient clipping "
            "(set clip_grad_norm), or fp16 overflow (use bf16 or fp32)."
        )


# --------------------------------------------------------------------------------------------
# Small helpers: argument checks, devices, precision, FLOPs
# --------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        allowed = "an int or None" if optional else "an int"
        raise TypeError(f"{name} must be {allowed}, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_positive_float(name: str, value: Any, optional: bool = True) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number or None, got {value!r}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA, else Apple MPS, else CPU; an explicit device is checked.

    The same rule as the notebooks use (:func:`utils.nb.pick_device`).
    """
    from utils.nb import pick_device

    return pick_device("auto" if device is None else device)


def _cuda_has_native_bf16() -> bool:
    # Recent torch reports bf16 as "supported" on pre-Ampere GPUs (e.g. the T4) because it can be
    # emulated -- slowly. Native bf16 tensor cores are what mixed precision needs.
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3 has no including_emulation and does not count emulation
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
        bf16_supported = _cuda_has_native_bf16()
    if precision == "auto":
        return "bf16" if bf16_supported else "fp16"
    if precision == "bf16" and not bf16_supported:
        raise ValueError("precision='bf16' but this GPU has no native bf16; use 'fp16' or 'auto'")
    return precision


def peak_flops_for(device_name: str) -> float | None:
    """Dense 16-bit tensor-core peak (FLOP/s) for a GPU name, or ``None`` if unknown.

    >>> peak_flops_for("NVIDIA A100-SXM4-80GB")
    312000000000000.0
    """
    if not isinstance(device_name, str):
        raise TypeError(f"device_name must be a str, got {type(device_name).__name__}")
    words = " " + re.sub(r"[^A-Z0-9]+", " ", device_name.upper()) + " "
    for key, flops in PEAK_FLOPS.items():
        if f" {key} " in words:
            return flops
    return None


def training_flops_per_token(
    n_params: int, n_layers: int = 0, d_model: int = 0, seq_len: int = 0
) -> float:
    """Approximate training FLOPs per token: ``6 N + 12 L d T`` (Kaplan et al. 2020; PaLM, app. B).

    ``6 N``: 2 FLOPs per parameter per token for the forward pass (a multiply and an add) and
    twice that for the backward pass. ``12 L d T``: the attention scores and the weighted sum of
    values, which grow with the context length ``T`` (leave ``n_layers`` at 0 to ignore them).
    Use ``N`` without the embedding matrix if it is not tied to the output layer.
    """
    for name, value in (
        ("n_params", n_params),
        ("n_layers", n_layers),
        ("d_model", d_model),
        ("seq_len", seq_len),
    ):
        _check_int(name, value, 0)
    return 6.0 * n_params + 12.0 * n_layers * d_model * seq_len


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) tuple / list / dict to ``device``; other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    return batch


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _exp_or_inf(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


# --------------------------------------------------------------------------------------------
# Loss functions: loss_fn(model, batch) -> (mean loss, metrics, n_tokens)
# --------------------------------------------------------------------------------------------


def logits_of(output: Any) -> torch.Tensor:
    """The logits in a model's output.

    A tensor is returned as is; from a tuple or list the *first* element is taken (e.g. an LSTM
    language model returning ``(logits, state)``); an object with a ``.logits`` attribute (a
    Hugging Face model output) gives that attribute.
    """
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    elif not isinstance(output, torch.Tensor) and hasattr(output, "logits"):
        output = output.logits
    if not isinstance(output, torch.Tensor):
        raise TypeError(
            "the model must return logits as a tensor, a tuple/list whose first element is the "
            f"logits, or an object with .logits; got {type(output).__name__}"
        )
    return output


def _unpack(batch: Any, sizes: tuple[int, ...], what: str) -> Sequence[Any]:
    if isinstance(batch, (tuple, list)) and len(batch) in sizes:
        return batch
    got = f"a {type(batch).__name__}"
    if isinstance(batch, (tuple, list)):
        got += f" of length {len(batch)}"
    raise TypeError(f"{what}; got {got}")


def lm_loss(
    model: torch.nn.Module, batch: Sequence[torch.Tensor], ignore_index: int = -100
) -> tuple[torch.Tensor, dict[str, float], int]:
    """Next-token cross-entropy, averaged over target tokens.

    ``batch = (x, y)`` with ``x`` the input ids ``[B, T]`` and ``y`` the targets ``[B, T]`` (``x``
    shifted left by one); ``model(x)`` gives logits ``[B, T, V]`` (see :func:`logits_of` for tuple
    outputs). Targets equal to ``ignore_index`` (padding) count neither in the loss nor in
    ``n_tokens``; use ``functools.partial(lm_loss, ignore_index=pad_id)`` to set it.

    Returns ``(loss, {"accuracy": next-token top-1 accuracy}, n_tokens)``.
    """
    inputs, targets = _unpack(
        batch, (2,), "lm_loss expects batch = (inputs [B, T], targets [B, T])"
    )
    logits = logits_of(model(inputs))
    if logits.dim() != 3 or logits.shape[:2] != targets.shape:
        raise ValueError(
            f"lm_loss expects logits [B, T, V] matching targets [B, T]; got logits "
            f"{tuple(logits.shape)} and targets {tuple(targets.shape)}"
        )
    flat_logits = logits.reshape(-1, logits.size(-1)).float()  # the softmax in fp32
    flat_targets = targets.reshape(-1)
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index)
    counted = flat_targets != ignore_index
    n_tokens = int(counted.sum().item())
    if n_tokens == 0:
        raise ValueError(f"lm_loss: every target in the batch equals ignore_index={ignore_index}")
    correct = (flat_logits.detach().argmax(dim=-1) == flat_targets) & counted
    return loss, {"accuracy": correct.sum().item() / n_tokens}, n_tokens


def classification_loss(
    model: torch.nn.Module, batch: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, float], int]:
    """Cross-entropy for sequence classification, averaged over examples.

    ``batch = (x, labels)`` -> ``model(x)``, or ``batch = (x, lengths, labels)`` ->
    ``model(x, lengths)`` (e.g. a packed LSTM); ``x`` is ``[B, L]``, ``labels`` ``[B]`` and the
    logits ``[B, C]`` (see :func:`logits_of` for tuple outputs).

    Returns ``(loss, {"accuracy": ...}, B)``: a classifier makes one prediction per example, so
    ``n_tokens`` counts examples (and the trainer's "tokens/s" is then examples/s).
    """
    batch = _unpack(
        batch, (2, 3), "classification_loss expects batch = (x, labels) or (x, lengths, labels)"
    )
    *inputs, labels = batch
    logits = logits_of(model(*inputs))
    if logits.dim() != 2 or labels.dim() != 1 or logits.size(0) != labels.size(0):
        raise ValueError(
            f"classification_loss expects logits [B, C] and labels [B]; got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.detach().argmax(dim=-1) == labels).float().mean().item()
    return loss, {"accuracy": accuracy}, int(labels.numel())


def _is_lm_loss(loss_fn: Callable) -> bool:
    while isinstance(loss_fn, functools.partial):
        loss_fn = loss_fn.func
    return loss_fn is lm_loss


def _call_loss_fn(loss_fn: Callable, model: Any, batch: Any) -> tuple[torch.Tensor, dict, int]:
    result = loss_fn(model, batch)
    if not (isinstance(result, tuple) and len(result) == 3):
        raise TypeError("loss_fn(model, batch) must return (loss, metrics: dict, n_tokens: int)")
    loss, metrics, n_tokens = result
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"loss_fn must return a scalar tensor as loss, got {loss!r:.80}")
    if not isinstance(metrics, dict):
        raise TypeError(f"loss_fn must return a dict of metrics, got {type(metrics).__name__}")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 1:
        raise TypeError(f"loss_fn must return n_tokens as a positive int, got {n_tokens!r}")
    return loss, metrics, n_tokens


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable = lm_loss,
    max_batches: int | None = None,
    perplexity: bool | None = None,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Average ``loss_fn`` over ``batches`` (at most ``max_batches``), in eval mode, without grads.

    Each batch's loss and metrics are weighted by its ``n_tokens``, so the result is the mean
    over all tokens (examples, for classification), not the mean of batch means. ``perplexity``
    (``exp`` of the mean loss) is added for language-model losses: ``None`` means "if ``loss_fn``
    is :func:`lm_loss` or a ``functools.partial`` of it". Batches are moved to ``device`` (default:
    the device of the model's first parameter). Every module's train/eval mode is restored.

    Returns ``{"loss": ..., <metrics>..., ["perplexity": ...], "n_tokens": total}``.
    """
    _check_int("max_batches", max_batches, 1, optional=True)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        loss_sum, total, metric_sums = 0.0, 0, {}
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            loss, metrics, n_tokens = _call_loss_fn(loss_fn, model, move_to_device(batch, device))
            loss_sum += float(loss) * n_tokens
            total += n_tokens
            for name, value in metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + float(value) * n_tokens
    finally:
        for module, was_training in modes.items():
            module.training = was_training
    if total == 0:
        raise ValueError("evaluate: batches is empty")
    result = {"loss": loss_sum / total}
    result.update({name: value / total for name, value in metric_sums.items()})
    if perplexity if perplexity is not None else _is_lm_loss(loss_fn):
        result["perplexity"] = _exp_or_inf(result["loss"])
    result["n_tokens"] = total
    return result


# --------------------------------------------------------------------------------------------
# Configuration and history
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything about a run except the model, optimizer, schedule and data. Validated on creation.

    Attributes:
        max_steps: optimizer steps to train for (a resumed run continues up to this number).
        grad_accum_steps: micro-batches per optimizer step; each micro-batch loss is scaled by
            ``1 / grad_accum_steps`` so the gradient is the mean over the micro-batches.
        clip_grad_norm: clip the global gradient L2 norm to this value; ``None``: no clipping
            (the norm is recorded either way).
        precision: ``"auto" | "fp32" | "bf16" | "fp16"``; see :func:`resolve_precision`.
        compile: wrap the model with ``torch.compile`` for the forward passes.
        eval_every: evaluate every this many steps (and after the last step) when ``fit`` gets
            ``eval_batches``; ``None``: only after the last step.
        eval_max_batches: at most this many evaluation batches per evaluation (``None``: all).
        log_every: print a one-line summary every this many steps (``None``: never).
        checkpoint_path: file to save checkpoints to (and resume from).
        checkpoint_every: also save every this many steps (a final checkpoint is always saved
            when ``checkpoint_path`` is set).
        resume: if ``checkpoint_path`` exists when ``fit`` starts, resume from it.
        seed: seed Python, NumPy and torch when a fresh (not resumed) run starts; ``None``: don't.
            Seed *before* building the model as well, for reproducible initial weights.
        device: ``None``/``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ...
        flops_per_token: training FLOPs per token (see :func:`training_flops_per_token`); with a
            peak, gives the model-FLOPs utilisation (MFU).
        peak_flops: the hardware peak in FLOP/s; ``None``: looked up in :data:`PEAK_FLOPS` on CUDA.
        progress: show a tqdm progress bar.
    """

    max_steps: int
    grad_accum_steps: int = 1
    clip_grad_norm: float | None = 1.0
    precision: str = "auto"
    compile: bool = False
    eval_every: int | None = None
    eval_max_batches: int | None = None
    log_every: int | None = None
    checkpoint_path: str | None = None
    checkpoint_every: int | None = None
    resume: bool = True
    seed: int | None = 0
    device: str | None = None
    flops_per_token: float | None = None
    peak_flops: float | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        _check_int("max_steps", self.max_steps, 1)
        _check_int("grad_accum_steps", self.grad_accum_steps, 1)
        _check_positive_float("clip_grad_norm", self.clip_grad_norm)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("compile", "resume", "progress"):
            _check_bool(name, getattr(self, name))
        for name in ("eval_every", "eval_max_batches", "log_every", "checkpoint_every"):
            _check_int(name, getattr(self, name), 1, optional=True)
        if self.checkpoint_path is not None:
            if not isinstance(self.checkpoint_path, (str, os.PathLike)):
                raise TypeError(
                    f"checkpoint_path must be a path or None, got {self.checkpoint_path!r}"
                )
            self.checkpoint_path = os.fspath(self.checkpoint_path)
        elif self.checkpoint_every is not None:
            raise ValueError("checkpoint_every is set but checkpoint_path is None")
        if self.seed is not None:
            _check_int("seed", self.seed, 0)
        if self.device is not None:
            if isinstance(self.device, torch.device):
                self.device = str(self.device)
            if not isinstance(self.device, str):
                raise TypeError(f"device must be a str or None, got {self.device!r}")
            if self.device != "auto":
                try:
                    device = torch.device(self.device)
                except (RuntimeError, TypeError) as err:
                    raise ValueError(f"device={self.device!r} is not a torch device") from err
                if self.precision == "fp16" and device.type != "cuda":
                    raise ValueError(
                        f"precision='fp16' needs a CUDA device, got device={self.device!r}; "
                        "use 'bf16' or 'fp32'"
                    )
        _check_positive_float("flops_per_token", self.flops_per_token)
        _check_positive_float("peak_flops", self.peak_flops)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class History:
    """What happened during training; plots read the lists directly.

    Per optimizer step (all lists have the same length): ``steps`` (1, 2, ...), ``train_loss``
    (mean over the step's micro-batches), ``lr`` (of the first parameter group, as used by the
    step), ``grad_norm`` (global L2 norm before clipping), ``tokens_per_s``, ``mfu`` (``None``
    when unknown), ``time`` (seconds since training started, summed over resumed runs) and
    ``train_metrics`` (name -> list, e.g. ``"accuracy"``). ``eval`` is a list of records
    ``{"step": s, "loss": ..., "perplexity": ..., ...}``; ``eval_steps`` / ``eval_loss`` /
    :meth:`eval_metric` give them as lists.
    """

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    mfu: list[float | None] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    train_metrics: dict[str, list[float]] = field(default_factory=dict)
    eval: list[dict[str, float]] = field(default_factory=list)

    @property
    def eval_steps(self) -> list[int]:
        return [record["step"] for record in self.eval]

    @property
    def eval_loss(self) -> list[float]:
        return self.eval_metric("loss")

    def eval_metric(self, name: str) -> list[float | None]:
        """One evaluation metric over time (``None`` where a record lacks it)."""
        return [record.get(name) for record in self.eval]

    def __len__(self) -> int:
        return len(self.steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and dicts of numbers: JSON-able and loadable with ``weights_only=True``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"History.from_dict: unknown keys {sorted(unknown)}")
        return cls(
            **{
                key: list(value) if isinstance(value, list) else dict(value)
                for key, value in data.items()
            }
        )


# --------------------------------------------------------------------------------------------
# Training data: batch_at(i) or a re-iterable collection, with exact skipping on resume
# --------------------------------------------------------------------------------------------


class _MicroBatches:
    """Hands out micro-batch ``i = 0, 1, 2, ...`` from a function or a (cycled) iterable."""

    def __init__(self, source: Any) -> None:
        self.source, self.index = source, 0
        self._iterator: Iterator | None = None
        if callable(source) and not isinstance(source, Iterable):
            self.kind = "function"
        elif isinstance(source, Sequence) and not isinstance(source, (str, bytes)):
            if len(source) == 0:
                raise ValueError("train_batches is empty")
            self.kind = "sequence"
        elif isinstance(source, Iterable):
            self.kind = "iterable"
        else:
            raise TypeError(
                "train_batches must be a function batch_at(i) -> batch or a re-iterable "
                f"collection of batches (list, DataLoader); got {type(source).__name__}"
            )

    def skip_to(self, index: int) -> None:
        """Continue at micro-batch ``index`` (resume). Iterables are read and discarded."""
        if self.kind == "iterable":
            while self.index < index:
                self.next()
        self.index = index

    def next(self) -> Any:
        index = self.index
        self.index += 1
        if self.kind == "function":
            return self.source(index)
        if self.kind == "sequence":
            return self.source[index % len(self.source)]
        if self._iterator is None:
            self._iterator = iter(self.source)
        try:
            return next(self._iterator)
        except StopIteration:
            pass
        if iter(self.source) is self.source:  # a one-shot iterator (e.g. a generator)
            raise ValueError(
                f"train_batches ran out after {index} micro-batches; it is a one-shot iterator. "
                "Pass a re-iterable (list, DataLoader) or a function batch_at(i) instead."
            ) from None
        self._iterator = iter(self.source)  # a new pass (epoch)
        try:
            return next(self._iterator)
        except StopIteration:
            raise ValueError("train_batches is empty") from None


def _check_reiterable(batches: Any) -> None:
    if not isinstance(batches, Iterable) or iter(batches) is batches:
        raise TypeError(
            "eval_batches must be re-iterable (a list or a DataLoader): it is read at every "
            f"evaluation; got {type(batches).__name__}"
        )


# --------------------------------------------------------------------------------------------
# Checkpoint helpers: only tensors and primitive containers, so weights_only=True can load them
# --------------------------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state(legacy=False)  # dict; its key array -> list of ints
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


def _set_rng_state(state: dict[str, Any]) -> None:
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


def _save_atomically(obj: dict[str, Any], path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp_path = f"{path}.tmp.{os.getpid()}"
    try:
        torch.save(obj, tmp_path)
        os.replace(tmp_path, path)  # atomic: a crash leaves the old checkpoint or the new one
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


class Trainer:
    """Train ``model`` with ``optimizer`` on ``loss_fn`` according to ``config``.

    ``scheduler`` (optional) is stepped once per optimizer step, after it. The model is moved to
    the configured device (the optimizer keeps working: parameters are moved in place). After
    construction, ``trainer.device`` and ``trainer.precision`` say what was chosen.

    >>> trainer = Trainer(model, optimizer, lm_loss, TrainConfig(max_steps=100), scheduler)
    >>> history = trainer.fit(batch_at, eval_batches=val_batches)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable,
        config: TrainConfig,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {loss_fn!r}")
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if scheduler is not None and not hasattr(scheduler, "state_dict"):
            raise TypeError(f"scheduler must be a torch LR scheduler or None, got {scheduler!r}")

        self.config, self.optimizer, self.loss_fn, self.scheduler = (
            config,
            optimizer,
            loss_fn,
            scheduler,
        )
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.model = model.to(self.device)
        # The compiled wrapper runs the forward passes; checkpoints save the original module, so
        # their keys have no "_orig_mod." prefix and load into an uncompiled model.
        self.forward_model = torch.compile(model) if config.compile else model
        self.scaler = self._make_grad_scaler() if self.precision == "fp16" else None
        self.peak_flops = config.peak_flops
        if self.peak_flops is None and self.device.type == "cuda":
            self.peak_flops = peak_flops_for(torch.cuda.get_device_name(self.device))
        self.step = 0  # optimizer steps done
        self.micro_batches_consumed = 0
        self.history = History()

    def _make_grad_scaler(self) -> Any:
        if hasattr(torch.amp, "GradScaler"):
            return torch.amp.GradScaler(self.device.type)
        return torch.cuda.amp.GradScaler()  # torch < 2.3

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=_AUTOCAST_DTYPES[self.precision])

    # ---- evaluation ------------------------------------------------------------------------

    def evaluate(self, eval_batches: Iterable[Any]) -> dict[str, float]:
        """:func:`evaluate` with this trainer's model, loss, precision and ``eval_max_batches``."""
        with self._autocast():
            return evaluate(
                self.forward_model,
                eval_batches,
                self.loss_fn,
                max_batches=self.config.eval_max_batches,
                perplexity=_is_lm_loss(self.loss_fn),
                device=self.device,
            )

    # ---- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> str:
        """Write model, optimizer, scheduler, scaler, step, history, RNG states and config."""
        path = os.fspath(path if path is not None else self.config.checkpoint_path)
        if not path:
            raise ValueError("save_checkpoint: no path given and config.checkpoint_path is None")
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "micro_batches_consumed": self.micro_batches_consumed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "history": self.history.to_dict(),
            "config": self.config.to_dict(),
            "rng": _rng_state(),
        }
        _save_atomically(checkpoint, path)
        return path

    def load_checkpoint(
        self, path: str | os.PathLike | None = None, restore_rng: bool = True
    ) -> dict[str, Any]:
        """Load a checkpoint written by :meth:`save_checkpoint` into this trainer.

        Uses ``torch.load(..., weights_only=True)``: the file can only contain tensors and
        primitive containers, so loading cannot run arbitrary code. ``fit`` calls this itself
        (with ``restore_rng=False``, restoring the RNG states after skipping consumed data).
        Returns the raw checkpoint dict.
        """
        path = os.fspath(path if path is not None else self.config.checkpoint_path)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a utils.train checkpoint (format {CHECKPOINT_FORMAT})")
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if (checkpoint["scheduler"] is None) != (self.scheduler is None):
            raise ValueError(
                "the checkpoint and this trainer disagree on having a scheduler "
                f"(checkpoint: {checkpoint['scheduler'] is not None}, trainer: "
                f"{self.scheduler is not None}); build the trainer as the saved run was built"
            )
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint["grad_scaler"] is not None:
            self.scaler.load_state_dict(checkpoint["grad_scaler"])
        saved_accum = checkpoint["config"].get("grad_accum_steps")
        if saved_accum != self.config.grad_accum_steps:
            warnings.warn(
                f"grad_accum_steps changed from {saved_accum} to {self.config.grad_accum_steps}: "
                "training continues, but not exactly as the original run would have",
                stacklevel=2,
            )
        self.step = int(checkpoint["step"])
        self.micro_batches_consumed = int(checkpoint["micro_batches_consumed"])
        self.history = History.from_dict(checkpoint["history"])
        if restore_rng:
            _set_rng_state(checkpoint["rng"])
        return checkpoint

    # ---- training --------------------------------------------------------------------------

    def fit(self, train_batches: Any, eval_batches: Iterable[Any] | None = None) -> History:
        """Train up to ``config.max_steps`` optimizer steps and return the :class:`History`.

        ``train_batches``: a function ``batch_at(i)`` of the micro-batch index, or a re-iterable
        collection (see the module docstring). ``eval_batches``: a re-iterable collection
        evaluated every ``config.eval_every`` steps and after the last step. If
        ``config.checkpoint_path`` exists and ``config.resume`` is set, training resumes from it.
        Raises :class:`NonFiniteLossError` on a NaN/inf loss.
        """
        config = self.config
        if eval_batches is not None:
            _check_reiterable(eval_batches)
        elif config.eval_every is not None:
            raise ValueError("config.eval_every is set but fit() got no eval_batches")

        saved_rng = None
        path = config.checkpoint_path
        if self.step == 0 and path is not None and config.resume and os.path.exists(path):
            saved_rng = self.load_checkpoint(path, restore_rng=False)["rng"]
        elif self.step == 0 and config.seed is not None:
            _seed_everything(config.seed)
        data = _MicroBatches(train_batches)
        data.skip_to(self.micro_batches_consumed)
        if saved_rng is not None:  # after skipping: reading data may itself draw random numbers
            _set_rng_state(saved_rng)

        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        time_offset = self.history.time[-1] if self.history.time else 0.0
        started = time.perf_counter()
        bar = tqdm(
            total=config.max_steps, initial=self.step, desc="train", disable=not config.progress
        )
        try:
            while self.step < config.max_steps:
                step_started = time.perf_counter()
                loss, metrics, n_tokens = self._train_step(data)
                grad_norm, lr = self._update()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)  # honest timing: wait for the GPU
                now = time.perf_counter()
                elapsed = time_offset + now - started
                self._record(loss, metrics, n_tokens, grad_norm, lr, now - step_started, elapsed)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss:.4f}", tok_s=f"{self.history.tokens_per_s[-1]:,.0f}", refresh=False
                )
                self._after_step(eval_batches, bar)
        finally:
            bar.close()
        return self.history

    def _train_step(self, data: _MicroBatches) -> tuple[float, dict[str, float], int]:
        """Forward and backward over ``grad_accum_steps`` micro-batches; gradients accumulate."""
        accum = self.config.grad_accum_steps
        loss_sum = torch.zeros((), device=self.device)
        metric_sums: dict[str, float] = {}
        n_tokens = 0
        for _ in range(accum):
            batch = move_to_device(data.next(), self.device)
            with self._autocast():
                loss, metrics, n = _call_loss_fn(self.loss_fn, self.forward_model, batch)
            scaled = loss / accum  # the gradient of the mean over micro-batches
            if self.scaler is not None:
                scaled = self.scaler.scale(scaled)
            scaled.backward()
            loss_sum += loss.detach().float()
            n_tokens += n
            for name, value in metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + float(value) * n
        self.micro_batches_consumed += accum
        mean_loss = loss_sum.item() / accum
        if not math.isfinite(mean_loss):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self.step + 1, mean_loss)
        return mean_loss, {name: value / n_tokens for name, value in metric_sums.items()}, n_tokens

    def _update(self) -> tuple[float, float]:
        """Clip, step the optimizer (through the GradScaler for fp16) and the schedule."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        grads = [p.grad for p in parameters if p.grad is not None]
        if self.config.clip_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, self.config.clip_grad_norm)
        elif grads:
            grad_norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            )
        else:
            grad_norm = torch.zeros(())
        grad_norm = float(grad_norm)
        if not math.isfinite(grad_norm) and self.scaler is None:
            # (with fp16 the GradScaler skips such steps and lowers its scale instead)
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(self.step + 1, grad_norm, quantity="gradient norm")
        lr = float(self.optimizer.param_groups[0]["lr"])
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        return grad_norm, lr

    def _record(
        self,
        loss: float,
        metrics: dict[str, float],
        n_tokens: int,
        grad_norm: float,
        lr: float,
        seconds: float,
        elapsed: float,
    ) -> None:
        history = self.history
        tokens_per_s = n_tokens / max(seconds, 1e-12)
        mfu = None
        if self.config.flops_per_token is not None and self.peak_flops is not None:
            mfu = self.config.flops_per_token * tokens_per_s / self.peak_flops
        history.steps.append(self.step)
        history.train_loss.append(loss)
        history.lr.append(lr)
        history.grad_norm.append(grad_norm)
        history.tokens_per_s.append(tokens_per_s)
        history.mfu.append(mfu)
        history.time.append(elapsed)
        for name, value in metrics.items():
            # a metric first seen late gets None for the earlier steps, so lists stay aligned
            values = history.train_metrics.setdefault(name, [None] * (len(history.steps) - 1))
            values.append(value)

    def _after_step(self, eval_batches: Iterable[Any] | None, bar: Any) -> None:
        config, step = self.config, self.step
        last = step == config.max_steps
        if eval_batches is not None and (
            last or (config.eval_every and step % config.eval_every == 0)
        ):
            self.history.eval.append({"step": step, **self.evaluate(eval_batches)})
        if config.log_every and (step % config.log_every == 0 or last):
            bar.write(self._summary_line())
        if config.checkpoint_path is not None and (
            last or (config.checkpoint_every and step % config.checkpoint_every == 0)
        ):
            self.save_checkpoint(config.checkpoint_path)

    def _summary_line(self) -> str:
        h = self.history
        parts = [
            f"step {self.step}/{self.config.max_steps}",
            f"loss {h.train_loss[-1]:.4f}",
            f"lr {h.lr[-1]:.2e}",
            f"grad norm {h.grad_norm[-1]:.3f}",
            f"{h.tokens_per_s[-1]:,.0f} tok/s",
        ]
        if h.mfu[-1] is not None:
            parts.append(f"MFU {100 * h.mfu[-1]:.1f}%")
        if h.eval and h.eval[-1]["step"] == self.step:
            parts.append(f"eval loss {h.eval[-1]['loss']:.4f}")
        return " | ".join(parts)
