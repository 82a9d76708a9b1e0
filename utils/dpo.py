"""Direct Preference Optimization (Rafailov et al., NeurIPS 2023), from its derivation.

Preference data say, for a prompt ``x``, which of two replies is better: ``y_w`` (chosen,
"won") over ``y_l`` (rejected, "lost"). RLHF fits a reward model ``r(x, y)`` to such pairs and
then maximises the reward with reinforcement learning, sampling replies from the policy as it
trains. DPO shows that the second step has a closed form, and that the reward model can be
written in terms of the policy itself, so one classification-like loss on the pairs replaces
both steps. The argument, in four moves:

1. **The objective.** RLHF's policy step maximises the reward while staying close to the
   reference model ``π_ref`` (the model before this stage, here the SFT or instruct model)::

       max_π  E_{x, y ~ π(·|x)} [ r(x, y) ]  -  β · KL( π(·|x) || π_ref(·|x) )

   The KL term keeps the policy where the reward is trustworthy: a learned reward is only
   right near the replies it was fitted on, and far from ``π_ref`` the policy would find
   replies that score high and read badly.

2. **Its optimum.** For each ``x`` the objective is ``E_π[r - β log(π / π_ref)]``. Write
   ``π*(y|x) = π_ref(y|x) · exp(r(x, y) / β) / Z(x)`` with ``Z(x) = Σ_y π_ref(y|x) ·
   exp(r(x, y) / β)`` (which makes ``π*`` sum to one). Then ``r - β log(π / π_ref) =
   -β log(π / π*) + β log Z(x)``, so the objective is ``-β KL(π || π*) + β log Z(x)``: ``Z``
   does not depend on ``π`` and a KL is zero only between equal distributions, hence the best
   policy is ``π*``, the reference reweighted by ``exp(r / β)``.

3. **The reward, read back from the policy.** Solve step 2 for ``r``::

       r(x, y) = β log( π*(y|x) / π_ref(y|x) ) + β log Z(x)

   Every reward is a log-ratio of its optimal policy to the reference, plus a term that
   depends on the prompt only. ``Z(x)`` sums over every possible reply and cannot be
   computed, but it is about to cancel.

4. **The likelihood of the preferences.** The Bradley-Terry model (1952) says that
   ``P(y_w ≻ y_l | x) = σ(r(x, y_w) - r(x, y_l))``: only reward *differences* matter, and in
   the difference of two rewards of the same prompt ``β log Z(x)`` cancels. Parametrise the
   reward by the policy being trained, ``r_θ(x, y) = β log(π_θ(y|x) / π_ref(y|x))``, and
   maximise the likelihood of the observed pairs::

       L(θ) = -E_{(x, y_w, y_l)} log σ( β [log π_θ(y_w|x) - log π_ref(y_w|x)]
                                      - β [log π_θ(y_l|x) - log π_ref(y_l|x)] )

   The policy that fits the preferences best is the optimum of step 1 for the reward that
   fits them best. No reward model is trained and nothing is sampled: each pair needs the
   log-probabilities of its two replies under the policy and under the frozen reference
   (those can be computed once, before training).

``log π(y|x)`` is the *sum* of the reply's token log-probabilities (:func:`sequence_logps`;
the reply's closing ``<|im_end|>`` included: how the reply ends is part of it).
``β log(π_θ / π_ref)`` is the **implicit reward** (``chosen_rewards``,
``rejected_rewards``); their difference is the **margin**, and the share of pairs with a
positive margin the **reward accuracy**. At the start ``π_θ = π_ref``: every reward is 0 and
the loss ``log 2`` for every pair. The gradient,
``-β σ(r̂_l - r̂_w) · (∇ log π_θ(y_w|x) - ∇ log π_θ(y_l|x))``, pushes the chosen reply up and
the rejected one down, weighted by how wrongly the implicit reward orders the pair: pairs it
already orders right with a wide margin stop counting.

**What β does.** It is the weight of the KL leash in step 1, and in the loss the scale of
the log-ratios. The sigmoid saturates once the margin ``β · Δ`` is a few units, so a small
``β`` lets the log-ratios ``Δ`` grow large (far from ``π_ref``) before the loss is satisfied,
and a large ``β`` stops the policy after a small move. The paper uses ``β = 0.1`` in most of
its experiments. The loss only sees the difference of the two log-ratios: it is also lowered
when both replies lose probability, the rejected one faster, so the chosen reward is worth
watching on its own, and :func:`token_kl` measures how far the policy has moved.

trl's :class:`~trl.DPOTrainer` computes the same loss (``loss_type="sigmoid"``, its
default); ``tests/test_dpo.py`` checks :func:`dpo_loss` against it on the same
log-probabilities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from utils.checks import check_min_int, check_positive_float
from utils.decoding import EmptyPromptError
from utils.evaluation import _device
from utils.llama import _check_chat, format_chatml
from utils.sft import IGNORE_INDEX, ChatTokens, collate, tokenize_chat

__all__ = [
    "DPOOutput",
    "sequence_logps",
    "dpo_loss",
    "dpo_batch",
    "token_kl",
    "trainer_loss",
]

# (inputs (B, T), targets (B, T)), as utils.sft.collate returns them
Batch = tuple[torch.Tensor, torch.Tensor]


def _check_batch(inputs: Any, targets: Any) -> torch.Tensor:
    """The ``(B, T)`` mask of counted positions, after checking the batch's format."""
    for name, t in (("inputs", inputs), ("targets", targets)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a (B, T) tensor of token ids, got {got}")
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer token ids, got {t.dtype}")
    if inputs.shape != targets.shape:
        raise ValueError(
            f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} must have "
            "the same shape: targets[b, t] is the token that follows inputs[b, t]"
        )
    counted = targets != IGNORE_INDEX  # (B, T)
    empty = (~counted.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"row(s) {empty} have no labelled target token: a reply's log-probability "
            "needs at least one token (is the reply missing, or cut off by max_tokens?)"
        )
    return counted


