"""The graders of chapter 7's exercises (the questions of the FAQ, answered with code); see
:mod:`utils.grader`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils import compute
from utils.grader import exercise, open_exercise
from utils.models import mean_pool


def _tensor(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{what} should be a torch tensor, got {type(value).__name__}")
    return value


def _number(value, what: str) -> float:
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} should be a number, got {type(value).__name__}")
    return float(value)


# ------------------------------------------------------------------------------ F1


def _counts(predicted, truth):
    tp = int(((predicted == 1) & (truth == 1)).sum())
    fp = int(((predicted == 1) & (truth == 0)).sum())
    fn = int(((predicted == 0) & (truth == 1)).sum())
    tn = int(((predicted == 0) & (truth == 0)).sum())
    return tp, fp, fn, tn


def _f1(predicted, truth):
    tp, fp, fn, _ = _counts(predicted, truth)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _harmonic(a, b):
    return 2 * a * b / (a + b) if a + b else 0.0


def _seed_f1(predicted, truth):
    """Seed 004's 'F1': the harmonic mean of accuracy and recall."""
    tp, fp, fn, tn = _counts(predicted, truth)
    return _harmonic((tp + tn) / len(truth), tp / (tp + fn) if tp + fn else 0.0)


def _f1_cases():
    rare = torch.tensor([1] * 10 + [0] * 90)  # section 7.8: 1 positive in 10
    flagged = torch.zeros(100, dtype=torch.long)
    flagged[:8] = 1  # 8 of the 10 positives found ...
    flagged[10:22] = 1  # ... and 12 false alarms
    g = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 2, (50,), generator=g)
    noisy = torch.where(torch.rand(50, generator=g) < 0.3, 1 - truth, truth)
    return [
        ("8 of 10 rare positives found with 12 false alarms", flagged, rare),
        ("a noisy classifier on a balanced set", noisy, truth),
        ("few positives, many predicted", torch.tensor([1, 1, 1, 1, 0, 1]),
         torch.tensor([1, 0, 0, 0, 0, 0])),
        ("a model that always answers negative", torch.zeros(100, dtype=torch.long), rare),
    ]  # fmt: skip


@exercise(
    "07.f1_score",
    "F1 is precision and recall, not accuracy",
    difficulty=1,
    reference=_f1,
    wrong=[
        (_seed_f1, "accuracy"),
        (
            lambda p, t: (
                lambda tp, fp, fn, tn: (
                    (tp / (tp + fp) + tp / (tp + fn)) / 2 if tp else 0.0
                )
            )(*_counts(p, t)),
            "arithmetic mean",
        ),
        (lambda p, t: (p == t).float().mean().item(), "accuracy"),
    ],
)
def f1_score(answer):
    """``answer(predicted, truth)`` -> F1 as a float; both ``[N]`` long tensors of 0/1, the
    positive class 1. F1 = 0 where there is no true positive."""
    for what, predicted, truth in _f1_cases():
        got = _number(answer(predicted.clone(), truth.clone()), "your F1")
        want = _f1(predicted, truth)
        if abs(got - want) < 1e-6:
            continue
        tp, fp, fn, tn = _counts(predicted, truth)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        accuracy = (tp + tn) / len(truth)

        def near(x, got=got):
            return abs(got - x) < 1e-6  # float32 answers too

        head = f"on {what} (TP={tp}, FP={fp}, FN={fn}, TN={tn}) you got {got:.4f}"
        if near(_seed_f1(predicted, truth)):
            yield (
                f"{head}: the harmonic mean of accuracy and recall, seed 004's formula; F1 "
                f"uses precision ({precision:.3f}) where you used accuracy ({accuracy:.3f})"
            )
        elif near(accuracy):
            yield f"{head}, the accuracy; F1 is the harmonic mean of precision and recall"
        elif near((precision + recall) / 2):
            yield (
                f"{head}, the arithmetic mean of precision and recall; F1 is their "
                "harmonic mean, 2PR / (P + R)"
            )
        elif near(precision) or near(recall):
            yield f"{head}, only one of precision and recall; F1 combines both"
        elif math.isnan(got):
            yield f"{head}: with no true positive F1 is 0 (define 0/0 as 0 here)"
        else:
            yield f"{head}, F1 = 2TP / (2TP + FP + FN) = {want:.4f}"
        return


