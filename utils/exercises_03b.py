"""The graders of chapter 3b's exercises (what attention costs, and looking at its weights).

See :mod:`utils.grader`. Every check runs the answer on small CPU inputs: FLOPs are counted by
``torch.utils.flop_counter.FlopCounterMode`` on the book's explicit attention, memory formulas
are compared with :func:`utils.attention_cost.score_bytes`, and the blockwise attention is both
compared with ``F.scaled_dot_product_attention`` and watched, op by op, for the size of the
largest tensor it creates.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from utils import attention_cost
from utils.grader import exercise, open_exercise


def _tensor(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{what} should be a torch tensor, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------
# 03b.attention_flops: 4 B h L² d_k, counted by FlopCounterMode
# --------------------------------------------------------------------------------------------


def _counted_flops(batch: int, heads: int, seq_len: int, head_dim: int) -> int:
    """FLOPs of the book's explicit attention as torch's flop counter sees them (matmuls)."""
    q = torch.zeros(batch, heads, seq_len, head_dim)
    with FlopCounterMode(display=False) as counter:
        attention_cost.explicit_attention(q, q, q)
    return counter.get_total_flops()


@exercise(
    "03b.attention_flops",
    "Count the FLOPs of attention",
    difficulty=1,
    reference=lambda B, h, L, d: 4 * B * h * L * L * d,
    wrong=[
        (lambda B, h, L, d: 2 * B * h * L * L * d, "half the count"),
        (lambda B, h, L, d: 4 * B * h * L * d * d, "d_k squared"),
        (lambda B, h, L, d: 4 * B * L * L * d, "every head"),
        (lambda B, h, L, d: 4 * h * L * L * d, "batch size"),
    ],
)
def attention_flops(answer):
    """``answer(batch, heads, seq_len, head_dim)`` -> forward FLOPs of ``softmax(QKᵀ/√d)V``
    (full score matrix, d_v = d_k), counted as torch's flop counter counts the two matmuls."""
    for B, h, L, d in ((1, 1, 8, 2), (3, 5, 16, 8), (1, 8, 64, 16), (2, 3, 5, 32)):
        want = _counted_flops(B, h, L, d)
        got = answer(B, h, L, d)
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if not isinstance(got, int):
            yield f"attention_flops({B}, {h}, {L}, {d}) should be an int, got {got!r}"
            return
        if got == want:
            continue
        where = f"B={B}, h={h}, L={L}, d_k={d}"
        if got * 2 == want:
            yield (
                f"{where}: {got:,} is half the count ({want:,}): either you counted a "
                "multiply-add as one operation (it is two FLOPs) or only one of the two "
                "products QKᵀ and AV (the causal half is not asked for: the full matrix)"
            )
        elif got == 4 * B * h * L * d * d:
            yield (
                f"{where}: {got:,} has d_k squared and L to the first power; each product "
                "multiplies an L × d_k matrix by a d_k × L (or L × L by L × d_k) one"
            )
        elif got * h == want:
            yield f"{where}: {got:,} counts one head; every head does its own products"
        elif got * B == want:
            yield f"{where}: {got:,} counts one sequence; multiply by the batch size"
        else:
            yield (
                f"{where}: you counted {got:,} FLOPs, the flop counter measured {want:,} "
                f"({got / want:.3g} times as many)"
            )
        return


# --------------------------------------------------------------------------------------------
# 03b.max_context: the longest sequence whose two L × L tensors fit a budget
# --------------------------------------------------------------------------------------------


