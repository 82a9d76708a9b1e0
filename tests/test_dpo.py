"""Tests of Direct Preference Optimization (utils.dpo).

The loss is checked against formulas written differently (softplus, the Bradley-Terry
probability), against its gradient, and against trl's ``DPOTrainer`` on the same
log-probabilities; the log-probabilities against a direct full-logits computation and
``utils.evaluation.continuation_logprobs``, on a tiny random decoder with a character-level
stand-in tokenizer; the KL against ``F.kl_div`` and ``torch.distributions``.
"""

import copy
import dataclasses
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from utils import chat_data, dpo
from utils.decoding import EmptyPromptError
from utils.evaluation import continuation_logprobs
from utils.llama import ContextLengthError, LlamaConfig, LlamaDecoder
from utils.lora import add_lora, lora_parameters
from utils.sft import IGNORE_INDEX

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

    def decode(self, ids):
        chars = {3 + c: chr(c) for c in range(290)}
        names = {v: k for k, v in self.SPECIAL.items()}
        return "".join(names.get(i, chars.get(i, "?")) for i in ids)


class NamedCharTokenizer(CharTokenizer):
    """The same, with ``convert_tokens_to_ids`` (as a Hugging Face tokenizer has)."""

    def convert_tokens_to_ids(self, token):
        return self.SPECIAL.get(token, 0)


def tiny_model(seed=0) -> LlamaDecoder:
    torch.manual_seed(seed)
    return LlamaDecoder(TINY).eval()


def _wrong(answer: str) -> str:
    """A plausible wrong reply: the number plus one, the word in lower case, reversed words."""
    if answer.isdigit():
        return str(int(answer) + 1)
    if "," in answer:
        return ", ".join(reversed(answer.split(", ")))
    return answer.lower()


def make_pairs(n=6, seed=0):
    """``n`` preference pairs from the chat data: the right reply chosen, a wrong one not."""
    examples = chat_data.make_examples(n, "train", seed=seed)
    return [(e.prompt, e.answer, _wrong(e.answer)) for e in examples]


def _random_logps(B, seed):
    g = torch.Generator().manual_seed(seed)
    # Summed log-probs of a few tokens each: negative, spread over tens of nats.
    return [-30 * torch.rand(B, generator=g, dtype=torch.float64) for _ in range(4)]


# ---- the loss -------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 3.0])
def test_dpo_loss_matches_softplus_and_bradley_terry(beta):
    pc, pr, rc, rr = _random_logps(64, seed=1)
    out = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
    z = beta * ((pc - rc) - (pr - rr))
    # -log σ(z) = log(1 + exp(-z)) = softplus(-z).
    assert_close(out.loss, F.softplus(-z).mean())
    # Bradley-Terry with the implicit rewards: P(chosen ≻ rejected) = e^rc / (e^rc + e^rr).
    r_c, r_r = beta * (pc - rc), beta * (pr - rr)
    p_chosen = torch.exp(r_c) / (torch.exp(r_c) + torch.exp(r_r))
    assert_close(out.loss, -torch.log(p_chosen).mean())
    assert_close(out.chosen_rewards, r_c)
    assert_close(out.rejected_rewards, r_r)
    assert_close(out.margins, r_c - r_r)
    wins = sum(1 for a, b in zip(r_c.tolist(), r_r.tolist(), strict=True) if a > b)
    assert out.accuracy.item() == pytest.approx(wins / 64)
    assert out.loss.dim() == 0 and out.accuracy.dim() == 0


def test_dpo_loss_is_finite_for_huge_margins():
    zero = torch.zeros(2)
    out = dpo.dpo_loss(torch.tensor([0.0, -1e4]), torch.tensor([-1e4, 0.0]), zero, zero)
    # Pair 0 is ordered right by 1000 units (loss ~0), pair 1 wrong by 1000 (loss ~1000).
    assert_close(out.loss, torch.tensor(500.0))
    assert out.accuracy.item() == 0.5


