"""The graders of chapter 5c's exercises (self-attention from scratch): the seed's shared
projection as a block-diagonal matrix, a masked softmax that survives empty rows and float16,
and a multi-head attention layer checked against ``nn.MultiheadAttention``; see
:mod:`utils.grader`."""

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


# --- 05c.block_diagonal ------------------------------------------------------------------


def _block_diagonal(weight, n_heads):
    return torch.block_diag(*[weight] * n_heads)  # = torch.kron(torch.eye(h), weight)


def _seed_projection(x, weight, n_heads):
    """The seed's way: cut x [N, d] into h slices of d_k and apply Linear(d_k, d_k) to each."""
    N, d = x.shape
    return F.linear(x.reshape(N, n_heads, d // n_heads), weight).reshape(N, d)


@exercise(
    "05c.block_diagonal",
    "The seed's shared projection as one d x d matrix",
    difficulty=2,
    reference=_block_diagonal,
    wrong=[
        (lambda w, h: torch.kron(w, torch.eye(h, dtype=w.dtype)), "interleaves"),
        (lambda w, h: w.repeat(h, h), "off-diagonal blocks"),
        (lambda w, h: torch.block_diag(*[w.t()] * h), "transposed"),
    ],
)
def block_diagonal(answer):
    """``answer(weight [d_k, d_k], n_heads h)`` -> ``[d, d]`` (``d = h d_k``) such that
    ``F.linear(x, answer(weight, h))`` equals the seed's ``Linear(d_k, d_k)`` applied to each of
    the h slices of ``x [N, d]``."""
    g = torch.Generator().manual_seed(0)
    for dk, h in ((2, 3), (4, 2), (3, 4), (5, 1)):
        weight = torch.randn(dk, dk, generator=g, dtype=torch.float64)
        x = torch.randn(6, h * dk, generator=g, dtype=torch.float64)
        got = _tensor(answer(weight.clone(), h), "the matrix")
        d = h * dk
        if got.shape != (d, d):
            yield f"d_k={dk}, h={h}: shape {tuple(got.shape)}, expected (d, d) = {(d, d)}"
            return
        got = got.to(torch.float64)
        want = _seed_projection(x, weight, h)
        if torch.allclose(F.linear(x, got), want):
            continue
        if torch.allclose(got, torch.kron(weight, torch.eye(h, dtype=weight.dtype))):
            yield (
                f"d_k={dk}, h={h}: kron(W, I_h) interleaves the heads (entry W[i, j] lands "
                "on every h-th row and column); the slices of the token are contiguous, so "
                "the matrix is kron(I_h, W): W on the diagonal blocks"
            )
        elif torch.allclose(got, weight.repeat(h, h)):
            yield (
                f"d_k={dk}, h={h}: W repeated in every block mixes the slices; slice r of "
                "the output depends on slice r of the input only, so the off-diagonal "
                "blocks must be zero"
            )
        elif torch.allclose(got, torch.block_diag(*[weight.t()] * h)):
            yield (
                f"d_k={dk}, h={h}: your blocks are Wᵀ: the blocks are transposed. "
                "nn.Linear computes x Wᵀ with W of shape [out, in], so the block is W itself"
            )
        else:
            err = (F.linear(x, got) - want).abs().max().item()
            yield (
                f"d_k={dk}, h={h}: F.linear(x, your matrix) differs from the seed's "
                f"per-slice projection by up to {err:.3g}"
            )
        return


# --- 05c.masked_softmax ------------------------------------------------------------------


def _masked_softmax(scores, mask):
    scores = scores.masked_fill(~mask, float("-inf"))
    empty = ~mask.any(dim=-1, keepdim=True)  # rows with no allowed key
    weights = scores.masked_fill(empty, 0.0).softmax(dim=-1)
    return weights.masked_fill(empty, 0.0)


def _want_softmax(scores, mask):
    s = scores.float().masked_fill(~mask, float("-inf"))
    w = torch.nan_to_num(s.softmax(-1), nan=0.0)
    return w.to(scores.dtype)


@exercise(
    "05c.masked_softmax",
    "A masked softmax that survives empty rows and float16",
    difficulty=2,
    reference=_masked_softmax,
    wrong=[
        (
            lambda s, m: s.masked_fill(~m, float("-inf")).softmax(-1),
            "NaN",
        ),
        (
            lambda s, m: s.masked_fill(~m, -1e9).softmax(-1),
            "uniformly over the blocked keys",
        ),
        (
            lambda s, m: _masked_softmax(s, ~m),
            "True = blocked",
        ),
        (
            lambda s, m: (s * m).softmax(-1),
            "zero score",
        ),
    ],
)
def masked_softmax(answer):
    """``answer(scores [..., L_q, L_k], mask bool, same shape, True = may attend)`` ->
    the weights: softmax over the keys with blocked keys at exactly 0, and all-zero rows where
    no key is allowed. It must work in float32 and float16."""
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 4, 5, generator=g) * 3
    causal = torch.ones(4, 5, dtype=torch.bool).tril(1).expand(2, 4, 5).clone()
    empty_row = causal.clone()
    empty_row[1, 0] = False  # query 0 of batch 1 may attend no key
    cases = [
        ("a causal mask", scores, causal),
        ("a mask with an empty row (query 0 of batch 1)", scores, empty_row),
    ]
    cases.append(("float16 with an empty row", scores.half(), empty_row))
    for name, s, m in cases:
        try:
            got = _tensor(answer(s.clone(), m.clone()), "the weights")
        except RuntimeError as error:
            if s.dtype == torch.float16:
                yield (
                    f"{name}: your function fails ({str(error)[:70]}): a fill value such "
                    "as -1e20 does not fit float16 (its largest magnitude is 65504); fill "
                    "with -inf, which every float type has"
                )
                return
            raise
        if got.shape != s.shape:
            yield f"{name}: shape {tuple(got.shape)}, expected {tuple(s.shape)}"
            return
        want = _want_softmax(s, m)
        tol = 2e-3 if s.dtype == torch.float16 else 1e-6
        if torch.allclose(got.float(), want.float(), atol=tol):
            continue
        empty = ~m.any(-1)
        if torch.isnan(got).any():
            rows = torch.isnan(got).any(-1).nonzero().tolist()
            yield (
                f"{name}: NaN weights in rows {rows}: a row of only -inf is 0/0 after the "
                "softmax; give a row with no allowed key all-zero weights"
            )
        elif empty.any() and torch.allclose(
            got[empty].float(), torch.full_like(got[empty].float(), 1 / s.shape[-1])
        ):
            yield (
                f"{name}: the empty row gets {1 / s.shape[-1]:.2f} on every key: a finite "
                "fill such as -1e9 makes all its scores equal, so the softmax spreads the "
                "weight uniformly over the blocked keys; such a row must be all zeros"
            )
        elif torch.allclose(got.float(), _want_softmax(s, ~m).float(), atol=tol):
            yield (
                f"{name}: your weights treat the mask as True = blocked (the convention of "
                "nn.MultiheadAttention); here True = may attend, as in "
                "F.scaled_dot_product_attention"
            )
        elif (got.float()[~m] != 0).any():
            yield (
                f"{name}: blocked keys get weight up to {got.float()[~m].abs().max():.3g}; "
                "a zero score still has exp(0) = 1: blocked keys must be -inf before the "
                "softmax"
            )
        else:
            err = (got.float() - want.float()).abs().max().item()
            yield f"{name}: your weights differ from the masked softmax by up to {err:.3g}"
        return


# --- 05c.multi_head_attention ------------------------------------------------------------


def _mha(query, key, value, params, n_heads, mask=None, scale_width=None):
    """The reference: the book's layer written out. ``params``: the state_dict of
    :class:`utils.attention.MultiHeadAttention` (q_proj, k_proj, v_proj, out_proj)."""
    B, L_q, d = query.shape
    dk = d // n_heads

    def project(x, name):
        y = F.linear(x, params[f"{name}.weight"], params[f"{name}.bias"])
        return y.view(B, -1, n_heads, dk).transpose(1, 2)  # [B, h, L, d_k]

    q, k, v = project(query, "q_proj"), project(key, "k_proj"), project(value, "v_proj")
    scores = q @ k.transpose(-2, -1) / math.sqrt(scale_width or dk)  # [B, h, L_q, L_k]
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    out = scores.softmax(-1) @ v  # [B, h, L_q, d_k]
    out = out.transpose(1, 2).reshape(B, L_q, d)
    return F.linear(out, params["out_proj.weight"], params["out_proj.bias"])


def _torch_mha(query, key, value, params, n_heads, mask=None):
    d = query.shape[-1]
    layer = nn.MultiheadAttention(d, n_heads, batch_first=True, dtype=torch.float64)
    with torch.no_grad():
        layer.in_proj_weight.copy_(
            torch.cat([params[f"{r}_proj.weight"] for r in "qkv"])
        )
        layer.in_proj_bias.copy_(torch.cat([params[f"{r}_proj.bias"] for r in "qkv"]))
        layer.out_proj.weight.copy_(params["out_proj.weight"])
        layer.out_proj.bias.copy_(params["out_proj.bias"])
    blocked = None if mask is None else ~mask  # nn.MultiheadAttention: True = blocked
    out, _ = layer(query, key, value, attn_mask=blocked, need_weights=False)
    return out


@exercise(
    "05c.multi_head_attention",
    "Multi-head attention, checked against nn.MultiheadAttention",
    difficulty=3,
    reference=_mha,
    wrong=[
        (
            lambda q, k, v, p, h, mask=None: _mha(
                q, k, v, p, h, mask, scale_width=q.shape[-1]
            ),
            "√d_model",
        ),
        (lambda q, k, v, p, h, mask=None: _mha(q, k, v, p, 1, mask), "one head"),
        (lambda q, k, v, p, h, mask=None: _mha(v, k, q, p, h, mask), "argument order"),
        (
            lambda q, k, v, p, h, mask=None: _mha(
                q, k, v, p, h, None if mask is None else ~mask
            ),
            "True = blocked",
        ),
    ],
)
def multi_head_attention(answer):
    """``answer(query [B, L_q, d], key [B, L_k, d], value [B, L_k, d], params, n_heads,
    mask=None)`` -> ``[B, L_q, d]``. ``params`` holds ``q_proj.weight`` ``[d, d]``,
    ``q_proj.bias`` ``[d]`` and the same for ``k_proj``, ``v_proj``, ``out_proj`` (the names of
    :class:`utils.attention.MultiHeadAttention`); ``mask`` ``[L_q, L_k]`` bool, True = may
    attend."""
    g = torch.Generator().manual_seed(2)
    cases = [  # (B, L_q, L_k, d, h, masked, cross)
        (2, 5, 5, 8, 2, False, False),
        (2, 6, 6, 12, 3, True, False),
        (1, 3, 3, 16, 4, False, True),
    ]
    for B, Lq, Lk, d, h, masked, cross in cases:
        params = {
            f"{r}_proj.{p}": torch.randn(
                *((d, d) if p == "weight" else (d,)), generator=g, dtype=torch.float64
            )
            / (math.sqrt(d) if p == "weight" else 1)
            for r in ("q", "k", "v", "out")
            for p in ("weight", "bias")
        }
        x = torch.randn(B, Lq, d, generator=g, dtype=torch.float64) * 2
        if cross:  # queries from one sequence, keys and values from another
            key = torch.randn(B, Lk, d, generator=g, dtype=torch.float64) * 2
            value = key
        else:
            key = value = x
        mask = torch.ones(Lq, Lk, dtype=torch.bool).tril() if masked else None
        args = (x.clone(), key.clone(), value.clone(), dict(params), h)
        got = _tensor(answer(*args, mask) if masked else answer(*args), "the output")
        what = f"d={d}, h={h}" + (", causal mask" if masked else "")
        what += ", cross-attention" if cross else ""
        if got.shape != (B, Lq, d):
            yield f"{what}: output shape {tuple(got.shape)}, expected {(B, Lq, d)}"
            return
        got = got.to(torch.float64)
        want = _torch_mha(x, key, value, params, h, mask)
        if torch.allclose(got, want, atol=1e-8):
            continue

        def near(other, got=got):
            return torch.allclose(got, other, atol=1e-8, equal_nan=True)

        if near(_mha(x, key, value, params, h, mask, scale_width=d)):
            yield (
                f"{what}: you divide the scores by √d_model = √{d}; inside a head the dot "
                f"product has d_k = {d // h} terms, so the scale is 1/√d_k (seed 002's "
                "error: every softmax √h times too flat)"
            )
        elif h > 1 and near(_mha(x, key, value, params, 1, mask)):
            yield (
                f"{what}: your output is that of one head of width {d}: split the "
                f"projected q, k, v into h = {h} heads of d_k = {d // h} before the scores"
            )
        elif cross and near(_mha(value, key, x, params, h, mask)):
            yield (
                f"{what}: your layer takes its arguments in seed 002's (values, keys, "
                "query) argument order; PyTorch and the papers use (query, key, value)"
            )
        elif masked and near(_mha(x, key, value, params, h, ~mask)):
            yield (
                f"{what}: your mask is read as True = blocked, so each query sees only the "
                "future; here True = may attend"
            )
        elif masked and near(_mha(x, key, value, params, h)):
            yield f"{what}: your layer ignores the mask"
        else:
            err = (got - want).abs().max().item()
            yield f"{what}: your output differs from nn.MultiheadAttention's by up to {err:.3g}"
        return
