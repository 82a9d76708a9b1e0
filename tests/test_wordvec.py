"""Tests for utils.wordvec: the SGNS loss, the samplers, training and the vector queries."""

import math

import pytest
import torch
import torch.nn.functional as F

from utils import wordvec


def test_sgns_loss_matches_explicit_formula_and_bce():
    g = torch.Generator().manual_seed(1)
    v, u, noise = (
        torch.randn(6, 8, generator=g),
        torch.randn(6, 8, generator=g),
        torch.randn(6, 3, 8, generator=g),
    )
    loss = wordvec.sgns_loss(v, u, noise)
    assert loss.shape == (6,)
    # −log σ(u_o·v_c) − Σ_k log σ(−u_k·v_c), written with plain exp/log, pair by pair
    for b in range(6):
        expected = -math.log(1 / (1 + math.exp(-float(u[b] @ v[b]))))
        for k in range(3):
            expected -= math.log(1 / (1 + math.exp(float(noise[b, k] @ v[b]))))
        assert loss[b].item() == pytest.approx(expected, rel=1e-5)
    # the same loss is a binary cross-entropy: label 1 for the context word, 0 for the noise
    logits = torch.cat(
        [(u * v).sum(-1, keepdim=True), (noise @ v.unsqueeze(-1)).squeeze(-1)], 1
    )
    labels = torch.zeros_like(logits)
    labels[:, 0] = 1
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").sum(-1)
    torch.testing.assert_close(loss, bce)


def test_sgns_loss_rejects_bad_shapes():
    with pytest.raises(ValueError):
        wordvec.sgns_loss(torch.zeros(2, 4), torch.zeros(2, 5), torch.zeros(2, 1, 4))
    with pytest.raises(ValueError):
        wordvec.sgns_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4))


