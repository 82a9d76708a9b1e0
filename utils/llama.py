"""A Llama-style decoder, written out block by block (the architecture of SmolLM2).

One block of the decoder, for a sequence ``x`` of shape ``(B, T, d_model)``::

    h = x + Attention(RMSNorm(x))        # grouped-query attention, RoPE on q and k, causal
    y = h + SwiGLU(RMSNorm(h))           # gated feed-forward network

and the model is ``logits = RMSNorm(blocks(embed(ids))) @ Eᵀ``, where the output layer reuses
the input embedding ``E`` (tied embeddings, as SmolLM2 has them). What each piece is, and why
it replaced the original Transformer's choice:

- :class:`RMSNorm` (Zhang & Sennrich 2019): divide by the root mean square, no mean subtraction,
  no bias. Cheaper than LayerNorm and as good in practice. Applied *before* each sub-layer
  (pre-norm), so the residual stream ``x`` itself is never normalised.
- Rotary position embeddings (Su et al. 2021), :class:`utils.attention.RotaryEmbedding`:
  queries and keys are rotated by an angle proportional to their position, so that the score
  ``q_m · k_n`` depends on positions only through ``m - n``. There is no position vector added
  to the embeddings. The variant is Hugging Face's "rotate half" (coordinate ``i`` is paired
  with ``i + head_dim/2``), with the base ``theta`` read from the model (100000 for SmolLM2).
- :class:`SwiGLU` (Shazeer 2020): ``down(silu(gate(x)) * up(x))``, a gated MLP; with three
  matrices instead of two, ``d_ff`` is about ``8/3 * d_model`` instead of ``4 * d_model``.
- :class:`GroupedQueryAttention` (Ainslie et al. 2023): ``n_heads`` query heads share
  ``n_kv_heads`` key/value heads (SmolLM2-135M: 9 query heads, 3 key/value heads), which makes
  the KV cache ``n_heads / n_kv_heads`` times smaller. :func:`repeat_kv` repeats each key/value
  head for its group of query heads.
- :class:`KVCache`: generation reads the prompt once, then one token per step, attending to the
  stored keys and values of the earlier tokens instead of recomputing them.

Loading SmolLM2's real weights from its GGUF file is :mod:`utils.gguf_weights`; it checks the
result against transformers. :func:`format_chatml` writes SmolLM2's chat prompt by hand.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from utils.attention import RotaryEmbedding, scaled_dot_product_attention
from utils.checks import check_min_int
from utils.decoding import CHAT_ROLES, EmptyPromptError

__all__ = [
    "ContextLengthError",
    "LlamaConfig",
    "RMSNorm",
    "SwiGLU",
    "repeat_kv",
    "LayerKVCache",
    "KVCache",
    "GroupedQueryAttention",
    "DecoderBlock",
    "LlamaDecoder",
    "Greedy",
    "generate_greedy",
    "CacheSpeedup",
    "kv_cache_speedup",
    "default_system_prompt",
    "format_chatml",
]


class ContextLengthError(ValueError):
    """More tokens than the model's context length (the positions RoPE was trained on)."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LlamaConfig:
    """The sizes of a Llama-style decoder.

    :func:`utils.gguf_weights.read_config` fills it from a GGUF file's metadata
    (``llama.block_count``, ``llama.embedding_length``, ...). SmolLM2-135M: 30 layers,
    ``d_model`` 576, 9 heads of 64, 3 key/value heads, ``d_ff`` 1536, ``rope_theta`` 100000,
    ``rms_eps`` 1e-5, a vocabulary of 49152 and a context of 8192 tokens.
    """

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_ff: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    context_length: int = 2048
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "d_ff",
        ):
            check_min_int(name, getattr(self, name))
        check_min_int("context_length", self.context_length)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must be a multiple of n_kv_heads="
                f"{self.n_kv_heads} (each key/value head serves a whole group of "
                "query heads)"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 1):
            raise ValueError(
                f"rope_theta must be a number > 1, got {self.rope_theta!r}"
            )
        if not (isinstance(self.rms_eps, (int, float)) and 0 < self.rms_eps < 1):
            raise ValueError(f"rms_eps must be in (0, 1), got {self.rms_eps!r}")
        if not isinstance(self.tie_embeddings, bool):
            raise TypeError(
                f"tie_embeddings must be a bool, got {self.tie_embeddings!r}"
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``d_model / n_heads``."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (libraries that read a model's ``config``, peft's older
        releases among them, expect a dict or an object with ``to_dict``)."""
        return dataclasses.asdict(self)

    @property
    def group_size(self) -> int:
        """Query heads per key/value head, ``n_heads / n_kv_heads``."""
        return self.n_heads // self.n_kv_heads


# --------------------------------------------------------------------------------------------
# The blocks
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """``y = x / sqrt(mean(x²) + eps) * g`` over the last dimension; ``(..., d) -> (..., d)``.

    Same computation as :class:`torch.nn.RMSNorm` and transformers' ``LlamaRMSNorm``.
    """

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        check_min_int("d", d)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(d))  # g, one gain per feature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In float32 even for bf16/fp16 activations: the mean of squares of a wide vector
        # loses precision (or overflows in fp16) in half precision.
        x32 = x.float()
        inv_rms = torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * (x32 * inv_rms).to(x.dtype)


class SwiGLU(nn.Module):
    """The gated feed-forward network ``down(silu(gate(x)) * up(x))``.

    ``x (..., d_model) -> (..., d_model)`` through a hidden width ``d_ff``. ``silu(gate(x))``
    decides, per hidden unit, how much of ``up(x)`` passes: a learned, smooth gate.
    """

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def repeat_kv(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(B, n_kv_heads, S, head_dim) -> (B, n_kv_heads * group_size, S, head_dim)``.

    Key/value head ``j`` serves query heads ``j * group_size ... (j + 1) * group_size - 1``
    (the order transformers uses), so each is repeated ``group_size`` times in place.
    """
    return x if group_size == 1 else x.repeat_interleave(group_size, dim=1)


