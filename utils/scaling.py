"""Scaling laws: the book's ladder of model sizes, power-law fits, compute-optimal allocation.

- :data:`LADDER` and :func:`ladder_model`: the decoder shapes chapter 5.5 trains (and
  ``benchmarks/mfu.py`` measures), from ~25k to ~1.8M non-embedding parameters.
- :func:`power_law` and :func:`fit_power_law`: ``L(x) = a·x^(−α) + c`` for one variable (model
  size N or data size D), optionally with ``c = 0`` (Kaplan et al. 2020 fit pure power laws).
- :func:`joint_law` and :func:`fit_joint_law`: ``L(N, D) = E + A·N^(−α) + B·D^(−β)``, the form of
  Hoffmann et al. (2022), fitted to runs that vary N and D.
- :func:`compute_optimal`: the ``(N, D)`` that minimise the joint law under ``C = 6·N·D``.
- :func:`check_flop_budget` and :func:`budget_calculator`: a widget turning a FLOP budget into
  the model size and token count a fit recommends.

Fits use :mod:`scipy.optimize` on the *logarithm* of the loss: every point then counts by its
relative error, as on the log-log plots the laws are drawn on. Arrays are 1-D, one entry per run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "LADDER",
    "ModelShape",
    "PowerLawFit",
    "JointLawFit",
    "budget_calculator",
    "budget_report",
    "check_flop_budget",
    "compute_optimal",
    "fit_joint_law",
    "fit_power_law",
    "joint_law",
    "ladder_model",
    "power_law",
]


# --------------------------------------------------------------------------------------------
# The ladder of model sizes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelShape:
    """Width, depth and heads of one :class:`~utils.models.TransformerLM` (MLP width 4·d)."""

    d_model: int
    n_layers: int
    n_heads: int

    @property
    def name(self) -> str:
        return f"d{self.d_model}-L{self.n_layers}"

    def approx_non_embedding_params(self) -> int:
        """``12·n_layers·d²`` (Kaplan et al.'s N: attention 4d², MLP 8d² per block)."""
        return 12 * self.n_layers * self.d_model**2


# Width and depth grow together (Kaplan et al. found the loss depends on N far more than on the
# shape, for aspect ratios d/L over a wide range); heads are 16-32 wide. 12·L·d² spans 24.6k to
# 1.77M, a factor of 72.
LADDER: tuple[ModelShape, ...] = (
    ModelShape(32, 2, 2),
    ModelShape(48, 2, 2),
    ModelShape(64, 3, 4),
    ModelShape(96, 3, 4),
    ModelShape(128, 4, 4),
    ModelShape(192, 4, 6),
)


def ladder_model(shape: ModelShape, vocab_size: int, context_len: int):
    """A :class:`~utils.models.TransformerLM` of ``shape``: learned positions, tied output layer,
    no dropout (every run sees each token at most once, so there is nothing to overfit)."""
    from utils.models import TransformerLM

    if not isinstance(shape, ModelShape):
        raise TypeError(f"shape must be a ModelShape, got {type(shape).__name__}")
    return TransformerLM(
        vocab_size,
        shape.d_model,
        shape.n_heads,
        shape.n_layers,
        max_len=context_len,
        dropout=0.0,
        tie_weights=True,
    )


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _positive_array(name: str, values: Any) -> np.ndarray:
    """``values`` as a 1-D float array of finite numbers > 0, or a ValueError naming ``name``."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of numbers, got a string")
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise TypeError(
            f"{name} must be a sequence of numbers, got {values!r:.80}"
        ) from err
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one value per run), got shape {array.shape}"
        )
    bad = ~(np.isfinite(array) & (array > 0))
    if bad.any():
        raise ValueError(
            f"{name} must hold finite numbers > 0; entry {int(np.argmax(bad))} is {array[bad][0]!r}"
        )
    return array


def _check_same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"one value per run is needed in each array, got lengths {lengths}"
        )
    return next(iter(lengths.values()))


# --------------------------------------------------------------------------------------------
# One variable: L(x) = a·x^(−α) + c
# --------------------------------------------------------------------------------------------


def power_law(x: Any, a: float, alpha: float, c: float = 0.0) -> np.ndarray | float:
    """``a·x^(−α) + c`` (element-wise for arrays)."""
    return a * np.power(np.asarray(x, dtype=float), -alpha) + c


@dataclass(frozen=True)
class PowerLawFit:
    """A fitted ``L(x) = a·x^(−α) + c``.

    ``alpha_stderr``: the standard error of α from the fit's Jacobian (``None`` when there are no
    more points than parameters). ``rms_log_residual``: root-mean-square of
    ``log(fit) − log(loss)`` over the points, i.e. the typical relative misfit. ``c_at_bound``:
    the fitted ``c`` sits at an end of its allowed range (0 or the smallest loss), so the points
    do not pin it down (and α, which trades off against it, is poorly determined too).
    """

    a: float
    alpha: float
    c: float
    alpha_stderr: float | None
    rms_log_residual: float
    n_points: int
    c_at_bound: bool = False

    def __call__(self, x: Any) -> np.ndarray | float:
        return power_law(x, self.a, self.alpha, self.c)


def _stderr(jacobian: np.ndarray, residuals: np.ndarray, index: int) -> float | None:
    """Standard error of parameter ``index`` from a least-squares Jacobian (Gauss-Newton)."""
    n, p = jacobian.shape
    if n <= p:
        return None
    sigma2 = float(residuals @ residuals) / (n - p)
    try:
        covariance = np.linalg.inv(jacobian.T @ jacobian) * sigma2
    except np.linalg.LinAlgError:
        return None
    variance = covariance[index, index]
    return (
        float(math.sqrt(variance))
        if variance >= 0 and math.isfinite(variance)
        else None
    )


def fit_power_law(
    x: Sequence[float], loss: Sequence[float], irreducible: bool = True
) -> PowerLawFit:
    """Fit ``loss ≈ a·x^(−α) + c`` by least squares on ``log(loss)``.

    Args:
        x: the scaled quantity per run (parameters N or tokens D), > 0.
        loss: the measured loss per run, > 0.
        irreducible: fit the constant ``c >= 0`` (three parameters, needs >= 4 points for an
            error bar); ``False`` fixes ``c = 0``, a straight line in log-log (Kaplan et al.'s
            form ``(x_c / x)^α``).

    The search starts from the best of a grid of ``c`` values (each one making the fit a straight
    line, solved exactly), then refines all parameters with ``scipy.optimize.least_squares``
    within bounds ``0 <= α <= 5`` and ``0 <= c < min(loss)``. x is divided by its geometric mean
    first, so the problem is well scaled whatever its units.

    Raises ``ValueError`` for bad input (too few runs, fewer than 2 distinct x, non-positive or
    non-finite values) and ``RuntimeError`` if the optimiser fails.
    """
    from scipy.optimize import least_squares

    x, loss = _positive_array("x", x), _positive_array("loss", loss)
    n = _check_same_length(x=x, loss=loss)
    n_params = 3 if irreducible else 2
    if n < n_params:
        raise ValueError(
            f"fitting {n_params} parameters needs at least {n_params} runs, got {n}"
        )
    if len(np.unique(x)) < 2:
        raise ValueError("x must take at least 2 distinct values to fit an exponent")

    x_ref = float(np.exp(np.mean(np.log(x))))
    u, log_loss = np.log(x / x_ref), np.log(loss)
    c_max = float(loss.min()) * (1.0 - 1e-9)

    def line_through(c: float) -> tuple[float, float, float]:
        """Exact log-log line for a fixed c: (log A, α, squared error of log loss)."""
        slope, intercept = np.polyfit(u, np.log(loss - c), 1)
        alpha = float(np.clip(-slope, 0.0, 5.0))
        log_a = float(np.mean(np.log(loss - c) + alpha * u))
        pred = np.log(np.exp(log_a - alpha * u) + c)
        return log_a, alpha, float(np.sum((pred - log_loss) ** 2))

    c_grid = [0.0] if not irreducible else list(c_max * np.linspace(0.0, 0.99, 34))
    c0, (log_a0, alpha0, _) = min(
        ((c, line_through(c)) for c in c_grid), key=lambda item: item[1][2]
    )

    def residuals(theta: np.ndarray) -> np.ndarray:
        log_a, alpha = theta[0], theta[1]
        c = theta[2] if irreducible else 0.0
        return np.log(np.exp(log_a - alpha * u) + c) - log_loss

    start = [log_a0, alpha0] + ([min(c0, c_max * 0.999)] if irreducible else [])
    lower = [-np.inf, 0.0] + ([0.0] if irreducible else [])
    upper = [np.inf, 5.0] + ([c_max] if irreducible else [])
    result = least_squares(
        residuals, start, bounds=(lower, upper), x_scale="jac", method="trf"
    )
    if not result.success or not np.all(np.isfinite(result.x)):
        raise RuntimeError(f"the power-law fit did not converge: {result.message}")
    log_a, alpha = float(result.x[0]), float(result.x[1])
    c = float(result.x[2]) if irreducible else 0.0
    at_bound = irreducible and (c <= 1e-6 * c_max or c >= c_max * (1 - 1e-6))
    return PowerLawFit(
        a=float(math.exp(log_a) * x_ref**alpha),  # A·(x/x_ref)^-α = (A·x_ref^α)·x^-α
        alpha=alpha,
        c=c,
        alpha_stderr=_stderr(result.jac, result.fun, 1),
        rms_log_residual=float(math.sqrt(np.mean(result.fun**2))),
        n_points=n,
        c_at_bound=bool(at_bound),
    )


# --------------------------------------------------------------------------------------------
# Two variables: L(N, D) = E + A·N^(−α) + B·D^(−β)
# --------------------------------------------------------------------------------------------


def joint_law(
    n_params: Any,
    n_tokens: Any,
    E: float,
    A: float,
    alpha: float,
    B: float,
    beta: float,
) -> np.ndarray | float:
    """``E + A·N^(−α) + B·D^(−β)`` (Hoffmann et al. 2022, eq. 2), element-wise."""
    n_params = np.asarray(n_params, dtype=float)
    n_tokens = np.asarray(n_tokens, dtype=float)
    return E + A * np.power(n_params, -alpha) + B * np.power(n_tokens, -beta)


@dataclass(frozen=True)
class JointLawFit:
    """A fitted ``L(N, D) = E + A·N^(−α) + B·D^(−β)``; ``rms_log_residual`` as in
    :class:`PowerLawFit`. Calling it gives the predicted loss."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float
    rms_log_residual: float
    n_points: int

    def __call__(self, n_params: Any, n_tokens: Any) -> np.ndarray | float:
        return joint_law(
            n_params, n_tokens, self.E, self.A, self.alpha, self.B, self.beta
        )


