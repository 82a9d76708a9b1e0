"""The graders of chapter 1's exercises (n-gram models, perplexity, the compute of training);
see :mod:`utils.grader`."""

from __future__ import annotations

import functools
import math
from collections import Counter

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from utils import compute
from utils.grader import exercise, open_exercise
from utils.models import TransformerLM
from utils.ngram import BOS, EOS, NGramLM


def _number(value, what: str) -> float:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise TypeError(
                f"{what} should be one number, got a tensor of shape "
                f"{tuple(value.shape)}"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} should be a number, got {type(value).__name__}")
    return float(value)


def _close(a: float, b: float, rel: float = 1e-6) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-300)


# ------------------------------------------------------------------------------ perplexity


def _perplexity(probs: torch.Tensor) -> float:
    probs = torch.as_tensor(probs, dtype=torch.float64)
    if (probs == 0).any():
        return math.inf
    return math.exp(-probs.log().mean().item())


# A toy corpus whose n-gram probabilities the perplexity exercise is also checked on.
_TOY = (
    [["san", "francisco", "is", "foggy"]] * 4
    + [["i", "visited", "san", "francisco"]] * 2
    + [
        ["he", "lost", "his", "glasses"],
        ["new", "glasses"],
        ["my", "reading", "glasses"],
    ]
)
_TOY_TEST = [["my", "glasses", "is", "foggy"], ["i", "lost", "san", "francisco"]]


def _event_probs(lm: NGramLM, sentences) -> torch.Tensor:
    """P(w_t | context) of every prediction in ``sentences`` (words and ``</s>``)."""
    probs = []
    for sentence in sentences:
        words = list(sentence) + [EOS]
        for t, word in enumerate(words):
            probs.append(lm.prob(word, list(sentence[:t])))
    return torch.tensor(probs, dtype=torch.float64)


@exercise(
    "01.perplexity",
    "Perplexity from the probabilities of the tokens",
    difficulty=1,
    reference=_perplexity,
    wrong=[
        (lambda p: math.exp(-torch.as_tensor(p).log().sum().item()), "sums"),
        (lambda p: (1 / torch.as_tensor(p)).mean().item(), "geometric mean"),
        (lambda p: math.exp(torch.as_tensor(p).log().mean().item()), "sign"),
        (lambda p: 1 / torch.as_tensor(p).mean().item(), "mean probability"),
    ],
)
def perplexity(answer):
    """``answer(probs)`` -> float; ``probs`` a float64 tensor ``[N]`` of ``P(w_t | w_<t)``,
    one entry per predicted token. Perplexity ``exp(-mean(log probs))``."""
    g = torch.Generator().manual_seed(0)
    lm = NGramLM(2, smoothing="kneser-ney").fit(_TOY)
    cases = [
        ("a uniform guess over 8 tokens", torch.full((5,), 1 / 8, dtype=torch.float64)),
        ("random probabilities", torch.rand(12, generator=g, dtype=torch.float64)),
        ("one token", torch.tensor([0.25], dtype=torch.float64)),
        ("a Kneser-Ney bigram model's test tokens", _event_probs(lm, _TOY_TEST)),
    ]
    for what, probs in cases:
        got = _number(answer(probs.clone()), "your perplexity")
        want = _perplexity(probs)
        if what.startswith("a Kneser"):
            assert _close(want, lm.perplexity(_TOY_TEST))  # the book's NGramLM agrees
        if _close(got, want):
            continue
        logs = probs.log()
        if _close(got, math.exp(-logs.sum().item())):
            yield (
                f"on {what} you got {got:.4g}: exp of the *sum* of -log p; perplexity "
                "averages over the N tokens first (the 1/N), so sums grow with the length"
            )
        elif _close(got, (1 / probs).mean().item()):
            yield (
                f"on {what} you got {got:.4g}, the arithmetic mean of 1/p; perplexity is "
                "their geometric mean, exp(mean(-log p))"
            )
        elif _close(got, 1 / _perplexity(probs)):
            yield (
                f"on {what} you got {got:.4g} = 1/perplexity: check the sign, it is "
                "exp(-mean(log p)) and it is at least 1"
            )
        elif _close(got, 1 / probs.mean().item()):
            yield (
                f"on {what} you got {got:.4g}, one over the mean probability; perplexity "
                "averages log-probabilities, not probabilities"
            )
        elif _close(got, 2 ** (-logs.mean().item())):
            yield (
                f"on {what} you got {got:.4g}: 2 to the power of a mean natural log; use "
                "the same base for both (exp with ln, or 2 with log2)"
            )
        else:
            yield f"on {what} you got {got:.6g}, the perplexity is {want:.6g}"
        return
    with_zero = torch.tensor([0.5, 0.0, 0.25], dtype=torch.float64)
    try:
        got = _number(answer(with_zero.clone()), "your perplexity")
    except (ValueError, ZeroDivisionError, OverflowError) as error:
        yield (
            f"a token with probability 0 raised {type(error).__name__}; its perplexity is "
            "infinite (return math.inf): one impossible token is an infinitely bad model"
        )
        return
    if got != math.inf:
        yield (
            f"with one token of probability 0 you got {got}; the perplexity must be "
            "infinite (math.inf): -log 0 = +inf"
        )


