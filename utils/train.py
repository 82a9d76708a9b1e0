"""One training loop for every chapter.

:meth:`Trainer.train_step` is the loop's heart, short enough to read in one sitting: forward under
autocast, loss scaling for gradient accumulation, backward, gradient clipping, the optimizer and
schedule steps. :class:`TrainConfig` holds every knob of a run, validated; :class:`Trainer` runs it,
adding evaluation, a progress bar and checkpoints that resume *exactly* (same losses, same
parameters). The supporting pieces each live in a small module of their own, and are importable
from here too:

- :mod:`utils.losses`: loss functions ``loss_fn(model, batch) -> (loss, metrics, n_tokens)``
  (:func:`lm_loss`, :func:`classification_loss`) and :func:`evaluate`;
- :mod:`utils.precision`: fp32 / bf16 / fp16 (:func:`resolve_precision`), autocast, GradScaler;
- :mod:`utils.metrics`: :class:`History`, throughput and MFU, and reading numbers back from the
  GPU only on logging steps;
- :mod:`utils.checkpoint`: checkpoint files and random-number-generator state;
- :mod:`utils.batches`: the micro-batch stream and :func:`move_to_device`.

Learning-rate schedules (``warmup_cosine``, ``step_decay``, ``inverse_sqrt``) live in
:mod:`utils.optim`, next to the teaching optimizers; pass one as ``Trainer(..., scheduler=...)``.

**Data, and why resume is exact.** ``Trainer.fit(train_batches)`` takes either

1. a function ``batch_at(i) -> batch`` of the *micro-batch index* ``i = 0, 1, 2, ...`` (optimizer
   step ``s`` (counted from 0) uses micro-batches ``s * grad_accum_steps + j`` for
   ``j < grad_accum_steps``). Make it deterministic, e.g. seed a ``torch.Generator`` with ``i``;
   on resume the trainer simply continues at the next index. This is the recommended form.
2. or a re-iterable collection of batches (a list, a ``DataLoader``, any object whose
   ``__iter__`` starts again from the beginning). It is cycled: when it runs out, a new pass
   starts. On resume the trainer skips the micro-batches already consumed (lists and tuples by
   index; other iterables by reading and discarding them). Exact resume then needs the order to
   be the same every time the object is re-created, e.g. a ``DataLoader`` with ``shuffle=False`` or
   with its own seeded ``generator=``. A one-shot iterator (a generator) works for a single run,
   but raises an error when it runs out.

The random-number generators (Python, NumPy, torch CPU and CUDA) are restored *after* that
skipping, so dropout and any other randomness continue exactly where the checkpoint left them.

**Steps** are counted from 1 in :class:`History`: ``history.steps[i]`` is the number of optimizer
updates done, ``history.train_loss[i]`` the loss of the batch that update was computed from, and an
evaluation record at step ``s`` is taken after ``s`` updates.

**fp16 steps the GradScaler skips** (their gradients overflowed) are steps all the same: they
consume their micro-batches, appear in the :class:`History` (with an inf or NaN gradient norm) and
take their place in the learning-rate schedule, but leave the parameters and the optimizer state
unchanged and shrink the loss scale (halve it, by default). So the schedule stays a function of
the step number: it ends at ``max_steps`` as planned, and a resumed run follows it exactly.

**No waiting for the GPU.** The loop never reads a number back from the device (``.item()``,
``float(tensor)``), which would make Python wait for the GPU to catch up, except on *logging
steps*: every ``sync_every`` steps, and the steps that print, evaluate or checkpoint. Then it reads
all the steps since the previous logging step at once and fills the :class:`History`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from utils.batches import MicroBatchStream, check_reiterable, move_to_device
from utils.checkpoint import (
    CHECKPOINT_FORMAT,
    rng_state,
    save_atomically,
    seed_rngs,
    set_rng_state,
)
from utils.checkpoint import load as load_checkpoint_file
from utils.checks import check_bool, check_int, check_positive_float
from utils.losses import (
    call_loss_fn,
    classification_loss,
    evaluate,
    is_lm_loss,
    lm_loss,
    logits_of,
)
from utils.metrics import (
    PEAK_FLOPS,
    History,
    NonFiniteLossError,
    StepRecorder,
    peak_flops_for,
    training_flops_per_token,
)
from utils.precision import (
    PRECISIONS,
    autocast,
    forget_unfinished_step,
    make_grad_scaler,
    resolve_precision,
)

from .progress import tqdm

__all__ = [
    "PEAK_FLOPS",
    "PRECISIONS",
    "History",
    "NonFiniteLossError",
    "TrainConfig",
    "Trainer",
    "classification_loss",
    "evaluate",
    "lm_loss",
    "logits_of",
    "move_to_device",
    "peak_flops_for",
    "resolve_device",
    "resolve_precision",
    "training_flops_per_token",
]

# How often the trainer reads the loss back from an accelerator by default (see TrainConfig).
GPU_SYNC_EVERY = 10


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> CUDA, else Apple MPS, else CPU; an explicit device is checked.

    The same rule as the notebooks use (:func:`utils.nb.pick_device`).
    """
    from utils.nb import pick_device

    return pick_device("auto" if device is None else device)


