"""utils.export: a classifier exported by one notebook predicts the same when loaded by another."""

import json

import pytest
import torch

from utils import export, finetune
from utils.models import TransformerClassifier

ITOS = ["<pad>", "<unk>", "the", "film", "was", "great", "bad", "a", "plot", "."]
KWARGS = dict(num_classes=2, d_model=16, n_heads=2, n_layers=1, max_len=32, dropout=0.0)


def _word_model():
    torch.manual_seed(0)
    return TransformerClassifier(len(ITOS), pad_idx=0, pooling="mean", **KWARGS).eval()


def _export_word(tmp_path, model, head=4, tail=2):
    kwargs = dict(KWARGS, pad_idx=0, pooling="mean")
    return export.export_word_classifier(
        tmp_path / "word",
        model,
        kwargs,
        ITOS,
        head_tokens=head,
        tail_tokens=tail,
        info={"test_accuracy": 0.5},
    )


def test_word_export_round_trip_matches_the_model(tmp_path):
    model = _word_model()
    loaded = export.load_classifier(_export_word(tmp_path, model))
    assert loaded.kind == "word" and loaded.info == {"test_accuracy": 0.5}
    texts = [
        "The film was great.",
        "A bad, bad plot<br />zzz unknown words here",
        "great",
    ]
    probs = loaded.predict_proba(texts, batch_size=2)
    assert probs.shape == (3, 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    index = {t: i for i, t in enumerate(ITOS)}
    from utils.text import get_tokenizer

    tokenize = get_tokenizer("basic_english")
    for row, text in enumerate(texts):
        ids = [index.get(t, 1) for t in tokenize(text)]  # exported without clean_html
        ids = export.cut_head_tail(ids, 4, 2)
        with torch.no_grad():
            expected = torch.softmax(model(torch.tensor([ids])), -1)[0]
        torch.testing.assert_close(
            probs[row], expected
        )  # padding in a batch changes nothing


def test_cut_head_tail():
    assert export.cut_head_tail(range(10), 3, 2) == [0, 1, 2, 8, 9]
    assert export.cut_head_tail(range(10), 3, 0) == [0, 1, 2]
    assert export.cut_head_tail(range(4), 3, 2) == [0, 1, 2, 3]


def test_hf_export_round_trip_matches_the_model(
    tmp_path, minilm_tokenizer, tiny_bert_config
):
    from transformers import BertForSequenceClassification

    tokenizer = minilm_tokenizer
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=2)).eval()
    folder = export.export_hf_classifier(
        tmp_path / "hf", model, tokenizer, max_length=12, head_tokens=4, info={"n": 1}
    )
    loaded = export.load_classifier(folder)
    assert loaded.kind == "hf" and loaded.info == {"n": 1}
    texts = ["a fine<br />film", "a long review " * 20 + "that ends badly"]
    probs = loaded.predict_proba(texts)
    ids, _ = finetune.encode_head_tail(
        tokenizer, [export.clean_review(t) for t in texts], 12, 4
    )
    with torch.no_grad():
        for row, x in enumerate(ids):
            logits = model(input_ids=torch.tensor([x])).logits
            torch.testing.assert_close(probs[row], torch.softmax(logits, -1)[0])


def test_bad_exports_and_inputs_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no classifier export"):
        export.load_classifier(tmp_path / "missing")
    folder = _export_word(tmp_path, _word_model())
    meta = json.loads((folder / "export.json").read_text())
    (folder / "export.json").write_text(json.dumps(dict(meta, format=99)))
    with pytest.raises(ValueError, match="format 99"):
        export.load_classifier(folder)
    (folder / "export.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        export.load_classifier(folder)
    with pytest.raises(ValueError, match="no '<unk>' token"):
        export.export_word_classifier(
            tmp_path / "x",
            _word_model(),
            {},
            ["<pad>", "a"],
            head_tokens=1,
            tail_tokens=1,
        )
    with pytest.raises(ValueError, match="plain name"):
        export.export_dir("../05a", "book")
    loaded = export.load_classifier(_export_word(tmp_path, _word_model()))
    with pytest.raises(TypeError, match="not one string"):
        loaded.predict_proba("one review")
    assert loaded.predict_proba([]).shape == (0, 2)


def test_export_replaces_an_older_one_and_leaves_no_temporary_folder(tmp_path):
    _export_word(tmp_path, _word_model(), head=4, tail=2)
    folder = _export_word(tmp_path, _word_model(), head=5, tail=1)
    assert json.loads((folder / "export.json").read_text())["head_tokens"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["word"]
    assert export.export_dir("05a_imdb_classifier", "book").as_posix() == (
        "checkpoints/exports/05a_imdb_classifier_book"
    )
