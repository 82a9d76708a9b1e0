"""The graders of chapter 4a's exercises (the loss and the update rules); see :mod:`utils.grader`.

Cross-entropy is compared with ``F.cross_entropy``, its gradient with autograd, and one AdamW
update with ``torch.optim.AdamW``, step by step, in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.grader import exercise


def _tensor(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{what} should be a torch tensor, got {type(value).__name__}")
    return value


def _close(a, b, tol=1e-8) -> bool:
    return bool(torch.allclose(a.to(torch.float64), b, atol=tol, rtol=tol))


# --------------------------------------------------------------------------------------------
# 04a.cross_entropy
# --------------------------------------------------------------------------------------------


def _ce(
    logits,
    target,
    ignore_index=-100,
    label_smoothing=0.0,
    *,
    reduce="mean",
    stable=True,
    count_pad=False,
    smooth_others=False,
):
    C = logits.shape[-1]
    counted = target != ignore_index
    safe = torch.where(counted, target, 0)
    if stable:
        log_p = logits.log_softmax(-1)
    else:
        log_p = torch.log(logits.exp() / logits.exp().sum(-1, keepdim=True))
    nll = -log_p.gather(-1, safe[:, None])[:, 0]
    if smooth_others:
        rest = (-log_p.sum(-1) - nll) / (C - 1)
        per = (1 - label_smoothing) * nll + label_smoothing * rest
    else:
        per = (1 - label_smoothing) * nll + label_smoothing * (-log_p).mean(-1)
    per = torch.where(counted, per, torch.zeros_like(per))
    if reduce == "sum":
        return per.sum()
    return per.sum() / (target.numel() if count_pad else counted.sum())


@exercise(
    "04a.cross_entropy",
    "Cross-entropy from its definition",
    difficulty=2,
    reference=_ce,
    wrong=[
        (
            lambda z, t, i=-100, label_smoothing=0.0: _ce(
                z, t, i, label_smoothing, reduce="sum"
            ),
            "sums over",
        ),
        (
            lambda z, t, i=-100, label_smoothing=0.0: _ce(
                z, t, i, label_smoothing, stable=False
            ),
            "log_softmax",
        ),
        (
            lambda z, t, i=-100, label_smoothing=0.0: _ce(
                z, t, i, label_smoothing, count_pad=True
            ),
            "padding",
        ),
        (
            lambda z, t, i=-100, label_smoothing=0.0: _ce(
                z, t, i, label_smoothing, smooth_others=True
            ),
            "all C",
        ),
    ],
)
def cross_entropy(answer):
    """``answer(logits, target, ignore_index=-100, label_smoothing=0.0)`` -> the mean loss,
    a 0-dim tensor; logits ``[N, C]``, target ``[N]`` class ids (``ignore_index`` = padding)."""
    g = torch.Generator().manual_seed(0)
    cases = [  # N, C, scale, n_pad, smoothing
        (6, 5, 1.0, 0, 0.0),
        (12, 7, 2.0, 0, 0.0),
        (10, 6, 1.0, 3, 0.0),
        (8, 5, 1.0, 0, 0.1),
        (9, 4, 1.0, 2, 0.2),
        (4, 3, 1000.0, 0, 0.0),
    ]
    for N, C, scale, n_pad, eps in cases:
        logits = torch.randn(N, C, generator=g, dtype=torch.float64) * scale
        target = torch.randint(0, C, (N,), generator=g)
        target[N - n_pad :] = -100
        want = F.cross_entropy(logits, target, label_smoothing=eps)
        args = (logits.clone(), target.clone())
        got = answer(*args, label_smoothing=eps) if eps else answer(*args)
        got = _tensor(got, "the loss")
        where = f"N={N}, C={C}" + (f", {n_pad} padded" if n_pad else "")
        where += f", smoothing {eps}" if eps else ""
        where += f", logits up to ±{logits.abs().max():.0f}" if scale > 10 else ""
        if got.numel() != 1:
            yield (
                f"{where}: the loss has shape {tuple(got.shape)}; average it to one number"
            )
            return
        got = got.reshape(()).to(torch.float64)
        if _close(got, want):
            continue
        if not torch.isfinite(got):
            yield (
                f"{where}: your loss is {got.item()}: exp overflows (or a probability "
                "underflows to 0, whose log is -inf) for large logits; use log_softmax, "
                "z - logsumexp(z), which subtracts the maximum first"
            )
        elif _close(got, want * (target != -100).sum()):
            yield (
                f"{where}: your loss sums over the N predictions; the cross-entropy sums "
                "over the classes and the loss averages it over the predictions"
            )
        elif n_pad and _close(
            got, _ce(logits, target, label_smoothing=eps, count_pad=True)
        ):
            yield (
                f"{where}: you divide by all {N} positions, padding included; padded "
                f"targets count neither in the sum nor in the count ({N - n_pad} here)"
            )
        elif n_pad and _close(
            got, _ce(logits, target.clamp_min(0), label_smoothing=eps)
        ):
            yield f"{where}: the padded positions (target -100) are counted as real targets"
        elif eps and _close(
            got, _ce(logits, target, label_smoothing=eps, smooth_others=True)
        ):
            yield (
                f"{where}: you spread ε over the C-1 other classes; PyTorch spreads it over "
                "all C classes, the target included (q_c = (1-ε)[c = target] + ε/C)"
            )
        elif eps and _close(got, F.cross_entropy(logits, target)):
            yield f"{where}: your loss ignores label_smoothing"
        else:
            yield (
                f"{where}: your loss is {got.item():.6g}, F.cross_entropy gives "
                f"{want.item():.6g}"
            )
        return


# --------------------------------------------------------------------------------------------
# 04a.ce_gradient: (p - y) / N
# --------------------------------------------------------------------------------------------


def _ce_grad(logits, target, ignore_index=-100, *, divide=True, sign=1, mask=True):
    counted = target != ignore_index
    p = logits.softmax(-1)
    y = F.one_hot(torch.where(counted, target, 0), logits.shape[-1]).to(p.dtype)
    grad = sign * (p - y)
    if mask:
        grad = grad * counted[:, None]
    return grad / (counted.sum() if divide else 1)


@exercise(
    "04a.ce_gradient",
    "The gradient of softmax cross-entropy",
    difficulty=1,
    reference=_ce_grad,
    wrong=[
        (lambda z, t, i=-100: _ce_grad(z, t, i, divide=False), "factor"),
        (lambda z, t, i=-100: _ce_grad(z, t, i, sign=-1), "sign"),
        (lambda z, t, i=-100: _ce_grad(z, t, i, mask=False), "padded"),
    ],
)
def ce_gradient(answer):
    """``answer(logits, target, ignore_index=-100)`` -> ``d F.cross_entropy / d logits``,
    ``[N, C]``; logits ``[N, C]``, target ``[N]``."""
    g = torch.Generator().manual_seed(1)
    for N, C, n_pad in ((5, 4, 0), (8, 6, 0), (7, 5, 2)):
        logits = torch.randn(N, C, generator=g, dtype=torch.float64, requires_grad=True)
        target = torch.randint(0, C, (N,), generator=g)
        target[N - n_pad :] = -100
        (want,) = torch.autograd.grad(F.cross_entropy(logits, target), logits)
        got = _tensor(answer(logits.detach().clone(), target.clone()), "the gradient")
        where = f"N={N}, C={C}" + (f", {n_pad} padded" if n_pad else "")
        if got.shape != want.shape:
            yield f"{where}: gradient shape {tuple(got.shape)}, expected ({N}, {C})"
            return
        if _close(got, want):
            continue
        z = logits.detach()
        n = int((target != -100).sum())
        if _close(got, want * n):
            yield (
                f"{where}: off by a factor N = {n}: the loss is a mean over predictions, "
                "so every row of p - y is divided by the number of counted targets"
            )
        elif _close(got, -want):
            yield f"{where}: wrong sign: the gradient is p - y, not y - p"
        elif n_pad and _close(got, _ce_grad(z, target, mask=False)):
            yield (
                f"{where}: the padded rows must get zero gradient (they are not in the loss)"
            )
        elif n_pad and _close(got, want * n / N):
            yield f"{where}: divide by the {n} counted targets, not by all {N} rows"
        elif _close(got.sum(-1), torch.zeros(N, dtype=torch.float64)):
            yield (
                f"{where}: rows sum to 0 as they should, but differ from autograd by up "
                f"to {(got - want).abs().max():.3g}; check which entry gets the -1"
            )
        else:
            yield f"{where}: differs from autograd by up to {(got - want).abs().max():.3g}"
        return


# --------------------------------------------------------------------------------------------
# 04a.adamw_step
# --------------------------------------------------------------------------------------------


def _adamw(
    theta,
    grad,
    m,
    v,
    t,
    lr=1e-3,
    betas=(0.9, 0.999),
    eps=1e-8,
    weight_decay=0.01,
    *,
    coupled=False,
    correct=True,
    decay_lr=True,
    eps_inside=False,
):
    b1, b2 = betas
    if coupled:
        grad = grad + weight_decay * theta
    else:
        theta = theta * (1 - (lr if decay_lr else 1) * weight_decay)
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    m_hat = m / (1 - b1**t) if correct else m
    v_hat = v / (1 - b2**t) if correct else v
    denom = (v_hat + eps).sqrt() if eps_inside else v_hat.sqrt() + eps
    return theta - lr * m_hat / denom, m, v


def _run(fn, theta0, grads, hp):
    theta, m, v = theta0.clone(), torch.zeros_like(theta0), torch.zeros_like(theta0)
    for t, grad in enumerate(grads, start=1):
        out = fn(theta, grad.clone(), m, v, t, **hp)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise TypeError("adamw_step should return a triple (theta, m, v)")
        theta, m, v = (_tensor(x, n) for x, n in zip(out, "θmv", strict=True))
    return theta


@exercise(
    "04a.adamw_step",
    "One AdamW update from its equations",
    difficulty=2,
    reference=_adamw,
    wrong=[
        (lambda *a, **k: _adamw(*a, **k, coupled=True), "through m and v"),
        (lambda *a, **k: _adamw(*a, **k, correct=False), "bias correction"),
        (lambda *a, **k: _adamw(*a, **k, decay_lr=False), "η·λ"),
        (lambda *a, **k: _adamw(*a, **k, eps_inside=True), "outside the square root"),
    ],
)
def adamw_step(answer):
    """``answer(theta, grad, m, v, t, lr, betas, eps, weight_decay)`` -> ``(theta, m, v)``
    after update ``t`` (1, 2, ...) of AdamW; all tensors share theta's shape."""
    g = torch.Generator().manual_seed(2)
    cases = [
        dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01),
        dict(lr=0.05, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1),
        dict(lr=0.01, betas=(0.9, 0.95), eps=1e-3, weight_decay=0.0),
    ]
    for n_steps, hp in zip((1, 6, 6), cases, strict=True):
        theta0 = torch.randn(3, 4, generator=g, dtype=torch.float64)
        grads = [
            torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(n_steps)
        ]
        grads = [gr * 1e-3 if j % 2 else gr for j, gr in enumerate(grads)]
        param = theta0.clone().requires_grad_()
        opt = torch.optim.AdamW([param], **hp)
        for gr in grads:
            param.grad = gr.clone()
            opt.step()
        want = param.detach()
        got = _run(answer, theta0, grads, hp).to(torch.float64)
        where = f"{n_steps} step(s), " + ", ".join(f"{k}={v}" for k, v in hp.items())
        if got.shape != want.shape:
            yield f"{where}: θ has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            return
        if _close(got, want, 1e-10):
            continue

        def like(got=got, setup=(theta0, grads, hp), **variant):
            def variant_fn(*args, **kwargs):
                return _adamw(*args, **kwargs, **variant)

            return _close(got, _run(variant_fn, *setup))

        if like(coupled=True):
            yield (
                f"{where}: that is Adam with an L2 penalty: you add λθ to the gradient, so "
                "the decay goes through m and v; AdamW shrinks θ by (1 - ηλ) directly"
            )
        elif like(correct=False):
            yield (
                f"{where}: no bias correction: divide m by 1 - β1^t and v by 1 - β2^t "
                "(t counts from 1)"
            )
        elif like(decay_lr=False):
            yield (
                f"{where}: you shrink θ by (1 - λ); PyTorch's AdamW shrinks it by "
                "(1 - η·λ), the decay times the learning rate"
            )
        elif like(eps_inside=True):
            yield (
                f"{where}: ε goes outside the square root: m̂ / (√v̂ + ε), not "
                "m̂ / √(v̂ + ε)"
            )
        else:
            err = (got - want).abs().max().item()
            yield f"{where}: θ differs from torch.optim.AdamW by up to {err:.3g}"
        return
