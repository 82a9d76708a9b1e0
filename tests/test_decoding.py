"""Tests for utils.decoding, and every bad input and limit of chapter 6's applications.

The generation loop is checked against the book's ``TransformerLM.generate`` and against
transformers' ``generate`` (greedy and seeded sampling give the same tokens) on tiny random models;
the logit processing against transformers' own logits processors.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from utils import decoding, network, pretrained
from utils.models import TransformerLM, filter_logits

transformers = pytest.importorskip("transformers")
from transformers.generation.logits_process import (  # noqa: E402
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

# --------------------------------------------------------------------------------------------
# Fixtures: tiny models
# --------------------------------------------------------------------------------------------


@pytest.fixture
def book_lm():
    torch.manual_seed(0)
    return TransformerLM(
        vocab_size=40, d_model=16, n_heads=2, n_layers=1, max_len=8
    ).eval()


@pytest.fixture(scope="module")
def tiny_llama():
    """A random 2-layer Llama (SmolLM2's architecture) with a context of 24 tokens."""
    config = transformers.LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=24,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


def _hf_generate(model, ids, n, **kwargs):
    settings = dict(top_k=0, top_p=1.0, temperature=1.0, repetition_penalty=1.0)
    settings.update(kwargs)
    return model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, **settings
    )


# --------------------------------------------------------------------------------------------
# One step: logits processing
# --------------------------------------------------------------------------------------------


def test_repetition_penalty_formula_and_transformers():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 0.0]])
    previous = torch.tensor([[0, 1, 1], [2, 2, 2]])
    out = decoding.apply_repetition_penalty(logits, previous, 2.0)
    expected = torch.tensor([[1.0, -2.0, 0.5, 3.0], [1.0, 1.0, -4.0, 0.0]])
    torch.testing.assert_close(out, expected)
    hf = RepetitionPenaltyLogitsProcessor(2.0)(previous, logits.clone())
    torch.testing.assert_close(out, hf)
    torch.testing.assert_close(
        decoding.apply_repetition_penalty(logits, previous, 1.0), logits
    )
    empty = torch.zeros(2, 0, dtype=torch.long)
    torch.testing.assert_close(
        decoding.apply_repetition_penalty(logits, empty, 3.0), logits
    )


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=0.7),
        dict(top_k=5),
        dict(top_p=0.8),
        dict(temperature=1.3, top_k=10, top_p=0.9, repetition_penalty=1.5),
    ],
)
def test_process_logits_matches_transformers(settings):
    torch.manual_seed(1)
    logits = torch.randn(3, 30) * 2
    previous = torch.randint(0, 30, (3, 6))
    ours = decoding.process_logits(logits, previous, **settings)
    processors = LogitsProcessorList()
    if settings.get("repetition_penalty", 1.0) != 1.0:
        processors.append(
            RepetitionPenaltyLogitsProcessor(settings["repetition_penalty"])
        )
    if "temperature" in settings:
        processors.append(TemperatureLogitsWarper(settings["temperature"]))
    if "top_k" in settings:
        processors.append(TopKLogitsWarper(settings["top_k"]))
    if "top_p" in settings:
        processors.append(TopPLogitsWarper(settings["top_p"]))
    theirs = processors(previous, logits.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    finite = torch.isfinite(ours)
    torch.testing.assert_close(ours[finite], theirs[finite])


def test_process_logits_defaults_change_nothing():
    logits = torch.randn(2, 9)
    torch.testing.assert_close(decoding.process_logits(logits), logits)
    torch.testing.assert_close(
        decoding.process_logits(logits, top_k=3), filter_logits(logits, 3)
    )


def test_next_tokens_greedy_is_argmax_and_top_k_one_too():
    logits = torch.randn(4, 12)
    greedy = decoding.next_tokens(logits, greedy=True)
    assert torch.equal(greedy[:, 0], logits.argmax(-1))
    assert torch.equal(decoding.next_tokens(logits, top_k=1), greedy)
    # The penalty applies to greedy decoding as well: a seen argmax can lose its place.
    previous = greedy.clone()
    penalised = decoding.next_tokens(
        logits, previous, greedy=True, repetition_penalty=1e6
    )
    assert not torch.equal(penalised, greedy)


def test_next_tokens_sampling_frequencies():
    probs = torch.tensor([0.5, 0.3, 0.2])
    logits = probs.log().expand(20_000, 3)
    draws = decoding.next_tokens(logits, generator=torch.Generator().manual_seed(0))[
        :, 0
    ]
    freq = torch.bincount(draws, minlength=3).float() / len(draws)
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)
    nucleus = decoding.next_tokens(
        logits, top_p=0.6, generator=torch.Generator().manual_seed(0)
    )
    assert set(nucleus[:, 0].tolist()) == {
        0,
        1,
    }  # 0.5 < 0.6: the second token is needed


