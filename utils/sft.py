"""Supervised fine-tuning (SFT) of a chat model, with the loss on the assistant's tokens only.

A conversation is written out with the chat template (:func:`utils.llama.format_chatml`) and
tokenized as one sequence. Training on it as plain text would also teach the model to write the
*user's* turns and to recite the system message; what we want is the assistant's replies given
the rest. So every token gets a **label**: its own id where it belongs to an assistant reply
(the reply's text and its closing ``<|im_end|>``, which teaches the model to stop), and
:data:`IGNORE_INDEX` (-100, PyTorch's ``ignore_index``) elsewhere: the system and user turns, the
role headers ``<|im_start|>assistant\\n`` (the prompt writes those, the model never has to) and
the newline after each ``<|im_end|>``.

The mask is built twice, independently, and the two must agree:

- :func:`tokenize_chat` tokenizes the whole conversation at once and labels each token whose
  characters (the tokenizer's offsets) lie inside an assistant reply;
- :func:`tokenize_chat_by_turns` tokenizes the pieces one by one (header, content, end of turn)
  and labels the assistant's pieces as it concatenates them.

The loss is next-token cross-entropy: position ``t`` predicts token ``t + 1``, and only positions
whose *next* token is labelled count. :func:`assistant_loss` multiplies only those positions'
hidden states by the output layer (the largest matrix of a small model), which gives the same
number as the full-logits loss (:func:`utils.losses.lm_loss` with ``ignore_index=-100``) at a
fraction of the cost, since most positions are prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from utils.checks import check_min_int
from utils.decoding import EmptyPromptError
from utils.llama import ContextLengthError, _check_chat, format_chatml

__all__ = [
    "IGNORE_INDEX",
    "NoAssistantTurnError",
    "ChatTokens",
    "assistant_char_spans",
    "tokenize_chat",
    "tokenize_chat_by_turns",
    "collate",
    "assistant_loss",
    "generate_reply",
    "generate_replies",
]

IGNORE_INDEX = -100  # the label of a token the loss skips (F.cross_entropy's default)
_START, _END = "<|im_start|>", "<|im_end|>"


class NoAssistantTurnError(ValueError):
    """A training conversation without an assistant reply: there is nothing to learn from it."""


class ChatTokens(NamedTuple):
    """A tokenized conversation: ``ids`` and ``labels``, two lists of the same length.

    ``labels[t]`` is ``ids[t]`` where token ``t`` belongs to an assistant reply, else
    :data:`IGNORE_INDEX`.
    """

    ids: list[int]
    labels: list[int]

    @property
    def n_trained(self) -> int:
        """How many tokens the loss is computed on."""
        return sum(label != IGNORE_INDEX for label in self.labels)


def _check_training_chat(messages: Any) -> list[dict]:
    messages = _check_chat(messages)
    if not any(m["role"] == "assistant" for m in messages):
        raise NoAssistantTurnError(
            "the conversation has no assistant turn: fine-tuning learns the assistant's "
            "replies, so each training chat needs at least one"
        )
    for i, m in enumerate(messages):
        if m["role"] == "assistant" and not m["content"].strip():
            raise EmptyPromptError(
                f"messages[{i}] is an empty assistant reply: the model would learn to "
                "say nothing"
            )
    return messages


def assistant_char_spans(text: str) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the assistant replies in a ChatML ``text``.

    Each span runs from the first character after ``<|im_start|>assistant\\n`` to the end of
    the ``<|im_end|>`` that closes the reply (the marker included, the newline after it not).
    """
    header = f"{_START}assistant\n"
    spans, at = [], 0
    while (begin := text.find(header, at)) != -1:
        start = begin + len(header)
        end = text.find(_END, start)
        if end == -1:
            raise ValueError(f"an assistant turn at character {begin} is never closed")
        spans.append((start, end + len(_END)))
        at = end
    return spans


