"""Word-level language models on WikiText-2: the seed tutorial's recipe, the book's, an LSTM's.

Everything chapter 5.2 and ``benchmarks/lm_recipes.py`` share:

- the data exactly as the old PyTorch tutorial prepared it (:func:`word_streams`: ``basic_english``
  words, a vocabulary from the training split sorted by frequency, the lines concatenated;
  :func:`batchify` into columns);
- the two ways of drawing training batches (:class:`ContiguousChunks`, the tutorial's walk down the
  columns; :class:`RandomWindows`, the book's) and one evaluation for all models
  (:func:`eval_chunks`: every token of a split scored once);
- the tutorial's model, reproduced (:class:`SeedTutorialLM`), and the book's models, a pre-LN
  Transformer and an LSTM with a tied **adaptive softmax** (:class:`TiedAdaptiveSoftmax`): the
  exact softmax over the whole vocabulary, computed cluster by cluster so that rare words cost
  only when they are the target (Grave et al., 2017);
- :func:`train_for_budget`: train several recipes for the same wall-clock budget, interleaved in
  short turns so that a noisy machine slows them all alike.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from utils import decoding, text
from utils.attention import SinusoidalPositionalEncoding
from utils.benchmark import synchronize
from utils.checks import check_min_int
from utils.losses import evaluate, lm_loss
from utils.models import LSTMLM, TransformerLM, reading_is_free
from utils.optim import (
    decay_groups,
    warmup_cosine,
)  # decay_groups: kept importable here
from utils.train import TrainConfig, Trainer

from .progress import tqdm

# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def word_streams(dataset) -> tuple[text.Vocab, dict[str, torch.Tensor]]:
    """The tutorial's data: ``basic_english`` words -> ids, all lines of a split concatenated.

    ``dataset[split]`` is a list of lines (``utils.data.load_wikitext2()``). The vocabulary holds
    ``<unk>`` (id 0) and every word of the training split, most frequent first, so that the ids
    are in frequency order (what :class:`TiedAdaptiveSoftmax` needs). Returns ``(vocab,
    {"train": ids (N_train,), "valid": ..., "test": ...})``; like the tutorial, no end-of-line
    token is added and empty lines vanish.
    """
    tokenize = text.get_tokenizer("basic_english")
    vocab = text.build_vocab_from_iterator(
        (tokenize(line) for line in dataset["train"]), specials=["<unk>"]
    )
    vocab.set_default_index(vocab["<unk>"])
    streams = {}
    for split in ("train", "valid", "test"):
        ids = [i for line in dataset[split] for i in vocab(tokenize(line))]
        if len(ids) < 2:
            raise ValueError(f"the {split} split has fewer than 2 words")
        streams[split] = torch.tensor(ids, dtype=torch.long)
    return vocab, streams


# The one batch-first layout of the book: ``text.batchify(stream [N], B) -> [B, N // B]``.
batchify = text.batchify


def eval_chunks(
    columns: torch.Tensor, context: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Non-overlapping ``(x, y)`` chunks of ``context`` tokens down ``columns [B, L]``.

    The windows of :func:`utils.text.iter_bptt`, as a list: every token of every column except
    the first is a target exactly once, predicted from the tokens before it in its chunk (the
    tutorial's evaluation). ``x, y``: ``[B, <= context]``.
    """
    return list(text.iter_bptt(columns, context))


class ContiguousChunks:
    """The tutorial's training batches: chunk ``i`` of ``bptt`` tokens down the columns, cycled.

    ``batch_at(i)`` (a function of the micro-batch index, so a resumed run continues exactly):
    ``(x, y)``, each ``(B, <= bptt)``. One epoch is ``len(self)`` chunks.
    """

    def __init__(self, columns: torch.Tensor, bptt: int) -> None:
        self.chunks = eval_chunks(columns, bptt)

    def __len__(self) -> int:
        return len(self.chunks)

    def __call__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.chunks[i % len(self.chunks)]

    def tokens_in(self, steps: int) -> int:
        """Target tokens in the first ``steps`` batches."""
        per_epoch = sum(y.numel() for _, y in self.chunks)
        epochs, rest = divmod(steps, len(self.chunks))
        return epochs * per_epoch + sum(y.numel() for _, y in self.chunks[:rest])