# --------------------------------------------------------------------------------------------
# The loop, against the book's and transformers' generate
# --------------------------------------------------------------------------------------------


def test_generate_matches_transformer_lm_generate(book_lm):
    prompt = torch.tensor([[3, 4, 5], [6, 7, 8]])
    ours = decoding.generate(book_lm, prompt, 12, greedy=True)
    assert torch.equal(ours.ids, book_lm.generate(prompt, 12, greedy=True))
    for settings in (dict(temperature=0.8), dict(top_k=5, top_p=0.9, temperature=1.2)):
        ours = decoding.generate(
            book_lm, prompt, 12, generator=torch.Generator().manual_seed(3), **settings
        )
        theirs = book_lm.generate(
            prompt, 12, generator=torch.Generator().manual_seed(3), **settings
        )
        assert torch.equal(ours.ids, theirs)
    assert (
        ours.prompt_length == 3 and ours.new_ids.shape == (2, 12) and ours.note is None
    )


def test_generate_matches_transformers_generate(tiny_llama):
    prompt = torch.tensor([[5, 6, 7, 8]]).repeat(3, 1)
    eos = [tiny_llama.config.eos_token_id]
    ours = decoding.generate(tiny_llama, prompt, 10, greedy=True, stop_ids=eos)
    assert torch.equal(ours.ids, _hf_generate(tiny_llama, prompt, 10, do_sample=False))
    settings = dict(temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.2)
    torch.manual_seed(5)
    ours = decoding.generate(tiny_llama, prompt, 10, stop_ids=eos, **settings)
    torch.manual_seed(5)
    theirs = _hf_generate(tiny_llama, prompt, 10, do_sample=True, **settings)
    assert torch.equal(ours.ids, theirs)


def test_generate_stops_and_pads_finished_rows(book_lm):
    prompt = torch.tensor([[3, 4, 5]])
    first = int(decoding.generate(book_lm, prompt, 1, greedy=True).new_ids[0, 0])
    out = decoding.generate(book_lm, prompt, 10, greedy=True, stop_ids=[first])
    assert out.new_ids.tolist() == [[first]] and out.finished.tolist() == [True]
    two = torch.tensor([[3, 4, 5], [9, 9, 9]])
    out = decoding.generate(
        book_lm, two, 6, generator=torch.Generator().manual_seed(0), stop_ids=[first]
    )
    for row, done in zip(out.new_ids.tolist(), out.finished.tolist(), strict=True):
        if done:  # everything after the first stop token is the stop token
            assert set(row[row.index(first) :]) == {first}


def test_generate_restores_training_mode(book_lm):
    book_lm.train()
    decoding.generate(book_lm, torch.tensor([[1, 2]]), 2, greedy=True)
    assert book_lm.training


def test_context_length():
    class NoContext(torch.nn.Module):
        pass

    with pytest.raises(TypeError, match="context length"):
        decoding.context_length(NoContext())