def tokenize_chat(
    tokenizer: Any, messages: Sequence[dict], default_system: str | None
) -> ChatTokens:
    """Tokenize the whole conversation; label tokens inside assistant replies (by offsets).

    ``tokenizer`` is a fast Hugging Face tokenizer (it must return offsets). The ids are those
    of ``tokenizer.apply_chat_template(messages)`` for SmolLM2 (checked in the tests).
    """
    messages = _check_training_chat(messages)
    text = format_chatml(messages, default_system, add_generation_prompt=False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = assistant_char_spans(text)
    labels = []
    for token_id, (s, e) in zip(
        encoding["input_ids"], encoding["offset_mapping"], strict=True
    ):
        inside = e > s and any(a <= s and e <= b for a, b in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return ChatTokens(list(encoding["input_ids"]), labels)


def tokenize_chat_by_turns(
    tokenizer: Any, messages: Sequence[dict], default_system: str | None
) -> ChatTokens:
    """The same labels, derived another way: tokenize each piece alone, label as you go.

    Pieces: ``<|im_start|>{role}\\n`` (never trained), the content plus ``<|im_end|>``
    (trained for the assistant), and the ``\\n`` that ends every turn (never trained).
    Equal to :func:`tokenize_chat` when no token straddles a piece boundary, which holds for
    SmolLM2's tokenizer, whose special tokens and newlines split the text.
    """
    messages = _check_training_chat(messages)
    if messages[0]["role"] != "system" and default_system is not None:
        messages = [{"role": "system", "content": default_system}, *messages]

    def encode(piece: str) -> list[int]:
        return list(tokenizer(piece, add_special_tokens=False)["input_ids"])

    ids: list[int] = []
    labels: list[int] = []
    for m in messages:
        trained = m["role"] == "assistant"
        for piece, learn in (
            (f"{_START}{m['role']}\n", False),
            (m["content"] + _END, trained),
            ("\n", False),
        ):
            piece_ids = encode(piece)
            ids += piece_ids
            labels += piece_ids if learn else [IGNORE_INDEX] * len(piece_ids)
    return ChatTokens(ids, labels)


def collate(
    chats: Sequence[ChatTokens], pad_id: int, max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch of conversations into ``(inputs, targets)``, both ``(B, T - 1)``.

    ``inputs = ids[:, :-1]`` and ``targets = labels[:, 1:]``: position ``t`` predicts token
    ``t + 1``, and only labelled next tokens count (padding is :data:`IGNORE_INDEX`). This is
    the ``(x, y)`` pair :func:`utils.losses.lm_loss` and :func:`assistant_loss` take.
    ``max_tokens`` is the longest conversation allowed (the model's context, or less).
    """
    check_min_int("pad_id", pad_id, minimum=0)
    check_min_int("max_tokens", max_tokens, minimum=2)
    if not chats:
        raise ValueError("collate needs at least one conversation")
    longest = max(len(c.ids) for c in chats)
    if longest > max_tokens:
        raise ContextLengthError(
            f"a conversation of {longest} tokens exceeds max_tokens={max_tokens}; drop it "
            "or shorten it (cutting a reply would teach the model to stop mid-answer)"
        )
    ids = torch.full((len(chats), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(chats), longest), IGNORE_INDEX, dtype=torch.long)
    for row, chat in enumerate(chats):
        ids[row, : len(chat.ids)] = torch.tensor(chat.ids)
        labels[row, : len(chat.labels)] = torch.tensor(chat.labels)
    return ids[:, :-1], labels[:, 1:]


def assistant_loss(
    model: Any, batch: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """Cross-entropy on the assistant's tokens, computing logits only where they count.

    ``batch = (inputs (B, T), targets (B, T))`` from :func:`collate`; ``model`` a
    :class:`utils.llama.LlamaDecoder` (it needs ``hidden_states``, ``output_weight``).
    Returns ``(loss, {"accuracy": ...}, n_tokens)`` like
    :func:`utils.losses.lm_loss`, so :class:`utils.train.Trainer` can run it; the
    loss equals ``lm_loss``'s on the same batch.
    """
    inputs, targets = batch
    counted = targets != IGNORE_INDEX  # (B, T)
    n_tokens = counted.sum()
    if int(n_tokens) == 0:
        raise ValueError("the batch has no assistant token to learn from")
    hidden = model.hidden_states(inputs)[counted]  # (N, d_model): the counted positions
    logits = F.linear(hidden, model.output_weight).float()  # (N, vocab)
    wanted = targets[counted]  # (N,)
    loss = F.cross_entropy(logits, wanted)
    with torch.no_grad():
        accuracy = (logits.argmax(-1) == wanted).float().mean()
    return loss, {"accuracy": accuracy}, n_tokens


def generate_reply(
    model: Any,
    tokenizer: Any,
    messages: Sequence[dict],
    default_system: str | None,
    max_new_tokens: int,
) -> str:
    """The model's greedy reply to ``messages`` (which end with a user turn), as text.

    Uses :func:`utils.llama.generate_greedy` with the KV cache and stops at ``<|im_end|>``.
    """
    from utils.llama import generate_greedy  # the decoder's own loop

    messages = _check_chat(messages)
    if messages[-1]["role"] != "user":
        raise ValueError(
            "the conversation must end with a user turn for the model to answer"
        )
    text = format_chatml(messages, default_system, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    end = tokenizer.convert_tokens_to_ids(_END)
    out = generate_greedy(model, ids, max_new_tokens, eos_token_id=end)
    return tokenizer.decode(out.tokens, skip_special_tokens=True).strip()


def generate_replies(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[dict]],
    default_system: str | None,
    max_new_tokens: int,
) -> list[str]:
    """:func:`generate_reply` for each conversation, with the model in eval mode."""
    model.eval()
    return [
        generate_reply(model, tokenizer, messages, default_system, max_new_tokens)
        for messages in conversations
    ]
