"""The graders of chapter 4b's exercises (schedules, clipping, accumulation); see :mod:`utils.grader`.

The schedule is compared with :func:`utils.optim.warmup_cosine` stepped through a real optimizer,
clipping with ``torch.nn.utils.clip_grad_norm_``, and accumulated gradients with the gradient of
one large batch of a small seeded model, in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.grader import exercise, open_exercise
from utils.optim import warmup_cosine


def _tensor(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{what} should be a torch tensor, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------
# 04b.warmup_cosine
# --------------------------------------------------------------------------------------------


def _lr_at(step, peak_lr, warmup_steps, total_steps, min_ratio=0.1, *, variant=None):
    if step < warmup_steps:
        return peak_lr * (step if variant == "from_zero" else step + 1) / warmup_steps
    if step >= total_steps:
        return peak_lr * (0.0 if variant == "to_zero" else min_ratio)
    if variant == "from_start":
        progress = step / total_steps
    else:
        progress = (step - warmup_steps) / (total_steps - warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    floor = 0.0 if variant == "to_zero" else min_ratio
    return peak_lr * (floor + (1 - floor) * cosine)


def _book_rates(peak_lr, warmup_steps, total_steps, min_ratio, n_steps):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak_lr)
    schedule = warmup_cosine(opt, warmup_steps, total_steps, min_lr_ratio=min_ratio)
    rates = []
    for _ in range(n_steps):
        rates.append(schedule.get_last_lr()[0])
        opt.step()
        schedule.step()
    return rates


@exercise(
    "04b.warmup_cosine",
    "Warm-up and cosine decay, step by step",
    difficulty=2,
    reference=_lr_at,
    wrong=[
        (
            lambda s, p, w, t, r=0.1: _lr_at(s, p, w, t, r, variant="from_zero"),
            "wasted",
        ),
        (lambda s, p, w, t, r=0.1: _lr_at(s, p, w, t, r, variant="to_zero"), "floor"),
        (
            lambda s, p, w, t, r=0.1: _lr_at(s, p, w, t, r, variant="from_start"),
            "end of the warm-up",
        ),
    ],
)
def warmup_cosine_check(answer):
    """``answer(step, peak_lr, warmup_steps, total_steps, min_ratio=0.1)`` -> the learning
    rate (a float) in use at optimizer step ``step`` = 0, 1, 2, ...; compared with
    :func:`utils.optim.warmup_cosine` over every step of several schedules, and past the end."""
    for peak, W, S, r in ((1e-3, 10, 100, 0.1), (3e-4, 4, 20, 0.0), (1.0, 0, 30, 0.5)):
        n = S + 5
        want = _book_rates(peak, W, S, r, n)
        for s in range(n):
            got = float(answer(s, peak, W, S, r))
            if math.isclose(got, want[s], rel_tol=1e-9, abs_tol=1e-15):
                continue
            where = f"peak {peak:g}, warm-up {W}, total {S}, floor {r:g}: at step {s}"
            tell = f"you give {got:.6g}, the schedule {want[s]:.6g}"

            def same(variant, got=got, args=(s, peak, W, S, r)):
                return math.isclose(got, _lr_at(*args, variant=variant), rel_tol=1e-9)

            if s < W and same("from_zero"):
                yield (
                    f"{where} {tell}: the warm-up factor is (s + 1)/W, so that the first "
                    "step is not wasted at rate 0 and step W - 1 reaches the peak"
                )
            elif same("to_zero"):
                yield (
                    f"{where} {tell}: the cosine decays to the floor min_ratio × peak, "
                    "not to 0: factor r + (1 - r)·(1 + cos(π·progress))/2"
                )
            elif same("from_start"):
                yield (
                    f"{where} {tell}: the cosine starts at the end of the warm-up: "
                    "progress = (s - W)/(S - W), not s/S"
                )
            elif s >= S:
                yield f"{where} (past the last step) {tell}: stay at the floor"
            else:
                yield f"{where} {tell}"
            return


# --------------------------------------------------------------------------------------------
# 04b.clip_global_norm
# --------------------------------------------------------------------------------------------


def _clip(grads, max_norm, *, per_tensor=False, always=False, after=False):
    norms = [g.norm() for g in grads]
    total = torch.stack(norms).norm()
    if per_tensor:
        out = [
            g * torch.clamp(max_norm / (n + 1e-6), max=1.0)
            for g, n in zip(grads, norms, strict=True)
        ]
    else:
        factor = max_norm / (total + 1e-6)
        factor = factor if always else torch.clamp(factor, max=1.0)
        out = [g * factor for g in grads]
    if after:
        total = torch.stack([g.norm() for g in out]).norm()
    return out, total


@exercise(
    "04b.clip_global_norm",
    "Clip the gradients by their global norm",
    difficulty=2,
    reference=_clip,
    wrong=[
        (lambda g, c: _clip(g, c, per_tensor=True), "each tensor"),
        (lambda g, c: _clip(g, c, always=True), "scaled it up"),
        (lambda g, c: _clip(g, c, after=True), "before clipping"),
        (lambda g, c: ([x.clamp(-c, c) for x in g], _clip(g, c)[1]), "direction"),
    ],
)
def clip_global_norm(answer):
    """``answer(grads, max_norm)`` with ``grads`` a list of tensors -> ``(clipped, norm)``: the
    new list (same shapes) and the global norm before clipping; compared with
    ``torch.nn.utils.clip_grad_norm_``."""
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (3,), (2, 2, 5)]
    for scale, max_norm in ((1.0, 1.0), (0.05, 1.0), (3.0, 0.5)):
        grads = [
            torch.randn(s, generator=g, dtype=torch.float64) * scale for s in shapes
        ]
        params = [torch.zeros_like(x, requires_grad=True) for x in grads]
        for p, x in zip(params, grads, strict=True):
            p.grad = x.clone()
        want_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        want = [p.grad for p in params]
        result = answer([x.clone() for x in grads], max_norm)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            yield "return a pair (clipped gradients, norm before clipping)"
            return
        clipped, norm = result
        clipped = [_tensor(x, "each clipped gradient") for x in clipped]
        where = f"global norm {want_norm.item():.3g}, max_norm {max_norm}"
        if len(clipped) != len(grads) or any(
            a.shape != b.shape for a, b in zip(clipped, grads, strict=False)
        ):
            yield f"{where}: return one clipped tensor per gradient, with the same shapes"
            return
        clipped = [x.to(torch.float64) for x in clipped]
        if not all(
            torch.allclose(a, b, atol=1e-10) for a, b in zip(clipped, want, strict=True)
        ):
            flat = torch.cat([x.flatten() for x in clipped])
            orig = torch.cat([x.flatten() for x in grads])
            cos = F.cosine_similarity(flat, orig, dim=0).item()
            new_norm = flat.norm().item()
            if cos < 1 - 1e-9:
                per_tensor = _clip(grads, max_norm, per_tensor=True)[0]
                if all(
                    torch.allclose(a, b)
                    for a, b in zip(clipped, per_tensor, strict=True)
                ):
                    yield (
                        f"{where}: you clip each tensor separately, which changes the "
                        "direction of the whole gradient; scale all of them by one factor "
                        "min(1, c/‖g‖) from the global norm"
                    )
                else:
                    yield (
                        f"{where}: your clipped gradient points in another direction "
                        f"(cosine {cos:.4f} with the original); clipping by the norm scales "
                        "every component by the same factor"
                    )
            elif want_norm < max_norm and new_norm > want_norm.item() * (1 + 1e-9):
                yield (
                    f"{where}: the gradient was already within max_norm but you scaled it "
                    f"up to norm {new_norm:.3g}; the factor is min(1, c/‖g‖)"
                )
            else:
                yield (
                    f"{where}: right direction, but norm {new_norm:.4g} after clipping; "
                    f"expected {min(want_norm.item(), max_norm):.4g}"
                )
            return
        norm = float(norm)
        if not math.isclose(norm, want_norm.item(), rel_tol=1e-9):
            if want_norm > max_norm and math.isclose(norm, max_norm, rel_tol=1e-5):
                yield (
                    f"{where}: you return the norm after clipping ({norm:.4g}); return the "
                    "one before clipping, as clip_grad_norm_ does (it is what gets logged)"
                )
            else:
                yield f"{where}: you return norm {norm:.6g}, the global norm is {want_norm:.6g}"
            return


# --------------------------------------------------------------------------------------------
# 04b.accumulate
# --------------------------------------------------------------------------------------------

PAD = -100


class _TinyLM(nn.Module):
    def __init__(self, vocab=11, width=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.out = nn.Linear(width, vocab)

    def forward(self, ids):
        return self.out(torch.tanh(self.embed(ids)))


def _model():
    torch.manual_seed(0)
    return _TinyLM().double()


def _loss_sum(model, batch):
    inputs, targets = batch
    logits = model(inputs)
    return F.cross_entropy(
        logits.flatten(0, 1), targets.flatten(), ignore_index=PAD, reduction="sum"
    )


def _accumulate(model, micro_batches, *, how="sum"):
    k = len(micro_batches)
    total = sum(int((t != PAD).sum()) for _, t in micro_batches)
    model.zero_grad()
    for batch in micro_batches:
        if how == "zero_each":
            model.zero_grad()
        n = int((batch[1] != PAD).sum())
        if how == "sum":
            (_loss_sum(model, batch) / total).backward()
        elif how == "mean_over_k":
            (_loss_sum(model, batch) / n / k).backward()
        elif how in ("mean", "zero_each"):
            (_loss_sum(model, batch) / n).backward()


def _micro_batches(padded: bool):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 11, (8, 6), generator=g)
    targets = torch.randint(0, 11, (8, 6), generator=g)
    if padded:
        lengths = [6, 2, 5, 1, 6, 6, 3, 4]
        for row, length in enumerate(lengths):
            targets[row, length:] = PAD
    return [(ids[2 * j : 2 * j + 2], targets[2 * j : 2 * j + 2]) for j in range(4)]


def _grads_after(fn, micro_batches):
    model = _model()
    fn(model, micro_batches)
    return [
        p.grad.clone() if p.grad is not None else torch.zeros_like(p)
        for p in model.parameters()
    ]


@exercise(
    "04b.accumulate",
    "Gradient accumulation that matches one big batch",
    difficulty=2,
    reference=_accumulate,
    wrong=[
        (lambda m, b: _accumulate(m, b, how="mean"), "times too large"),
        (lambda m, b: _accumulate(m, b, how="mean_over_k"), "real tokens"),
        (lambda m, b: _accumulate(m, b, how="zero_each"), "last micro-batch"),
    ],
)
def accumulate(answer):
    """``answer(model, micro_batches)`` leaves in every ``p.grad`` the gradient of the mean
    cross-entropy over all real targets of all micro-batches; each micro-batch is
    ``(inputs [b, T], targets [b, T])`` with padding ``-100``; ``model(inputs)`` -> ``[b, T, V]``."""
    for padded in (False, True):
        batches = _micro_batches(padded)
        inputs = torch.cat([x for x, _ in batches])
        targets = torch.cat([t for _, t in batches])
        model = _model()
        big = F.cross_entropy(
            model(inputs).flatten(0, 1), targets.flatten(), ignore_index=PAD
        )
        want = torch.autograd.grad(big, list(model.parameters()))
        got = _grads_after(answer, batches)
        where = (
            "micro-batches with padding" if padded else "micro-batches of equal size"
        )
        if all(
            torch.allclose(a.to(torch.float64), b, atol=1e-10)
            for a, b in zip(got, want, strict=True)
        ):
            continue

        def same(how, got=got, batches=batches):
            ref = _grads_after(lambda m, b: _accumulate(m, b, how=how), batches)
            return all(
                torch.allclose(a, b, atol=1e-10) for a, b in zip(got, ref, strict=True)
            )

        flat = torch.cat([a.flatten().to(torch.float64) for a in got])
        flat_want = torch.cat([b.flatten() for b in want])
        ratio = (flat.norm() / flat_want.norm()).item()
        if same("zero_each"):
            yield (
                f"{where}: only the last micro-batch's gradient is left: do not clear the "
                "gradients between micro-batches, backward() adds into .grad"
            )
        elif same("mean"):
            yield (
                f"{where}: your gradient is {ratio:.3g} times too large: the micro-batch "
                "means are added up, 4 of them; divide each by the number of micro-batches"
            )
        elif padded and same("mean_over_k"):
            yield (
                f"{where}: the mean of the micro-batch means is not the mean over all "
                "tokens when micro-batches hold different numbers of real tokens: sum the "
                "losses and divide by the total count of real targets"
            )
        elif all(a.abs().max() == 0 for a in got):
            yield f"{where}: every gradient is zero: call backward() on each micro-batch's loss"
        else:
            err = (flat - flat_want).abs().max().item()
            yield (
                f"{where}: your gradients differ from the big batch's by up to {err:.3g} "
                f"(norm ratio {ratio:.3g})"
            )
        return


# --- 04b.tune_each_optimizer (open-ended) -------------------------------------------------

open_exercise(
    "04b.tune_each_optimizer",
    "Compare SGD and AdamW fairly: tune each one's learning rate",
    difficulty=3,
    rubric=[
        "Every run starts from the same initial weights and sees the same batches for the "
        "same number of steps; only the optimizer and its learning rate change.",
        "Sweeps at least four learning rates per optimizer on a logarithmic grid, and the "
        "best rate of each lies inside its grid, not at an edge.",
        "Reports the validation loss of every run (not the loss of the last training batch) "
        "in one table, and compares the optimizers at their own best rates.",
        "Explains why the best rates lie so far apart (SGD's step scales with the gradient; "
        "Adam divides each parameter's gradient by its running RMS, so its step is about the "
        "learning rate) and why one shared rate would decide the comparison by itself.",
    ],
    answer="""
        Give both optimizers the same start, batches and steps, sweep each one's learning rate
        on a logarithmic grid and compare them at their own best rates. The best rates lie
        far apart: an SGD step is the learning rate times the gradient, so the right rate
        depends on the gradients' scale, while Adam divides each parameter's gradient by the
        root of its running mean square, so its step is about the learning rate whatever that
        scale. At one shared rate either optimizer can be made to look broken. Tuned, AdamW
        reaches the lower validation loss in this setup: one seed, one tiny model, one budget,
        a measurement of this setup rather than a law.
    """,
)
