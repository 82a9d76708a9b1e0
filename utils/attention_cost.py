"""Time and memory of attention as the sequence grows: explicit ``softmax(QKᵀ/√d)V`` vs fused SDPA.

Explicit attention materialises the ``L x L`` score matrix (and the weight matrix after the
softmax), so its memory grows like ``L²``; PyTorch's fused
:func:`torch.nn.functional.scaled_dot_product_attention` (FlashAttention-style kernels on CPU and
GPU) processes the keys in blocks and never stores the whole matrix. Both do ``O(L²)`` arithmetic.

The pieces:

- :func:`explicit_attention`, :func:`fused_attention`: the two implementations being compared,
  same signature ``(q, k, v, is_causal=False) -> (B, H, L, d)``.
- :func:`score_bytes`: bytes of the ``L x L`` tensors explicit attention holds at once.
- :func:`time_calls`: seconds per call, with warm-up and device synchronisation.
- :func:`peak_memory_bytes`: the peak extra memory a call allocates (CUDA allocator statistics on a
  GPU; the PyTorch profiler's allocation events on a CPU).
- :func:`measure`: runs several implementations **side by side** (interleaved, per length) over a
  list of sequence lengths and returns one :class:`CostPoint` per (implementation, length).
- :func:`loglog_slope` (old name :func:`fit_power_law`), :func:`budget_crossing`: the log-log slope of a cost curve, and where a
  fitted curve crosses a budget.
- :func:`sdpa_backend_functions`: fused SDPA pinned to one backend each (FlashAttention,
  memory-efficient, math), for comparing backends on a GPU.

Timings depend on the machine and its load; compare implementations measured in the same run,
never against numbers from another run.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from utils.benchmark import synchronize as _synchronize
from utils.benchmark import time_calls  # re-exported: attention_cost.time_calls
from utils.checks import check_min_int

__all__ = [
    "CostPoint",
    "budget_crossing",
    "explicit_attention",
    "fit_power_law",
    "loglog_slope",
    "fused_attention",
    "measure",
    "peak_memory_bytes",
    "random_qkv",
    "score_bytes",
    "sdpa_backend_functions",
    "spin_up",
    "time_calls",
]

AttentionFn = Callable[..., torch.Tensor]


# --------------------------------------------------------------------------------------------------
# The two implementations
# --------------------------------------------------------------------------------------------------


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False
) -> torch.Tensor:
    """``softmax(q kᵀ / √d_k) v`` with the full score matrix in memory.

    q ``(..., L_q, d_k)``, k ``(..., L_k, d_k)``, v ``(..., L_k, d_v)`` -> ``(..., L_q, d_v)``.
    ``is_causal`` masks keys after the query (``L_q == L_k``), as the fused kernel does.
    """
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (..., L_q, L_k)
    if is_causal:
        L_q, L_k = scores.shape[-2:]
        allowed = torch.ones(L_q, L_k, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool = False
) -> torch.Tensor:
    """PyTorch's fused :func:`torch.nn.functional.scaled_dot_product_attention` (same math)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


