"""Peak GPU memory and run time of a chapter's ``gpu`` profile, estimated before running it.

A chapter describes the work its ``gpu`` profile does as a :class:`Plan`, a list of phases built
from its resolved knobs (training a Transformer for so many steps, a forward pass over so many
batches, work that stays on the CPU), and :meth:`Plan.estimate` turns it into a peak memory and a
time on a :class:`GPU` (:data:`T4`, Colab's GPU, and :data:`H100`). ``tools/gpu_dry_run.py`` prints
the estimates of every chapter; ``tests/test_gpu_estimate.py`` checks the memory model against the
peak memory measured on the CPU for the sizes the ``book`` profile trains.

**Memory** (bytes; ``P`` parameters, ``M`` of them in matrix multiplies, ``T = batch x context``
tokens per step, ``d`` width, ``f`` the MLP's hidden width, ``n`` layers, ``R`` output rows):

- weights ``4P`` and gradients ``4P`` (fp32, as the book keeps them), AdamW/Adam state ``8P``
  (SGD: 0); with autocast (``"amp"``: fp16 on a T4, bf16 elsewhere) also the ``2M`` of 16-bit
  weight copies that the matrix multiplies keep for the backward pass;
- activations kept for the backward pass, per token and layer of the book's pre-LN block:
  fp32: ``4 (9d + 2f)`` = the block input, LayerNorm output, q, k, v, attention output and its
  merged-heads copy, the second block input and LayerNorm output, the MLP's hidden layer before
  and after GELU; amp: ``26d + 4f`` (LayerNorm inputs stay fp32, each of q/k/v keeps its own
  16-bit copy of the input); dropout adds one byte per kept mask element (``2d``); explicit
  attention (the L x L weights materialised, ``need_weights=True`` or a math kernel) adds two
  ``H L`` tensors per token and layer (the softmax output and its masked copy, 4 or 2 bytes
  each; dropout adds its mask and output) plus, while one layer's backward runs, two more;
- the output layer's logits ``T R``: 12 bytes per element in fp32 (at the start of the backward
  pass: the saved log-softmax, its gradient and the logits' gradient), 14 with autocast (the
  16-bit logits and their fp32 copy);
- the larger of that backward-pass peak and the optimizer step's (weights, gradients, state and
  the foreach implementation's temporaries, ``8P``).

Not counted: the CUDA context and library workspaces (:attr:`GPU.context_bytes` is set aside for
them) and allocator fragmentation (:attr:`GPU.usable_bytes` keeps 5 % free).

**Time.** A training step costs ``3 x`` its forward FLOPs, ``2M + 4 n L d`` per token (the matrix
multiplies, and the ``q kᵀ`` and ``weights @ v`` products counted densely); a forward pass
``1 x``. At an assumed share (:attr:`GPU.amp_utilisation`, :attr:`GPU.fp32_utilisation`) of the
device's peak, but never faster than a per-step floor, :attr:`GPU.step_floor_s` +
:attr:`GPU.layer_floor_s` per layer (kernel launches, the host reads of the book's models,
Python): the book's small models are floor-bound. Forward-only batches cost a third of the floor.
Work that stays on the CPU is given in seconds on the book's 2-core machine (its stored ``book``
run) and scaled by :attr:`GPU.host_factor`; phases whose length the chapter fixes in seconds (a
time budget, a timing loop with a minimum duration) take those seconds.

The constants are assumptions, stated where they are defined; they are meant to get the size of
a run right within a factor of about 1.5, enough to see that a chapter fits a 16 GB T4 and ends in
minutes, not to predict a stored number.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

GiB = 2**30

PRECISIONS = ("amp", "fp32")
OPTIMIZERS = {
    "adamw": 8,
    "adam": 8,
    "sgd": 0,
    "sgd-momentum": 4,
}  # state bytes per parameter


def _positive_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _non_negative(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


# --------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------


def usable_bytes(memory_bytes: float, context_bytes: float = 0.5 * GiB) -> int:
    """Memory left for tensors on a device of ``memory_bytes``: less the CUDA context and
    library workspaces (``context_bytes``), with 5 % kept free for the allocator's fragmentation."""
    return int(0.95 * (_non_negative("memory_bytes", memory_bytes) - context_bytes))


