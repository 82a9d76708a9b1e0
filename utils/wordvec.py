"""Static word vectors: skip-gram with negative sampling, and the queries we ask of word vectors.

Skip-gram with negative sampling (SGNS; Mikolov et al., 2013, "Distributed Representations of
Words and Phrases and their Compositionality") gives every word ``w`` two vectors: ``v_w`` when it
is the centre word and ``u_w`` when it is a context word. For an observed pair (centre ``c``,
context ``o``) and ``K`` noise words ``k_1..k_K`` drawn from the unigram distribution raised to the
power 3/4, the loss is

    ℓ(c, o) = −log σ(u_o · v_c) − Σ_k log σ(−u_k · v_c),

i.e. a logistic regression that tells the real context word (label 1) from the noise words
(label 0). The centre vectors ``v`` are the word vectors one keeps.

Contents:

- :func:`sgns_loss` — the loss above, per pair, from the three groups of vectors.
- :class:`NegativeSampler` — draws noise words from ``count^power / Σ count^power``.
- :func:`subsample_keep_probability` — Mikolov et al.'s discarding of very frequent words.
- :func:`skipgram_pairs` — (centre, context) pairs of a token stream, with word2vec's random
  window shrinking.
- :class:`SkipGramNS` and :func:`train_sgns` — the model and a short, seeded training loop.
- :func:`nearest_neighbours`, :func:`analogy`, :func:`analogy_accuracy` — cosine-similarity
  queries (analogies by 3CosAdd: ``b − a + c``).

Shapes: ``V`` vocabulary size, ``d`` vector size, ``B`` pairs in a batch, ``K`` noise words per pair.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from utils.checks import check_min_int

__all__ = [
    "NegativeSampler",
    "SGNSHistory",
    "SkipGramNS",
    "analogy",
    "analogy_accuracy",
    "nearest_neighbours",
    "sgns_loss",
    "skipgram_pairs",
    "subsample_keep_probability",
    "train_sgns",
]


def _check_counts(counts) -> torch.Tensor:
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ValueError(
            f"counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}"
        )
    if (counts < 0).any() or not torch.isfinite(counts).all():
        raise ValueError("counts must be finite and >= 0")
    if counts.sum() <= 0:
        raise ValueError("counts must not all be zero")
    return counts


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


def _check_sgns_shapes(
    center: torch.Tensor, context: torch.Tensor, noise: torch.Tensor
) -> None:
    if center.dim() != 2 or context.shape != center.shape:
        raise ValueError(
            f"center and context must both be (B, d); got {tuple(center.shape)} and "
            f"{tuple(context.shape)}"
        )
    B, d = center.shape
    if noise.dim() != 3 or noise.shape[0] != B or noise.shape[2] != d:
        raise ValueError(
            f"noise must be (B, K, d) = ({B}, K, {d}), got {tuple(noise.shape)}"
        )


def sgns_loss(
    center: torch.Tensor, context: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """Per-pair SGNS loss ``−log σ(u_o·v_c) − Σ_k log σ(−u_k·v_c)``.

    Args:
        center: centre vectors ``v_c``, ``(B, d)``.
        context: context vectors ``u_o`` of the observed context words, ``(B, d)``.
        noise: context vectors ``u_k`` of the noise words, ``(B, K, d)``.

    Returns:
        ``(B,)`` losses (average them for a batch loss).
    """
    _check_sgns_shapes(center, context, noise)
    positive = (context * center).sum(-1)  # (B,)  u_o · v_c
    negative = torch.bmm(noise, center.unsqueeze(-1)).squeeze(-1)  # (B, K)  u_k · v_c
    return -F.logsigmoid(positive) - F.logsigmoid(-negative).sum(-1)


# --------------------------------------------------------------------------------------------
# Sampling: noise words, subsampling, pairs
# --------------------------------------------------------------------------------------------


class NegativeSampler:
    """Draw noise words ``k`` with probability ``count_k^power / Σ_j count_j^power``.

    ``power=0.75`` is Mikolov et al.'s choice: it flattens the unigram distribution, so rare
    words are drawn more often than their frequency and "the" less often.

    Args:
        counts: ``(V,)`` word counts (ints or floats, >= 0, not all 0).
        power: exponent applied to the counts (0 gives a uniform distribution, 1 the unigram one).
    """

    def __init__(self, counts, power: float = 0.75) -> None:
        if isinstance(power, bool) or not isinstance(power, (int, float)) or power < 0:
            raise ValueError(f"power must be a number >= 0, got {power!r}")
        counts = _check_counts(counts)
        weights = torch.where(counts > 0, counts.pow(power), torch.zeros_like(counts))
        self.power = float(power)
        self.probs = (weights / weights.sum()).float()  # (V,)
        cdf = torch.cumsum(weights / weights.sum(), 0)
        cdf[-1] = 1.0
        self._cdf = cdf

    def sample(
        self, shape: Sequence[int], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Word ids of the given shape (``torch.long``), drawn independently."""
        shape = tuple(shape)
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        ids = torch.searchsorted(self._cdf, u.reshape(-1), right=True)
        return ids.clamp_(max=len(self._cdf) - 1).reshape(shape)


