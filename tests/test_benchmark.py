"""utils.benchmark: round-robin order, warm-up, medians and ratios, argument checks."""

import pytest

from utils.benchmark import interleaved_times, medians, time_ratios


def test_calls_are_interleaved_after_a_warm_up():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = interleaved_times(fns, repeats=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert list(times) == ["a", "b"]
    assert all(len(t) == 3 and all(s >= 0 for s in t) for t in times.values())


def test_no_warm_up():
    calls = []
    interleaved_times({"a": lambda: calls.append(1)}, repeats=2, warmup=0)
    assert calls == [1, 1]


def test_ratios_divide_medians_by_the_baseline():
    times = {"base": [1.0, 2.0, 9.0], "slow": [3.0, 4.0, 5.0], "fast": [0.5, 1.0, 1.0]}
    assert medians(times) == {"base": 2.0, "slow": 4.0, "fast": 1.0}
    assert time_ratios(times, "base") == {"base": 1.0, "slow": 2.0, "fast": 0.5}


@pytest.mark.parametrize(
    "fns, kwargs, error",
    [
        ({}, {}, ValueError),
        ([lambda: None], {}, ValueError),
        ({"a": 3}, {}, TypeError),
        ({"a": lambda: None}, {"repeats": 0}, ValueError),
        ({"a": lambda: None}, {"warmup": -1}, ValueError),
        ({"a": lambda: None}, {"repeats": True}, ValueError),
    ],
)
def test_bad_arguments_are_refused(fns, kwargs, error):
    with pytest.raises(error):
        interleaved_times(fns, **kwargs)


def test_bad_ratio_inputs():
    with pytest.raises(KeyError, match="baseline"):
        time_ratios({"a": [1.0]}, "b")
    with pytest.raises(ValueError, match="non-empty"):
        medians({"a": []})
    with pytest.raises(ValueError, match="divide"):
        time_ratios({"a": [0.0], "b": [1.0]}, "a")


def test_one_synchronize_and_one_time_calls():
    import sys
    from pathlib import Path

    import torch

    from utils import attention_cost, benchmark, ddp, lm_recipes

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import machine

    assert attention_cost.time_calls is benchmark.time_calls
    assert ddp._sync is lm_recipes.synchronize is benchmark.synchronize
    assert machine.synchronize is benchmark.synchronize
    benchmark.synchronize("cpu")  # a no-op off CUDA
    benchmark.synchronize(torch.device("cpu"))
    calls = []
    times = benchmark.time_calls(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)
    with pytest.raises(TypeError, match="not callable"):
        benchmark.time_calls(None)
