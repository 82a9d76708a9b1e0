"""Feeding the trainer: a stream of micro-batches that can restart exactly where a run stopped.

:class:`MicroBatchStream` hands out micro-batch ``i = 0, 1, 2, ...`` from either

1. a function ``batch_at(i) -> batch`` (make it deterministic, e.g. seed a ``torch.Generator``
   with ``i``): resuming simply continues at the next index; or
2. a re-iterable collection (a list, a ``DataLoader``): cycled, a new pass when it runs out.
   Resuming skips the micro-batches already consumed (lists and tuples by index, other iterables
   by reading and discarding them), so the order must be the same every time the object is
   re-created (``shuffle=False``, or a ``DataLoader`` with its own seeded ``generator=``).

:func:`move_to_device` moves a (nested) batch of tensors to the training device,
:func:`model_device` says which device a model is on, and :func:`eval_mode` runs a block with
the model in eval mode and gives every submodule its own training flag back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch


def model_device(model: Any, default: torch.device | str | None = None) -> torch.device:
    """The device of ``model``'s first parameter, else of its first buffer.

    A model with neither (or an object with no ``parameters()``, e.g. a plain function) has no
    device of its own: ``default`` is returned when given, otherwise a ``ValueError`` says so
    (instead of the ``StopIteration`` of ``next(model.parameters())``).
    """
    for tensors in ("parameters", "buffers"):
        first = next(iter(getattr(model, tensors, tuple)()), None)
        if first is not None:
            return first.device
    if default is not None:
        return torch.device(default)
    raise ValueError(
        f"{type(model).__name__} has no parameters or buffers, so it is on no device: "
        "pass the device explicitly"
    )


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Run the block with ``model`` in eval mode; afterwards every submodule gets its own flag back.

    Restoring only the top module's flag (``model.train(was_training)``) would switch a
    submodule that was deliberately kept in eval mode (a frozen encoder) back to training.
    An object with no ``modules()`` (a plain function) is passed through unchanged.
    """
    modules = list(model.modules()) if hasattr(model, "modules") else []
    modes = [(module, module.training) for module in modules]
    if modules:
        model.eval()
    try:
        yield model
    finally:
        for module, was_training in modes:
            module.training = was_training


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) tuple / list / dict to ``device``; other values unchanged.

    CPU tensors bound for a CUDA GPU are first copied to pinned (page-locked) memory: only from
    there can the copy run in the background (``non_blocking``) without Python waiting for the GPU.
    """
    if isinstance(batch, torch.Tensor):
        if batch.device.type == "cpu" and torch.device(device).type == "cuda":
            batch = (
                batch.pin_memory()
            )  # returns the tensor itself if it is pinned already
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to_device(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: move_to_device(value, device) for key, value in batch.items()}
    return batch


class MicroBatchStream:
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
        """The next micro-batch, as the source gives it (not yet on the training device)."""
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


def check_reiterable(batches: Any) -> None:
    """Evaluation batches are read at every evaluation: a one-shot iterator would be empty later."""
    if not isinstance(batches, Iterable) or iter(batches) is batches:
        raise TypeError(
            "eval_batches must be re-iterable (a list or a DataLoader): it is read at every "
            f"evaluation; got {type(batches).__name__}"
        )
