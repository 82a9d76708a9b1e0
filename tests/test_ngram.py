"""Tests for utils.ngram: probabilities, perplexity against brute force, sampling, arguments."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from utils.ngram import BOS, EOS, UNK, NGramLM

TRAIN = [
    ["the", "cat", "sat"],
    ["the", "dog", "sat", "down"],
    ["a", "cat", "saw", "the", "dog"],
    ["the", "cat", "sat", "down"],
    ["dog", "dog"],
]
TEST = [["the", "cat", "saw", "a", "bird"], ["down", "the", "dog", "sat"], []]


# ---------------------------------------------------------------- a brute-force reference


def _padded(sentence, n):
    return (
        [BOS] * (n - 1) + [w if w in _vocab_words() else UNK for w in sentence] + [EOS]
    )


def _vocab_words():
    return {w for s in TRAIN for w in s} | {EOS, UNK}


def reference_prob(word, history, n, discount, kneser_ney=True):
    """Interpolated KN / absolute discounting written straight from the definitions, by
    scanning the list of training n-gram occurrences (slow, independent of the model's tables)."""
    vocab = sorted(_vocab_words())
    events = []
    for s in TRAIN:
        p = _padded(s, n)
        events += [tuple(p[i - n + 1 : i + 1]) for i in range(n - 1, len(p))]

    def count(gram):  # the count used at level len(gram)
        k = len(gram)
        matches = [e for e in events if e[n - k :] == gram]
        if k == n or not kneser_ney or gram[0] == BOS:
            return len(matches)
        return len({e[n - k - 1] for e in matches})  # distinct left neighbours

    def prob(w, h):
        lower = prob(w, h[1:]) if h else 1.0 / len(vocab)
        counts = {v: count(h + (v,)) for v in vocab}
        denom = sum(counts.values())
        if denom == 0:
            return lower
        types = sum(c > 0 for c in counts.values())
        return (max(counts[w] - discount, 0) + discount * types * lower) / denom

    return prob(word, tuple(history))


def reference_perplexity(n, discount, kneser_ney=True):
    logp, tokens = 0.0, 0
    for s in TEST:
        p = _padded(s, n)
        for i in range(n - 1, len(p)):
            logp += math.log(
                reference_prob(p[i], p[i - n + 1 : i], n, discount, kneser_ney)
            )
            tokens += 1
    return math.exp(-logp / tokens)


# ---------------------------------------------------------------- distributions sum to one

CONTEXTS = [
    [],  # start of a sentence
    ["the"],  # seen
    ["the", "cat"],  # seen bigram context
    ["cat", "the"],  # unseen bigram context of seen words
    ["zebra"],  # unknown word -> <unk>, never seen as context
    ["saw", "the", "dog", "sat"],  # longer than needed: only the tail counts
    [BOS, "dog"],
]


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize(
    "smoothing,kwargs",
    [
        ("kneser-ney", {}),
        ("kneser-ney", {"discount": 0.3}),
        ("absolute", {}),
        ("add-k", {"k": 0.1}),
    ],
)
def test_distribution_sums_to_one(order, smoothing, kwargs):
    lm = NGramLM(order, smoothing=smoothing, **kwargs).fit(TRAIN)
    for context in CONTEXTS:
        dist = lm.distribution(context)
        assert set(dist) == set(lm.vocab) and BOS not in dist
        assert all(p > 0 for p in dist.values())  # smoothing leaves no zero
        assert math.isclose(sum(dist.values()), 1.0, rel_tol=1e-12), (
            context,
            sum(dist.values()),
        )


def test_mle_sums_to_one_for_seen_contexts_and_zero_for_unseen():
    lm = NGramLM(2, smoothing="mle").fit(TRAIN)
    assert math.isclose(sum(lm.distribution(["the"]).values()), 1.0)
    assert sum(lm.distribution(["zebra"]).values()) == 0.0  # context never seen


# ---------------------------------------------------------------- against brute force


@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("kneser_ney", [True, False])
def test_probabilities_and_perplexity_match_brute_force(order, kneser_ney):
    smoothing = "kneser-ney" if kneser_ney else "absolute"
    lm = NGramLM(order, smoothing=smoothing, discount=0.75).fit(TRAIN)
    for context in CONTEXTS:
        hist = lm._context_ids(context)
        history = tuple(BOS if i < 0 else lm.vocab[i] for i in hist)
        for word in lm.vocab:
            assert math.isclose(
                lm.prob(word, context),
                reference_prob(word, history, order, 0.75, kneser_ney),
                rel_tol=1e-12,
            ), (word, context)
    assert math.isclose(
        lm.perplexity(TEST),
        reference_perplexity(order, 0.75, kneser_ney),
        rel_tol=1e-12,
    )


def test_perplexity_is_exp_of_mean_negative_logprob_over_words_and_eos():
    lm = NGramLM(3).fit(TRAIN)
    logps = []
    for s in TEST:
        for t, w in enumerate(s + [EOS]):
            logps.append(lm.logprob(w, s[:t]))
    assert len(logps) == sum(len(s) + 1 for s in TEST)
    assert math.isclose(
        lm.perplexity(TEST), math.exp(-sum(logps) / len(logps)), rel_tol=1e-12
    )
    assert math.isclose(lm.cross_entropy(TEST), -sum(logps) / len(logps), rel_tol=1e-12)


def test_estimated_discount_is_ney_formula():
    lm = NGramLM(2).fit(TRAIN)
    bigrams = Counter()
    for s in TRAIN:
        p = _padded(s, 2)
        bigrams.update(zip(p[:-1], p[1:], strict=True))
    n1 = sum(c == 1 for c in bigrams.values())
    n2 = sum(c == 2 for c in bigrams.values())
    assert math.isclose(lm.discounts[2], n1 / (n1 + 2 * n2))
    assert lm.num_ngrams(2) == len(bigrams)


def test_add_k_matches_formula():
    lm = NGramLM(2, smoothing="add-k", k=0.5).fit(TRAIN)
    v = len(_vocab_words())
    # "the" is followed by cat, dog, cat, dog in training: c(the)=4, c(the cat)=2
    assert math.isclose(lm.prob("cat", ["the"]), (2 + 0.5) / (4 + 0.5 * v))
    assert math.isclose(lm.prob("sat", ["the"]), 0.5 / (4 + 0.5 * v))
    assert math.isclose(lm.prob("sat", ["zebra"]), 1 / v)  # unseen context: uniform


# ---------------------------------------------------------------- maximum likelihood


def test_order_one_mle_is_relative_frequency():
    lm = NGramLM(1, smoothing="mle").fit(TRAIN)
    counts = Counter(w for s in TRAIN for w in s + [EOS])
    total = sum(counts.values())
    for word in lm.vocab:
        assert lm.prob(word, ["anything"]) == counts[word] / total
    assert lm.prob(UNK) == 0.0


def test_mle_gives_zero_to_unseen_ngrams_and_infinite_perplexity():
    lm = NGramLM(2, smoothing="mle").fit(TRAIN)
    assert lm.prob("sat", ["dog"]) == pytest.approx(
        1 / 4
    )  # dog -> sat, dog, </s>, </s>
    assert lm.prob("cat", ["dog"]) == 0.0
    assert lm.logprob("cat", ["dog"]) == -math.inf
    assert lm.perplexity(TEST) == math.inf
    assert math.isfinite(lm.perplexity(TRAIN))
    # the unseen bigrams of TEST, counted by hand from the padded sentences
    seen = {
        (a, b)
        for s in TRAIN
        for a, b in zip(_padded(s, 2)[:-1], _padded(s, 2)[1:], strict=True)
    }
    test_bigrams = [
        (a, b)
        for s in TEST
        for a, b in zip(_padded(s, 2)[:-1], _padded(s, 2)[1:], strict=True)
    ]
    expected = sum(bg not in seen for bg in test_bigrams) / len(test_bigrams)
    assert lm.unseen_rate(TEST) == pytest.approx(expected)


# ---------------------------------------------------------------- generation


def test_generate_is_seeded_and_uses_the_vocabulary():
    lm = NGramLM(3).fit(TRAIN)
    a, b = lm.generate(seed=1), lm.generate(seed=1)
    assert a == b
    assert all(w in lm.vocab and w not in (BOS, EOS) for w in a)
    assert len(lm.generate(max_words=2, seed=3, prefix=["the"])) <= 2
    assert lm.generate(max_words=1, prefix=["the"]) == ["the"]


@pytest.mark.parametrize("smoothing", ["kneser-ney", "add-k", "mle"])
def test_sampling_follows_the_distribution(smoothing):
    # The first word of a generated sentence is a draw from P(. | <s>); 4000 draws must match
    # the distribution to within sampling noise (binomial sd <= 0.008).
    lm = NGramLM(2, smoothing=smoothing).fit(TRAIN)
    draws = Counter(tuple(lm.generate(max_words=1, seed=s)) for s in range(4000))
    dist = lm.distribution([])
    for word, p in dist.items():
        observed = draws[()] if word == EOS else draws[(word,)]
        assert abs(observed / 4000 - p) < 0.03, (word, observed / 4000, p)


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs",
    [
        {"order": 0},
        {"order": -2},
        {"order": 2.0},
        {"order": True},
        {"order": 2, "smoothing": "witten-bell"},
        {"order": 2, "discount": 0.0},
        {"order": 2, "discount": 1.5},
        {"order": 2, "discount": float("nan")},
        {"order": 2, "smoothing": "add-k", "k": 0},
        {"order": 2, "smoothing": "add-k", "k": float("inf")},
        {"order": 2, "unk_token": EOS},
    ],
)
def test_bad_constructor_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        NGramLM(**kwargs)


def test_bad_training_data_raises():
    lm = NGramLM(2)
    with pytest.raises(ValueError, match="empty"):
        lm.fit([])
    with pytest.raises(TypeError, match="split"):
        lm.fit(["the cat sat"])
    with pytest.raises(TypeError):
        lm.fit("the cat sat")
    with pytest.raises(TypeError):
        lm.fit([["the", 3]])
    with pytest.raises(ValueError, match="boundary"):
        lm.fit([[BOS, "the"]])


def test_bad_queries_raise():
    with pytest.raises(RuntimeError, match="fit"):
        NGramLM(2).prob("the")
    lm = NGramLM(2).fit(TRAIN)
    with pytest.raises(ValueError):
        lm.prob(BOS, ["the"])
    with pytest.raises(TypeError):
        lm.prob("cat", "the")  # a string, not a list of words
    with pytest.raises(TypeError):
        lm.prob(3, ["the"])
    with pytest.raises(ValueError):
        lm.generate(max_words=0)
    with pytest.raises(ValueError):
        lm.num_ngrams(3)
    with pytest.raises(ValueError):
        lm.perplexity([])
