"""The graders of chapter 6b's exercises (decoding strategies); see :mod:`utils.grader`."""

from __future__ import annotations

import torch

from utils.decoding import apply_repetition_penalty
from utils.grader import exercise, open_exercise
from utils.models import filter_logits


def _tensor(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{what} should be a torch tensor, got {type(value).__name__}")
    return value


def _naive_softmax(z):
    e = z.exp()
    return e / e.sum(-1, keepdim=True)


@exercise(
    "06b.temperature",
    "Sampling probabilities at temperature T",
    difficulty=1,
    reference=lambda z, t: torch.softmax(z / t, dim=-1),
    wrong=[
        (lambda z, t: torch.softmax(z * t, dim=-1), "multiplied"),
        (lambda z, t: torch.softmax(z, dim=-1) / t, "sum to 1"),
        (lambda z, t: _naive_softmax(z / t), "overflow"),
        (lambda z, t: torch.softmax(z / t, dim=0), "over the batch"),
    ],
)
def temperature(answer):
    """``answer(logits [B, V], T)`` -> ``[B, V]``: ``softmax(logits / T)`` over the vocabulary."""
    g = torch.Generator().manual_seed(0)
    cases = [(1.0, 1.0), (0.5, 1.0), (2.0, 1.0), (100.0, 1.0), (0.05, 50.0)]
    for t, scale in cases:
        z = torch.randn(3, 10, generator=g, dtype=torch.float64) * 2 * scale
        got = _tensor(answer(z.clone(), t), "the probabilities")
        want = torch.softmax(z / t, dim=-1)
        if got.shape != want.shape:
            yield f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            return
        got = got.to(want.dtype)
        if torch.allclose(got, want, atol=1e-9):
            continue
        where = f"T = {t}"
        if torch.isnan(got).any():
            yield (
                f"{where}, logits up to {z.abs().max():.0f}: NaN in your probabilities: exp(z/T) "
                "overflows; subtract the row's maximum first (torch.softmax does)"
            )
        elif torch.allclose(got, torch.softmax(z * t, dim=-1), atol=1e-9):
            yield (
                f"{where}: you multiplied the logits by T; divide them: T < 1 must sharpen "
                "the distribution, T > 1 flatten it"
            )
        elif torch.allclose(got, torch.softmax(z / t, dim=0), atol=1e-9):
            yield f"{where}: your softmax runs over the batch (dim 0); it must run over the vocabulary (dim -1)"
        elif not torch.allclose(got.sum(-1), torch.ones(3, dtype=got.dtype), atol=1e-6):
            yield (
                f"{where}: your rows sum to {[round(s, 4) for s in got.sum(-1).tolist()]}; "
                "probabilities must sum to 1: apply T to the logits, then the softmax"
            )
        else:
            err = (got - want).abs().max().item()
            yield f"{where}: your probabilities differ from softmax(z/T) by up to {err:.3g}"
        return


def _top_p(logits, p):
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop_sorted = probs.cumsum(-1) - probs >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _top_p_strict(logits, p):  # keeps tokens while the cumulative mass is <= p
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    drop_sorted = sorted_logits.softmax(-1).cumsum(-1) > p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _top_p_unsorted(logits, p):
    probs = logits.softmax(-1)
    return logits.masked_fill(probs.cumsum(-1) - probs >= p, float("-inf"))


@exercise(
    "06b.top_p",
    "Nucleus (top-p) filtering",
    difficulty=2,
    reference=_top_p,
    wrong=[
        (_top_p_strict, "at least p"),
        (_top_p_unsorted, "sort"),
        (
            lambda z, p: filter_logits(z, top_k=max(1, round(p * z.shape[-1]))),
            "fixed number",
        ),
    ],
)
def top_p(answer):
    """``answer(logits [B, V], p)`` -> ``[B, V]``: the logits of the smallest set of most likely
    tokens whose probabilities add up to at least ``p``, the others ``-inf``; compared with
    ``utils.models.filter_logits(logits, top_p=p)``."""
    g = torch.Generator().manual_seed(0)
    for p, spread in (
        (0.9, 1.0),
        (0.5, 2.0),
        (0.99, 1.0),
        (0.05, 1.0),
        (1.0, 1.0),
        (0.9, 4.0),
    ):
        z = torch.randn(4, 12, generator=g, dtype=torch.float64) * spread
        got = _tensor(answer(z.clone(), p), "the filtered logits")
        want = filter_logits(z, top_p=p)
        if got.shape != want.shape:
            yield f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            return
        got = got.to(want.dtype)
        kept, want_kept = torch.isfinite(got), torch.isfinite(want)
        if torch.equal(kept, want_kept) and torch.allclose(got[kept], want[kept]):
            continue
        where = f"p = {p}"
        if torch.equal(kept, want_kept):
            yield (
                f"{where}: the right tokens survive but their logits changed; return the "
                "original logits of the kept tokens (-inf for the others)"
            )
            return
        probs = z.softmax(-1)
        for row in range(z.shape[0]):
            if torch.equal(kept[row], want_kept[row]):
                continue
            mass = probs[row][kept[row]].sum().item()
            n_got, n_want = int(kept[row].sum()), int(want_kept[row].sum())
            if not kept[row, probs[row].argmax()]:
                yield f"{where}, row {row}: the most likely token must always be kept"
            elif (
                torch.isfinite(_top_p_unsorted(z, p)[row]).equal(kept[row])
                and n_got != n_want
            ):
                yield (
                    f"{where}, row {row}: you accumulate the probabilities in vocabulary "
                    "order; sort the tokens by probability first (most likely first)"
                )
            elif mass < p - 1e-12:
                yield (
                    f"{where}, row {row}: your {n_got} tokens hold {mass:.3f} of the "
                    "probability; the nucleus is the smallest set holding at least p: keep "
                    "the token that crosses p too"
                )
            elif n_got > n_want:
                yield (
                    f"{where}, row {row}: you keep {n_got} tokens ({mass:.3f} of the mass); "
                    f"{n_want} already hold at least p: keep the smallest such set"
                )
            else:
                yield f"{where}, row {row}: you keep {n_got} tokens, the nucleus has {n_want}"
            if (
                p < 1
                and len({int(k) for k in want_kept.sum(-1)}) > 1
                and len({int(k) for k in kept.sum(-1)}) == 1
            ):
                yield (
                    "you keep a fixed number of tokens in every row, like top-k; the nucleus "
                    "grows where the model is unsure and shrinks where it is confident"
                )
            return
        return


def _penalty(logits, previous, theta):
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, previous, True)
    penalised = torch.where(logits > 0, logits / theta, logits * theta)
    return torch.where(seen, penalised, logits)


