"""What a training run records, and how it reads numbers off the GPU without slowing it down.

A GPU runs asynchronously: Python queues work and moves on. Reading a number back (``.item()``,
``float(t)``, ``print(loss)``) makes the CPU wait until the GPU has finished everything queued so
far, and the GPU then idles while Python queues the next step. So :class:`StepRecorder` keeps each
step's loss, metrics and gradient norm *on the device* and reads all of them at once, in one
transfer, on logging steps (:func:`read_scalars`); :class:`History` is what it writes them into.

Also here: throughput and model-FLOPs utilisation (MFU): :func:`training_flops_per_token`,
:data:`PEAK_FLOPS`, :func:`peak_flops_for`; and the one-line progress summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import torch

from utils import compute
from utils.checks import check_int

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
    n_params: int,
    n_layers: int = 0,
    d_model: int = 0,
    seq_len: int = 0,
    *,
    attention: str = "kaplan",
) -> float:
    """Training FLOPs per token for ``TrainConfig(flops_per_token=...)``: ``6 N`` + attention.

    ``6 N``: 2 FLOPs per parameter per token for the forward pass (a multiply and an add) and
    twice that for the backward pass. The attention term grows with the context length ``T``:
    ``6 L d T`` with ``attention="kaplan"`` (the book's convention, Kaplan et al. 2020) or
    ``12 L d T`` with ``"dense"`` (PaLM, app. B); leave ``n_layers`` (or ``d_model``,
    ``seq_len``) at 0 to leave it out. The count is :func:`utils.compute.flops_per_token`, so
    the MFU a run reports is the one the book prints. Use ``N`` without the embedding matrix
    if it is tied to the output layer.
    """
    check_int("n_params", n_params, minimum=0)
    for name, value in (
        ("n_layers", n_layers),
        ("d_model", d_model),
        ("seq_len", seq_len),
    ):
        check_int(name, value, minimum=0)
    if 0 in (n_layers, d_model, seq_len):
        return 6.0 * n_params  # the attention term left out
    return compute.flops_per_token(
        n_params, n_layers, d_model, seq_len, attention=attention
    )


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or gradient norm); ``step`` says when.

    The trainer looks on logging steps, *before* that step's optimizer update, and names the first
    bad step since the previous look. When it looks every step (the default on a CPU) the
    parameters are still those from before the bad step; on a GPU, where it looks every
    ``sync_every`` steps, the bad values may already have reached them.
    """

    def __init__(self, step: int, value: float, quantity: str = "loss") -> None:
        self.step, self.value, self.quantity = step, value, quantity
        super().__init__(
            f"non-finite training {quantity} ({value}) at step {step}. Usual causes: a learning "
            "rate too high (lower it or lengthen the warm-up), no gradient clipping "
            "(set clip_grad_norm), or fp16 overflow (use bf16 or fp32)."
        )


def read_scalars(values: Sequence[float | int | torch.Tensor]) -> list[float]:
    """Python floats of numbers and one-element tensors, with one device-to-host copy per device.

    This is where the CPU waits for the GPU (a synchronisation): call it rarely. fp32 values come
    back exactly as ``.item()`` would give them (they travel as float64, except on Apple's MPS).
    """
    result: list[float] = [0.0] * len(values)
    by_device: dict[torch.device, list[int]] = {}
    for index, value in enumerate(values):
        if isinstance(value, torch.Tensor) and value.device.type != "cpu":
            by_device.setdefault(value.device, []).append(index)
        else:  # a number, or a CPU tensor: already in host memory, nothing to wait for
            result[index] = float(value)
    for indices in by_device.values():
        numbers = read_together([values[i] for i in indices])
        for index, number in zip(indices, numbers, strict=True):
            result[index] = number
    return result


def read_together(tensors: Sequence[torch.Tensor]) -> list[float]:
    """One-element tensors on one device as Python floats, in a single device-to-host copy."""
    dtype = (
        torch.float32 if tensors[0].device.type == "mps" else torch.float64
    )  # MPS: no fp64
    return torch.stack([t.detach().reshape(()).to(dtype) for t in tensors]).tolist()


@dataclass
class History:
    """What happened during training; plots read the lists directly.

    Per optimizer step (all lists have the same length): ``steps`` (1, 2, ...), ``train_loss``
    (mean over the step's micro-batches), ``lr`` (of the first parameter group, as used by the
    step), ``grad_norm`` (global L2 norm before clipping), ``tokens_per_s`` (averaged over the
    steps between two logging steps), ``mfu`` (``None`` when unknown), ``time`` (seconds since
    training started, summed over resumed runs; on a GPU, between logging steps, the time the
    step was queued) and ``train_metrics`` (name -> list, e.g. ``"accuracy"``). ``eval`` is a list
    of records ``{"step": s, "loss": ..., "perplexity": ..., ...}``; ``eval_steps`` /
    ``eval_loss`` / :meth:`eval_metric` give them as lists.
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

    def drop_after(self, step: int) -> None:
        """Forget what was recorded after step ``step`` (a step interrupted before it finished)."""
        keep = sum(1 for s in self.steps if s <= step)
        for values in (
            self.steps,
            self.train_loss,
            self.lr,
            self.grad_norm,
            self.tokens_per_s,
        ):
            del values[keep:]
        for values in (self.mfu, self.time, *self.train_metrics.values()):
            del values[keep:]
        self.eval[:] = [record for record in self.eval if record["step"] <= step]

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

    def summary_line(self, max_steps: int) -> str:
        """``step 10/100 | loss 2.3026 | lr 1.00e-03 | grad norm 0.512 | 12,345 tok/s | ...``."""
        step = self.steps[-1]
        parts = [
            f"step {step}/{max_steps}",
            f"loss {self.train_loss[-1]:.4f}",
            f"lr {self.lr[-1]:.2e}",
            f"grad norm {self.grad_norm[-1]:.3f}",
            f"{self.tokens_per_s[-1]:,.0f} tok/s",
        ]
        if self.mfu[-1] is not None:
            parts.append(f"MFU {100 * self.mfu[-1]:.1f}%")
        if self.eval and self.eval[-1]["step"] == step:
            parts.append(f"eval loss {self.eval[-1]['loss']:.4f}")
        return " | ".join(parts)


def _add(total: Any, value: Any) -> Any:
    return value if total is None else total + value


class StepRecorder:
    """Collects each step's numbers where they are computed, and writes them into a History later.

    Per micro-batch: :meth:`add_micro_batch` (loss, metrics, n_tokens: device tensors or numbers;
    added up without reading them). Per step: :meth:`end_step` (gradient norm, learning rate).
    On logging steps: :meth:`flush` reads everything since the last flush in one transfer,
    checks it for NaN/inf and appends it to the History, with the throughput over that span.
    """

    def __init__(
        self, flops_per_token: float | None = None, peak_flops: float | None = None
    ):
        self.flops_per_token, self.peak_flops = flops_per_token, peak_flops
        self._pending: list[dict[str, Any]] = []
        self._start_step()
        self.start()

    def _start_step(self) -> None:
        self._loss_sum: Any = None
        self._n_tokens: Any = None
        self._metric_sums: dict[str, Any] = {}
        self._n_micro_batches = 0

    def start(self, time_offset: float = 0.0, steps_done: int | None = None) -> None:
        """Start the clocks; ``time_offset``: seconds already trained (a resumed run).

        Also drops what an interrupted step left behind (partial sums; with ``steps_done``, a
        step recorded but not taken), so that training can continue after a ``KeyboardInterrupt``.
        """
        self._started = self._span_start = time.perf_counter()
        self._time_offset = time_offset
        self._start_step()
        if steps_done is not None:
            self._pending = [
                record for record in self._pending if record["step"] <= steps_done
            ]

    def add_micro_batch(
        self, loss: torch.Tensor, metrics: dict[str, Any], n_tokens: Any
    ) -> None:
        """``loss``: the micro-batch's mean loss (0-dim); metrics are means, weighted by n_tokens."""
        self._loss_sum = _add(self._loss_sum, loss.detach().float())
        self._n_tokens = _add(self._n_tokens, n_tokens)
        for name, value in metrics.items():
            self._metric_sums[name] = _add(
                self._metric_sums.get(name), value * n_tokens
            )
        self._n_micro_batches += 1

    def end_step(self, step: int, grad_norm: Any, lr: Any) -> None:
        """Close step ``step`` (counted from 1): its gradient norm (0-dim) and learning rate."""
        if isinstance(
            lr, torch.Tensor
        ):  # a tensor lr is updated in place by the scheduler
            lr = lr.detach().clone()
        self._pending.append(
            {
                "step": step,
                "values": [self._loss_sum, grad_norm, lr, self._n_tokens],
                "names": list(self._metric_sums),
                "metric_sums": list(self._metric_sums.values()),
                "micro_batches": self._n_micro_batches,
                "time": self._time_offset + time.perf_counter() - self._started,
            }
        )
        self._start_step()

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """Leave what runs inside (an evaluation, a checkpoint) out of the throughput."""
        paused_at = time.perf_counter()
        try:
            yield
        finally:
            self._span_start += time.perf_counter() - paused_at

    def flush(self, history: History, check_grad_norm: bool = True) -> None:
        """Read the pending steps (one host sync) and append them to ``history``.

        Raises :class:`NonFiniteLossError` at the first step whose loss (or, with
        ``check_grad_norm``, gradient norm) is NaN or infinite; the steps before it are recorded.
        """
        pending, self._pending = self._pending, []
        if not pending:
            return
        numbers = iter(
            read_scalars(
                [x for step in pending for x in [*step["values"], *step["metric_sums"]]]
            )
        )
        now = time.perf_counter()
        seconds, self._span_start = max(now - self._span_start, 1e-12), now
        for step in pending:  # replace the tensors by the numbers just read
            loss_sum, step["grad_norm"], step["lr"], step["n_tokens"] = islice(
                numbers, 4
            )
            step["loss"] = loss_sum / step["micro_batches"]
            step["metrics"] = {
                name: next(numbers) / step["n_tokens"] for name in step["names"]
            }
        tokens_per_s = sum(step["n_tokens"] for step in pending) / seconds
        mfu = None
        if self.flops_per_token is not None and self.peak_flops is not None:
            mfu = self.flops_per_token * tokens_per_s / self.peak_flops
        for step in pending:
            if not math.isfinite(step["loss"]):
                raise NonFiniteLossError(step["step"], step["loss"])
            if check_grad_norm and not math.isfinite(step["grad_norm"]):
                raise NonFiniteLossError(
                    step["step"], step["grad_norm"], "gradient norm"
                )
            history.steps.append(step["step"])
            history.train_loss.append(step["loss"])
            history.lr.append(step["lr"])
            history.grad_norm.append(step["grad_norm"])
            history.tokens_per_s.append(tokens_per_s)
            history.mfu.append(mfu)
            history.time.append(step["time"])
            for name, value in step["metrics"].items():
                # a metric first seen late gets None for the earlier steps, so lists stay aligned
                values = history.train_metrics.setdefault(
                    name, [None] * (len(history.steps) - 1)
                )
                values.append(value)
