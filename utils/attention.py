"""Attention, masks and positional encodings, written out step by step.

Conventions used everywhere in the book:

- Tensors are batch first: token sequences are ``(B, L, d_model)``, per-head tensors are
  ``(B, H, L, head_dim)`` and attention weights are ``(B, H, L_q, L_k)``.
- Boolean masks say **True = may attend**, the same convention as the boolean ``attn_mask`` of
  :func:`torch.nn.functional.scaled_dot_product_attention`. Careful:
  :class:`torch.nn.MultiheadAttention` uses the opposite convention (True = masked out) for both
  its ``attn_mask`` and its ``key_padding_mask``.
- A query row whose keys are *all* masked gets all-zero weights and a zero output (not NaN).
  PyTorch's ``F.scaled_dot_product_attention`` does the same since torch 2.5 (it returns NaN on
  older versions); :class:`torch.nn.MultiheadAttention` still returns NaN for such rows (checked on
  torch 2.13).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.checks import check_min_int

__all__ = [
    "scaled_dot_product_attention",
    "causal_mask",
    "padding_mask",
    "MultiHeadAttention",
    "SinusoidalPositionalEncoding",
    "LearnedPositionalEmbedding",
    "RotaryEmbedding",
]


# --------------------------------------------------------------------------------------------
# Argument checks shared by the functions below
# --------------------------------------------------------------------------------------------


def _check_mask(mask: torch.Tensor, scores_shape: torch.Size) -> None:
    """A mask must be boolean and broadcast to the scores' shape without enlarging it."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"mask must have dtype torch.bool (True = may attend), got {mask.dtype}; "
            "additive float masks are not supported"
        )
    try:
        shape = torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        shape = None
    if shape != scores_shape:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the attention scores' "
            f"shape {tuple(scores_shape)} (..., L_q, L_k)"
        )


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.dim() < 2:
            raise ValueError(
                f"{name} must have shape (..., L, d), got {tuple(t.shape)}"
            )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same last dimension d_k, got {q.shape[-1]} and {k.shape[-1]}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of keys L_k, got {k.shape[-2]} and {v.shape[-2]}"
        )


# --------------------------------------------------------------------------------------------
# Scaled dot-product attention, the explicit way
# --------------------------------------------------------------------------------------------


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    training: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax(q kᵀ / sqrt(d_k)) v, one step at a time, returning the weights as well.

    Args:
        q: queries ``(..., L_q, d_k)``.
        k: keys ``(..., L_k, d_k)``.
        v: values ``(..., L_k, d_v)``. Leading dimensions of q, k, v broadcast like ``@``.
        mask: optional boolean tensor broadcastable to ``(..., L_q, L_k)``; True = may attend.
        dropout_p: dropout probability applied to the attention weights (only if ``training``).
        training: whether dropout is active.

    Returns:
        ``(output, weights)`` with output ``(..., L_q, d_v)`` and weights ``(..., L_q, L_k)``.
        Each weight row sums to 1, except rows whose keys are all masked: those rows are all
        zeros and so is their output (matching ``F.scaled_dot_product_attention`` on torch >= 2.5).
    """
    _check_qkv(q, k, v)
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p!r}")

    d_k = q.size(-1)
    # 1. similarity of every query with every key, scaled so that the scores' variance does
    #    not grow with d_k (which would push the softmax into its saturated, tiny-gradient regime)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d_k)  # (..., L_q, L_k)

    # 2. forbidden keys get -inf, so that softmax gives them exactly zero weight
    fully_masked = None
    if mask is not None:
        _check_mask(mask, scores.shape)
        scores = scores.masked_fill(~mask, float("-inf"))
        # softmax over a row of only -inf is 0/0 = NaN; give such rows finite scores here and
        # zero their weights after the softmax (forward and backward both stay NaN-free)
        fully_masked = ~mask.any(dim=-1, keepdim=True)  # (..., L_q, 1)
        scores = scores.masked_fill(fully_masked, 0.0)

    # 3. normalise over the keys: each query distributes one unit of attention
    weights = torch.softmax(scores, dim=-1)
    if fully_masked is not None:
        weights = weights.masked_fill(fully_masked, 0.0)

    # 4. (training only) randomly drop some attention links
    if dropout_p > 0.0 and training:
        weights = F.dropout(weights, p=dropout_p, training=True)

    # 5. the output is the weighted average of the values
    return weights @ v, weights


def causal_mask(L: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(L, L)`` mask, True on and below the diagonal: query i may attend keys j <= i."""
    check_min_int("L", L)
    return torch.ones(L, L, dtype=torch.bool, device=device).tril()