def fit_joint_law(
    n_params: Sequence[float], n_tokens: Sequence[float], loss: Sequence[float]
) -> JointLawFit:
    """Fit ``loss ≈ E + A·N^(−α) + B·D^(−β)`` by least squares on ``log(loss)``.

    The runs must vary both N and D (at least 2 distinct values of each) and number at least 6
    (five parameters). Start: for each (α, β) of a grid, the best non-negative ``E, A, B`` is a
    linear problem (``scipy.optimize.nnls``); the best grid point is then refined with
    ``least_squares`` (bounds ``E, A, B >= 0``, ``0 <= α, β <= 5``). N and D are divided by their
    geometric means first. Raises ``ValueError`` for bad input, ``RuntimeError`` if the fit fails.
    """
    from scipy.optimize import least_squares, nnls

    n_params = _positive_array("n_params", n_params)
    n_tokens = _positive_array("n_tokens", n_tokens)
    loss = _positive_array("loss", loss)
    n = _check_same_length(n_params=n_params, n_tokens=n_tokens, loss=loss)
    if n < 6:
        raise ValueError(f"fitting E, A, α, B, β needs at least 6 runs, got {n}")
    for name, values in (("n_params", n_params), ("n_tokens", n_tokens)):
        if len(np.unique(values)) < 2:
            raise ValueError(
                f"{name} must take at least 2 distinct values across the runs"
            )

    n_ref = float(np.exp(np.mean(np.log(n_params))))
    d_ref = float(np.exp(np.mean(np.log(n_tokens))))
    un, ud, log_loss = np.log(n_params / n_ref), np.log(n_tokens / d_ref), np.log(loss)

    best = None
    for alpha in np.linspace(0.05, 2.0, 40):
        for beta in np.linspace(0.05, 2.0, 40):
            design = np.stack(
                [np.ones(n), np.exp(-alpha * un), np.exp(-beta * ud)], axis=1
            )
            coef, _ = nnls(design, loss)
            pred = design @ coef
            if np.any(pred <= 0):
                continue
            sse = float(np.sum((np.log(pred) - log_loss) ** 2))
            if best is None or sse < best[0]:
                best = (sse, coef, alpha, beta)
    if best is None:
        raise RuntimeError(
            "the joint fit found no starting point with positive predictions"
        )
    _, (e0, a0, b0), alpha0, beta0 = best

    def residuals(theta: np.ndarray) -> np.ndarray:
        e, a, alpha, b, beta = theta
        return np.log(e + a * np.exp(-alpha * un) + b * np.exp(-beta * ud)) - log_loss

    tiny = 1e-12 * float(loss.min())
    start = [e0, max(a0, tiny), alpha0, max(b0, tiny), beta0]
    lower, upper = [0.0, 0.0, 0.0, 0.0, 0.0], [np.inf, np.inf, 5.0, np.inf, 5.0]
    result = least_squares(
        residuals, start, bounds=(lower, upper), x_scale="jac", method="trf"
    )
    if not result.success or not np.all(np.isfinite(result.x)):
        raise RuntimeError(f"the joint fit did not converge: {result.message}")
    e, a, alpha, b, beta = (float(v) for v in result.x)
    return JointLawFit(
        E=e,
        A=a * n_ref**alpha,
        alpha=alpha,
        B=b * d_ref**beta,
        beta=beta,
        rms_log_residual=float(math.sqrt(np.mean(result.fun**2))),
        n_points=n,
    )


