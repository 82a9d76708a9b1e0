"""Tests for utils.textmetrics: diversity, repetition, BLEU and SQuAD answer scores."""

from __future__ import annotations

import math

import pytest

from utils import textmetrics as tm


def test_ngrams():
    assert tm.ngrams("a b c".split(), 2) == [("a", "b"), ("b", "c")]
    assert tm.ngrams(["a"], 2) == []
    with pytest.raises(ValueError, match="n must be"):
        tm.ngrams(["a"], 0)


def test_distinct_n_pools_the_samples():
    samples = ["the cat sat".split(), "the cat ran".split()]
    assert tm.distinct_n(samples, 1) == 4 / 6  # the, cat, sat, ran out of 6 words
    assert tm.distinct_n(samples, 2) == 3 / 4  # (the, cat) twice
    assert tm.distinct_n([["a"] * 5], 1) == 1 / 5
    assert math.isnan(tm.distinct_n([["a"]], 2))


def test_repetition_rate_is_per_sample():
    # "a b a b a": bigrams ab ba ab ba -> 2 distinct of 4 -> 0.5; "x y z": 0
    samples = ["a b a b a".split(), "x y z".split(), ["q"]]
    assert tm.repetition_rate(samples, 2) == pytest.approx((0.5 + 0.0) / 2)
    assert tm.repetition_rate([["a", "a", "a", "a"]], 1) == pytest.approx(0.75)
    assert math.isnan(tm.repetition_rate([["a"]], 2))


def test_samples_must_be_tokenised():
    with pytest.raises(TypeError, match="split the text first"):
        tm.distinct_n(["a sentence", "another"], 1)
    with pytest.raises(TypeError):
        tm.repetition_rate("a b c", 1)


def test_bleu_by_hand():
    reference = "the cat is on the mat".split()
    assert tm.bleu(reference, [reference]) == pytest.approx(1.0)
    # Papineni et al.'s clipping example: "the" x 7 against a reference with two "the".
    seven = ["the"] * 7
    refs = ["the cat is on the mat".split(), "there is a cat on the mat".split()]
    assert tm.bleu(seven, refs, max_n=1) == pytest.approx(2 / 7)
    # Unigram precision 1, bigram 2/3 on a 4-word hypothesis; reference 6 words -> BP e^(1-6/4).
    hyp = "the cat is here".split()
    p1, p2 = (
        3 / 4,
        2 / 3,
    )  # "here" unmatched; bigrams: the cat, cat is match, is here not
    expected = math.exp(1 - 6 / 4) * math.sqrt(p1 * p2)
    assert tm.bleu(hyp, [reference], max_n=2) == pytest.approx(expected)
    # No 4-gram match: 0 without smoothing, small but positive with it.
    assert tm.bleu(hyp, [reference], smoothing=0) == 0.0
    assert 0 < tm.bleu(hyp, [reference]) < expected
    assert tm.bleu([], [reference]) == 0.0


def test_bleu_brevity_uses_the_closest_reference():
    hyp = "a b c d".split()
    near, far = "a b c d e".split(), "a b c d e f g h i j".split()
    assert tm.bleu(hyp, [near, far], max_n=1) == pytest.approx(math.exp(1 - 5 / 4))


def test_self_bleu():
    same = [["a", "b", "c", "d", "e"]] * 3
    assert tm.self_bleu(same) == pytest.approx(1.0)
    different = ["a b c d e".split(), "f g h i j".split(), "k l m n o".split()]
    assert tm.self_bleu(different, smoothing=0) == 0.0
    with pytest.raises(ValueError, match="at least 2"):
        tm.self_bleu([["a"]])


def test_squad_scores():
    assert tm.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert tm.exact_match("the Eiffel tower.", ["Eiffel Tower"])
    assert not tm.exact_match("It is the Eiffel Tower.", ["Eiffel Tower"])
    assert tm.token_f1("It is the Eiffel Tower.", "Eiffel Tower") == pytest.approx(
        2 * (2 / 4) * 1 / (2 / 4 + 1)
    )
    assert tm.token_f1("Paris", ["London", "paris"]) == 1.0
    assert tm.token_f1("", ["x"]) == 0.0
    assert tm.answer_in_text("It is the Eiffel Tower.", ["Eiffel Tower"])
    assert not tm.answer_in_text("Eiffel Towers", ["Eiffel Tower"])  # whole words only
    with pytest.raises(ValueError, match="accepted answers"):
        tm.exact_match("x", [])