class LayerKVCache:
    """The keys (after RoPE) and values one attention layer has seen so far.

    ``k``, ``v``: ``(B, n_kv_heads, S, head_dim)`` or ``None`` before the first token. Only
    the ``n_kv_heads`` heads are stored, not the repeated ones: that is GQA's saving.
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def append(
        self, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new tokens' ``k, v (B, n_kv_heads, T, head_dim)``; return all of them."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


class KVCache:
    """One :class:`LayerKVCache` per layer; ``len(cache)`` = tokens already read."""

    def __init__(self, n_layers: int) -> None:
        check_min_int("n_layers", n_layers)
        self.layers = [LayerKVCache() for _ in range(n_layers)]

    def __len__(self) -> int:
        k = self.layers[0].k
        return 0 if k is None else k.shape[2]

    @property
    def nbytes(self) -> int:
        """Memory held by the stored keys and values, in bytes."""
        return sum(
            t.numel() * t.element_size()
            for layer in self.layers
            for t in (layer.k, layer.v)
            if t is not None
        )


class GroupedQueryAttention(nn.Module):
    """Causal multi-head attention with ``n_kv_heads`` key/value heads and RoPE.

    ``forward(x (B, T, d_model), positions (T,), mask (T, S), cache) -> (B, T, d_model)``
    where ``S`` = tokens in the cache before this call + ``T``.
    """

    def __init__(self, config: LlamaConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        c = config
        self.n_heads, self.n_kv_heads, self.head_dim = (
            c.n_heads,
            c.n_kv_heads,
            c.head_dim,
        )
        self.group_size = c.group_size
        # Llama has no biases in attention: q, k, v, o are plain matrices.
        self.q_proj = nn.Linear(c.d_model, c.n_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.n_kv_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.d_model, bias=False)
        self.rope = rope  # shared by all layers (a table of cos and sin, no parameters)

    def _split_heads(self, t: torch.Tensor, n: int) -> torch.Tensor:
        """``(B, T, n * head_dim) -> (B, n, T, head_dim)``."""
        B, T, _ = t.shape
        return t.view(B, T, n, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        q = self._split_heads(self.q_proj(x), self.n_heads)  # (B, H, T, hd)
        k = self._split_heads(self.k_proj(x), self.n_kv_heads)  # (B, H_kv, T, hd)
        v = self._split_heads(self.v_proj(x), self.n_kv_heads)  # (B, H_kv, T, hd)
        # Rotate q and k by their absolute positions; their dot product then only sees the
        # distance. v is not rotated: it carries content, not position.
        q, k = self.rope.rotate(q, positions), self.rope.rotate(k, positions)
        if cache is not None:  # earlier tokens' keys were rotated when they were read
            k, v = cache.append(k, v)  # (B, H_kv, S, hd)
        k, v = repeat_kv(k, self.group_size), repeat_kv(v, self.group_size)
        out, _ = scaled_dot_product_attention(q, k, v, mask=mask, training=False)
        B, _, T, _ = out.shape
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)
        return self.o_proj(out)  # mix the heads back into the residual stream


class DecoderBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))``, then ``h + mlp(norm(h))``.

    ``(B, T, d_model) -> (B, T, d_model)``.
    """

    def __init__(self, config: LlamaConfig, rope: RotaryEmbedding) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.rms_eps)
        self.attn = GroupedQueryAttention(config, rope)
        self.mlp_norm = RMSNorm(config.d_model, config.rms_eps)
        self.mlp = SwiGLU(config.d_model, config.d_ff)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        cache: LayerKVCache | None = None,
    ) -> torch.Tensor:
        h = x + self.attn(self.attn_norm(x), positions, mask, cache)
        return h + self.mlp(self.mlp_norm(h))