def test_dpo_loss_at_the_reference_is_log_2():
    pc, pr, _, _ = _random_logps(16, seed=2)
    out = dpo.dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.1)
    assert_close(out.loss, torch.tensor(math.log(2), dtype=torch.float64))
    assert torch.equal(out.margins, torch.zeros(16, dtype=torch.float64))
    assert out.accuracy.item() == 0.0  # a tie is not a win


def test_one_sgd_step_raises_chosen_and_lowers_rejected():
    pc0, pr0, rc, rr = _random_logps(8, seed=3)
    beta = 0.1
    pc, pr = pc0.clone().requires_grad_(), pr0.clone().requires_grad_()
    ref_c, ref_r = rc.clone().requires_grad_(), rr.clone().requires_grad_()
    before = dpo.dpo_loss(pc, pr, ref_c, ref_r, beta=beta)
    before.loss.backward()
    # ∂L/∂π_c = -β σ(-z) / B and ∂L/∂π_r = +β σ(-z) / B, z the scaled margin.
    z = beta * ((pc0 - rc) - (pr0 - rr))
    assert_close(pc.grad, -beta * torch.sigmoid(-z) / 8)
    assert_close(pr.grad, beta * torch.sigmoid(-z) / 8)
    assert ref_c.grad is None and ref_r.grad is None  # the reference is a constant
    with torch.no_grad():
        pc -= 10.0 * pc.grad
        pr -= 10.0 * pr.grad
    after = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
    assert (after.chosen_rewards > before.chosen_rewards).all()
    assert (after.rejected_rewards < before.rejected_rewards).all()
    assert (after.margins > before.margins).all()
    assert after.loss < before.loss


def test_dpo_loss_rejects_bad_input():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="positive"):
        dpo.dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(TypeError, match="beta"):
        dpo.dpo_loss(x, x, x, x, beta="0.1")
    with pytest.raises(ValueError, match="one shape"):
        dpo.dpo_loss(x, torch.zeros(4), x, x)
    with pytest.raises(ValueError, match=r"ref_chosen must be a \(B,\) float"):
        dpo.dpo_loss(x, x, torch.zeros(3, 1), x)
    with pytest.raises(ValueError, match="float tensor"):
        dpo.dpo_loss(torch.zeros(3, dtype=torch.long), x, x, x)
    with pytest.raises(ValueError, match="at least one"):
        dpo.dpo_loss(*[torch.zeros(0)] * 4)


# ---- the batches ----------------------------------------------------------------------


def test_dpo_batch_labels_only_the_final_reply():
    tok = CharTokenizer()
    pairs = make_pairs(10, seed=0)
    assert any(len(p) > 1 for p, _, _ in pairs)  # a two-turn prompt, with a reply in it
    (ci, ct), (ri, rt) = dpo.dpo_batch(tok, pairs, "Be terse.", max_tokens=512)
    assert ci.shape == ct.shape == ri.shape == rt.shape  # one T: torch.cat-able
    assert ci.shape[0] == len(pairs)
    for b, (prompt, chosen, rejected) in enumerate(pairs):
        for inputs, targets, reply in ((ci, ct, chosen), (ri, rt, rejected)):
            counted = targets[b] != IGNORE_INDEX
            assert tok.decode(targets[b][counted].tolist()) == reply + "<|im_end|>"
            first = int(counted.nonzero()[0])
            assert tok.decode(inputs[b, : first + 1].tolist()).endswith(
                prompt[-1]["content"] + "<|im_end|>\n<|im_start|>assistant\n"
            )
        # The same prompt tokens before both replies.
        n = int((ct[b] != IGNORE_INDEX).nonzero()[0])
        assert torch.equal(ci[b, : n + 1], ri[b, : n + 1])
    # Padding (the char tokenizer never gives id 0): 0 without convert_tokens_to_ids,
    # <|im_end|>'s id (2) with it, and never counted.
    pad = ci == 0
    assert pad.any() and (ct[pad] == IGNORE_INDEX).all()
    (ci2, _), _ = dpo.dpo_batch(NamedCharTokenizer(), pairs, "Be terse.", 512)
    assert (ci2[pad] == 2).all() and torch.equal(ci2[~pad], ci[~pad])