# --------------------------------------------------------------------------------------------
# Compute-optimal allocation
# --------------------------------------------------------------------------------------------

MIN_FLOPS, MAX_FLOPS = 1e6, 1e30


def check_flop_budget(flops: Any) -> float:
    """``flops`` as a float if it is a usable training budget, else a ValueError saying why.

    Accepted: a finite real number in ``[1e6, 1e30]`` FLOPs (1e6 trains the smallest ladder model
    on a few dozen tokens; 1e30 is far beyond any training run reported so far), or a string
    that reads as one (``"3e21"``, ``"1_000_000"``, as typed into the calculator).
    """
    if isinstance(flops, str):
        try:
            flops = float(flops.strip())
        except ValueError:
            raise ValueError(
                f"the compute budget must be a number of FLOPs such as 1e18, got {flops!r:.40}"
            ) from None
    if isinstance(flops, bool) or not isinstance(
        flops, (int, float, np.integer, np.floating)
    ):
        raise ValueError(
            f"the compute budget must be a number of FLOPs, got {flops!r:.60}"
        )
    flops = float(flops)
    if math.isnan(flops):
        raise ValueError(
            "the compute budget is NaN: enter a number of FLOPs such as 1e18"
        )
    if flops <= 0:
        raise ValueError(f"the compute budget must be positive, got {flops:g} FLOPs")
    if math.isinf(flops) or flops > MAX_FLOPS:
        raise ValueError(
            f"{flops:g} FLOPs is not a plausible training budget: the calculator accepts at most "
            f"{MAX_FLOPS:g}"
        )
    if flops < MIN_FLOPS:
        raise ValueError(
            f"{flops:g} FLOPs is too small to train anything: the calculator accepts at least "
            f"{MIN_FLOPS:g}"
        )
    return flops


