"""An evaluation harness: the scores that say whether post-training helped, with error bars.

An evaluation harness is the fixed machinery that turns a model and a set of test items into
numbers that can be compared between models: the same prompts, the same way of reading the
model's answer, the same metric and an honest statement of how uncertain the number is. It is
what makes "the fine-tuned model is better" a claim rather than an impression. This module
writes out its pieces:

- :func:`exact_match_scores`: did the generated answer equal the reference? A 1/0 score per
  item, strict (after ``strip``) or after SQuAD's normalisation
  (:func:`utils.textmetrics.exact_match`). Simple and unambiguous, but only for short answers.
- :func:`continuation_logprobs`, :func:`score_choices`, :func:`mc_correct`: multiple choice
  by log-likelihood, as in lm-evaluation-harness. No text is generated: the model scores each
  candidate answer after the prompt and the most likely one is its pick. The total log-prob
  favours short answers (every token costs probability), hence the normalised variants, per
  token and per byte ("acc_norm").
- :func:`bits_per_byte`, :func:`text_bits_per_byte`: how well the model predicts held-out
  text, in bits per byte of UTF-8. Unlike perplexity per token it does not depend on the
  tokenizer, so models with different vocabularies can be compared. Fine-tuning on chat data
  usually raises it on plain text: a cheap check of what the model forgets.
- :func:`bootstrap_ci`, :func:`paired_bootstrap_diff`: a test set is a sample, and an accuracy
  of 0.62 on 100 items could as well be 0.52 or 0.71. The percentile bootstrap (Efron 1979)
  resamples the items with replacement and reads the interval off the resampled means. When
  two models are scored on the *same* items, resampling the items jointly (paired) removes the
  item-to-item difficulty from the comparison and gives a much narrower interval for the
  difference than two separate intervals would suggest.
- :func:`ngram_overlap`: contamination. A benchmark item whose text also appears in the
  training data measures memory, not skill. GPT-3 (Brown et al. 2020, appendix C) flagged
  test items sharing a 13-gram with the training set; here the n-gram length is a parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from utils.checks import check_min_int
from utils.textmetrics import exact_match, ngrams

__all__ = [
    "ChoiceScores",
    "Contamination",
    "Interval",
    "bits_per_byte",
    "bootstrap_ci",
    "continuation_logprobs",
    "exact_match_scores",
    "mc_accuracy",
    "mc_correct",
    "ngram_overlap",
    "paired_bootstrap_diff",
    "score_choices",
    "text_bits_per_byte",
]

NORMALIZATIONS = ("sum", "per_token", "per_byte")


# --------------------------------------------------------------------------------------------
# Confidence intervals: the percentile bootstrap
# --------------------------------------------------------------------------------------------


class Interval(NamedTuple):
    """A point estimate and a confidence interval ``[low, high]`` around it."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.2f} [{self.low:.2f}, {self.high:.2f}]"


def _check_values(values: Any, name: str) -> np.ndarray:
    """``values`` as a 1-D float64 array of finite numbers, at least one."""
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name} must be a 1-D sequence of numbers, got a string")
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"{name} must be a 1-D sequence of numbers (e.g. 0/1 scores): {error}"
        ) from None
    if array.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D (one score per item), got shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(
            f"{name} is empty: a confidence interval needs at least one item"
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"{name} holds NaN or infinite values; drop or fix those items"
        )
    return array


def _check_bootstrap(n_resamples: Any, confidence: Any) -> None:
    check_min_int("n_resamples", n_resamples, minimum=1)
    if (
        isinstance(confidence, bool)
        or not isinstance(confidence, (int, float))
        or not 0 < confidence < 1
    ):
        raise ValueError(
            f"confidence must be a number in (0, 1) such as 0.95, got {confidence!r}"
        )