class LlamaDecoder(nn.Module):
    """The whole decoder: ``ids (B, T) -> logits (B, T, vocab_size)``.

    ``forward(ids, cache)`` with a :class:`KVCache` continues after the ``len(cache)`` tokens
    already read (their positions are ``0 .. len(cache) - 1``) and adds the new keys and
    values to the cache. Without a cache the ids start at position 0. ``last_only=True``
    returns only the last position's logits ``(B, 1, vocab_size)``: generation needs no
    more, and the output layer (``vocab_size x d_model``, 28M multiply-adds per position for
    SmolLM2) is the largest matrix of a small model.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        if not isinstance(config, LlamaConfig):
            raise TypeError(
                f"config must be a LlamaConfig, got {type(config).__name__}"
            )
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        rope = RotaryEmbedding(
            config.head_dim, config.context_length, config.rope_theta
        )
        self.blocks = nn.ModuleList(
            DecoderBlock(config, rope) for _ in range(config.n_layers)
        )
        self.norm = RMSNorm(config.d_model, config.rms_eps)
        # Tied: the output layer scores each token by its input embedding (saves V * d
        # parameters: 28M of SmolLM2-135M's 135M).
        self.lm_head = (
            None
            if config.tie_embeddings
            else nn.Linear(config.d_model, config.vocab_size, bias=False)
        )
        for (
            module
        ) in self.modules():  # Llama's initialisation (for training from scratch)
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)

    def _check_ids(self, ids: Any, start: int) -> None:
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            got = (
                tuple(ids.shape)
                if isinstance(ids, torch.Tensor)
                else type(ids).__name__
            )
            raise ValueError(f"ids must be a tensor of shape (B, T), got {got}")
        if ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"ids must be int64 or int32 token ids, got {ids.dtype}")
        if ids.shape[0] == 0 or ids.shape[1] == 0:
            raise EmptyPromptError(
                f"ids of shape {tuple(ids.shape)} hold no token: the model needs at "
                "least one token to read"
            )
        n = self.config.context_length
        if start + ids.shape[1] > n:
            already = f" after the {start} in the cache" if start else ""
            raise ContextLengthError(
                f"{ids.shape[1]} tokens{already} exceed the context length of {n} "
                "tokens (the positions this model was trained on); shorten the input"
            )
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}), got "
                f"[{int(ids.min())}, {int(ids.max())}]"
            )

    @property
    def output_weight(self) -> torch.Tensor:
        """The output layer's ``(vocab_size, d_model)`` matrix (the embedding, when tied)."""
        return self.embed.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(
        self, ids: torch.Tensor, cache: KVCache | None = None, last_only: bool = False
    ) -> torch.Tensor:
        """The final normalised hidden states ``(B, T, d_model)`` (``(B, 1, d_model)`` with
        ``last_only``): what the output layer reads. A loss on a few positions only (the
        assistant's tokens in fine-tuning) multiplies just those by the output layer."""
        start = 0 if cache is None else len(cache)
        self._check_ids(ids, start)
        T = ids.shape[1]
        positions = torch.arange(start, start + T, device=ids.device)  # (T,)
        # Causal mask (T, S): the new token at position start + i may read keys 0..start + i.
        mask = torch.ones(T, start + T, dtype=torch.bool, device=ids.device).tril(start)
        x = self.embed(ids)  # (B, T, d_model)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, mask, None if cache is None else cache.layers[i])
        return self.norm(x[:, -1:] if last_only else x)

    def forward(
        self, ids: torch.Tensor, cache: KVCache | None = None, last_only: bool = False
    ) -> torch.Tensor:
        hidden = self.hidden_states(ids, cache, last_only)
        return F.linear(hidden, self.output_weight)  # (B, T, vocab) or (B, 1, vocab)


