"""The graders of chapter 5d's exercises (fine-tuning a pretrained encoder): the head-and-tail
cut with the special tokens, the mean-pooled sentence embedding and the margin of a test
accuracy; see :mod:`utils.grader`. No model or tokenizer is downloaded: a tiny stand-in
tokenizer plays BERT's part."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from utils import finetune
from utils.grader import exercise, open_exercise
from utils.models import mean_pool


def _tensor(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{what} should be a torch tensor, got {type(value).__name__}")
    return value


# --- 05d.head_tail -----------------------------------------------------------------------

CLS, SEP = 101, 102  # BERT's ids for [CLS] and [SEP]


class _PieceTokenizer:
    """A stand-in for a BERT tokenizer: a text is its word-piece ids written out, "7 8 9"."""

    def num_special_tokens_to_add(self, pair=False):
        return 2

    def __call__(self, texts, add_special_tokens=True, **_):
        ids = [[CLS, *map(int, t.split()), SEP] for t in texts]
        return {
            "input_ids": ids,
            "special_tokens_mask": [[1] + [0] * (len(i) - 2) + [1] for i in ids],
        }


def _book_head_tail(pieces, max_length, head_tokens):
    text = " ".join(map(str, pieces))
    ids, _ = finetune.encode_head_tail(
        _PieceTokenizer(), [text], max_length, head_tokens
    )
    return ids[0]


def _head_tail(pieces, cls_id, sep_id, max_length, head_tokens):
    budget = max_length - 2  # [CLS] and [SEP] take two of the max_length ids
    if len(pieces) > budget:
        tail = budget - head_tokens
        pieces = pieces[:head_tokens] + (pieces[len(pieces) - tail :] if tail else [])
    return [cls_id, *pieces, sep_id]


def _no_special_budget(pieces, cls_id, sep_id, max_length, head_tokens):
    tail = max_length - head_tokens
    return [cls_id, *finetune.cut_head_tail(pieces, head_tokens, tail), sep_id]


def _negative_tail(pieces, cls_id, sep_id, max_length, head_tokens):
    budget = max_length - 2
    if len(pieces) > budget:
        pieces = pieces[:head_tokens] + pieces[-(budget - head_tokens) :]
    return [cls_id, *pieces, sep_id]


def _always_cut(pieces, cls_id, sep_id, max_length, head_tokens):
    tail = max_length - 2 - head_tokens
    return [cls_id, *pieces[:head_tokens], *pieces[-tail:], sep_id]


@exercise(
    "05d.head_tail",
    "Keep the start and the end of a long review",
    difficulty=2,
    reference=_head_tail,
    wrong=[
        (_no_special_budget, "[CLS] and [SEP] count"),
        (_negative_tail, "pieces[-0:]"),
        (_always_cut, "fits must stay unchanged"),
        (lambda p, c, s, m, h: _head_tail(p, c, s, m + 2, h)[1:-1], "[CLS] first"),
    ],
)
def head_tail(answer):
    """``answer(pieces, cls_id, sep_id, max_length, head_tokens)`` -> a list of ids: ``[CLS]``,
    the word pieces (cut to their first ``head_tokens`` and last ``max_length - 2 -
    head_tokens`` when they do not fit), ``[SEP]``; compared with
    :func:`utils.finetune.encode_head_tail`."""
    cases = [  # (n_pieces, max_length, head_tokens)
        (40, 12, 3),
        (10, 12, 3),  # exactly fits: 10 pieces + 2 special ids = 12
        (5, 12, 3),  # short
        (30, 10, 8),  # head only: tail = 0
        (0, 8, 2),  # an empty text
    ]
    for n, max_length, head in cases:
        pieces = list(range(1000, 1000 + n))
        got = answer(list(pieces), CLS, SEP, max_length, head)
        got = got.tolist() if torch.is_tensor(got) else list(got)
        want = _book_head_tail(pieces, max_length, head)
        if got == want:
            continue
        what = f"{n} pieces, max_length={max_length}, head_tokens={head}"
        tail = max_length - 2 - head
        if not got or got[0] != CLS or got[-1] != SEP:
            yield (
                f"{what}: a BERT input starts with [CLS] first (id {CLS}) and ends with "
                f"[SEP] (id {SEP}); yours starts {got[:2]} and ends {got[-2:]}"
            )
        elif tail == 0 and len(got) > 2 + head:
            yield (
                f"{what}: with no room for a tail you keep {len(got) - 2} pieces: "
                "pieces[-0:] is the whole list, not an empty one; take the tail as "
                "pieces[len(pieces) - tail:] or skip it when tail == 0"
            )
        elif len(got) > max_length:
            yield (
                f"{what}: {len(got)} ids, more than max_length: the [CLS] and [SEP] count "
                f"against max_length, leaving {max_length - 2} ids for the word pieces"
            )
        elif n <= max_length - 2:
            yield (
                f"{what}: a review that fits must stay unchanged; you return "
                f"{len(got) - 2} pieces instead of its {n}"
            )
        else:
            yield f"{what}: you give {got}, expected {want}"
        return


# --- 05d.sentence_embedding --------------------------------------------------------------


def _sentence_embedding(hidden, attention_mask):
    weight = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, L, 1]
    mean = (hidden * weight).sum(dim=1) / weight.sum(dim=1)  # [B, d]
    return mean / mean.norm(dim=-1, keepdim=True)


@exercise(
    "05d.sentence_embedding",
    "A sentence embedding: masked mean, then unit length",
    difficulty=2,
    reference=_sentence_embedding,
    wrong=[
        (lambda h, m: mean_pool(h, m), "unit length"),
        (lambda h, m: F.normalize(h.mean(1), dim=-1), "padding"),
        (
            lambda h, m: F.normalize(mean_pool(F.normalize(h, dim=-1), m), dim=-1),
            "token vectors",
        ),
        (lambda h, m: F.normalize(mean_pool(h, m), dim=0), "over the batch"),
    ],
)
def sentence_embedding(answer):
    """``answer(hidden [B, L, d], attention_mask [B, L] int64, 1 = real token)`` -> ``[B, d]``:
    the mean of the real tokens' hidden states, scaled to unit L2 norm (all-MiniLM-L6-v2's
    sentence embedding, eq. 5d-mean-pooling)."""
    g = torch.Generator().manual_seed(0)
    for B, L, d, lengths in (
        (3, 6, 4, (6, 2, 4)),
        (2, 5, 8, (5, 5)),
        (4, 7, 5, (1, 7, 3, 5)),
    ):
        hidden = torch.randn(B, L, d, generator=g, dtype=torch.float64) + 0.5
        mask = torch.zeros(B, L, dtype=torch.long)
        for b, n in enumerate(lengths):
            mask[b, :n] = 1
        got = _tensor(answer(hidden.clone(), mask.clone()), "the embeddings")
        if got.shape != (B, d):
            yield f"output shape {tuple(got.shape)}, expected (B, d) = {(B, d)}"
            return
        got = got.double()
        pooled = mean_pool(hidden, mask)
        want = F.normalize(pooled, dim=-1)
        if torch.allclose(got, want):
            continue
        norms = got.norm(dim=-1)
        if torch.allclose(got, pooled):
            yield (
                f"your vectors have norms {[round(x, 3) for x in norms.tolist()]}: that is "
                "the masked mean, now divide it by its L2 norm so each has unit length"
            )
        elif torch.allclose(got, F.normalize(hidden.mean(1), dim=-1)):
            yield (
                "a plain mean over all L positions counts the padding: a short review's "
                "vector then depends on the length of its batch-mates; weight each "
                "position by the attention mask"
            )
        elif torch.allclose(got, F.normalize(pooled, dim=0)):
            yield (
                "you normalised over the batch (dim 0): each *sentence* vector must have "
                "unit length, so take the norm over dim -1"
            )
        elif torch.allclose(
            got, F.normalize(mean_pool(F.normalize(hidden, dim=-1), mask), dim=-1)
        ):
            yield (
                "you scaled the token vectors to unit length before the mean: that changes "
                "how much each token weighs; average the raw hidden states, then normalise"
            )
        else:
            err = (got - want).abs().max().item()
            yield f"your embeddings differ from the normalised masked mean by up to {err:.3g}"
        return


# --- 05d.accuracy_margin -----------------------------------------------------------------


def _margin(p, n):
    return 1.96 * math.sqrt(p * (1 - p) / n)


def _coverage(p, n, half_width, repeats=4000, seed=0):
    """Share of simulated test sets of n reviews whose accuracy lies within half_width of p."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.full((repeats,), float(n), dtype=torch.float64)
    correct = torch.binomial(counts, torch.full_like(counts, p), generator=g)
    return ((correct / n - p).abs() <= half_width + 1e-12).double().mean().item()