def compute_optimal(flops: float, fit: JointLawFit) -> tuple[float, float]:
    """The ``(N, D)`` minimising ``fit(N, D)`` subject to ``6·N·D = flops``.

    Substituting ``D = C/(6N)`` and setting the derivative in N to zero gives (Hoffmann et al.
    2022, eq. 4)::

        N_opt = G·(C/6)^(β/(α+β)),   D_opt = G^(−1)·(C/6)^(α/(α+β)),   G = (αA / (βB))^(1/(α+β))

    Needs ``α, β, A, B > 0`` (otherwise one of the two terms never falls and the optimum runs off
    to the edge); raises ``ValueError`` then, and for a bad ``flops`` (:func:`check_flop_budget`).
    """
    flops = check_flop_budget(flops)
    if not isinstance(fit, JointLawFit):
        raise TypeError(f"fit must be a JointLawFit, got {type(fit).__name__}")
    if min(fit.alpha, fit.beta, fit.A, fit.B) <= 0:
        raise ValueError(
            "the fit has a term that does not fall with N or D (α, β, A or B is 0): it has no "
            "compute-optimal trade-off"
        )
    s = fit.alpha + fit.beta
    g = (fit.alpha * fit.A / (fit.beta * fit.B)) ** (1.0 / s)
    half = flops / 6.0
    return g * half ** (fit.beta / s), half ** (fit.alpha / s) / g