# ------------------------------------------------------------------------------ Chinchilla


def _compute_optimal(flops, tokens_per_param=20.0):
    n = math.sqrt(flops / (6 * tokens_per_param))
    return n, tokens_per_param * n


@exercise(
    "07.compute_optimal",
    "Split a compute budget between parameters and tokens",
    difficulty=1,
    reference=_compute_optimal,
    wrong=[
        (lambda c, r=20.0: (math.sqrt(c / r), r * math.sqrt(c / r)), "6ND"),
        (lambda c, r=20.0: (c / (6 * r), r * c / (6 * r)), "square root"),
        (lambda c, r=20.0: _compute_optimal(c, r)[::-1], "swapped"),
    ],
)
def compute_optimal(answer):
    """``answer(flops, tokens_per_param=20)`` -> ``(N, D)`` with ``C = 6·N·D`` and ``D = r·N``."""
    for flops, ratio in (
        (5.76e23, 20.0),
        (3.14e23, 20.0),
        (1e18, 20.0),
        (3.8e25, 40.0),
    ):
        want = compute.chinchilla_optimal(flops, ratio)
        out = answer(flops, ratio)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            yield f"return a pair (N, D), got {out!r}"
            return
        n, d = (_number(v, name) for v, name in zip(out, ("N", "D"), strict=True))
        if math.isclose(n, want[0], rel_tol=1e-6) and math.isclose(
            d, want[1], rel_tol=1e-6
        ):
            continue
        head = f"C = {flops:.3g} FLOPs, {ratio:g} tokens per parameter: you gave N = {n:.3g}"
        head += f", D = {d:.3g}"
        if math.isclose(n, want[1], rel_tol=1e-6) and math.isclose(
            d, want[0], rel_tol=1e-6
        ):
            yield f"{head}: N and D are swapped (D = {ratio:g} N is the larger one)"
        elif math.isclose(n, math.sqrt(flops / ratio), rel_tol=1e-6):
            yield (
                f"{head}: N = sqrt(C / r) forgets the 6 of C = 6ND; with D = rN, "
                "C = 6 r N², so N = sqrt(C / (6r))"
            )
        elif math.isclose(n, flops / (6 * ratio), rel_tol=1e-6):
            yield f"{head}: C = 6 r N² is quadratic in N: take the square root of C / (6r)"
        elif math.isclose(n, want[0], rel_tol=1e-6):
            yield f"{head}: N is right, but D must be {ratio:g} x N = {want[1]:.3g}"
        else:
            yield f"{head}; C = 6ND with D = rN gives N = {want[0]:.3g}, D = {want[1]:.3g}"
        return


# ------------------------------------------------------------------------------ accumulation


def _accumulate(model, loss_fn, inputs, targets, micro_batches):
    model.zero_grad(set_to_none=False)
    n = len(inputs)
    for x, y in zip(
        inputs.chunk(micro_batches), targets.chunk(micro_batches), strict=True
    ):
        (loss_fn(model(x), y) * (len(x) / n)).backward()  # mean loss, weighted by size


def _no_division(model, loss_fn, inputs, targets, micro_batches):
    model.zero_grad()
    for x, y in zip(
        inputs.chunk(micro_batches), targets.chunk(micro_batches), strict=True
    ):
        loss_fn(model(x), y).backward()


def _equal_weights(model, loss_fn, inputs, targets, micro_batches):
    model.zero_grad()
    chunks = zip(inputs.chunk(micro_batches), targets.chunk(micro_batches), strict=True)
    for x, y in chunks:
        (loss_fn(model(x), y) / micro_batches).backward()


def _zero_each(model, loss_fn, inputs, targets, micro_batches):
    n = len(inputs)
    for x, y in zip(
        inputs.chunk(micro_batches), targets.chunk(micro_batches), strict=True
    ):
        model.zero_grad()
        (loss_fn(model(x), y) * (len(x) / n)).backward()