def padding_mask(
    lengths_or_ids: torch.Tensor, pad_idx: int | None = None, max_len: int | None = None
) -> torch.Tensor:
    """Key mask ``(B, 1, 1, L)``, True where the key is a real (non-padding) token.

    The shape broadcasts against attention scores ``(B, H, L_q, L_k)``. (For 3-D scores
    ``(B, L_q, L_k)`` use ``padding_mask(...)[:, 0]``.)

    Args:
        lengths_or_ids: either lengths ``(B,)`` (sequence b has ``lengths[b]`` real tokens at the
            start, then padding) or token ids ``(B, L)`` together with ``pad_idx``.
        pad_idx: the padding id; required with token ids, not allowed with lengths.
        max_len: with lengths, the padded length L (default ``lengths.max()``); with ids it must
            be None or equal to L.
    """
    x = lengths_or_ids
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"lengths_or_ids must be a torch.Tensor, got {type(x).__name__}"
        )
    if x.is_floating_point() or x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"lengths_or_ids must be an integer tensor, got {x.dtype}")

    if x.dim() == 1:  # lengths
        if pad_idx is not None:
            raise ValueError(
                "pad_idx is only used with token ids (B, L), not with lengths (B,)"
            )
        if x.numel() == 0:
            raise ValueError("lengths must not be empty")
        if (x < 0).any():
            raise ValueError(f"lengths must be >= 0, got {x.tolist()}")
        longest = int(x.max())
        if max_len is None:
            max_len = longest
        check_min_int("max_len", max_len)
        if longest > max_len:
            raise ValueError(f"a length ({longest}) exceeds max_len={max_len}")
        keep = torch.arange(max_len, device=x.device) < x[:, None]  # (B, L)
    elif x.dim() == 2:  # token ids
        if pad_idx is None:
            raise ValueError(
                "pad_idx is required when passing token ids of shape (B, L)"
            )
        if max_len is not None and max_len != x.shape[1]:
            raise ValueError(
                f"max_len={max_len} does not match the ids' length {x.shape[1]}"
            )
        keep = x != pad_idx
    else:
        raise ValueError(
            f"lengths_or_ids must be lengths (B,) or token ids (B, L), got shape {tuple(x.shape)}"
        )
    return keep[:, None, None, :]


# --------------------------------------------------------------------------------------------
# Multi-head attention
# --------------------------------------------------------------------------------------------


class MultiHeadAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (each ``d_model -> d_model``).

    Every head works in a ``head_dim = d_model // n_heads`` subspace and scales its scores by
    ``1 / sqrt(head_dim)``. (The seed notebooks scaled by ``sqrt(embed_size)``, i.e. by the
    model width instead of the head width: with 8 heads that makes every softmax sqrt(8) times
    too flat.)

    Two code paths give the same output: ``need_weights=False`` calls the fused
    :func:`torch.nn.functional.scaled_dot_product_attention`; ``need_weights=True`` calls the
    explicit :func:`scaled_dot_product_attention` above, which also returns the weights.

    Args:
        d_model: model width, divisible by ``n_heads``.
        n_heads: number of heads H.
        dropout: dropout on the attention weights (training mode only).
        bias: whether the four projections have biases.
        rotary: optional :class:`RotaryEmbedding` applied to q and k of every head.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        rotary: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        check_min_int("d_model", d_model)
        check_min_int("n_heads", n_heads)
        if d_model % n_heads != 0:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by n_heads ({n_heads}); "
                f"the remainder is {d_model % n_heads}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        if rotary is not None and rotary.head_dim != self.head_dim:
            raise ValueError(
                f"rotary.head_dim ({rotary.head_dim}) must equal d_model // n_heads "
                f"({self.head_dim})"
            )
        self.rotary = rotary
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d_model) -> (B, H, L, head_dim)."""
        B, L, _ = x.shape
        return x.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def _check_inputs(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
    ) -> None:
        """Shapes of :meth:`forward`'s arguments, checked before any work (shapes are free)."""
        for name, t in (("query", query), ("key", key), ("value", value)):
            if (
                not isinstance(t, torch.Tensor)
                or t.dim() != 3
                or t.shape[-1] != self.d_model
            ):
                shape = (
                    tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                )
                raise ValueError(
                    f"{name} must have shape (B, L, {self.d_model}), got {shape}"
                )
        if key.shape != value.shape:
            raise ValueError(
                f"key and value must have the same shape, got {tuple(key.shape)} and "
                f"{tuple(value.shape)}"
            )
        if query.shape[0] != key.shape[0]:
            raise ValueError(
                f"query and key must have the same batch size, got {query.shape[0]} and "
                f"{key.shape[0]}"
            )
        (B, L_q, _), L_k = query.shape, key.shape[1]
        if is_causal and L_q != L_k:
            raise ValueError(
                f"is_causal=True needs L_q == L_k, got L_q={L_q}, L_k={L_k}"
            )
        if mask is not None:
            _check_mask(mask, torch.Size((B, self.n_heads, L_q, L_k)))

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``query (B, L_q, d_model)`` to ``key``/``value (B, L_k, d)``.

        Args:
            mask: boolean, broadcastable to ``(B, H, L_q, L_k)``, True = may attend;
                e.g. :func:`padding_mask` ``(B, 1, 1, L_k)`` or :func:`causal_mask`
                ``(L, L)``.
            need_weights: also return the per-head weights (uses the explicit path).
            is_causal: add a causal mask (needs ``L_q == L_k``); combined with
                ``mask`` by AND.

        Returns:
            ``(output (B, L_q, d_model), weights (B, H, L_q, L_k) or None)``.
        """
        self._check_inputs(query, key, value, mask, is_causal)
        B, L_q, _ = query.shape

        q = self._split_heads(self.q_proj(query))  # (B, H, L_q, head_dim)
        k = self._split_heads(self.k_proj(key))  # (B, H, L_k, head_dim)
        v = self._split_heads(self.v_proj(value))  # (B, H, L_k, head_dim)
        if self.rotary is not None:
            q, k = self.rotary.apply_rotary(q, k)

        dropout_p = self.dropout if self.training else 0.0

        if is_causal and (need_weights or mask is not None):
            # an explicit causal mask; only the fused kernel alone takes is_causal=True
            causal = causal_mask(L_q, device=query.device)
            mask = causal if mask is None else mask & causal
            is_causal = False
        if need_weights:
            out, weights = scaled_dot_product_attention(
                q, k, v, mask, dropout_p, self.training
            )
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
            )
            weights = None

        out = out.transpose(1, 2).reshape(B, L_q, self.d_model)  # concatenate the heads
        return self.out_proj(out), weights


# --------------------------------------------------------------------------------------------
# Positional encodings
# --------------------------------------------------------------------------------------------


def _check_sequence(x: torch.Tensor, d_model: int, max_len: int, who: str) -> int:
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != d_model:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{who} expects x of shape (B, L, {d_model}), got {shape}")
    L = x.shape[1]
    if L > max_len:
        raise ValueError(f"{who}: sequence length {L} exceeds max_len={max_len}")
    return L


class SinusoidalPositionalEncoding(nn.Module):
    """Fixed sinusoids of Vaswani et al. (2017), added to a ``(B, L, d_model)`` input.

    ``PE[pos, 2i] = sin(pos / 10000^(2i / d_model))`` and
    ``PE[pos, 2i + 1] = cos(pos / 10000^(2i / d_model))``; ``d_model`` must be even.
    The table ``pe`` ``(max_len, d_model)`` is a non-persistent buffer (recomputed, not saved).
    """

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        check_min_int("d_model", d_model)
        check_min_int("max_len", max_len)
        if d_model % 2 != 0:
            raise ValueError(f"d_model must be even for sin/cos pairs, got {d_model}")
        self.d_model = d_model
        self.max_len = max_len
        position = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
        two_i = torch.arange(0, d_model, 2, dtype=torch.float32)  # (d_model / 2,)
        angle = position / torch.pow(10000.0, two_i / d_model)  # (max_len, d_model / 2)
        pe = torch.zeros(max_len, d_model)
        pe[:, 0::2] = torch.sin(angle)
        pe[:, 1::2] = torch.cos(angle)
        self.register_buffer("pe", pe, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, L, d_model) -> x + PE[:L]``, same shape."""
        L = _check_sequence(x, self.d_model, self.max_len, type(self).__name__)
        return x + self.pe[:L].to(x.dtype)