def _counted_logits(
    model: Any, inputs: torch.Tensor, counted: torch.Tensor
) -> torch.Tensor:
    """``logits (N, V)`` in float32 at the ``N`` counted positions of ``inputs (B, T)``."""
    inputs = inputs.to(_device(model))
    counted = counted.to(inputs.device)
    if hasattr(model, "hidden_states") and hasattr(model, "output_weight"):
        # Only the counted positions meet the output layer (V x d, the largest matrix of a
        # small model): most positions of a chat are prompt, whose logits nobody reads.
        hidden = model.hidden_states(inputs)[counted]  # (N, d_model)
        return F.linear(hidden, model.output_weight).float()
    if not callable(model):
        raise TypeError(f"model must be callable, got {type(model).__name__}")
    # Right padding (sft.collate) needs no attention mask: causal attention never lets a
    # real token read the padding that comes after it.
    out = model(inputs)
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if not isinstance(logits, torch.Tensor) or logits.shape[:2] != inputs.shape:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(out)
        raise TypeError(
            f"model(inputs) of shape {tuple(inputs.shape)} must return logits "
            f"(B, T, V) or an object with .logits (a transformers model), got {got}"
        )
    return logits[counted].float()  # (N, V)


def sequence_logps(model: Any, inputs: Any, targets: Any) -> torch.Tensor:
    """``(B,)`` summed log-probabilities ``log π(y|x)`` of each row's labelled targets.

    ``inputs (B, T)`` and ``targets (B, T)`` are a batch of :func:`utils.sft.collate`
    (targets are :data:`~utils.sft.IGNORE_INDEX` where not counted: prompt and padding), so
    row ``b`` gets ``Σ_t log p(targets[b, t] | inputs[b, :t + 1])`` over its counted ``t``.
    ``model`` is a :class:`utils.llama.LlamaDecoder` (logits computed at the counted
    positions only, from ``hidden_states`` and ``output_weight``) or any model mapping ids
    ``(B, T)`` to logits ``(B, T, V)``, directly or as ``.logits`` (a transformers model).
    Float32, on the model's device, differentiable: call it under ``torch.no_grad()`` for the
    reference model.
    """
    counted = _check_batch(inputs, targets)
    logits = _counted_logits(model, inputs, counted)  # (N, V)
    wanted = targets.to(logits.device)[counted.to(logits.device)]  # (N,)
    token_logps = logits.log_softmax(-1).gather(1, wanted[:, None])[:, 0]  # (N,)
    # Back to rows: boolean indexing walks the batch row by row, so row b's tokens are the
    # next counted[b].sum() entries.
    rows = counted.nonzero()[:, 0].to(logits.device)  # (N,) the row of each token
    out = torch.zeros(inputs.shape[0], device=logits.device, dtype=token_logps.dtype)
    return out.index_add(0, rows, token_logps)