# --------------------------------------------------------------------------------------------
# Greedy generation, with and without the KV cache
# --------------------------------------------------------------------------------------------


class Greedy(NamedTuple):
    """What :func:`generate_greedy` returns: the new token ids, and ``logits
    (n_new, vocab_size)``, the next-token logits each step chose from."""

    tokens: list[int]
    logits: torch.Tensor


def _prompt_tensor(prompt_ids: Any, device: torch.device) -> torch.Tensor:
    """A prompt (sequence of ints or 1-D integer tensor) as a ``(1, T)`` int64 tensor."""
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() != 1 or prompt_ids.is_floating_point():
            raise ValueError(
                "prompt_ids must be a 1-D integer tensor or a list of ints, got a "
                f"{prompt_ids.dtype} tensor of shape {tuple(prompt_ids.shape)}"
            )
        ids = prompt_ids.to(device=device, dtype=torch.long)
    elif isinstance(prompt_ids, Sequence) and not isinstance(prompt_ids, str):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt_ids):
            raise ValueError("prompt_ids must be a list of ints (token ids)")
        ids = torch.tensor(list(prompt_ids), dtype=torch.long, device=device)
    else:
        raise TypeError(
            f"prompt_ids must be token ids (a list of ints or a 1-D tensor), got "
            f"{type(prompt_ids).__name__}; tokenize the text first"
        )
    if ids.numel() == 0:
        raise EmptyPromptError(
            "the prompt is empty: the model needs at least one token to continue (for a "
            "chat, format the messages with format_chatml and tokenize that)"
        )
    return ids[None]


@torch.no_grad()
def generate_greedy(
    model: LlamaDecoder,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    *,
    use_cache: bool = True,
    eos_token_id: int | None = None,
) -> Greedy:
    """Greedy decoding: append the most likely next token, ``max_new_tokens`` times.

    With ``use_cache`` the prompt is read once (the "prefill") and every later step reads only
    the token just chosen, attending to the cached keys and values; without it every step
    re-reads the whole sequence. Both compute the same logits (up to float rounding).
    Stops early after ``eos_token_id``. The prompt plus the new tokens must fit the context.
    """
    check_min_int("max_new_tokens", max_new_tokens, minimum=0)
    device = next(model.parameters()).device
    ids = _prompt_tensor(prompt_ids, device)
    n_ctx = model.config.context_length
    if ids.shape[1] + max_new_tokens > n_ctx:
        raise ContextLengthError(
            f"a prompt of {ids.shape[1]} tokens plus max_new_tokens={max_new_tokens} "
            f"exceeds the context length of {n_ctx} tokens; shorten the prompt or ask "
            "for fewer tokens"
        )
    cache = KVCache(model.config.n_layers) if use_cache else None
    tokens: list[int] = []
    step_logits: list[torch.Tensor] = []
    next_input = ids  # the prefill: the whole prompt
    for _ in range(max_new_tokens):
        logits = model(next_input, cache, last_only=True)[0, -1]  # (vocab_size,)
        token = int(logits.argmax())
        tokens.append(token)
        step_logits.append(logits)
        if token == eos_token_id:
            break
        new = torch.tensor([[token]], device=device)
        ids = torch.cat([ids, new], dim=1)
        next_input = new if use_cache else ids  # one new token, or everything again
    logits = (
        torch.stack(step_logits)
        if step_logits
        else torch.empty(0, model.config.vocab_size, device=device)
    )
    return Greedy(tokens, logits)


