"""Tests of LoRA written from scratch (utils.lora), on a tiny LlamaDecoder, checked against peft.

The peft tests copy our ``A, B`` into ``peft.get_peft_model`` of a copy of the same model and
compare outputs, merged weights and parameter counts; they are skipped without peft.
"""

import copy
import math

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from utils.llama import LlamaConfig, LlamaDecoder
from utils.lora import (
    LoRALinear,
    add_lora,
    count_parameters,
    load_lora_state_dict,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    to_peft_state,
)

# tests/test_llama.py's TINY: q_proj is 32 x 32, v_proj 16 x 32 (2 key/value heads of 8)
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
RANK, ALPHA = 4, 8
NAMES = [
    "blocks.0.attn.q_proj",
    "blocks.0.attn.v_proj",
    "blocks.1.attn.q_proj",
    "blocks.1.attn.v_proj",
]


def tiny_model() -> LlamaDecoder:
    torch.manual_seed(0)
    return LlamaDecoder(TINY).eval()


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of ``ids (B, T)``."""
    logits = model(ids[:, :-1])
    return nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())


def trained(model: LlamaDecoder, steps: int = 3) -> LlamaDecoder:
    """``model`` with LoRA on q and v, after a few AdamW steps (so A and B are both trained)."""
    add_lora(model, rank=RANK, alpha=ALPHA)
    opt = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    ids = torch.randint(0, TINY.vocab_size, (4, 12))
    for _ in range(steps):
        opt.zero_grad()
        lm_loss(model, ids).backward()
        opt.step()
    return model


IDS = torch.tensor([[1, 7, 3, 9, 4, 4, 20, 11], [0, 2, 49, 5, 6, 8, 13, 30]])


# --------------------------------------------------------------------------------------------
# One layer
# --------------------------------------------------------------------------------------------


def test_lora_linear_starts_as_the_base_and_computes_the_formula():
    torch.manual_seed(0)
    base = nn.Linear(12, 7, bias=True)
    layer = LoRALinear(base, rank=3, alpha=6)
    assert layer.scaling == 2.0 and layer.base is base
    assert layer.lora_A.shape == (3, 12) and layer.lora_B.shape == (7, 3)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    # kaiming_uniform_(a=√5) with fan_in 12 is uniform in ±1/√12
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(12)
    assert torch.count_nonzero(layer.lora_B) == 0
    x = torch.randn(2, 5, 12)  # (..., in)
    assert torch.equal(layer(x), base(x))  # B = 0: exactly the base layer
    with torch.no_grad():
        layer.lora_B.normal_()
    by_hand = base(x) + 2.0 * (x @ layer.lora_A.T) @ layer.lora_B.T
    assert_close(layer(x), by_hand)
    assert_close(layer.delta_weight(), 2.0 * layer.lora_B @ layer.lora_A)


def test_initialisation_is_peft_s():
    """With torch's generator in the same state, our A is peft's A bit for bit; B is zero."""
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_model(),
        peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["q_proj"]),
    )
    theirs = model.base_model.model.blocks[0].attn.q_proj
    base = nn.Linear(
        32, 32, bias=False
    )  # before seeding: its own init draws numbers too
    torch.manual_seed(1)
    theirs.reset_lora_parameters("default", init_lora_weights=True)
    torch.manual_seed(1)
    ours = LoRALinear(base, RANK, ALPHA)  # generator=None: torch's global generator
    assert torch.equal(ours.lora_A, theirs.lora_A["default"].weight)
    assert torch.equal(ours.lora_B, theirs.lora_B["default"].weight)
    assert ours.scaling == theirs.scaling["default"] == ALPHA / RANK


def test_dropout_acts_on_the_adapter_path_only():
    torch.manual_seed(0)
    base = nn.Linear(16, 16, bias=False)
    layer = LoRALinear(base, rank=2, alpha=2, dropout=0.5)
    x = torch.randn(8, 16)
    assert torch.equal(layer.train()(x), base(x))  # B = 0: dropout has nothing to drop
    with torch.no_grad():
        layer.lora_B.normal_()
    no_dropout = base(x) + (x @ layer.lora_A.T) @ layer.lora_B.T
    assert_close(layer.eval()(x), no_dropout)
    assert not torch.allclose(layer.train()(x), no_dropout)


def test_half_precision_base_gets_float32_adapters_like_peft():
    base = nn.Linear(16, 8, bias=False).to(torch.bfloat16)
    layer = LoRALinear(base, rank=2, alpha=4)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    assert layer(torch.randn(3, 16, dtype=torch.bfloat16)).dtype == torch.bfloat16
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(
        tiny_model().to(torch.bfloat16),
        peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]),
    )
    q = model.base_model.model.blocks[0].attn.q_proj
    assert q.lora_A["default"].weight.dtype == torch.float32  # autocast_adapter_dtype


# --------------------------------------------------------------------------------------------
# A whole model: add, train, merge, save
# --------------------------------------------------------------------------------------------


def test_add_lora_wraps_the_targets_freezes_the_rest_and_starts_equal():
    model = tiny_model()
    before = model(IDS)
    base_total = count_parameters(model)[1]
    assert add_lora(model, rank=RANK, alpha=ALPHA) == NAMES
    assert isinstance(model.blocks[1].attn.v_proj, LoRALinear)
    assert isinstance(model.blocks[1].attn.k_proj, nn.Linear)
    # r (in + out) per layer: q 4 (32 + 32), v 4 (32 + 16)
    n_lora = TINY.n_layers * (RANK * (32 + 32) + RANK * (32 + 16))
    assert count_parameters(model) == (n_lora, base_total + n_lora) == (896, 18016)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{ab}" for n in NAMES for ab in "AB"}
    assert len(lora_parameters(model)) == 2 * len(NAMES)
    assert torch.equal(model(IDS), before)  # B = 0 everywhere: the same model, exactly


def test_seed_gives_the_same_adapters_and_leaves_torch_s_generator_alone():
    a, b, c = tiny_model(), tiny_model(), tiny_model()
    rng = torch.get_rng_state()
    add_lora(a, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)
    add_lora(b, seed=0)
    add_lora(c, seed=1)
    for pa, pb in zip(lora_parameters(a), lora_parameters(b), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(lora_parameters(a)[0], lora_parameters(c)[0])
    # one generator for all layers: every A is a fresh draw
    assert not torch.equal(lora_parameters(a)[0], lora_parameters(a)[4])


def test_targets_can_be_any_linear_layers():
    model = tiny_model()
    names = add_lora(model, targets=("o_proj", "down_proj"), rank=2)
    assert names == [
        f"blocks.{i}.{n}" for i in range(2) for n in ("attn.o_proj", "mlp.down_proj")
    ]
    assert add_lora(tiny_model(), targets="gate_proj", rank=2) == [
        "blocks.0.mlp.gate_proj",
        "blocks.1.mlp.gate_proj",
    ]


def test_a_training_step_changes_only_the_adapters():
    model = tiny_model()
    add_lora(model, rank=RANK, alpha=ALPHA)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if ".lora_" not in k}
    opt = torch.optim.SGD(lora_parameters(model), lr=0.5)
    ids = torch.randint(0, TINY.vocab_size, (4, 12))
    layer = model.blocks[0].attn.q_proj

    lm_loss(model, ids).backward()
    # y = base(x) + s·(x Aᵀ) Bᵀ, so dL/dA = s·Bᵀ Gᵀ x and dL/dB = s·Gᵀ (x Aᵀ) for the
    # output gradient G. At the start B = 0: A's gradient is exactly zero, B's is not.
    # B moves first; from the second step on, A gets a gradient too.
    assert torch.count_nonzero(layer.lora_A.grad) == 0
    assert layer.lora_B.grad.abs().max() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    a0 = layer.lora_A.detach().clone()
    opt.step()
    assert torch.equal(layer.lora_A, a0) and torch.count_nonzero(layer.lora_B) > 0

    opt.zero_grad()
    lm_loss(model, ids).backward()
    assert layer.lora_A.grad.abs().max() > 0
    opt.step()
    assert not torch.equal(layer.lora_A, a0)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())  # bit for bit


def test_merge_gives_the_adapter_path_s_logits():
    model = trained(tiny_model())
    assert model.blocks[0].attn.q_proj.lora_B.abs().max() > 0  # the adapters did move
    with torch.no_grad():
        adapter_path = model(IDS)
        merged = merge_lora(model)
        assert merged is model
        merged_logits = merged(IDS)
    # fp32: one rounding of W + ΔW against the sum of x Wᵀ and two thin products
    assert_close(merged_logits, adapter_path, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(tiny_model().state_dict())  # original names
    assert count_parameters(model) == (0, count_parameters(tiny_model())[1])
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        merge_lora(model)


def test_merge_of_a_single_layer_returns_the_merged_linear():
    layer = LoRALinear(nn.Linear(8, 6), rank=2, alpha=2)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 8)
    expected = layer(x)
    merged = merge_lora(layer)
    assert type(merged) is nn.Linear
    assert_close(merged(x), expected, rtol=1e-5, atol=1e-6)


def test_adapter_state_round_trip():
    model = trained(tiny_model())
    state = lora_state_dict(model)
    assert set(state) == {f"{n}.lora_{ab}" for n in NAMES for ab in "AB"}
    assert state["blocks.0.attn.v_proj.lora_A"].shape == (RANK, 32)
    assert state["blocks.0.attn.v_proj.lora_B"].shape == (16, RANK)
    assert sum(t.numel() for t in state.values()) == count_parameters(model)[0]
    fresh = tiny_model()
    add_lora(fresh, rank=RANK, alpha=ALPHA, seed=5)  # another A: the load overwrites it
    load_lora_state_dict(fresh, state)
    with torch.no_grad():
        assert torch.equal(fresh(IDS), model(IDS))
        model.blocks[0].attn.q_proj.lora_B.add_(1.0)  # training goes on ...
    assert torch.equal(  # ... and the saved state, a copy, does not follow
        state["blocks.0.attn.q_proj.lora_B"],
        fresh.blocks[0].attn.q_proj.lora_B,
    )
    saved = state

    with pytest.raises(ValueError, match=r"missing \['blocks.1.attn.v_proj.lora_B'\]"):
        load_lora_state_dict(
            fresh, {k: v for k, v in saved.items() if k != NAMES[3] + ".lora_B"}
        )
    other_rank = tiny_model()
    add_lora(other_rank, rank=2)
    with pytest.raises(ValueError, match=r"shape \(4, 32\), the model \(2, 32\)"):
        load_lora_state_dict(other_rank, saved)
    with pytest.raises(ValueError, match="call add_lora first"):
        load_lora_state_dict(tiny_model(), saved)


def test_smollm2_numbers_of_the_module_docstring():
    """460,800 adapter parameters beside 134,515,008 (built on the meta device: no memory)."""
    smol = LlamaConfig(
        vocab_size=49152,
        d_model=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        d_ff=1536,
        rope_theta=100000.0,
        context_length=8192,
    )
    with torch.device("meta"):
        model = LlamaDecoder(smol)
    base_total = count_parameters(model)[1]
    add_lora(model)  # rank 8, q_proj and v_proj
    trainable, total = count_parameters(model)
    assert (trainable, base_total) == (460_800, 134_515_008)
    assert total == base_total + trainable
    assert round(100 * trainable / base_total, 2) == 0.34
    assert (
        round(trainable * 3 * 4 / 1e6, 1) == 5.5
    )  # grad + 2 Adam moments, fp32, in MB
    assert (
        round(base_total * 3 * 4 / 1e9, 1) == 1.6
    )  # the same for full fine-tuning, GB


# --------------------------------------------------------------------------------------------
# The same adapter in peft
# --------------------------------------------------------------------------------------------


def test_same_adapter_in_peft_gives_the_same_outputs_merges_and_counts():
    """peft's LoRA on a copy of the same network, with our A and B copied in.

    peft takes our custom ``nn.Module`` as it is: ``get_peft_model`` finds the ``nn.Linear``
    layers by name (``target_modules``) and wraps them; no ``config`` workaround is needed
    (it reads ``LlamaDecoder.config``, a dataclass, without complaint).
    """
    peft = pytest.importorskip("peft")
    base = tiny_model()
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(
            r=RANK,
            lora_alpha=ALPHA,
            target_modules=["q_proj", "v_proj"],
            lora_dropout=0.0,
            bias="none",
        ),
    )
    ours = trained(base)
    assert count_parameters(ours) == tuple(theirs.get_nb_trainable_parameters())

    state = to_peft_state(ours)
    assert set(state) == set(peft.get_peft_model_state_dict(theirs))
    result = peft.set_peft_model_state_dict(theirs, state)
    assert not result.unexpected_keys
    live = dict(theirs.named_parameters())  # the live names carry the adapter name
    assert torch.equal(
        live["base_model.model.blocks.1.attn.v_proj.lora_B.default.weight"],
        ours.blocks[1].attn.v_proj.lora_B,
    )

    with torch.no_grad():
        # the same frozen weights, the same A and B: only the float ops' order could differ
        assert_close(theirs(IDS), ours(IDS), rtol=1e-6, atol=1e-6)
        merged_theirs = theirs.merge_and_unload()
        merged_ours = merge_lora(ours)
        assert_close(merged_theirs(IDS), merged_ours(IDS), rtol=1e-6, atol=1e-6)
    assert type(merged_theirs) is LlamaDecoder
    theirs_sd, ours_sd = merged_theirs.state_dict(), merged_ours.state_dict()
    assert set(theirs_sd) == set(ours_sd)
    for k in ours_sd:  # W + (B A)·s, the same products in the same order
        assert_close(theirs_sd[k], ours_sd[k], rtol=1e-6, atol=1e-7, msg=k)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_bad_input_errors():
    lin = nn.Linear(32, 16)
    with pytest.raises(TypeError, match="wraps an nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(4, 4, 1))
    with pytest.raises(TypeError, match="got LoRALinear"):
        LoRALinear(LoRALinear(lin, rank=2))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="rank must be an int >= 1"):
            LoRALinear(lin, rank=bad)
    with pytest.raises(
        ValueError, match=r"rank=17 is larger than the layer: its weight is 16 x 32"
    ):
        LoRALinear(lin, rank=17)
    LoRALinear(lin, rank=16)  # a full-rank update is allowed (if pointless)
    with pytest.raises(ValueError, match="alpha must be a positive"):
        LoRALinear(lin, rank=2, alpha=0)
    with pytest.raises(TypeError, match="alpha"):
        LoRALinear(lin, rank=2, alpha="16")
    with pytest.raises(ValueError, match="dropout must be < 1"):
        LoRALinear(lin, rank=2, dropout=1.0)
    with pytest.raises(ValueError, match="dropout must be >= 0"):
        LoRALinear(lin, rank=2, dropout=-0.1)

    model = tiny_model()
    with pytest.raises(
        ValueError,
        match=r"no nn.Linear layer named \['qproj'\].*\['down_proj', 'gate_proj', "
        r"'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj'\]",
    ):
        add_lora(model, targets=("q_proj", "qproj"))
    assert count_parameters(model)[0] == count_parameters(model)[1]  # nothing changed
    with pytest.raises(ValueError, match="non-empty layer names"):
        add_lora(model, targets=())
    with pytest.raises(TypeError, match="targets must be"):
        add_lora(model, targets=3)
    with pytest.raises(ValueError, match="rank=40 is larger than the layer"):
        add_lora(model, rank=40)
    assert all(p.requires_grad for p in model.parameters())  # checked before any change
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora_parameters(model)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora_state_dict(model)
    add_lora(model)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(model, targets=("k_proj",))
