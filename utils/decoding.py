"""Decoding: from a language model's next-token logits to generated tokens.

One generation step turns the logits of the last position, ``z`` of shape ``(B, V)``, into the next
token ids ``(B, 1)``. :func:`process_logits` applies, in this order (the order of transformers'
``generate``, so the same settings give the same distribution):

1. the repetition penalty ``θ`` (Keskar et al. 2019): every token already in the row gets
   ``z / θ`` if ``z > 0`` and ``z * θ`` otherwise (θ > 1 makes repeats less likely);
2. the temperature ``T``: ``z / T`` (T < 1 sharpens the distribution, T > 1 flattens it);
3. top-k (Fan et al. 2018): keep the ``k`` largest logits;
4. top-p, nucleus (Holtzman et al. 2020): keep the smallest set of most likely tokens whose
   probabilities add up to at least ``p``.

Then :func:`next_tokens` samples from the softmax of what is left, or, for greedy decoding, takes
the argmax (after the penalty; temperature, top-k and top-p do not change an argmax).

:func:`generate` runs the loop for two kinds of model:

- the book's models: any module that maps ``ids (B, L)`` to ``logits (B, L, V)`` (or to a tuple
  whose first element is the logits, as :class:`~utils.models.LSTMLM` returns), given its
  context length with ``context=``, or read from a ``max_len`` attribute
  (:class:`~utils.models.TransformerLM`): each step re-reads the last ``context`` tokens;
- Hugging Face causal LMs (a ``config.max_position_embeddings``): the prompt is read once and the
  keys and values are kept in a cache (the KV cache), so each later step reads one token.

A prompt longer than the model can read is cut from the left, and the result says so
(:attr:`Generation.note`); an empty prompt or a sampling parameter out of range raises a
``ValueError`` that says what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from utils.batches import eval_mode, model_device
from utils.checks import check_int
from utils.losses import logits_of
from utils.models import filter_logits

__all__ = [
    "EmptyPromptError",
    "Generation",
    "apply_repetition_penalty",
    "chat_prompt_ids",
    "check_sampling",
    "context_length",
    "generate",
    "next_tokens",
    "process_logits",
    "truncate_prompt",
]

CHAT_ROLES = ("system", "user", "assistant")


class EmptyPromptError(ValueError):
    """The prompt has no token (or a chat message has no text): there is nothing to continue."""


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_sampling(
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
) -> None:
    """Raise ``ValueError`` (naming the parameter and what is allowed) for a value out of range.

    ``temperature``: a finite number > 0 (for "temperature 0" use greedy decoding);
    ``top_k``: ``None`` (off) or an int >= 1; ``top_p``: ``None`` (off) or a number in (0, 1];
    ``repetition_penalty``: a finite number > 0 (1 = off).
    """
    if not _is_number(temperature) or not (
        math.isfinite(temperature) and temperature > 0
    ):
        raise ValueError(
            f"temperature must be a finite number > 0, got {temperature!r}; temperature 0 "
            "means 'always the most likely token': use greedy decoding (greedy=True) for that"
        )
    if top_k is not None and (
        isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
    ):
        raise ValueError(
            f"top_k must be None (no top-k) or an int >= 1, got {top_k!r}; "
            "top_k=1 is greedy decoding"
        )
    if top_p is not None and (not _is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise ValueError(
            f"top_p must be None (no nucleus filter) or a number in (0, 1], got {top_p!r}; "
            "top_p=1 keeps every token"
        )
    if not _is_number(repetition_penalty) or not (
        math.isfinite(repetition_penalty) and repetition_penalty > 0
    ):
        raise ValueError(
            f"repetition_penalty must be a finite number > 0 (1 = no penalty, > 1 discourages "
            f"repeats), got {repetition_penalty!r}"
        )


def _check_max_new_tokens(max_new_tokens: Any) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")


def _check_logits(logits: Any) -> None:
    if (
        not isinstance(logits, torch.Tensor)
        or not logits.is_floating_point()
        or logits.dim() != 2
    ):
        raise TypeError("logits must be a floating-point tensor of shape (B, V)")


def _check_ids(ids: Any, name: str) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
        raise TypeError(f"{name} must be an integer tensor of shape (B, L)")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")


# --------------------------------------------------------------------------------------------
# One step: logits -> next token
# --------------------------------------------------------------------------------------------


def apply_repetition_penalty(
    logits: torch.Tensor, previous: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Penalise every token that already occurs in its row (Keskar et al. 2019).

    Args:
        logits: ``(B, V)`` next-token logits.
        previous: ``(B, T)`` the ids generated so far, prompt included (``T`` may be 0).
        penalty: θ > 0. A token seen before gets ``z / θ`` when ``z > 0`` and ``z * θ`` otherwise,
            so θ > 1 always lowers its logit; θ = 1 changes nothing.

    Returns:
        A new ``(B, V)`` tensor; each token is penalised once, however often it occurred.
    """
    _check_logits(logits)
    _check_ids(previous, "previous")
    check_sampling(repetition_penalty=penalty)
    if previous.shape[0] != logits.shape[0]:
        raise ValueError(
            f"previous has {previous.shape[0]} rows but logits has {logits.shape[0]}"
        )
    if penalty == 1.0 or previous.shape[1] == 0:
        return logits.clone()
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen.scatter_(1, previous.to(logits.device).clamp(0, logits.shape[1] - 1), True)
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def process_logits(
    logits: torch.Tensor,
    previous: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
) -> torch.Tensor:
    """Repetition penalty, temperature, top-k, top-p, in that order: ``(B, V) -> (B, V)``.

    Excluded tokens get ``-inf``; ``softmax`` of the result is the sampling distribution.
    ``previous`` ``(B, T)`` is needed only for the repetition penalty.
    """
    _check_logits(logits)
    check_sampling(temperature, top_k, top_p, repetition_penalty)
    logits = logits.float()
    if repetition_penalty != 1.0:
        if previous is None:
            raise ValueError(
                "the repetition penalty needs the previous ids (previous=...)"
            )
        logits = apply_repetition_penalty(logits, previous, repetition_penalty)
    if temperature != 1.0:
        logits = logits / temperature
    return filter_logits(logits, top_k, top_p)


