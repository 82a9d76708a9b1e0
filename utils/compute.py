"""Training compute, time and memory: the arithmetic behind "training LLMs is expensive".

- :data:`PUBLISHED_MODELS`: sizes, training tokens and (where the paper gives it) training
  compute of well-known models, each number taken from the model's own paper, with the table or
  section that states it (``where``).
- :func:`training_flops`: ``C ≈ 6·N·D`` (Kaplan et al. 2020): a forward pass costs about 2 FLOPs
  per parameter per token (a multiply and an add), the backward pass twice that.
- :func:`attention_flops`: the attention term that ``6·N·D`` leaves out.
- :func:`flops_per_token` / :func:`flops_per_token_terms`: the book's one FLOPs-per-token count
  of a decoder (weights, attention with ``attention="kaplan"|"dense"``, LM head), the count that
  :func:`utils.models.flops_per_token` and :func:`utils.metrics.training_flops_per_token` give.
- :func:`accelerator_hours`, :func:`wall_clock_days`, :func:`estimate_training_cost`: from FLOPs
  to time, given an accelerator's peak FLOP/s and the fraction of it a run achieves (model FLOPs
  utilisation, MFU).
- :func:`chinchilla_optimal`: the compute-optimal split of a budget at ~20 tokens per parameter
  (Hoffmann et al. 2022).
- :func:`training_memory_bytes`: ~16 bytes per parameter for mixed-precision AdamW (Rajbhandari
  et al. 2020), before activations, and per device under ZeRO stage 0-3.
- :func:`cost_calculator`: an ipywidgets form around :func:`estimate_training_cost`.

Every public function checks its arguments: numbers must be real, finite and positive
(utilisation in (0, 1]); anything else raises ``TypeError``/``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from utils.checks import check_int

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class PublishedModel:
    """One published model. ``None`` means the paper does not state the number.

    Attributes:
        name: the model (largest variant where a paper describes several).
        released: ``"YYYY-MM"`` of the first public version of the paper or report.
        n_params: parameters N.
        n_tokens: training tokens D.
        reported_flops: total training compute the paper reports, in FLOPs.
        citation: bibtex key in ``book/references.bib``.
        where: where in the paper each number is stated (table or section), e.g.
            ``"N, D: Table 2.1; C: Table D.1"``.
        note: what the paper says where the numbers need context.
    """

    name: str
    released: str
    n_params: float
    n_tokens: float | None
    reported_flops: float | None
    citation: str
    where: str
    note: str = ""


PUBLISHED_MODELS: tuple[PublishedModel, ...] = (
    PublishedModel(
        "BERT-Large",
        "2018-10",
        340e6,
        None,
        None,
        "devlin2019bert",
        where="N: §3, Model Architecture (BERT_LARGE: Total Parameters=340M)",
        note="bidirectional encoder (masked LM), not a left-to-right LM; App. A.2 gives 1M steps "
        "of 256 sequences (128,000 tokens/batch at length 512) but runs 90% of the steps at length "
        "128, so it states no total token count",
    ),
    PublishedModel(
        "GPT-2",
        "2019-02",
        1542e6,
        None,
        None,
        "radford2019language",
        where="N: Table 2 (1542M)",
        note="trained on WebText (about 40 GB of text, §2.1); no token count is given",
    ),
    PublishedModel(
        "GPT-3",
        "2020-05",
        175e9,
        300e9,
        3.14e23,
        "brown2020language",
        where="N: Table 2.1; D: Table 2.1 caption; C: Table D.1 (3.64E+03 petaflop/s-days)",
        note="Common Crawl: 45 TB compressed before filtering, 570 GB after (§2.2); Table D.1 "
        "counts the 175B model as 174,600M parameters",
    ),
    PublishedModel(
        "Gopher",
        "2021-12",
        280e9,
        300e9,
        6.31e23,
        "rae2021scaling",
        where="N: Table 1; D: §3.2; C: appendix compute-usage table (6.31E+08 train PFLOPs)",
        note="reported compute is the paper's own accounting of the run; Hoffmann et al. (2022, "
        "App. F) recount the same budget as 5.76e23 FLOPs",
    ),
    PublishedModel(
        "Megatron-Turing NLG",
        "2022-01",
        530e9,
        270e9,
        None,
        "smith2022using",
        where="N: title and abstract; D: training-dataset section (not re-read here; Hoffmann et "
        "al. 2022, Table 1, list the same 270B tokens)",
    ),
    PublishedModel(
        "Chinchilla",
        "2022-03",
        70e9,
        1.4e12,
        None,
        "hoffmann2022chinchilla",
        where="N, D: Table 1 and §1",
        note="trained with the same compute budget as Gopher (the point of the paper); no separate "
        "total is stated for Chinchilla, the paper's count of Gopher's budget is 5.76e23 FLOPs "
        "(Table 3, App. F)",
    ),
    PublishedModel(
        "PaLM",
        "2022-04",
        540.35e9,
        780e9,
        2.56e24,
        "chowdhery2022palm",
        where="N: Table 1 (540.35B); D: §3; C: App. B, Table 22 (arXiv:2204.02311)",
        note="Table 22's train FLOPs are 3.28 TFLOPs/token × 780B tokens, without "
        "rematerialisation (4.10 TFLOPs/token with it)",
    ),
    PublishedModel(
        "LLaMA-65B",
        "2023-02",
        65.2e9,
        1.4e12,
        None,
        "touvron2023llama",
        where="N, D: Table 2",
        note="the paper reports GPU-hours (Table 15), not FLOPs",
    ),
    PublishedModel(
        "Llama 2 70B",
        "2023-07",
        70e9,
        2.0e12,
        None,
        "touvron2023llama2",
        where="N, D: Table 1",
        note="the paper reports GPU-hours (Table 2), not FLOPs",
    ),
    PublishedModel(
        "Llama 3 405B",
        "2024-07",
        405e9,
        15.6e12,
        3.8e25,
        "dubey2024llama3",
        where="N, D, C: §1 (Scale: 3.8 × 10^25 FLOPs, 405B parameters, 15.6T text tokens)",
    ),
)


# ------------------------------------------------------------------------------ argument checks


def _positive(name: str, value, *, integer: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number > 0 (an int if ``integer``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "an integer" if integer else "a number"
        raise TypeError(
            f"{name} must be {kind} > 0, got {value!r} ({type(value).__name__})"
        )
    if integer and not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number > 0, got {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def _fraction(name: str, value) -> float:
    """Return ``value`` as a float if it lies in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 1], got {value!r}")
    value = float(value)
    if math.isnan(value) or not 0.0 < value <= 1.0:
        raise ValueError(
            f"{name} must lie in (0, 1] (a fraction of peak, e.g. 0.4 for 40%), got {value!r}"
        )
    return value