def random_qkv(
    batch: int,
    heads: int,
    seq_len: int,
    head_dim: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three seeded standard-normal tensors ``(batch, heads, seq_len, head_dim)``."""
    for name, value in (
        ("batch", batch),
        ("heads", heads),
        ("seq_len", seq_len),
        ("head_dim", head_dim),
    ):
        check_min_int(name, value)
    g = torch.Generator().manual_seed(seed)
    shape = (batch, heads, seq_len, head_dim)
    return tuple(
        torch.randn(shape, generator=g).to(device=device, dtype=dtype) for _ in range(3)
    )


def score_bytes(
    batch: int,
    heads: int,
    seq_len: int,
    dtype: torch.dtype = torch.float32,
    n_matrices: int = 2,
    key_len: int | None = None,
) -> int:
    """Bytes of ``n_matrices`` tensors of shape ``(batch, heads, seq_len, key_len)``.

    Explicit attention holds two such tensors at its peak (the scores and the softmax weights
    computed from them), hence the default ``n_matrices=2``; ``key_len`` defaults to ``seq_len``.
    """
    for name, value in (("batch", batch), ("heads", heads), ("seq_len", seq_len)):
        check_min_int(name, value)
    check_min_int("n_matrices", n_matrices)
    key_len = seq_len if key_len is None else check_min_int("key_len", key_len)
    element = torch.empty((), dtype=dtype).element_size()
    return n_matrices * batch * heads * seq_len * key_len * element


# --------------------------------------------------------------------------------------------------
# Measuring one call
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _without_profiler_chatter():
    """Hold back the "profiler_start/stop" lines Kineto writes straight to file descriptor 2.

    They would land in every notebook output that measures memory. Anything else written to
    descriptor 2 meanwhile is passed on to ``sys.stderr`` afterwards.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (e.g. an embedded interpreter)
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines()
            rest = [line for line in lines if "ActivityProfilerHandler" not in line]
            if rest:
                print("\n".join(rest), file=sys.stderr)


def spin_up(device="cpu", seconds: float = 0.2) -> None:
    """Keep ``device`` busy with matrix products for about ``seconds`` before timing.

    On a machine that was idle (a notebook waiting for its next cell, a virtual machine whose
    cores the host parked), the first milliseconds-long calls can be several times slower than
    the steady state while the threads and cores wake up. Timing right after a short busy spell
    measures the steady state.
    """
    device = torch.device(device)
    a = torch.randn(256, 256, device=device)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = torch.tanh(a @ a)
    _synchronize(device)


def _cpu_allocation_events(fn: Callable[[], object]) -> list[tuple[int, int]]:
    """``(time_ns, bytes)`` of every CPU allocation (+) and free (-) while ``fn()`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with (
        _without_profiler_chatter(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    results = getattr(prof.profiler, "kineto_results", None)
    if results is None:  # pragma: no cover - depends on the torch build
        raise RuntimeError(
            "this torch build's profiler records no allocation events (no Kineto)"
        )
    return sorted(
        (event.start_ns(), event.nbytes())
        for event in results.events()
        if event.name() == "[memory]"
        and event.device_type() == torch.autograd.DeviceType.CPU
    )


def peak_memory_bytes(fn: Callable[[], object], device="cpu") -> int:
    """The largest amount of memory ``fn()`` had allocated at one time, beyond what existed before.

    CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak. CPU: the running sum of the
    allocation and free events that ``torch.profiler`` records with ``profile_memory=True`` (only
    tensors allocated by PyTorch count; Python objects do not). Run it under ``torch.no_grad()``
    to leave out what autograd would keep for the backward pass.
    """
    device = torch.device(device)
    if device.type == "cuda":
        _synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _synchronize(device)
        return max(0, torch.cuda.max_memory_allocated(device) - before)
    if device.type != "cpu":
        raise ValueError(
            f"peak_memory_bytes supports cpu and cuda devices, got {device}"
        )
    current = peak = 0
    for _, nbytes in _cpu_allocation_events(fn):
        current += nbytes
        peak = max(peak, current)
    return peak


# --------------------------------------------------------------------------------------------------
# Cost curves
# --------------------------------------------------------------------------------------------------


@dataclass
class CostPoint:
    """One implementation at one sequence length.

    ``times_s`` are the timed calls (seconds); ``peak_bytes`` the measured peak extra memory of
    one call (``None`` when not measured); ``score_bytes`` the size of the two ``L x L`` tensors
    an explicit implementation holds (the same for every implementation, for reference).
    """

    impl: str
    seq_len: int
    times_s: list[float]
    peak_bytes: int | None
    score_bytes: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    def to_dict(self) -> dict:
        return {**asdict(self), "median_s": self.median_s}


def _bind(fn: AttentionFn, qkv: tuple, is_causal: bool) -> Callable[[], torch.Tensor]:
    q, k, v = qkv
    return lambda: fn(q, k, v, is_causal=is_causal)


def _wants_more(
    done: list[float], repeats: int, max_repeats: int, min_time_s: float
) -> bool:
    if len(done) < repeats:
        return True
    return len(done) < max_repeats and sum(done) < min_time_s


def measure(
    impls: Mapping[str, AttentionFn],
    seq_lens: Sequence[int],
    *,
    batch: int = 1,
    heads: int = 8,
    head_dim: int = 64,
    dtype: torch.dtype = torch.float32,
    device="cpu",
    repeats: int = 5,
    warmup: int = 1,
    min_time_s: float = 0.0,
    max_repeats: int = 100,
    spin_up_s: float = 0.2,
    is_causal: bool = False,
    memory: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> list[CostPoint]:
    """Time (and measure the peak memory of) each implementation at each sequence length.

    For each length the inputs are made once and shared; after ``warmup`` untimed calls of each
    implementation the timed calls *alternate* between implementations (A, B, A, B, ...), so a
    change in the machine's speed during the run affects all of them alike. Each implementation
    gets at least ``repeats`` timed calls, and more (up to ``max_repeats``) until its calls add
    up to ``min_time_s``: fast calls are repeated more, so that their median is not at the mercy
    of one scheduler hiccup. Before each length the device is kept busy for ``spin_up_s`` seconds
    (see :func:`spin_up`). Everything runs under ``torch.no_grad()`` (forward cost only).
    Returns points ordered by length, then by ``impls``.
    """
    if not impls:
        raise ValueError("impls must name at least one implementation")
    for name, fn in impls.items():
        if not callable(fn):
            raise TypeError(
                f"impls[{name!r}] must be callable as fn(q, k, v, is_causal=...)"
            )
    if isinstance(seq_lens, (str, bytes)) or not seq_lens:
        raise ValueError("seq_lens must be a non-empty sequence of ints")
    for L in seq_lens:
        check_min_int("each sequence length", L)
    check_min_int("repeats", repeats)
    check_min_int("warmup", warmup, minimum=0)
    check_min_int("max_repeats", max_repeats, minimum=repeats)
    if (
        isinstance(min_time_s, bool)
        or not isinstance(min_time_s, (int, float))
        or min_time_s < 0
    ):
        raise ValueError(f"min_time_s must be a number >= 0, got {min_time_s!r}")
    device = torch.device(device)

    lengths = sorted(seq_lens)
    bar = None
    if progress:
        from .progress import tqdm

        bar = tqdm(total=len(lengths) * len(impls), desc="attention cost")
    points = []
    with torch.no_grad():
        for L in lengths:
            qkv = random_qkv(
                batch, heads, L, head_dim, dtype=dtype, device=device, seed=seed + L
            )
            calls = {name: _bind(fn, qkv, is_causal) for name, fn in impls.items()}
            if spin_up_s > 0:
                spin_up(device, spin_up_s)
            for call in calls.values():
                for _ in range(warmup):
                    call()
            times = {name: [] for name in calls}
            while True:
                pending = [
                    n
                    for n in calls
                    if _wants_more(times[n], repeats, max_repeats, min_time_s)
                ]
                if not pending:
                    break
                for name in pending:
                    times[name] += time_calls(
                        calls[name], repeats=1, warmup=0, device=device
                    )
            reference = score_bytes(batch, heads, L, dtype)
            for name, call in calls.items():
                peak = peak_memory_bytes(call, device) if memory else None
                points.append(CostPoint(name, L, times[name], peak, reference))
                if bar is not None:
                    bar.update(1)
            del qkv, calls
    if bar is not None:
        bar.close()
    return points


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit of ``y = c · x^slope`` on log-log axes; returns ``(slope, c)``.

    Needs at least two distinct positive ``x`` and positive ``y``.
    """
    xs, ys = [float(a) for a in x], [float(b) for b in y]
    if len(xs) != len(ys):
        raise ValueError(
            f"x and y must have the same length, got {len(xs)} and {len(ys)}"
        )
    if len(set(xs)) < 2:
        raise ValueError("loglog_slope needs at least two distinct x values")
    if min(xs) <= 0 or min(ys) <= 0:
        raise ValueError(
            "loglog_slope needs positive x and y (it fits on log-log axes)"
        )
    lx, ly = [math.log(a) for a in xs], [math.log(b) for b in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )
    return slope, math.exp(my - slope * mx)


# The old name, kept for chapter 3b; not :func:`utils.scaling.fit_power_law` (a·x^−α + c).
fit_power_law = loglog_slope


def budget_crossing(slope: float, coefficient: float, budget: float) -> float:
    """The ``x`` at which the fitted curve ``coefficient · x^slope`` reaches ``budget``."""
    if not slope > 0 or not coefficient > 0 or not budget > 0:
        raise ValueError(
            f"budget_crossing needs slope, coefficient and budget > 0, got {slope}, "
            f"{coefficient}, {budget}"
        )
    return (budget / coefficient) ** (1.0 / slope)


# --------------------------------------------------------------------------------------------------
# SDPA backends (GPU)
# --------------------------------------------------------------------------------------------------


def sdpa_backend_functions(
    names: Sequence[str] = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH"),
) -> dict[str, AttentionFn]:
    """Fused SDPA restricted to one backend each, keyed by backend name.

    Each function runs ``F.scaled_dot_product_attention`` inside
    ``torch.nn.attention.sdpa_kernel(SDPBackend.<name>)``; a backend that cannot handle the inputs
    (e.g. FlashAttention in fp32, or on a CPU build without it) raises ``RuntimeError`` when called.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    functions = {}
    for name in names:
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            offered = [
                n for n in SDPBackend.__members__ if n not in ("ERROR", "OVERRIDEABLE")
            ]
            raise ValueError(f"unknown SDPA backend {name!r}; torch offers {offered}")

        def run(q, k, v, is_causal=False, _backend=backend):
            with sdpa_kernel(_backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)

        functions[name] = run
    return functions
