"""Tests for utils.compute: the 6·N·D arithmetic, time and memory, the published table, widget."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from utils import compute
from utils.compute import (
    PUBLISHED_MODELS,
    accelerator_hours,
    attention_flops,
    chinchilla_optimal,
    cost_calculator,
    estimate_training_cost,
    training_flops,
    training_memory_bytes,
    wall_clock_days,
)


def test_six_n_d_matches_flop_counter_on_a_linear_stack():
    # For a stack of bias-free Linear layers every parameter is a matmul weight, so one training
    # step on D tokens must cost exactly 6·N·D by torch's own FLOP counter.
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 32, bias=False),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 8, bias=False),
    )
    x = torch.randn(
        10, 16, requires_grad=True
    )  # input grad too, as in a deeper network
    counter = FlopCounterMode(display=False)
    with counter:
        net(x).square().sum().backward()
    n_params = sum(p.numel() for p in net.parameters())
    assert counter.get_total_flops() == training_flops(n_params, 10)


def test_attention_flops_match_explicit_attention_counted_by_torch():
    torch.manual_seed(0)
    batch, heads, length, head_dim = 2, 2, 12, 4
    q, k, v = (
        torch.randn(batch, heads, length, head_dim, requires_grad=True)
        for _ in range(3)
    )
    counter = FlopCounterMode(display=False)
    with counter:
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        (weights @ v).sum().backward()
    dense = attention_flops(1, length, heads * head_dim, batch * length, causal=False)
    assert counter.get_total_flops() == dense
    assert attention_flops(1, length, heads * head_dim, batch * length) == dense / 2


def test_gpt3_reported_compute_is_close_to_six_n_d():
    gpt3 = next(m for m in PUBLISHED_MODELS if m.name == "GPT-3")
    ratio = gpt3.reported_flops / training_flops(gpt3.n_params, gpt3.n_tokens)
    assert ratio == pytest.approx(3.14 / 3.15, rel=1e-9)


def test_published_table_is_well_formed():
    names = [m.name for m in PUBLISHED_MODELS]
    assert len(names) == len(set(names))
    for m in PUBLISHED_MODELS:
        assert m.n_params > 0 and m.citation
        assert m.n_tokens is None or m.n_tokens > 0
        assert m.reported_flops is None or m.n_tokens is not None
        year, month = m.released.split("-")
        assert 2017 <= int(year) <= 2030 and 1 <= int(month) <= 12
    assert [m.released for m in PUBLISHED_MODELS] == sorted(
        m.released for m in PUBLISHED_MODELS
    )


def _bibliography_keys() -> set[str]:
    bib = (
        Path(compute.__file__).resolve().parents[1] / "book" / "references.bib"
    ).read_text()
    return set(re.findall(r"^@\w+\{([^,\s]+),", bib, flags=re.MULTILINE))


def test_published_citations_exist_in_bibliography():
    keys = _bibliography_keys()
    for m in PUBLISHED_MODELS:
        assert m.citation in keys, m.citation


def test_published_rows_say_where_each_number_is_stated():
    # Every row points at the table or section of its paper; a figure added without a location
    # cannot be rechecked.
    for m in PUBLISHED_MODELS:
        assert m.where.strip(), m.name
        assert re.search(r"Table|§|App\.|title|abstract", m.where), (m.name, m.where)
        assert m.citation in _bibliography_keys(), m.citation


def test_reported_compute_is_within_a_third_of_six_n_d():
    # Guards against a wrong exponent or a wrong row: every paper's own figure lies within 30% of
    # 6·N·D (GPT-3, PaLM and Llama 3 within 2%; Gopher's own accounting about 25% above).
    for m in PUBLISHED_MODELS:
        if m.reported_flops is not None:
            ratio = m.reported_flops / training_flops(m.n_params, m.n_tokens)
            assert 0.77 < ratio < 1.3, (m.name, ratio)


def test_time_arithmetic_by_hand():
    # 3.6e18 FLOPs at 1e15 FLOP/s and 50% utilisation: 7200 s = 2 accelerator-hours
    assert accelerator_hours(3.6e18, 1e15, 0.5) == pytest.approx(2.0)
    assert wall_clock_days(3.6e18 * 24, 1e15, 0.5, 2) == pytest.approx(1.0)
    cost = estimate_training_cost(1e9, 1e10, 1e14, 0.5, n_accelerators=4)
    assert cost.flops == 6e19
    assert cost.accelerator_hours == pytest.approx(6e19 / 5e13 / 3600)
    assert cost.wall_clock_seconds == pytest.approx(6e19 / 5e13 / 4)
    assert "FLOPs" in cost.summary()


def test_chinchilla_rule_and_memory():
    n, d = chinchilla_optimal(training_flops(70e9, 1.4e12))
    assert n == pytest.approx(70e9) and d == pytest.approx(1.4e12)
    assert training_memory_bytes(7e9) == 7e9 * 16
    assert sum(compute.MIXED_PRECISION_ADAMW_BYTES.values()) == 16


@pytest.mark.parametrize(
    "call,error",
    [
        (lambda: training_flops(-1, 10), ValueError),
        (lambda: training_flops(0, 10), ValueError),
        (lambda: training_flops(float("nan"), 10), ValueError),
        (lambda: training_flops(1e9, float("inf")), ValueError),
        (lambda: training_flops("7B", 10), TypeError),
        (lambda: training_flops(True, 10), TypeError),
        (lambda: accelerator_hours(1e20, 1e15, 0.0), ValueError),
        (lambda: accelerator_hours(1e20, 1e15, 1.5), ValueError),
        (lambda: accelerator_hours(1e20, 1e15, float("nan")), ValueError),
        (lambda: accelerator_hours(1e20, -1e15, 0.5), ValueError),
        (lambda: wall_clock_days(1e20, 1e15, 0.5, 0), ValueError),
        (lambda: wall_clock_days(1e20, 1e15, 0.5, 2.5), ValueError),
        (lambda: attention_flops(2, 128, 64, 1e6, causal="yes"), TypeError),
        (lambda: chinchilla_optimal(-5.0), ValueError),
        (lambda: training_memory_bytes(7e9, 0), ValueError),
    ],
)
def test_bad_arguments_raise(call, error):
    with pytest.raises(error):
        call()


def test_error_message_names_argument_and_value():
    with pytest.raises(ValueError, match=r"utilisation must lie in \(0, 1\].*1\.5"):
        accelerator_hours(1e20, 1e15, 1.5)


def test_widget_updates_and_reports_invalid_input():
    box = cost_calculator(
        n_params=1e9, n_tokens=1e10, peak_flops_per_s=1e14, utilisation=0.5
    )
    assert "6e+19" in box.result.value
    box.fields[
        "utilisation"
    ].value = 2.0  # invalid: the widget must show a message, not raise
    assert "Invalid input" in box.result.value and "utilisation" in box.result.value
    box.fields["utilisation"].value = 0.25
    assert "Invalid input" not in box.result.value
    box.fields["n_tokens"].value = -3.0
    assert "n_tokens" in box.result.value


def test_one_flops_per_token_count_behind_models_metrics_and_attention_flops():
    from utils import compute, metrics, models

    n, layers, d, ctx, vocab = 10_000, 3, 16, 64, 500
    for attention in ("kaplan", "dense"):
        terms = compute.flops_per_token_terms(
            n, layers, d, ctx, vocab_size=vocab, attention=attention
        )
        assert (
            models.flops_breakdown(
                n, layers, d, ctx, vocab_size=vocab, attention=attention
            )
            == terms
        )
        assert models.flops_per_token(n, layers, d, ctx, attention=attention) == (
            compute.flops_per_token(n, layers, d, ctx, attention=attention)
        )
        # the trainer's helper and compute's totals over D tokens are the same count
        per_token = metrics.training_flops_per_token(
            n, layers, d, ctx, attention=attention
        )
        assert per_token == compute.flops_per_token(
            n, layers, d, ctx, attention=attention
        )
        causal = attention == "kaplan"
        assert per_token * 7 == training_flops(n, 7) + attention_flops(
            layers, ctx, d, 7, causal
        )
    kaplan = compute.flops_per_token_terms(n, layers, d, ctx)
    assert kaplan["attention"] == 2 * layers * ctx * d and kaplan["lm_head"] == 0
    with pytest.raises(ValueError, match="attention"):
        compute.flops_per_token(n, layers, d, ctx, attention="sparse")
    with pytest.raises(TypeError, match="n_layers"):
        compute.flops_per_token(n, 2.0, d, ctx)


def test_training_memory_bytes_shards_by_zero_stage():
    from utils import ddp

    assert training_memory_bytes(1e9, stage=0, n_devices=8) == 16e9
    assert training_memory_bytes(1e9, stage=1, n_devices=8) == 1e9 * (4 + 12 / 8)
    assert training_memory_bytes(1e9, stage=2, n_devices=8) == 1e9 * (2 + 14 / 8)
    assert training_memory_bytes(1e9, stage=3, n_devices=8) == 1e9 * 16 / 8
    for stage in range(4):
        assert ddp.zero_bytes_per_device(7.5e9, 64, stage) == training_memory_bytes(
            7.5e9, stage=stage, n_devices=64
        )
    with pytest.raises(ValueError, match="stage"):
        training_memory_bytes(1e9, stage=4)
    with pytest.raises(ValueError, match="bytes_per_param"):
        training_memory_bytes(1e9, 16, stage=1, n_devices=2)
