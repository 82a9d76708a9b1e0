"""The graders of chapter 3a's exercises (the mathematics of attention); see :mod:`utils.grader`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.grader import exercise


def _tensor(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{what} should be a torch tensor, got {type(value).__name__}")
    return value


@exercise(
    "03a.causal_mask",
    "Build a causal mask",
    difficulty=1,
    reference=lambda n: torch.ones(n, n, dtype=torch.bool).tril(),
    wrong=[
        (
            lambda n: torch.ones(n, n, dtype=torch.bool).triu(),
            "lets position 0 see position 1",
        ),
        (lambda n: torch.ones(n, n).tril(), "dtype torch.bool"),
        (
            lambda n: torch.ones(n, n, dtype=torch.bool).tril(-1),
            "hides position 0 from itself",
        ),
    ],
)
def causal_mask(answer):
    """``answer(n)`` -> ``[n, n]`` bool, True where query i may attend key j (j <= i)."""
    for n in (1, 2, 5, 8):
        mask = _tensor(answer(n), f"causal_mask({n})")
        if mask.shape != (n, n):
            yield f"causal_mask({n}) has shape {tuple(mask.shape)}, expected ({n}, {n})"
            return
        if mask.dtype != torch.bool:
            yield (
                f"causal_mask({n}) has dtype {mask.dtype}; use dtype torch.bool (True = may "
                "attend), the convention of torch's scaled_dot_product_attention"
            )
            return
        want = torch.ones(n, n, dtype=torch.bool).tril()
        for i, j in (mask != want).nonzero().tolist():
            if mask[i, j]:
                yield f"your mask lets position {i} see position {j}, which comes after it"
            elif i == j:
                yield f"your mask hides position {i} from itself (the diagonal must be True)"
            else:
                yield f"your mask hides position {j} from position {i}, which may see it"
            return


def _attention(q, k, v, mask=None, scale=None, dim=-1):
    scores = (
        q @ k.transpose(-2, -1) * (scale if scale is not None else q.shape[-1] ** -0.5)
    )
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim) @ v


@exercise(
    "03a.attention",
    "Scaled dot-product attention from its formula",
    difficulty=2,
    reference=_attention,
    wrong=[
        (lambda q, k, v, mask=None: _attention(q, k, v, mask, scale=1.0), "1/√d_k"),
        (
            lambda q, k, v, mask=None: _attention(q, k, v, mask, scale=1 / q.shape[-1]),
            "divided by d_k",
        ),
        (lambda q, k, v, mask=None: _attention(q, k, v), "ignores the mask"),
        (
            lambda q, k, v, mask=None: _attention(q, k, v, mask, dim=-2),
            "over the queries",
        ),
    ],
)
def attention(answer):
    """``answer(q, k, v, mask=None)`` -> ``softmax(q kᵀ/√d_k) v``; q ``[B, L_q, d_k]``,
    k ``[B, L_k, d_k]``, v ``[B, L_k, d_v]``, mask ``[L_q, L_k]`` bool (True = may attend)."""
    g = torch.Generator().manual_seed(0)
    cases = [(2, 3, 5, 4, 6, False), (1, 4, 4, 16, 3, True), (3, 5, 7, 9, 2, True)]
    for B, Lq, Lk, dk, dv, masked in cases:
        q = torch.randn(B, Lq, dk, generator=g, dtype=torch.float64) * 2
        k = torch.randn(B, Lk, dk, generator=g, dtype=torch.float64) * 2
        v = torch.randn(B, Lk, dv, generator=g, dtype=torch.float64)
        mask = torch.ones(Lq, Lk, dtype=torch.bool).tril(Lk - Lq) if masked else None
        got = _tensor(
            answer(q, k, v, mask) if masked else answer(q, k, v), "the output"
        )
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if got.shape != want.shape:
            yield f"output shape {tuple(got.shape)}, expected {tuple(want.shape)} [B, L_q, d_v]"
            return
        if torch.allclose(got.to(want.dtype), want, atol=1e-6):
            continue
        got = got.to(want.dtype)

        def near(other, got=got):
            return torch.allclose(got, other, atol=1e-6)

        if near(_attention(q, k, v, mask, scale=1.0)):
            yield "the scores are not scaled: divide q·k by √d_k (the 1/√d_k factor)"
        elif near(_attention(q, k, v, mask, scale=1 / dk)):
            yield f"you divided by d_k = {dk}; the formula divides by √d_k = {math.sqrt(dk):.3g}"
        elif masked and near(_attention(q, k, v)):
            yield "your function ignores the mask: set masked scores to -inf before the softmax"
        elif near(_attention(q, k, v, mask, dim=-2)):
            yield "the softmax runs over the queries (dim -2); it must run over the keys (dim -1)"
        else:
            err = (got - want).abs().max().item()
            yield f"output differs from torch's scaled_dot_product_attention by up to {err:.3g}"
        return


def _weight_value() -> float:
    # q = [1, 0], keys [1, 0] and [0, 1], d_k = 2: softmax([1/√2, 0]) on the first key
    return 1 / (1 + math.exp(-1 / math.sqrt(2)))


@exercise(
    "03a.weight_by_hand",
    "One attention weight by hand",
    difficulty=1,
    reference=_weight_value(),
    wrong=[(1 / (1 + math.exp(-1)), "√d_k"), (0.5, "0.5")],
)
def weight_by_hand(answer):
    """``answer``: the weight of key 1 for q = [1, 0], keys [1, 0] and [0, 1] (d_k = 2)."""
    value = float(answer)
    if abs(value - _weight_value()) <= 1e-3:
        return
    if abs(value - 1 / (1 + math.exp(-1))) <= 1e-3:
        yield f"{value:.4f} is softmax([1, 0]): the scores must be divided by √d_k = √2 first"
    elif abs(value - 1 / (1 + math.exp(-0.5))) <= 1e-3:
        yield f"{value:.4f} divides the scores by d_k = 2; the formula divides by √d_k"
    elif abs(value - 0.5) <= 1e-3:
        yield "0.5 treats both keys alike, but q·k₁ = 1 and q·k₂ = 0 differ"
    elif not 0 < value < 1:
        yield f"{value} is not a softmax weight: weights lie between 0 and 1"
    else:
        yield f"{value:.4f} is not softmax([1/√2, 0])[0]; recompute the two scores"


def _mha_params(d_model: int, n_heads: int, bias: bool) -> int:
    return 4 * d_model * d_model + (4 * d_model if bias else 0)


@exercise(
    "03a.mha_parameters",
    "Count the parameters of multi-head attention",
    difficulty=1,
    reference=_mha_params,
    wrong=[
        (lambda d, h, bias: 4 * d * d * h + (4 * d if bias else 0), "number of heads"),
        (lambda d, h, bias: 4 * d * d, "biases"),
        (lambda d, h, bias: 3 * d * d + (3 * d if bias else 0), "output projection"),
    ],
)
def mha_parameters(answer):
    """``answer(d_model, n_heads, bias)`` -> the parameter count of ``nn.MultiheadAttention``."""
    for d, h, bias in ((64, 4, True), (64, 8, True), (512, 8, False), (96, 3, True)):
        want = sum(
            p.numel() for p in nn.MultiheadAttention(d, h, bias=bias).parameters()
        )
        got = int(answer(d, h, bias))
        if got == want:
            continue
        if bias and got == 4 * d * d:
            yield f"d={d}, bias=True: {got} leaves out the biases (4·d = {4 * d} of them)"
        elif got == 4 * d * d * h + (4 * d if bias else 0):
            yield (
                f"d={d}, h={h}: {got} grows with the number of heads, but the heads split "
                "d_model between them: the count does not depend on h"
            )
        elif got == 3 * d * d + (3 * d if bias else 0):
            yield f"d={d}: {got} counts Q, K and V but not the output projection W_O"
        else:
            yield f"d={d}, h={h}, bias={bias}: you counted {got}, nn.MultiheadAttention has {want}"
        return