# ------------------------------------------------------------------------------ FLOPs


def training_flops(n_params: float, n_tokens: float) -> float:
    """``C = 6·N·D`` FLOPs to train ``n_params`` parameters on ``n_tokens`` tokens.

    Per token, each weight does one multiply-add (2 FLOPs) in the forward pass and two in the
    backward pass (gradient with respect to the input and to the weight): 6 FLOPs in all.
    """
    return 6.0 * _positive("n_params", n_params) * _positive("n_tokens", n_tokens)


def attention_flops(
    n_layers: int,
    context_length: int,
    d_model: int,
    n_tokens: float,
    causal: bool = True,
) -> float:
    """Training FLOPs of the attention scores ``QKᵀ`` and of ``weights·V`` over ``n_tokens``.

    Per token and layer the forward pass does ``2·L·d`` FLOPs for the scores and ``2·L·d`` for the
    weighted sum of values over a context of L tokens, ×3 for forward + backward. Kaplan et al.
    (2020) count only the causal half (a token attends to L/2 positions on average):
    ``6·n_layers·L·d·D``. An implementation that computes the full L×L matrix and masks it does
    twice that (``causal=False``): ``12·n_layers·L·d·D``.
    """
    n_layers = _positive("n_layers", n_layers, integer=True)
    context_length = _positive("context_length", context_length, integer=True)
    d_model = _positive("d_model", d_model, integer=True)
    n_tokens = _positive("n_tokens", n_tokens)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be True or False, got {causal!r}")
    # 3 x the forward attention term of flops_per_token_terms (kaplan = the causal half)
    per_token = 3.0 * (2.0 if causal else 4.0) * n_layers * context_length * d_model
    return per_token * n_tokens


ATTENTION_CONVENTIONS = ("kaplan", "dense")


