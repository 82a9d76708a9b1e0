"""Tests of the generated chat data (utils.chat_data) and supervised fine-tuning (utils.sft).

Fast tests use a tiny random decoder and a character-level stand-in tokenizer; the slow ones use
SmolLM2's tokenizer (both mask derivations against ``apply_chat_template``) and transformers'
model (our assistant-only loss against ``LlamaForCausalLM(labels=...)``).
"""

import random
import re

import pytest
import torch
from torch.testing import assert_close

from utils import chat_data, losses, sft
from utils.decoding import EmptyPromptError
from utils.llama import ContextLengthError, LlamaConfig, LlamaDecoder, format_chatml
from utils.sft import IGNORE_INDEX, NoAssistantTurnError

TINY = LlamaConfig(
    vocab_size=300, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
    rope_theta=10000.0, context_length=512,
)  # fmt: skip


class CharTokenizer:
    """A stand-in fast tokenizer: one token per character, the two ChatML markers special."""

    SPECIAL = {"<|im_start|>": 1, "<|im_end|>": 2}

    def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
        ids, offsets, at = [], [], 0
        while at < len(text):
            marker = next((m for m in self.SPECIAL if text.startswith(m, at)), None)
            if marker:
                ids.append(self.SPECIAL[marker])
                offsets.append((at, at + len(marker)))
                at += len(marker)
            else:
                ids.append(3 + ord(text[at]) % 290)
                offsets.append((at, at + 1))
                at += 1
        out = {"input_ids": ids}
        if return_offsets_mapping:
            out["offset_mapping"] = offsets
        return out


# ---- the generated data ------------------------------------------------------------------


def _recompute(example):
    """The right last reply, worked out again from the question's text."""
    user = [m["content"] for m in example.messages if m["role"] == "user"]
    if example.family == "addition":
        a, b = map(int, re.findall(r"\d+", user[0]))
        return str(a + b)
    if example.family == "km_to_m":
        return str(int(re.findall(r"\d+", user[0])[0]) * 1000)
    if example.family == "upper":
        return re.search(r"the word (\w+)", user[0]).group(1).upper()
    if example.family == "sort":
        words = user[0].split(": ")[1].split(", ")
        return ", ".join(sorted(words))
    a, b = map(int, re.findall(r"\d+", user[0]))
    return str(a + b + 10)


def test_every_answer_is_right_and_the_splits_never_meet():
    train = chat_data.make_examples(400, "train", seed=0)
    heldout = chat_data.make_examples(150, "heldout", seed=0)
    for example in train + heldout:
        assert example.answer == _recompute(example), example
        assert example.messages[-1]["role"] == "assistant"
    assert {e.key for e in train}.isdisjoint({e.key for e in heldout})
    assert len({e.key for e in heldout}) == 150  # distinct
    assert {e.family for e in train} == set(chat_data.FAMILIES)
    assert all(chat_data.split_of(e.key) == "heldout" for e in heldout)


def test_examples_are_deterministic_and_seeds_differ():
    a = chat_data.make_examples(20, "train", seed=3)
    assert a == chat_data.make_examples(20, "train", seed=3)
    assert a != chat_data.make_examples(20, "train", seed=4)


def test_two_turn_examples_have_a_system_message_and_two_replies():
    example = chat_data.make_example("two_turn", random.Random(0))
    roles = [m["role"] for m in example.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert example.prompt == list(example.messages[:-1])


def test_near_misses_and_wordy_replies_are_wrong_in_the_right_way():
    for example in chat_data.make_examples(200, "train", seed=5):
        wrong = chat_data.near_misses(example)
        assert len(set(wrong)) == 2 and example.answer not in wrong
        assert all(w.strip() for w in wrong)
        wordy = chat_data.wordy_reply(example)
        assert example.answer in wordy and wordy != example.answer
    with pytest.raises(TypeError, match="ChatExample"):
        chat_data.near_misses("82")


def test_chat_data_rejects_bad_requests():
    with pytest.raises(ValueError, match="split must be one of"):
        chat_data.make_examples(3, "test")
    with pytest.raises(ValueError, match="family must be one of"):
        chat_data.make_example("poetry", random.Random(0))
    with pytest.raises(ValueError, match="could not draw"):
        chat_data.make_examples(10_000, "heldout", families=("upper",))
    with pytest.raises(ValueError, match="families must be"):
        chat_data.make_examples(3, "train", families=())


# ---- the loss mask -----------------------------------------------------------------------

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6"},
]


def test_mask_trains_exactly_the_replies_and_their_end_markers():
    tokens = sft.tokenize_chat(CharTokenizer(), CHAT, None)
    text = format_chatml(CHAT, None, add_generation_prompt=False)
    assert len(tokens.ids) == len(CharTokenizer()(text)["input_ids"])
    trained = [
        i
        for i, label in zip(tokens.ids, tokens.labels, strict=True)
        if label != IGNORE_INDEX
    ]
    tok = CharTokenizer()
    expected = tok("4<|im_end|>")["input_ids"] + tok("6<|im_end|>")["input_ids"]
    assert trained == expected
    assert tokens.n_trained == 4


def test_the_two_mask_derivations_agree():
    tok = CharTokenizer()
    for chat in (CHAT, CHAT[1:3]):
        for system in (None, "You are helpful."):
            assert sft.tokenize_chat(tok, chat, system) == sft.tokenize_chat_by_turns(
                tok, chat, system
            )