def _bootstrap_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples,)`` means of ``values`` resampled with replacement.

    Drawn in blocks of resamples (index arrays of at most about 4M entries), so memory stays
    small for long test sets; the blocks depend only on ``len(values)``, so a seed gives the
    same means on every machine.
    """
    n = values.size
    rng = np.random.default_rng(seed)
    block = max(1, (1 << 22) // n)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, block):
        stop = min(start + block, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))  # (block, n) item indices
        means[start:stop] = values[idx].mean(axis=1)
    return means


def _percentile_interval(
    estimate: float, means: np.ndarray, confidence: float
) -> Interval:
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(estimate), float(low), float(high))


def bootstrap_ci(
    values: Sequence[float],
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile-bootstrap confidence interval of the mean of ``values``.

    ``values``: ``(n,)`` per-item scores, e.g. the 0/1 of :func:`exact_match_scores`. Draws
    ``n_resamples`` samples of ``n`` items with replacement, takes each one's mean, and
    returns the plain mean with the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles of those means (linear interpolation, as ``np.quantile`` and
    ``scipy.stats.bootstrap(method="percentile")``). Seeded: the same call gives the same
    interval. For a 0/1 score and a large ``n`` it approaches ``p ± 1.96 sqrt(p(1-p)/n)``.
    """
    array = _check_values(values, "values")
    _check_bootstrap(n_resamples, confidence)
    means = _bootstrap_means(array, n_resamples, seed)
    return _percentile_interval(array.mean(), means, confidence)