def _penalty_divide(logits, previous, theta):
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, previous, True)
    return torch.where(seen, logits / theta, logits)


def _penalty_per_occurrence(logits, previous, theta):
    out = logits.clone()
    for row in range(logits.shape[0]):
        for token in previous[row].tolist():
            z = out[row, token]
            out[row, token] = z / theta if z > 0 else z * theta
    return out


def _penalty_all_rows(logits, previous, theta):
    seen = torch.zeros(logits.shape[-1], dtype=torch.bool)
    seen[previous.flatten()] = True
    penalised = torch.where(logits > 0, logits / theta, logits * theta)
    return torch.where(seen, penalised, logits)


@exercise(
    "06b.repetition_penalty",
    "The repetition penalty",
    difficulty=2,
    reference=_penalty,
    wrong=[
        (_penalty_divide, "negative"),
        (_penalty_per_occurrence, "once"),
        (_penalty_all_rows, "another row"),
    ],
)
def repetition_penalty(answer):
    """``answer(logits [B, V], previous [B, T], theta)`` -> ``[B, V]``: every token of row b that
    occurs in ``previous[b]`` gets ``z/θ`` if ``z > 0``, else ``z·θ`` (once, however often it
    occurred); compared with ``utils.decoding.apply_repetition_penalty``."""
    g = torch.Generator().manual_seed(0)
    for theta, B, V, T in (
        (1.3, 2, 10, 6),
        (2.0, 3, 8, 8),
        (1.0, 2, 6, 3),
        (1.5, 1, 5, 1),
    ):
        logits = torch.randn(B, V, generator=g, dtype=torch.float64) * 2
        previous = torch.randint(0, V, (B, T), generator=g)
        previous[0, -1] = previous[0, 0]  # a token seen twice
        got = _tensor(answer(logits.clone(), previous.clone(), theta), "the result")
        want = apply_repetition_penalty(logits, previous, theta)
        if got.shape != want.shape:
            yield f"shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            return
        got = got.to(want.dtype)
        if torch.allclose(got, want):
            continue
        for b, v in (~torch.isclose(got, want)).nonzero().tolist():
            z, zg = logits[b, v].item(), got[b, v].item()
            seen = v in previous[b].tolist()
            where = f"θ = {theta}, row {b}, token {v} (logit {z:.3f})"
            if not seen:
                yield (
                    f"{where}: your function penalised a token that does not occur in this "
                    "row's text; it may occur in another row, but each row has its own history"
                    if v in previous.flatten().tolist()
                    else f"{where}: this token was never generated; leave its logit alone"
                )
            elif z <= 0 and abs(zg - z / theta) < 1e-9:
                yield (
                    f"{where}: dividing a negative logit by θ raises it to {zg:.3f}, which "
                    f"favours the repeated token; multiply it by θ instead ({z * theta:.3f})"
                )
            elif previous[b].tolist().count(v) > 1:
                yield (
                    f"{where}: it occurs {previous[b].tolist().count(v)} times and you "
                    "penalised it each time; the penalty applies once per token"
                )
            else:
                yield f"{where}: you gave {zg:.4f}, expected {want[b, v].item():.4f}"
            return


# --- 06b.decoding_tradeoff (open-ended) ---------------------------------------------------

open_exercise(
    "06b.decoding_tradeoff",
    "Diversity against errors, on a language whose rules are known",
    difficulty=3,
    rubric=[
        "Decodes the same prompts with the same number and length of samples and seeded "
        "generators for every setting: greedy, at least three temperatures and at least one "
        "truncated setting (top-p or top-k).",
        "Measures errors in a way the sampler cannot game (here: word pairs never seen in "
        "the training text), next to diversity across samples (distinct-n, with greedy's "
        "one continuation counted once per sample) and loops within a sample (rep-n).",
        "Reports all of them for every setting in one table and picks a setting for an "
        "error tolerance stated in advance.",
        "Explains the trade-off: greedy and low temperatures keep to the mode (identical "
        "samples, loops); high temperatures flatten the distribution and give its tail, "
        "where the errors are, more mass; truncation cuts the tail off before sampling.",
    ],
    answer="""
        Train a small model on the generated corpus, whose grammar is known, so that an error
        can be counted: a word pair that never occurs in the training text. Decode the same
        prompt under each setting with seeded generators and measure errors, diversity
        across samples and repetition within a sample. Greedy decoding makes no errors but
        says one thing, in a loop; raising the temperature buys diversity and, beyond some
        point, errors, because a flatter distribution samples more often from the tail where
        an imperfect model keeps its mistakes; cutting the tail off with top-p or top-k
        removes many of those errors at the same temperature, at some cost in diversity. Which
        setting is best depends on the error tolerance, and on the model: a better-trained
        model keeps less mass in its tail.
    """,
)