def flops_per_token_terms(
    n_params: int,
    n_layers: int,
    d_model: int,
    context_len: int,
    training: bool = True,
    *,
    vocab_size: int | None = None,
    attention: str = "kaplan",
) -> dict[str, float]:
    """Per-token FLOPs of a decoder Transformer, term by term: the book's one FLOPs count.

    A matrix multiply ``(n, a) @ (a, b)`` costs ``2·n·a·b`` FLOPs (a multiply and an add), so
    every weight that multiplies a token's activation costs 2 FLOPs per token:

    - ``"weights"``: ``2 · n_params`` (Kaplan et al. 2020, Table 1: N without embeddings).
    - ``"attention"``: the scores ``q kᵀ`` and ``weights @ v``, per token and layer
      ``2·context_len·d_model`` with ``attention="kaplan"`` (the causal half of the scores, as
      Kaplan's table counts) or ``4·context_len·d_model`` with ``attention="dense"`` (the full
      ``L x L`` matrix that an implementation computes and then masks; PaLM's 12·L·d·T for a
      training step).
    - ``"lm_head"``: ``2·d_model·vocab_size`` when ``vocab_size`` is given (Kaplan's N leaves
      out the tied output layer).
    - Not counted: embedding look-ups, LayerNorm, GELU, softmax, residual additions (O(d)).

    ``"forward"`` is the sum; ``"total"`` is ``3 x forward`` when ``training`` (the backward
    pass does two matmuls per forward matmul), else ``forward``. ``attention_flops`` and
    ``training_flops`` are the same count over ``n_tokens``.
    """
    check_int("n_params", n_params, minimum=0)
    for name, value in (
        ("n_layers", n_layers),
        ("d_model", d_model),
        ("context_len", context_len),
    ):
        check_int(name, value, minimum=1)
    check_int("vocab_size", vocab_size, minimum=1, optional=True)
    if attention not in ATTENTION_CONVENTIONS:
        raise ValueError(f"attention must be 'kaplan' or 'dense', got {attention!r}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be True or False, got {training!r}")
    per_layer_attention = (2 if attention == "kaplan" else 4) * context_len * d_model
    terms = {
        "weights": 2.0 * n_params,
        "attention": float(n_layers * per_layer_attention),
        "lm_head": 0.0 if vocab_size is None else 2.0 * d_model * vocab_size,
    }
    terms["forward"] = terms["weights"] + terms["attention"] + terms["lm_head"]
    terms["total"] = 3.0 * terms["forward"] if training else terms["forward"]
    return terms


def flops_per_token(
    n_params: int,
    n_layers: int,
    d_model: int,
    context_len: int,
    training: bool = True,
    *,
    vocab_size: int | None = None,
    attention: str = "kaplan",
) -> float:
    """``flops_per_token_terms(...)["total"]``: ``3 x (2N + 2·n_layers·n_ctx·d_model)`` by
    default (≈ 6N per trained token, Kaplan et al. 2020)."""
    return flops_per_token_terms(
        n_params,
        n_layers,
        d_model,
        context_len,
        training,
        vocab_size=vocab_size,
        attention=attention,
    )["total"]


def tokens_per_parameter(n_params: float, n_tokens: float) -> float:
    """``D / N``; Chinchilla's compute-optimal models sit near 20."""
    return _positive("n_tokens", n_tokens) / _positive("n_params", n_params)


def chinchilla_optimal(
    flops: float, tokens_per_param: float = 20.0
) -> tuple[float, float]:
    """Split a compute budget ``C`` into ``(N, D)`` with ``C = 6·N·D`` and ``D = r·N``.

    Returns ``N = sqrt(C / (6 r))`` and ``D = r·N``. With ``r ≈ 20`` this is the rule of thumb
    drawn from Hoffmann et al. (2022); the paper's own fits give somewhat different exponents.
    """
    flops = _positive("flops", flops)
    ratio = _positive("tokens_per_param", tokens_per_param)
    n_params = math.sqrt(flops / (6.0 * ratio))
    return n_params, ratio * n_params


# ------------------------------------------------------------------------------ time