def test_dpo_batch_rejects_pairs_without_a_preference():
    tok = CharTokenizer()
    user = [{"role": "user", "content": "2 + 2?"}]
    with pytest.raises(ValueError, match="no preference to learn"):
        dpo.dpo_batch(tok, [(user, "4", "4 ")], None, 64)
    with pytest.raises(EmptyPromptError, match="chosen reply is empty"):
        dpo.dpo_batch(tok, [(user, " ", "5")], None, 64)
    with pytest.raises(EmptyPromptError, match="rejected reply is empty"):
        dpo.dpo_batch(tok, [(user, "4", "")], None, 64)
    with pytest.raises(ValueError, match="end with a user turn"):
        answered = [*user, {"role": "assistant", "content": "4"}]
        dpo.dpo_batch(tok, [(answered, "4", "5")], None, 64)
    with pytest.raises(ValueError, match=r"pairs\[1\] must be"):
        dpo.dpo_batch(tok, [(user, "4", "5"), (user, "4")], None, 64)
    with pytest.raises(ValueError, match="non-empty"):
        dpo.dpo_batch(tok, [], None, 64)
    with pytest.raises(TypeError, match="must be a str"):
        dpo.dpo_batch(tok, [(user, 4, "5")], None, 64)
    with pytest.raises(ContextLengthError):
        dpo.dpo_batch(tok, [(user, "4", "5")], None, 20)


@pytest.mark.slow
def test_dpo_batch_with_smollm2s_tokenizer_on_every_family():
    pytest.importorskip("gguf")
    from utils import gguf_weights
    from utils.llama import default_system_prompt

    tokenizer = gguf_weights.load_gguf_tokenizer()
    system = default_system_prompt(tokenizer.chat_template)
    pairs = make_pairs(40, seed=1)
    # One-turn prompts, and two-turn ones (system, user, assistant, user).
    assert {len(p) for p, _, _ in pairs} == {1, 4}
    (ci, ct), (ri, rt) = dpo.dpo_batch(tokenizer, pairs, system, 8192)
    for b, (_, chosen, rejected) in enumerate(pairs):
        for targets, reply in ((ct, chosen), (rt, rejected)):
            counted = targets[b][targets[b] != IGNORE_INDEX].tolist()
            assert tokenizer.decode(counted) == reply + "<|im_end|>"
    assert dpo._pad_id(tokenizer) == 2  # <|im_end|>


# ---- log-probabilities ----------------------------------------------------------------


def _direct_logps(model, inputs, targets):
    """Full logits, every position, then the counted ones summed row by row in a loop."""
    logp = model(inputs).log_softmax(-1)  # (B, T, V)
    out = []
    for b in range(inputs.shape[0]):
        total = torch.zeros((), dtype=logp.dtype)
        for t in range(inputs.shape[1]):
            if targets[b, t] != IGNORE_INDEX:
                total = total + logp[b, t, targets[b, t]]
        out.append(total)
    return torch.stack(out)