@dataclass(frozen=True)
class GPU:
    """An accelerator as the estimate sees it.

    Attributes:
        name: shown in reports.
        memory_bytes: total memory, as ``torch.cuda.get_device_properties().total_memory``
            reports it.
        amp_flops, fp32_flops: dense peak FLOP/s in fp16/bf16 (tensor cores) and in fp32.
        amp_utilisation, fp32_utilisation: the share of the peak a large matrix-multiply-bound
            step of the book's models is assumed to reach.
        step_floor_s, layer_floor_s: the shortest a training step can be, ``step_floor_s +
            layer_floor_s x layers``, whatever its FLOPs.
        host_factor: CPU work takes this many times as long as on the book's 2-core machine.
        context_bytes: memory outside PyTorch's allocator (CUDA context, cuBLAS/cuDNN
            workspaces).
    """

    name: str
    memory_bytes: int
    amp_flops: float
    fp32_flops: float
    amp_utilisation: float
    fp32_utilisation: float
    step_floor_s: float
    layer_floor_s: float
    host_factor: float
    context_bytes: int

    @property
    def usable_bytes(self) -> int:
        """What tensors may use: the total less the context, with 5 % left for fragmentation."""
        return usable_bytes(self.memory_bytes, self.context_bytes)

    def flops_per_s(self, precision: str) -> float:
        """Achieved FLOP/s assumed for large steps in ``precision`` ("amp" or "fp32")."""
        if _precision(precision) == "amp":
            return self.amp_flops * self.amp_utilisation
        return self.fp32_flops * self.fp32_utilisation

    def step_floor(self, n_layers: int) -> float:
        return self.step_floor_s + self.layer_floor_s * n_layers


