"""The book's models: a GPT-style decoder, an encoder classifier and an LSTM baseline.

- :class:`TransformerBlock`: pre-LN block shared by both Transformers.
- :class:`TransformerLM`: decoder-only, causal language model with :meth:`TransformerLM.generate`.
- :class:`TransformerClassifier`: bidirectional encoder with masked mean or CLS pooling.
- :class:`LSTMLM`: the recurrent baseline.
- :func:`count_parameters`, :func:`flops_per_token`, :func:`flops_breakdown`: the bookkeeping
  behind scaling laws (Kaplan et al. 2020).

Shapes: B = batch, L = sequence length, V = vocabulary size, H = heads, C = classes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from utils import compute
from utils.attention import (
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
)
from utils.batches import eval_mode
from utils.checks import check_min_int

__all__ = [
    "TransformerBlock",
    "TransformerLM",
    "TransformerClassifier",
    "LSTMLM",
    "filter_logits",
    "mean_pool",
    "reading_is_free",
    "count_parameters",
    "flops_breakdown",
    "flops_per_token",
]

POS_ENCODINGS = ("learned", "sinusoidal", "rope")
POOLINGS = ("mean", "cls")


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _check_dropout(dropout: float) -> None:
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}")


def reading_is_free(t: torch.Tensor) -> bool:
    """Whether Python can read ``t``'s values at no cost: on the CPU they are in host memory.

    On an accelerator every read (``.item()``, ``if tensor:``, ``.nonzero()``, ...) makes Python
    wait until the device has caught up; in a forward pass that is a wait at every step. So the
    models check values only where this is True (shapes are checked everywhere: they are free).
    """
    return t.device.type == "cpu"


def _check_ids(idx: torch.Tensor, vocab_size: int, max_len: int | None) -> None:
    """Token ids must be an integer (B, L) tensor with 1 <= L <= max_len and 0 <= id < V.

    The range of the ids is checked where reading it is free (:func:`reading_is_free`); on a
    CUDA GPU the embedding's kernel stops on an out-of-range id itself (a device-side assert).
    """
    if not isinstance(idx, torch.Tensor):
        raise TypeError(
            f"idx must be a torch.Tensor of token ids, got {type(idx).__name__}"
        )
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TypeError(
            f"idx must hold integer token ids (torch.long), got {idx.dtype}"
        )
    if idx.dim() != 2 or idx.shape[1] == 0:
        raise ValueError(
            f"idx must have shape (B, L) with L >= 1, got {tuple(idx.shape)}"
        )
    if max_len is not None and idx.shape[1] > max_len:
        raise ValueError(f"sequence length {idx.shape[1]} exceeds max_len={max_len}")
    if (
        reading_is_free(idx)
        and idx.numel()
        and (idx.min() < 0 or idx.max() >= vocab_size)
    ):
        raise ValueError(
            f"token ids must lie in [0, {vocab_size}), got min {int(idx.min())} and "
            f"max {int(idx.max())}"
        )


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean over positions: ``hidden [B, T, D]``, ``mask [B, T]`` -> ``[B, D]``.

    ``mask`` is 1 (or True) for a real token and 0 for padding; padding counts neither in the
    sum nor in the divisor, so a padded text pools to the same vector as the unpadded one.
    The book's one pooling, used by :class:`TransformerClassifier`, :mod:`utils.finetune` and
    :mod:`utils.search`.

    A row with no real token has no mean: it raises ``ValueError`` where reading the mask is
    free (:func:`reading_is_free`). On an accelerator the check would make every call wait for
    the device, so there such a row gives NaN (0 / 0), which a trainer reports as a NaN loss.
    """
    if hidden.dim() != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"expected hidden [B, T, D] and mask [B, T], got {tuple(hidden.shape)} "
            f"and {tuple(mask.shape)}"
        )
    weight = mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    counts = weight.sum(dim=1)  # [B, 1]
    if reading_is_free(counts):
        empty = (counts[:, 0] == 0).nonzero().flatten()
        if empty.numel():
            raise ValueError(
                f"rows {empty.tolist()} of the mask have no real token (only padding): mean "
                "pooling has nothing to average; drop those rows (or, in "
                "TransformerClassifier, use pooling='cls')"
            )
    return (hidden * weight).sum(dim=1) / counts


