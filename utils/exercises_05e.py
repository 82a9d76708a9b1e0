"""The graders of chapter 5e's exercises (scaling laws); see :mod:`utils.grader`."""

from __future__ import annotations

import math

import numpy as np

from utils import scaling
from utils.grader import exercise

# Chinchilla's budget: 70 B parameters trained on 1.4 T tokens, C = 6·N·D.
_CHINCHILLA_C = 6 * 70e9 * 1.4e12


def _pair(value, what: str) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{what} should return a pair (N, D), got {value!r:.60}")
    return float(value[0]), float(value[1])


def _close(x: float, y: float, rtol: float = 1e-6) -> bool:
    return math.isclose(x, y, rel_tol=rtol)


def _twenty_tokens(flops):
    n = math.sqrt(flops / (6 * 20))
    return n, 20 * n


@exercise(
    "05e.twenty_tokens",
    "Split a compute budget at 20 tokens per parameter",
    difficulty=1,
    reference=_twenty_tokens,
    wrong=[
        (lambda c: (math.sqrt(c / 20), 20 * math.sqrt(c / 20)), "6 FLOPs"),
        (lambda c: (math.sqrt(c / 40), 20 * math.sqrt(c / 40)), "forward pass only"),
        (lambda c: (math.sqrt(c * 20 / 6), math.sqrt(c * 20 / 6) / 20), "swapped"),
        (lambda c: (c / 120, 20 * c / 120), "square root"),
    ],
)
def twenty_tokens(answer):
    """``answer(C)`` -> ``(N, D)`` with ``D = 20·N`` and ``6·N·D = C`` (FLOPs, params, tokens)."""
    for flops in (_CHINCHILLA_C, 1e18, 3.5e21, 1e24):
        n, d = _pair(answer(flops), f"twenty_tokens({flops:g})")
        want_n, want_d = _twenty_tokens(flops)
        if _close(n, want_n, 1e-4) and _close(d, want_d, 1e-4):
            continue
        if n > 0 and _close(d / n, 1 / 20, 1e-4):
            yield (
                f"C = {flops:g}: D/N = {d / n:.3g}; the ratios are swapped: 20 tokens per "
                "parameter means D = 20·N, far more tokens than parameters"
            )
        elif n > 0 and not _close(d / n, 20, 1e-4):
            yield f"C = {flops:g}: your D/N = {d / n:.4g}, but the rule is D = 20·N"
        elif _close(6 * n * d, flops / 6, 1e-4):
            yield (
                f"C = {flops:g}: your 6·N·D = {6 * n * d:.3g} is C/6; count C ≈ 6·N·D "
                "once: 6 FLOPs per parameter and token, i.e. N = √(C/120)"
            )
        elif _close(n * d, flops, 1e-4):
            yield (
                f"C = {flops:g}: your N·D = C leaves out the 6 FLOPs per parameter and token "
                "(2 forward, 4 backward): C ≈ 6·N·D"
            )
        elif _close(2 * n * d, flops, 1e-4):
            yield (
                f"C = {flops:g}: your 2·N·D = C counts the forward pass only; training also "
                "runs the backward pass (4 more FLOPs): C ≈ 6·N·D"
            )
        elif _close(n, flops / 120, 1e-4):
            yield (
                f"C = {flops:g}: N = C/120 forgets the square root: 6·N·(20·N) = 120·N² = C"
            )
        else:
            yield (
                f"C = {flops:g}: you gave N = {n:.4g}, D = {d:.4g}; expected "
                f"N = {want_n:.4g}, D = {want_d:.4g} (6·N·D = C, D = 20·N)"
            )
        return


def _fit_pure(n, loss):
    slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
    return float(math.exp(intercept)), float(-slope)


def _linear_scale_fit(n, loss):  # a least-squares line through (N, L), not log-log
    slope, intercept = np.polyfit(np.asarray(n, float), np.asarray(loss, float), 1)
    return float(intercept), float(-slope)