# ------------------------------------------------------------------------------ MLE bigram


def _mle_bigram(sentences):
    pairs, contexts = Counter(), Counter()
    for sentence in sentences:
        words = [BOS, *sentence, EOS]
        for prev, word in zip(words, words[1:], strict=False):
            pairs[prev, word] += 1
            contexts[prev] += 1
    return {(h, w): c / contexts[h] for (h, w), c in pairs.items()}


def _no_eos(sentences):
    pairs, contexts = Counter(), Counter()
    for sentence in sentences:
        words = [BOS, *sentence]
        for prev, word in zip(words, words[1:], strict=False):
            pairs[prev, word] += 1
            contexts[prev] += 1
    return {(h, w): c / contexts[h] for (h, w), c in pairs.items()}


def _no_bos(sentences):
    return {k: v for k, v in _mle_bigram(sentences).items() if k[0] != BOS}


def _joint(sentences):
    counts = Counter()
    for sentence in sentences:
        words = [BOS, *sentence, EOS]
        counts.update(zip(words, words[1:], strict=False))
    total = sum(counts.values())
    return {k: c / total for k, c in counts.items()}


_BIGRAM_CORPORA = [
    [["the", "cat", "sat"], ["the", "dog", "sat"], ["a", "cat", "ran"]],
    _TOY,
    [["to", "be", "or", "not", "to", "be"], ["be", "quick"]],
]


@exercise(
    "01.mle_bigram",
    "A maximum-likelihood bigram model with <s> and </s>",
    difficulty=2,
    reference=_mle_bigram,
    wrong=[
        (_no_eos, "</s>"),
        (_no_bos, "<s>"),
        (_joint, "divide by c(h)"),
    ],
)
def mle_bigram(answer):
    """``answer(sentences)`` -> ``{(prev, word): P_MLE(word | prev)}`` for every bigram seen;
    ``sentences`` a list of lists of words, each padded as ``<s> w_1 ... w_T </s>``."""
    for sentences in _BIGRAM_CORPORA:
        got = answer([list(s) for s in sentences])
        if not isinstance(got, dict):
            yield f"return a dict {{(prev, word): probability}}, got {type(got).__name__}"
            return
        lm = NGramLM(2, smoothing="mle").fit(sentences)
        want = _mle_bigram(sentences)
        for key in want:  # the book's NGramLM gives the same probabilities
            assert _close(want[key], lm.prob(key[1], [key[0]]), 1e-12)
        if not any(w == EOS for _, w in got):
            yield (
                "no bigram of yours ends in </s>: pad every sentence with </s> on the right, "
                "so that the model also learns where sentences end (and every P(· | h) sums "
                "to 1 over all finite sentences)"
            )
            return
        if not any(h == BOS for h, _ in got):
            yield (
                "no bigram of yours starts at <s>: pad every sentence with <s> on the left, "
                "so that the first word gets its own P(w_1 | <s>), learnt from the data"
            )
            return
        totals = Counter()
        for (h, _), p in got.items():
            totals[h] += float(p)
        bad = [h for h, t in totals.items() if abs(t - 1) > 1e-9]
        if bad:
            yield (
                f"P(· | {bad[0]!r}) sums to {totals[bad[0]]:.4g} over the next words, not 1: "
                "divide by c(h), the number of bigrams that start with h, not by the total "
                "number of bigrams"
            )
            return
        missing = [k for k in want if k not in got]
        if missing:
            yield f"bigram {missing[0]} occurs in the corpus but is not in your dict"
            return
        for key, p in want.items():
            if not _close(float(got[key]), p, 1e-9):
                yield (
                    f"P({key[1]!r} | {key[0]!r}) = {float(got[key]):.4g}, the MLE "
                    f"c(h w)/c(h) is {p:.4g}"
                )
                return