def test_chat_prompt_ids_follows_the_template(minilm_tokenizer, monkeypatch):
    tokenizer = minilm_tokenizer  # shared: the template is set for this test only
    template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    monkeypatch.setattr(tokenizer, "chat_template", template, raising=False)
    messages = [{"role": "user", "content": "hello there"}]
    ids, note = decoding.chat_prompt_ids(tokenizer, messages)
    assert note is None
    assert tokenizer.decode(ids[0]).replace(" ", "") == "<user>hellothere<assistant>"
    long = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "word " * 300 + "Question: why?"},
    ]
    ids, note = decoding.chat_prompt_ids(tokenizer, long, max_prompt_tokens=60)
    assert ids.shape[1] <= 60 and "message 1 (user) was cut" in note
    text = tokenizer.decode(ids[0]).replace(" ", "")
    assert text.startswith("<system>answerbriefly.<user>wordword")
    assert "word[...]word" in text and text.endswith("question:why?<assistant>")  # kept


# --------------------------------------------------------------------------------------------
# Bad input and limits: each gives a clear message, at once
# --------------------------------------------------------------------------------------------


def test_empty_prompt(book_lm, tiny_llama):
    for model in (book_lm, tiny_llama):
        with pytest.raises(decoding.EmptyPromptError, match="prompt is empty"):
            decoding.generate(model, torch.zeros(1, 0, dtype=torch.long), 5)
    for content in ("", "   \n"):
        with pytest.raises(decoding.EmptyPromptError, match="has no text"):
            decoding.chat_prompt_ids(None, [{"role": "user", "content": content}])
    assert issubclass(decoding.EmptyPromptError, ValueError)


def test_prompt_longer_than_the_context_is_cut_and_said(book_lm, tiny_llama):
    long = torch.arange(1, 21)[None, :] % 40  # 20 tokens, the book LM reads 8
    out = decoding.generate(book_lm, long, 4, greedy=True)
    assert out.dropped == 12 and out.prompt_length == 8
    assert torch.equal(out.ids[:, :8], long[:, -8:])
    assert "20 tokens" in out.note and "last 8 kept" in out.note
    # The book LM never sees more than its last 8 tokens: same continuation as the full prompt.
    assert torch.equal(out.new_ids, book_lm.generate(long, 4, greedy=True)[:, 20:])
    # With a KV cache, prompt and new tokens share the context of 24: 30 + 6 -> keep 18.
    longer = torch.arange(30)[None, :] % 50
    out = decoding.generate(tiny_llama, longer, 6, greedy=True)
    assert (out.prompt_length, out.dropped, out.ids.shape[1]) == (18, 12, 24)
    assert "context 24" in out.note and "first 12 tokens were dropped" in out.note
    with pytest.raises(ValueError, match="no room for the prompt"):
        decoding.generate(tiny_llama, longer, 24)
    with pytest.raises(ValueError, match="leaves no room"):
        decoding.chat_prompt_ids(
            _TemplateTokenizer(),
            [{"role": "user", "content": "a b c"}],
            max_prompt_tokens=2,
        )


class _TemplateTokenizer:
    """Whitespace tokenizer with a trivial chat template (for the limit test above)."""

    vocab: dict[str, int] = {}

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        return (
            " ".join(f"<{m['role']}> {m['content']}" for m in messages) + " <assistant>"
        )

    def __call__(self, text, add_special_tokens=False):
        return {
            "input_ids": [
                self.vocab.setdefault(w, len(self.vocab)) for w in text.split()
            ]
        }

    def decode(self, ids):
        inverse = {i: w for w, i in self.vocab.items()}
        return " ".join(inverse[i] for i in ids)


@pytest.mark.parametrize(
    "temperature", [0, 0.0, -1.0, math.nan, math.inf, True, "0.7", None]
)
def test_temperature_out_of_range(temperature):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        decoding.check_sampling(temperature=temperature)
    with pytest.raises(ValueError, match="greedy"):
        decoding.next_tokens(torch.randn(1, 5), temperature=temperature)


@pytest.mark.parametrize("top_p", [0, 0.0, -0.1, 1.01, 2, math.nan, True, "0.9"])
def test_top_p_out_of_range(top_p):
    with pytest.raises(ValueError, match=r"top_p must be None .* \(0, 1\]"):
        decoding.check_sampling(top_p=top_p)


