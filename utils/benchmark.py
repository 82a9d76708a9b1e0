"""Time several ways of doing the same work side by side, and report them as ratios.

On a shared or throttling machine the speed drifts during a run: timing variant A for a while and
then variant B for a while measures the drift as much as the difference. :func:`interleaved_times`
runs the variants round-robin (A, B, C, A, B, C, ...) after a warm-up of each, so that every
variant sees the same conditions, and :func:`time_ratios` divides each median by the baseline's.

>>> times = interleaved_times({"fp32": step_fp32, "bf16": step_bf16}, repeats=5)
>>> time_ratios(times, baseline="fp32")   # {"fp32": 1.0, "bf16": 1.5}: bf16 is 1.5x slower

On a GPU pass ``device="cuda"``: the device is synchronised before and after each call, so a time
covers the kernels the call queued. Ratios from one run are comparable; absolute times from
different runs or machines are not.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

from utils.checks import check_min_int

__all__ = ["interleaved_times", "medians", "synchronize", "time_calls", "time_ratios"]


def synchronize(device: str | torch.device) -> None:
    """Wait for ``device``'s queued kernels (a no-op off CUDA), so that a timer sees them.

    The library's one copy: timing code in ``utils`` and ``benchmarks/`` calls it.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], object], *, repeats: int = 5, warmup: int = 1, device="cpu"
) -> list[float]:
    """Run ``fn()`` ``warmup`` times untimed, then ``repeats`` times; return seconds per call.

    On CUDA the device is synchronised before and after each call, so a time covers the kernels.
    """
    if not callable(fn):
        raise TypeError(f"fn is not callable: {fn!r}")
    return interleaved_times({"fn": fn}, repeats=repeats, warmup=warmup, device=device)[
        "fn"
    ]


def interleaved_times(
    fns: Mapping[str, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    device: str | torch.device = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of each ``fns[name]()``, measured round-robin.

    Each function is first called ``warmup`` times untimed (in the mapping's order), then the
    functions are called in turn, ``repeats`` rounds. Returns ``{name: [seconds, ...]}`` with
    ``repeats`` times per name, in the mapping's order.
    """
    if not isinstance(fns, Mapping) or not fns:
        raise ValueError("fns must be a non-empty mapping of name -> callable")
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"fns[{name!r}] is not callable: {fn!r}")
    check_min_int("repeats", repeats)
    check_min_int("warmup", warmup, minimum=0)
    device = torch.device(device)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def medians(times: Mapping[str, list[float]]) -> dict[str, float]:
    """The median of each list of times."""
    if not times or any(not t for t in times.values()):
        raise ValueError("times must map each name to a non-empty list of seconds")
    return {name: statistics.median(t) for name, t in times.items()}


def time_ratios(times: Mapping[str, list[float]], baseline: str) -> dict[str, float]:
    """Median time of each variant divided by the median of ``baseline``.

    A ratio above 1 means slower than the baseline, below 1 faster (a speed-up of ``1 / ratio``).
    """
    med = medians(times)
    if baseline not in med:
        raise KeyError(f"baseline {baseline!r} is not one of {list(med)}")
    if med[baseline] <= 0:
        raise ValueError(
            f"the baseline's median time is {med[baseline]}: cannot divide by it"
        )
    return {name: value / med[baseline] for name, value in med.items()}