class CacheSpeedup(NamedTuple):
    """Wall-clock seconds of greedy generation without and with the KV cache, their ratio
    ``speedup = seconds_without / seconds_with``, and whether both chose the same tokens."""

    seconds_without: float
    seconds_with: float
    speedup: float
    same_tokens: bool


def kv_cache_speedup(
    model: LlamaDecoder,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    repeats: int = 1,
) -> CacheSpeedup:
    """Time :func:`generate_greedy` with and without the cache (best of ``repeats`` each).

    Without the cache, step ``t`` re-reads all ``T + t`` tokens, so the work grows with the
    square of the length; with it each step reads one token (plus attention over the cache).
    The ratio depends on the machine, the prompt length and ``max_new_tokens``: report it,
    do not assert it.
    """
    check_min_int("repeats", repeats)

    def best(use_cache: bool) -> tuple[float, list[int]]:
        seconds = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = generate_greedy(
                model, prompt_ids, max_new_tokens, use_cache=use_cache
            )
            seconds = min(seconds, time.perf_counter() - t0)
        return seconds, out.tokens

    without, tokens_without = best(False)
    with_cache, tokens_with = best(True)
    return CacheSpeedup(
        without, with_cache, without / with_cache, tokens_without == tokens_with
    )


# --------------------------------------------------------------------------------------------
# SmolLM2's chat prompt, by hand
# --------------------------------------------------------------------------------------------

_DEFAULT_SYSTEM = re.compile(
    r"<\|im_start\|>system(?:\n|\\n)(.*?)<\|im_end\|>", flags=re.DOTALL
)


def default_system_prompt(template: str) -> str | None:
    """The system message a ChatML template inserts when the chat has none, or ``None``.

    SmolLM2's template (``tokenizer.chat_template`` in its GGUF file) writes
    ``<|im_start|>system\\n...<|im_end|>`` before the first message when that message is not a
    system message; this returns the text between the markers.
    """
    if not isinstance(template, str):
        raise TypeError(f"template must be a str, got {type(template).__name__}")
    match = _DEFAULT_SYSTEM.search(template)
    return None if match is None else match.group(1)


def _check_chat(messages: Any) -> list[dict]:
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        raise TypeError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, got "
            f"{type(messages).__name__}"
        )
    if not messages:
        raise EmptyPromptError("messages is empty: a chat needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise ValueError(
                f"messages[{i}] must be a dict with exactly the keys 'role' and "
                f"'content', got {m!r}"
            )
        if m["role"] not in CHAT_ROLES:
            raise ValueError(
                f"messages[{i}]['role'] must be one of {CHAT_ROLES}, got {m['role']!r}"
            )
        if not isinstance(m["content"], str):
            raise TypeError(
                f"messages[{i}]['content'] must be a str, got {m['content']!r}"
            )
    return list(messages)


def format_chatml(
    messages: Sequence[dict],
    default_system: str | None,
    add_generation_prompt: bool = True,
) -> str:
    """SmolLM2's chat template written in Python (ChatML markers).

    Every message becomes ``<|im_start|>{role}\\n{content}<|im_end|>\\n``. If the first
    message is not a system message, ``default_system`` (read from the template with
    :func:`default_system_prompt`) is written first as one. ``add_generation_prompt`` ends
    with ``<|im_start|>assistant\\n``: the model's reply starts there, and the model ends it
    with ``<|im_end|>``. ``<|im_start|>`` and ``<|im_end|>`` are single special tokens of
    the tokenizer (ids 1 and 2 in SmolLM2), not text it splits.
    """
    messages = _check_chat(messages)
    parts = []
    if messages[0]["role"] != "system" and default_system is not None:
        parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
    for m in messages:
        parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)