def subsample_keep_probability(counts, threshold: float = 1e-4) -> torch.Tensor:
    """Probability of *keeping* each occurrence of a word: ``min(1, sqrt(t / f))``.

    ``f`` is the word's share of the corpus and ``t`` the threshold; Mikolov et al. (2013) discard
    an occurrence with probability ``1 − sqrt(t / f)``. Words rarer than ``t`` are always kept.
    """
    counts = _check_counts(counts)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or threshold <= 0
    ):
        raise ValueError(f"threshold must be a number > 0, got {threshold!r}")
    freq = counts / counts.sum()
    keep = torch.sqrt(threshold / freq.clamp_min(1e-300))
    return keep.clamp(max=1.0).float()


def skipgram_pairs(
    ids: torch.Tensor, window: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """All (centre, context) pairs of a token stream, with word2vec's shrinking window.

    For each centre position word2vec draws an effective window ``b`` uniformly from
    ``1..window`` and uses the words at distance ``<= b``. That is the same as keeping the pair at
    distance ``δ`` with probability ``(window − δ + 1) / window``, which is what this function
    does, independently for each pair and direction (so nearby words count more). With
    ``generator=None`` *and* ``window=1`` every adjacent pair is kept.

    Args:
        ids: ``(N,)`` token ids of the stream.
        window: largest distance between centre and context.

    Returns:
        ``(centers, contexts)``, two ``(P,)`` long tensors, ordered by distance then position.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1:
        raise ValueError("ids must be a 1-D tensor of token ids")
    check_min_int("window", window)
    centers, contexts = [], []
    n = ids.numel()
    for delta in range(1, min(window, n - 1) + 1):
        keep_p = (window - delta + 1) / window
        left, right = ids[:-delta], ids[delta:]  # pairs at distance delta
        for c, o in ((left, right), (right, left)):
            if keep_p < 1.0:
                keep = torch.rand(c.shape, generator=generator) < keep_p
                c, o = c[keep], o[keep]
            centers.append(c)
            contexts.append(o)
    if not centers:
        empty = torch.empty(0, dtype=torch.long)
        return empty, empty.clone()
    return torch.cat(centers).long(), torch.cat(contexts).long()


# --------------------------------------------------------------------------------------------
# The model and its training loop
# --------------------------------------------------------------------------------------------


class SkipGramNS(nn.Module):
    """Two embedding tables: ``center`` (the word vectors ``v``) and ``context`` (``u``).

    Initialised as in word2vec: ``v`` uniform in ``±0.5/d``, ``u`` zero. Both tables use sparse
    gradients (a batch touches only a few rows).
    """

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        check_min_int("vocab_size", vocab_size)
        check_min_int("dim", dim)
        self.center = nn.Embedding(vocab_size, dim, sparse=True)
        self.context = nn.Embedding(vocab_size, dim, sparse=True)
        nn.init.uniform_(self.center.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.context.weight)

    def forward(
        self, centers: torch.Tensor, contexts: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """``centers (B,)``, ``contexts (B,)``, ``noise (B, K)`` ids -> ``(B,)`` losses."""
        return sgns_loss(
            self.center(centers), self.context(contexts), self.context(noise)
        )

    @property
    def vectors(self) -> torch.Tensor:
        """The word vectors ``v`` (detached), ``(V, d)``."""
        return self.center.weight.detach()


@dataclass
class SGNSHistory:
    """What :func:`train_sgns` did: the loss per logged step and the totals."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    pairs_seen: int = 0
    seconds: float = 0.0
    epochs: float = 0.0


@contextlib.contextmanager
def _torch_threads(threads: int | None):
    """Run the block with ``threads`` intra-op threads (``None``: unchanged), then restore."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_sgns(
    ids: torch.Tensor,
    counts,
    dim: int = 100,
    window: int = 5,
    negatives: int = 5,
    batch_size: int = 4096,
    lr: float = 0.01,
    max_pairs: int | None = None,
    epochs: int = 1,
    subsample: float | None = 1e-4,
    seed: int = 0,
    log_every: int = 50,
    progress: Callable | None = None,
    threads: int | None = 1,
) -> tuple[SkipGramNS, SGNSHistory]:
    """Train SGNS word vectors on a token stream; seeded, so a rerun gives the same vectors.

    Each epoch subsamples the stream (:func:`subsample_keep_probability`, skipped when
    ``subsample`` is None), builds its (centre, context) pairs (:func:`skipgram_pairs`), shuffles
    them and runs SGD (learning rate falling linearly to ~0, as in word2vec) on the sum of
    :func:`sgns_loss` over batches of ``batch_size`` pairs, each pair with ``negatives`` noise
    words from :class:`NegativeSampler` (power 3/4).
    Training stops after ``epochs`` epochs or ``max_pairs`` pairs, whichever comes first.

    Args:
        ids: ``(N,)`` token ids; ``counts``: ``(V,)`` count of each id in the corpus.
        progress: optional wrapper for the batch iterator (e.g. ``tqdm.auto.tqdm``), called as
            ``progress(iterable, total=..., desc=...)``.
        threads: torch's intra-op threads while training (restored afterwards); ``None`` keeps
            the current setting. The default 1 is deliberate: the per-step tensors are small, and
            on a shared 2-core machine two threads ran up to 15x slower than one (measured).

    Returns:
        ``(model, history)``.
    """
    counts = _check_counts(counts)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.numel() < 2:
        raise ValueError("ids must be a 1-D tensor of at least 2 token ids")
    if ids.min() < 0 or ids.max() >= counts.numel():
        raise ValueError(f"ids must lie in [0, {counts.numel()}) (one count per id)")
    for name, value in (
        ("dim", dim),
        ("window", window),
        ("negatives", negatives),
        ("batch_size", batch_size),
        ("epochs", epochs),
        ("log_every", log_every),
    ):
        check_min_int(name, value)
    if max_pairs is not None:
        check_min_int("max_pairs", max_pairs)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")

    if threads is not None:
        check_min_int("threads", threads)
    with _torch_threads(threads):
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = SkipGramNS(counts.numel(), dim)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        sampler = NegativeSampler(counts, power=0.75)
        keep = subsample_keep_probability(counts, subsample) if subsample else None
        history = SGNSHistory()
        budget = max_pairs if max_pairs is not None else math.inf
        # Expected pairs: kept tokens x (window + 1) pairs per token (both sides, shrinking window).
        kept = keep[ids].sum().item() if keep is not None else float(ids.numel())
        total_pairs = max(1.0, min(budget, epochs * kept * (window + 1)))
        start = time.perf_counter()
        step = 0
        for epoch in range(epochs):
            stream = ids
            if keep is not None:
                stream = ids[torch.rand(ids.shape, generator=generator) < keep[ids]]
            centers, contexts = skipgram_pairs(stream, window, generator)
            order = torch.randperm(centers.numel(), generator=generator)
            n_pairs = int(min(centers.numel(), budget - history.pairs_seen))
            if n_pairs <= 0:
                break
            batches = range(0, n_pairs, batch_size)
            if progress is not None:
                batches = progress(
                    batches, total=len(batches), desc=f"SGNS epoch {epoch + 1}"
                )
            for first in batches:
                index = order[first : min(first + batch_size, n_pairs)]
                noise = sampler.sample((index.numel(), negatives), generator)
                losses = model(centers[index], contexts[index], noise)
                done = (
                    history.pairs_seen / total_pairs
                )  # word2vec: lr falls linearly to ~0
                optimizer.param_groups[0]["lr"] = lr * max(1e-4, 1.0 - done)
                optimizer.zero_grad(set_to_none=True)
                losses.sum().backward()  # each pair takes its own step, as in word2vec
                optimizer.step()
                loss = losses.mean()
                if step % log_every == 0:
                    history.steps.append(step)
                    history.losses.append(loss.item())
                step += 1
                history.pairs_seen += index.numel()
            history.epochs += n_pairs / centers.numel()
            if history.pairs_seen >= budget:
                break
        history.seconds = time.perf_counter() - start
        return model, history


# --------------------------------------------------------------------------------------------
# Queries: neighbours and analogies
# --------------------------------------------------------------------------------------------


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    if not isinstance(vectors, torch.Tensor) or vectors.dim() != 2:
        raise ValueError("vectors must be a (V, d) tensor")
    return F.normalize(vectors.float(), dim=-1)


def nearest_neighbours(
    vectors: torch.Tensor,
    query: int | torch.Tensor,
    k: int = 5,
    exclude: Sequence[int] = (),
) -> tuple[list[int], list[float]]:
    """The ``k`` rows most cosine-similar to ``query`` (a row id, or a ``(d,)`` vector).

    A row id query excludes itself; ``exclude`` lists further row ids to skip.

    Returns:
        ``(ids, similarities)``, best first.
    """
    check_min_int("k", k)
    unit = _unit(vectors)
    excluded = set(exclude)
    if isinstance(query, int) and not isinstance(query, bool):
        if not 0 <= query < unit.shape[0]:
            raise ValueError(f"query id {query} out of range [0, {unit.shape[0]})")
        q = unit[query]
        excluded.add(query)
    elif isinstance(query, torch.Tensor) and query.shape == (unit.shape[1],):
        q = F.normalize(query.float(), dim=0)
    else:
        raise ValueError(f"query must be a row id or a ({unit.shape[1]},) vector")
    sims = unit @ q  # (V,)
    if excluded:
        sims[torch.tensor(sorted(excluded), dtype=torch.long)] = -math.inf
    k = min(k, unit.shape[0] - len(excluded))
    top = torch.topk(sims, k)
    return top.indices.tolist(), top.values.tolist()


def analogy(vectors: torch.Tensor, a: int, b: int, c: int, k: int = 1):
    """ "a is to b as c is to ?": the rows nearest to ``b − a + c`` (unit vectors), a, b, c excluded.

    This is 3CosAdd (Mikolov et al. 2013; the a, b, c exclusion is the standard protocol).
    Returns ``(ids, similarities)`` like :func:`nearest_neighbours`.
    """
    unit = _unit(vectors)
    target = unit[b] - unit[a] + unit[c]
    return nearest_neighbours(vectors, target, k=k, exclude=(a, b, c))


def analogy_accuracy(
    vectors: torch.Tensor, questions: Sequence[tuple[int, int, int, int]]
) -> float:
    """Share of questions ``(a, b, c, d)`` whose 3CosAdd answer is exactly ``d``."""
    if not questions:
        raise ValueError("questions is empty")
    unit = _unit(vectors)
    q = torch.tensor(list(questions), dtype=torch.long)  # (Q, 4)
    targets = unit[q[:, 1]] - unit[q[:, 0]] + unit[q[:, 2]]  # (Q, d)
    sims = F.normalize(targets, dim=-1) @ unit.T  # (Q, V)
    rows = torch.arange(q.shape[0]).unsqueeze(1)
    sims[rows, q[:, :3]] = -math.inf
    return (sims.argmax(-1) == q[:, 3]).float().mean().item()