@exercise(
    "05e.fit_pure_power_law",
    "Fit a pure power law L = a·N^(−α) in log-log",
    difficulty=2,
    reference=_fit_pure,
    wrong=[
        (lambda n, loss: (_fit_pure(n, loss)[0], -_fit_pure(n, loss)[1]), "sign"),
        (
            lambda n, loss: (math.log(_fit_pure(n, loss)[0]), _fit_pure(n, loss)[1]),
            "log a",
        ),
        (_linear_scale_fit, "log-log"),
        (
            lambda n, loss: (
                10 ** np.polyfit(np.log10(n), np.log10(loss), 1)[1] * 10,
                _fit_pure(n, loss)[1],
            ),
            "the prefactor a",
        ),
    ],
)
def fit_pure_power_law(answer):
    """``answer(N, loss)`` (1-D arrays) -> ``(a, alpha)`` of ``loss ≈ a·N^(−alpha)``, fitted as a
    straight line in log-log; compared with ``utils.scaling.fit_power_law(irreducible=False)``."""
    g = np.random.default_rng(0)
    n = np.array([2.5e4, 6e4, 1.4e5, 3.3e5, 8e5, 1.8e6])
    cases = [
        ("Kaplan-like, exact", 11.0, 0.076, np.zeros(6)),
        ("steep, exact", 40.0, 0.34, np.zeros(6)),
        ("with 2 % noise", 6.0, 0.2, g.normal(0, 0.02, 6)),
    ]
    for name, a_true, alpha_true, noise in cases:
        loss = a_true * n**-alpha_true * np.exp(noise)
        a, alpha = _pair(answer(n.copy(), loss.copy()), "your fit")
        want = scaling.fit_power_law(n, loss, irreducible=False)
        if _close(alpha, want.alpha, 1e-3) and _close(a, want.a, 1e-3):
            continue
        if _close(alpha, -want.alpha, 1e-3):
            yield (
                f"{name}: α = {alpha:.4g} has the wrong sign; the log-log slope is −α, so "
                f"α = {want.alpha:.4g} (loss falls as N grows)"
            )
        elif not _close(alpha, want.alpha, 1e-3):
            lin = _linear_scale_fit(n, loss)
            if _close(alpha, lin[1], 1e-3):
                yield (
                    f"{name}: α = {alpha:.3g} is the slope of a straight line through (N, L); "
                    "a power law is a straight line in log-log: fit log L against log N"
                )
            else:
                yield f"{name}: α = {alpha:.4g}, the least-squares log-log fit gives {want.alpha:.4g}"
        elif _close(a, math.log(want.a), 1e-3):
            yield (
                f"{name}: a = {a:.4g} is log a, the intercept of the line; return "
                f"a = exp(intercept) = {want.a:.4g}"
            )
        else:
            yield (
                f"{name}: α is right but the prefactor a = {a:.4g} should be {want.a:.4g} "
                f"(off by a factor {a / want.a:.3g}; with log10, a = 10**intercept)"
            )
        return


_HOFFMANN = dict(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)


def _compute_optimal(flops, A, alpha, B, beta):
    s = alpha + beta
    g = (alpha * A / (beta * B)) ** (1 / s)
    return g * (flops / 6) ** (beta / s), (flops / 6) ** (alpha / s) / g


def _no_six(flops, A, alpha, B, beta):
    return _compute_optimal(6 * flops, A, alpha, B, beta)


def _swapped(flops, A, alpha, B, beta):
    s = alpha + beta
    g = (alpha * A / (beta * B)) ** (1 / s)
    return g * (flops / 6) ** (alpha / s), (flops / 6) ** (beta / s) / g


@exercise(
    "05e.compute_optimal",
    "The compute-optimal model size and token count",
    difficulty=2,
    reference=_compute_optimal,
    wrong=[
        (_no_six, "C/6"),
        (_swapped, "exponents"),
        (lambda c, A, a, B, b: _twenty_tokens(c), "rule of thumb"),
    ],
)
def compute_optimal(answer):
    """``answer(C, A, alpha, B, beta)`` -> ``(N_opt, D_opt)`` minimising
    ``E + A·N^(−α) + B·D^(−β)`` under ``6·N·D = C``; compared with
    ``utils.scaling.compute_optimal`` (Hoffmann et al.'s closed form)."""
    laws = [
        ("Hoffmann et al.'s constants", _HOFFMANN),
        ("α = β", dict(E=1.0, A=300.0, alpha=0.3, B=300.0, beta=0.3)),
        ("a made-up law", dict(E=0.5, A=50.0, alpha=0.5, B=2000.0, beta=0.25)),
    ]
    for name, law in laws:
        fit = scaling.JointLawFit(**law, rms_log_residual=0.0, n_points=0)
        for flops in (1e18, _CHINCHILLA_C):
            n, d = _pair(
                answer(flops, law["A"], law["alpha"], law["B"], law["beta"]),
                "your function",
            )
            want_n, want_d = scaling.compute_optimal(flops, fit)
            if _close(n, want_n, 1e-4) and _close(d, want_d, 1e-4):
                continue
            where = f"{name}, C = {flops:.3g}"
            if n <= 0 or d <= 0:
                yield f"{where}: N and D must be positive, got N = {n:.3g}, D = {d:.3g}"
            elif not _close(6 * n * d, flops, 1e-3):
                ratio = 6 * n * d / flops
                if _close(ratio, 6, 1e-3):
                    yield (
                        f"{where}: your 6·N·D = {6 * n * d:.3g} is 6·C: the closed form uses "
                        "C/6 (D = C/(6N)), not C"
                    )
                else:
                    yield (
                        f"{where}: your N, D spend 6·N·D = {6 * n * d:.3g} FLOPs, not the "
                        f"budget C (a factor {ratio:.3g})"
                    )
            elif _close(d / n, 20, 1e-3):
                yield (
                    f"{where}: D/N = 20 is the rule of thumb, not the optimum of this law "
                    f"(it gives N = {want_n:.3g}, D/N = {want_d / want_n:.3g}); minimise "
                    "L(N, C/(6N)) in N"
                )
            else:
                sw = _swapped(flops, law["A"], law["alpha"], law["B"], law["beta"])
                if _close(n, sw[0], 1e-4):
                    yield (
                        f"{where}: the exponents are swapped: N_opt grows as "
                        "(C/6)^(β/(α+β)), the exponent of the *other* term"
                    )
                else:
                    loss = scaling.joint_law(n, d, **law)
                    best = scaling.joint_law(want_n, want_d, **law)
                    yield (
                        f"{where}: N = {n:.4g} spends the budget but is not optimal (loss "
                        f"{loss:.5f} against {best:.5f} at N = {want_n:.4g})"
                    )
            return