# ------------------------------------------------------------------------------ days


def _training_days(n_params, n_tokens, peak_flops_per_s, mfu, n_gpus):
    return 6 * n_params * n_tokens / (peak_flops_per_s * mfu * n_gpus) / 86400


_RUNS = [  # N, D, peak FLOP/s, MFU, accelerators
    (405e9, 15.6e12, 989e12, 0.40, 16_384),  # Llama 3 405B on H100s (section 1.6)
    (65.2e9, 1.4e12, 312e12, 0.50, 2048),  # LLaMA-65B on A100s
    (124e6, 2.48e9, 5e10, 1.0, 1),  # GPT-2 small-sized on a CPU at a measured rate
]


@exercise(
    "01.training_days",
    "From 6ND to days of training",
    difficulty=1,
    reference=_training_days,
    wrong=[
        (lambda n, d, p, u, g: 2 * n * d / (p * u * g) / 86400, "forward pass only"),
        (lambda n, d, p, u, g: 6 * n * d / (p * u * g) / 3600, "hours"),
        (lambda n, d, p, u, g: 6 * n * d / (p * g) / 86400, "utilisation"),
    ],
)
def training_days(answer):
    """``answer(n_params, n_tokens, peak_flops_per_s, mfu, n_gpus)`` -> wall-clock days."""
    for n, d, peak, mfu, gpus in _RUNS:
        want = compute.wall_clock_days(compute.training_flops(n, d), peak, mfu, gpus)
        got = _number(answer(n, d, peak, mfu, gpus), "your number of days")
        if _close(got, want, 1e-6):
            continue
        ratio = got / want
        what = f"N = {compute.format_count(n)}, D = {compute.format_count(d)}"
        known = {
            1 / 3: "counts 2ND, the forward pass only; training also runs the backward "
            "pass, twice the forward work: C = 6ND",
            24.0: "is in hours: divide by 3600 · 24 = 86,400 seconds per day",
            86400.0: "is in seconds: divide by 86,400 seconds per day",
            1440.0: "is in minutes: divide by 1,440 minutes per day",
            float(
                gpus
            ): "ignores the number of accelerators: the work is split over them",
        }
        if mfu != 1:
            known[mfu] = (
                "ignores the utilisation: a run achieves only MFU x peak, so divide by it"
            )
            known[mfu * mfu] = "multiplies by the utilisation where it should divide"
        for factor, message in known.items():
            if _close(ratio, factor, 1e-6):
                yield f"{what}: your {got:.4g} {message}"
                return
        yield f"{what}: you got {got:.4g} days, 6ND / (peak x MFU x GPUs) gives {want:.4g}"
        return


# ------------------------------------------------------------------------------ step FLOPs

_SHAPES = [
    (50, 16, 2, 8, 2),
    (97, 32, 3, 12, 3),
    (64, 24, 1, 5, 1),
]  # V, d, layers, L, B


@functools.cache
def _counted_flops(vocab, d_model, n_layers, context, batch) -> int:
    """FLOPs of one forward + backward step with explicit attention, per FlopCounterMode."""
    with torch.random.fork_rng(devices=[]):  # leave the reader's random state alone
        model = TransformerLM(vocab, d_model, 1, n_layers, max_len=context)
    tokens = torch.randint(
        0, vocab, (batch, context + 1), generator=torch.Generator().manual_seed(0)
    )
    counter = FlopCounterMode(display=False)
    with counter:
        logits, _ = model(tokens[:, :-1], return_attention=True)
        F.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1)).backward()
    return counter.get_total_flops()


def _step_flops(vocab, d_model, n_layers, context, batch):
    n_matmul = n_layers * 12 * d_model**2 + vocab * d_model  # blocks + the (tied) head
    tokens = batch * context
    return 6 * n_matmul * tokens + 12 * n_layers * context * d_model * tokens