def test_negative_sampler_follows_unigram_to_the_three_quarters():
    counts = torch.tensor([1000, 100, 10, 1, 0])
    sampler = wordvec.NegativeSampler(counts)
    expected = counts.double() ** 0.75
    expected /= expected.sum()
    torch.testing.assert_close(sampler.probs.double(), expected, atol=1e-7, rtol=1e-6)
    draws = sampler.sample((200_000,), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    assert freq[4] == 0  # a word never seen is never drawn
    # within 4 standard errors of the binomial proportion
    se = (expected * (1 - expected) / draws.numel()).sqrt()
    assert ((freq - expected).abs() <= 4 * se + 1e-12).all(), (freq, expected)
    # and clearly not the plain unigram distribution
    assert freq[0] < 0.85 < counts[0] / counts.sum()


def test_negative_sampler_power_zero_is_uniform_and_checks_input():
    sampler = wordvec.NegativeSampler([5, 1, 1, 9], power=0)
    torch.testing.assert_close(sampler.probs, torch.full((4,), 0.25))
    assert sampler.sample((3, 2)).shape == (3, 2)
    for bad in ([], [-1, 2], [0, 0]):
        with pytest.raises(ValueError):
            wordvec.NegativeSampler(bad)
    with pytest.raises(ValueError):
        wordvec.NegativeSampler([1, 2], power=-1)


def test_subsampling_keeps_rare_words_and_thins_frequent_ones():
    counts = torch.tensor([9_000, 900, 90, 10])
    keep = wordvec.subsample_keep_probability(counts, threshold=0.01)
    freq = counts / counts.sum()
    torch.testing.assert_close(keep[:2], (0.01 / freq[:2]).sqrt().float())
    assert keep[2:].tolist() == [1.0, 1.0]  # f <= t: always kept


def test_skipgram_pairs_window_one_and_shrinking_window():
    ids = torch.tensor([10, 11, 12, 13])
    centers, contexts = wordvec.skipgram_pairs(ids, window=1)
    pairs = set(zip(centers.tolist(), contexts.tolist(), strict=True))
    assert pairs == {(10, 11), (11, 12), (12, 13), (11, 10), (12, 11), (13, 12)}
    # distance δ is kept with probability (window − δ + 1) / window
    stream = torch.arange(20_000)
    c, o = wordvec.skipgram_pairs(
        stream, window=4, generator=torch.Generator().manual_seed(0)
    )
    distance = (c - o).abs()
    assert distance.min() == 1 and distance.max() == 4
    for delta in range(1, 5):
        share = (distance == delta).sum().item() / (2 * (stream.numel() - delta))
        assert share == pytest.approx((4 - delta + 1) / 4, abs=0.02)


def _planted_corpus(n_lines=600, seed=0):
    """Animals and vehicles share no contexts: 'the cat eats', 'a car drives', ..."""
    g = torch.Generator().manual_seed(seed)
    groups = [
        (["cat", "dog", "horse"], ["eats", "sleeps", "runs"]),
        (["car", "truck", "bus"], ["drives", "parks", "stalls"]),
    ]
    words = []
    for _ in range(n_lines):
        nouns, verbs = groups[int(torch.randint(2, (1,), generator=g))]
        words += [nouns[int(torch.randint(3, (1,), generator=g))]]
        words += [verbs[int(torch.randint(3, (1,), generator=g))], "."]
    vocab = sorted(set(words))
    stoi = {w: i for i, w in enumerate(vocab)}
    ids = torch.tensor([stoi[w] for w in words])
    return ids, torch.bincount(ids, minlength=len(vocab)), vocab, stoi


def test_training_reduces_the_loss_and_finds_planted_neighbours():
    ids, counts, vocab, stoi = _planted_corpus()
    model, history = wordvec.train_sgns(
        ids,
        counts,
        dim=16,
        window=1,
        negatives=3,
        batch_size=64,
        lr=0.05,
        epochs=8,
        subsample=None,
        seed=0,
        log_every=5,
    )
    assert history.losses[-1] < 0.7 * history.losses[0]
    assert history.pairs_seen > 0 and history.epochs == pytest.approx(8.0)
    for word, group in (("cat", {"dog", "horse"}), ("truck", {"car", "bus"})):
        found, sims = wordvec.nearest_neighbours(model.vectors, stoi[word], k=2)
        assert {vocab[i] for i in found} == group
        assert sims[0] >= sims[1]
    # same seed, same vectors
    again, _ = wordvec.train_sgns(
        ids,
        counts,
        dim=16,
        window=1,
        negatives=3,
        batch_size=64,
        lr=0.05,
        epochs=8,
        subsample=None,
        seed=0,
        log_every=5,
    )
    torch.testing.assert_close(again.vectors, model.vectors)


def test_train_sgns_stops_at_max_pairs_and_checks_arguments():
    ids, counts, _, _ = _planted_corpus(100)
    _, history = wordvec.train_sgns(
        ids, counts, dim=4, batch_size=10, max_pairs=35, epochs=5
    )
    assert history.pairs_seen == 35
    _, _ = wordvec.train_sgns(ids, counts, dim=4, max_pairs=10, threads=2)
    assert torch.get_num_threads() == 1  # restored (conftest runs tests on one thread)
    with pytest.raises(ValueError):
        wordvec.train_sgns(ids, counts[:-1], dim=4)  # an id without a count
    with pytest.raises(ValueError):
        wordvec.train_sgns(ids, counts, dim=0)


def test_analogy_and_accuracy_on_planted_vectors():
    # man, woman, king, queen, apple: queen = king − man + woman exactly; apple is a distractor
    vectors = torch.tensor(
        [
            [1.0, 0.0, 0.0],
            [0.0, 1.0, 0.0],
            [1.0, 0.0, 1.0],
            [0.0, 1.0, 1.0],
            [0.3, 0.3, -1.0],
        ]
    )
    ids, sims = wordvec.analogy(vectors, 0, 1, 2, k=2)
    assert ids[0] == 3 and sims[0] > sims[1]
    assert wordvec.analogy_accuracy(vectors, [(0, 1, 2, 3), (0, 1, 2, 4)]) == 0.5
    found, _ = wordvec.nearest_neighbours(vectors, 2, k=4)
    assert 2 not in found and len(found) == 4
    with pytest.raises(ValueError):
        wordvec.nearest_neighbours(vectors, 9)