def _no_zero(model, loss_fn, inputs, targets, micro_batches):
    n = len(inputs)
    for x, y in zip(
        inputs.chunk(micro_batches), targets.chunk(micro_batches), strict=True
    ):
        (loss_fn(model(x), y) * (len(x) / n)).backward()


def _grads(model):
    return [
        p.grad.detach().clone() if p.grad is not None else None
        for p in model.parameters()
    ]


def _make_model():
    with torch.random.fork_rng(devices=[]):  # leave the reader's random state alone
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()


@exercise(
    "07.grad_accumulation",
    "Gradient accumulation that gives the full-batch gradient",
    difficulty=2,
    reference=_accumulate,
    wrong=[
        (_no_division, "times the full-batch"),
        (_equal_weights, "unequal"),
        (_zero_each, "only the last micro-batch"),
        (_no_zero, "before"),
    ],
)
def grad_accumulation(answer):
    """``answer(model, loss_fn, inputs, targets, micro_batches)`` -> None; leaves in every
    ``p.grad`` the gradient of ``loss_fn(model(inputs), targets)`` (a mean over the batch)
    whatever ``p.grad`` held before. ``inputs [B, 6]``, ``targets [B]``; chunks by
    ``Tensor.chunk``, so the last micro-batch may be smaller."""
    g = torch.Generator().manual_seed(0)
    loss_fn = F.cross_entropy  # a mean over the examples
    for batch, k in ((8, 4), (12, 3), (10, 4), (7, 2)):
        x = torch.randn(batch, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (batch,), generator=g)
        model = _make_model()
        loss_fn(model(x), y).backward()
        want = _grads(model)
        model.zero_grad()
        for p in model.parameters():  # what an earlier step left behind
            p.grad = torch.full_like(p, 0.5)
        answer(model, loss_fn, x.clone(), y.clone(), k)  # what it returns is ignored
        got = _grads(model)
        if any(t is None for t in got):
            yield "some parameters have no .grad after your function: call backward()"
            return
        if all(
            torch.allclose(a, b, atol=1e-10) for a, b in zip(got, want, strict=True)
        ):
            continue
        head = f"batch of {batch} in {k} micro-batches"
        ratio = got[-1].norm() / want[-1].norm()
        stale = [a - 0.5 for a in got]
        if all(
            torch.allclose(a, b, atol=1e-10) for a, b in zip(stale, want, strict=True)
        ):
            yield (
                f"{head}: your gradients are the right ones plus what .grad held before; "
                "zero the gradients once, before the first micro-batch"
            )
        elif all(
            torch.allclose(a, k * b, atol=1e-10) for a, b in zip(got, want, strict=True)
        ):
            yield (
                f"{head}: your gradients are {k} times the full-batch gradient: each "
                "micro-batch's mean loss must be scaled down (by its share of the batch)"
            )
        elif batch % k and torch.allclose(
            torch.cat([a.flatten() for a in got]),
            torch.cat([a.flatten() for a in _reference_grads(_equal_weights, x, y, k)]),
            atol=1e-10,
        ):
            sizes = [len(c) for c in x.chunk(k)]
            yield (
                f"{head}: the micro-batches are unequal ({sizes}), so dividing each mean "
                "loss by the number of micro-batches weights the small one too much; "
                "weight each by len(micro-batch) / len(batch)"
            )
        elif torch.allclose(
            torch.cat([a.flatten() for a in got]),
            torch.cat([a.flatten() for a in _reference_grads(_zero_each, x, y, k)]),
            atol=1e-10,
        ):
            yield (
                f"{head}: only the last micro-batch's gradient is left; zeroing inside the "
                "loop throws away the ones before it: zero once, before the loop"
            )
        else:
            yield (
                f"{head}: your gradients differ from the full-batch gradient (the last "
                f"layer's is {ratio:.3g} times as large)"
            )
        return


def _reference_grads(method, x, y, k):
    model = _make_model()
    method(model, F.cross_entropy, x, y, k)
    return _grads(model)


# ------------------------------------------------------------------------------ pooling


def _seq_first_mean(x, padding_mask):
    real = (~padding_mask).T.unsqueeze(-1).to(x.dtype)  # [L, B, 1], 1 = real token
    return (x * real).sum(dim=0) / real.sum(dim=0)


