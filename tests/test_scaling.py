"""Tests for utils.scaling: the model ladder, power-law and joint fits, compute-optimal split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from utils import scaling
from utils.models import count_parameters
from utils.scaling import (
    LADDER,
    JointLawFit,
    ModelShape,
    budget_calculator,
    budget_report,
    check_flop_budget,
    compute_optimal,
    fit_joint_law,
    fit_power_law,
    joint_law,
    ladder_model,
    power_law,
)

N = np.array([2.5e4, 5.7e4, 1.5e5, 3.4e5, 7.9e5, 1.8e6])


# ---------------------------------------------------------------------------------- ladder


def test_ladder_spans_more_than_30x_in_non_embedding_parameters():
    counts = [
        count_parameters(ladder_model(s, 96, 64), exclude="embedding") for s in LADDER
    ]
    assert counts == sorted(counts) and len(counts) >= 5
    assert counts[-1] / counts[0] >= 30
    for shape, count in zip(LADDER, counts, strict=True):
        # 12·L·d² plus biases and LayerNorm gains (13·L·d + 2·d): within a few per cent
        assert count == pytest.approx(shape.approx_non_embedding_params(), rel=0.1)


def test_ladder_model_shape_and_errors():
    model = ladder_model(ModelShape(32, 2, 2), vocab_size=50, context_len=16)
    assert model.lm_head.weight is model.token_embedding.weight  # tied: not in N
    assert model.max_len == 16 and len(model.blocks) == 2
    assert ModelShape(32, 2, 2).name == "d32-L2"
    with pytest.raises(TypeError, match="ModelShape"):
        ladder_model((32, 2, 2), 50, 16)


# ---------------------------------------------------------------------------- power law


def test_power_law_fit_recovers_known_parameters():
    loss = power_law(N, 8.0, 0.3, 1.2)
    fit = fit_power_law(N, loss)
    assert (fit.a, fit.alpha, fit.c) == pytest.approx((8.0, 0.3, 1.2), rel=1e-6)
    assert fit.rms_log_residual < 1e-8 and fit.n_points == 6
    np.testing.assert_allclose(fit(N), loss, rtol=1e-9)


def test_pure_power_law_fit_is_the_log_log_line():
    loss = power_law(N, 5.0, 0.076)
    fit = fit_power_law(N, loss, irreducible=False)
    assert fit.c == 0.0
    assert (fit.a, fit.alpha) == pytest.approx((5.0, 0.076), rel=1e-9)
    slope = np.polyfit(np.log(N), np.log(loss), 1)[0]
    assert fit.alpha == pytest.approx(-slope, rel=1e-9)


def test_noisy_fit_is_close_and_reports_an_error_bar():
    rng = np.random.default_rng(0)
    loss = power_law(N, 8.0, 0.3, 1.2) * np.exp(rng.normal(0, 0.005, len(N)))
    fit = fit_power_law(N, loss)
    assert fit.alpha_stderr is not None and fit.alpha_stderr > 0
    assert abs(fit.alpha - 0.3) < 4 * fit.alpha_stderr
    assert fit_power_law(N[:3], loss[:3]).alpha_stderr is None  # 3 points, 3 parameters


def test_exponent_does_not_depend_on_units():
    # Loss per character vs per token (x k), and x in other units (x m): same exponent.
    loss = power_law(N, 8.0, 0.3, 1.2)
    base = fit_power_law(N, loss)
    rescaled = fit_power_law(N * 1000, loss * 4.0)
    assert rescaled.alpha == pytest.approx(base.alpha, rel=1e-6)
    assert rescaled.c == pytest.approx(4.0 * base.c, rel=1e-6)


def test_a_constant_the_points_do_not_determine_is_flagged():
    assert not fit_power_law(N, power_law(N, 8.0, 0.3, 1.2)).c_at_bound
    assert fit_power_law(N, power_law(N, 5.0, 0.076)).c_at_bound  # pure law: c -> 0
    assert not fit_power_law(N, power_law(N, 5.0, 0.076), irreducible=False).c_at_bound


def test_fitting_the_constant_changes_the_exponent():
    # The same curve read as a pure power law has a much smaller exponent.
    loss = power_law(N, 8.0, 0.3, 1.2)
    assert fit_power_law(N, loss, irreducible=False).alpha < 0.5 * 0.3


@pytest.mark.parametrize(
    ("x", "loss", "match"),
    [
        ([1.0, 2.0], [3.0, 2.0], "at least 3 runs"),
        ([1.0, 2.0, 3.0], [3.0, 2.0], "one value per run"),
        ([1.0, -2.0, 3.0], [3.0, 2.0, 1.0], "entry 1"),
        ([1.0, 2.0, 3.0], [3.0, float("nan"), 1.0], "finite numbers > 0"),
        ([2.0, 2.0, 2.0], [3.0, 2.0, 1.0], "2 distinct values"),
        ([[1.0, 2.0, 3.0]], [[3.0, 2.0, 1.0]], "1-D"),
    ],
)
def test_power_law_fit_rejects_bad_input(x, loss, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(x, loss)


def test_power_law_fit_rejects_text():
    with pytest.raises(TypeError, match="sequence of numbers"):
        fit_power_law("123", [1.0, 2.0, 3.0])


# ---------------------------------------------------------------------------- joint law

TRUE = dict(E=1.0, A=40.0, alpha=0.34, B=60.0, beta=0.28)
TRUE_FIT = JointLawFit(
    **TRUE, rms_log_residual=0.0, n_points=10
)  # frozen: safe to share
NS = np.array([2.5e4, 5.7e4, 1.5e5, 3.4e5, 7.9e5, 1.8e6, 3.4e5, 3.4e5, 3.4e5, 3.4e5])
DS = np.array([1.5e6] * 6 + [1.9e5, 3.75e5, 7.5e5, 3e6])


def test_joint_fit_recovers_known_parameters():
    fit = fit_joint_law(NS, DS, joint_law(NS, DS, **TRUE))
    got = (fit.E, fit.A, fit.alpha, fit.B, fit.beta)
    assert got == pytest.approx(tuple(TRUE.values()), rel=1e-5)
    assert fit(NS[0], DS[0]) == pytest.approx(joint_law(NS[0], DS[0], **TRUE))


def test_joint_fit_needs_both_axes_to_vary():
    with pytest.raises(ValueError, match="n_tokens must take at least 2 distinct"):
        fit_joint_law(N, np.full(6, 1e6), np.linspace(3, 2, 6))
    with pytest.raises(ValueError, match="at least 6 runs"):
        fit_joint_law(N[:5], N[:5], np.linspace(3, 2, 5))


def test_compute_optimal_matches_a_numerical_minimum():
    from scipy.optimize import minimize_scalar

    fit = TRUE_FIT
    flops = 3e18
    n_opt, d_opt = compute_optimal(flops, fit)
    assert 6 * n_opt * d_opt == pytest.approx(flops, rel=1e-12)

    def loss_at(log_n):
        return fit(math.exp(log_n), flops / (6 * math.exp(log_n)))

    numeric = minimize_scalar(
        loss_at, bounds=(0, 40), method="bounded", options={"xatol": 1e-10}
    )
    assert math.exp(numeric.x) == pytest.approx(n_opt, rel=1e-4)


def test_equal_exponents_give_a_constant_tokens_per_parameter_ratio():
    fit = JointLawFit(
        E=1.7, A=400.0, alpha=0.3, B=400.0, beta=0.3, rms_log_residual=0, n_points=6
    )
    ratios = [d / n for n, d in (compute_optimal(c, fit) for c in (1e18, 1e21, 1e24))]
    assert ratios == pytest.approx([ratios[0]] * 3, rel=1e-9)
    assert ratios[0] == pytest.approx(1.0, rel=1e-9)  # alpha = beta and A = B: N = D


def test_compute_optimal_needs_falling_terms():
    fit = JointLawFit(
        E=1.0, A=1.0, alpha=0.0, B=1.0, beta=0.3, rms_log_residual=0, n_points=6
    )
    with pytest.raises(ValueError, match="does not fall"):
        compute_optimal(1e18, fit)
    with pytest.raises(TypeError, match="JointLawFit"):
        compute_optimal(1e18, TRUE)


# ------------------------------------------------------------------- budget and widget


@pytest.mark.parametrize(
    ("budget", "match"),
    [
        (-1.0, "must be positive"),
        (0, "must be positive"),
        (float("nan"), "NaN"),
        ("nan", "NaN"),
        (float("inf"), "not a plausible"),
        (1e40, "not a plausible"),
        (10.0, "too small"),
        ("lots", "such as 1e18"),
        (None, "number of FLOPs"),
        (True, "number of FLOPs"),
    ],
)
def test_bad_budgets_get_a_clear_message(budget, match):
    with pytest.raises(ValueError, match=match):
        check_flop_budget(budget)


def test_good_budgets_are_accepted_as_numbers_or_text():
    assert check_flop_budget(1e18) == 1e18
    assert check_flop_budget(" 3e21 ") == 3e21
    assert check_flop_budget(np.float64(1e9)) == 1e9
    assert check_flop_budget(10**7) == 1e7


def test_budget_report_and_extrapolation_warning():
    fit = TRUE_FIT
    inside = budget_report(1e13, fit, measured_flops=(1e12, 1e14))
    assert "tokens per parameter" in inside and "warning" not in inside
    assert "warning" in budget_report(1e18, fit, measured_flops=(1e12, 1e14))


def test_budget_calculator_widget_updates_and_reports_bad_input():
    pytest.importorskip("ipywidgets")
    fit = TRUE_FIT
    box = budget_calculator(fit, measured_flops=(1e12, 1e14), flops="1e13")
    assert "tokens per parameter" in box.result.value
    for bad in ("-5", "nan", "1e99", "hello", ""):
        box.field.value = bad
        assert "Invalid input" in box.result.value, bad
    box.field.value = "2e13"
    assert "2e+13 FLOPs" in box.result.value


def test_module_lists_its_public_names():
    for name in scaling.__all__:
        assert hasattr(scaling, name), name
