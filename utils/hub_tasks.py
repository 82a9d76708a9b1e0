"""Task-specific models from the Hugging Face hub: extractive QA and sequence-to-sequence.

The book runs its applications offline with a small instruct model (SmolLM2, see
:mod:`utils.pretrained`). A reader with a network (e.g. on Colab) can pick the classic
task-specific models instead:

- an *extractive* question-answering model such as ``distilbert-base-cased-distilled-squad``
  (DistilBERT fine-tuned on SQuAD): it does not write an answer, it points at the span of the
  passage that answers the question (:func:`best_span`, :func:`extractive_answer`);
- an encoder-decoder such as ``t5-small`` (Raffel et al. 2020), which maps an input text to an
  output text: ``"summarize: ..."`` or ``"translate English to French: ..."``
  (:func:`seq2seq_generate`).

:func:`load_task_model` loads through :func:`utils.pretrained.from_hub`: without a network a
model that is not in the local cache fails at once with :class:`utils.pretrained.OfflineError`
and advice, instead of transformers retrying for tens of seconds.

(transformers 5 has no ``question-answering``, ``summarization`` or ``translation`` pipelines any
more; the few lines below are what those pipelines did for one input.)
"""

from __future__ import annotations

from typing import Any

import torch

from utils.batches import model_device
from utils.pretrained import OFFLINE_MODELS, from_hub

__all__ = [
    "TASKS",
    "best_span",
    "extractive_answer",
    "load_task_model",
    "seq2seq_generate",
]

TASKS = ("extractive-qa", "seq2seq")


def _auto_class(task: str):
    from transformers import AutoModelForQuestionAnswering, AutoModelForSeq2SeqLM

    return {
        "extractive-qa": AutoModelForQuestionAnswering,
        "seq2seq": AutoModelForSeq2SeqLM,
    }[task]


def load_task_model(name: str, task: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a hub model for ``task`` (one of :data:`TASKS`), in eval mode.

    Without a network only the local cache is tried, and a model missing there raises
    :class:`~utils.pretrained.OfflineError` within the network probe's timeout (2 s).
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name must be a non-empty model name, got {name!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if name in OFFLINE_MODELS:
        raise ValueError(
            f"{name!r} is not a {task} model; load it with utils.pretrained.load_pretrained"
        )
    model, tokenizer, _ = from_hub(name, _auto_class(task))
    return model, tokenizer


def best_span(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    allowed: torch.Tensor,
    max_answer_tokens: int = 30,
) -> tuple[int, int, float]:
    """The answer span ``(start, end, score)`` of an extractive QA model, ``end`` inclusive.

    Maximises ``start_logits[s] + end_logits[e]`` over ``s <= e < s + max_answer_tokens`` with
    both positions ``allowed`` (the passage's tokens; not the question, not special tokens).

    Args:
        start_logits, end_logits: ``(L,)`` scores of each token starting / ending the answer.
        allowed: ``(L,)`` bool.
        max_answer_tokens: longest answer, in tokens.
    """
    if start_logits.dim() != 1 or start_logits.shape != end_logits.shape:
        raise ValueError("start_logits and end_logits must both have shape (L,)")
    if allowed.shape != start_logits.shape or allowed.dtype != torch.bool:
        raise ValueError("allowed must be a bool tensor of shape (L,)")
    if not bool(allowed.any()):
        raise ValueError("no allowed position: the passage has no token (is it empty?)")
    if isinstance(max_answer_tokens, bool) or not isinstance(max_answer_tokens, int):
        raise ValueError(
            f"max_answer_tokens must be an int >= 1, got {max_answer_tokens!r}"
        )
    if max_answer_tokens < 1:
        raise ValueError(
            f"max_answer_tokens must be an int >= 1, got {max_answer_tokens!r}"
        )
    length = start_logits.shape[0]
    scores = (
        start_logits.float()[:, None] + end_logits.float()[None, :]
    )  # (L, L): [s, e]
    offset = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # e - s
    valid = (
        (offset >= 0)
        & (offset < max_answer_tokens)
        & allowed[:, None]
        & allowed[None, :]
    )
    scores = scores.masked_fill(~valid, float("-inf"))
    flat = int(scores.argmax())
    start, end = divmod(flat, length)
    return start, end, float(scores[start, end])


@torch.no_grad()
def extractive_answer(
    model: Any,
    tokenizer: Any,
    question: str,
    context: str,
    max_answer_tokens: int = 30,
    max_length: int = 384,
) -> tuple[str, float, bool]:
    """Answer ``question`` with a span of ``context``: ``-> (answer, score, truncated)``.

    Question and passage are encoded as one pair (``[CLS] question [SEP] passage [SEP]``); a
    passage that does not fit in ``max_length`` tokens is cut at its end and ``truncated`` is True.
    The answer is the passage's text between the characters of the best span (:func:`best_span`).
    """
    for label, value in (("question", question), ("context", context)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"{label} is empty: extractive QA needs a question and a passage"
            )
    enc = tokenizer(
        question,
        context,
        truncation="only_second",
        max_length=max_length,
        return_offsets_mapping=True,
        return_overflowing_tokens=True,
    )
    truncated = len(enc["input_ids"]) > 1  # more than one window: the passage was cut
    offsets = enc["offset_mapping"][0]
    sequence_ids = enc.sequence_ids(0)  # None (special), 0 (question), 1 (passage)
    device = model_device(model)
    names = [
        k for k in tokenizer.model_input_names if k in enc
    ]  # DistilBERT: no token types
    out = model(**{k: torch.tensor(enc[k][:1], device=device) for k in names})
    allowed = torch.tensor([s == 1 for s in sequence_ids])
    start, end, score = best_span(
        out.start_logits[0].cpu(), out.end_logits[0].cpu(), allowed, max_answer_tokens
    )
    answer = context[int(offsets[start][0]) : int(offsets[end][1])]
    return answer, score, truncated


@torch.no_grad()
def seq2seq_generate(
    model: Any,
    tokenizer: Any,
    text: str,
    max_new_tokens: int = 60,
    max_length: int = 512,
) -> tuple[str, bool]:
    """Greedy output of an encoder-decoder for ``text``: ``-> (output, truncated)``.

    ``text`` carries the task prefix the model was trained with (T5: ``"summarize: "``,
    ``"translate English to German: "``). Inputs longer than ``max_length`` tokens are cut at
    their end, and ``truncated`` says so.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(
            "text is empty: give the model something to summarise or translate"
        )
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int):
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    full = tokenizer(text, return_tensors="pt")["input_ids"]
    truncated = full.shape[1] > max_length
    enc = tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt")
    device = model_device(model)
    inputs = {k: enc[k].to(device) for k in ("input_ids", "attention_mask")}
    out = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
    )
    return tokenizer.decode(out[0], skip_special_tokens=True).strip(), truncated
