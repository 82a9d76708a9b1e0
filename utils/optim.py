"""Optimizers written from their update equations, and learning-rate schedules.

The three optimizers (:class:`SGD`, :class:`Adam`, :class:`AdamW`) take the same constructor
arguments as their ``torch.optim`` namesakes and produce the same parameters (the tests check
this step by step), but each ``step()`` is a plain loop over parameters that reads like the
equations in its docstring. They are for reading and experimenting; for speed use ``torch.optim``
(its ``foreach``/``fused`` kernels batch many parameters into one launch).

:func:`decay_groups` splits a model's parameters into the two AdamW groups chapter 4a teaches:
weight decay on the weight matrices and embeddings, none on biases and normalisation gains.

The schedules (:func:`warmup_cosine`, :func:`step_decay`, :func:`inverse_sqrt`) live here too.
Each returns a ``torch.optim.lr_scheduler.LambdaLR`` that multiplies every group's *base*
learning rate by a factor; call ``scheduler.step()`` once per optimizer step (the trainer in
:mod:`utils.train` does) and read the current rate with ``scheduler.get_last_lr()``.

In the schedules, ``s`` is the scheduler's step counter ``last_epoch``: ``s = 0`` during the
first optimizer step, ``s = 1`` during the second, and so on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from utils.checks import check_int, check_number

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "decay_groups",
    "warmup_cosine",
    "step_decay",
    "inverse_sqrt",
]


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: decay on tensors with ``dim >= 2``, none on the rest.

    Weight decay pulls a weight towards zero; that regularises the weight matrices and the
    embedding tables (``[out, in]``, ``[vocab, d]``), but a bias or a LayerNorm gain (``[d]``)
    sets a scale or an offset, and decaying it towards 0 only fights the model (chapter 4a).
    Only parameters with ``requires_grad`` are included (a frozen part is left out), each once
    (tied weights are one parameter); an empty group is dropped.

    Args:
        model: any module.
        weight_decay: the decay of the matrix group, a number ``>= 0``.

    Returns:
        ``[{"params": [...], "weight_decay": weight_decay}, {"params": [...],
        "weight_decay": 0.0}]``, ready for ``torch.optim.AdamW(groups, lr=...)``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_number("weight_decay", weight_decay, minimum=0.0)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {
            "params": [p for p in params if p.dim() >= 2],
            "weight_decay": float(weight_decay),
        },
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


# --------------------------------------------------------------------------------------------
# Argument checks shared by the optimizers (same rules and the same kind of error as torch.optim)
# --------------------------------------------------------------------------------------------


def _check_non_negative(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number, got {type(value).__name__}: {value!r}"
        )
    if not value >= 0.0:  # also rejects NaN
        raise ValueError(f"Invalid {name}: {value!r} (must be >= 0)")


def _check_betas(betas: tuple[float, float]) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for index, beta in enumerate(betas):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise TypeError(f"betas[{index}] must be a number, got {beta!r}")
        if not 0.0 <= beta < 1.0:
            raise ValueError(
                f"Invalid beta parameter at index {index}: {beta!r} (need 0 <= beta < 1)"
            )


def _grad_of(param: torch.Tensor, optimizer_name: str) -> torch.Tensor:
    if param.grad.is_sparse:
        raise RuntimeError(f"{optimizer_name} does not support sparse gradients")
    return param.grad


# --------------------------------------------------------------------------------------------
# SGD
# --------------------------------------------------------------------------------------------


class SGD(torch.optim.Optimizer):
    r"""Stochastic gradient descent with optional momentum, as PyTorch defines it.

    For each parameter :math:`\theta` with gradient :math:`g_t` at step :math:`t`::

        g_t  <- -g_t                              if maximize
        g_t  <- g_t + weight_decay * theta        (L2 penalty folded into the gradient)
        b_1  =  g_1                               (first step: the buffer is the gradient)
        b_t  =  momentum * b_{t-1} + (1 - dampening) * g_t
        d_t  =  g_t + momentum * b_t              if nesterov
        d_t  =  b_t                               otherwise (Polyak / "heavy ball")
        theta <- theta - lr * d_t

    With ``momentum = 0`` the buffer is skipped and ``d_t = g_t``. Note that PyTorch puts the
    learning rate *outside* the buffer (Sutskever et al. 2013 put it inside: ``v = mu v - lr g``);
    the two agree while ``lr`` is constant but differ when a schedule changes it.
    The Nesterov form above is the "look-ahead" rewritten so that only the current gradient is
    needed (Sutskever et al. 2013; Bengio et al. 2013).

    Args:
        params: an iterable of tensors, or of dicts (parameter groups) with per-group options.
        lr: learning rate, >= 0.
        momentum: momentum factor, >= 0.
        dampening: how much of the new gradient *not* to add to the buffer.
        weight_decay: L2 penalty coefficient, >= 0.
        nesterov: use Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
        maximize: ascend the objective instead of descending it.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
    ) -> None:
        _check_non_negative("learning rate", lr)
        _check_non_negative("momentum value", momentum)
        _check_non_negative("weight_decay value", weight_decay)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                "Nesterov momentum requires a momentum > 0 and zero dampening "
                f"(got momentum={momentum!r}, dampening={dampening!r})"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(
        self, closure: Callable[[], torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """Update each parameter with a gradient; ``closure`` recomputes the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            dampening, weight_decay = group["dampening"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = _grad_of(param, "SGD")
                if group["maximize"]:
                    grad = -grad
                if weight_decay != 0:
                    grad = grad + weight_decay * param

                if momentum != 0:
                    state = self.state[param]
                    buffer = state.get("momentum_buffer")
                    if buffer is None:
                        buffer = grad.clone()
                        state["momentum_buffer"] = buffer
                    else:
                        buffer.mul_(momentum).add_(grad, alpha=1 - dampening)
                    direction = (
                        grad + momentum * buffer if group["nesterov"] else buffer
                    )
                else:
                    direction = grad

                param.add_(direction, alpha=-lr)
        return loss


# --------------------------------------------------------------------------------------------
# Adam and AdamW
# --------------------------------------------------------------------------------------------


class Adam(torch.optim.Optimizer):
    r"""Adam (Kingma & Ba, 2015) with bias correction; weight decay as an L2 penalty.

    For each parameter :math:`\theta` with gradient :math:`g_t`, at step ``t = 1, 2, ...``::

        g_t   <- g_t + weight_decay * theta              (L2: the decay goes through m and v)
        m_t   =  beta1 * m_{t-1} + (1 - beta1) * g_t     (first moment,  m_0 = 0)
        v_t   =  beta2 * v_{t-1} + (1 - beta2) * g_t^2   (second moment, v_0 = 0)
        m_hat =  m_t / (1 - beta1^t)                     (bias correction: m_0 = 0 pulls
        v_hat =  v_t / (1 - beta2^t)                      early averages towards zero)
        v_hat <- max(v_hat_max so far, v_hat)            if amsgrad (Reddi et al. 2018;
                                                         PyTorch keeps the max of the raw v_t)
        theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)

    Because the L2 term is added to the gradient, it is divided by ``sqrt(v_hat)`` like the rest
    of the gradient: weights with large, noisy gradients are decayed *less*. :class:`AdamW`
    decouples the decay to fix this.

    Args:
        params: an iterable of tensors, or of dicts (parameter groups) with per-group options.
        lr: learning rate, >= 0.
        betas: decay rates ``(beta1, beta2)`` of the moment averages, each in [0, 1).
        eps: added to the denominator for numerical stability, >= 0.
        weight_decay: L2 penalty coefficient, >= 0.
        amsgrad: use the running maximum of the second moment (AMSGrad).
    """

    _decoupled_weight_decay = False

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        _check_non_negative("learning rate", lr)
        _check_non_negative("epsilon value", eps)
        _check_betas(betas)
        _check_non_negative("weight_decay value", weight_decay)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(
        self, closure: Callable[[], torch.Tensor] | None = None
    ) -> torch.Tensor | None:
        """Update each parameter with a gradient; ``closure`` recomputes the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        name = type(self).__name__
        for group in self.param_groups:
            lr, eps, weight_decay = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = _grad_of(param, name)

                state = self.state[param]
                if not state:  # lazy initialisation on the first step
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                t = state["step"]

                if weight_decay != 0:
                    if self._decoupled_weight_decay:
                        param.mul_(
                            1 - lr * weight_decay
                        )  # AdamW: shrink the weight directly
                    else:
                        grad = (
                            grad + weight_decay * param
                        )  # Adam: L2 penalty in the gradient

                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

                bias_correction1 = 1 - beta1**t
                bias_correction2 = 1 - beta2**t
                second_moment = exp_avg_sq
                if group["amsgrad"]:
                    torch.maximum(
                        state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"]
                    )
                    second_moment = state["max_exp_avg_sq"]

                # sqrt(v_hat) + eps, written as sqrt(v) / sqrt(1 - beta2^t) + eps
                denominator = second_moment.sqrt() / math.sqrt(bias_correction2) + eps
                param.addcdiv_(exp_avg, denominator, value=-lr / bias_correction1)
        return loss


class AdamW(Adam):
    r"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    The update is Adam's without the L2 term in the gradient; instead, before the Adam step,
    every weight is shrunk directly::

        theta <- theta * (1 - lr * weight_decay)               (decoupled decay)
        m_t, v_t, m_hat, v_hat as in Adam, from the raw gradient g_t
        theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)

    The decay therefore does not pass through the adaptive denominator: every weight decays at
    the same relative rate ``lr * weight_decay`` per step, whatever its gradient history. (As in
    PyTorch, the decay is multiplied by ``lr``, so a schedule also scales the decay; the paper
    writes it with a separate schedule multiplier ``eta_t``.)

    Args: as :class:`Adam`, but ``weight_decay`` defaults to ``1e-2``.
    """

    _decoupled_weight_decay = True

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            amsgrad=amsgrad,
        )


# --------------------------------------------------------------------------------------------
# Learning-rate schedules (LambdaLR factors; the optimizer's lr is the base rate)
# --------------------------------------------------------------------------------------------


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.1,
) -> LambdaLR:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` x the base rate.

    The factor at scheduler step ``s``::

        (s + 1) / warmup_steps                                   for s < warmup_steps
        r + (1 - r) * (1 + cos(pi * p)) / 2,  p = (s - warmup_steps) / (total_steps - warmup_steps)
                                                                 for warmup_steps <= s <= total_steps
        r                                                        for s > total_steps

    with ``r = min_lr_ratio``. The warm-up starts at ``1 / warmup_steps`` rather than 0 so that
    the first step is not wasted, and reaches 1 at its last step. The cosine part starts at 1
    (``s = warmup_steps``) and ends at ``r`` (``s = total_steps``); if ``total_steps ==
    warmup_steps`` there is no cosine part. ``total_steps`` is normally the trainer's max_steps.
    """
    _check_optimizer(optimizer)
    check_int("warmup_steps", warmup_steps, 0)
    check_int("total_steps", total_steps, 1)
    if warmup_steps > total_steps:
        raise ValueError(
            f"warmup_steps ({warmup_steps}) must be <= total_steps ({total_steps})"
        )
    if isinstance(min_lr_ratio, bool) or not isinstance(min_lr_ratio, (int, float)):
        raise TypeError(f"min_lr_ratio must be a number, got {min_lr_ratio!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio!r}")

    def factor(s: int) -> float:
        if s < warmup_steps:
            return (s + 1) / warmup_steps
        if s >= total_steps:
            return float(min_lr_ratio)
        progress = (s - warmup_steps) / (total_steps - warmup_steps)
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (
            1.0 + math.cos(math.pi * progress)
        )

    return LambdaLR(optimizer, factor)