def default_sync_every(device: torch.device) -> int:
    """Read the loss back every step on a CPU (the numbers are already in host memory: free),
    every :data:`GPU_SYNC_EVERY` steps on an accelerator (each read makes Python wait for it)."""
    return 1 if torch.device(device).type == "cpu" else GPU_SYNC_EVERY


def step_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """``scheduler.step()``, once per trainer step, also after a step the GradScaler skipped.

    When that happens to the very first step, PyTorch warns that ``lr_scheduler.step()`` came
    before ``optimizer.step()`` and that the schedule's first value is skipped: true, and meant
    (the skipped step used that value for nothing), so the warning is silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", r"Detected call of `lr_scheduler\.step\(\)` before", UserWarning
        )
        scheduler.step()


def clip_gradients(
    optimizer: torch.optim.Optimizer, max_norm: float | None
) -> torch.Tensor:
    """The global L2 norm of the gradients (0-dim tensor, taken before clipping); with
    ``max_norm``, the gradients are scaled down in place so that their global norm is at most that.
    """
    parameters = [
        p for g in optimizer.param_groups for p in g["params"] if p.grad is not None
    ]
    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    if not parameters:
        return torch.zeros(())
    grads = [p.grad for p in parameters]
    if hasattr(torch.nn.utils, "get_total_norm"):  # torch >= 2.6
        return torch.nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g) for g in grads])
    )


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything about a run except the model, optimizer, schedule and data. Validated on creation.

    Attributes:
        max_steps: optimizer steps to train for (a resumed run continues up to this number).
        grad_accum_steps: micro-batches per optimizer step; each micro-batch loss is scaled by
            ``1 / grad_accum_steps`` so the gradient is the mean over the micro-batches.
        clip_grad_norm: clip the global gradient L2 norm to this value; ``None``: no clipping
            (the norm is recorded either way).
        precision: ``"auto" | "fp32" | "bf16" | "fp16"``; see :func:`resolve_precision`.
        compile: wrap the model with ``torch.compile`` for the forward passes.
        eval_every: evaluate every this many steps (and after the last step) when ``fit`` gets
            ``eval_batches``; ``None``: only after the last step.
        eval_max_batches: at most this many evaluation batches per evaluation (``None``: all).
        log_every: print a one-line summary every this many steps (``None``: never).
        checkpoint_path: file to save checkpoints to (and resume from).
        checkpoint_every: also save every this many steps (a final checkpoint is always saved
            when ``checkpoint_path`` is set).
        resume: if ``checkpoint_path`` exists when ``fit`` starts, resume from it.
        seed: seed Python, NumPy and torch when a fresh (not resumed) run starts; ``None``: don't.
            Seed *before* building the model as well, for reproducible initial weights.
        device: ``None``/``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ...
        flops_per_token: training FLOPs per token (see :func:`training_flops_per_token`); with a
            peak, gives the model-FLOPs utilisation (MFU).
        peak_flops: the hardware peak in FLOP/s; ``None``: looked up in :data:`PEAK_FLOPS` on CUDA.
        progress: show a tqdm progress bar.
        sync_every: read the loss, metrics and gradient norm back from the device every this many
            steps (steps that log, evaluate or checkpoint read them too). Each read makes Python
            wait for the GPU, and is where a NaN/inf stops training. ``None``: every step on a
            CPU, where reading is free, and every :data:`GPU_SYNC_EVERY` steps on a GPU.
    """

    max_steps: int
    grad_accum_steps: int = 1
    clip_grad_norm: float | None = 1.0
    precision: str = "auto"
    compile: bool = False
    eval_every: int | None = None
    eval_max_batches: int | None = None
    log_every: int | None = None
    checkpoint_path: str | None = None
    checkpoint_every: int | None = None
    resume: bool = True
    seed: int | None = 0
    device: str | None = None
    flops_per_token: float | None = None
    peak_flops: float | None = None
    progress: bool = True
    sync_every: int | None = None

    def __post_init__(self) -> None:
        check_int("max_steps", self.max_steps, 1)
        check_int("grad_accum_steps", self.grad_accum_steps, 1)
        check_positive_float("clip_grad_norm", self.clip_grad_norm)
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        for name in ("compile", "resume", "progress"):
            check_bool(name, getattr(self, name))
        for name in (
            "eval_every",
            "eval_max_batches",
            "log_every",
            "checkpoint_every",
            "sync_every",
        ):
            check_int(name, getattr(self, name), 1, optional=True)
        if self.checkpoint_path is not None:
            if not isinstance(self.checkpoint_path, (str, os.PathLike)):
                raise TypeError(
                    f"checkpoint_path must be a path or None, got {self.checkpoint_path!r}"
                )
            self.checkpoint_path = os.fspath(self.checkpoint_path)
        elif self.checkpoint_every is not None:
            raise ValueError("checkpoint_every is set but checkpoint_path is None")
        if self.seed is not None:
            check_int("seed", self.seed, 0)
        if self.device is not None:
            self._check_device()
        check_positive_float("flops_per_token", self.flops_per_token)
        check_positive_float("peak_flops", self.peak_flops)

    def _check_device(self) -> None:
        if isinstance(self.device, torch.device):
            self.device = str(self.device)
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a str or None, got {self.device!r}")
        if self.device == "auto":
            return
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device={self.device!r} is not a torch device") from err
        if self.precision == "fp16" and device.type != "cuda":
            raise ValueError(
                f"precision='fp16' needs a CUDA device, got device={self.device!r}; "
                "use 'bf16' or 'fp32'"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


class Trainer:
    """Train ``model`` with ``optimizer`` on ``loss_fn`` according to ``config``.

    ``scheduler`` (optional) is stepped once per optimizer step, after it. The model is moved to
    the configured device (the optimizer keeps working: parameters are moved in place). After
    construction, ``trainer.device``, ``trainer.precision`` and ``trainer.sync_every`` say what
    was chosen; ``trainer.scaler`` is the fp16 ``GradScaler`` (``None`` for bf16 and fp32).

    >>> trainer = Trainer(model, optimizer, lm_loss, TrainConfig(max_steps=100), scheduler)
    >>> history = trainer.fit(batch_at, eval_batches=val_batches)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable,
        config: TrainConfig,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"model must be a torch.nn.Module, got {type(model).__name__}"
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable as loss_fn(model, batch), got {loss_fn!r}"
            )
        if not isinstance(config, TrainConfig):
            raise TypeError(
                f"config must be a TrainConfig, got {type(config).__name__}"
            )
        if scheduler is not None and not hasattr(scheduler, "state_dict"):
            raise TypeError(
                f"scheduler must be a torch LR scheduler or None, got {scheduler!r}"
            )

        self.config, self.optimizer, self.scheduler = config, optimizer, scheduler
        self.loss_fn = loss_fn
        self.device = resolve_device(config.device)
        self.precision = resolve_precision(config.precision, self.device)
        self.scaler = make_grad_scaler(self.device, self.precision)
        self.sync_every = config.sync_every or default_sync_every(self.device)
        self.model = model.to(self.device)
        # The compiled wrapper runs the forward passes; checkpoints save the original module, so
        # their keys have no "_orig_mod." prefix and load into an uncompiled model.
        self.forward_model = torch.compile(model) if config.compile else model
        self.peak_flops = config.peak_flops
        if self.peak_flops is None and self.device.type == "cuda":
            self.peak_flops = peak_flops_for(torch.cuda.get_device_name(self.device))
        self.step = 0  # optimizer steps done
        self.micro_batches_consumed = 0
        self.history = History()
        self.recorder = StepRecorder(config.flops_per_token, self.peak_flops)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context the forward pass runs in (``torch.autocast`` for bf16/fp16)."""
        return autocast(self.device, self.precision)

    # ---- the training step -----------------------------------------------------------------

    def train_step(self, data: MicroBatchStream) -> None:
        """One optimizer step: forward and backward on ``grad_accum_steps``
        micro-batches, then the update.

        ``data.next()`` gives a micro-batch as ``loss_fn`` takes it, e.g.
        ``(inputs [B, T], targets [B, T])`` for :func:`lm_loss`. Nothing here waits for
        the GPU except reading the numbers back on logging steps (and, with fp16, the
        GradScaler's overflow check, unless the optimizer is a fused one:
        ``AdamW(..., fused=True)``).
        """
        accum, step = self.config.grad_accum_steps, self.step + 1
        for _ in range(accum):
            batch = move_to_device(data.next(), self.device)
            with (
                self.autocast()
            ):  # matmuls in bf16/fp16 where safe; the weights stay fp32
                loss, metrics, n_tokens = call_loss_fn(
                    self.loss_fn, self.forward_model, batch
                )
            # backward() adds to .grad, so dividing each micro-batch loss by accum
            # makes the sum the gradient of the mean loss: one big batch.
            scaled_loss = loss / accum
            if (
                self.scaler is not None
            ):  # fp16: scale up so that small gradients do not underflow
                scaled_loss = self.scaler.scale(scaled_loss)
            scaled_loss.backward()
            self.recorder.add_micro_batch(
                loss, metrics, n_tokens
            )  # summed on the device
        if self.scaler is not None:
            self.scaler.unscale_(
                self.optimizer
            )  # clip the true gradients, not the scaled ones
        grad_norm = clip_gradients(self.optimizer, self.config.clip_grad_norm)
        self.recorder.end_step(step, grad_norm, lr=self.optimizer.param_groups[0]["lr"])
        if self.is_logging_step(step):
            self._read_back_metrics()  # waits for the GPU; stops on NaN/inf first
        if self.scaler is not None:
            # skipped if the fp16 gradients overflowed, and then the scale shrinks
            # (it grows again after good steps)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            step_scheduler(self.scheduler)  # the learning rate for the next step
        self.optimizer.zero_grad(
            set_to_none=True
        )  # .grad = None: the next step starts afresh
        self.step, self.micro_batches_consumed = (
            step,
            self.micro_batches_consumed + accum,
        )

    def is_logging_step(self, step: int) -> bool:
        """Whether step ``step`` reads its numbers back from the device: every ``sync_every``-th
        step, the last one, and those that print, evaluate or checkpoint (which need them)."""
        config = self.config
        periods = (
            self.sync_every,
            config.log_every,
            config.eval_every,
            config.checkpoint_every,
        )
        return step == config.max_steps or any(p and step % p == 0 for p in periods)

    def _read_back_metrics(self) -> None:
        try:  # with fp16, inf gradients are normal: the GradScaler skips those steps
            self.recorder.flush(self.history, check_grad_norm=self.scaler is None)
        except NonFiniteLossError:
            self.optimizer.zero_grad(set_to_none=True)
            raise

    # ---- the run ---------------------------------------------------------------------------

    def fit(
        self, train_batches: Any, eval_batches: Iterable[Any] | None = None
    ) -> History:
        """Train up to ``config.max_steps`` optimizer steps and return the :class:`History`.

        ``train_batches``: a function ``batch_at(i)`` of the micro-batch index, or a re-iterable
        collection (see the module docstring). ``eval_batches``: a re-iterable collection
        evaluated every ``config.eval_every`` steps and after the last step. If
        ``config.checkpoint_path`` exists and ``config.resume`` is set, training resumes from it.
        Raises :class:`NonFiniteLossError` on a NaN/inf loss (found at the next logging step).
        """
        config = self.config
        if eval_batches is not None:
            check_reiterable(eval_batches)
        elif config.eval_every is not None:
            raise ValueError("config.eval_every is set but fit() got no eval_batches")
        data = self._start_or_resume(train_batches)
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        forget_unfinished_step(
            self.scaler
        )  # an interrupted step, unscaled but not taken
        self.history.drop_after(self.step)  # a step interrupted (Ctrl-C) after its read
        self.recorder.start(
            self.history.time[-1] if self.history.time else 0.0, self.step
        )
        with tqdm(
            total=config.max_steps,
            initial=self.step,
            desc="train",
            disable=not config.progress,
        ) as bar:
            while self.step < config.max_steps:
                self.train_step(data)
                bar.update(1)
                if self.is_logging_step(self.step):
                    with (
                        self.recorder.untimed()
                    ):  # evaluation is not training throughput
                        self._after_logging_step(eval_batches, bar)
        return self.history

    def _start_or_resume(self, train_batches: Any) -> MicroBatchStream:
        """Load the checkpoint (or seed a fresh run) and position the data after what was used."""
        saved_rng, path = None, self.config.checkpoint_path
        if (
            self.step == 0
            and path is not None
            and self.config.resume
            and os.path.exists(path)
        ):
            saved_rng = self.load_checkpoint(path, restore_rng=False)["rng"]
        elif self.step == 0 and self.config.seed is not None:
            seed_rngs(self.config.seed)
        data = MicroBatchStream(train_batches)
        data.skip_to(self.micro_batches_consumed)
        if (
            saved_rng is not None
        ):  # after skipping: reading data may itself draw random numbers
            set_rng_state(saved_rng)
        return data

    def _after_logging_step(self, eval_batches: Iterable[Any] | None, bar: Any) -> None:
        config, step, history = self.config, self.step, self.history
        last = step == config.max_steps
        if eval_batches is not None and (
            last or (config.eval_every and step % config.eval_every == 0)
        ):
            history.eval.append({"step": step, **self.evaluate(eval_batches)})
        bar.set_postfix(
            loss=f"{history.train_loss[-1]:.4f}",
            tok_s=f"{history.tokens_per_s[-1]:,.0f}",
            refresh=False,
        )
        if config.log_every and (step % config.log_every == 0 or last):
            bar.write(history.summary_line(config.max_steps))
        if config.checkpoint_path is not None and (
            last or (config.checkpoint_every and step % config.checkpoint_every == 0)
        ):
            self.save_checkpoint(config.checkpoint_path)

    def evaluate(self, eval_batches: Iterable[Any]) -> dict[str, float]:
        """:func:`evaluate` with this trainer's model, loss, precision and ``eval_max_batches``."""
        with self.autocast():
            return evaluate(
                self.forward_model,
                eval_batches,
                self.loss_fn,
                max_batches=self.config.eval_max_batches,
                perplexity=is_lm_loss(self.loss_fn),
                device=self.device,
            )

    # ---- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> str:
        """Write model, optimizer, scheduler, scaler, step, history, RNG states and config."""
        path = path if path is not None else self.config.checkpoint_path
        if not path:
            raise ValueError(
                "save_checkpoint: no path given and config.checkpoint_path is None"
            )
        self._read_back_metrics()  # the history must reach the current step
        checkpoint = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "micro_batches_consumed": self.micro_batches_consumed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict()
            if self.scheduler is not None
            else None,
            "grad_scaler": self.scaler.state_dict()
            if self.scaler is not None
            else None,
            "history": self.history.to_dict(),
            "config": self.config.to_dict(),
            "rng": rng_state(),
        }
        save_atomically(checkpoint, path)
        return os.fspath(path)

    def load_checkpoint(
        self, path: str | os.PathLike | None = None, restore_rng: bool = True
    ) -> dict[str, Any]:
        """Load a checkpoint written by :meth:`save_checkpoint` into this trainer.

        Uses ``torch.load(..., weights_only=True)``: the file can only contain tensors and
        primitive containers, so loading cannot run arbitrary code. ``fit`` calls this itself
        (with ``restore_rng=False``, restoring the RNG states after skipping consumed data).
        Returns the raw checkpoint dict.
        """
        checkpoint = load_checkpoint_file(
            path if path is not None else self.config.checkpoint_path
        )
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if (checkpoint["scheduler"] is None) != (self.scheduler is None):
            raise ValueError(
                "the checkpoint and this trainer disagree on having a scheduler "
                f"(checkpoint: {checkpoint['scheduler'] is not None}, trainer: "
                f"{self.scheduler is not None}); build the trainer as the saved run was built"
            )
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint["grad_scaler"] is not None:
            self.scaler.load_state_dict(checkpoint["grad_scaler"])
        saved_accum = checkpoint["config"].get("grad_accum_steps")
        if saved_accum != self.config.grad_accum_steps:
            warnings.warn(
                f"grad_accum_steps changed from {saved_accum} to {self.config.grad_accum_steps}: "
                "training continues, but not exactly as the original run would have",
                stacklevel=2,
            )
        self.step = int(checkpoint["step"])
        self.micro_batches_consumed = int(checkpoint["micro_batches_consumed"])
        self.history = History.from_dict(checkpoint["history"])
        self.recorder = StepRecorder(self.config.flops_per_token, self.peak_flops)
        if restore_rng:
            set_rng_state(checkpoint["rng"])
        return checkpoint