def init_gpt2_weights(model: nn.Module, n_layers: int) -> None:
    """GPT-2 initialisation, as used by both Transformers.

    Every ``nn.Linear`` and ``nn.Embedding`` weight ~ N(0, 0.02²), biases 0, LayerNorm (1, 0).
    The two *residual* projections of each block (``attn.out_proj`` and ``mlp.proj``) get
    std ``0.02 / sqrt(2 * n_layers)``: the residual stream receives 2 additions per block, so
    scaling each by 1/sqrt(2 n_layers) keeps the stream's variance at initialisation roughly
    independent of depth.
    """
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    residual_std = 0.02 / math.sqrt(2 * n_layers)
    for module in model.modules():
        if isinstance(module, TransformerBlock):
            nn.init.normal_(module.attn.out_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(module.mlp.proj.weight, mean=0.0, std=residual_std)


# --------------------------------------------------------------------------------------------
# The shared Transformer block
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """Position-wise feed-forward net: ``(..., d) -> (..., d_ff) -> GELU -> (..., d)``."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, d_ff)
        self.proj = nn.Linear(d_ff, d_model)  # a residual projection (scaled init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class TransformerBlock(nn.Module):
    """Pre-LN Transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))``.

    Normalising *before* each sub-layer (GPT-2) keeps an untouched residual path from input to
    output, which trains stably without learning-rate warm-up tricks that post-LN needs.

    Args:
        d_model, n_heads: width and heads of the attention.
        d_ff: hidden width of the MLP.
        dropout: applied to the attention weights and to each sub-layer's output.
        rotary: optional shared :class:`~utils.attention.RotaryEmbedding`.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        rotary: RotaryEmbedding | None = None,
    ) -> None:
        super().__init__()
        check_min_int("d_ff", d_ff)
        _check_dropout(dropout)
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, dropout=dropout, rotary=rotary)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, d_ff)
        self.drop = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x (B, L, d_model)`` -> ``(x (B, L, d_model), weights (B, H, L, L) or None)``.

        ``mask``: boolean, broadcastable to ``(B, H, L, L)``, True = may attend.
        """
        h = self.ln1(x)
        attn_out, weights = self.attn(
            h, h, h, mask=mask, need_weights=need_weights, is_causal=is_causal
        )
        x = x + self.drop(attn_out)
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, weights


# --------------------------------------------------------------------------------------------
# Decoder-only language model
# --------------------------------------------------------------------------------------------


def _check_top_k_top_p(top_k: int | None, top_p: float | None) -> None:
    if top_k is not None:
        check_min_int("top_k", top_k)
    if top_p is not None and (
        isinstance(top_p, bool)
        or not isinstance(top_p, (int, float))
        or not 0.0 < top_p <= 1.0
    ):
        raise ValueError(f"top_p must be a float in (0, 1], got {top_p!r}")


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set to ``-inf`` the logits that top-k and/or nucleus (top-p) sampling exclude.

    Args:
        logits: ``(..., V)``.
        top_k: keep the ``top_k`` largest logits (ties with the k-th value are kept too);
            values above V keep everything.
        top_p: keep the smallest set of most likely tokens whose probability adds up to at least
            ``top_p`` (Holtzman et al. 2020); the most likely token is always kept. Applied after
            top_k, on the distribution top_k left.

    Returns:
        A new tensor shaped like ``logits``.
    """
    if (
        not isinstance(logits, torch.Tensor)
        or not logits.is_floating_point()
        or logits.dim() < 1
    ):
        raise TypeError("logits must be a floating-point tensor of shape (..., V)")
    _check_top_k_top_p(top_k, top_p)

    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1)
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = (
            probs.cumsum(dim=-1) - probs
        )  # probability of the better-ranked tokens
        drop_sorted = mass_before >= top_p  # already enough mass without this token
        drop = torch.zeros_like(drop_sorted).scatter(
            -1, order, drop_sorted
        )  # undo the sort
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class TransformerLM(nn.Module):
    """Decoder-only (GPT-style) language model: pre-LN blocks, causal attention, GELU MLP.

    ``tokens -> token embedding (+ positions) -> n_layers x TransformerBlock -> LayerNorm ->
    linear head -> logits``. Weights follow :func:`init_gpt2_weights`.

    Args:
        vocab_size: V.
        d_model: model width; ``n_heads`` must divide it.
        n_heads: attention heads.
        n_layers: number of blocks.
        d_ff: MLP hidden width (default ``4 * d_model``).
        max_len: longest input (context window).
        dropout: dropout on embeddings, attention weights and residual branches.
        tie_weights: share the token embedding matrix with the output head (GPT-2).
        pos_encoding: ``"learned"`` (GPT-2), ``"sinusoidal"`` (Vaswani et al.) or ``"rope"``
            (rotary, applied to q and k inside every attention layer).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        d_ff: int | None = None,
        max_len: int = 512,
        dropout: float = 0.0,
        tie_weights: bool = True,
        pos_encoding: str = "learned",
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("d_model", d_model)):
            check_min_int(name, value)
        for name, value in (
            ("n_heads", n_heads),
            ("n_layers", n_layers),
            ("max_len", max_len),
        ):
            check_min_int(name, value)
        _check_dropout(dropout)
        if pos_encoding not in POS_ENCODINGS:
            raise ValueError(
                f"pos_encoding must be one of {POS_ENCODINGS}, got {pos_encoding!r}"
            )
        if d_model % n_heads != 0:
            raise ValueError(
                f"d_model ({d_model}) must be divisible by n_heads ({n_heads})"
            )
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.vocab_size, self.d_model, self.n_heads = vocab_size, d_model, n_heads
        self.n_layers, self.d_ff, self.max_len = n_layers, d_ff, max_len
        self.pos_encoding = pos_encoding

        self.token_embedding = nn.Embedding(vocab_size, d_model)
        self.position_embedding: nn.Module | None = None
        self.rotary: RotaryEmbedding | None = None
        if pos_encoding == "learned":
            self.position_embedding = LearnedPositionalEmbedding(max_len, d_model)
        elif pos_encoding == "sinusoidal":
            self.position_embedding = SinusoidalPositionalEncoding(d_model, max_len)
        else:
            self.rotary = RotaryEmbedding(d_model // n_heads, max_len)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff, dropout, rotary=self.rotary)
            for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        init_gpt2_weights(self, n_layers)
        if tie_weights:
            self.lm_head.weight = self.token_embedding.weight  # one tensor, two uses

    def forward(
        self, idx: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``idx (B, L)`` -> ``logits (B, L, V)``; position t only sees tokens 0..t.

        With ``return_attention=True`` returns ``(logits, attentions)``, ``attentions`` a list of
        ``n_layers`` tensors ``(B, H, L, L)`` whose rows sum to 1 (and are 0 above the diagonal).
        """
        if return_attention:
            h, attentions = self.features(idx, return_attention=True)
            return self.lm_head(h), attentions  # (B, L, V), [(B, H, L, L)] * n_layers
        return self.lm_head(self.features(idx))  # (B, L, V)

    def features(
        self, idx: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """The trunk without the head: ``idx (B, L)`` -> the final-LayerNorm states ``(B, L, d)``.

        What :meth:`forward` feeds to ``lm_head`` (and what a different head, e.g. an adaptive
        softmax, reads). Checks the ids; positions as ``pos_encoding`` says (rotary ones inside
        the blocks). With ``return_attention=True`` returns ``(states, attentions)``.
        """
        _check_ids(idx, self.vocab_size, self.max_len)
        x = self.token_embedding(idx)  # (B, L, d_model)
        if self.position_embedding is not None:
            x = self.position_embedding(x)
        x = self.drop(x)
        attentions = []
        for block in self.blocks:
            x, weights = block(x, need_weights=return_attention, is_causal=True)
            attentions.append(weights)
        x = self.ln_f(x)
        return (x, attentions) if return_attention else x

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Extend ``idx (B, L0)`` by ``max_new_tokens`` tokens -> ``(B, L0 + max_new_tokens)``.

        Each step feeds the last ``max_len`` tokens (no KV cache: simple, not fast), divides the
        last position's logits by ``temperature``, applies :func:`filter_logits` and samples with
        ``generator``; ``greedy=True`` takes the argmax instead. The arguments follow the rules
        of :func:`utils.decoding.check_sampling` (a finite temperature > 0), and the result is
        the one :func:`utils.decoding.generate` gives for the same settings. Runs in eval mode (dropout off)
        and restores the previous mode afterwards.
        """
        from utils.decoding import check_sampling  # decoding imports this module

        _check_ids(idx, self.vocab_size, max_len=None)  # longer prompts are cropped
        check_min_int("max_new_tokens", max_new_tokens, minimum=0)
        check_sampling(
            temperature, top_k, top_p
        )  # the rules of utils.decoding.generate

        with eval_mode(self):
            for _ in range(max_new_tokens):
                context = idx[:, -self.max_len :]
                logits = self(context)[:, -1, :].float()  # (B, V); sample in fp32
                if greedy:
                    next_id = logits.argmax(dim=-1, keepdim=True)
                else:
                    logits = filter_logits(logits / temperature, top_k, top_p)
                    probs = torch.softmax(logits, dim=-1)
                    next_id = torch.multinomial(
                        probs, num_samples=1, generator=generator
                    )
                idx = torch.cat([idx, next_id], dim=1)
        return idx


# --------------------------------------------------------------------------------------------
# Encoder classifier
# --------------------------------------------------------------------------------------------


class TransformerClassifier(nn.Module):
    """Bidirectional Transformer encoder + pooling + linear head, for sequence classification.

    Padding tokens (``pad_idx``) are never attended to and never pooled, so in eval mode
    appending padding leaves the logits unchanged.

    Pooling:
        ``"mean"``: average of the final states of the real tokens. A row made only of padding
        has nothing to average and raises ValueError.
        ``"cls"``: a learned vector is prepended (at position 0) and its final state is used.
        An all-padding row is then well defined: the CLS token attends only to itself.

    Args mirror :class:`TransformerLM`; positions are learned. ``return_attention=True`` adds a
    list of ``n_layers`` tensors ``(B, H, L', L')`` with ``L' = L`` (mean) or ``L + 1`` (cls,
    index 0 is the CLS token).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        d_ff: int | None = None,
        max_len: int = 512,
        dropout: float = 0.0,
        pad_idx: int = 0,
        pooling: str = "mean",
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("num_classes", num_classes),
            ("d_model", d_model),
            ("n_heads", n_heads),
            ("n_layers", n_layers),
            ("max_len", max_len),
        ):
            check_min_int(name, value)
        _check_dropout(dropout)
        if (
            isinstance(pad_idx, bool)
            or not isinstance(pad_idx, int)
            or not 0 <= pad_idx < vocab_size
        ):
            raise ValueError(
                f"pad_idx must be an int in [0, {vocab_size}), got {pad_idx!r}"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.vocab_size, self.num_classes, self.max_len = (
            vocab_size,
            num_classes,
            max_len,
        )
        self.pad_idx, self.pooling = pad_idx, pooling

        self.token_embedding = nn.Embedding(vocab_size, d_model)
        extra = 1 if pooling == "cls" else 0
        self.position_embedding = LearnedPositionalEmbedding(max_len + extra, d_model)
        if pooling == "cls":
            self.cls_embedding = nn.Parameter(torch.zeros(1, 1, d_model))
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff, dropout) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)
        init_gpt2_weights(self, n_layers)
        if pooling == "cls":
            nn.init.normal_(self.cls_embedding, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """``idx (B, L)`` -> ``logits (B, C)`` (or ``(logits, attentions)``)."""
        _check_ids(idx, self.vocab_size, self.max_len)
        is_real = (
            idx != self.pad_idx
        )  # (B, L); same as utils.attention.padding_mask, unsqueezed
        x = self.token_embedding(idx)  # (B, L, d_model)
        if self.pooling == "cls":
            B = idx.shape[0]
            x = torch.cat(
                [self.cls_embedding.expand(B, 1, -1), x], dim=1
            )  # (B, L + 1, d)
            is_real = torch.cat([is_real.new_ones(B, 1), is_real], dim=1)
        x = self.drop(self.position_embedding(x))
        mask = is_real[
            :, None, None, :
        ]  # (B, 1, 1, L'): queries may attend real keys only
        attentions = []
        for block in self.blocks:
            x, weights = block(x, mask=mask, need_weights=return_attention)
            attentions.append(weights)
        x = self.ln_f(x)
        pooled = x[:, 0] if self.pooling == "cls" else mean_pool(x, is_real)  # (B, d)
        logits = self.head(pooled)  # (B, C)
        return (logits, attentions) if return_attention else logits


# --------------------------------------------------------------------------------------------
# LSTM baseline
# --------------------------------------------------------------------------------------------


class LSTMLM(nn.Module):
    """Batch-first LSTM language model: embedding -> LSTM -> linear head.

    Compared with the seed notebooks: inputs are batch first, the hidden state is returned so it
    can be carried across consecutive chunks (detach it between optimiser steps with
    :meth:`detach_state`, otherwise backprop runs through the whole history), dropout is applied
    to embeddings and outputs (and between LSTM layers), and weight tying checks its sizes.

    Args:
        vocab_size: V.
        d_model: embedding width.
        hidden_size: LSTM state width.
        n_layers: stacked LSTM layers.
        dropout: dropout on embeddings, between layers and on the LSTM output.
        tie_weights: share the embedding with the output head (needs ``hidden_size == d_model``).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        hidden_size: int,
        n_layers: int,
        dropout: float = 0.0,
        tie_weights: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("vocab_size", vocab_size),
            ("d_model", d_model),
            ("hidden_size", hidden_size),
            ("n_layers", n_layers),
        ):
            check_min_int(name, value)
        _check_dropout(dropout)
        if tie_weights and hidden_size != d_model:
            raise ValueError(
                f"tie_weights=True needs hidden_size == d_model, got hidden_size={hidden_size} "
                f"and d_model={d_model}"
            )
        self.vocab_size, self.hidden_size, self.n_layers = (
            vocab_size,
            hidden_size,
            n_layers,
        )
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(
            d_model,
            hidden_size,
            n_layers,
            batch_first=True,
            dropout=dropout
            if n_layers > 1
            else 0.0,  # PyTorch's dropout acts between layers
        )
        self.lm_head = nn.Linear(hidden_size, vocab_size)
        if tie_weights:
            self.lm_head.weight = self.embedding.weight

    def init_state(
        self, batch_size: int, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero state ``(h, c)``, each ``(n_layers, batch_size, hidden_size)``."""
        check_min_int("batch_size", batch_size)
        dtype = self.lm_head.weight.dtype
        device = self.lm_head.weight.device if device is None else device
        shape = (self.n_layers, batch_size, self.hidden_size)
        return torch.zeros(shape, dtype=dtype, device=device), torch.zeros(
            shape, dtype=dtype, device=device
        )

    @staticmethod
    def detach_state(
        state: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut the graph behind a carried state (truncated backpropagation through time)."""
        return tuple(s.detach() for s in state)

    def forward(
        self, idx: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``idx (B, L)``, optional ``state`` -> ``(logits (B, L, V), new state)``."""
        _check_ids(idx, self.vocab_size, max_len=None)
        B = idx.shape[0]
        if state is None:
            state = self.init_state(B, idx.device)
        else:
            expected = (self.n_layers, B, self.hidden_size)
            if (
                not isinstance(state, (tuple, list))
                or len(state) != 2
                or any(tuple(s.shape) != expected for s in state)
            ):
                raise ValueError(
                    f"state must be a pair (h, c) of shape {expected} each"
                )
        out, state = self.lstm(
            self.drop(self.embedding(idx)), tuple(state)
        )  # (B, L, hidden)
        return self.lm_head(self.drop(out)), state


# --------------------------------------------------------------------------------------------
# Parameter and FLOP bookkeeping
# --------------------------------------------------------------------------------------------


def count_parameters(
    model: nn.Module, trainable_only: bool = True, exclude: str | Iterable[str] = ()
) -> int:
    """Number of parameters of ``model``; shared (tied) tensors count once.

    Args:
        trainable_only: count only parameters with ``requires_grad``.
        exclude: skip parameters whose name contains any of these substrings. For the
            "non-embedding" count N of Kaplan et al. (2020) pass ``exclude="embedding"``: this
            drops token, position and CLS embeddings of the book's models. A tied output head is
            the embedding tensor and is dropped with it; an *untied* ``lm_head`` stays in.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    patterns = (exclude,) if isinstance(exclude, str) else tuple(exclude)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"exclude must be a string or an iterable of strings, got {exclude!r}"
        )
    total = 0
    for name, param in model.named_parameters():  # named_parameters() skips duplicates
        if trainable_only and not param.requires_grad:
            continue
        if any(p in name for p in patterns):
            continue
        total += param.numel()
    return total


def flops_breakdown(
    n_params: int,
    n_layers: int,
    d_model: int,
    context_len: int,
    training: bool = True,
    *,
    vocab_size: int | None = None,
    attention: str = "kaplan",
) -> dict[str, float]:
    """Per-token FLOPs of a decoder Transformer, term by term (Kaplan et al. 2020, Table 1).

    :func:`utils.compute.flops_per_token_terms`, the book's one count: ``"weights"`` ``2N``
    (if N holds biases and LayerNorm gains, as ``count_parameters(model, exclude="embedding")``
    does, an overestimate by a few percent for tiny models), ``"attention"`` ``2·L·n_ctx·d``
    (``"kaplan"``, the causal half) or twice that (``"dense"``), ``"lm_head"`` ``2·d·V`` when
    ``vocab_size`` is given; ``"forward"`` their sum, ``"total"`` 3 x forward when training.
    """
    return compute.flops_per_token_terms(
        n_params,
        n_layers,
        d_model,
        context_len,
        training,
        vocab_size=vocab_size,
        attention=attention,
    )


def flops_per_token(
    n_params: int,
    n_layers: int,
    d_model: int,
    context_len: int,
    training: bool = True,
    *,
    vocab_size: int | None = None,
    attention: str = "kaplan",
) -> float:
    """Kaplan et al.'s compute per token: ``C_forward ≈ 2N + 2·n_layers·n_ctx·d_model``, and
    ``≈ 3 x C_forward`` (≈ 6N) for a training step (:func:`utils.compute.flops_per_token`).
    See :func:`flops_breakdown` for the terms and options.
    """
    return compute.flops_per_token(
        n_params,
        n_layers,
        d_model,
        context_len,
        training,
        vocab_size=vocab_size,
        attention=attention,
    )