def accelerator_hours(
    flops: float, peak_flops_per_s: float, utilisation: float
) -> float:
    """Accelerator-hours to execute ``flops`` at ``utilisation × peak_flops_per_s``.

    ``utilisation`` is the achieved fraction of peak (model FLOPs utilisation, MFU), in (0, 1].
    """
    flops = _positive("flops", flops)
    peak = _positive("peak_flops_per_s", peak_flops_per_s)
    utilisation = _fraction("utilisation", utilisation)
    return flops / (peak * utilisation) / SECONDS_PER_HOUR


def wall_clock_days(
    flops: float, peak_flops_per_s: float, utilisation: float, n_accelerators: int
) -> float:
    """Days of wall-clock time for ``flops`` spread perfectly over ``n_accelerators``."""
    hours = accelerator_hours(flops, peak_flops_per_s, utilisation)
    n = _positive("n_accelerators", n_accelerators, integer=True)
    return hours / n / 24.0


@dataclass(frozen=True)
class TrainingCost:
    """The result of :func:`estimate_training_cost` (inputs echoed for display)."""

    n_params: float
    n_tokens: float
    peak_flops_per_s: float
    utilisation: float
    n_accelerators: int
    flops: float
    accelerator_hours: float
    wall_clock_days: float

    @property
    def wall_clock_seconds(self) -> float:
        return self.wall_clock_days * SECONDS_PER_DAY

    def summary(self) -> str:
        """A few human-readable lines."""
        return "\n".join(
            [
                f"compute C = 6·N·D = 6 × {format_count(self.n_params)} × "
                f"{format_count(self.n_tokens)} = {self.flops:.3g} FLOPs",
                f"throughput per accelerator = {self.utilisation:.0%} × "
                f"{self.peak_flops_per_s:.3g} FLOP/s = "
                f"{self.utilisation * self.peak_flops_per_s:.3g} FLOP/s",
                f"accelerator-hours = {self.accelerator_hours:,.4g}",
                f"wall-clock on {self.n_accelerators:,} accelerator(s) = "
                f"{format_duration(self.wall_clock_seconds)}",
            ]
        )


def estimate_training_cost(
    n_params: float,
    n_tokens: float,
    peak_flops_per_s: float,
    utilisation: float,
    n_accelerators: int = 1,
) -> TrainingCost:
    """FLOPs (``6·N·D``), accelerator-hours and wall-clock days of a training run.

    Assumes perfect scaling over accelerators; real runs also lose time to restarts,
    evaluation and communication that MFU does not capture.
    """
    flops = training_flops(n_params, n_tokens)
    hours = accelerator_hours(flops, peak_flops_per_s, utilisation)
    days = wall_clock_days(flops, peak_flops_per_s, utilisation, n_accelerators)
    return TrainingCost(
        float(n_params),
        float(n_tokens),
        float(peak_flops_per_s),
        float(utilisation),
        int(n_accelerators),
        flops,
        hours,
        days,
    )


# ------------------------------------------------------------------------------ memory

#: Bytes per parameter for mixed-precision training with Adam/AdamW (Rajbhandari et al. 2020):
#: 16-bit weights and gradients for the forward/backward passes, an fp32 master copy of the
#: weights for the update, and Adam's two fp32 moment estimates. Activations come on top.
MIXED_PRECISION_ADAMW_BYTES: dict[str, int] = {
    "16-bit weights": 2,
    "16-bit gradients": 2,
    "fp32 master weights": 4,
    "fp32 Adam first moment": 4,
    "fp32 Adam second moment": 4,
}


ZERO_STAGES = (0, 1, 2, 3)