class RandomWindows:
    """The book's training batches: ``batch_size`` windows at random offsets of a 1-D stream.

    ``batch_at(i)`` draws from a generator seeded with ``(seed, i)``: the same ``i`` always gives
    the same batch. Returns ``(x, y)``, each ``(batch_size, context)``, ``y`` = ``x`` shifted by 1.
    """

    def __init__(
        self, stream: torch.Tensor, batch_size: int, context: int, seed: int = 0
    ):
        check_min_int("batch_size", batch_size)
        check_min_int("context", context)
        if stream.numel() < context + 2:
            raise ValueError(
                f"a stream of {stream.numel()} tokens is too short for {context}"
            )
        self.stream, self.batch_size, self.context, self.seed = (
            stream,
            batch_size,
            context,
            seed,
        )

    def __call__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        high = self.stream.numel() - self.context - 1
        starts = torch.randint(0, high + 1, (self.batch_size,), generator=generator)
        windows = torch.stack(
            [self.stream[s : s + self.context + 1] for s in starts.tolist()]
        )
        return windows[:, :-1], windows[:, 1:]

    def tokens_in(self, steps: int) -> int:
        """Target tokens in the first ``steps`` batches."""
        return steps * self.batch_size * self.context


# ---------------------------------------------------------------------------------------------
# The tutorial's model
# ---------------------------------------------------------------------------------------------


