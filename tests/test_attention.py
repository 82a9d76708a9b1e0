"""Tests for utils.attention: checked against PyTorch's own attention and against formulas."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from utils.attention import (
    LearnedPositionalEmbedding,
    MultiHeadAttention,
    RotaryEmbedding,
    SinusoidalPositionalEncoding,
    causal_mask,
    padding_mask,
    scaled_dot_product_attention,
)

# ------------------------------------------------------------------------------------------
# scaled_dot_product_attention
# ------------------------------------------------------------------------------------------

SHAPES = [
    # (q shape, k shape, v shape)
    ((2, 3, 5, 8), (2, 3, 5, 8), (2, 3, 5, 8)),  # (B, H, L, d)
    ((2, 3, 4, 8), (2, 3, 7, 8), (2, 3, 7, 6)),  # L_q != L_k, d_v != d_k
    ((2, 2, 3, 4, 8), (2, 2, 3, 6, 8), (2, 2, 3, 6, 8)),  # an extra batch dimension
    ((6, 8), (9, 8), (9, 8)),  # no batch dimension at all
]


@pytest.mark.parametrize("shapes", SHAPES)
@pytest.mark.parametrize("mask_kind", ["none", "random", "causal"])
def test_explicit_matches_torch_sdpa(shapes, mask_kind):
    q, k, v = (torch.randn(s) for s in shapes)
    L_q, L_k = q.shape[-2], k.shape[-2]
    if mask_kind == "none":
        mask = None
    elif mask_kind == "random":
        mask = torch.rand(*q.shape[:-1], L_k) < 0.6
        mask[..., 0] = True  # no fully masked row here; those are tested separately
    else:
        mask = torch.ones(L_q, L_k, dtype=torch.bool).tril()
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.shape == expected.shape
    assert weights.shape == (*q.shape[:-1], L_k)
    assert_close(out, expected)
    assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    if mask is not None:
        assert (weights[~mask.expand_as(weights)] == 0).all()


def test_causal_mask_matches_is_causal():
    q, k, v = (torch.randn(2, 3, 6, 4) for _ in range(3))
    out, weights = scaled_dot_product_attention(q, k, v, mask=causal_mask(6))
    assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert (weights.triu(diagonal=1) == 0).all()


def test_scores_are_scaled_by_sqrt_dk():
    q, k, v = torch.randn(1, 3, 16), torch.randn(1, 5, 16), torch.randn(1, 5, 2)
    _, weights = scaled_dot_product_attention(q, k, v)
    by_hand = torch.softmax(q @ k.transpose(1, 2) / 4.0, dim=-1)  # sqrt(16) = 4
    assert_close(weights, by_hand)


def test_fully_masked_rows_give_zero_weights_and_output_not_nan():
    q = torch.randn(2, 4, 3, requires_grad=True)
    k = torch.randn(2, 5, 3, requires_grad=True)
    v = torch.randn(2, 5, 3, requires_grad=True)
    mask = torch.rand(2, 4, 5) < 0.7
    mask[:, :, 0] = True
    mask[0, 2] = False  # query 2 of batch 0 may attend nothing
    mask[1, 0] = False
    out, weights = scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert (weights[0, 2] == 0).all() and (out[0, 2] == 0).all()
    assert (weights[1, 0] == 0).all() and (out[1, 0] == 0).all()
    assert_close(weights[0, 1].sum(), torch.tensor(1.0))
    # PyTorch's SDPA (torch >= 2.5) also returns zeros for such rows
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()


def test_dropout_only_in_training():
    q, k, v = (torch.randn(2, 5, 4) for _ in range(3))
    ref, _ = scaled_dot_product_attention(q, k, v)
    out, _ = scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=False)
    assert_close(out, ref)
    _, dropped = scaled_dot_product_attention(q, k, v, dropout_p=0.5, training=True)
    assert (dropped == 0).any()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (
            dict(
                q=torch.randn(2, 3, 4), k=torch.randn(2, 3, 5), v=torch.randn(2, 3, 5)
            ),
            ValueError,
        ),
        (
            dict(
                q=torch.randn(2, 3, 4), k=torch.randn(2, 3, 4), v=torch.randn(2, 2, 4)
            ),
            ValueError,
        ),
        (
            dict(
                q=torch.ones(2, 3, 4, dtype=torch.long),
                k=torch.ones(2, 3, 4),
                v=torch.ones(2, 3, 4),
            ),
            TypeError,
        ),
        (
            dict(
                q=torch.randn(2, 3, 4),
                k=torch.randn(2, 3, 4).double(),
                v=torch.randn(2, 3, 4),
            ),
            TypeError,
        ),
        (dict(q=torch.randn(4), k=torch.randn(4), v=torch.randn(4)), ValueError),
        (dict(mask=torch.ones(2, 3, 3)), TypeError),  # float mask
        (dict(mask=torch.ones(3, 4, dtype=torch.bool)), ValueError),  # wrong L_k
        (
            dict(mask=torch.ones(2, 1, 1, 3, dtype=torch.bool)),
            ValueError,
        ),  # would add a dim
        (dict(dropout_p=1.0), ValueError),
        (dict(dropout_p=-0.1), ValueError),
    ],
)
def test_sdpa_rejects_bad_inputs(kwargs, error):
    args = dict(q=torch.randn(2, 3, 4), k=torch.randn(2, 3, 4), v=torch.randn(2, 3, 4))
    args.update(kwargs)
    with pytest.raises(error):
        scaled_dot_product_attention(**args)


# ------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------


def test_causal_mask_values():
    m = causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    for i in range(4):
        for j in range(4):
            assert bool(m[i, j]) == (j <= i)
    with pytest.raises(ValueError):
        causal_mask(0)


def test_padding_mask_from_lengths_and_from_ids_agree():
    lengths = torch.tensor([3, 1, 4])
    ids = torch.tensor([[5, 6, 7, 0], [8, 0, 0, 0], [1, 2, 3, 4]])
    expected = torch.tensor(
        [
            [True, True, True, False],
            [True, False, False, False],
            [True, True, True, True],
        ]
    )
    from_lengths = padding_mask(lengths)
    from_ids = padding_mask(ids, pad_idx=0)
    assert from_lengths.shape == from_ids.shape == (3, 1, 1, 4)
    assert torch.equal(from_lengths[:, 0, 0], expected)
    assert torch.equal(from_ids[:, 0, 0], expected)
    assert padding_mask(lengths, max_len=6).shape == (3, 1, 1, 6)


@pytest.mark.parametrize(
    "args, kwargs, error",
    [
        ((torch.tensor([[1, 2]]),), {}, ValueError),  # ids without pad_idx
        ((torch.tensor([2, 3]),), dict(pad_idx=0), ValueError),  # lengths with pad_idx
        ((torch.tensor([2, 5]),), dict(max_len=4), ValueError),  # length > max_len
        ((torch.tensor([2, -1]),), {}, ValueError),
        ((torch.tensor([2.0, 3.0]),), {}, TypeError),
        ((torch.zeros(2, 2, 2, dtype=torch.long),), dict(pad_idx=0), ValueError),
        (([2, 3],), {}, TypeError),
    ],
)
def test_padding_mask_rejects_bad_inputs(args, kwargs, error):
    with pytest.raises(error):
        padding_mask(*args, **kwargs)


# ------------------------------------------------------------------------------------------
# MultiHeadAttention
# ------------------------------------------------------------------------------------------


def _pair(d_model=16, n_heads=4, bias=True):
    """Our MultiHeadAttention and nn.MultiheadAttention holding the same weights."""
    ours = MultiHeadAttention(d_model, n_heads, bias=bias).eval()
    ref = nn.MultiheadAttention(d_model, n_heads, bias=bias, batch_first=True).eval()
    with torch.no_grad():
        w_q, w_k, w_v = ref.in_proj_weight.chunk(3, dim=0)
        ours.q_proj.weight.copy_(w_q)
        ours.k_proj.weight.copy_(w_k)
        ours.v_proj.weight.copy_(w_v)
        ours.out_proj.weight.copy_(ref.out_proj.weight)
        if bias:
            # nn.MultiheadAttention starts with zero biases: make them non-zero to test them
            ref.in_proj_bias.normal_()
            ref.out_proj.bias.normal_()
            b_q, b_k, b_v = ref.in_proj_bias.chunk(3)
            ours.q_proj.bias.copy_(b_q)
            ours.k_proj.bias.copy_(b_k)
            ours.v_proj.bias.copy_(b_v)
            ours.out_proj.bias.copy_(ref.out_proj.bias)
    return ours, ref


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_mha_matches_torch_self_attention_with_masks(need_weights, bias):
    ours, ref = _pair(bias=bias)
    B, L = 3, 6
    x = torch.randn(B, L, 16)
    lengths = torch.tensor([6, 4, 2])
    is_pad = (
        torch.arange(L) >= lengths[:, None]
    )  # (B, L): True = padding (torch convention)
    not_causal = torch.ones(L, L, dtype=torch.bool).triu(
        diagonal=1
    )  # True = not allowed

    cases = [
        (dict(), dict()),
        (dict(mask=padding_mask(lengths)), dict(key_padding_mask=is_pad)),
        (dict(is_causal=True), dict(attn_mask=not_causal)),
        (
            dict(mask=padding_mask(lengths), is_causal=True),
            dict(key_padding_mask=is_pad, attn_mask=not_causal),
        ),
    ]
    for our_kwargs, ref_kwargs in cases:
        out, weights = ours(x, x, x, need_weights=need_weights, **our_kwargs)
        ref_out, ref_weights = ref(x, x, x, average_attn_weights=False, **ref_kwargs)
        assert_close(out, ref_out)
        if need_weights:
            assert weights.shape == (B, 4, L, L)
            assert_close(weights, ref_weights)
        else:
            assert weights is None


def test_mha_matches_torch_cross_attention():
    ours, ref = _pair()
    query, memory = torch.randn(2, 3, 16), torch.randn(2, 7, 16)
    is_pad = torch.zeros(2, 7, dtype=torch.bool)
    is_pad[1, 5:] = True
    out, weights = ours(
        query, memory, memory, mask=~is_pad[:, None, None, :], need_weights=True
    )
    ref_out, ref_weights = ref(
        query, memory, memory, key_padding_mask=is_pad, average_attn_weights=False
    )
    assert weights.shape == (2, 4, 3, 7)
    assert_close(out, ref_out)
    assert_close(weights, ref_weights)


def test_mha_fast_and_explicit_paths_agree():
    mha = MultiHeadAttention(24, 3).eval()
    x = torch.randn(2, 5, 24)
    mask = padding_mask(torch.tensor([5, 3]))
    for kwargs in (
        dict(),
        dict(mask=mask),
        dict(is_causal=True),
        dict(mask=mask, is_causal=True),
    ):
        fast, none = mha(x, x, x, need_weights=False, **kwargs)
        explicit, weights = mha(x, x, x, need_weights=True, **kwargs)
        assert none is None
        assert_close(fast, explicit)
        assert_close(weights.sum(-1), torch.ones(2, 3, 5))


def test_mha_causality_by_perturbation():
    mha = MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 8, 16)
    t = 4
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn(2, 8 - t - 1, 16)
    for need_weights in (False, True):
        out1, _ = mha(x, x, x, is_causal=True, need_weights=need_weights)
        out2, _ = mha(x2, x2, x2, is_causal=True, need_weights=need_weights)
        assert_close(out1[:, : t + 1], out2[:, : t + 1])
        assert not torch.allclose(out1[:, t + 1 :], out2[:, t + 1 :])


def test_mha_fully_masked_query_gives_bias_only_output():
    mha = MultiHeadAttention(8, 2).eval()
    x = torch.randn(1, 3, 8)
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    mask[..., 1, :] = False  # query 1 sees no key
    for need_weights in (False, True):
        out, _ = mha(x, x, x, mask=mask, need_weights=need_weights)
        assert torch.isfinite(out).all()
        # the attention output of that row is zero, so only out_proj's bias remains
        assert_close(out[0, 1], mha.out_proj.bias)


def test_mha_scale_uses_head_dim():
    mha = MultiHeadAttention(32, 4).eval()  # head_dim = 8
    x = torch.randn(1, 5, 32)
    _, weights = mha(x, x, x, need_weights=True)
    q = mha.q_proj(x).view(1, 5, 4, 8).transpose(1, 2)
    k = mha.k_proj(x).view(1, 5, 4, 8).transpose(1, 2)
    assert_close(weights, torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(8), dim=-1))


def test_mha_rejects_bad_inputs():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError):
        MultiHeadAttention(8, 2, dropout=1.5)
    with pytest.raises(ValueError):
        MultiHeadAttention(8, 2, rotary=RotaryEmbedding(8, 16))  # head_dim is 4
    mha = MultiHeadAttention(8, 2)
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError):
        mha(torch.randn(2, 3, 6), x, x)  # wrong d_model
    with pytest.raises(ValueError):
        mha(x, torch.randn(2, 4, 8), x)  # key and value differ
    with pytest.raises(ValueError):
        mha(x, torch.randn(2, 4, 8), torch.randn(2, 4, 8), is_causal=True)  # L_q != L_k
    with pytest.raises(TypeError):
        mha(x, x, x, mask=torch.ones(3, 3))
    with pytest.raises(ValueError):
        mha(x, x, x, mask=torch.ones(4, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------------------
# positional encodings
# ------------------------------------------------------------------------------------------


def test_sinusoidal_values_match_the_formula():
    d_model = 10
    pe = SinusoidalPositionalEncoding(d_model, max_len=50)
    x = torch.zeros(1, 50, d_model)
    enc = pe(x)[0]
    for pos, i in [(0, 0), (1, 0), (3, 2), (17, 4), (49, 1)]:
        angle = pos / 10000 ** (2 * i / d_model)
        assert enc[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
        assert enc[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    y = torch.randn(2, 7, d_model)
    assert_close(pe(y), y + enc[:7])


def test_sinusoidal_rejects_bad_inputs():
    with pytest.raises(ValueError, match="even"):
        SinusoidalPositionalEncoding(7, 10)
    pe = SinusoidalPositionalEncoding(8, 10)
    with pytest.raises(ValueError, match="max_len"):
        pe(torch.zeros(1, 11, 8))
    with pytest.raises(ValueError):
        pe(torch.zeros(11, 8))


def test_learned_positional_embedding_adds_one_row_per_position():
    emb = LearnedPositionalEmbedding(max_len=6, d_model=4)
    x = torch.randn(3, 5, 4)
    assert_close(emb(x), x + emb.embedding.weight[:5])
    with pytest.raises(ValueError, match="max_len"):
        emb(torch.randn(1, 7, 4))


def _rope_by_complex_numbers(x, positions, base=10000.0):
    """Second derivation: pair coordinate i with i + d/2 as a complex number, multiply by
    exp(i * m * theta_i)."""
    d = x.shape[-1]
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double())
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = z * torch.polar(torch.ones_like(theta), positions.double()[:, None] * theta)
    return torch.cat([z.real, z.imag], dim=-1).float()


def test_rope_matches_complex_rotation_and_preserves_norms():
    rope = RotaryEmbedding(head_dim=8, max_len=32)
    x = torch.randn(2, 3, 10, 8)
    rotated = rope.rotate(x)
    assert_close(rotated, _rope_by_complex_numbers(x, torch.arange(10)))
    assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    assert_close(rotated[..., 0, :], x[..., 0, :])  # position 0 is not rotated
    positions = torch.tensor([5, 0, 31, 7, 7, 2, 9, 1, 3, 4])
    assert_close(rope.rotate(x, positions), _rope_by_complex_numbers(x, positions))


def test_rope_dot_product_depends_only_on_offset():
    head_dim, L = 16, 12
    rope = RotaryEmbedding(head_dim, max_len=L)
    q_vec, k_vec = torch.randn(head_dim), torch.randn(head_dim)
    # the same q and k vectors placed at every position 0..L-1
    q = q_vec.expand(1, 1, L, head_dim)
    k = k_vec.expand(1, 1, L, head_dim)
    q_rot, k_rot = rope.apply_rotary(q, k)
    dots = (q_rot @ k_rot.transpose(-1, -2))[0, 0]  # dots[m, n] = <R_m q, R_n k>
    for m in range(L):
        for n in range(L):
            # compare with the pair shifted to start at 0: positions (m - min, n - min)
            shift = min(m, n)
            assert_close(dots[m, n], dots[m - shift, n - shift])
    # and it does depend on the offset (the rotation is not the identity)
    assert not torch.allclose(dots[0, 0], dots[3, 0])
    assert not torch.allclose(dots[3, 0], dots[0, 3])


def test_rope_rejects_bad_inputs():
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(7, 10)
    rope = RotaryEmbedding(4, 10)
    with pytest.raises(ValueError, match="max_len"):
        rope.rotate(torch.randn(1, 11, 4))
    with pytest.raises(ValueError):
        rope.rotate(torch.randn(1, 3, 6))
    with pytest.raises(ValueError):
        rope.rotate(torch.randn(1, 3, 4), positions=torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError):
        rope.rotate(torch.randn(1, 3, 4), positions=torch.tensor([0.0, 1.0, 2.0]))


def test_mha_with_rope_rotates_queries_and_keys():
    rope = RotaryEmbedding(head_dim=4, max_len=16)
    with_rope = MultiHeadAttention(8, 2, rotary=rope).eval()
    plain = MultiHeadAttention(8, 2).eval()
    plain.load_state_dict(with_rope.state_dict())
    x = torch.randn(2, 6, 8)
    _, w_rope = with_rope(x, x, x, need_weights=True)
    _, w_plain = plain(x, x, x, need_weights=True)
    assert not torch.allclose(w_rope, w_plain)
    q = rope.rotate(plain.q_proj(x).view(2, 6, 2, 4).transpose(1, 2))
    k = rope.rotate(plain.k_proj(x).view(2, 6, 2, 4).transpose(1, 2))
    assert_close(w_rope, torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1))
    fast, _ = with_rope(x, x, x)
    explicit, _ = with_rope(x, x, x, need_weights=True)
    assert_close(fast, explicit)
