"""Tests for utils.evaluation: bootstrap intervals, exact match, log-likelihood scoring,
bits per byte and the n-gram contamination check.

Each score is checked against a library (scipy's bootstrap) or a second derivation (the
normal approximation, ``F.cross_entropy`` on the full logits, one forward pass per prefix,
perplexity, substring search). Models are a tiny random :class:`utils.llama.LlamaDecoder` or
hand-made toys whose log-probs are known exactly.
"""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from utils import evaluation as ev
from utils.llama import LlamaConfig, LlamaDecoder

TINY = LlamaConfig(
    vocab_size=50,
    d_model=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    d_ff=48,
    rope_theta=10000.0,
    context_length=24,
)


@pytest.fixture(scope="module")
def tiny() -> LlamaDecoder:
    torch.manual_seed(0)
    return LlamaDecoder(dataclasses.replace(TINY)).eval()


class Unigram(nn.Module):
    """A toy LM whose next-token distribution is ``probs`` at every position."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.logp = nn.Parameter(torch.tensor(probs).log(), requires_grad=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        return self.logp.expand(*ids.shape, -1)


class HFStyle(nn.Module):
    """Wraps a model so that it returns an object with ``.logits``, as transformers does."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.inner(ids))


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def test_interval_str():
    assert str(ev.Interval(0.62, 0.5211, 0.7149)) == "0.62 [0.52, 0.71]"
    assert ev.Interval(1.0, 0.0, 2.0).estimate == 1.0


def test_bootstrap_matches_scipy_percentile():
    stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(1).normal(size=80)
    ours = ev.bootstrap_ci(x, n_resamples=40_000, seed=3)
    ref = stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=40_000,
        method="percentile",
        rng=np.random.default_rng(4),
    ).confidence_interval
    # Different random resamples: each bound carries a Monte Carlo error of about 0.013
    # standard errors of the mean at 40000 resamples, so the two differ by ~0.02 se.
    se = x.std() / math.sqrt(len(x))
    assert ours.estimate == pytest.approx(x.mean())
    assert ours.low == pytest.approx(ref.low, abs=0.1 * se)
    assert ours.high == pytest.approx(ref.high, abs=0.1 * se)


def test_bootstrap_matches_normal_approximation_for_bernoulli():
    n = 2000
    x = (np.random.default_rng(2).random(n) < 0.3).astype(int)
    p = x.mean()
    half = 1.96 * math.sqrt(p * (1 - p) / n)  # about 0.02
    ci = ev.bootstrap_ci(list(x), n_resamples=10_000)
    assert ci.estimate == pytest.approx(p)
    assert ci.low == pytest.approx(p - half, abs=0.1 * half)
    assert ci.high == pytest.approx(p + half, abs=0.1 * half)
    # A 90% interval is narrower; the seed makes the result reproducible.
    narrow = ev.bootstrap_ci(x, n_resamples=10_000, confidence=0.9)
    assert narrow.high - narrow.low < ci.high - ci.low
    assert ev.bootstrap_ci(x, n_resamples=500, seed=7) == ev.bootstrap_ci(
        x, n_resamples=500, seed=7
    )


def test_bootstrap_small_exact_cases():
    assert ev.bootstrap_ci([1, 1, 1]) == (1.0, 1.0, 1.0)
    # Two items: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    ci = ev.bootstrap_ci([0, 1], n_resamples=4000)
    assert ci == (0.5, 0.0, 1.0)