# --------------------------------------------------------------------------------------------
# Widget
# --------------------------------------------------------------------------------------------


def _count(x: float) -> str:
    for value, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= value:
            return f"{x / value:.3g}{suffix}"
    return f"{x:.3g}"


def budget_report(
    flops: Any,
    fit: JointLawFit,
    measured_flops: tuple[float, float],
    tokens_per_param: float = 20,
) -> str:
    """The calculator's text for a budget: the fit's (N, D), its predicted loss, the same budget
    split at ``tokens_per_param`` (Hoffmann et al.'s ~20), and a warning when the budget lies more
    than 10x outside ``measured_flops`` (the smallest and largest compute of the fitted runs).
    Raises ``ValueError`` for a bad budget."""
    flops = check_flop_budget(flops)
    n_opt, d_opt = compute_optimal(flops, fit)
    rule_n = math.sqrt(flops / (6.0 * tokens_per_param))
    lines = [
        f"budget C = {flops:.3g} FLOPs, split with C = 6·N·D:",
        f"  this fit:  N = {_count(n_opt)} parameters, D = {_count(d_opt)} tokens "
        f"({d_opt / n_opt:.3g} tokens per parameter), predicted loss {fit(n_opt, d_opt):.3f}",
        f"  {tokens_per_param:g} tokens per parameter: N = {_count(rule_n)}, "
        f"D = {_count(tokens_per_param * rule_n)}",
    ]
    low, high = measured_flops
    if flops > 10 * high or flops < low / 10:
        lines.append(
            f"  warning: the fitted runs used {low:.2g} to {high:.2g} FLOPs; this budget is an "
            "extrapolation of their fit, far outside what was measured"
        )
    return "\n".join(lines)


def budget_calculator(
    fit: JointLawFit,
    measured_flops: tuple[float, float],
    flops: str = "1e15",
    tokens_per_param: float = 20,
):
    """An ipywidgets form: type a FLOP budget (``1e18``, ``3.5e21``), read :func:`budget_report`.
    Invalid input (text, zero, negative, NaN, absurd sizes) shows a message instead of raising.
    Returns an ``ipywidgets.VBox`` with ``.field`` (the text box) and ``.result`` (an
    ``ipywidgets.HTML``) for tests and notebook code."""
    import html

    import ipywidgets as widgets

    field = widgets.Text(
        value=str(flops),
        description="compute budget C (FLOPs)",
        style={"description_width": "200px"},
        layout=widgets.Layout(width="420px"),
    )
    result = widgets.HTML()

    def update(_change=None) -> None:
        try:
            text = budget_report(field.value, fit, measured_flops, tokens_per_param)
        except (TypeError, ValueError) as err:
            result.value = f"<div style='color:#b00020'><b>Invalid input:</b> {html.escape(str(err))}</div>"
            return
        result.value = f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre>"

    field.observe(update, names="value")
    update()
    box = widgets.VBox([field, result])
    box.field, box.result = field, result
    return box