def training_memory_bytes(
    n_params: float,
    bytes_per_param: float | None = None,
    *,
    stage: int = 0,
    n_devices: int = 1,
    weight_bytes: float = 2,
    grad_bytes: float = 2,
    optimizer_bytes: float = 12,
) -> float:
    """Bytes of weights + gradients + optimizer state per device. Activations are not included.

    By default ``n_params x 16`` (:data:`MIXED_PRECISION_ADAMW_BYTES`: 2-byte weights, 2-byte
    gradients, ``optimizer_bytes`` = 12 of fp32 master weights and Adam moments), all on one
    device. ``stage`` shards them over ``n_devices`` as ZeRO does (Rajbhandari et al. 2020):
    stage 0 is plain data parallelism (everything replicated), stage 1 shards the optimizer
    state, stage 2 also the gradients, stage 3 (FSDP's full sharding) also the weights.
    ``bytes_per_param`` replaces the split by one total, which can only be replicated.
    """
    n_params = _positive("n_params", n_params)
    if isinstance(stage, bool) or stage not in ZERO_STAGES:
        raise ValueError(f"stage must be 0, 1, 2 or 3, got {stage!r}")
    check_int("n_devices", n_devices, minimum=1)
    if bytes_per_param is not None:
        if stage:
            raise ValueError(
                "bytes_per_param is one total with no split into weights, gradients and "
                "optimizer state; for stage > 0 give weight_bytes, grad_bytes, optimizer_bytes"
            )
        return n_params * _positive("bytes_per_param", bytes_per_param)
    parts = [
        _positive("weight_bytes", weight_bytes),
        _positive("grad_bytes", grad_bytes),
        _positive("optimizer_bytes", optimizer_bytes),
    ]
    replicated, sharded = (
        parts[: 3 - stage],
        parts[3 - stage :],
    )  # stage s shards the last s
    return n_params * (sum(replicated) + sum(sharded) / n_devices)


# ------------------------------------------------------------------------------ formatting


def format_count(x: float) -> str:
    """``1.75e11 -> '175B'``, ``1.4e12 -> '1.4T'``, ``340e6 -> '340M'``."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
        raise ValueError(f"x must be a finite number, got {x!r}")
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def format_duration(seconds: float) -> str:
    """A duration in the largest sensible unit: seconds, minutes, hours, days or years."""
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, numbers.Real)
        or seconds < 0
    ):
        raise ValueError(f"seconds must be a number >= 0, got {seconds!r}")
    for limit, unit, size in (
        (120, "s", 1.0),
        (7200, "min", 60.0),
        (3 * SECONDS_PER_DAY, "h", SECONDS_PER_HOUR),
        (730 * SECONDS_PER_DAY, "days", SECONDS_PER_DAY),
    ):
        if seconds < limit:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds / (365.25 * SECONDS_PER_DAY):.3g} years"


# ------------------------------------------------------------------------------ widget


def cost_calculator(
    n_params: float = 7e9,
    n_tokens: float = 2e12,
    peak_flops_per_s: float = 989e12,
    utilisation: float = 0.4,
    n_accelerators: int = 1024,
):
    """An ipywidgets form: edit N, D, peak FLOP/s, utilisation and accelerator count, and read
    the FLOPs, accelerator-hours and wall-clock time. Invalid input shows a message instead of
    raising. The defaults (7B parameters, 2T tokens, 1024 accelerators at 989 TFLOP/s dense bf16
    peak — an H100 SXM's datasheet figure — and 40% MFU) are only a starting point.

    Returns an ``ipywidgets.VBox``; its ``.result`` attribute is an ``ipywidgets.HTML``.
    """
    import html

    import ipywidgets as widgets

    style = {"description_width": "260px"}
    layout = widgets.Layout(width="480px")
    fields = {
        "n_params": widgets.FloatText(
            value=n_params, description="parameters N", style=style, layout=layout
        ),
        "n_tokens": widgets.FloatText(
            value=n_tokens, description="training tokens D", style=style, layout=layout
        ),
        "peak_flops_per_s": widgets.FloatText(
            value=peak_flops_per_s,
            description="peak FLOP/s per accelerator",
            style=style,
            layout=layout,
        ),
        "utilisation": widgets.FloatText(
            value=utilisation,
            description="utilisation (MFU, 0–1]",
            style=style,
            layout=layout,
        ),
        "n_accelerators": widgets.IntText(
            value=n_accelerators,
            description="number of accelerators",
            style=style,
            layout=layout,
        ),
    }
    result = widgets.HTML()

    def update(_change=None) -> None:
        values = {name: w.value for name, w in fields.items()}
        try:
            cost = estimate_training_cost(**values)
        except (TypeError, ValueError) as err:
            result.value = f"<div style='color:#b00020'><b>Invalid input:</b> {html.escape(str(err))}</div>"
            return
        lines = "<br>".join(html.escape(line) for line in cost.summary().splitlines())
        result.value = f"<div style='font-family:monospace'>{lines}</div>"

    for w in fields.values():
        w.observe(update, names="value")
    update()
    box = widgets.VBox([*fields.values(), result])
    box.fields, box.result = fields, result  # handles for tests and for notebook code
    return box
