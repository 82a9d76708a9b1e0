"""Tests for utils.hub_tasks on tiny random models (the real hub models need a network).

What is checked: the span search of extractive QA, the character mapping back into the passage,
truncation flags, and the argument checks of the loader. The offline failure of a hub name is
tested with the other bad inputs in tests/test_decoding.py.
"""

from __future__ import annotations

import pytest
import torch

from utils import hub_tasks, pretrained

transformers = pytest.importorskip("transformers")


def test_best_span_by_brute_force():
    g = torch.Generator().manual_seed(0)
    start, end = torch.randn(12, generator=g), torch.randn(12, generator=g)
    allowed = torch.tensor([False] * 4 + [True] * 7 + [False])
    s, e, score = hub_tasks.best_span(start, end, allowed, max_answer_tokens=3)
    candidates = [
        (float(start[i] + end[j]), i, j)
        for i in range(12)
        for j in range(i, min(i + 3, 12))
        if allowed[i] and allowed[j]
    ]
    best = max(candidates)
    assert (s, e) == best[1:] and score == pytest.approx(best[0])


def test_best_span_never_ends_before_it_starts():
    start = torch.tensor([0.0, 0.0, 9.0])
    end = torch.tensor([9.0, 0.0, 0.0])
    s, e, _ = hub_tasks.best_span(start, end, torch.ones(3, dtype=torch.bool))
    assert s <= e
    with pytest.raises(ValueError, match="no allowed position"):
        hub_tasks.best_span(start, end, torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="max_answer_tokens"):
        hub_tasks.best_span(start, end, torch.ones(3, dtype=torch.bool), 0)


def test_extractive_answer_is_a_piece_of_the_passage(
    minilm_tokenizer, tiny_bert_config
):
    torch.manual_seed(0)
    model = transformers.BertForQuestionAnswering(tiny_bert_config()).eval()
    passage = "The Eiffel Tower was finished in 1889 for the World's Fair in Paris."
    answer, score, truncated = hub_tasks.extractive_answer(
        model, minilm_tokenizer, "When was it finished?", passage, max_answer_tokens=4
    )
    assert answer and answer in passage and not truncated
    assert len(minilm_tokenizer(answer, add_special_tokens=False)["input_ids"]) <= 4
    _, _, truncated = hub_tasks.extractive_answer(
        model, minilm_tokenizer, "When?", passage * 40, max_length=64
    )
    assert truncated


def test_seq2seq_generate_runs_and_flags_truncation(minilm_tokenizer):
    config = transformers.T5Config(
        vocab_size=minilm_tokenizer.vocab_size,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=minilm_tokenizer.pad_token_id,
        pad_token_id=minilm_tokenizer.pad_token_id,
        eos_token_id=minilm_tokenizer.sep_token_id,
    )
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(config).eval()
    out, truncated = hub_tasks.seq2seq_generate(
        model, minilm_tokenizer, "summarize: a short text.", max_new_tokens=5
    )
    assert isinstance(out, str) and not truncated
    _, truncated = hub_tasks.seq2seq_generate(
        model, minilm_tokenizer, "word " * 100, max_new_tokens=2, max_length=16
    )
    assert truncated


@pytest.mark.parametrize(
    ("name", "task", "match"),
    [
        ("", "seq2seq", "non-empty model name"),
        ("t5-small", "translation", "task must be one of"),
        (pretrained.SMOLLM2_NAME, "seq2seq", "load_pretrained"),
    ],
)
def test_load_task_model_checks_its_arguments(name, task, match):
    with pytest.raises(ValueError, match=match):
        hub_tasks.load_task_model(name, task)