@exercise(
    "05d.accuracy_margin",
    "The 95% margin of a test accuracy, checked by simulation",
    difficulty=1,
    reference=_margin,
    wrong=[
        (lambda p, n: math.sqrt(p * (1 - p) / n), "one standard error"),
        (lambda p, n: 1.96 * p * (1 - p) / n, "square root"),
        (lambda p, n: 196 * math.sqrt(p * (1 - p) / n), "percentage points"),
        (lambda p, n: 1.96 * math.sqrt(p * (1 - p)) / n, "inside the square root"),
    ],
)
def accuracy_margin(answer):
    """``answer(p, n)`` -> the half-width (a fraction, not percentage points) of the 95%
    interval of an accuracy ``p`` measured on ``n`` test reviews."""
    for p, n in ((0.85, 1000), (0.5, 200), (0.93, 25_000), (0.7, 50)):
        got = float(answer(p, n))
        want = _margin(p, n)
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        covered = _coverage(p, n, got)
        what = (
            f"p={p}, n={n:,}: your margin {got:.4g} covers the true accuracy in "
            f"{covered:.0%} of 4,000 simulated test sets, not ~95%"
        )
        se = math.sqrt(p * (1 - p) / n)
        if math.isclose(got, se, rel_tol=1e-6):
            yield f"{what}: that is one standard error; a 95% interval is 1.96 of them"
        elif math.isclose(got, 1.96 * se * se, rel_tol=1e-6):
            yield f"{what}: the standard error is the square root of p(1-p)/n"
        elif math.isclose(got, 100 * want, rel_tol=1e-6):
            yield (
                f"{what}: {got:.4g} is in percentage points; give the margin as a fraction "
                f"({want:.4g}) like p itself"
            )
        elif math.isclose(got, 1.96 * math.sqrt(p * (1 - p)) / n, rel_tol=1e-6):
            yield (
                f"{what}: n goes inside the square root: the standard error shrinks as "
                "1/√n, not 1/n"
            )
        else:
            yield f"{what}; the 95% margin is {want:.4g}"
        return


