"""LoRA, low-rank adaptation (Hu et al., ICLR 2022), from scratch and checked against peft.

Fine-tuning changes a pretrained weight ``W (out, in)`` into ``W + ΔW``. Hu et al. argued (and
measured) that the change needed to adapt a model to a task has a low "intrinsic rank", so
LoRA keeps ``W`` frozen and learns ``ΔW`` directly as a product of two thin matrices::

    ΔW = B A,   A (r, in),  B (out, r),  r << min(in, out)
    y  = x Wᵀ + (α / r) · (x Aᵀ) Bᵀ        for x (..., in)

- Only ``A`` and ``B`` are trained: ``r · (in + out)`` numbers per layer instead of
  ``in · out``. The frozen ``W`` gets no gradient, and the optimizer keeps its state (Adam's
  two moments) only for ``A`` and ``B``. SmolLM2-135M with rank 8 on ``q_proj`` and
  ``v_proj`` trains 460,800 parameters beside its 134,515,008 frozen ones (0.34%): gradients
  plus Adam state in fp32 take 5.5 MB instead of the 1.6 GB of full fine-tuning. The frozen
  weights and the activations still take their memory: LoRA saves the training state, not
  the forward pass.
- ``B`` starts at zero and ``A`` at random (kaiming-uniform, as ``nn.Linear`` and peft do), so
  ``ΔW = 0``: the adapted model starts as the pretrained model, exactly, and training moves
  it away from there. (Both zero would never move: each one's gradient is the other times
  something. With ``B = 0`` only ``A``'s gradient is zero at the first step; ``B`` moves first.)
- ``α / r`` scales the update. Hu et al. set ``α`` once (to the first ``r`` they tried) and
  left it: with the ``1 / r`` factor, trying another rank needs less retuning of the
  learning rate.
- Merging: at inference ``W + (α / r) B A`` is computed once (:func:`merge_lora`) and the
  model is a plain model again, with no extra matmul and no extra latency. Different tasks can
  share one base model and swap their small ``A, B`` (:func:`lora_state_dict`).

Which layers: the paper adapts the attention's query and value projections, the default
here (``targets=("q_proj", "v_proj")``, the attribute names of
:class:`utils.llama.GroupedQueryAttention`); ``k_proj``, ``o_proj`` and the MLP's
``gate_proj``, ``up_proj``, ``down_proj`` can be added.

peft's :class:`~peft.tuners.lora.Linear` computes the same thing with the same initialisation;
``tests/test_lora.py`` copies our ``A, B`` into a peft model of the same network
(:func:`to_peft_state`) and checks that the outputs and the merged weights are equal.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from utils.checks import check_min_int, check_number, check_positive_float

__all__ = [
    "LoRALinear",
    "add_lora",
    "merge_lora",
    "lora_parameters",
    "count_parameters",
    "lora_state_dict",
    "load_lora_state_dict",
    "to_peft_state",
]


def _check_layer_args(base: Any, rank: Any, alpha: Any, dropout: Any) -> None:
    """The checks of :class:`LoRALinear`, which :func:`add_lora` runs on every target before
    it changes anything (so a bad rank leaves the model as it was)."""
    if not isinstance(base, nn.Linear):
        raise TypeError(f"LoRALinear wraps an nn.Linear, got {type(base).__name__}")
    check_min_int("rank", rank)
    d_out, d_in = base.weight.shape
    if rank > min(d_in, d_out):
        raise ValueError(
            f"rank={rank} is larger than the layer: its weight is {d_out} x {d_in} "
            f"(out_features x in_features), so it has rank at most {min(d_in, d_out)} "
            f"and a larger B A is no longer low-rank; choose rank <= {min(d_in, d_out)}"
        )
    check_positive_float("alpha", alpha, optional=False)
    check_number("dropout", dropout, minimum=0.0, maximum=1.0)
    if dropout >= 1:
        raise ValueError(f"dropout must be < 1 (1 drops every input), got {dropout!r}")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update: ``(..., in) -> (..., out)``.

    ``forward(x) = base(x) + scaling · (dropout(x) @ Aᵀ) @ Bᵀ`` with ``lora_A (rank, in)``,
    ``lora_B (out, rank)`` and ``scaling = alpha / rank``. ``A`` is drawn as peft draws it
    (``kaiming_uniform_(a=√5)``, uniform in ``±1/√in``) on the CPU from ``generator`` (or
    torch's global generator), so a seed gives the same ``A`` on any device; ``B`` is zero, so
    the layer starts equal to ``base``. ``base`` keeps its own weight and bias, frozen.

    ``A`` and ``B`` live on ``base``'s device, in its dtype, except that a float16 / bfloat16
    base gets float32 adapters (peft's default, ``autocast_adapter_dtype=True``): an Adam step
    of ``1e-4`` on an entry of ``A`` (about ``0.04`` for SmolLM2) is below bf16's resolution
    there (about ``2e-4``), and would be rounded away.
    """

    def __init__(
        self,
        base: nn.Linear,
        rank: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_layer_args(base, rank, alpha, dropout)
        d_out, d_in = base.weight.shape
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        w = base.weight
        dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        a = torch.empty(rank, d_in, dtype=torch.float32)
        # A's fan-in is d_in: the bound sqrt(6 / ((1 + a²) fan_in)) with a = √5 is 1/√d_in.
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=dtype))
        self.lora_B = nn.Parameter(
            torch.zeros(d_out, rank, device=w.device, dtype=dtype)
        )
        # Dropout on the adapter's input only (as peft): the frozen path sees the whole x.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def delta_weight(self) -> torch.Tensor:
        """``scaling · B @ A``, shape ``(out, in)``: what the adapter adds to ``base.weight``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)  # (..., out)
        # Two thin matmuls, (..., in) -> (..., r) -> (..., out), never the (out, in)
        # matrix B A:
        # r (in + out) multiply-adds per token instead of in · out.
        h = F.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)  # (..., r)
        delta = F.linear(h, self.lora_B) * self.scaling  # (..., out)
        return out + delta.to(out.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}"


def _lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def add_lora(
    model: nn.Module,
    targets: Any = ("q_proj", "v_proj"),
    rank: int = 8,
    alpha: float = 16,
    seed: int | None = 0,
    dropout: float = 0.0,
) -> list[str]:
    """Freeze ``model`` and wrap its target ``nn.Linear`` layers in :class:`LoRALinear`.

    A layer is a target when its attribute name (the last part of its dotted name, e.g.
    ``q_proj`` in ``blocks.3.attn.q_proj``) is in ``targets`` (a name or a sequence of
    names); every name must match at least one ``nn.Linear``, so a typo fails instead of
    silently adapting less. Every parameter of the model is frozen first, so afterwards the
    only trainable parameters are the adapters' ``A`` and ``B``. The ``A`` matrices are drawn
    in module order from one generator seeded with ``seed`` (``None``: torch's global
    generator). The model is changed in place; returns the dotted names of the wrapped layers.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    names = (targets,) if isinstance(targets, str) else targets
    try:
        names = tuple(names)
    except TypeError:
        raise TypeError(
            f"targets must be a layer name or a sequence of them, got {targets!r}"
        ) from None
    if not names or not all(isinstance(t, str) for t in names):
        raise ValueError(f"targets must be non-empty layer names, got {targets!r}")
    if _lora_modules(model):
        raise ValueError(
            "the model already has LoRA adapters (LoRALinear layers); merge them with "
            "merge_lora first, or start from a fresh copy of the model"
        )
    if seed is not None:
        check_min_int("seed", seed, minimum=0)
    linears = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)
    ]
    chosen = [(name, m) for name, m in linears if name.rsplit(".", 1)[-1] in names]
    found = {name.rsplit(".", 1)[-1] for name, _ in chosen}
    missing = [t for t in names if t not in found]
    if missing:
        available = sorted({name.rsplit(".", 1)[-1] for name, _ in linears})
        raise ValueError(
            f"no nn.Linear layer named {missing} in the model; its nn.Linear layers are "
            f"named {available}"
        )
    for _, linear in chosen:  # check everything before changing anything
        _check_layer_args(linear, rank, alpha, dropout)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    for name, linear in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, LoRALinear(linear, rank, alpha, dropout, generator))
    return [name for name, _ in chosen]


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` by a plain ``nn.Linear`` with ``W + scaling · B A``.

    In place; returns ``model`` (or, if ``model`` is itself a :class:`LoRALinear`, the merged
    ``nn.Linear``, since a module cannot replace itself). The merged model computes the same
    function (up to float rounding) with no adapter matmuls, and its ``state_dict`` has the
    original names again (``...q_proj.weight`` instead of ``...q_proj.base.weight``). The
    merged weights stay frozen, as the base weights were.
    """
    found = _lora_modules(model)
    if not found:
        raise ValueError("the model has no LoRA adapters to merge (see add_lora)")
    for name, layer in found:
        base = layer.base
        base.weight += layer.delta_weight().to(base.weight.dtype)
        if not name:  # the model is the LoRALinear itself
            return base
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, base)
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' ``A`` and ``B`` of every :class:`LoRALinear`, in module order.

    What the optimizer should get: ``torch.optim.AdamW(lora_parameters(model), lr=...)``.
    """
    params = [p for _, m in _lora_modules(model) for p in (m.lora_A, m.lora_B)]
    if not params:
        raise ValueError("the model has no LoRA adapters (see add_lora)")
    return params


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` numbers of parameters (each shared parameter counted once)."""
    params = list(model.parameters())  # deduplicated: a tied embedding counts once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, sum(p.numel() for p in params)


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters: ``{"blocks.0.attn.q_proj.lora_A": (r, in), "...lora_B": (out, r)}``.

    Copies (``clone``), so later training does not change a saved adapter. Kilobytes to a few
    megabytes, where the base model's state is hundreds of megabytes.
    """
    state = {
        f"{name}.{part}": getattr(m, part).detach().clone()
        for name, m in _lora_modules(model)
        for part in ("lora_A", "lora_B")
    }
    if not state:
        raise ValueError("the model has no LoRA adapters (see add_lora)")
    return state


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``A`` and ``B`` from ``state`` (as :func:`lora_state_dict` writes it) into ``model``.

    ``model`` must already have the same adapters (:func:`add_lora` with the same targets and
    rank); the names and shapes must match exactly.
    """
    own = {
        f"{name}.{part}": getattr(m, part)
        for name, m in _lora_modules(model)
        for part in ("lora_A", "lora_B")
    }
    if not own:
        raise ValueError("the model has no LoRA adapters; call add_lora first")
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of tensors, got {type(state).__name__}")
    missing, unexpected = sorted(own.keys() - state), sorted(state.keys() - own)
    if missing or unexpected:
        raise ValueError(
            f"the adapter state does not fit the model: missing {missing}, unexpected "
            f"{unexpected} (same targets as when it was saved?)"
        )
    for key, param in own.items():
        value = state[key]
        if tuple(value.shape) != tuple(param.shape):
            raise ValueError(
                f"{key}: the state has shape {tuple(value.shape)}, the model "
                f"{tuple(param.shape)} (same rank as when it was saved?)"
            )
        param.copy_(value)


def to_peft_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Our adapters under peft's names, for ``peft.set_peft_model_state_dict``.

    peft's ``get_peft_model(model, config)`` puts the model at ``base_model.model`` and
    stores layer ``q_proj``'s ``A`` as an ``nn.Linear(in, r)`` whose weight is ``(r, in)``,
    like ours, so only the names change: ``blocks.0.attn.q_proj.lora_A`` becomes
    ``base_model.model.blocks.0.attn.q_proj.lora_A.weight`` (the names of peft's saved
    adapter files, without the adapter name ``default`` that its live modules add).
    """
    return {
        f"base_model.model.{key}.weight": value
        for key, value in lora_state_dict(model).items()
    }