class SeedTutorialLM(nn.Module):
    """The old PyTorch tutorial's ``TransformerModel`` (seed 001), batch-first, with its parts.

    ``nn.Embedding`` scaled by ``sqrt(d_model)`` -> sinusoidal positions -> dropout ->
    ``nn.TransformerEncoder`` of post-LN ReLU layers under a causal mask -> an *untied*
    ``nn.Linear`` decoder; embedding and decoder weights ~ U(-0.1, 0.1), decoder bias 0.
    ``forward(idx (B, L)) -> logits (B, L, V)``.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 200,
        n_heads: int = 2,
        d_ff: int = 200,
        n_layers: int = 2,
        dropout: float = 0.2,
        max_len: int = 5000,
    ) -> None:
        super().__init__()
        check_min_int("vocab_size", vocab_size)
        self.d_model, self.vocab_size = d_model, vocab_size
        self.encoder = nn.Embedding(vocab_size, d_model)
        self.pos_encoder = SinusoidalPositionalEncoding(d_model, max_len)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout, batch_first=True
        )  # post-LN, ReLU: the 2017 layer
        self.transformer_encoder = nn.TransformerEncoder(
            layer, n_layers, enable_nested_tensor=False
        )
        self.decoder = nn.Linear(d_model, vocab_size)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        L = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=idx.device)
        x = self.drop(self.pos_encoder(self.encoder(idx) * self.d_model**0.5))
        x = self.transformer_encoder(x, mask=mask, is_causal=True)  # (B, L, d_model)
        return self.decoder(x)


# ---------------------------------------------------------------------------------------------
# The book's output layer: an exact softmax, computed cluster by cluster
# ---------------------------------------------------------------------------------------------


class TiedAdaptiveSoftmax(nn.Module):
    """Exact ``log p(word | h)`` over a frequency-sorted vocabulary, cheap for frequent targets.

    The vocabulary ``0..V-1`` is split at ``cutoffs = (c_1, ..., c_K)`` into a *head* (ids below
    ``c_1``) and ``K`` tail clusters. The head softmax ranges over the head words plus one entry
    per cluster; a word in cluster ``k`` gets ``log p(cluster k | h) + log p(word | h, cluster
    k)``. Word scores are ``h · e_w`` with ``e_w`` the (tied) embedding row, so the result is one
    proper distribution over all ``V`` words; training only computes a cluster's scores for the
    targets that lie in it. ``weight (V, d)`` is passed in at call time (the model's embedding).
    """

    def __init__(self, d_model: int, vocab_size: int, cutoffs: Sequence[int]) -> None:
        super().__init__()
        cutoffs = list(cutoffs)
        if not cutoffs or cutoffs != sorted(set(cutoffs)) or not 0 < cutoffs[0]:
            raise ValueError(f"cutoffs must be increasing positive ids, got {cutoffs}")
        if cutoffs[-1] >= vocab_size:
            raise ValueError(
                f"cutoffs {cutoffs} must lie below vocab_size={vocab_size}"
            )
        self.bounds = [
            0,
            *cutoffs,
            vocab_size,
        ]  # cluster k holds ids bounds[k]..bounds[k+1]-1
        self.cluster_scores = nn.Linear(d_model, len(cutoffs), bias=False)
        nn.init.normal_(self.cluster_scores.weight, std=0.02)

    def head_log_probs(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``h (N, d)`` -> ``(N, c_1 + K)``: log-probs of the head words, then of each cluster."""
        head = h @ weight[: self.bounds[1]].T
        return torch.log_softmax(
            torch.cat([head, self.cluster_scores(h)], dim=-1).float(), -1
        )

    def target_log_probs(
        self, h: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """``h (N, d)``, ``targets (N,)`` -> ``log p(target | h)`` ``(N,)``, float32.

        On the CPU each cluster is scored only for the rows whose target is in it.
        Picking those rows needs their count in Python, which on a GPU means waiting
        for the GPU at every step; there every row is scored and keeps its own
        cluster's value (more arithmetic, no waiting; equal up to rounding).
        """
        head = self.head_log_probs(h, weight)
        c1 = self.bounds[1]
        out = head.gather(1, targets.clamp(max=c1 - 1).unsqueeze(1)).squeeze(1)
        for k in range(1, len(self.bounds) - 1):
            in_k = (targets >= self.bounds[k]) & (targets < self.bounds[k + 1])
            if reading_is_free(in_k):  # CPU: score cluster k for its own rows only
                rows = in_k.nonzero().squeeze(1)
                scores = self._in_cluster(k, h[rows], targets[rows], head[rows], weight)
                out = out.index_copy(0, rows, scores)
            else:  # accelerator: score every row, keep those in cluster k
                scores = self._in_cluster(k, h, targets, head, weight)
                out = torch.where(in_k, scores, out)
        return out

    def _in_cluster(
        self,
        k: int,
        h: torch.Tensor,
        targets: torch.Tensor,
        head: torch.Tensor,
        weight: torch.Tensor,
    ) -> torch.Tensor:
        """``log p(cluster k | h) + log p(target | h, cluster k)`` for ``h (n, d)``, ``targets
        (n,)`` and their ``head (n, c_1 + K)`` (:meth:`head_log_probs`) -> ``(n,)``. A target
        outside the cluster gets the value of the cluster's nearest word (``torch.where``
        discards it)."""
        lo, hi = self.bounds[k], self.bounds[k + 1]
        within = torch.log_softmax(
            (h @ weight[lo:hi].T).float(), dim=-1
        )  # (n, hi - lo)
        word = within.gather(
            1, (targets - lo).clamp(0, hi - lo - 1).unsqueeze(1)
        ).squeeze(1)
        return head[:, self.bounds[1] + k - 1] + word

    def log_probs(self, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The whole distribution: ``h (N, d)`` -> ``(N, V)`` log-probs (float32)."""
        head = self.head_log_probs(h, weight)
        c1 = self.bounds[1]
        parts = [head[:, :c1]]
        for k in range(1, len(self.bounds) - 1):
            lo, hi = self.bounds[k], self.bounds[k + 1]
            within = torch.log_softmax((h @ weight[lo:hi].T).float(), dim=-1)
            parts.append(head[:, c1 + k - 1 : c1 + k] + within)
        return torch.cat(parts, dim=-1)


class _AdaptiveLM(nn.Module):
    """Shared part of the book's two models: features -> tied adaptive softmax.

    ``forward(idx (B, L)) -> log-probs (B, L, V)`` (usable as logits: ``log_softmax`` leaves them
    unchanged); :func:`adaptive_lm_loss` asks only for the targets' log-probs, which is fast.
    """

    embedding_weight: torch.Tensor

    def features(self, idx: torch.Tensor) -> torch.Tensor:  # (B, L) -> (B, L, d)
        raise NotImplementedError

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.features(idx)
        B, L, d = h.shape
        return self.softmax.log_probs(h.reshape(B * L, d), self.embedding_weight).view(
            B, L, -1
        )

    def target_log_probs(
        self, idx: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """``idx, targets (B, L)`` -> ``(B * L,)`` log-probs of the targets."""
        h = self.features(idx)
        return self.softmax.target_log_probs(
            h.reshape(-1, h.shape[-1]), targets.reshape(-1), self.embedding_weight
        )


class AdaptiveTransformerLM(_AdaptiveLM):
    """The book's Transformer: :class:`~utils.models.TransformerLM`'s pre-LN trunk with tied
    weights, and a :class:`TiedAdaptiveSoftmax` instead of the full output layer."""

    def __init__(
        self,
        vocab_size: int,
        cutoffs: Sequence[int],
        d_model: int,
        n_heads: int,
        n_layers: int,
        max_len: int,
        dropout: float = 0.1,
        pos_encoding: str = "learned",
    ) -> None:
        super().__init__()
        self.trunk = TransformerLM(
            vocab_size,
            d_model,
            n_heads,
            n_layers,
            max_len=max_len,
            dropout=dropout,
            pos_encoding=pos_encoding,
        )
        self.softmax = TiedAdaptiveSoftmax(d_model, vocab_size, cutoffs)

    @property
    def embedding_weight(self) -> torch.Tensor:
        return self.trunk.token_embedding.weight

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        # TransformerLM.forward up to (not including) its output layer
        return self.trunk.features(idx)


class AdaptiveLSTMLM(_AdaptiveLM):
    """An :class:`~utils.models.LSTMLM` (embedding -> LSTM, state from zero in every window) with
    the same tied adaptive softmax as :class:`AdaptiveTransformerLM`."""

    def __init__(
        self,
        vocab_size: int,
        cutoffs: Sequence[int],
        d_model: int,
        n_layers: int,
        dropout=0.1,
    ) -> None:
        super().__init__()
        self.trunk = LSTMLM(
            vocab_size, d_model, d_model, n_layers, dropout, tie_weights=True
        )
        self.softmax = TiedAdaptiveSoftmax(d_model, vocab_size, cutoffs)

    @property
    def embedding_weight(self) -> torch.Tensor:
        return self.trunk.embedding.weight

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        trunk = self.trunk
        out, _ = trunk.lstm(trunk.drop(trunk.embedding(idx)))
        return trunk.drop(out)


def adaptive_lm_loss(model: _AdaptiveLM, batch: Sequence[torch.Tensor]):
    """Trainer loss for the adaptive models: mean ``-log p(target)`` over the batch's tokens.

    ``batch = (x, y)``, each ``(B, L)``. Returns ``(loss, {}, n_tokens)`` like ``lm_loss``.
    """
    x, y = batch
    log_p = model.target_log_probs(x, y)
    return -log_p.mean(), {}, y.numel()


def frequency_cutoffs(stream: torch.Tensor, vocab_size: int, head_share: float = 0.85):
    """Cutoffs for :class:`TiedAdaptiveSoftmax`: the head is the smallest set of most frequent
    ids covering ``head_share`` of ``stream``'s tokens (rounded up to a multiple of 100), the
    rest split where the next tenth of the remaining ids begins. Returns ``[c_1, c_2]``."""
    counts = torch.bincount(stream, minlength=vocab_size).double()
    share = counts.cumsum(0) / counts.sum()
    head = int((share < head_share).sum()) + 1
    head = min(-(-head // 100) * 100, vocab_size - 2)
    second = min(head + max((vocab_size - head) // 5, 1), vocab_size - 1)
    return [head, second]


# ---------------------------------------------------------------------------------------------
# Evaluation, sampling, and training for a wall-clock budget
# ---------------------------------------------------------------------------------------------


def perplexity(model: nn.Module, loss_fn: Callable, chunks: list, device=None) -> dict:
    """Mean loss and perplexity of ``model`` over every chunk (see :func:`eval_chunks`)."""
    return evaluate(model, chunks, loss_fn, perplexity=True, device=device)


@torch.no_grad()
def sample(
    model: nn.Module,
    prompt: torch.Tensor,
    n_new: int,
    temperature: float,
    context: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Extend ``prompt (1, L0)`` by ``n_new`` sampled ids -> ``(1, L0 + n_new)``.

    :func:`utils.decoding.generate` with ``context=`` (each step reads the last ``context``
    ids) and its sampling rules; the whole prompt is kept in the result, on its device.
    """
    out = decoding.generate(
        model,
        prompt,
        n_new,
        temperature=temperature,
        context=context,
        generator=generator,
    )
    return torch.cat([prompt, out.new_ids.to(prompt.device)], dim=1)


@dataclass
class Run:
    """One recipe in :func:`train_for_budget`: its trainer, batches and planned length.

    ``context``: the window length it trains (and is evaluated) on; ``loss_fn``: its loss.
    """

    trainer: Trainer
    batch_at: Callable[[int], tuple[torch.Tensor, torch.Tensor]]
    planned_steps: int  # stop here even if time is left (the schedule ends here)
    context: int
    loss_fn: Callable

    @property
    def seconds(self) -> float:
        """Training seconds so far (summed over resumed runs; evaluation not counted)."""
        history = self.trainer.history
        return history.time[-1] if history.time else 0.0

    @property
    def tokens(self) -> int:
        """Training tokens (targets) seen so far."""
        return self.batch_at.tokens_in(self.trainer.step)

    def done(self, budget_s: float) -> bool:
        return self.trainer.step >= self.planned_steps or self.seconds >= budget_s


def train_for_budget(
    runs: dict[str, Run], budget_s: float, turn_s: float = 10.0, progress: bool = True
) -> None:
    """Train every run until its training time reaches ``budget_s`` (or its planned steps).

    The runs take turns of about ``turn_s`` seconds each, so a slow patch of a shared machine
    costs them alike. Training time is what each ``Trainer`` measures (evaluation and
    checkpoint writing excluded). Each turn ends with a checkpoint when the trainer has a
    ``checkpoint_path``, so an interrupted call, called again, resumes where it stopped.
    """
    if not budget_s > 0:
        raise ValueError(f"budget_s must be > 0, got {budget_s}")
    if not turn_s > 0:
        raise ValueError(f"turn_s must be > 0, got {turn_s}")
    with tqdm(
        total=round(budget_s), desc="seconds of training", disable=not progress
    ) as bar:
        while not all(run.done(budget_s) for run in runs.values()):
            for run in runs.values():
                if run.done(budget_s):
                    continue
                trainer = run.trainer
                per_step = run.seconds / trainer.step if trainer.step else None
                turn = 3 if per_step is None else max(1, round(turn_s / per_step))
                trainer.config.max_steps = min(trainer.step + turn, run.planned_steps)
                trainer.fit(run.batch_at)
            bar.n = round(min(min(r.seconds for r in runs.values()), budget_s))
            bar.refresh()


def seconds_per_step(
    trainer, batch_at: Callable, steps: int = 8, warmup: int = 2
) -> float:
    """Median seconds per optimizer step of a *copy* of ``trainer``'s model and optimizer.

    Used to plan a schedule's length for a time budget without touching the real run.
    """
    # One deepcopy of both: the copied optimizer then updates the copied parameters.
    model, optimizer = copy.deepcopy((trainer.model, trainer.optimizer))
    loss_fn = trainer.loss_fn
    times = []
    for i in range(warmup + steps):
        x, y = batch_at(i)
        start = time.perf_counter()
        with trainer.autocast():
            loss = loss_fn(model, (x.to(trainer.device), y.to(trainer.device)))[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(trainer.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def seed_recipe(
    vocab_size: int,
    train: torch.Tensor,
    dropout: float = 0.2,
    device: str = "cpu",
    checkpoint_path: str | None = None,
    seed: int = 0,
) -> Run:
    """The tutorial's recipe: :class:`SeedTutorialLM` (2 layers, d=200, 2 heads, d_ff=200),
    20 columns, bptt 35 walked in order, SGD lr 5.0, the rate x0.95 after every epoch, gradient
    norm clipped to 0.5, fp32. It has no planned end: it trains until the budget is spent."""
    torch.manual_seed(seed)
    model = SeedTutorialLM(vocab_size, dropout=dropout)
    batches = ContiguousChunks(batchify(train, 20), bptt=35)
    optimizer = torch.optim.SGD(model.parameters(), lr=5.0)
    per_epoch = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=len(batches), gamma=0.95
    )
    config = TrainConfig(
        max_steps=1,
        clip_grad_norm=0.5,
        precision="fp32",
        device=device,
        seed=seed,
        checkpoint_path=checkpoint_path,
        progress=False,
    )
    trainer = Trainer(model, optimizer, lm_loss, config, per_epoch)
    return Run(trainer, batches, planned_steps=10**9, context=35, loss_fn=lm_loss)


def book_recipe(
    model: _AdaptiveLM,
    train: torch.Tensor,
    budget_s: float,
    batch_size: int,
    context: int,
    lr: float,
    weight_decay: float = 0.1,
    device: str = "cpu",
    precision: str = "auto",
    checkpoint_path: str | None = None,
    seed: int = 0,
) -> Run:
    """The book's recipe around ``model``: random windows, AdamW (decay on matrices only),
    5 % linear warm-up then cosine to 0.1x, gradient norm clipped to 1, bf16/fp16 autocast on a
    GPU. The schedule's length is planned from a timed trial on a copy of the model, so that it
    ends when the budget does; it is stored next to the checkpoint so a resumed run keeps it."""
    batches = RandomWindows(train, batch_size, context, seed=seed)
    config = TrainConfig(
        max_steps=1,
        clip_grad_norm=1.0,
        precision=precision,
        device=device,
        seed=seed,
        checkpoint_path=checkpoint_path,
        progress=False,
    )
    optimizer = torch.optim.AdamW(
        decay_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98)
    )
    plan = f"{checkpoint_path}.plan.json" if checkpoint_path else None
    if plan and os.path.exists(plan) and os.path.exists(checkpoint_path):
        with open(plan) as f:
            steps = json.load(f)["planned_steps"]
    else:
        trial = Trainer(model, optimizer, adaptive_lm_loss, config)
        steps = max(2, int(budget_s / seconds_per_step(trial, batches)))
        if plan:
            os.makedirs(os.path.dirname(plan) or ".", exist_ok=True)
            with open(plan, "w") as f:
                json.dump({"planned_steps": steps, "budget_s": budget_s}, f)
    schedule = warmup_cosine(optimizer, max(1, steps // 20), steps, min_lr_ratio=0.1)
    trainer = Trainer(model, optimizer, adaptive_lm_loss, config, schedule)
    return Run(
        trainer, batches, planned_steps=steps, context=context, loss_fn=adaptive_lm_loss
    )


def cross_entropy_check(
    model: _AdaptiveLM, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """``|fast loss - full-softmax loss|``: the adaptive loss is the exact cross-entropy."""
    fast = -model.target_log_probs(x, y).mean()
    full = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    return (fast - full).abs()