def paired_bootstrap_diff(
    before: Sequence[float],
    after: Sequence[float],
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Confidence interval of ``mean(after) - mean(before)`` on the same items.

    ``before``, ``after``: ``(n,)`` scores of two models on the same ``n`` items, in the same
    order. Each resample draws one set of item indices and uses it for both, so an item that
    is hard for both models stays hard in both halves of the difference. (This is the
    bootstrap of the per-item differences ``after - before``.) An interval that excludes 0
    says the change is larger than the luck of the test set.
    """
    a = _check_values(before, "before")
    b = _check_values(after, "after")
    if a.size != b.size:
        raise ValueError(
            f"before and after must score the same items, got {a.size} and {b.size} "
            "scores"
        )
    _check_bootstrap(n_resamples, confidence)
    diff = b - a  # (n,)
    means = _bootstrap_means(diff, n_resamples, seed)
    return _percentile_interval(diff.mean(), means, confidence)


# --------------------------------------------------------------------------------------------
# Generated answers: exact match
# --------------------------------------------------------------------------------------------


def _accepted(answer: Any, i: int) -> list[str]:
    accepted = [answer] if isinstance(answer, str) else answer
    if (
        not isinstance(accepted, Sequence)
        or not accepted
        or not all(isinstance(a, str) for a in accepted)
    ):
        raise TypeError(
            f"answers[{i}] must be a str or a non-empty list of str (the accepted "
            f"answers), got {answer!r}"
        )
    return list(accepted)


def exact_match_scores(
    predictions: Sequence[str],
    answers: Sequence[str | Sequence[str]],
    normalize: bool = False,
) -> list[int]:
    """``(n,)`` 1/0: does ``predictions[i]`` equal an accepted answer of ``answers[i]``?

    ``answers[i]`` is one str or a list of accepted strs. By default the comparison is strict
    except for surrounding whitespace (``.strip()``); ``normalize=True`` compares after SQuAD's
    normalisation (lower case, no punctuation, no articles; :func:`utils.textmetrics.exact_match`).
    """
    for name, seq in (("predictions", predictions), ("answers", answers)):
        if isinstance(seq, str) or not isinstance(seq, Sequence):
            raise TypeError(
                f"{name} must be a list (one entry per item), got {type(seq).__name__}"
            )
    if len(predictions) != len(answers):
        raise ValueError(
            f"predictions and answers must have the same length, got "
            f"{len(predictions)} and {len(answers)}"
        )
    if not isinstance(normalize, bool):
        raise TypeError(f"normalize must be True or False, got {normalize!r}")
    scores = []
    for i, (prediction, answer) in enumerate(zip(predictions, answers, strict=True)):
        if not isinstance(prediction, str):
            raise TypeError(
                f"predictions[{i}] must be a str (decode the tokens first), got "
                f"{type(prediction).__name__}"
            )
        accepted = _accepted(answer, i)
        if normalize:
            hit = exact_match(prediction, accepted)
        else:
            hit = any(prediction.strip() == a.strip() for a in accepted)
        scores.append(int(hit))
    return scores


# --------------------------------------------------------------------------------------------
# Log-likelihoods: continuations and multiple choice
# --------------------------------------------------------------------------------------------


def _ids(ids: Any, name: str) -> torch.Tensor:
    """Token ids (a list of ints or a 1-D integer tensor) as a 1-D int64 CPU tensor."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex():
            raise ValueError(
                f"{name} must be a 1-D integer tensor or a list of ints, got a "
                f"{ids.dtype} tensor of shape {tuple(ids.shape)}"
            )
        out = ids.detach().to(device="cpu", dtype=torch.long)
    elif isinstance(ids, Sequence) and not isinstance(ids, (str, bytes)):
        if not all(
            isinstance(t, (int, np.integer)) and not isinstance(t, bool) for t in ids
        ):
            raise TypeError(f"{name} must be a list of ints (token ids)")
        out = torch.tensor([int(t) for t in ids], dtype=torch.long)
    else:
        raise TypeError(
            f"{name} must be token ids (a list of ints or a 1-D tensor), got "
            f"{type(ids).__name__}; tokenize the text first"
        )
    if out.numel() == 0:
        raise ValueError(f"{name} is empty: it must hold at least one token")
    return out


def _device(model: Any) -> torch.device:
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


def _context_length(model: Any) -> int | None:
    """The model's context, if its config says (ours: ``context_length``; transformers:
    ``max_position_embeddings``)."""
    config = getattr(model, "config", None)
    for key in ("context_length", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """``logits (T, V)`` (float32) of ``model`` on ``ids (T,)``: one forward pass, batch 1."""
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    out = model(ids[None].to(_device(model)))
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor):
        raise TypeError(
            "model(ids) must return logits (1, T, V) or an object with .logits (a "
            f"transformers model), got {type(out).__name__}"
        )
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (1, ids.numel()):
        raise ValueError(
            f"model(ids) of shape (1, {ids.numel()}) returned logits of shape "
            f"{tuple(logits.shape)}, expected (1, {ids.numel()}, vocab_size)"
        )
    return logits[0].float()


@torch.no_grad()
def continuation_logprobs(
    model: Callable, prompt_ids: Any, continuation_ids: Any
) -> torch.Tensor:
    """``(C,)`` log-probs ``log p(c_t | prompt, c_<t)`` of the ``C`` continuation tokens.

    ``model`` maps ids ``(1, T)`` to logits ``(1, T, V)``, directly (:class:`utils.llama.
    LlamaDecoder`) or as ``.logits`` (a transformers model; put it in ``eval()`` mode). One
    forward pass reads ``prompt + continuation``; the logits at position ``P - 1 + t`` (``P``
    prompt tokens) score continuation token ``t``. The result is float32, on the CPU.

    Tokenise prompt and continuation so that they join as the model would see them: with
    SmolLM2's tokenizer the continuation carries its leading space (``" Paris"``), and
    tokenising the two halves apart can split differently from tokenising the whole.
    """
    prompt = _ids(prompt_ids, "prompt_ids")
    continuation = _ids(continuation_ids, "continuation_ids")
    ids = torch.cat([prompt, continuation])  # (P + C,)
    n_ctx = _context_length(model)
    if n_ctx is not None and ids.numel() > n_ctx:
        raise ValueError(
            f"prompt ({prompt.numel()} tokens) plus continuation ({continuation.numel()}) "
            f"exceed the model's context of {n_ctx} tokens; shorten the prompt"
        )
    logits = _logits(model, ids)  # (P + C, V)
    P, C = prompt.numel(), continuation.numel()
    logp = F.log_softmax(logits[P - 1 : P + C - 1], dim=-1)  # (C, V)
    return logp.gather(1, continuation.to(logp.device)[:, None])[:, 0].cpu()


@torch.no_grad()
def _batched_continuation_logprobs(
    model: Callable, prompt: torch.Tensor, choices: list[torch.Tensor]
) -> list[torch.Tensor]:
    """:func:`continuation_logprobs` of every choice, in one forward pass of batch ``K``.

    The rows ``prompt + choice_k`` are right-padded (with the prompt's first token; causal
    attention never lets a real token read the padding after it), so row ``k``'s logits at
    positions ``P - 1 .. P + C_k - 2`` are those of its own forward pass.
    """
    P = prompt.numel()
    longest = P + max(c.numel() for c in choices)
    n_ctx = _context_length(model)
    if n_ctx is not None and longest > n_ctx:
        raise ValueError(
            f"prompt ({P} tokens) plus the longest choice ({longest - P}) exceed the "
            f"model's context of {n_ctx} tokens; shorten the prompt"
        )
    rows = torch.full((len(choices), longest), int(prompt[0]), dtype=torch.long)
    for k, choice in enumerate(choices):
        rows[k, :P] = prompt
        rows[k, P : P + choice.numel()] = choice
    out = model(rows.to(_device(model)))
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.shape[:2] != rows.shape:
        raise TypeError(
            f"model(ids) of shape {tuple(rows.shape)} must return logits (K, T, V) or an "
            "object with .logits (a transformers model)"
        )
    result = []
    for k, choice in enumerate(choices):
        C = choice.numel()
        logp = F.log_softmax(logits[k, P - 1 : P + C - 1].float(), dim=-1)  # (C, V)
        result.append(logp.gather(1, choice.to(logp.device)[:, None])[:, 0].cpu())
    return result


class ChoiceScores(NamedTuple):
    """The log-likelihood scores of the ``K`` choices of one multiple-choice item.

    ``sum``: total log-prob of each choice; ``per_token``: ``sum / n_tokens``; ``per_byte``:
    ``sum / len(text.encode("utf-8"))``, or ``None`` when the texts were not given.
    """

    sum: list[float]
    per_token: list[float]
    per_byte: list[float] | None

    def pick(self, normalization: str = "sum") -> int:
        """Index of the best choice under ``normalization`` ("sum" | "per_token" |
        "per_byte"); the first one on a tie."""
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        scores = getattr(self, normalization)
        if scores is None:
            raise ValueError(
                "per_byte needs the choices' texts: pass choice_texts to score_choices"
            )
        return int(np.argmax(scores))


def score_choices(
    model: Callable,
    prompt_ids: Any,
    choices_ids: Sequence[Any],
    choice_texts: Sequence[str] | None = None,
) -> ChoiceScores:
    """Score ``K`` candidate continuations of one prompt by their log-likelihood.

    ``choices_ids``: ``K`` token-id sequences, scored as :func:`continuation_logprobs` would
    score each, in one forward pass of batch ``K``; ``choice_texts``: the ``K`` strings they encode, for the
    per-byte normalisation. ``pick("sum")`` is lm-evaluation-harness's ``acc``: the raw
    log-likelihood, which prefers short choices. Its ``acc_norm`` divides by the length of the
    choice string, which it counts in characters (``len(str)``); here the UTF-8 bytes are
    counted, the same for ASCII text and comparable with :func:`bits_per_byte`.
    """
    if isinstance(choices_ids, (str, torch.Tensor)) or not isinstance(
        choices_ids, Sequence
    ):
        raise TypeError(
            "choices_ids must be a list of token-id sequences (one per choice), got "
            f"{type(choices_ids).__name__}"
        )
    if not choices_ids:
        raise ValueError("choices_ids is empty: there is nothing to choose from")
    n_bytes = None
    if choice_texts is not None:
        if isinstance(choice_texts, str) or not isinstance(choice_texts, Sequence):
            raise TypeError(
                "choice_texts must be a list of str (one per choice) or None"
            )
        if len(choice_texts) != len(choices_ids):
            raise ValueError(
                f"choice_texts has {len(choice_texts)} texts for {len(choices_ids)} choices"
            )
        n_bytes = []
        for k, text in enumerate(choice_texts):
            if not isinstance(text, str) or not text:
                raise ValueError(
                    f"choice_texts[{k}] must be a non-empty str, got {text!r}"
                )
            n_bytes.append(len(text.encode("utf-8")))
    prompt = _ids(prompt_ids, "prompt_ids")
    choices = [_ids(c, f"choices_ids[{k}]") for k, c in enumerate(choices_ids)]
    logps = _batched_continuation_logprobs(model, prompt, choices)
    sums = [float(lp.sum()) for lp in logps]
    per_token = [total / lp.numel() for total, lp in zip(sums, logps, strict=True)]
    per_byte = (
        None if n_bytes is None else [s / b for s, b in zip(sums, n_bytes, strict=True)]
    )
    return ChoiceScores(sums, per_token, per_byte)


def mc_correct(
    scores: Sequence[ChoiceScores], gold: Sequence[int], normalization: str = "sum"
) -> list[int]:
    """``(n,)`` 1/0: did item ``i``'s pick under ``normalization`` equal ``gold[i]``?

    The per-item scores that :func:`bootstrap_ci` and :func:`paired_bootstrap_diff` take.
    """
    if len(scores) != len(gold):
        raise ValueError(
            f"scores and gold must have the same length, got {len(scores)} and "
            f"{len(gold)}"
        )
    out = []
    for i, (item, answer) in enumerate(zip(scores, gold, strict=True)):
        if not isinstance(item, ChoiceScores):
            raise TypeError(
                f"scores[{i}] must be a ChoiceScores (from score_choices), got "
                f"{type(item).__name__}"
            )
        check_min_int(f"gold[{i}]", answer, minimum=0)
        if answer >= len(item.sum):
            raise ValueError(
                f"gold[{i}] = {answer} but item {i} has only {len(item.sum)} choices"
            )
        out.append(int(item.pick(normalization) == answer))
    return out


def mc_accuracy(
    scores: Sequence[ChoiceScores], gold: Sequence[int], normalization: str = "sum"
) -> float:
    """Share of items whose pick is the gold choice: the mean of :func:`mc_correct`."""
    correct = mc_correct(scores, gold, normalization)
    if not correct:
        raise ValueError("scores is empty: accuracy needs at least one item")
    return sum(correct) / len(correct)


# --------------------------------------------------------------------------------------------
# Held-out text: bits per byte
# --------------------------------------------------------------------------------------------


def bits_per_byte(total_nll_nats: float, n_bytes: int) -> float:
    """``total_nll_nats / (ln 2 * n_bytes)``: a summed negative log-likelihood in nats, spread
    over the UTF-8 bytes of the text it scored, in bits. 8 = no better than uniform bytes."""
    if (
        isinstance(total_nll_nats, bool)
        or not isinstance(total_nll_nats, (int, float))
        or not math.isfinite(total_nll_nats)
        or total_nll_nats < 0
    ):
        raise ValueError(
            "total_nll_nats must be a finite number >= 0 (a summed negative "
            f"log-likelihood), got {total_nll_nats!r}"
        )
    check_min_int("n_bytes", n_bytes, minimum=1)
    return total_nll_nats / (math.log(2) * n_bytes)


@torch.no_grad()
def text_bits_per_byte(
    model: Callable, token_ids: Any, n_bytes: int, max_tokens: int | None = None
) -> float:
    """Bits per byte of the model on one text: its next-token NLL summed, over ``n_bytes``.

    ``token_ids``: ``(T,)`` ids of the text, read in one forward pass; tokens ``1 .. T-1`` are
    scored, each given the ones before it. The *first token is not predicted* (nothing comes
    before it), so put a BOS token in front (SmolLM2: ``<|endoftext|>``, id 0) to score every
    token of the text, and pass ``n_bytes = len(text.encode("utf-8"))`` of the text alone.
    ``max_tokens``: refuse longer inputs (default: the model's context length if its config
    gives one); split a long text into pieces and add up their NLLs and bytes instead.
    """
    ids = _ids(token_ids, "token_ids")
    check_min_int("n_bytes", n_bytes, minimum=1)
    if ids.numel() < 2:
        raise ValueError(
            "token_ids must hold at least 2 tokens: the first one is not predicted"
        )
    limit = _context_length(model) if max_tokens is None else max_tokens
    if max_tokens is not None:
        check_min_int("max_tokens", max_tokens, minimum=2)
    if limit is not None and ids.numel() > limit:
        raise ValueError(
            f"token_ids holds {ids.numel()} tokens, more than max_tokens={limit}; score "
            "the text in pieces and add up their NLLs and bytes"
        )
    logits = _logits(model, ids)  # (T, V)
    nll = F.cross_entropy(logits[:-1], ids[1:].to(logits.device), reduction="sum")
    return bits_per_byte(float(nll), n_bytes)


# --------------------------------------------------------------------------------------------
# Contamination: shared word n-grams between test and training text
# --------------------------------------------------------------------------------------------


class Contamination(NamedTuple):
    """What :func:`ngram_overlap` found.

    ``n``: the n-gram length; ``flagged``: indices of the test items sharing at least one
    n-gram with the training texts; ``fraction``: ``len(flagged) / n_items``; ``overlaps``:
    per item, the share of its n-grams (counted by position) found in the training texts.
    """

    n: int
    flagged: list[int]
    fraction: float
    overlaps: list[float]


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _texts(texts: Any, name: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(
            f"{name} must be a list of str (one text per item), got {type(texts).__name__}"
        )
    if not texts:
        raise ValueError(f"{name} is empty")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(text).__name__}")
    return list(texts)


def ngram_overlap(
    eval_texts: Sequence[str],
    train_texts: Sequence[str],
    n: int = 8,
    tokenize: Callable[[str], Sequence[str]] | None = None,
) -> Contamination:
    """Which test items share a word n-gram with the training texts (a contamination check).

    Both sides are split into words by ``tokenize`` (default: lower case, runs of letters and
    digits, ``re.findall(r"\\w+", text.lower())``). An item of ``k < n`` words counts as one
    k-gram, matched against all k-grams of the training texts, so that a short question is
    not ignored; an item without any word has overlap 0 and is never flagged. GPT-3 used
    ``n = 13`` on long documents; short benchmark items want a smaller ``n``.
    """
    eval_texts = _texts(eval_texts, "eval_texts")
    train_texts = _texts(train_texts, "train_texts")
    check_min_int("n", n, minimum=1)
    if tokenize is None:
        tokenize = _words
    elif not callable(tokenize):
        raise TypeError(
            f"tokenize must be a function str -> list of str, got {tokenize!r}"
        )
    train_words = [list(tokenize(t)) for t in train_texts]
    train_grams: dict[int, set[tuple]] = {}  # k -> every k-gram of the training texts

    def grams_of_length(k: int) -> set[tuple]:
        if k not in train_grams:
            train_grams[k] = {g for words in train_words for g in ngrams(words, k)}
        return train_grams[k]

    flagged, overlaps = [], []
    for i, text in enumerate(eval_texts):
        words = list(tokenize(text))
        if not words:
            overlaps.append(0.0)
            continue
        k = min(n, len(words))
        grams = ngrams(words, k)
        known = grams_of_length(k)
        hits = sum(g in known for g in grams)
        overlaps.append(hits / len(grams))
        if hits:
            flagged.append(i)
    return Contamination(n, flagged, len(flagged) / len(eval_texts), overlaps)
