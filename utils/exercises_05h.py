"""The graders of chapter 5h's exercises (preference optimisation with DPO); see :mod:`utils.grader`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils.dpo import dpo_loss
from utils.grader import exercise

# --- 05h.bradley_terry -----------------------------------------------------------------------


def _bt(r_w, r_l):
    return 1.0 / (1.0 + math.exp(-(r_w - r_l)))


@exercise(
    "05h.bradley_terry",
    "The probability that one reply is preferred to another",
    difficulty=1,
    reference=_bt,
    wrong=[
        (lambda r_w, r_l: r_w / (r_w + r_l), "exponentials"),
        (lambda r_w, r_l: 1.0 / (1.0 + math.exp(r_w - r_l)), "the rejected"),
        (lambda r_w, r_l: math.exp(r_w - r_l), "probability"),
    ],
)
def bradley_terry(answer):
    """``answer(r_w, r_l)`` -> P(reply w is preferred to reply l) under the Bradley-Terry
    model, for rewards ``r_w`` and ``r_l`` (any real numbers)."""
    for r_w, r_l in [(2.0, 1.0), (0.5, 0.5), (-1.0, 3.0), (10.0, 9.0), (3.0, 1.0)]:
        got, want = float(answer(r_w, r_l)), _bt(r_w, r_l)
        if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            continue
        where = f"r_w={r_w}, r_l={r_l}"
        if r_w + r_l and math.isclose(got, r_w / (r_w + r_l), rel_tol=1e-6):
            yield (
                f"{where}: r_w / (r_w + r_l) needs positive scores; Bradley-Terry uses their "
                "exponentials, exp(r_w) / (exp(r_w) + exp(r_l)) = sigmoid(r_w - r_l)"
            )
        elif math.isclose(got, 1 - want, rel_tol=1e-6):
            yield f"{where}: {got:.4f} is the probability that the rejected reply wins"
        elif got > 1 or got < 0:
            yield f"{where}: {got:.4g} is not a probability (it must lie in [0, 1])"
        else:
            yield f"{where}: you gave {got:.4f}, expected {want:.4f}"
        return


# --- 05h.dpo_loss ------------------------------------------------------------------------------


def _reference(pc, pr, rc, rr, beta):
    return dpo_loss(pc, pr, rc, rr, beta).loss


def _naive_log_sigmoid(pc, pr, rc, rr, beta):
    return -torch.log(torch.sigmoid(beta * ((pc - rc) - (pr - rr)))).mean()


def _no_reference(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * (pc - pr)).mean()


def _beta_outside(pc, pr, rc, rr, beta):
    return -beta * F.logsigmoid((pc - rc) - (pr - rr)).mean()


def _flipped(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * ((pr - rr) - (pc - rc))).mean()


@exercise(
    "05h.dpo_loss",
    "The DPO loss from four log-probabilities",
    difficulty=2,
    reference=_reference,
    wrong=[
        (_no_reference, "reference"),
        (_beta_outside, "inside the sigmoid"),
        (_flipped, "rejected"),
        (_naive_log_sigmoid, "logsigmoid"),
    ],
)
def dpo(answer):
    """``answer(pc, pr, rc, rr, beta)`` -> the mean DPO loss (a 0-dim tensor) for ``(B,)``
    summed log-probabilities of the chosen and rejected replies under the policy (``pc``,
    ``pr``) and the reference (``rc``, ``rr``)."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for beta in (0.1, 0.5):
        pc, pr, rc, rr = (-10 * torch.rand(8, generator=g) for _ in range(4))
        cases.append((pc, pr, rc, rr, beta))
    # a pair ordered so wrongly that sigmoid(z) underflows to 0 in float32: log(0) = -inf
    cases.append((torch.tensor([-900.0]), torch.tensor([-1.0]), torch.tensor([-1.0]),
                  torch.tensor([-900.0]), 0.1))  # fmt: skip
    for pc, pr, rc, rr, beta in cases:
        got = answer(pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta)
        want = _reference(pc, pr, rc, rr, beta)
        got = torch.as_tensor(got, dtype=torch.float32)
        if got.numel() != 1:
            yield f"return the mean over the {pc.numel()} pairs (one number), got shape {tuple(got.shape)}"
            return
        if torch.isclose(got, want, rtol=1e-4, atol=1e-5):
            continue
        where = f"beta={beta}, {pc.numel()} pairs"

        def near(fn, got=got, args=(pc, pr, rc, rr, beta)):
            return bool(
                torch.isclose(got, torch.as_tensor(fn(*args)), rtol=1e-4, atol=1e-5)
            )

        if not torch.isfinite(got):
            yield (
                f"{where}: your loss is {got.item()} when a margin is large: log(sigmoid(z)) "
                "underflows; use F.logsigmoid(z) (or -softplus(-z)), exact for any z"
            )
        elif near(_no_reference):
            yield (
                f"{where}: your loss ignores the reference model: DPO compares log-ratios "
                "log pi(y|x) - log pi_ref(y|x), not the policy's log-probabilities alone"
            )
        elif near(_beta_outside):
            yield f"{where}: beta belongs inside the sigmoid, scaling the difference of log-ratios"
        elif near(_flipped):
            yield f"{where}: your loss rewards the rejected reply: the chosen log-ratio comes first"
        else:
            yield f"{where}: you gave {got.item():.5f}, expected {want.item():.5f}"
        return


# --- 05h.implicit_reward -----------------------------------------------------------------------


def _reward(policy_logp, ref_logp, beta):
    return beta * (policy_logp - ref_logp)


@exercise(
    "05h.implicit_reward",
    "The implicit reward of a reply",
    difficulty=1,
    reference=_reward,
    wrong=[
        (lambda p, r, beta: p - r, "beta"),
        (lambda p, r, beta: beta * math.exp(p - r), "log-ratio"),
        (lambda p, r, beta: beta * p, "reference"),
    ],
)
def implicit_reward(answer):
    """``answer(policy_logp, ref_logp, beta)`` -> DPO's implicit reward of one reply, from
    its summed log-probabilities under the policy and the reference."""
    for p, r, beta in [
        (-3.0, -5.0, 0.1),
        (-12.0, -10.5, 0.5),
        (-7.0, -7.0, 0.2),
        (-2.0, -8.0, 1.5),
    ]:
        got, want = float(answer(p, r, beta)), _reward(p, r, beta)
        if math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9):
            continue
        where = f"log pi={p}, log pi_ref={r}, beta={beta}"
        if math.isclose(got, p - r, rel_tol=1e-6):
            yield f"{where}: {got:g} is the log-ratio without beta: the reward is beta times it"
        elif math.isclose(got, beta * math.exp(p - r), rel_tol=1e-6):
            yield f"{where}: the reward is beta times the log-ratio, not the ratio itself"
        elif math.isclose(got, beta * p, rel_tol=1e-6):
            yield f"{where}: subtract the reference's log-probability: the reward is relative to it"
        else:
            yield f"{where}: you gave {got:g}, expected {want:g}"
        return