class LogitsOnly(torch.nn.Module):
    """A model with no ``hidden_states``, returning ``.logits`` as a transformers model."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, ids):
        return SimpleNamespace(logits=self.inner(ids))


def test_sequence_logps_matches_full_logits_and_continuation_logprobs():
    model = tiny_model()
    (ci, ct), (ri, rt) = dpo.dpo_batch(CharTokenizer(), make_pairs(5), None, 512)
    for inputs, targets in ((ci, ct), (ri, rt)):
        ours = dpo.sequence_logps(model, inputs, targets)
        assert ours.shape == (5,) and ours.dtype == torch.float32
        with torch.no_grad():
            assert_close(ours, _direct_logps(model, inputs, targets))
            assert_close(ours, dpo.sequence_logps(LogitsOnly(model), inputs, targets))
        for b in range(5):
            counted = targets[b] != IGNORE_INDEX
            first = int(counted.nonzero()[0])
            prompt = inputs[b, : first + 1]  # up to the header's last token
            reply = continuation_logprobs(model, prompt, targets[b][counted])
            assert_close(ours[b], reply.sum())
    ours.sum().backward()  # differentiable: the policy's gradient flows through it
    assert model.embed.weight.grad.abs().sum() > 0


def test_sequence_logps_rejects_bad_batches():
    model = tiny_model()
    inputs = torch.ones(2, 5, dtype=torch.long)
    targets = torch.full((2, 5), IGNORE_INDEX)
    targets[0, 3] = 4
    with pytest.raises(ValueError, match=r"row\(s\) \[1\]"):
        dpo.sequence_logps(model, inputs, targets)
    with pytest.raises(ValueError, match="same shape"):
        dpo.sequence_logps(model, inputs, targets[:, :4])
    with pytest.raises(TypeError, match="integer"):
        dpo.sequence_logps(model, inputs, targets.float())
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        dpo.sequence_logps(model, inputs[0], targets[0])


# ---- the KL ---------------------------------------------------------------------------


def test_token_kl_is_zero_for_the_same_model_and_exact_otherwise():
    policy, reference = tiny_model(0), tiny_model(1)
    (inputs, targets), _ = dpo.dpo_batch(CharTokenizer(), make_pairs(4), None, 512)
    assert dpo.token_kl(policy, copy.deepcopy(policy), inputs, targets) == 0.0
    kl = dpo.token_kl(policy, reference, inputs, targets)
    counted = targets != IGNORE_INDEX
    with torch.no_grad():
        logp = policy(inputs)[counted].log_softmax(-1)  # (N, V)
        logq = reference(inputs)[counted].log_softmax(-1)
    # F.kl_div(input=log q, target=log p) is Σ p (log p - log q) = KL(p || q).
    by_kl_div = F.kl_div(logq, logp, log_target=True, reduction="none").sum(-1).mean()
    by_distributions = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=logp),
        torch.distributions.Categorical(logits=logq),
    ).mean()
    assert kl > 0
    assert kl == pytest.approx(by_kl_div.item(), rel=1e-5)
    assert kl == pytest.approx(by_distributions.item(), rel=1e-5)
    # Not symmetric: the direction matters (the objective's is policy || reference).
    assert dpo.token_kl(reference, policy, inputs, targets) != pytest.approx(kl)


# ---- a training step ------------------------------------------------------------------


def test_a_lora_dpo_step_widens_the_margin_and_moves_away_from_the_reference():
    reference = tiny_model()
    policy = copy.deepcopy(reference)
    add_lora(policy, rank=4, seed=0)
    chosen, rejected = dpo.dpo_batch(CharTokenizer(), make_pairs(6), None, 512)
    with torch.no_grad():
        ref_c = dpo.sequence_logps(reference, *chosen)
        ref_r = dpo.sequence_logps(reference, *rejected)

    def step_loss():
        pc = dpo.sequence_logps(policy, *chosen)
        pr = dpo.sequence_logps(policy, *rejected)
        return dpo.dpo_loss(pc, pr, ref_c, ref_r, beta=0.1)

    start = step_loss()  # LoRA's B = 0: the policy starts as the reference
    assert_close(start.loss, torch.tensor(math.log(2)))
    assert dpo.token_kl(policy, reference, *chosen) == 0.0
    opt = torch.optim.SGD(lora_parameters(policy), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        step_loss().loss.backward()
        opt.step()
    end = step_loss()
    assert end.loss < start.loss
    assert end.margins.mean() > 0
    assert dpo.token_kl(policy, reference, *chosen) > 0


# ---- against trl ----------------------------------------------------------------------


def _trl_trainer(model, beta, ref_model=None):
    """The attributes ``trl.DPOTrainer._compute_loss`` reads, and nothing else.

    The DPO settings are trl's own defaults (read off ``DPOConfig``'s fields: ``loss_type
    ["sigmoid"]``, ``f_divergence_type "reverse_kl"``, no label smoothing, no WPO weighting,
    no LD-DPO ``ld_alpha``), with ``beta`` set. ``accelerator.gather`` (a no-op on one
    process) also records what it is given: the per-pair rewards, accuracies and margins.
    With ``ref_model=None`` the reference log-probs come from the batch
    (``precompute_ref_logps``).
    """
    from trl import DPOConfig

    fields = {f.name: f for f in dataclasses.fields(DPOConfig)}

    def default(name):
        f = fields[name]
        return f.default_factory() if f.default is dataclasses.MISSING else f.default

    assert default("loss_type") == ["sigmoid"]  # trl's default is standard DPO
    assert default("f_divergence_type") == "reverse_kl"
    gathered = []
    accelerator = SimpleNamespace(
        device=torch.device("cpu"),
        gather=lambda t: gathered.append(t) or t,
        gather_for_metrics=lambda t: t,
        unwrap_model=lambda m: m,
    )
    return SimpleNamespace(
        model=model,
        ref_model=ref_model,
        precompute_ref_logps=ref_model is None,
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        accelerator=accelerator,
        beta=beta,
        loss_types=default("loss_type"),
        loss_weights=default("loss_weights") or [1.0],
        ld_alpha=default("ld_alpha"),
        f_divergence_type=default("f_divergence_type"),
        f_alpha_divergence_coef=default("f_alpha_divergence_coef"),
        label_smoothing=default("label_smoothing"),
        use_weighting=default("use_weighting"),
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
        gathered=gathered,
    )


class FusedHeadStub(torch.nn.Module):
    """Stands in for a model patched by ``trl.trainer.utils.add_fused_lm_head``: returns the
    given per-token log-probs ``(2B, T)`` (the chosen rows, then the rejected ones)."""

    def __init__(self, per_token):
        super().__init__()
        self.per_token = per_token

    def forward(self, input_ids, labels, fused_lm_head, **kwargs):
        assert fused_lm_head and input_ids.shape[1] == self.per_token.shape[1] + 1
        zeros = torch.zeros_like(self.per_token)
        return SimpleNamespace(
            log_probs=self.per_token,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=zeros.bool(),
        )


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_loss_matches_trl_on_the_same_logps(beta):
    pytest.importorskip("trl")
    from trl import DPOTrainer

    B, T = 16, 7
    g = torch.Generator().manual_seed(4)
    per_token = -3 * torch.rand(2 * B, T, generator=g)  # (2B, T) token log-probs
    ref_c, ref_r = (-3 * T * torch.rand(2, B, generator=g)).unbind(0)
    inputs = {
        "input_ids": torch.zeros(2 * B, T + 1, dtype=torch.long),
        "attention_mask": torch.ones(2 * B, T + 1, dtype=torch.long),
        # Every token after the first is a reply token: trl sums all T log-probs of a row.
        "completion_mask": torch.ones(2 * B, T + 1, dtype=torch.long),
        "ref_chosen_logps": ref_c,
        "ref_rejected_logps": ref_r,
    }
    stub = FusedHeadStub(per_token).eval()
    trainer = _trl_trainer(stub, beta)
    trl_loss = DPOTrainer._compute_loss(trainer, stub, inputs, return_outputs=False)
    pc, pr = per_token.sum(1).chunk(2)
    ours = dpo.dpo_loss(pc, pr, ref_c, ref_r, beta=beta)
    assert_close(ours.loss, trl_loss)
    # gather's calls, in trl's order: chosen rewards, rejected rewards, accuracies, margins.
    chosen, rejected, accuracies, margins = trainer.gathered[:4]
    assert_close(ours.chosen_rewards, chosen)
    assert_close(ours.rejected_rewards, rejected)
    assert_close(ours.margins, margins)
    assert_close(ours.accuracy, accuracies.mean())
    logged = trainer._metrics["eval"]
    assert logged["rewards/margins"][0] == pytest.approx(ours.margins.mean().item())
    assert logged["rewards/accuracies"][0] == pytest.approx(ours.accuracy.item())


# trl's disable_gradient_checkpointing reads a property transformers 5 deprecates.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated")
def test_sequence_logps_and_dpo_loss_match_trl_on_a_tiny_transformers_llama():
    """The whole pipeline on the same batch: our batches, sequence_logps (the ``.logits``
    path) and dpo_loss against trl's fused head and loss, the gradients included."""
    pytest.importorskip("trl")
    import transformers
    from trl import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    config = transformers.LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    torch.manual_seed(0)
    policy = transformers.LlamaForCausalLM(config).eval()
    torch.manual_seed(1)
    reference = transformers.LlamaForCausalLM(config).eval()
    add_fused_lm_head(
        policy, outputs=("log_probs", "entropy", "mean_logits", "is_top1")
    )
    add_fused_lm_head(reference)
    chosen, rejected = dpo.dpo_batch(CharTokenizer(), make_pairs(4), None, 512)
    inputs = torch.cat([chosen[0], rejected[0]])  # (2B, T)
    targets = torch.cat([chosen[1], rejected[1]])
    counted = targets != IGNORE_INDEX
    # trl's format: the whole sequence (B, T + 1) and a mask of its reply tokens.
    last = targets[:, -1:].where(counted[:, -1:], 0)
    input_ids = torch.cat([inputs, last], dim=1)
    assert torch.equal(input_ids[:, 1:][counted], targets[counted])
    batch = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),  # right padding: nothing to hide
        "completion_mask": F.pad(counted, (1, 0)).long(),
    }
    params = [p for p in policy.parameters() if p.requires_grad]

    beta = 0.2
    trainer = _trl_trainer(policy, beta, ref_model=reference)
    trl_loss = DPOTrainer._compute_loss(trainer, policy, batch, return_outputs=False)
    trl_grads = torch.autograd.grad(trl_loss, params)

    pc = dpo.sequence_logps(policy, *chosen)
    pr = dpo.sequence_logps(policy, *rejected)
    with torch.no_grad():
        rc = dpo.sequence_logps(reference, *chosen)
        rr = dpo.sequence_logps(reference, *rejected)
    ours = dpo.dpo_loss(pc, pr, rc, rr, beta=beta)
    assert_close(ours.loss, trl_loss)
    assert_close(ours.chosen_rewards, trainer.gathered[0])
    assert_close(ours.rejected_rewards, trainer.gathered[1])
    for ours_g, trl_g in zip(
        torch.autograd.grad(ours.loss, params), trl_grads, strict=True
    ):
        assert_close(ours_g, trl_g)


def test_trainer_loss_equals_dpo_loss_on_the_same_pairs():
    torch.manual_seed(0)
    model = LlamaDecoder(TINY)
    inputs = torch.randint(3, TINY.vocab_size, (4, 6))
    targets = inputs.roll(-1, dims=1)
    targets[:, :2] = IGNORE_INDEX
    chosen, rejected = (inputs[:2], targets[:2]), (inputs[2:], targets[2:])
    ref = torch.tensor([-3.0, -4.0]), torch.tensor([-5.0, -2.0])
    loss, metrics, n = dpo.trainer_loss(0.2)(model, (*chosen, *rejected, *ref))
    expected = dpo.dpo_loss(
        dpo.sequence_logps(model, *chosen),
        dpo.sequence_logps(model, *rejected),
        *ref,
        0.2,
    )
    assert_close(loss, expected.loss)
    assert_close(metrics["margin"], expected.margins.mean())
    assert int(n) == int((targets != IGNORE_INDEX).sum())  # reply tokens scored
    with pytest.raises(ValueError, match="a DPO batch is"):
        dpo.trainer_loss()(model, (inputs, targets))
