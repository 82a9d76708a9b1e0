"""Fast checks of utils.attention_cost (no timing claims: those belong to benchmarks)."""

import math

import pytest
import torch

from utils import attention_cost as ac


def test_explicit_matches_fused_and_causal():
    q, k, v = ac.random_qkv(2, 3, 17, 8, seed=1)
    for causal in (False, True):
        torch.testing.assert_close(
            ac.explicit_attention(q, k, v, is_causal=causal),
            ac.fused_attention(q, k, v, is_causal=causal),
        )
    # the causal output of the first query depends only on the first value
    out = ac.explicit_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out[..., 0, :], v[..., 0, :])


def test_random_qkv_is_seeded():
    a = ac.random_qkv(1, 2, 5, 4, seed=3)
    b = ac.random_qkv(1, 2, 5, 4, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape == (1, 2, 5, 4)
    with pytest.raises(ValueError, match="seq_len"):
        ac.random_qkv(1, 2, 0, 4)


def test_score_bytes():
    assert ac.score_bytes(1, 8, 1024) == 2 * 8 * 1024 * 1024 * 4
    assert (
        ac.score_bytes(2, 4, 10, torch.bfloat16, n_matrices=1, key_len=20)
        == 2 * 4 * 10 * 20 * 2
    )
    with pytest.raises(ValueError):
        ac.score_bytes(1, 8, -1)


def test_time_calls_counts_and_warmup():
    calls = []
    times = ac.time_calls(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)
    with pytest.raises(ValueError):
        ac.time_calls(lambda: None, repeats=0)


def test_peak_memory_sees_a_known_allocation():
    n = 1 << 20  # 4 MiB of float32

    def allocate_and_free():
        a = torch.ones(n)
        b = torch.ones(n)  # both alive: 8 MiB
        del a, b

    peak = ac.peak_memory_bytes(allocate_and_free)
    assert 8 * n <= peak < 8 * n + (1 << 16)


def test_peak_memory_explicit_holds_two_score_matrices_fused_does_not():
    q, k, v = ac.random_qkv(1, 2, 256, 16)
    with torch.no_grad():
        explicit = ac.peak_memory_bytes(lambda: ac.explicit_attention(q, k, v))
        fused = ac.peak_memory_bytes(lambda: ac.fused_attention(q, k, v))
    scores = ac.score_bytes(1, 2, 256)  # two (256 x 256) float32 matrices per head
    assert scores <= explicit < 1.2 * scores
    assert fused < scores / 4


def test_loglog_slope_and_budget_crossing():
    assert ac.fit_power_law is ac.loglog_slope  # the old name, used by chapter 3b
    xs = [64, 128, 256, 512]
    slope, c = ac.loglog_slope(xs, [3.0 * x**2 for x in xs])
    assert slope == pytest.approx(2.0) and c == pytest.approx(3.0)
    assert ac.budget_crossing(slope, c, 3.0 * 1000**2) == pytest.approx(1000)
    with pytest.raises(ValueError, match="two distinct"):
        ac.loglog_slope([1, 1], [2, 3])
    with pytest.raises(ValueError, match="positive"):
        ac.loglog_slope([1, 2], [0, 3])
    with pytest.raises(ValueError):
        ac.budget_crossing(0.0, 1.0, 1.0)


def test_measure_interleaves_and_reports_every_point():
    order = []

    def tracked(name, fn):
        def run(q, k, v, is_causal=False):
            order.append(name)
            return fn(q, k, v, is_causal=is_causal)

        return run

    impls = {
        "explicit": tracked("explicit", ac.explicit_attention),
        "fused": tracked("fused", ac.fused_attention),
    }
    points = ac.measure(
        impls,
        [32, 16],
        heads=2,
        head_dim=8,
        repeats=3,
        warmup=1,
        spin_up_s=0,
        progress=False,
    )
    assert [(p.impl, p.seq_len) for p in points] == [
        ("explicit", 16),
        ("fused", 16),
        ("explicit", 32),
        ("fused", 32),
    ]
    assert all(len(p.times_s) == 3 and p.peak_bytes is not None for p in points)
    assert points[0].score_bytes == ac.score_bytes(1, 2, 16)
    # per length: 1 warm-up each, then alternating timed calls, then one memory call each
    per_length = order[: len(order) // 2]
    assert per_length[2:8] == ["explicit", "fused"] * 3
    assert math.isfinite(points[0].median_s) and points[0].min_s <= points[0].median_s
    assert set(points[0].to_dict()) >= {"impl", "seq_len", "median_s", "peak_bytes"}


def test_measure_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        ac.measure({}, [8])
    with pytest.raises(ValueError, match="non-empty"):
        ac.measure({"e": ac.explicit_attention}, [])
    with pytest.raises(TypeError):
        ac.measure({"e": "not callable"}, [8])
    with pytest.raises(ValueError, match="sequence length"):
        ac.measure({"e": ac.explicit_attention}, [8, 0])


def test_sdpa_backend_functions_math_runs_on_cpu():
    functions = ac.sdpa_backend_functions(("MATH",))
    q, k, v = ac.random_qkv(1, 2, 9, 8)
    torch.testing.assert_close(
        functions["MATH"](q, k, v), ac.explicit_attention(q, k, v)
    )
    with pytest.raises(ValueError, match="unknown SDPA backend"):
        ac.sdpa_backend_functions(("NOT_A_BACKEND",))


def test_measure_repeats_fast_calls_up_to_min_time():
    points = ac.measure(
        {"fused": ac.fused_attention},
        [8],
        heads=1,
        head_dim=4,
        repeats=2,
        min_time_s=10.0,
        max_repeats=7,
        memory=False,
        spin_up_s=0.01,
        progress=False,
    )
    assert len(points[0].times_s) == 7 and points[0].peak_bytes is None
    with pytest.raises(ValueError, match="min_time_s"):
        ac.measure({"f": ac.fused_attention}, [8], min_time_s=-1)


def test_peak_memory_keeps_profiler_chatter_out_of_stderr(capfd):
    ac.peak_memory_bytes(lambda: torch.ones(10))
    assert "profiler_start" not in capfd.readouterr().err