def _max_context(budget_bytes: int, heads: int, dtype: torch.dtype) -> int:
    element = torch.empty((), dtype=dtype).element_size()
    return math.isqrt(budget_bytes // (2 * heads * element))


@exercise(
    "03b.max_context",
    "The longest context explicit attention can hold",
    difficulty=1,
    reference=_max_context,
    wrong=[
        (
            lambda b, h, dt: math.isqrt(
                b // (h * torch.empty((), dtype=dt).element_size())
            ),
            "one L × L tensor",
        ),
        (lambda b, h, dt: math.isqrt(b // (2 * h * 4)), "bytes per element"),
        (
            lambda b, h, dt: math.ceil(
                math.sqrt(b / (2 * h * torch.empty((), dtype=dt).element_size()))
            ),
            "does not fit",
        ),
    ],
)
def max_context(answer):
    """``answer(budget_bytes, heads, dtype)`` -> the largest int L with
    ``score_bytes(1, heads, L, dtype) <= budget_bytes`` (scores and weights, batch 1)."""
    GiB = 2**30
    cases = [
        (GiB, 8, torch.float32),
        (16 * GiB, 32, torch.bfloat16),
        (attention_cost.score_bytes(1, 8, 4096), 8, torch.float32),
        (attention_cost.score_bytes(1, 8, 4096) - 1, 8, torch.float32),
        (80 * GiB, 32, torch.float16),
        (10**9, 12, torch.float64),
    ]
    for budget, heads, dtype in cases:
        want = _max_context(budget, heads, dtype)
        got = answer(budget, heads, dtype)
        where = f"budget {budget:,} bytes, {heads} heads, {str(dtype)[6:]}"
        if isinstance(got, float) and got.is_integer():
            got = int(got)
        if not isinstance(got, int):
            yield f"{where}: the answer should be a whole number of positions, got {got!r}"
            return
        if got == want:
            continue
        element = torch.empty((), dtype=dtype).element_size()
        if got == math.isqrt(budget // (heads * element)):
            yield (
                f"{where}: {got:,} leaves room for one L × L tensor; explicit attention "
                "holds two at once (the scores and the softmax weights), so L is √2 smaller"
            )
        elif element != 4 and got == math.isqrt(budget // (2 * heads * 4)):
            yield (
                f"{where}: {got:,} assumes 4 bytes per element; {str(dtype)[6:]} has "
                f"{element} bytes per element (tensor.element_size())"
            )
        elif got > want and attention_cost.score_bytes(1, heads, got, dtype) > budget:
            need = attention_cost.score_bytes(1, heads, got, dtype)
            yield (
                f"{where}: L = {got:,} does not fit: its two tensors take {need:,} bytes. "
                "Round down, not up or to the nearest (math.isqrt does it exactly)"
            )
        elif got < want:
            yield f"{where}: {got:,} is too short: L = {want:,} still fits"
        else:
            yield f"{where}: you gave {got:,}, the longest that fits is {want:,}"
        return


# --------------------------------------------------------------------------------------------
# 03b.blockwise_attention: online softmax over blocks of keys, no L × L tensor
# --------------------------------------------------------------------------------------------


def _blockwise(q, k, v, block, *, rescale=True, normalise=True, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    run_max = torch.full(q.shape[:-1] + (1,), float("-inf"), dtype=q.dtype)
    run_sum = torch.zeros(q.shape[:-1] + (1,), dtype=q.dtype)
    acc = torch.zeros(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype)
    for start in range(0, k.shape[-2], block):
        s = q @ k[..., start : start + block, :].transpose(-2, -1) * scale
        new_max = torch.maximum(run_max, s.amax(-1, keepdim=True))
        w = torch.exp(s - new_max)
        if rescale:
            correction = torch.exp(run_max - new_max)
            acc = acc * correction
            run_sum = run_sum * correction
        acc = acc + w @ v[..., start : start + block, :]
        run_sum = run_sum + w.sum(-1, keepdim=True)
        run_max = new_max
    return acc / run_sum if normalise else acc


class _LargestTensor(TorchFunctionMode):
    """Records the number of elements of the largest tensor any torch call returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0
        self.shape = ()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if torch.is_tensor(t) and t.numel() > self.largest:
                self.largest, self.shape = t.numel(), tuple(t.shape)
        return out


@exercise(
    "03b.blockwise_attention",
    "Attention over blocks of keys, without the L × L matrix",
    difficulty=3,
    reference=_blockwise,
    wrong=[
        (lambda q, k, v, block: attention_cost.explicit_attention(q, k, v), "whole"),
        (lambda q, k, v, block: _blockwise(q, k, v, block, rescale=False), "rescale"),
        (
            lambda q, k, v, block: _blockwise(q, k, v, block, normalise=False),
            "running sum",
        ),
        (lambda q, k, v, block: _blockwise(q, k, v, block, scale=1.0), "1/√d_k"),
    ],
)
def blockwise_attention(answer):
    """``answer(q, k, v, block)`` -> ``softmax(q kᵀ/√d_k) v`` computed over blocks of ``block``
    keys with a running maximum and sum; q ``[B, h, L_q, d_k]``, k ``[B, h, L_k, d_k]``,
    v ``[B, h, L_k, d_v]`` -> ``[B, h, L_q, d_v]``. No tensor may hold an ``L_q × L_k`` block."""
    g = torch.Generator().manual_seed(0)
    cases = [(1, 2, 64, 64, 4, 4, 8), (2, 1, 48, 80, 3, 5, 16), (1, 2, 40, 72, 4, 2, 7)]
    for B, h, Lq, Lk, dk, dv, block in cases:
        q = torch.randn(B, h, Lq, dk, generator=g, dtype=torch.float64) * 3
        k = torch.randn(B, h, Lk, dk, generator=g, dtype=torch.float64) * 3
        v = torch.randn(B, h, Lk, dv, generator=g, dtype=torch.float64)
        watch = _LargestTensor()
        with watch:
            got = answer(q, k, v, block)
        got = _tensor(got, "the output")
        want = F.scaled_dot_product_attention(q, k, v)
        if got.shape != want.shape:
            yield f"output shape {tuple(got.shape)}, expected {tuple(want.shape)} [B, h, L_q, d_v]"
            return
        got = got.to(torch.float64)
        where = f"L_q={Lq}, L_k={Lk}, block={block}"
        if not torch.allclose(got, want, atol=1e-8):

            def near(other, got=got):
                return torch.allclose(got, other, atol=1e-8)

            if near(_blockwise(q, k, v, block, scale=1.0)):
                yield f"{where}: the scores are not scaled: multiply q·k by 1/√d_k"
            elif near(_blockwise(q, k, v, block, rescale=False)):
                yield (
                    f"{where}: when a block raises the running maximum, rescale what you "
                    "have summed so far (the output and the running sum) by "
                    "exp(old max − new max)"
                )
            elif near(_blockwise(q, k, v, block, normalise=False)):
                yield (
                    f"{where}: the output is not normalised: divide it by the running sum "
                    "of the exponentials at the end"
                )
            elif near(_blockwise(q, k, v, block, rescale=False, normalise=False)):
                yield (
                    f"{where}: divide by the running sum at the end, and rescale the "
                    "partial sums whenever the running maximum changes"
                )
            else:
                err = (got - want).abs().max().item()
                yield (
                    f"{where}: output differs from scaled_dot_product_attention by up to "
                    f"{err:.3g}"
                )
            return
        allowed = B * h * max(Lq * max(block, dk, dv), Lk * max(dk, dv))
        if watch.largest > allowed:
            yield (
                f"{where}: right values, but a tensor of shape {watch.shape} "
                f"({watch.largest:,} numbers) appeared, as large as the whole L_q × L_k "
                f"score matrix or more; a block of scores is [B, h, L_q, block] "
                f"({B * h * Lq * block:,} numbers)"
            )
            return


# --------------------------------------------------------------------------------------------
# 03b.head_stats: how far from uniform is a head?
# --------------------------------------------------------------------------------------------


def _head_stats(weights, *, log=torch.log, offset=-1, first_query=1):
    w = weights[..., first_query:, :]
    plogp = torch.where(w > 0, w * log(w.clamp_min(1e-300)), torch.zeros_like(w))
    entropy = -plogp.sum(-1).mean(-1)
    L = weights.shape[-1]
    rows = torch.arange(max(first_query, -offset), L)
    previous = weights[..., rows, rows + offset].mean(-1)
    return entropy, previous


def _naive_entropy(weights):
    w = weights[..., 1:, :]
    return -(w * torch.log(w)).sum(-1).mean(-1), _head_stats(weights)[1]


@exercise(
    "03b.head_stats",
    "Two numbers that describe a head",
    difficulty=2,
    reference=_head_stats,
    wrong=[
        (lambda w: _head_stats(w, log=torch.log2), "bits"),
        (lambda w: _head_stats(w, offset=0), "the token itself"),
        (lambda w: _head_stats(w, first_query=0), "query 0"),
        (_naive_entropy, "0 · ln 0"),
    ],
)
def head_stats(answer):
    """``answer(weights)`` with weights ``[heads, L, L]`` (rows sum to 1) -> ``(entropy,
    previous)``, each ``[heads]``: over queries 1 .. L-1, the mean row entropy in nats and the
    mean weight on the token just before the query."""
    g = torch.Generator().manual_seed(0)
    for heads, L, causal in ((4, 7, True), (3, 9, False), (2, 2, True)):
        scores = torch.randn(heads, L, L, generator=g, dtype=torch.float64) * 2
        if causal:
            scores = scores.masked_fill(
                ~torch.ones(L, L, dtype=torch.bool).tril(), -math.inf
            )
        weights = scores.softmax(-1)
        result = answer(weights.clone())
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            yield "return a pair (entropy, previous), each a tensor of shape [heads]"
            return
        entropy, previous = (
            _tensor(t, n) for t, n in zip(result, ("entropy", "previous"), strict=True)
        )
        want_e, want_p = _head_stats(weights)
        kind = "causal" if causal else "bidirectional"
        where = f"{heads} heads, L={L}, {kind}"
        for name, got, want in (
            ("entropy", entropy, want_e),
            ("previous", previous, want_p),
        ):
            if got.shape != want.shape:
                yield f"{where}: {name} has shape {tuple(got.shape)}, expected ({heads},)"
                return
        entropy, previous = entropy.to(torch.float64), previous.to(torch.float64)
        if torch.isnan(entropy).any():
            yield (
                f"{where}: your entropy is NaN: masked weights are exactly 0 and 0 · ln 0 "
                "must count as 0 (torch.special.entr does that)"
            )
            return
        if not torch.allclose(entropy, want_e, atol=1e-8):
            if torch.allclose(entropy, want_e / math.log(2), atol=1e-8):
                yield f"{where}: your entropy is in bits (log2); the chapter measures nats (ln)"
            elif torch.allclose(
                entropy, _head_stats(weights, first_query=0)[0], atol=1e-8
            ):
                yield (
                    f"{where}: your entropy averages over query 0 as well; the chapter "
                    "averages over queries 1 .. L-1 (query 0 has no previous token)"
                )
            else:
                err = (entropy - want_e).abs().max().item()
                yield f"{where}: entropy off by up to {err:.3g} nats"
            return
        if not torch.allclose(previous, want_p, atol=1e-8):
            if torch.allclose(previous, _head_stats(weights, offset=0)[1], atol=1e-8):
                yield (
                    f"{where}: you read the diagonal, the weight on the token itself; the "
                    "previous token of query i is key i-1 (the diagonal below it)"
                )
            elif torch.allclose(previous, _head_stats(weights, offset=1)[1], atol=1e-8):
                yield f"{where}: you read key i+1, the next token; the previous one is i-1"
            else:
                err = (previous - want_p).abs().max().item()
                yield f"{where}: previous-token weight off by up to {err:.3g}"
            return


# --- 03b.attention_share (open-ended) -----------------------------------------------------

open_exercise(
    "03b.attention_share",
    "When does attention cost more than the rest of the block?",
    difficulty=2,
    rubric=[
        "Predicts the crossover from FLOP counts before measuring: per sequence, QK^T and "
        "the weighted sum of V cost 4 L^2 d over the full matrix, the four projections and "
        "the MLP (d_ff = 4d) 24 L d^2, so the two are equal at L = 6d.",
        "Times the whole block and the attention kernel alone on the same inputs, after a "
        "warm-up and interleaved, as medians of several calls, at five or more doubling "
        "lengths and at least two widths.",
        "Reports per width and length the measured time share of attention next to the "
        "predicted FLOP share, and the length at which the measured share passes one half.",
        "Explains why the crossover moves with d, what a causal kernel that skips the masked "
        "half changes (about 12d), and why measured and predicted shares need not agree "
        "(kernel efficiency, the softmax's memory traffic, LayerNorm and GELU left out of "
        "the count).",
    ],
    answer="""
        Counting FLOPs, attention's share of a block is L / (L + 6d) over a full score matrix:
        quadratic in L against linear, so it overtakes the projections and the MLP at L = 6d,
        or at about 12d for a causal kernel that skips the masked half. Timing
        scaled_dot_product_attention against the whole block shows the share rising with L
        and the crossover near 6d, moving out with d; the measured shares differ from the FLOP
        shares by what the count leaves out (LayerNorms, GELU, the fixed cost of a call) and by
        how fast each kernel runs per FLOP. At scale: for a model of width 4096 the crossover lies near 25k tokens
        (near 49k with a causal kernel), so at a context of a few thousand tokens attention is
        a small part of a large model's compute and a large part of a small model's.
    """,
)