def step_decay(
    optimizer: torch.optim.Optimizer, step_size: int, gamma: float
) -> LambdaLR:
    """Multiply the rate by ``gamma`` every ``step_size`` steps: factor ``gamma ** (s // step_size)``.

    The same schedule as ``torch.optim.lr_scheduler.StepLR``, written as a ``LambdaLR``.
    """
    _check_optimizer(optimizer)
    check_int("step_size", step_size, 1)
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"gamma must be a number, got {gamma!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    return LambdaLR(optimizer, lambda s: gamma ** (s // step_size))


def inverse_sqrt(
    optimizer: torch.optim.Optimizer, d_model: int, warmup_steps: int
) -> LambdaLR:
    """The Transformer schedule (Vaswani et al. 2017, eq. 3): warm-up, then 1/sqrt(step) decay.

    The factor at scheduler step ``s`` is, with ``n = s + 1`` (the paper counts from 1)::

        d_model ** -0.5 * min(n ** -0.5, n * warmup_steps ** -1.5)

    It rises linearly for ``warmup_steps`` steps, peaks at ``(d_model * warmup_steps) ** -0.5``
    and then decays as ``n ** -0.5``. The optimizer's base ``lr`` multiplies this factor: create
    the optimizer with ``lr=1.0`` to get the paper's rates exactly (the paper: Adam with
    ``betas=(0.9, 0.98)``, ``eps=1e-9``, ``warmup_steps=4000``, ``d_model=512``), or with another
    ``lr`` to scale the whole curve.
    """
    _check_optimizer(optimizer)
    check_int("d_model", d_model, 1)
    check_int("warmup_steps", warmup_steps, 1)

    def factor(s: int) -> float:
        n = s + 1
        return d_model**-0.5 * min(n**-0.5, n * warmup_steps**-1.5)

    return LambdaLR(optimizer, factor)
