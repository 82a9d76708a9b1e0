"""The graders of chapter 5b's exercises (WikiText-2 language models): the tutorial's
``batchify``, perplexity over a whole split, and what weight tying saves; see
:mod:`utils.grader`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils import lm_recipes
from utils.grader import exercise, open_exercise
from utils.models import count_parameters


def _tensor(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{what} should be a torch tensor, got {type(value).__name__}")
    return value


# --- 05b.batchify ------------------------------------------------------------------------


def _batchify(ids, batch_size):
    length = ids.numel() // batch_size
    return ids[: length * batch_size].view(batch_size, length)


@exercise(
    "05b.batchify",
    "Cut a token stream into parallel columns",
    difficulty=2,
    reference=_batchify,
    wrong=[
        (
            lambda ids, b: ids[: ids.numel() // b * b].view(-1, b),
            "sequence-first",
        ),
        (
            lambda ids, b: ids[: ids.numel() // b * b].view(-1, b).t(),
            "every 4-th token",
        ),
        (lambda ids, b: ids.view(b, -1), "drop the trailing"),
        (
            lambda ids, b: ids[: ids.numel() // b * b + 1][1:].view(b, -1),
            "drops the first token",
        ),
    ],
)
def batchify(answer):
    """``answer(ids [N], batch_size B)`` -> ``[B, N // B]`` with row ``b`` the ``b``-th
    contiguous piece of the stream; the trailing ``N % B`` tokens are dropped. Compared with
    :func:`utils.lm_recipes.batchify`."""
    for n, b in ((26, 4), (24, 4), (100, 7), (12, 1), (9, 3)):
        ids = torch.arange(n) + 100  # ids 100, 101, ...: position t holds 100 + t
        try:
            got = _tensor(answer(ids.clone(), b), f"batchify(arange({n}), {b})")
        except RuntimeError as error:
            if n % b:
                yield (
                    f"N={n}, B={b}: your code fails ({str(error)[:60]}...): {n} ids do not "
                    f"split into {b} equal columns; drop the trailing N % B = {n % b} ids "
                    "first"
                )
                return
            raise
        want = lm_recipes.batchify(ids, b)
        length = n // b
        if got.shape != want.shape:
            if got.shape == (length, b):
                yield (
                    f"N={n}, B={b}: shape {tuple(got.shape)} is the tutorial's "
                    f"sequence-first layout [N // B, B]; the book's models are batch-first, "
                    f"so return [B, N // B] = {tuple(want.shape)}"
                )
            else:
                yield f"N={n}, B={b}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
            return
        if torch.equal(got, want):
            continue
        if torch.equal(got, ids[: length * b].view(length, b).t()):
            yield (
                f"N={n}, B={b}: row 0 is {got[0, :4].tolist()}..., every {b}-th token of "
                f"the stream: a column must be a contiguous piece of text "
                f"({want[0, :4].tolist()}...), so that each target is the next word"
            )
        elif torch.equal(got, ids[1 : length * b + 1].view(b, length)):
            yield (
                f"N={n}, B={b}: your columns start one token late (your code drops the "
                "first token); keep ids[: (N // B) * B]"
            )
        else:
            b_, t = (got != want).nonzero()[0].tolist()
            yield (
                f"N={n}, B={b}: position [{b_}, {t}] holds id {got[b_, t].item()}, expected "
                f"{want[b_, t].item()} (stream position {want[b_, t].item() - 100})"
            )
        return


# --- 05b.perplexity ----------------------------------------------------------------------


def _perplexity(losses, n_tokens):
    total = sum(loss * n for loss, n in zip(losses, n_tokens, strict=True))
    return math.exp(total / sum(n_tokens))


def _chunks(seed, sizes, V, uniform=False):
    """Per chunk of a split: (mean loss in nats, number of tokens), and the exact perplexity."""
    g = torch.Generator().manual_seed(seed)
    losses, counts, nll_sum = [], [], 0.0
    for size in sizes:
        logits = torch.randn(size, V, generator=g, dtype=torch.float64) * 2
        if uniform:
            logits = torch.zeros(size, V, dtype=torch.float64)
        targets = torch.randint(0, V, (size,), generator=g)
        losses.append(F.cross_entropy(logits, targets).item())
        counts.append(size)
        nll_sum += F.cross_entropy(logits, targets, reduction="sum").item()
    return losses, counts, math.exp(nll_sum / sum(counts))


@exercise(
    "05b.perplexity",
    "Perplexity over a whole split",
    difficulty=2,
    reference=_perplexity,
    wrong=[
        (lambda losses, n: math.exp(sum(losses) / len(losses)), "every chunk alike"),
        (
            lambda losses, n: sum(math.exp(x) for x in losses) / len(losses),
            "averages the chunks' perplexities",
        ),
        (
            lambda losses, n: 2 ** math.log(_perplexity(losses, n)),
            "base 2",
        ),
        (lambda losses, n: math.log(_perplexity(losses, n)), "exp"),
    ],
)
def perplexity(answer):
    """``answer(losses, n_tokens)`` -> a float: the perplexity of a whole split, given for each
    chunk (see :func:`utils.lm_recipes.eval_chunks`) its mean cross-entropy in nats and its
    number of predicted tokens."""
    cases = [
        (
            "a split of 4 chunks, the last one short",
            _chunks(0, (350, 350, 350, 12), 40),
        ),
        ("chunks of very different sizes", _chunks(1, (5, 200, 30), 25)),
        (
            "a uniform model over V = 50 words",
            _chunks(2, (70, 70, 9), 50, uniform=True),
        ),
    ]
    for name, (losses, counts, want) in cases:
        got = float(answer(list(losses), list(counts)))
        if math.isclose(got, want, rel_tol=1e-9):
            continue
        mean_loss = math.log(want)
        if math.isclose(got, math.exp(sum(losses) / len(losses)), rel_tol=1e-9):
            yield (
                f"{name}: {got:.4g} averages the chunks' losses with every chunk alike, so "
                f"a chunk of {min(counts)} tokens weighs as much as one of {max(counts)}; "
                "weight each chunk's loss by its number of tokens (the mean over tokens), "
                f"then exponentiate: {want:.4g}"
            )
        elif math.isclose(got, sum(map(math.exp, losses)) / len(losses), rel_tol=1e-9):
            yield (
                f"{name}: {got:.4g} averages the chunks' perplexities; perplexity is the "
                "exp of the mean loss per token over the whole split, and a mean of exps "
                f"is not the exp of a mean ({want:.4g})"
            )
        elif math.isclose(got, 2**mean_loss, rel_tol=1e-9):
            yield (
                f"{name}: {got:.4g} is 2 to the mean loss, but the cross-entropy of "
                "F.cross_entropy is in nats (natural log): use exp, not base 2"
            )
        elif math.isclose(got, mean_loss, rel_tol=1e-9):
            yield (
                f"{name}: {got:.4g} is the mean loss per token; the perplexity is its exp, "
                f"{want:.4g}"
            )
        else:
            yield f"{name}: you give {got:.6g}, the perplexity is {want:.6g}"
        return


# --- 05b.tied_parameters -----------------------------------------------------------------


class _EmbedAndOutput(nn.Module):
    """The two ends of a word-level LM: an input embedding and an output layer with bias."""

    def __init__(self, vocab_size: int, d_model: int, tied: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.output = nn.Linear(d_model, vocab_size)
        if tied:
            self.output.weight = self.embedding.weight  # the same tensor, [V, d]


def _end_parameters(vocab_size, d_model, tied):
    return vocab_size * d_model * (1 if tied else 2) + vocab_size


@exercise(
    "05b.tied_parameters",
    "What weight tying saves",
    difficulty=1,
    reference=_end_parameters,
    wrong=[
        (lambda v, d, tied: 2 * v * d + v, "counts the shared"),
        (lambda v, d, tied: v * d if tied else 2 * v * d + v, "output bias"),
        (lambda v, d, tied: v * d * (1 if tied else 2), "bias"),
    ],
)
def tied_parameters(answer):
    """``answer(vocab_size, d_model, tied)`` -> the number of parameters of an ``nn.Embedding
    (V, d)`` plus an ``nn.Linear(d, V)`` output layer (with bias), whose weight is the
    embedding's when ``tied``; counted as :func:`utils.models.count_parameters` does."""
    for v, d, tied in ((28_000, 200, False), (28_000, 200, True), (50, 16, True)):
        want = count_parameters(_EmbedAndOutput(v, d, tied))
        got = int(answer(v, d, tied))
        if got == want:
            continue
        if tied and got == 2 * v * d + v:
            yield (
                f"V={v:,}, d={d}, tied: {got:,} counts the shared [V, d] matrix twice; a "
                "tied output layer *is* the embedding tensor, so it counts once (that is "
                f"the saving: {v * d:,} parameters)"
            )
        elif tied and got == v * d:
            yield (
                f"V={v:,}, d={d}, tied: {got:,} leaves out the output bias; tying shares "
                f"the weight matrix, and the output layer keeps its own bias of V = {v:,}"
            )
        elif got == v * d * (1 if tied else 2):
            yield f"V={v:,}, d={d}: {got:,} leaves out the output layer's bias ({v:,})"
        else:
            yield f"V={v:,}, d={d}, tied={tied}: you counted {got:,}, the module has {want:,}"
        return


# --- 05b.budget_knobs (open-ended) --------------------------------------------------------

open_exercise(
    "05b.budget_knobs",
    "Width, depth or learning rate: which moves perplexity most at a fixed budget?",
    difficulty=3,
    rubric=[
        "Changes one knob at a time around one baseline (width, depth, learning rate; at "
        "least two other values each) and keeps the training tokens (steps x batch x "
        "context), the batches and the evaluation the same for every run.",
        "Repeats the baseline with at least two more seeds and compares each knob's effect "
        "with that seed-to-seed spread before calling it real.",
        "Reports the validation perplexity, parameter count and training time of every run "
        "in one table, and ranks the knobs by the spread of perplexity each one causes.",
        "Explains the ranking (at a small budget the learning rate decides how far training "
        "gets; width adds capacity, and compute at equal tokens; depth changes little at "
        "this size) and says what a one-at-a-time sweep misses (the best learning rate "
        "depends on the width).",
    ],
    answer="""
        Sweep one knob at a time around a baseline with the same batches, steps and
        evaluation, and measure the seed-to-seed spread of the baseline first. At a budget of
        a few dozen steps the learning rate moves validation perplexity most: it sets how far
        the weights get in so few updates. Width comes next, with more parameters and more
        compute per token. Depth moves it by about the seed-to-seed spread. One knob at a time
        misses interactions: a wider model usually wants a smaller learning rate, so the
        ranking belongs to this baseline and this budget.
    """,
)
