"""Scores for generated text: diversity, repetition, overlap (BLEU) and question answering.

Every function takes *tokenised* text: a list of tokens (``list[str]``, or ints) per sample. How
to tokenise is the caller's choice; the book splits decoded text on whitespace, so that models
with different tokenizers are scored on the same units (words).

- :func:`distinct_n` (Li et al. 2016): distinct n-grams / all n-grams over a set of samples.
  1 = no n-gram is ever repeated, near 0 = the samples keep saying the same thing.
- :func:`repetition_rate` ("seq-rep-n", Welleck et al. 2020): within one sample, the share of
  its n-grams that are repeats of an earlier n-gram of the same sample, averaged over samples.
- :func:`bleu` (Papineni et al. 2002) and :func:`self_bleu` (Zhu et al. 2018): how much each
  sample overlaps with the *other* samples; high = the samples resemble each other.
- :func:`exact_match`, :func:`token_f1` (Rajpurkar et al. 2016): SQuAD's answer scores after
  normalisation (lower case, no punctuation, no articles).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = [
    "answer_in_text",
    "bleu",
    "distinct_n",
    "exact_match",
    "ngrams",
    "normalize_answer",
    "repetition_rate",
    "self_bleu",
    "token_f1",
]


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return n


def _check_samples(samples: Any, name: str = "samples") -> list[list]:
    if isinstance(samples, str) or not isinstance(samples, Sequence):
        raise TypeError(
            f"{name} must be a list of token lists, got {type(samples).__name__}"
        )
    out = []
    for i, sample in enumerate(samples):
        if isinstance(sample, str) or not isinstance(sample, Sequence):
            raise TypeError(
                f"{name}[{i}] must be a list of tokens (split the text first), "
                f"got {type(sample).__name__}"
            )
        out.append(list(sample))
    return out


def ngrams(tokens: Sequence, n: int) -> list[tuple]:
    """The ``len(tokens) - n + 1`` n-grams of ``tokens``, in order (none if it is shorter)."""
    _check_n(n)
    tokens = list(tokens)
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(samples: Sequence[Sequence], n: int) -> float:
    """Distinct n-grams / total n-grams, pooled over all ``samples`` (Li et al. 2016).

    Returns ``nan`` when no sample is long enough to hold an n-gram.
    """
    samples = _check_samples(samples)
    _check_n(n)
    grams = [g for s in samples for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def repetition_rate(samples: Sequence[Sequence], n: int) -> float:
    """Mean over samples of ``1 - distinct n-grams / n-grams`` of that sample alone.

    The share of a sample's n-grams that repeat an earlier one of the same sample ("seq-rep-n" of
    Welleck et al. 2020). Samples too short for an n-gram are skipped; ``nan`` if all are.
    """
    samples = _check_samples(samples)
    _check_n(n)
    rates = []
    for sample in samples:
        grams = ngrams(sample, n)
        if grams:
            rates.append(1.0 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else math.nan


def bleu(
    hypothesis: Sequence,
    references: Sequence[Sequence],
    max_n: int = 4,
    smoothing: float = 0.1,
) -> float:
    """Sentence BLEU of ``hypothesis`` against ``references`` (Papineni et al. 2002).

    ``BP * exp(mean_n log p_n)`` for ``n = 1..max_n`` with uniform weights, where ``p_n`` is the
    *clipped* n-gram precision (an n-gram counts at most as often as it occurs in the reference
    that has it most often) and ``BP = min(1, exp(1 - r / c))``, ``c`` the hypothesis length and
    ``r`` the reference length closest to it (the shorter one on a tie). A zero match count is
    replaced by ``smoothing`` (method 1 of Chen & Cherry 2014), so short samples without a
    4-gram match do not all score 0; ``smoothing=0`` gives the unsmoothed score.

    Returns a number in [0, 1]; 0 for an empty hypothesis.
    """
    hypothesis = list(_check_samples([hypothesis], "hypothesis")[0])
    references = _check_samples(references, "references")
    if not references:
        raise ValueError("references is empty: BLEU needs at least one reference")
    _check_n(max_n)
    if not (isinstance(smoothing, (int, float)) and 0 <= smoothing):
        raise ValueError(f"smoothing must be a number >= 0, got {smoothing!r}")
    c = len(hypothesis)
    if c == 0:
        return 0.0
    log_precisions = []
    for n in range(1, max_n + 1):
        counts = Counter(ngrams(hypothesis, n))
        total = sum(counts.values())
        if total == 0:  # hypothesis shorter than n
            return 0.0
        most = Counter()
        for ref in references:
            for gram, k in Counter(ngrams(ref, n)).items():
                most[gram] = max(most[gram], k)
        matched = sum(min(k, most[gram]) for gram, k in counts.items())
        if matched == 0:
            if smoothing == 0:
                return 0.0
            matched = smoothing
        log_precisions.append(math.log(matched / total))
    r = min(
        (len(ref) for ref in references), key=lambda length: (abs(length - c), length)
    )
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return brevity * math.exp(sum(log_precisions) / max_n)


def self_bleu(
    samples: Sequence[Sequence], max_n: int = 4, smoothing: float = 0.1
) -> float:
    """Mean BLEU of each sample against all the others as references (Zhu et al. 2018).

    High: the samples share many n-grams (little diversity). Needs at least 2 samples.
    """
    samples = _check_samples(samples)
    if len(samples) < 2:
        raise ValueError(f"self-BLEU needs at least 2 samples, got {len(samples)}")
    scores = [
        bleu(s, samples[:i] + samples[i + 1 :], max_n, smoothing)
        for i, s in enumerate(samples)
    ]
    return sum(scores) / len(scores)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, drop punctuation and the articles a/an/the, one space."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _check_answers(answers: Any) -> list[str]:
    if isinstance(answers, str):
        answers = [answers]
    answers = list(answers)
    if not answers or not all(isinstance(a, str) for a in answers):
        raise ValueError(
            "answers must be a non-empty list of str (the accepted answers)"
        )
    return answers


def exact_match(prediction: str, answers: Sequence[str] | str) -> bool:
    """True when the normalised prediction equals one of the normalised accepted answers."""
    answers = _check_answers(answers)
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(a) for a in answers)


def token_f1(prediction: str, answers: Sequence[str] | str) -> float:
    """SQuAD's F1: the best, over the accepted answers, of the harmonic mean of word precision and
    recall between normalised prediction and answer (words counted with multiplicity)."""
    answers = _check_answers(answers)
    pred = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold = normalize_answer(answer).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            precision, recall = common / len(pred), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def answer_in_text(prediction: str, answers: Sequence[str] | str) -> bool:
    """True when a normalised accepted answer occurs, as whole words, in the normalised
    prediction: the lenient score for a model that answers in a sentence."""
    answers = _check_answers(answers)
    pred = f" {normalize_answer(prediction)} "
    return any(
        f" {normalize_answer(a)} " in pred for a in answers if normalize_answer(a)
    )