# --- 05d.when_pretraining_pays (open-ended) -----------------------------------------------

open_exercise(
    "05d.when_pretraining_pays",
    "When does fine-tuning beat training from scratch?",
    difficulty=3,
    rubric=[
        "Pretrains on text without its labels, then trains the same architecture with a new "
        "head twice per label count, from the pretrained weights and from random ones, with "
        "the same steps, learning rate and labelled examples.",
        "Uses at least four label counts spanning a factor of 30 or more, and scores every "
        "model on one test set of several hundred examples that none of them trained on.",
        "Reports the test accuracy of both starts at every label count, and names the label "
        "counts where the pretrained start wins clearly and where the two meet.",
        "Explains why: pretraining learned from unlabelled text which words behave alike, so "
        "a few labels only have to name the groups, while with enough labels a model from "
        "scratch learns them from the labels; and names what would shrink the benefit "
        "(pretraining text unlike the task's, too few labels even to fit the head).",
    ],
    answer="""
        Pretrain a small language model on the reviews without their labels, then fine-tune
        it and a randomly initialised twin, each with a new classification head, on growing
        numbers of labelled reviews, and score both on the same test reviews. With a few
        dozen labels the pretrained start is clearly ahead: predicting the next word taught
        it which adjectives go together, so the labels only have to say which group is the
        positive one. With hundreds of labels the model from scratch learns the same groups
        from the labels and catches up on this easy task. The benefit shrinks when the
        pretraining text is unlike the task's, and vanishes when there are too few labels to
        fit even the head.
    """,
)