def next_tokens(
    logits: torch.Tensor,
    previous: torch.Tensor | None = None,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Choose the next token of each row: ``logits (B, V) -> ids (B, 1)``.

    Greedy: the argmax after the repetition penalty. Otherwise one draw from
    ``softmax(process_logits(...))`` with ``torch.multinomial`` (``generator``, or
    torch's global generator when ``None``, as transformers does).
    """
    if greedy:
        check_sampling(temperature, top_k, top_p, repetition_penalty)
        scores = process_logits(logits, previous, repetition_penalty=repetition_penalty)
        return scores.argmax(dim=-1, keepdim=True)
    scores = process_logits(
        logits,
        previous,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
    )
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# --------------------------------------------------------------------------------------------
# Prompts: context length, truncation, chat templates
# --------------------------------------------------------------------------------------------


def context_length(model: Any, tokenizer: Any = None) -> int:
    """The most tokens ``model`` can read at once, the one rule of the library.

    The model's limit is ``model.max_len`` (the book's models) or
    ``model.config.max_position_embeddings`` (Hugging Face). The tokenizer's is its
    ``model_max_length`` (ignored when absent, not positive or a huge "no limit" sentinel).
    With both, the smaller one; with one, that one; with neither, a ``TypeError``.
    """
    limits = []
    if isinstance(getattr(model, "max_len", None), int):
        limits.append(model.max_len)
    else:
        config = getattr(model, "config", None)
        length = getattr(config, "max_position_embeddings", None)
        if isinstance(length, int) and length > 0:
            limits.append(length)
    tokenizer_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_max, int) and 0 < tokenizer_max < 1_000_000:
        limits.append(tokenizer_max)
    if limits:
        return min(limits)
    raise TypeError(
        f"cannot tell the context length of {type(model).__name__}: expected a 'max_len' "
        "attribute (the book's TransformerLM) or config.max_position_embeddings (Hugging Face); "
        "for another book model pass generate(..., context=N)"
    )


def _uses_kv_cache(model: Any) -> bool:
    return not isinstance(getattr(model, "max_len", None), int)


def truncate_prompt(ids: torch.Tensor, max_tokens: int) -> tuple[torch.Tensor, int]:
    """Keep the last ``max_tokens`` tokens of ``ids (B, L)``: ``-> (ids (B, min(L, max)), dropped)``.

    The end of a prompt is what the next token depends on most, so a prompt that does not fit is
    cut from the left. ``dropped`` is the number of tokens removed from each row.
    """
    _check_ids(ids, "ids")
    if (
        isinstance(max_tokens, bool)
        or not isinstance(max_tokens, int)
        or max_tokens < 1
    ):
        raise ValueError(f"max_tokens must be an int >= 1, got {max_tokens!r}")
    dropped = max(0, ids.shape[1] - max_tokens)
    return ids[:, dropped:], dropped


def _check_messages(messages: Any) -> list[dict]:
    if (
        isinstance(messages, (str, dict))
        or not isinstance(messages, Sequence)
        or not messages
    ):
        raise TypeError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} dicts, "
            f"got {messages!r}"
        )
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise TypeError(
                f"messages[{i}] must be a dict with keys 'role' and 'content'"
            )
        if message["role"] not in CHAT_ROLES:
            raise ValueError(f"messages[{i}]['role'] must be one of {CHAT_ROLES}")
        content = message["content"]
        if not isinstance(content, str) or not content.strip():
            raise EmptyPromptError(
                f"messages[{i}] ({message['role']}) has no text: write something for the "
                "model to answer"
            )
        checked.append(dict(message))
    if checked[-1]["role"] != "user":
        raise ValueError(
            "the last message must come from the user: the model answers it"
        )
    return checked


def chat_prompt_ids(
    tokenizer: Any, messages: Sequence[dict], max_prompt_tokens: int | None = None
) -> tuple[torch.Tensor, str | None]:
    """Token ids of a chat prompt ``(1, L)``, ending where the assistant's answer starts.

    The tokenizer's chat template wraps each message in the model's role markers (for SmolLM2:
    ``<|im_start|>user ... <|im_end|>``). If the prompt has more than ``max_prompt_tokens``
    tokens, the middle of the longest message is replaced by ``" [...] "`` (its first and last
    tokens kept) until it fits, so that the template, the instructions and a question at the end
    of the message stay intact; cutting the ids from the left would remove the instructions.

    Returns:
        ``(ids, note)``: ``note`` is ``None``, or a sentence saying what was cut.
    """
    messages = _check_messages(messages)
    if max_prompt_tokens is not None and (
        isinstance(max_prompt_tokens, bool)
        or not isinstance(max_prompt_tokens, int)
        or max_prompt_tokens < 1
    ):
        raise ValueError(
            f"max_prompt_tokens must be None or an int >= 1, got {max_prompt_tokens}"
        )

    def encode(msgs: list[dict]) -> torch.Tensor:
        text = tokenizer.apply_chat_template(
            msgs, add_generation_prompt=True, tokenize=False
        )
        return torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])

    ids = encode(messages)
    if max_prompt_tokens is None or ids.shape[1] <= max_prompt_tokens:
        return ids, None
    original = ids.shape[1]
    lengths = [
        len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
        for m in messages
    ]
    longest = max(range(len(messages)), key=lengths.__getitem__)
    content_ids = tokenizer(messages[longest]["content"], add_special_tokens=False)[
        "input_ids"
    ]
    for _ in range(
        8
    ):  # decoding and re-encoding can shift a few tokens: try again if needed
        excess = ids.shape[1] - max_prompt_tokens
        keep = len(content_ids) - excess - 5  # 5: room for " [...] "
        if keep < 2:
            raise ValueError(
                f"the prompt has {original} tokens; max_prompt_tokens={max_prompt_tokens} "
                "leaves no room for the longest message even after cutting it: raise the limit"
            )
        head, tail = (
            content_ids[: (keep + 1) // 2],
            content_ids[len(content_ids) - keep // 2 :],
        )
        content_ids = head + tail
        messages[longest]["content"] = (
            f"{tokenizer.decode(head)} [...] {tokenizer.decode(tail)}"
        )
        ids = encode(messages)
        if ids.shape[1] <= max_prompt_tokens:
            note = (
                f"The prompt had {original:,} tokens, more than the limit of "
                f"{max_prompt_tokens:,}: message {longest} ({messages[longest]['role']}) was "
                f"cut to its first {len(head):,} and last {len(tail):,} of its "
                f"{lengths[longest]:,} tokens."
            )
            return ids, note
    raise RuntimeError(
        "could not shorten the prompt to max_prompt_tokens"
    )  # pragma: no cover


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass
class Generation:
    """What :func:`generate` returns.

    Attributes:
        ids: ``(B, P + N)``: the prompt as the model read it (``P`` tokens), then ``N`` new ones.
        prompt_length: ``P``.
        finished: ``(B,)`` bool, True for rows that produced a stop token (the rest of such a row
            repeats that stop token, as transformers pads finished rows).
        dropped: tokens cut from the start of the prompt because it did not fit.
        context: the model's context length.
        room: the most prompt tokens the model could read with this many new tokens.
    """

    ids: torch.Tensor
    prompt_length: int
    finished: torch.Tensor
    dropped: int
    context: int
    room: int

    @property
    def new_ids(self) -> torch.Tensor:
        """``(B, N)``: the generated tokens only."""
        return self.ids[:, self.prompt_length :]

    @property
    def note(self) -> str | None:
        """A sentence about a truncated prompt, or ``None`` when the whole prompt was read."""
        if not self.dropped:
            return None
        total = self.prompt_length + self.dropped
        return (
            f"The prompt has {total:,} tokens but the model can read only {self.room:,} here "
            f"(context {self.context:,}): its first {self.dropped:,} tokens were dropped and "
            f"the last {self.prompt_length:,} kept."
        )


@torch.no_grad()
def generate(
    model: Any,
    prompt_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    stop_ids: Iterable[int] = (),
    generator: torch.Generator | None = None,
    context: int | None = None,
) -> Generation:
    """Extend ``prompt_ids (B, L)`` by up to ``max_new_tokens`` tokens, one :func:`next_tokens`
    step at a time; stops early when every row has produced one of ``stop_ids``.

    The book's models re-read the last ``context`` tokens at every step, as
    :meth:`~utils.models.TransformerLM.generate` does; a longer prompt is cut to its last
    ``context`` tokens. ``context=`` (an int >= 1) chooses this path for any
    ``ids (B, L) -> logits (B, L, V)`` module, the LSTM and adaptive-softmax models of
    :mod:`utils.lm_recipes` included; without it, a model with an integer ``max_len`` takes this
    path with ``context = max_len``. Any other model is treated as a Hugging Face model: it reads
    the prompt once and then one token per step with its KV cache; prompt and new tokens must
    then fit in the context together, so the prompt keeps its last ``context - max_new_tokens``
    tokens. :attr:`Generation.note` says when anything was cut. The model runs in eval mode and
    gets its previous mode back afterwards.
    """
    _check_ids(prompt_ids, "prompt_ids")
    if prompt_ids.shape[1] == 0 or prompt_ids.shape[0] == 0:
        raise EmptyPromptError(
            "The prompt is empty: give at least one token to continue (for the book's "
            "language model a word of its vocabulary, for a chat model a user message)"
        )
    _check_max_new_tokens(max_new_tokens)
    check_sampling(temperature, top_k, top_p, repetition_penalty)
    check_int("context", context, minimum=1, optional=True)
    stop = [int(s) for s in stop_ids]
    cached = context is None and _uses_kv_cache(model)
    if context is None:
        context = context_length(model)
    room = context - max_new_tokens if cached else context
    if room < 1:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the model's "
            f"context of {context} tokens: ask for fewer new tokens"
        )
    ids, dropped = truncate_prompt(prompt_ids, room)
    ids = ids.to(model_device(model, default="cpu"))  # a bare function: CPU
    prompt_length = ids.shape[1]
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    settings = dict(
        greedy=greedy,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
        generator=generator,
    )

    with eval_mode(model):
        cache = None
        for step in range(max_new_tokens):
            if cached:
                step_input = ids if step == 0 else ids[:, -1:]
                out = model(input_ids=step_input, past_key_values=cache, use_cache=True)
                cache = out.past_key_values
                logits = out.logits[:, -1, :].float()
            else:
                logits = logits_of(model(ids[:, -context:]))[:, -1, :].float()
            chosen = next_tokens(logits, ids, **settings)  # (B, 1)
            if stop:
                chosen = torch.where(
                    finished[:, None], chosen.new_full((1, 1), stop[0]), chosen
                )
                finished |= torch.isin(
                    chosen[:, 0], torch.tensor(stop, device=ids.device)
                )
            ids = torch.cat([ids, chosen], dim=1)
            if stop and bool(finished.all()):
                break
    return Generation(ids.cpu(), prompt_length, finished.cpu(), dropped, context, room)