class LearnedPositionalEmbedding(nn.Module):
    """A trained vector per position (GPT-2 style), added to a ``(B, L, d_model)`` input."""

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        check_min_int("max_len", max_len)
        check_min_int("d_model", d_model)
        self.max_len = max_len
        self.d_model = d_model
        self.embedding = nn.Embedding(max_len, d_model)  # weight (max_len, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, L, d_model) -> x + E[0..L-1]``, same shape."""
        L = _check_sequence(x, self.d_model, self.max_len, type(self).__name__)
        return x + self.embedding(torch.arange(L, device=x.device))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, Su et al. 2021) for per-head tensors.

    Position m rotates each 2-D pair of coordinates of q and k by the angle ``m * theta_i`` with
    ``theta_i = base^(-2i / head_dim)``. Then ``<R_m q, R_n k> = <q, R_(n-m) k>`` depends on
    positions only through ``m - n``, and rotations preserve norms.

    Convention: "rotate half" (GPT-NeoX, LLaMA in Hugging Face): coordinate ``i`` is paired with
    ``i + head_dim / 2``, not with its neighbour ``i + 1`` as in the paper's interleaved layout.
    The two layouts differ by a fixed permutation of the head dimensions, so they are equally
    expressive, but weights trained with one do not work with the other.

    Args:
        head_dim: per-head width (even).
        max_len: largest position + 1 that can be rotated.
        base: the frequency base (10000 in the paper).
    """

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        check_min_int("head_dim", head_dim)
        check_min_int("max_len", max_len)
        if head_dim % 2 != 0:
            raise ValueError(f"head_dim must be even for RoPE, got {head_dim}")
        if not base > 1.0:
            raise ValueError(f"base must be > 1, got {base!r}")
        self.head_dim = head_dim
        self.max_len = max_len
        self.base = float(base)
        inv_freq = base ** (
            -torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
        )
        angle = (
            torch.arange(max_len, dtype=torch.float32)[:, None] * inv_freq
        )  # (max_len, hd/2)
        angle = torch.cat(
            [angle, angle], dim=-1
        )  # (max_len, head_dim): pair i <-> i + hd/2
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        """``(x1, x2) -> (-x2, x1)`` on the two halves of the last dimension."""
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    def rotate(
        self, x: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Rotate ``x (..., L, head_dim)``; ``positions`` (L,) ints, default ``0..L-1``."""
        if (
            not isinstance(x, torch.Tensor)
            or x.dim() < 2
            or x.shape[-1] != self.head_dim
        ):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"expected a tensor of shape (..., L, {self.head_dim}), got {shape}"
            )
        L = x.shape[-2]
        if positions is None:
            if L > self.max_len:
                raise ValueError(f"sequence length {L} exceeds max_len={self.max_len}")
            cos, sin = self.cos[:L], self.sin[:L]
        else:
            if (
                not isinstance(positions, torch.Tensor)
                or positions.is_floating_point()
                or positions.is_complex()
                or positions.dtype == torch.bool
                or positions.shape != (L,)
            ):
                got = (
                    f"{positions.dtype} {tuple(positions.shape)}"
                    if isinstance(positions, torch.Tensor)
                    else type(positions).__name__
                )
                raise ValueError(
                    f"positions must be an integer tensor of shape ({L},), got {got}"
                )
            if positions.numel() and (
                positions.min() < 0 or positions.max() >= self.max_len
            ):
                raise ValueError(
                    f"positions must lie in [0, {self.max_len}), got {positions}"
                )
            cos, sin = self.cos[positions], self.sin[positions]
        return x * cos.to(x.dtype) + self.rotate_half(x) * sin.to(x.dtype)

    def apply_rotary(
        self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate queries ``(B, H, L_q, head_dim)`` and keys ``(B, H, L_k, head_dim)``.

        ``positions`` (L,) is used for both (then L_q must equal L_k); by default q gets
        positions ``0..L_q-1`` and k gets ``0..L_k-1``.
        """
        return self.rotate(q, positions), self.rotate(k, positions)