# Colab's T4 (Turing, sm_75): 65 TFLOP/s fp16 tensor cores, 8.1 fp32; no native bf16, so autocast
# runs in fp16. 35 % / 55 % achieved as in ../shared/reviews/gpu-and-colab.md §2; Colab's host has
# 2 slow vCPUs (about 1.5 x the book machine's time) and limits small steps to about 10 ms.
T4 = GPU(
    name="T4 (Colab, 15 GB)",
    memory_bytes=15_828_320_256,
    amp_flops=65e12,
    fp32_flops=8.1e12,
    amp_utilisation=0.35,
    fp32_utilisation=0.55,
    step_floor_s=6e-3,
    layer_floor_s=0.6e-3,
    host_factor=1.5,
    context_bytes=int(0.4 * GiB),
)
# H100 SXM, 80 GB: 989 TFLOP/s dense bf16, 67 fp32 (TF32 is never enabled in the book); 40 %.
H100 = GPU(
    name="H100 (SXM, 80 GB)",
    memory_bytes=85_029_158_912,
    amp_flops=989e12,
    fp32_flops=67e12,
    amp_utilisation=0.40,
    fp32_utilisation=0.40,
    step_floor_s=3e-3,
    layer_floor_s=0.3e-3,
    host_factor=1.0,
    context_bytes=int(0.5 * GiB),
)
TARGETS: tuple[GPU, ...] = (T4, H100)
# The book's 2-core CPU: FLOP/s of a training step of the book's models (chapter 1 measures about
# 1.1e11 FLOP/s for its TransformerLM, chapter 7 about 1.5e11).
BOOK_CPU_FLOPS = 1.0e11


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transformer:
    """A Transformer as the book trains it: ``TransformerLM``, ``TransformerClassifier``,
    ``AdaptiveTransformerLM`` or a BERT-style encoder (MiniLM), ``batch`` sequences of
    ``context`` tokens per step.

    ``output_rows``: rows of the output layer scored per token (the vocabulary for a language
    model, the classes for a classifier, the expected rows of an adaptive softmax); default
    ``vocab``. ``tied``: the output layer is the embedding matrix (no parameters of its own).
    ``positions``: rows of a learned position table. ``dropout``: dropout is active in training.
    ``explicit_attention``: the L x L attention weights are materialised.
    """

    vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    context: int
    batch: int
    d_ff: int | None = None
    output_rows: int | None = None
    tied: bool = True
    positions: int = 0
    dropout: bool = False
    explicit_attention: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab", "d_model", "n_layers", "n_heads", "context", "batch"):
            _positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not a multiple of n_heads={self.n_heads}"
            )
        if self.d_ff is not None:
            _positive_int("d_ff", self.d_ff)
        if self.output_rows is not None:
            _positive_int("output_rows", self.output_rows)
        _positive_int("positions", self.positions, minimum=0)

    @property
    def hidden(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def rows(self) -> int:
        return self.output_rows or self.vocab

    @property
    def tokens(self) -> int:
        return self.batch * self.context

    @property
    def matmul_params(self) -> int:
        """Weights that multiply every token's activations: the blocks and the output layer."""
        d, f = self.d_model, self.hidden
        return self.n_layers * (4 * d * d + 2 * d * f) + d * self.rows

    @property
    def n_params(self) -> int:
        d, f = self.d_model, self.hidden
        block = (
            4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
        )  # attention, MLP, 2 LayerNorms
        output = 0 if self.tied else self.rows * (d + 1)
        return (
            (self.vocab + self.positions) * d + self.n_layers * block + 2 * d + output
        )

    def forward_flops_per_token(self) -> float:
        return (
            2.0 * self.matmul_params + 4.0 * self.n_layers * self.context * self.d_model
        )

    def activation_bytes(self, precision: str) -> float:
        """Bytes kept for the backward pass (the output layer's logits not included)."""
        d, f, H, L = self.d_model, self.hidden, self.n_heads, self.context
        per_token = (
            4 * (9 * d + 2 * f) if _precision(precision) == "fp32" else 26 * d + 4 * f
        )
        if self.dropout:
            per_token += 2 * d
        if (
            self.explicit_attention
        ):  # softmax output, its masked copy (+ dropout mask, output)
            per_token += (
                H
                * L
                * (4 if precision == "fp32" else 2)
                * (3.25 if self.dropout else 2)
            )
        return float(self.tokens * self.n_layers * per_token)

    def transient_bytes(self, precision: str, training: bool) -> float:
        """Memory of one layer's temporaries at its peak (and of the logits, when scored)."""
        size = 4 if precision == "fp32" else 2
        d, H, L = self.d_model, self.n_heads, self.context
        per_token = size * (
            self.hidden + 3 * d
        )  # one layer's widest intermediate results
        if self.explicit_attention:
            per_token += (2 if training else 3) * H * L * size
        logits = (12 if precision == "fp32" else 14) if training else 10
        return float(self.tokens * (per_token + logits * self.rows))


@dataclass(frozen=True)
class LSTM:
    """The book's LSTM language model (``AdaptiveLSTMLM``): tied embedding, ``n_layers`` LSTM
    layers of width ``d_model``, ``output_rows`` as for :class:`Transformer`."""

    vocab: int
    d_model: int
    n_layers: int
    context: int
    batch: int
    output_rows: int | None = None
    dropout: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab", "d_model", "n_layers", "context", "batch"):
            _positive_int(name, getattr(self, name))

    @property
    def rows(self) -> int:
        return self.output_rows or self.vocab

    @property
    def tokens(self) -> int:
        return self.batch * self.context

    @property
    def matmul_params(self) -> int:
        return self.n_layers * 8 * self.d_model**2 + self.d_model * self.rows

    @property
    def n_params(self) -> int:
        d = self.d_model
        return self.vocab * d + self.n_layers * (8 * d * d + 8 * d)

    def forward_flops_per_token(self) -> float:
        return 2.0 * self.matmul_params

    def activation_bytes(self, precision: str) -> float:
        """Per token and layer: the input, four gates, cell and hidden state (cuDNN's reserve)."""
        size = 4 if _precision(precision) == "fp32" else 2
        per_token = 7 * self.d_model * size + (2 * self.d_model if self.dropout else 0)
        return float(self.tokens * self.n_layers * per_token)

    def transient_bytes(self, precision: str, training: bool) -> float:
        size = 4 if precision == "fp32" else 2
        logits = (12 if precision == "fp32" else 14) if training else 10
        return float(self.tokens * (8 * self.d_model * size + logits * self.rows))


Model = Transformer | LSTM


def training_peak_bytes(
    model: Model, precision: str = "amp", optimizer: str = "adamw"
) -> float:
    """Peak bytes of a training step of ``model`` (see the module docstring)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(
            f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}"
        )
    P = model.n_params
    state = (8 + OPTIMIZERS[optimizer]) * P  # weights, gradients, optimizer state
    casts = 2 * model.matmul_params if _precision(precision) == "amp" else 0
    backward = (
        state
        + casts
        + model.activation_bytes(precision)
        + model.transient_bytes(precision, training=True)
    )
    optimizer_step = state + (8 * P if OPTIMIZERS[optimizer] else 0)
    return max(backward, optimizer_step)


def inference_peak_bytes(model: Model, precision: str = "fp32") -> float:
    """Peak bytes of a forward pass without gradients: the weights and one layer's temporaries."""
    casts = 2 * model.matmul_params if _precision(precision) == "amp" else 0
    return 4 * model.n_params + casts + model.transient_bytes(precision, training=False)


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------

ModelOrRule = Model | Callable[[GPU], Model]


def _resolve(model: ModelOrRule, gpu: GPU) -> Model:
    return model(gpu) if callable(model) else model


@dataclass
class Phase:
    """One part of a chapter's work; see the :class:`Plan` methods that create them."""

    name: str
    kind: str  # "train", "forward", "decode", "flops", "fixed" or "host"
    model: ModelOrRule | None = None
    steps: int = 0  # optimizer steps, forward batches or generated tokens
    precision: str = "amp"
    optimizer: str = "adamw"
    seconds: float = 0.0  # "fixed" and "host"; for "train": a time budget (0: none)
    eval_batches: int = 0  # forward batches of the same shape run during training
    extra_bytes: float = 0.0  # other tensors alive on the GPU during the phase
    peak_bytes: float = 0.0  # "fixed" and "flops": the peak it allocates
    flops: float = 0.0  # "flops"
    peak_model: ModelOrRule | None = None  # the shape for the peak, if not ``model``'s

    def estimate(self, gpu: GPU) -> dict:
        """``{"name", "peak_bytes", "seconds"}`` of this phase on ``gpu``."""
        peak, seconds = self.peak_bytes, self.seconds
        if self.kind == "host":
            peak, seconds = 0.0, self.seconds * gpu.host_factor
        elif self.kind == "flops":
            seconds = self.flops / gpu.flops_per_s(self.precision)
        elif self.kind != "fixed":
            model = _resolve(self.model, gpu)
            peak_model = _resolve(self.peak_model or self.model, gpu)
            rate, floor = (
                gpu.flops_per_s(self.precision),
                gpu.step_floor(model.n_layers),
            )
            per_batch = model.forward_flops_per_token() * model.tokens / rate
            if self.kind == "train":
                peak = training_peak_bytes(peak_model, self.precision, self.optimizer)
                seconds = self.seconds or self.steps * max(3 * per_batch, floor)
                seconds += self.eval_batches * max(per_batch, floor / 3)
            else:  # a decoded token is a whole forward pass, as launch-bound as a step
                peak = inference_peak_bytes(peak_model, self.precision)
                seconds = self.steps * max(
                    per_batch, floor if self.kind == "decode" else floor / 3
                )
        return {
            "name": self.name,
            "peak_bytes": peak + self.extra_bytes,
            "seconds": seconds,
        }


@dataclass
class Plan:
    """What a chapter's ``gpu`` profile runs, phase by phase, for :meth:`estimate`.

    >>> plan = Plan("04b")
    >>> lm = Transformer(vocab=33_278, d_model=256, n_layers=4, n_heads=8, context=128, batch=32)
    >>> plan.train("3 recipes", lm, steps=3 * 3000, eval_batches=3 * 12 * 50)
    >>> plan.fits(T4)
    True
    """

    chapter: str
    phases: list[Phase] = field(default_factory=list)

    def train(
        self,
        name: str,
        model: ModelOrRule,
        steps: int | None = None,
        *,
        precision: str = "amp",
        optimizer: str = "adamw",
        budget_s: float = 0.0,
        eval_batches: int = 0,
        extra_bytes: float = 0.0,
        peak_model: ModelOrRule | None = None,
    ) -> Plan:
        """``steps`` optimizer steps of ``model``, or ``budget_s`` seconds of them (the time is
        then the budget), plus ``eval_batches`` forward batches of evaluation. ``model`` may be
        a function of the :class:`GPU` (sizes that depend on its memory); ``peak_model`` is the
        shape whose memory counts, when it differs from the one timed (padded batches)."""
        if not budget_s:
            _positive_int("steps", steps)
        _precision(precision)
        if optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {tuple(OPTIMIZERS)}, got {optimizer!r}"
            )
        self.phases.append(
            Phase(
                name,
                "train",
                model,
                steps or 0,
                precision,
                optimizer,
                seconds=_non_negative("budget_s", budget_s),
                eval_batches=_positive_int("eval_batches", eval_batches, 0),
                extra_bytes=_non_negative("extra_bytes", extra_bytes),
                peak_model=peak_model,
            )
        )
        return self

    def forward(
        self,
        name: str,
        model: ModelOrRule,
        batches: int,
        *,
        precision: str = "fp32",
        extra_bytes: float = 0.0,
        peak_model: ModelOrRule | None = None,
    ) -> Plan:
        """``batches`` forward passes without gradients (evaluation, embeddings, scoring)."""
        return self._inference(
            "forward", name, model, batches, precision, extra_bytes, peak_model
        )

    def decode(
        self,
        name: str,
        model: ModelOrRule,
        tokens: int,
        *,
        precision: str = "fp32",
        extra_bytes: float = 0.0,
        peak_model: ModelOrRule | None = None,
    ) -> Plan:
        """``tokens`` decoding steps, each a forward pass of ``model`` (``batch`` sequences of
        ``context`` positions: 1 with a KV cache, the window without)."""
        return self._inference(
            "decode", name, model, tokens, precision, extra_bytes, peak_model
        )

    def _inference(
        self, kind, name, model, steps, precision, extra_bytes, peak_model
    ) -> Plan:
        _positive_int("batches" if kind == "forward" else "tokens", steps)
        self.phases.append(
            Phase(
                name,
                kind,
                model,
                steps,
                _precision(precision),
                extra_bytes=_non_negative("extra_bytes", extra_bytes),
                peak_model=peak_model,
            )
        )
        return self

    def compute(
        self, name: str, flops: float, peak_bytes: float, precision: str = "fp32"
    ):
        """Raw tensor work on the GPU: ``flops`` at the device's rate, ``peak_bytes`` at most."""
        self.phases.append(
            Phase(
                name,
                "flops",
                precision=_precision(precision),
                flops=_non_negative("flops", flops),
                peak_bytes=_non_negative("peak_bytes", peak_bytes),
            )
        )
        return self

    def fixed(self, name: str, seconds: float, peak_bytes: float = 0.0) -> Plan:
        """Work whose length the chapter sets in seconds, allocating ``peak_bytes`` at most."""
        self.phases.append(
            Phase(
                name,
                "fixed",
                seconds=_non_negative("seconds", seconds),
                peak_bytes=_non_negative("peak_bytes", peak_bytes),
            )
        )
        return self

    def host(self, name: str, seconds: float) -> Plan:
        """Work on the CPU: ``seconds`` on the book's 2-core machine."""
        self.phases.append(
            Phase(name, "host", seconds=_non_negative("seconds", seconds))
        )
        return self

    def host_flops(self, name: str, flops: float) -> Plan:
        """Tensor work on the CPU, ``flops`` at :data:`BOOK_CPU_FLOPS`."""
        return self.host(name, _non_negative("flops", flops) / BOOK_CPU_FLOPS)

    def estimate(self, gpu: GPU) -> dict:
        """``{"gpu", "peak_bytes", "seconds", "fits", "phases": [...]}`` on ``gpu``."""
        phases = [phase.estimate(gpu) for phase in self.phases]
        peak = max((p["peak_bytes"] for p in phases), default=0.0)
        return {
            "gpu": gpu.name,
            "peak_bytes": peak,
            "seconds": sum(p["seconds"] for p in phases),
            "fits": peak <= gpu.usable_bytes,
            "usable_bytes": gpu.usable_bytes,
            "phases": phases,
        }

    def fits(self, gpu: GPU) -> bool:
        return self.estimate(gpu)["fits"]

    def to_dict(self, gpus: tuple[GPU, ...] = TARGETS) -> dict:
        """The estimates on ``gpus``, as JSON-ready data."""
        return {"chapter": self.chapter, "estimates": [self.estimate(g) for g in gpus]}

    def report(self, gpus: tuple[GPU, ...] = TARGETS) -> str:
        """A table: each phase's peak memory and time on each of ``gpus``, then the total."""
        estimates = [self.estimate(g) for g in gpus]
        width = max([len(p.name) for p in self.phases] + [12])
        head = "".join(f"{g.name.split(' ')[0]:>18}" for g in gpus)
        lines = [
            f"gpu profile of {self.chapter}, estimated (GiB / minutes):",
            f"{'':<{width}}{head}",
        ]
        for i, phase in enumerate(self.phases):
            cells = "".join(
                f"{e['phases'][i]['peak_bytes'] / GiB:>10.2f} {e['phases'][i]['seconds'] / 60:>6.1f}m"
                for e in estimates
            )
            lines.append(f"{phase.name:<{width}}{cells}")
        total = "".join(
            f"{e['peak_bytes'] / GiB:>10.2f} {e['seconds'] / 60:>6.1f}m"
            for e in estimates
        )
        lines.append(f"{'peak / total':<{width}}{total}")
        for gpu, e in zip(gpus, estimates, strict=True):
            if not e["fits"]:
                lines.append(
                    f"DOES NOT FIT {gpu.name}: {e['peak_bytes'] / GiB:.1f} GiB > "
                    f"{gpu.usable_bytes / GiB:.1f} GiB usable"
                )
        return "\n".join(lines)


def largest_fitting(
    candidates: list, peak_bytes: Callable[[object], float], memory_bytes: float
) -> object:
    """The first of ``candidates`` (largest first) whose ``peak_bytes(candidate)`` fits a device
    of ``memory_bytes`` (:func:`usable_bytes`); the last one when none fits."""
    if not candidates:
        raise ValueError("candidates is empty")
    usable = usable_bytes(memory_bytes)
    for candidate in candidates:
        if peak_bytes(candidate) <= usable:
            return candidate
    return candidates[-1]


def replace(model: Model, **changes) -> Model:
    """A copy of ``model`` with some fields changed (``dataclasses.replace``)."""
    return dataclasses.replace(model, **changes)


def format_gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:.2f} GiB"


def format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{math.ceil(seconds)} s"
