"""The graders of chapter 5a's exercises (a Transformer classifier on IMDb): masked mean
pooling, the classification cross-entropy and the padding a batching scheme costs; see
:mod:`utils.grader`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils import text
from utils.grader import exercise
from utils.models import mean_pool


def _tensor(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{what} should be a torch tensor, got {type(value).__name__}")
    return value


# --- 05a.masked_mean ---------------------------------------------------------------------


def _masked_mean(hidden, ids, pad_idx):
    is_real = (ids != pad_idx).to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
    return (hidden * is_real).sum(dim=1) / is_real.sum(dim=1)


def _pooling_cases():
    """(hidden [B, L, d], ids [B, L], pad_idx): B != L != d, so that axes cannot be confused."""
    g = torch.Generator().manual_seed(0)
    cases = []
    for B, L, d, pad_idx, lengths in (
        (3, 5, 4, 0, (5, 2, 3)),
        (2, 7, 6, 0, (1, 7)),
        (4, 6, 3, 1, (6, 4, 2, 5)),  # <pad> is id 1 here, and id 0 a real word
    ):
        hidden = torch.randn(B, L, d, generator=g, dtype=torch.float64)
        ids = torch.randint(2, 20, (B, L), generator=g)
        ids[0, 0] = 0 if pad_idx == 1 else ids[0, 0]  # a real token with id 0
        for b, n in enumerate(lengths):
            ids[b, n:] = pad_idx
        cases.append((hidden, ids, pad_idx))
    return cases


@exercise(
    "05a.masked_mean",
    "Masked mean pooling over the real tokens",
    difficulty=2,
    reference=_masked_mean,
    wrong=[
        (lambda h, ids, pad_idx: h.mean(dim=1), "counts the padding"),
        (lambda h, ids, pad_idx: h.mean(dim=0), "dimension 0, the batch"),
        (
            lambda h, ids, pad_idx: (
                (h * (ids != pad_idx).unsqueeze(-1)).sum(1) / h.shape[1]
            ),
            "padded length",
        ),
        (lambda h, ids, pad_idx: _masked_mean(h, ids, 0), "id 0"),
        (
            lambda h, ids, pad_idx: (h * (ids != pad_idx).unsqueeze(-1)).sum(1),
            "sum, not a mean",
        ),
    ],
)
def masked_mean(answer):
    """``answer(hidden, ids, pad_idx)`` -> ``[B, d]``: the mean of ``hidden [B, L, d]`` over the
    positions whose id in ``ids [B, L]`` is not ``pad_idx``."""
    for hidden, ids, pad_idx in _pooling_cases():
        B, L, d = hidden.shape
        got = _tensor(answer(hidden.clone(), ids.clone(), pad_idx), "the pooled output")
        want = mean_pool(hidden, ids != pad_idx)
        if got.shape == (L, d) and torch.allclose(got.double(), hidden.mean(0)):
            yield (
                f"your output has shape {tuple(got.shape)} = (L, d) and is the mean over "
                "dimension 0, the batch: each vector mixes the reviews of the batch (seed "
                "000's mean(dim=1) in the seq-first layout). In [B, L, d] the tokens are "
                "dimension 1"
            )
            return
        if got.shape != (B, d):
            yield f"output shape {tuple(got.shape)}, expected (B, d) = {(B, d)}"
            return
        got = got.double()
        if torch.allclose(got, want):
            continue
        real = (ids != pad_idx).unsqueeze(-1).double()
        if torch.allclose(got, hidden.mean(1)):
            yield (
                "a plain mean over the tokens counts the padding: a review's vector then "
                "depends on how long its batch-mates are. Weight each position by "
                "is_real = ids != pad_idx"
            )
        elif torch.allclose(got, (hidden * real).sum(1) / L):
            yield (
                f"you sum the real tokens but divide by the padded length L = {L}; divide "
                "each review by its own number of real tokens"
            )
        elif torch.allclose(got, (hidden * real).sum(1)):
            yield (
                "that is a masked sum, not a mean: divide by the number of real tokens "
                "(is_real.sum(dim=1))"
            )
        elif pad_idx != 0 and torch.allclose(got, _masked_mean(hidden, ids, 0)):
            yield (
                f"here pad_idx = {pad_idx} but you treat id 0 as padding: use the pad_idx "
                "argument, not a hard-coded 0"
            )
        else:
            err = (got - want).abs().max().item()
            yield f"pad_idx={pad_idx}: your pooled vectors differ from the masked mean by up to {err:.3g}"
        return


# --- 05a.cross_entropy -------------------------------------------------------------------


def _cross_entropy(logits, labels):
    log_probs = torch.log_softmax(logits, dim=-1)  # [B, C]
    return -log_probs[torch.arange(len(labels)), labels].mean()


@exercise(
    "05a.cross_entropy",
    "The classification cross-entropy, by hand",
    difficulty=1,
    reference=_cross_entropy,
    wrong=[
        (
            lambda z, y: -torch.log_softmax(z, -1)[torch.arange(len(y)), y].sum(),
            "sums over the",
        ),
        (
            lambda z, y: -(F.one_hot(y, z.shape[-1]) * torch.log_softmax(z, -1)).mean(),
            "number of classes",
        ),
        (
            lambda z, y: torch.log_softmax(z, -1)[torch.arange(len(y)), y].mean(),
            "minus sign",
        ),
        (
            lambda z, y: -torch.log_softmax(z, 0)[torch.arange(len(y)), y].mean(),
            "over the batch",
        ),
        (
            lambda z, y: (
                -torch.log(torch.softmax(z, -1))[torch.arange(len(y)), y].mean()
            ),
            "log_softmax",
        ),
    ],
)
def cross_entropy(answer):
    """``answer(logits [B, C], labels [B] int64)`` -> a scalar tensor, equal to
    ``F.cross_entropy(logits, labels)``."""
    g = torch.Generator().manual_seed(1)
    cases = []
    for B, C, scale in ((6, 2, 1.0), (5, 4, 3.0), (8, 3, 1.0), (4, 2, 1000.0)):
        logits = torch.randn(B, C, generator=g, dtype=torch.float64) * scale
        labels = torch.randint(0, C, (B,), generator=g)
        if (
            scale > 100
        ):  # confident and wrong: softmax underflows to exactly 0 for label
            labels = logits.argmin(dim=-1)
        cases.append((logits, labels))
    for logits, labels in cases:
        B, C = logits.shape
        got = _tensor(answer(logits.clone(), labels.clone()), "the loss")
        if got.numel() != 1:
            yield (
                f"the loss has shape {tuple(got.shape)}; it must be one number, the mean "
                f"over the B = {B} examples"
            )
            return
        got = got.double().reshape(())
        want = F.cross_entropy(logits, labels)
        if torch.isclose(got, want):
            continue
        picked = torch.log_softmax(logits, -1)[torch.arange(B), labels]
        if not torch.isfinite(got):
            yield (
                f"your loss is {got.item()} for logits of size ~{logits.abs().max():.0f}: "
                "log(softmax(z)) underflows to log(0); use torch.log_softmax, which "
                "computes z - logsumexp(z) without forming the tiny probabilities"
            )
        elif torch.isclose(got, -picked.sum()):
            yield (
                f"your loss sums over the {B} examples; the batch loss is their mean "
                "(it should not grow with the batch size)"
            )
        elif torch.isclose(got, -picked.mean() / C):
            yield (
                f"your loss is {C} times too small: you averaged over the classes too. The "
                "sum runs over the C classes (picking the true one), the mean over the "
                "examples: dividing by the number of classes is wrong"
            )
        elif torch.isclose(got, picked.mean()):
            yield "your loss is negative: the cross-entropy is minus the mean log-probability (a minus sign is missing)"
        elif torch.isclose(
            got, -torch.log_softmax(logits, 0)[torch.arange(B), labels].mean()
        ):
            yield (
                "your softmax runs over the batch (dim 0); the probabilities of one "
                "example are over its classes, dim -1"
            )
        else:
            yield (
                f"B={B}, C={C}: your loss {got.item():.6g}, F.cross_entropy gives "
                f"{want.item():.6g}"
            )
        return


# --- 05a.padding_share -------------------------------------------------------------------


def _padding_share(batches, lengths):
    real = sum(lengths[i] for batch in batches for i in batch)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1 - real / padded


def _measured_padding(batches, lengths, pad_idx=0):
    """Pad the batches for real with ``pad_collate`` and count the ``<pad>`` ids."""
    pads = total = 0
    for batch in batches:
        ids, _, _ = text.pad_collate([[7] * lengths[i] for i in batch], pad_idx=pad_idx)
        pads += int((ids == pad_idx).sum())
        total += ids.numel()
    return pads / total


def _padding_cases():
    g = torch.Generator().manual_seed(2)
    lengths = (torch.randint(1, 60, (203,), generator=g) ** 1.3).long().add(1).tolist()
    order = torch.randperm(len(lengths), generator=g).tolist()
    random_batches = [order[i : i + 16] for i in range(0, len(order), 16)]
    sampler = text.BucketBatchSampler(lengths, 16, shuffle=True, seed=0)
    bucketed = list(sampler)
    few = [[0, 1, 2], [3], [4, 5]]
    few_lengths = [5, 1, 3, 4, 2, 2]
    return [
        ("random batches of 16", random_batches, lengths),
        ("bucketed batches of 16", bucketed, lengths),
        ("three small batches", few, few_lengths),
    ]


@exercise(
    "05a.padding_share",
    "Measure the share of padding in a batching",
    difficulty=1,
    reference=_padding_share,
    wrong=[
        (lambda b, n: 1 - _padding_share(b, n), "share of real tokens"),
        (
            lambda b, n: (
                1 - sum(n[i] for x in b for i in x) / (sum(map(len, b)) * max(n))
            ),
            "longest review of all",
        ),
        (
            lambda b, n: sum(_padding_share([x], n) for x in b) / len(b),
            "averages the batches' shares",
        ),
    ],
)
def padding_share(answer):
    """``answer(batches, lengths)`` -> a float in [0, 1): the share of ``<pad>`` positions once
    each batch (a list of review indices) is padded to its longest review; ``lengths[i]`` is the
    number of tokens of review ``i``."""
    for name, batches, lengths in _padding_cases():
        got = float(answer([list(b) for b in batches], list(lengths)))
        want = _measured_padding(batches, lengths)
        if abs(got - want) <= 1e-9:
            continue
        real = sum(lengths[i] for b in batches for i in b)
        longest_all = sum(map(len, batches)) * max(lengths)
        per_batch = sum(_padding_share([b], lengths) for b in batches) / len(batches)
        if abs(got - (1 - want)) <= 1e-9:
            yield (
                f"{name}: {got:.4f} is the share of real tokens; the padding is the rest "
                f"({want:.4f})"
            )
        elif abs(got - (1 - real / longest_all)) <= 1e-9:
            yield (
                f"{name}: {got:.4f} pads every batch to the longest review of all; "
                "pad_collate pads each batch only to its own longest review"
            )
        elif abs(got - per_batch) <= 1e-9:
            yield (
                f"{name}: {got:.4f} averages the batches' shares, so a batch of one review "
                "weighs as much as a full one; divide the padding positions of all batches "
                "by all their positions"
            )
        else:
            yield (
                f"{name}: you give {got:.4f}, but padding the batches with pad_collate and "
                f"counting the <pad> ids gives {want:.4f}"
            )
        return