class DPOOutput(NamedTuple):
    """What :func:`dpo_loss` returns for a batch of ``B`` pairs.

    ``loss``: the scalar mean DPO loss (the one to backpropagate); ``chosen_rewards``,
    ``rejected_rewards``: ``(B,)`` implicit rewards ``β (log π_θ - log π_ref)`` of each
    reply; ``margins``: ``(B,)`` chosen minus rejected reward; ``accuracy``: the scalar
    share of pairs with a positive margin. The last four are detached (for logging).
    """

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    accuracy: torch.Tensor


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> DPOOutput:
    """The DPO loss ``mean(-log σ(β [(π_c - ρ_c) - (π_r - ρ_r)]))`` and its diagnostics.

    The four arguments are ``(B,)`` summed log-probabilities (:func:`sequence_logps`)
    of the chosen and rejected replies under the policy being trained (``π_c``,
    ``π_r``) and the frozen reference (``ρ_c``, ``ρ_r``). ``beta > 0`` is the KL
    weight (module docstring). The reference's log-probabilities are constants: they
    are detached here, so no gradient
    reaches the reference even if they were computed with one.
    """
    check_positive_float("beta", beta, optional=False)
    named = {
        "policy_chosen": policy_chosen,
        "policy_rejected": policy_rejected,
        "ref_chosen": ref_chosen,
        "ref_rejected": ref_rejected,
    }
    for name, t in named.items():
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or not t.is_floating_point():
            got = (
                f"a {t.dtype} tensor of shape {tuple(t.shape)}"
                if isinstance(t, torch.Tensor)
                else type(t).__name__
            )
            raise ValueError(
                f"{name} must be a (B,) float tensor of log-probs, got {got}"
            )
    shapes = {name: tuple(t.shape) for name, t in named.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(
            f"the four log-prob tensors must have one shape (B,), got {shapes}"
        )
    if policy_chosen.numel() == 0:
        raise ValueError("dpo_loss needs at least one preference pair")
    chosen_logratio = policy_chosen - ref_chosen.detach()  # (B,)
    rejected_logratio = policy_rejected - ref_rejected.detach()  # (B,)
    logits = beta * (chosen_logratio - rejected_logratio)  # (B,) margin, with gradient
    # logsigmoid, not log(sigmoid(.)): a margin of -100 would give log(0) = -inf.
    loss = -F.logsigmoid(logits).mean()
    chosen_rewards = beta * chosen_logratio.detach()
    rejected_rewards = beta * rejected_logratio.detach()
    margins = chosen_rewards - rejected_rewards
    accuracy = (margins > 0).float().mean()
    return DPOOutput(loss, chosen_rewards, rejected_rewards, margins, accuracy)


def _pad_id(tokenizer: Any) -> int:
    """``<|im_end|>``'s id when the tokenizer knows it, else 0 (padding is never counted)."""
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    pad = convert("<|im_end|>") if callable(convert) else None
    return pad if isinstance(pad, int) and pad >= 0 else 0


def _check_pair(i: int, pair: Any) -> tuple[list[dict], str, str]:
    if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 3:
        raise ValueError(
            f"pairs[{i}] must be (prompt_messages, chosen_text, rejected_text), got {pair!r}"
        )
    prompt, chosen, rejected = pair
    try:
        prompt = _check_chat(prompt)
    except (TypeError, ValueError) as e:
        raise type(e)(f"pairs[{i}]: the prompt: {e}") from e
    if prompt[-1]["role"] != "user":
        raise ValueError(
            f"pairs[{i}]: the prompt must end with a user turn (the replies answer it), "
            f"but its last message is from {prompt[-1]['role']!r}"
        )
    for name, text in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(text, str):
            raise TypeError(
                f"pairs[{i}]: the {name} reply must be a str, got {type(text).__name__}"
            )
        if not text.strip():
            raise EmptyPromptError(f"pairs[{i}]: the {name} reply is empty")
    if chosen.strip() == rejected.strip():
        raise ValueError(
            f"pairs[{i}]: the chosen and rejected replies are the same ({chosen!r}): "
            "there is no preference to learn (the pair's margin is 0 whatever the model)"
        )
    return prompt, chosen, rejected


def _reply_tokens(
    tokenizer: Any, prompt: list[dict], reply: str, default_system: str | None
) -> ChatTokens:
    """``prompt + reply`` tokenized, only the reply (and its ``<|im_end|>``) labelled."""
    chat = tokenize_chat(
        tokenizer, [*prompt, {"role": "assistant", "content": reply}], default_system
    )
    # tokenize_chat labels every assistant turn; an earlier one in a multi-turn prompt is
    # context, the same in both replies of the pair, and not part of log π(y|x).
    head = format_chatml(prompt, default_system, add_generation_prompt=True)
    head_ids = list(tokenizer(head, add_special_tokens=False)["input_ids"])
    n = len(head_ids)
    if chat.ids[:n] != head_ids:
        raise ValueError(
            "the tokenizer splits the prompt differently when the reply follows it, so the "
            "reply's tokens cannot be told apart from the prompt's"
        )
    return ChatTokens(chat.ids, [IGNORE_INDEX] * n + chat.labels[n:])


def dpo_batch(
    tokenizer: Any,
    pairs: Sequence[tuple[Sequence[dict], str, str]],
    default_system: str | None,
    max_tokens: int,
) -> tuple[Batch, Batch]:
    """Tokenize preference pairs into ``(chosen_batch, rejected_batch)``.

    ``pairs``: ``B`` tuples ``(prompt_messages, chosen_text, rejected_text)``, the prompt a
    chat (:func:`utils.llama.format_chatml`'s messages) ending with a user turn. Each batch
    is an ``(inputs (B, T), targets (B, T))`` pair of :func:`utils.sft.collate` in which only
    the final reply and its ``<|im_end|>`` are labelled (earlier assistant turns of the prompt
    are context). Both are padded to the same ``T`` (with ``<|im_end|>``'s id, or 0), so
    ``torch.cat`` can score the ``2B`` rows in one forward pass. ``max_tokens`` is the longest
    conversation allowed (:class:`~utils.llama.ContextLengthError` beyond).
    """
    check_min_int("max_tokens", max_tokens, minimum=2)
    if not isinstance(pairs, Sequence) or isinstance(pairs, str) or not pairs:
        raise ValueError("pairs must be a non-empty list of (prompt, chosen, rejected)")
    checked = [_check_pair(i, pair) for i, pair in enumerate(pairs)]
    # One collate for the 2B rows (all chosen, then all rejected): one length T for both.
    chats = [_reply_tokens(tokenizer, p, c, default_system) for p, c, _ in checked]
    chats += [_reply_tokens(tokenizer, p, r, default_system) for p, _, r in checked]
    inputs, targets = collate(chats, _pad_id(tokenizer), max_tokens)  # (2B, T) each
    B = len(pairs)
    return (inputs[:B], targets[:B]), (inputs[B:], targets[B:])


@torch.no_grad()
def token_kl(policy: Any, reference: Any, inputs: Any, targets: Any) -> float:
    """Mean per-token ``KL(π(·|prefix) || π_ref(·|prefix))`` at the counted positions, in nats.

    Exact over the whole vocabulary at each counted position of the batch ``(inputs (B, T),
    targets (B, T))`` (:func:`utils.sft.collate`'s format, e.g. a chosen batch of
    :func:`dpo_batch`). It measures the cost of tuning along the batch's replies (the
    prefixes are the data's, not the policy's samples, so it is not the sequence-level KL of
    the objective, which averages over the policy's own replies). 0 for identical models.
    Both models as in :func:`sequence_logps`, with the same vocabulary.
    """
    counted = _check_batch(inputs, targets)
    logp = _counted_logits(policy, inputs, counted).log_softmax(-1)  # (N, V)
    logq = _counted_logits(reference, inputs, counted).log_softmax(-1)  # (N, V)
    if logp.shape != logq.shape:
        raise ValueError(
            f"the two models' vocabularies differ ({logp.shape[-1]} vs {logq.shape[-1]}): "
            "a KL compares distributions over the same tokens"
        )
    kl = (logp.exp() * (logp - logq.to(logp.device))).sum(-1)  # (N,)
    value = float(kl.mean())
    if not math.isfinite(value):
        raise ValueError(
            f"the KL is {value}: the reference gives a token probability 0"
        )
    return max(value, 0.0)  # a KL is >= 0; float rounding can give -1e-9


def trainer_loss(beta: float = 0.1):
    """The DPO loss as a ``loss_fn(model, batch)`` for :class:`utils.train.Trainer`.

    ``batch = (chosen_inputs, chosen_targets, rejected_inputs, rejected_targets, ref_chosen,
    ref_rejected)``: two :func:`dpo_batch` halves (padded to one length) and the reference's
    ``(B,)`` log-probabilities of the two replies, computed once before training. The chosen
    and rejected rows go through the policy in one forward pass. Returns ``(loss,
    {"reward_accuracy", "margin"}, n_tokens)``, the trainer's format (``n_tokens``: the reply
    tokens scored, chosen and rejected).
    """
    check_positive_float("beta", beta, optional=False)

    def loss_fn(model: Any, batch: Sequence[torch.Tensor]):
        if len(batch) != 6:
            raise ValueError(
                "a DPO batch is (chosen_inputs, chosen_targets, rejected_inputs, "
                f"rejected_targets, ref_chosen, ref_rejected), got {len(batch)} items"
            )
        chosen_in, chosen_t, rejected_in, rejected_t, ref_chosen, ref_rejected = batch
        logps = sequence_logps(
            model,
            torch.cat([chosen_in, rejected_in]),
            torch.cat([chosen_t, rejected_t]),
        )  # (2B,): chosen rows, then rejected rows
        policy_chosen, policy_rejected = logps.chunk(2)
        out = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
        metrics = {"reward_accuracy": out.accuracy, "margin": out.margins.mean()}
        n_tokens = (chosen_t != IGNORE_INDEX).sum() + (rejected_t != IGNORE_INDEX).sum()
        return (
            out.loss,
            metrics,
            n_tokens,
        )  # reply tokens scored: the trainer's tokens/s

    return loss_fn