def test_char_spans_of_the_replies():
    text = format_chatml(CHAT, None, add_generation_prompt=False)
    spans = sft.assistant_char_spans(text)
    assert [text[a:b] for a, b in spans] == ["4<|im_end|>", "6<|im_end|>"]
    with pytest.raises(ValueError, match="never closed"):
        sft.assistant_char_spans("<|im_start|>assistant\nunfinished")


def test_bad_chats_get_clear_errors():
    tok = CharTokenizer()
    with pytest.raises(NoAssistantTurnError, match="no assistant turn"):
        sft.tokenize_chat(tok, CHAT[:2], None)
    with pytest.raises(EmptyPromptError, match="empty assistant reply"):
        sft.tokenize_chat(tok, [CHAT[1], {"role": "assistant", "content": " "}], None)
    with pytest.raises(EmptyPromptError):
        sft.tokenize_chat(tok, [], None)


# ---- batches and the loss ----------------------------------------------------------------


def _batch(n=3, max_tokens=512):
    tok = CharTokenizer()
    examples = chat_data.make_examples(n, "train", seed=1)
    chats = [sft.tokenize_chat(tok, e.messages, None) for e in examples]
    return chats, sft.collate(chats, pad_id=0, max_tokens=max_tokens)


def test_collate_shifts_and_pads():
    chats, (inputs, targets) = _batch()
    longest = max(len(c.ids) for c in chats)
    assert inputs.shape == targets.shape == (3, longest - 1)
    for row, chat in enumerate(chats):
        n = len(chat.ids)
        assert inputs[row, : n - 1].tolist() == chat.ids[:-1]
        assert targets[row, : n - 1].tolist() == chat.labels[1:]
        assert (targets[row, n - 1 :] == IGNORE_INDEX).all()  # padding never counts


def test_collate_rejects_a_conversation_longer_than_the_context():
    chats, _ = _batch()
    with pytest.raises(ContextLengthError, match="exceeds max_tokens=10"):
        sft.collate(chats, pad_id=0, max_tokens=10)
    with pytest.raises(ValueError, match="at least one"):
        sft.collate([], pad_id=0, max_tokens=10)


def test_assistant_loss_equals_the_full_logits_loss_and_its_gradients():
    torch.manual_seed(0)
    model = LlamaDecoder(TINY)
    _, batch = _batch(4)
    ours, metrics, n = sft.assistant_loss(model, batch)
    ours.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    reference, _, n_ref = losses.lm_loss(model, batch, ignore_index=IGNORE_INDEX)
    reference.backward()
    assert int(n) == int(n_ref) == int((batch[1] != IGNORE_INDEX).sum())
    assert_close(ours, reference, rtol=1e-6, atol=1e-6)
    for g, p in zip(grads, model.parameters(), strict=True):
        assert_close(g, p.grad, rtol=1e-5, atol=1e-7)
    assert 0 <= float(metrics["accuracy"]) <= 1


def test_assistant_loss_needs_an_assistant_token():
    model = LlamaDecoder(TINY)
    inputs = torch.ones(1, 5, dtype=torch.long)
    targets = torch.full((1, 5), IGNORE_INDEX)
    with pytest.raises(ValueError, match="no assistant token"):
        sft.assistant_loss(model, (inputs, targets))


def test_generate_reply_needs_a_user_turn_last():
    model = LlamaDecoder(TINY)
    with pytest.raises(ValueError, match="end with a user turn"):
        sft.generate_reply(model, CharTokenizer(), CHAT, None, 4)


# ---- SmolLM2's tokenizer and transformers' model (slow) ---------------------------------


@pytest.fixture(scope="module")
def smol_tokenizer():
    pytest.importorskip("gguf")
    from utils import gguf_weights
    from utils.llama import default_system_prompt

    tokenizer = gguf_weights.load_gguf_tokenizer()
    return tokenizer, default_system_prompt(tokenizer.chat_template)


@pytest.mark.slow
def test_both_masks_give_apply_chat_templates_ids_on_every_family(smol_tokenizer):
    tokenizer, system = smol_tokenizer
    examples = chat_data.make_examples(60, "train") + chat_data.make_examples(
        20, "heldout"
    )
    for example in examples:
        chat = list(example.messages)
        whole = sft.tokenize_chat(tokenizer, chat, system)
        by_turns = sft.tokenize_chat_by_turns(tokenizer, chat, system)
        reference = tokenizer.apply_chat_template(chat, tokenize=True, return_dict=True)
        assert whole == by_turns
        assert whole.ids == list(reference["input_ids"])
        replies = [m["content"] for m in chat if m["role"] == "assistant"]
        trained = [
            i
            for i, lab in zip(whole.ids, whole.labels, strict=True)
            if lab != IGNORE_INDEX
        ]
        assert tokenizer.decode(trained) == "".join(r + "<|im_end|>" for r in replies)


@pytest.mark.slow
def test_assistant_loss_equals_transformers_loss_with_labels(smol_tokenizer):
    from utils import gguf_weights

    tokenizer, system = smol_tokenizer
    hf = gguf_weights.load_transformers_model()  # transformers' loader, not ours
    ours = gguf_weights.load_llama_gguf()
    examples = chat_data.make_examples(4, "train", seed=2)
    chats = [sft.tokenize_chat(tokenizer, e.messages, system) for e in examples]
    for chat in chats:  # one at a time: transformers' loss has no padding to skip then
        ids = torch.tensor([chat.ids])
        labels = torch.tensor([chat.labels])
        with torch.no_grad():
            reference = hf(input_ids=ids, labels=labels).loss
            loss, _, _ = sft.assistant_loss(ours, sft.collate([chat], 0, 8192))
        assert_close(loss, reference, rtol=0, atol=1e-4)  # fp32; measured < 2e-5