def test_bootstrap_errors():
    with pytest.raises(ValueError, match="empty"):
        ev.bootstrap_ci([])
    with pytest.raises(ValueError, match=r"confidence must be a number in \(0, 1\)"):
        ev.bootstrap_ci([0, 1], confidence=1.0)
    with pytest.raises(ValueError, match="confidence"):
        ev.bootstrap_ci([0, 1], confidence=95)
    with pytest.raises(ValueError, match="n_resamples must be an int >= 1"):
        ev.bootstrap_ci([0, 1], n_resamples=0)
    with pytest.raises(ValueError, match="NaN or infinite"):
        ev.bootstrap_ci([0, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        ev.bootstrap_ci([[0, 1], [1, 0]])
    with pytest.raises(TypeError, match="numbers"):
        ev.bootstrap_ci(["a", "b"])


def test_paired_bootstrap_matches_scipy_and_beats_unpaired():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(5)
    difficulty = rng.random(300)
    before = (rng.random(300) < difficulty).astype(float)
    after = np.maximum(before, rng.random(300) < 0.1)  # fixes a few items, breaks none
    ours = ev.paired_bootstrap_diff(before, after, n_resamples=20_000)
    assert ours.estimate == pytest.approx(after.mean() - before.mean())
    ref = stats.bootstrap(
        (before, after),
        lambda a, b, axis: b.mean(axis=axis) - a.mean(axis=axis),
        paired=True,
        n_resamples=20_000,
        method="percentile",
        rng=np.random.default_rng(6),
    ).confidence_interval
    # The resampled differences live on a grid of step 1/300: allow one step.
    assert ours.low == pytest.approx(ref.low, abs=1 / 300)
    assert ours.high == pytest.approx(ref.high, abs=1 / 300)
    # The same as bootstrapping the per-item differences.
    assert ours == ev.bootstrap_ci(after - before, n_resamples=20_000)
    # Resampling the two models' items independently ignores the shared item difficulty:
    # the interval of the difference is much wider.
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, 300, size=(2, 20_000, 300))
    unpaired = np.quantile(after[j].mean(1) - before[i].mean(1), [0.025, 0.975])
    assert ours.low > 0 > unpaired[0]
    assert ours.high - ours.low < 0.5 * (unpaired[1] - unpaired[0])


def test_paired_bootstrap_errors():
    with pytest.raises(ValueError, match="same items, got 2 and 3"):
        ev.paired_bootstrap_diff([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        ev.paired_bootstrap_diff([], [])


# --------------------------------------------------------------------------------------------
# Exact match
# --------------------------------------------------------------------------------------------


def test_exact_match_scores():
    preds = [" Paris\n", "paris", "The Eiffel Tower.", "4"]
    answers = ["Paris", "Paris", ["Eiffel Tower", "the Eiffel tower"], ["four", "4"]]
    assert ev.exact_match_scores(preds, answers) == [1, 0, 0, 1]
    assert ev.exact_match_scores(preds, answers, normalize=True) == [1, 1, 1, 1]
    assert ev.exact_match_scores([], []) == []


def test_exact_match_scores_errors():
    with pytest.raises(ValueError, match="same length, got 2 and 1"):
        ev.exact_match_scores(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="predictions must be a list"):
        ev.exact_match_scores("a", ["a"])
    with pytest.raises(TypeError, match=r"answers\[0\] must be a str or a non-empty"):
        ev.exact_match_scores(["a"], [[]])
    with pytest.raises(TypeError, match=r"predictions\[0\] must be a str"):
        ev.exact_match_scores([[1, 2]], ["a"])


# --------------------------------------------------------------------------------------------
# Continuation log-probs and multiple choice
# --------------------------------------------------------------------------------------------


def test_continuation_logprobs_match_cross_entropy_and_prefix_passes(tiny):
    prompt, cont = [3, 14, 15, 9], [26, 5, 35]
    got = ev.continuation_logprobs(tiny, prompt, cont)
    assert got.shape == (3,) and got.dtype == torch.float32
    # Second derivation 1: cross-entropy over the full logits of prompt + continuation.
    ids = torch.tensor(prompt + cont)
    logits = tiny(ids[None])[0]  # (7, V)
    nll = F.cross_entropy(logits[:-1], ids[1:], reduction="none")  # (6,)
    assert_close(got, -nll[len(prompt) - 1 :].detach())
    # Second derivation 2: one forward pass per prefix, last position only (causality).
    full = prompt + cont
    for t, token in enumerate(cont):
        prefix = torch.tensor(full[: len(prompt) + t])[None]
        logp = torch.log_softmax(tiny(prefix)[0, -1], -1)
        assert_close(got[t], logp[token].detach(), atol=1e-5, rtol=1e-5)
    # Tensor inputs and a transformers-style output give the same numbers.
    assert_close(
        ev.continuation_logprobs(
            HFStyle(tiny), torch.tensor(prompt), torch.tensor(cont)
        ),
        got,
    )
    assert not got.requires_grad  # computed under no_grad


def test_continuation_logprobs_errors(tiny):
    with pytest.raises(ValueError, match="continuation_ids is empty"):
        ev.continuation_logprobs(tiny, [1, 2], [])
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        ev.continuation_logprobs(tiny, [], [1])
    with pytest.raises(TypeError, match="tokenize the text first"):
        ev.continuation_logprobs(tiny, "hello", [1])
    with pytest.raises(ValueError, match="1-D integer tensor"):
        ev.continuation_logprobs(tiny, torch.ones(1, 3, dtype=torch.long), [1])
    with pytest.raises(ValueError, match="exceed the model's context of 24"):
        ev.continuation_logprobs(tiny, [1] * 20, [2] * 5)
    with pytest.raises(TypeError, match="or an object with .logits"):
        ev.continuation_logprobs(lambda ids: {"logits": None}, [1], [2])
    with pytest.raises(ValueError, match="expected"):
        ev.continuation_logprobs(lambda ids: torch.zeros(1, 5), [1], [2])


def test_score_choices_agrees_with_cross_entropy(tiny):
    prompt = [7, 8, 9]
    choices = [[10], [11, 12], [13, 14, 15]]
    texts = [" a", " bé", " cdef"]  # 2, 4 (é is 2 bytes) and 5 bytes
    scores = ev.score_choices(tiny, prompt, choices, texts)
    for k, choice in enumerate(choices):
        ids = torch.tensor(prompt + choice)
        logits = tiny(ids[None])[0]
        target = ids.clone()
        target[: len(prompt)] = -100  # score only the choice's tokens
        total = -F.cross_entropy(logits[:-1], target[1:], reduction="sum").item()
        assert scores.sum[k] == pytest.approx(total, rel=1e-5)
        assert scores.per_token[k] == pytest.approx(total / len(choice), rel=1e-5)
        nbytes = len(texts[k].encode("utf-8"))
        assert scores.per_byte[k] == pytest.approx(total / nbytes, rel=1e-5)
    assert ev.score_choices(tiny, prompt, choices).per_byte is None


def test_normalisation_changes_the_pick():
    # Every position: p(0)=0.5, p(1)=0.3, p(2)=0.2.
    model = Unigram([0.5, 0.3, 0.2])
    lp0, lp2 = math.log(0.5), math.log(0.2)
    # A: one unlikely token; B: four likely ones. The sum prefers the short A
    # (-1.61 > -2.77), per token prefers B (-0.69 > -1.61).
    s = ev.score_choices(model, [0], [[2], [0, 0, 0, 0]], ["x", "abcd"])
    assert s.sum == pytest.approx([lp2, 4 * lp0])
    assert s.pick("sum") == 0 and s.pick("per_token") == 1 and s.pick("per_byte") == 1
    # A long text in one token beats a short text in two per byte (-0.20 > -0.69), while
    # the sum and per token prefer B.
    s = ev.score_choices(model, [0], [[2], [0, 0]], ["abcdefgh", "ab"])
    assert s.pick("sum") == 1 and s.pick("per_token") == 1 and s.pick("per_byte") == 0
    # mc_correct / mc_accuracy read the picks against the gold answers.
    items = [ev.score_choices(model, [0], [[2], [0, 0, 0, 0]], ["x", "abcd"]), s]
    assert ev.mc_correct(items, [0, 0], "sum") == [1, 0]
    assert ev.mc_correct(items, [0, 0], "per_byte") == [0, 1]
    assert ev.mc_accuracy(items, [1, 1], "per_token") == 1.0


def test_score_choices_errors(tiny):
    with pytest.raises(ValueError, match="nothing to choose from"):
        ev.score_choices(tiny, [1], [])
    with pytest.raises(ValueError, match="2 texts for 3 choices"):
        ev.score_choices(tiny, [1], [[2], [3], [4]], ["a", "b"])
    with pytest.raises(ValueError, match=r"choices_ids\[1\] is empty"):
        ev.score_choices(tiny, [1], [[2], []])
    with pytest.raises(ValueError, match="non-empty str"):
        ev.score_choices(tiny, [1], [[2]], [""])
    s = ev.score_choices(tiny, [1], [[2], [3]])
    with pytest.raises(ValueError, match="pass choice_texts"):
        s.pick("per_byte")
    with pytest.raises(ValueError, match="normalization must be one of"):
        s.pick("acc_norm")
    with pytest.raises(ValueError, match="only 2 choices"):
        ev.mc_correct([s], [2])
    with pytest.raises(ValueError, match="same length"):
        ev.mc_correct([s], [0, 1])


# --------------------------------------------------------------------------------------------
# Bits per byte
# --------------------------------------------------------------------------------------------


def test_bits_per_byte_formula():
    assert ev.bits_per_byte(10 * math.log(2), 10) == pytest.approx(1.0)
    assert ev.bits_per_byte(0, 3) == 0.0
    with pytest.raises(ValueError, match="n_bytes must be an int >= 1"):
        ev.bits_per_byte(1.0, 0)
    with pytest.raises(ValueError, match="finite number >= 0"):
        ev.bits_per_byte(-1.0, 5)


def test_text_bits_per_byte_two_derivations(tiny):
    ids = torch.randint(
        0, TINY.vocab_size, (20,), generator=torch.Generator().manual_seed(0)
    )
    n_bytes = 57
    got = ev.text_bits_per_byte(tiny, ids, n_bytes)
    logits = tiny(ids[None])[0].detach()
    mean_ce = F.cross_entropy(logits[:-1], ids[1:]).item()  # nats per predicted token
    n_pred = len(ids) - 1  # the first token is not predicted
    assert got == pytest.approx(mean_ce * n_pred / n_bytes / math.log(2), rel=1e-5)
    ppl = math.exp(mean_ce)
    assert got == pytest.approx(math.log2(ppl) * n_pred / n_bytes, rel=1e-5)
    assert ev.text_bits_per_byte(HFStyle(tiny), ids.tolist(), n_bytes) == pytest.approx(
        got
    )


def test_uniform_byte_model_scores_eight_bits_per_byte():
    model = Unigram([1 / 256] * 256)  # tokens are bytes, all equally likely
    text = "héllo wörld"
    ids = [0] + list(text.encode("utf-8"))  # id 0 as BOS: every byte is predicted
    got = ev.text_bits_per_byte(model, ids, len(text.encode("utf-8")))
    assert got == pytest.approx(8.0)


def test_text_bits_per_byte_errors(tiny):
    with pytest.raises(ValueError, match="at least 2 tokens"):
        ev.text_bits_per_byte(tiny, [5], 1)
    with pytest.raises(ValueError, match="more than max_tokens=4"):
        ev.text_bits_per_byte(tiny, [1, 2, 3, 4, 5], 5, max_tokens=4)
    with pytest.raises(
        ValueError, match="more than max_tokens=24"
    ):  # the model's context
        ev.text_bits_per_byte(tiny, [1] * 25, 25)
    with pytest.raises(ValueError, match="n_bytes"):
        ev.text_bits_per_byte(tiny, [1, 2], 0)


# --------------------------------------------------------------------------------------------
# Contamination
# --------------------------------------------------------------------------------------------


def test_ngram_overlap_hand_example():
    train = ["The quick brown fox jumps over the lazy dog.", "Paris is in France"]
    evals = [
        "A QUICK brown fox jumps high",  # shares "quick brown fox" (3-gram)
        "Nothing in common here at all",
        "Is Paris?",  # 2 words < n: matched as one 2-gram; "is paris" is not in training
        "paris is",  # ... "paris is" is
        "...",  # no word: overlap 0, not flagged
    ]
    c = ev.ngram_overlap(evals, train, n=3)
    assert c.n == 3
    assert c.flagged == [0, 3]
    assert c.fraction == pytest.approx(2 / 5)
    # item 0's 3-grams: a quick brown / quick brown fox / brown fox jumps / fox jumps high
    assert c.overlaps == pytest.approx([2 / 4, 0.0, 0.0, 1.0, 0.0])


def test_ngram_overlap_agrees_with_substring_search():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(12)]
    train = [" ".join(rng.choice(vocab, size=30)) for _ in range(5)]
    evals = [
        " ".join(rng.choice(vocab, size=int(rng.integers(1, 10)))) for _ in range(40)
    ]
    n = 3
    c = ev.ngram_overlap(evals, train, n=n)
    padded = [f" {t} " for t in train]
    for i, text in enumerate(evals):
        words = text.split()
        k = min(n, len(words))
        grams = [" ".join(words[j : j + k]) for j in range(len(words) - k + 1)]
        found = [any(f" {g} " in t for t in padded) for g in grams]
        assert c.overlaps[i] == pytest.approx(sum(found) / len(grams))
        assert (i in c.flagged) == any(found)
    assert 0 < len(c.flagged) < len(evals)


def test_ngram_overlap_custom_tokenize_and_errors():
    c = ev.ngram_overlap(["a-b c"], ["A-B C"], n=2, tokenize=str.split)
    assert c.flagged == []  # case kept by str.split
    assert ev.ngram_overlap(["a-b c"], ["A-B C"], n=2).flagged == [0]
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        ev.ngram_overlap(["a"], ["a"], n=0)
    with pytest.raises(ValueError, match="eval_texts is empty"):
        ev.ngram_overlap([], ["a"])
    with pytest.raises(ValueError, match="train_texts is empty"):
        ev.ngram_overlap(["a"], [])
    with pytest.raises(TypeError, match="list of str"):
        ev.ngram_overlap("a text", ["a"])
    with pytest.raises(TypeError, match="tokenize must be a function"):
        ev.ngram_overlap(["a"], ["a"], tokenize=3)
