"""Tests for utils.models: shapes, masking by perturbation, sampling, counts against formulas."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode

from utils import models
from utils.models import (
    LSTMLM,
    TransformerClassifier,
    TransformerLM,
    count_parameters,
    filter_logits,
    flops_breakdown,
    flops_per_token,
)

V, D, H, N_LAYERS, MAX_LEN = 40, 16, 2, 2, 12
POS_ENCODINGS = ["learned", "sinusoidal", "rope"]


def tiny_lm(**kwargs):
    args = dict(vocab_size=V, d_model=D, n_heads=H, n_layers=N_LAYERS, max_len=MAX_LEN)
    args.update(kwargs)
    return TransformerLM(**args).eval()


# ------------------------------------------------------------------------------------------
# TransformerLM
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
def test_lm_shapes_and_attention_contract(pos_encoding):
    model = tiny_lm(pos_encoding=pos_encoding)
    idx = torch.randint(0, V, (3, 7))
    logits = model(idx)
    assert logits.shape == (3, 7, V)
    logits2, attentions = model(idx, return_attention=True)
    assert_close(logits2, logits)  # explicit attention path gives the same logits
    assert isinstance(attentions, list) and len(attentions) == N_LAYERS
    for weights in attentions:
        assert weights.shape == (3, H, 7, 7)
        assert_close(weights.sum(-1), torch.ones(3, H, 7))
        assert (weights.triu(diagonal=1) == 0).all()  # causal


@pytest.mark.parametrize("pos_encoding", POS_ENCODINGS)
@pytest.mark.parametrize("return_attention", [False, True])
def test_lm_is_causal_by_perturbation(pos_encoding, return_attention):
    model = tiny_lm(pos_encoding=pos_encoding)
    idx = torch.randint(0, V, (2, 10))
    t = 5
    changed = idx.clone()
    changed[:, t + 1 :] = (
        idx[:, t + 1 :] + 1 + torch.randint(0, V - 1, (2, 10 - t - 1))
    ) % V
    assert (changed[:, t + 1 :] != idx[:, t + 1 :]).all()

    def run(x):
        out = model(x, return_attention=return_attention)
        return out[0] if return_attention else out

    before, after = run(idx), run(changed)
    assert_close(before[:, : t + 1], after[:, : t + 1])
    assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])


def test_lm_tied_weights_share_one_tensor():
    tied = tiny_lm(tie_weights=True)
    assert tied.lm_head.weight is tied.token_embedding.weight
    with torch.no_grad():
        tied.token_embedding.weight[3, 0] += 1.0
    assert tied.lm_head.weight[3, 0] == tied.token_embedding.weight[3, 0]
    untied = tiny_lm(tie_weights=False)
    assert untied.lm_head.weight is not untied.token_embedding.weight
    assert count_parameters(untied) - count_parameters(tied) == V * D


def test_lm_gpt2_initialisation():
    n_layers, d = 4, 64
    model = TransformerLM(V, d, 4, n_layers, max_len=MAX_LEN)
    block = model.blocks[1]
    residual_std = 0.02 / math.sqrt(2 * n_layers)
    assert block.attn.out_proj.weight.std().item() == pytest.approx(
        residual_std, rel=0.1
    )
    assert block.mlp.proj.weight.std().item() == pytest.approx(residual_std, rel=0.1)
    assert block.attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert (block.mlp.fc.bias == 0).all() and (block.ln1.weight == 1).all()


def test_lm_rejects_bad_inputs():
    model = tiny_lm()
    with pytest.raises(ValueError, match="max_len"):
        model(torch.zeros(1, MAX_LEN + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[1, V]]))
    with pytest.raises(ValueError, match="token ids"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(TypeError):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError):
        model(torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        TransformerLM(V, 10, 3, 1)
    with pytest.raises(ValueError, match="pos_encoding"):
        TransformerLM(V, D, H, 1, pos_encoding="alibi")


# ------------------------------------------------------------------------------------------
# filter_logits and generate
# ------------------------------------------------------------------------------------------

PROBS = torch.tensor([0.1, 0.5, 0.15, 0.25])  # ranking: token 1, 3, 2, 0


def _kept(logits):
    return set(torch.isfinite(logits).nonzero().flatten().tolist())


def test_filter_logits_top_k_and_top_p_by_hand():
    logits = PROBS.log()
    assert _kept(filter_logits(logits, top_k=2)) == {1, 3}
    assert _kept(filter_logits(logits, top_k=1)) == {1}
    assert _kept(filter_logits(logits, top_k=10)) == {0, 1, 2, 3}
    # top_p: keep tokens until the mass of the better-ranked ones reaches p (0, .5, .75, .9)
    assert _kept(filter_logits(logits, top_p=0.4)) == {1}
    assert _kept(filter_logits(logits, top_p=0.7)) == {1, 3}
    assert _kept(filter_logits(logits, top_p=0.8)) == {1, 3, 2}
    assert _kept(filter_logits(logits, top_p=1.0)) == {0, 1, 2, 3}
    # top_k first, then top_p on the renormalised rest (.556, .278, .167): .833 >= .8 drops 2
    assert _kept(filter_logits(logits, top_k=3, top_p=0.8)) == {1, 3}
    # kept logits are unchanged
    filtered = filter_logits(logits, top_p=0.7)
    assert_close(filtered[[1, 3]], logits[[1, 3]])


def test_filter_logits_batches_and_ties():
    logits = torch.stack(
        [PROBS.log(), PROBS.flip(0).log()]
    )  # second row: ranking 2, 0, 1, 3
    out = filter_logits(logits, top_k=2)
    assert _kept(out[0]) == {1, 3} and _kept(out[1]) == {2, 0}
    out = filter_logits(logits, top_p=0.7)
    assert _kept(out[0]) == {1, 3} and _kept(out[1]) == {2, 0}
    tied = torch.tensor([1.0, 2.0, 2.0, 0.0])
    assert _kept(filter_logits(tied, top_k=1)) == {1, 2}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(top_k=0),
        dict(top_k=1.5),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_p=True),
    ],
)
def test_filter_logits_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        filter_logits(torch.randn(5), **kwargs)


def test_generate_is_reproducible_with_a_seeded_generator():
    model = tiny_lm()
    idx = torch.randint(0, V, (2, 3))

    def sample(seed):
        gen = torch.Generator().manual_seed(seed)
        return model.generate(
            idx, 6, temperature=1.5, top_k=20, top_p=0.95, generator=gen
        )

    out = sample(0)
    assert out.shape == (2, 9) and out.dtype == torch.long
    assert torch.equal(out[:, :3], idx)
    assert torch.equal(out, sample(0))
    assert not torch.equal(out, sample(1))


def test_generate_greedy_is_argmax_and_crops_to_max_len():
    model = tiny_lm(pos_encoding="rope")
    prompt = torch.randint(0, V, (2, 9))
    out = model.generate(
        prompt, 8, greedy=True
    )  # 9 + 8 > MAX_LEN: the context is cropped
    # reference loop written out by hand
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(8):
            logits = model(seq[:, -MAX_LEN:])
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    # a prompt longer than max_len only uses its last max_len tokens
    long_prompt = torch.cat(
        [torch.randint(0, V, (2, 5)), prompt], dim=1
    )  # 14 > MAX_LEN
    cropped = long_prompt[:, -MAX_LEN:]
    assert torch.equal(
        model.generate(long_prompt, 3, greedy=True)[:, -3:],
        model.generate(cropped, 3, greedy=True)[:, -3:],
    )
    # sampling from the top-1 token is greedy decoding
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(prompt, 8, top_k=1, generator=gen), out)


def test_generate_restores_mode_and_validates():
    model = tiny_lm()
    model.train()
    idx = torch.randint(0, V, (1, 2))
    model.generate(idx, 2)
    assert model.training
    for kwargs in (
        dict(temperature=0.0),
        dict(temperature=-1.0),
        dict(top_k=0),
        dict(top_p=0.0),
        dict(top_p=1.1),
        dict(max_new_tokens=-1),
        dict(temperature=float("inf")),  # the rule of decoding.check_sampling
    ):
        args = dict(max_new_tokens=2)
        args.update(kwargs)
        with pytest.raises(ValueError):
            model.generate(idx, **args)
    assert model.generate(idx, 0).shape == (1, 2)


# ------------------------------------------------------------------------------------------
# TransformerClassifier
# ------------------------------------------------------------------------------------------


def tiny_classifier(pooling):
    return TransformerClassifier(
        V,
        num_classes=3,
        d_model=D,
        n_heads=H,
        n_layers=2,
        max_len=MAX_LEN,
        pooling=pooling,
    ).eval()


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_shapes_and_padding_invariance(pooling):
    model = tiny_classifier(pooling)
    idx = torch.randint(1, V, (3, 6))
    idx[1, 4:] = 0  # already padded
    logits = model(idx)
    assert logits.shape == (3, 3)
    padded = torch.cat([idx, torch.zeros(3, 5, dtype=torch.long)], dim=1)
    assert_close(model(padded), logits)
    # ... whereas a real token in place of padding does change the prediction
    not_padded = padded.clone()
    not_padded[:, -1] = 7
    assert not torch.allclose(model(not_padded), logits)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifier_attention_ignores_padding(pooling):
    model = tiny_classifier(pooling)
    idx = torch.randint(1, V, (2, 5))
    idx[0, 3:] = 0
    logits, attentions = model(idx, return_attention=True)
    assert_close(logits, model(idx))
    L = 6 if pooling == "cls" else 5
    first_pad = 4 if pooling == "cls" else 3  # the CLS token shifts positions by one
    assert len(attentions) == 2
    for weights in attentions:
        assert weights.shape == (2, H, L, L)
        assert_close(weights.sum(-1), torch.ones(2, H, L))
        assert (weights[0, :, :, first_pad:] == 0).all()
        assert (weights[1] > 0).all()  # bidirectional: no causal mask


def test_classifier_all_padding_row():
    idx = torch.tensor([[3, 4, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="only padding"):
        tiny_classifier("mean")(idx)
    logits = tiny_classifier("cls")(idx)  # defined: CLS attends to itself only
    assert torch.isfinite(logits).all()


def test_on_an_accelerator_the_forward_pass_reads_no_values(monkeypatch):
    """Where reading values is not free (a GPU: it waits for the device), the forward passes
    check shapes only: out-of-range ids are left to the embedding's kernel (CUDA asserts), and
    an all-padding row with mean pooling gets NaN logits (0 / 0), which the trainer reports as
    a non-finite loss. Here the CPU takes that path, with a spy on the reads."""
    assert models.reading_is_free(torch.zeros(1)) and not models.reading_is_free(
        torch.zeros(1, device="meta")
    )
    monkeypatch.setattr(models, "reading_is_free", lambda tensor: False)
    idx = torch.tensor([[3, 4, 0], [0, 0, 0], [5, 0, 0]])
    with monkeypatch.context() as patch:
        for read in ("__bool__", "item", "tolist", "nonzero"):
            patch.setattr(
                torch.Tensor, read, None
            )  # any value read now raises TypeError
        models._check_ids(torch.tensor([[-1, V]]), V, MAX_LEN)  # the range is not read
        with pytest.raises(ValueError, match="max_len"):  # shapes still are
            models._check_ids(torch.zeros(1, MAX_LEN + 1, dtype=torch.long), V, MAX_LEN)
        logits = tiny_classifier("mean")(idx)
        lm_logits, lstm_logits = tiny_lm()(idx), LSTMLM(V, D, D, 1)(idx)[0]
    assert torch.isnan(logits[1]).all() and torch.isfinite(logits[[0, 2]]).all()
    assert lm_logits.shape == lstm_logits.shape == (3, 3, V)


def test_classifier_rejects_bad_arguments():
    with pytest.raises(ValueError, match="pooling"):
        TransformerClassifier(V, 2, D, H, 1, pooling="max")
    with pytest.raises(ValueError, match="pad_idx"):
        TransformerClassifier(V, 2, D, H, 1, pad_idx=V)
    with pytest.raises(ValueError, match="max_len"):
        tiny_classifier("cls")(torch.ones(1, MAX_LEN + 1, dtype=torch.long))


# ------------------------------------------------------------------------------------------
# LSTMLM
# ------------------------------------------------------------------------------------------


def test_lstm_shapes_and_state_carry_over():
    model = LSTMLM(V, d_model=8, hidden_size=12, n_layers=2).eval()
    idx = torch.randint(0, V, (3, 10))
    logits, (h, c) = model(idx)
    assert logits.shape == (3, 10, V)
    assert h.shape == c.shape == (2, 3, 12)
    first, state = model(idx[:, :4])
    second, state = model(idx[:, 4:], state)
    assert_close(torch.cat([first, second], dim=1), logits)
    assert_close(state[0], h)
    assert_close(state[1], c)
    zeros = model.init_state(3)
    assert all((s == 0).all() and s.shape == (2, 3, 12) for s in zeros)
    assert_close(model(idx, zeros)[0], logits)
    assert not any(s.requires_grad for s in model.detach_state(state))


def test_lstm_tie_weights_and_bad_state():
    with pytest.raises(ValueError, match="hidden_size == d_model"):
        LSTMLM(V, d_model=8, hidden_size=12, n_layers=1, tie_weights=True)
    model = LSTMLM(V, d_model=8, hidden_size=8, n_layers=1, tie_weights=True)
    assert model.lm_head.weight is model.embedding.weight
    with pytest.raises(ValueError, match="state"):
        model(torch.zeros(2, 3, dtype=torch.long), model.init_state(5))


# ------------------------------------------------------------------------------------------
# parameter and FLOP counts
# ------------------------------------------------------------------------------------------


def block_params(d, d_ff):
    """One pre-LN block, from the shapes: 2 LayerNorms, 4 d x d projections, a 2-layer MLP."""
    layer_norms = 2 * (2 * d)  # gain and bias each
    attention = 4 * (d * d + d)  # q, k, v, out weights and biases
    mlp = (d * d_ff + d_ff) + (d_ff * d + d)
    return layer_norms + attention + mlp


def test_count_parameters_matches_the_formula():
    d, n_layers, max_len = 32, 3, 20
    model = TransformerLM(V, d, 4, n_layers, max_len=max_len)  # d_ff = 4d, tied
    non_embedding = n_layers * block_params(d, 4 * d) + 2 * d  # + final LayerNorm
    # Kaplan's form: 12 n_layers d^2 for the weight matrices, plus biases and LayerNorms
    assert non_embedding == 12 * n_layers * d**2 + n_layers * 13 * d + 2 * d
    assert count_parameters(model, exclude="embedding") == non_embedding
    assert count_parameters(model) == non_embedding + V * d + max_len * d
    untied = TransformerLM(
        V, d, 4, n_layers, d_ff=50, max_len=max_len, tie_weights=False
    )
    expected = n_layers * block_params(d, 50) + 2 * d + V * d  # lm_head has no bias
    assert count_parameters(untied, exclude=("embedding",)) == expected
    rope = TransformerLM(V, d, 4, n_layers, max_len=max_len, pos_encoding="rope")
    assert count_parameters(rope) == non_embedding + V * d  # RoPE has no parameters

    for p in model.blocks[0].parameters():
        p.requires_grad_(False)
    frozen = block_params(d, 4 * d)
    assert count_parameters(model, exclude="embedding") == non_embedding - frozen
    assert (
        count_parameters(model, trainable_only=False, exclude="embedding")
        == non_embedding
    )


def test_count_parameters_other_models():
    d, h, n_layers, C = 8, 12, 2, 3
    lstm = LSTMLM(V, d, h, n_layers)
    # PyTorch's LSTM has 4 gates, an input and a recurrent weight, and two biases per layer
    per_layer = [4 * h * d + 4 * h * h + 8 * h] + [4 * h * h + 4 * h * h + 8 * h] * (
        n_layers - 1
    )
    assert count_parameters(lstm) == V * d + sum(per_layer) + h * V + V
    clf = TransformerClassifier(V, C, D, H, n_layers, max_len=MAX_LEN, pooling="cls")
    body = n_layers * block_params(D, 4 * D) + 2 * D + D * C + C
    assert count_parameters(clf, exclude="embedding") == body
    assert count_parameters(clf) == body + V * D + (MAX_LEN + 1) * D + D  # + CLS vector
    with pytest.raises(TypeError):
        count_parameters(clf, exclude=[1])


def test_flops_formula_terms():
    n, n_layers, d, ctx = 1000, 2, 8, 16
    assert (
        flops_per_token(n, n_layers, d, ctx, training=False)
        == 2 * n + 2 * n_layers * ctx * d
    )
    assert flops_per_token(n, n_layers, d, ctx) == 3 * (2 * n + 2 * n_layers * ctx * d)
    parts = flops_breakdown(
        n, n_layers, d, ctx, training=False, vocab_size=50, attention="dense"
    )
    assert parts["attention"] == 4 * n_layers * ctx * d
    assert parts["lm_head"] == 2 * d * 50
    assert (
        parts["total"]
        == parts["forward"]
        == 2 * n + parts["attention"] + parts["lm_head"]
    )
    with pytest.raises(ValueError):
        flops_per_token(n, n_layers, d, ctx, attention="sparse")
    with pytest.raises(ValueError):
        flops_per_token(n, 0, d, ctx)


@pytest.mark.parametrize("return_attention", [False, True])
def test_flops_estimate_matches_flop_counter(return_attention):
    """FlopCounterMode counts matmuls (mm, addmm, bmm; no bias adds, softmax or LayerNorm).

    torch 2.13 has no FLOP formula for the fused CPU attention kernel, so the fused path runs
    under the MATH backend, which decomposes into counted bmm calls.
    """
    B, L, d, n_layers, d_ff = 2, MAX_LEN, D, N_LAYERS, 4 * D
    model = tiny_lm()
    idx = torch.randint(0, V, (B, L))
    matmul_weights = n_layers * (4 * d * d + 2 * d * d_ff)  # q, k, v, out, fc, proj
    tokens = B * L

    def count(step):
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            step()
        return counter.get_total_flops()

    def forward():
        return model(idx, return_attention=True)[0] if return_attention else model(idx)

    def train_step():
        logits = forward()
        F.cross_entropy(logits.view(-1, V), idx.view(-1)).backward()

    kwargs = dict(vocab_size=V, attention="dense")
    assert count(forward) == tokens * flops_per_token(
        matmul_weights, n_layers, d, L, training=False, **kwargs
    )
    assert count(train_step) == tokens * flops_per_token(
        matmul_weights, n_layers, d, L, training=True, **kwargs
    )
    # With Kaplan's N (non-embedding parameters, biases and LayerNorms included) the estimate
    # is high by exactly 2 FLOPs per token per bias/LN parameter. Those are ~13·d per layer
    # against 12·d² weights, i.e. ~13 / (12·d) of N: 7% at d = 16, 0.1% at d = 768.
    kaplan_n = count_parameters(model, exclude="embedding")
    estimate = tokens * flops_per_token(
        kaplan_n, n_layers, d, L, training=False, **kwargs
    )
    counted = count(forward)
    assert estimate - counted == tokens * 2 * (kaplan_n - matmul_weights)
    assert 0 < (estimate - counted) / counted < 13 / (12 * d)


def test_mean_pool_is_one_function_with_one_all_padding_policy():
    from utils import finetune, search
    from utils.models import mean_pool

    assert finetune.mean_pool is mean_pool and search.mean_pool is mean_pool
    hidden = torch.randn(3, 4, 2)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]])
    pooled = mean_pool(hidden, mask)
    assert pooled.shape == (3, 2)
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pooled[2], hidden[2, [1, 3]].mean(0))
    torch.testing.assert_close(mean_pool(hidden, mask.bool()), pooled)  # bool masks too
    with pytest.raises(ValueError, match=r"rows \[1\] .*no real token"):
        mean_pool(hidden, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match=r"hidden \[B, T, D\]"):
        mean_pool(hidden[0], mask)
    # the classifier pools with it, so it has the same policy for an all-padding row
    model = tiny_classifier("mean").eval()
    with torch.no_grad():
        with pytest.raises(ValueError, match="only padding"):
            model(torch.tensor([[0, 0, 0, 0], [5, 6, 7, 8]]))


def test_features_is_forward_without_the_head():
    from utils import lm_recipes

    torch.manual_seed(0)
    for pos in ("learned", "sinusoidal", "rope"):
        lm = TransformerLM(13, 8, 2, 2, max_len=6, pos_encoding=pos).eval()
        idx = torch.randint(0, 13, (2, 5))
        h = lm.features(idx)
        assert h.shape == (2, 5, 8)
        torch.testing.assert_close(lm(idx), lm.lm_head(h))
        _, attn = lm.features(idx, return_attention=True)
        assert len(attn) == 2 and attn[0].shape == (2, 2, 5, 5)
        with pytest.raises(ValueError):
            lm.features(torch.randint(0, 13, (1, 7)))  # longer than max_len
        adaptive = lm_recipes.AdaptiveTransformerLM(
            13, [4, 8], 8, 2, 1, max_len=6, pos_encoding=pos
        ).eval()
        out = adaptive(idx)
        assert out.shape == (2, 5, 13)
        torch.testing.assert_close(adaptive.features(idx), adaptive.trunk.features(idx))
