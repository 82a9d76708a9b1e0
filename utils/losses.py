"""Loss functions with the trainer's signature, and :func:`evaluate`, which averages one over batches.

A loss function is a plain callable ``loss_fn(model, batch) -> (loss, metrics, n_tokens)``:

- ``loss``: a scalar tensor, the *mean* over the batch's predictions (what ``backward()`` sees);
- ``metrics``: a dict of extra means, e.g. ``{"accuracy": ...}``, as floats or 0-dim tensors;
- ``n_tokens``: how many predictions the means are over, an ``int`` or a 0-dim integer tensor.

The values may stay tensors on purpose: reading a number from a GPU tensor (``.item()``,
``float()``) makes the CPU wait until the GPU has caught up, which stalls training if done every
step. The trainer adds them up on the device and reads them only on logging steps.

:func:`lm_loss` (next-token prediction) and :func:`classification_loss` are provided; write your
own with the same signature.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from utils.batches import eval_mode, model_device, move_to_device
from utils.checks import check_int
from utils.metrics import read_scalars


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


def _require_counted_targets(counted: torch.Tensor, ignore_index: int) -> None:
    # Reading a value is free on the CPU. On a GPU it would stall every step, so there an
    # all-padding batch shows up instead as a NaN loss (0 / 0), which the trainer reports.
    if counted.device.type == "cpu" and not counted.any():
        raise ValueError(
            f"lm_loss: every target in the batch equals ignore_index={ignore_index}"
        )


def lm_loss(
    model: torch.nn.Module, batch: Sequence[torch.Tensor], ignore_index: int = -100
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Next-token cross-entropy, averaged over target tokens.

    ``batch = (x, y)`` with ``x`` the input ids ``[B, T]`` and ``y`` the targets ``[B, T]`` (``x``
    shifted left by one); ``model(x)`` gives logits ``[B, T, V]`` (see :func:`logits_of` for tuple
    outputs). Targets equal to ``ignore_index`` (padding) count neither in the loss nor in
    ``n_tokens``; use ``functools.partial(lm_loss, ignore_index=pad_id)`` to set it.

    Returns ``(loss, {"accuracy": next-token top-1 accuracy}, n_tokens)``, all 0-dim tensors on
    the model's device (``n_tokens`` an integer one), so that nothing waits for the GPU. A target
    counts as correct when its logit is the largest (a tie for the largest counts too).
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
    flat_logits = logits.reshape(
        -1, logits.size(-1)
    ).float()  # [B*T, V]; the softmax in fp32
    flat_targets = targets.reshape(-1)  # [B*T]
    counted = flat_targets != ignore_index  # [B*T]: False for padding
    _require_counted_targets(counted, ignore_index)
    loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index)
    with torch.no_grad():  # top-1 accuracy: is the target's logit the largest one?
        # (amax + gather: on a CPU, argmax over [B*T, V] would cost as much as the loss itself)
        target_logit = flat_logits.gather(
            1, torch.where(counted, flat_targets, 0)[:, None]
        )
        correct = (
            target_logit.squeeze(1) >= flat_logits.amax(dim=-1)
        ) & counted  # [B*T]
        n_tokens = counted.sum()
    return loss, {"accuracy": correct.sum() / n_tokens}, n_tokens


def classification_loss(
    model: torch.nn.Module, batch: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Cross-entropy for sequence classification, averaged over examples.

    ``batch = (x, labels)`` -> ``model(x)``, or ``batch = (x, lengths, labels)`` ->
    ``model(x, lengths)`` (e.g. a packed LSTM); ``x`` is ``[B, L]``, ``labels`` ``[B]`` and the
    logits ``[B, C]`` (see :func:`logits_of` for tuple outputs).

    Returns ``(loss, {"accuracy": 0-dim tensor}, B)``: a classifier makes one prediction per
    example, so ``n_tokens`` counts examples (and the trainer's "tokens/s" is then examples/s).
    """
    batch = _unpack(
        batch,
        (2, 3),
        "classification_loss expects batch = (x, labels) or (x, lengths, labels)",
    )
    *inputs, labels = batch
    logits = logits_of(model(*inputs))
    if logits.dim() != 2 or labels.dim() != 1 or logits.size(0) != labels.size(0):
        raise ValueError(
            f"classification_loss expects logits [B, C] and labels [B]; got logits "
            f"{tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    loss = F.cross_entropy(logits.float(), labels)
    accuracy = (logits.detach().argmax(dim=-1) == labels).float().mean()
    return loss, {"accuracy": accuracy}, int(labels.numel())


def is_lm_loss(loss_fn: Callable) -> bool:
    """Whether ``loss_fn`` is :func:`lm_loss` or a ``functools.partial`` of it."""
    while isinstance(loss_fn, functools.partial):
        loss_fn = loss_fn.func
    return loss_fn is lm_loss


def call_loss_fn(
    loss_fn: Callable, model: Any, batch: Any
) -> tuple[torch.Tensor, dict, Any]:
    """``loss_fn(model, batch)``, with its result checked (types only: no values are read)."""
    result = loss_fn(model, batch)
    if not (isinstance(result, tuple) and len(result) == 3):
        raise TypeError(
            "loss_fn(model, batch) must return (loss, metrics: dict, n_tokens: int)"
        )
    loss, metrics, n_tokens = result
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(
            f"loss_fn must return a scalar tensor as loss, got {loss!r:.80}"
        )
    if not isinstance(metrics, dict):
        raise TypeError(
            f"loss_fn must return a dict of metrics, got {type(metrics).__name__}"
        )
    if isinstance(n_tokens, torch.Tensor):
        valid = n_tokens.numel() == 1 and not n_tokens.is_floating_point()
        valid = valid and n_tokens.dtype != torch.bool
    else:
        valid = (
            isinstance(n_tokens, int)
            and not isinstance(n_tokens, bool)
            and n_tokens >= 1
        )
    if not valid:
        raise TypeError(
            f"loss_fn must return n_tokens as a positive int (or integer tensor), got {n_tokens!r}"
        )
    return loss, metrics, n_tokens


def _exp_or_inf(value: float) -> float:
    try:
        return math.exp(value)
    except OverflowError:
        return math.inf


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
    The sums stay on the device; the numbers are read once, at the end.

    Returns ``{"loss": ..., <metrics>..., ["perplexity": ...], "n_tokens": total}``.
    """
    check_int("max_batches", max_batches, 1, optional=True)
    if device is None:
        device = model_device(model, default="cpu")
    with eval_mode(model):
        n_batches, loss_sum, total, metric_sums = 0, 0.0, 0, {}
        for batch in batches:
            if max_batches is not None and n_batches >= max_batches:
                break
            loss, metrics, n_tokens = call_loss_fn(
                loss_fn, model, move_to_device(batch, device)
            )
            # float64 sums where the device has them (Apple's MPS does not)
            wide = torch.float32 if loss.device.type == "mps" else torch.float64
            loss_sum = loss_sum + loss.detach().to(wide) * n_tokens
            total = total + n_tokens
            for name, value in metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + value * n_tokens
            n_batches += 1
    if n_batches == 0:
        raise ValueError("evaluate: batches is empty")
    loss_sum, total, *sums = read_scalars([loss_sum, total, *metric_sums.values()])
    if total == 0:
        raise ValueError(
            "evaluate: no predictions to average (is every target padding?)"
        )
    result = {"loss": loss_sum / total}
    result.update(
        {name: value / total for name, value in zip(metric_sums, sums, strict=True)}
    )
    if perplexity if perplexity is not None else is_lm_loss(loss_fn):
        result["perplexity"] = _exp_or_inf(result["loss"])
    result["n_tokens"] = round(total)
    return result
