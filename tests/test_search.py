"""Tests for utils.search: mean pooling, embeddings, the index and k-means."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from utils import search


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(
        search.mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]])
    )
    with pytest.raises(ValueError, match="no real token"):
        search.mean_pool(hidden, torch.zeros(1, 3))
    with pytest.raises(ValueError, match="expected hidden"):
        search.mean_pool(hidden[0], mask)


class _WordsEncoder(torch.nn.Module):
    """A stand-in encoder: each token id's one-hot vector is its hidden state."""

    def __init__(self, width):
        super().__init__()
        self.config = type("Config", (), {"hidden_size": width})()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask):
        hidden = torch.nn.functional.one_hot(input_ids, self.config.hidden_size).float()
        return type("Out", (), {"last_hidden_state": hidden})()


class _WordsTokenizer:
    def __init__(self, words):
        self.ids = {w: i + 1 for i, w in enumerate(words)}  # 0 = padding

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        rows = [[self.ids[w] for w in t.split()][:max_length] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])

        class Batch(dict):
            def to(self, device):
                return self

        return Batch(input_ids=ids, attention_mask=mask)


@pytest.fixture
def toy():
    words = "cats dogs pets stocks bonds markets".split()
    return _WordsEncoder(len(words) + 1), _WordsTokenizer(words)


def test_embed_texts_keeps_order_and_unit_length(toy):
    model, tokenizer = toy
    texts = ["cats dogs pets", "stocks", "bonds markets", "cats"]
    out = search.embed_texts(model, tokenizer, texts, batch_size=2)
    assert out.shape == (4, 7)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(
        out[1], torch.nn.functional.one_hot(torch.tensor(4), 7).float()
    )
    first = search.embed_texts(model, tokenizer, texts[:1])
    torch.testing.assert_close(out[:1], first)  # batching and sorting change nothing
    short = search.embed_texts(model, tokenizer, ["cats dogs pets"], max_length=1)
    torch.testing.assert_close(short, out[3:])  # cut to its first token: "cats"
    with pytest.raises(ValueError, match="empty"):
        search.embed_texts(model, tokenizer, [])
    with pytest.raises(TypeError):
        search.embed_texts(model, tokenizer, "cats")


def test_index_finds_the_nearest(toy):
    model, tokenizer = toy
    docs = ["cats dogs", "stocks bonds", "pets", "markets"]
    index = search.SemanticIndex(
        lambda texts: search.embed_texts(model, tokenizer, texts), docs
    )
    hits = index.search("cats pets", k=2)
    # query (cats + pets) / sqrt 2: cosine 1/sqrt 2 with "pets", 1/2 with "cats dogs"
    assert [(h.index, h.text) for h in hits] == [(2, "pets"), (0, "cats dogs")]
    assert [h.score for h in hits] == pytest.approx([2**-0.5, 0.5])
    assert len(index.search("bonds", k=10)) == 4  # k above the size: everything
    with pytest.raises(ValueError, match="k must be"):
        index.search("bonds", k=0)
    with pytest.raises(ValueError, match="shape"):
        search.SemanticIndex(lambda t: torch.ones(len(t), 2), docs, torch.ones(3, 2))


def test_kmeans_separates_blobs_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + torch.randn(50, 2, generator=g) for c in centres])
    labels, found = search.kmeans(x, 3, seed=1)
    for block in labels.view(3, 50):
        assert len(set(block.tolist())) == 1  # each blob is one cluster
    assert len(set(labels.tolist())) == 3
    order = found[:, 0] * 100 + found[:, 1]
    torch.testing.assert_close(
        found[order.argsort()], centres[[0, 2, 1]], atol=0.5, rtol=0
    )
    again, _ = search.kmeans(x, 3, seed=1)
    assert torch.equal(labels, again)
    with pytest.raises(ValueError, match="at least 4 points"):
        search.kmeans(x[:3], 4)


@pytest.mark.slow
def test_embed_texts_equals_sentence_transformers():
    """The same vectors as the reference implementation of all-MiniLM-L6-v2's pooling."""
    if importlib.util.find_spec("sentence_transformers") is None:
        pytest.skip("sentence-transformers is not installed")
    from sentence_transformers import SentenceTransformer

    from utils import pretrained

    model, tokenizer = pretrained.load_minilm(output_attentions=False)
    texts = ["A man is playing a guitar.", "The bank raised rates.", "Short."]
    ours = search.embed_texts(model, tokenizer, texts)
    reference = SentenceTransformer(str(pretrained.minilm_path()), device="cpu")
    theirs = torch.tensor(reference.encode(texts))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