def _step_variants(v, d, n_layers, L, B):
    tokens = B * L
    blocks, head = n_layers * 12 * d * d, v * d
    attention = 12 * n_layers * L * d * tokens
    return {
        "no attention": 6 * (blocks + head) * tokens,
        "kaplan half": 6 * (blocks + head) * tokens + attention / 2,
        "no head": 6 * blocks * tokens + attention,
        "forward only": (6 * (blocks + head) * tokens + attention) / 3,
    }


@exercise(
    "01.step_flops",
    "Predict what a FLOP counter measures on a training step",
    difficulty=2,
    reference=_step_flops,
    wrong=[
        (lambda *a: _step_variants(*a)["no attention"], "attention scores"),
        (lambda *a: _step_variants(*a)["kaplan half"], "causal half"),
        (lambda *a: _step_variants(*a)["no head"], "output layer"),
    ],
)
def step_flops(answer):
    """``answer(vocab_size, d_model, n_layers, context, batch)`` -> FLOPs that
    ``FlopCounterMode`` counts for one forward + backward step of
    ``TransformerLM(vocab_size, d_model, n_heads, n_layers, max_len=context)`` (d_ff = 4d,
    tied output layer) on ``[batch, context]`` tokens, with explicit attention."""
    for shape in _SHAPES:
        want = _counted_flops(*shape)
        assert want == _step_flops(*shape)  # the derivation matches the measurement
        got = _number(answer(*shape), "your FLOP count")
        if _close(got, want, 1e-9):
            continue
        v, d, n_layers, L, B = shape
        what = f"V={v}, d={d}, {n_layers} layer(s), L={L}, B={B}"
        variants = _step_variants(*shape)
        n_all = sum(
            p.numel() for p in TransformerLM(v, d, 1, n_layers, max_len=L).parameters()
        )
        messages = {
            "no attention": "leaves out the attention scores: q·kᵀ and weights·v add "
            "12 · n_layers · L · d FLOPs per token (2 matmuls forward, 4 backward)",
            "kaplan half": "counts only the causal half of the attention scores (Kaplan's "
            "6 · n_layers · L · d); explicit attention computes the whole L x L matrix and "
            "then masks it",
            "no head": "leaves out the output layer: the tied embedding is used once as a "
            "V x d matrix, 6·V·d FLOPs per token",
            "forward only": "is the forward pass only; the backward pass costs twice as much",
        }
        for key, message in messages.items():
            if _close(got, variants[key], 1e-9):
                yield f"{what}: your {got:,.0f} {message}"
                return
        if _close(got, 6 * n_all * B * L + 12 * n_layers * L * d * B * L, 1e-9):
            yield (
                f"{what}: your {got:,.0f} uses every parameter as N; biases, LayerNorm "
                "gains and the position table do no matrix multiply: count only the weight "
                "matrices of the linear layers (and the tied output layer)"
            )
        else:
            yield f"{what}: you predicted {got:,.0f} FLOPs, the counter measures {want:,}"
        return


# --- 01.order_vs_data (open-ended) --------------------------------------------------------

open_exercise(
    "01.order_vs_data",
    "How much text does a higher n-gram order need?",
    difficulty=2,
    rubric=[
        "Fits Kneser-Ney models of at least three orders on at least three training sizes "
        "that span a factor of 10 or more, and scores every model on the same held-out "
        "sentences.",
        "Reports the held-out perplexity of every (order, size) pair and names the best "
        "order at each size.",
        "Reports for the same pairs the share of held-out n-grams never seen in training "
        "(NGramLM.unseen_rate), and uses it to explain why a high order loses on little text.",
        "Explains why each step up in order needs much more text than the one before, and "
        "why each extra order gains less (the text's dependencies are mostly short; backing "
        "off to shorter contexts keeps a too-high order from costing much).",
    ],
    answer="""
        Sweep order x training size with NGramLM(n) (interpolated Kneser-Ney) on one held-out
        set. With little text the best order is low: most held-out contexts of a long n-gram
        were never seen, so the model backs off to shorter ones and the longer context buys
        nothing. As the text grows, the unseen share of every order falls and the best order
        rises, each step needing far more text than the last, since an order-n model has many
        more contexts to fill than an order n-1 one. The gain of each step shrinks once the
        order reaches the length of the dependencies the text has.
    """,
)