@pytest.mark.parametrize("top_k", [0, -3, 2.5, True, "5"])
def test_top_k_out_of_range(top_k):
    with pytest.raises(ValueError, match="top_k must be None .* int >= 1"):
        decoding.check_sampling(top_k=top_k)


@pytest.mark.parametrize("penalty", [0, -1.2, math.inf, math.nan, False])
def test_repetition_penalty_out_of_range(penalty):
    with pytest.raises(
        ValueError, match="repetition_penalty must be a finite number > 0"
    ):
        decoding.check_sampling(repetition_penalty=penalty)


def test_bad_arguments_fail_before_the_model_runs(book_lm):
    prompt = torch.tensor([[1, 2, 3]])
    calls = []
    book_lm.register_forward_hook(lambda *args: calls.append(1))
    for kwargs in (dict(temperature=0), dict(top_p=0), dict(top_k=0)):
        with pytest.raises(ValueError):
            decoding.generate(book_lm, prompt, 3, **kwargs)
    with pytest.raises(ValueError, match="max_new_tokens"):
        decoding.generate(book_lm, prompt, -1)
    with pytest.raises(TypeError, match="integer"):
        decoding.generate(book_lm, prompt.float(), 3)
    assert not calls


def test_empty_search_query():
    from utils.search import EmptyQueryError, SemanticIndex

    index = SemanticIndex(lambda texts: torch.ones(len(texts), 3), ["a", "b"])
    for query in ("", "  ", "\n\t"):
        with pytest.raises(EmptyQueryError, match="query is empty"):
            index.search(query)
    assert issubclass(EmptyQueryError, ValueError)


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setattr(network, "_cache", {})
    monkeypatch.setenv(network.OFFLINE_ENV, "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize(
    ("name", "task"),
    [
        ("distilbert-base-cased-distilled-squad", "extractive-qa"),
        ("t5-small", "seq2seq"),
    ],
)
def test_hub_model_without_network_fails_fast_with_advice(offline, name, task):
    from utils import hub_tasks

    start = time.perf_counter()
    with pytest.raises(pretrained.OfflineError) as error:
        hub_tasks.load_task_model(name, task)
    assert time.perf_counter() - start < 5.0, "must not wait for the hub"
    message = str(error.value)
    for part in (
        repr(name),
        "LLMBOOK_OFFLINE=1",
        pretrained.SMOLLM2_NAME,
        "Colab",
        "hf download",
    ):
        assert part in message


def test_hub_causal_lm_without_network_fails_fast(offline):
    start = time.perf_counter()
    with pytest.raises(pretrained.OfflineError, match="Colab"):
        pretrained.load_pretrained(
            "HuggingFaceTB/SmolLM2-360M-Instruct", kind="causal-lm"
        )
    assert time.perf_counter() - start < 5.0


def test_empty_inputs_of_the_hub_task_helpers():
    from utils import hub_tasks

    with pytest.raises(ValueError, match="question is empty"):
        hub_tasks.extractive_answer(None, None, " ", "a passage")
    with pytest.raises(ValueError, match="context is empty"):
        hub_tasks.extractive_answer(None, None, "why?", "")
    with pytest.raises(ValueError, match="text is empty"):
        hub_tasks.seq2seq_generate(None, None, "  ")


def test_context_length_is_the_smaller_of_model_and_tokenizer():
    from types import SimpleNamespace

    from utils import viz

    hf = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=512))
    short = SimpleNamespace(model_max_length=128)
    unlimited = SimpleNamespace(model_max_length=int(1e30))
    assert decoding.context_length(hf) == 512
    assert decoding.context_length(hf, short) == 128
    assert decoding.context_length(hf, unlimited) == 512
    assert decoding.context_length(SimpleNamespace(), short) == 128
    assert viz._hf_max_len(hf, short) == decoding.context_length(hf, short)
    assert viz._hf_max_len(SimpleNamespace(), unlimited) is None
    with pytest.raises(TypeError, match="context length"):
        decoding.context_length(SimpleNamespace(), unlimited)