@exercise(
    "07.seq_first_mean",
    "Average a sequence-first batch over its real tokens",
    difficulty=1,
    reference=_seq_first_mean,
    wrong=[
        (lambda x, m: x.mean(dim=1), "over the batch"),
        (lambda x, m: x.mean(dim=0), "padding"),
        (
            lambda x, m: (x * (~m).T.unsqueeze(-1)).sum(0) / x.shape[0],
            "divided by",
        ),
    ],
)
def seq_first_mean(answer):
    """``answer(x, padding_mask)`` -> ``[B, d]``; ``x [L, B, d]`` (PyTorch's default
    sequence-first layout), ``padding_mask [B, L]`` bool, True at padding (the convention of
    ``src_key_padding_mask``). The mean of each sequence over its real tokens."""
    g = torch.Generator().manual_seed(0)
    for L, lengths, d in ((6, [6, 3, 1], 4), (5, [2, 5], 3), (4, [4, 4, 4, 2], 2)):
        B = len(lengths)
        x = torch.randn(L, B, d, generator=g, dtype=torch.float64)
        lengths_t = torch.tensor(lengths)
        padding = torch.arange(L)[None, :] >= lengths_t[:, None]  # [B, L]
        want = mean_pool(x.transpose(0, 1), ~padding)  # the book's pooling, batch-first
        got = _tensor(answer(x.clone(), padding.clone()), "the pooled tensor")
        head = f"x of shape [L={L}, B={B}, d={d}] with lengths {lengths}"
        if got.shape != want.shape:
            if got.shape == (L, d):
                yield (
                    f"{head}: your result has shape {tuple(got.shape)}, [L, d]: dim 1 of the "
                    "sequence-first layout is the batch, so you averaged over the batch"
                )
            else:
                yield f"{head}: shape {tuple(got.shape)}, expected [B, d] = {(B, d)}"
            return
        got = got.to(torch.float64)
        if torch.allclose(got, want, atol=1e-10):
            continue
        if torch.allclose(got, x.mean(dim=0), atol=1e-10):
            yield (
                f"{head}: you averaged over all L positions, padding included; a padded "
                "sequence must pool to the same vector as the unpadded one"
            )
        elif torch.allclose(
            got, (x * (~padding).T.unsqueeze(-1)).sum(0) / L, atol=1e-10
        ):
            yield (
                f"{head}: you summed the real tokens but divided by L = {L}; divide by "
                "each sequence's own number of real tokens"
            )
        elif torch.allclose(got, mean_pool(x.transpose(0, 1), padding), atol=1e-10):
            yield (
                f"{head}: you averaged the padding and skipped the real tokens: in "
                "padding_mask True marks padding"
            )
        else:
            err = (got - want).abs().max().item()
            yield f"{head}: differs from the masked mean by up to {err:.3g}"
        return


# --- 07.repeated_data (open-ended) --------------------------------------------------------

open_exercise(
    "07.repeated_data",
    "Is repeated data as good as new data?",
    difficulty=3,
    rubric=[
        "Keeps the model, the steps and the batches' shape fixed and varies only how much "
        "distinct text the batches are drawn from, so that the text is seen from about once "
        "to 64 times or more.",
        "Reports the training and the validation loss of every run, the validation loss on "
        "one held-out text for all of them.",
        "Names the number of repetitions at which the validation loss starts to rise and the "
        "gap between training and validation loss opens, and calls it memorisation.",
        "Relates the result to data-constrained scaling (Muennighoff et al., 2023: a few "
        "epochs cost little, many cost a lot) and states the limits of a toy run (one "
        "simple grammar, one model size, one seed).",
    ],
    answer="""
        Train the same model for the same number of steps on nested subsets of one corpus, so
        that the subsets are seen from once to hundreds of times, and measure the training
        and validation loss. A few repetitions cost almost nothing: the validation loss
        barely moves and the training loss matches it. With many repetitions the training
        loss keeps falling while the validation loss rises: the model memorises the few
        sentences it has. Muennighoff et al. (2023) found the same at scale: up to about four
        epochs, repeated tokens are worth about as much as new ones, and their value decays
        with more repetition.
    """,
)
