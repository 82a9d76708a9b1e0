"""The graders of chapter 5g's exercises (supervised fine-tuning with LoRA); see :mod:`utils.grader`."""

from __future__ import annotations

import math

import torch

from utils.evaluation import bootstrap_ci
from utils.grader import exercise
from utils.sft import assistant_char_spans

_START, _END = "<|im_start|>", "<|im_end|>"


# --- 05g.loss_mask ---------------------------------------------------------------------------


def _pieces(text: str) -> list[str]:
    """``text`` cut into tokens: the two ChatML markers whole, every other character alone."""
    out, at = [], 0
    while at < len(text):
        marker = next((m for m in (_START, _END) if text.startswith(m, at)), None)
        out.append(marker or text[at])
        at += len(marker or text[at])
    return out


def _mask(tokens: list[str]) -> list[bool]:
    """The reference: True for a token inside an assistant reply (its ``<|im_end|>`` too)."""
    spans = assistant_char_spans("".join(tokens))
    out, at = [], 0
    for token in tokens:
        out.append(any(a <= at and at + len(token) <= b for a, b in spans))
        at += len(token)
    return out


def _chat(*turns: tuple[str, str]) -> list[str]:
    return _pieces("".join(f"{_START}{role}\n{text}{_END}\n" for role, text in turns))


_CHATS = [
    _chat(("user", "2+2?"), ("assistant", "4")),
    _chat(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")),
    _chat(
        ("user", "1+1?"), ("assistant", "2"), ("user", "And 2+2?"), ("assistant", "4")
    ),
    _chat(("user", "Say assistant"), ("assistant", "assistant")),
]


def _with_header(tokens):
    mask, out, inside = _mask(tokens), [], False
    text = "".join(tokens)
    header_ends = {
        i + len(f"{_START}assistant\n")
        for i in range(len(text))
        if text.startswith(f"{_START}assistant\n", i)
    }
    at = 0
    for token, m in zip(tokens, mask, strict=True):
        if token == _START and text.startswith(f"{_START}assistant\n", at):
            inside = True
        if at in header_ends:
            inside = False
        out.append(m or inside)
        at += len(token)
    return out


def _without_end(tokens):
    return [m and t != _END for t, m in zip(tokens, _mask(tokens), strict=True)]


def _everything_but_system(tokens):
    out, role, at, text = [], None, 0, "".join(tokens)
    for token in tokens:
        if token == _START:
            role = text[at + len(_START) :].split("\n", 1)[0]
        out.append(role != "system")
        at += len(token)
    return out


@exercise(
    "05g.loss_mask",
    "Which tokens does supervised fine-tuning train on?",
    difficulty=1,
    reference=_mask,
    wrong=[
        (lambda tokens: [True] * len(tokens), "every token"),
        (_without_end, "<|im_end|>"),
        (_with_header, "role header"),
        (_everything_but_system, "user"),
    ],
)
def loss_mask(answer):
    """``answer(tokens) -> list of bools``: which tokens of a ChatML conversation the loss
    trains on. ``tokens`` are strings; ``<|im_start|>`` and ``<|im_end|>`` are single tokens."""
    for tokens in _CHATS:
        got = [bool(x) for x in answer(list(tokens))]
        want = _mask(tokens)
        if len(got) != len(tokens):
            yield f"you returned {len(got)} flags for {len(tokens)} tokens: one per token"
            return
        if got == want:
            continue
        wrong = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
        i = wrong[0]
        token, before, text = tokens[i], "".join(tokens[:i]), "".join(tokens)
        start = text.rfind(
            _START, 0, len(before) + len(token)
        )  # the turn of this token
        role = text[start + len(_START) :].split("\n", 1)[0] if start >= 0 else "?"
        if all(got):
            yield "you train on every token: the system and user turns must be ignored"
        elif token == _END and want[i]:
            yield (
                "the <|im_end|> that closes a reply is not trained in your mask: then the "
                "model never learns to stop"
            )
        elif got[i] and role == "assistant" and before.endswith(_END):
            yield (
                f"token {i} ({token!r}) follows a reply's <|im_end|>: the template writes that "
                "newline, the model does not"
            )
        elif got[i] and role == "assistant":
            yield (
                f"token {i} ({token!r}) is part of the role header <|im_start|>assistant\\n: "
                "the prompt always writes it, so it is not trained"
            )
        elif got[i]:
            yield (
                f"token {i} ({token!r}) is in a {role} turn: only the assistant's replies "
                "are trained"
            )
        else:
            yield f"token {i} ({token!r}) is in an assistant reply but your mask skips it"
        return


# --- 05g.lora_parameters ---------------------------------------------------------------------


def _lora_count(d_in, d_out, rank):
    return rank * (d_in + d_out)


@exercise(
    "05g.lora_parameters",
    "Count a LoRA adapter's trainable parameters",
    difficulty=1,
    reference=_lora_count,
    wrong=[
        (lambda d_in, d_out, rank: rank * d_in * d_out, "full matrices"),
        (lambda d_in, d_out, rank: rank * d_in, "only A"),
        (lambda d_in, d_out, rank: d_in * d_out + rank * (d_in + d_out), "frozen"),
        (lambda d_in, d_out, rank: 2 * rank * max(d_in, d_out), "both"),
    ],
)
def lora_parameters(answer):
    """``answer(d_in, d_out, rank)`` -> trainable parameters of one LoRA adapter on a
    ``d_out x d_in`` linear layer (``A (rank, d_in)``, ``B (d_out, rank)``)."""
    for d_in, d_out, rank in [
        (576, 576, 8),
        (576, 192, 8),
        (1536, 576, 16),
        (64, 48, 1),
    ]:
        got, want = answer(d_in, d_out, rank), _lora_count(d_in, d_out, rank)
        if got == want:
            continue
        where = f"d_in={d_in}, d_out={d_out}, rank={rank}"
        if got == rank * d_in * d_out:
            yield f"{where}: {got:,} is rank full matrices; A is rank x d_in and B is d_out x rank"
        elif got in (rank * d_in, rank * d_out):
            yield f"{where}: {got:,} counts only A or only B; both are trained"
        elif got == d_in * d_out + want:
            yield f"{where}: {got:,} includes the frozen W ({d_in * d_out:,}), which is not trained"
        elif got == 2 * rank * max(d_in, d_out):
            yield f"{where}: {got:,} gives both matrices the larger size; A has d_in columns, B d_out rows"
        else:
            yield f"{where}: you counted {got:,}, expected {want:,}"
        return


# --- 05g.merge ---------------------------------------------------------------------------------


def _merge(W, A, B, alpha, rank):
    return W + (alpha / rank) * B @ A


@exercise(
    "05g.merge",
    "Merge a LoRA adapter into its weight",
    difficulty=2,
    reference=_merge,
    wrong=[
        (lambda W, A, B, alpha, rank: W + B @ A, "alpha / rank"),
        (lambda W, A, B, alpha, rank: W + alpha * B @ A, "divide"),
        (lambda W, A, B, alpha, rank: W, "unchanged"),
    ],
)
def merge(answer):
    """``answer(W, A, B, alpha, rank)`` -> the merged ``(out, in)`` weight: the plain layer
    ``x @ W'.T`` must equal the adapter path ``x @ W.T + (alpha / rank) (x @ A.T) @ B.T``."""
    g = torch.Generator().manual_seed(0)
    for d_in, d_out, rank, alpha in [(6, 4, 2, 4.0), (8, 8, 1, 1.0), (5, 7, 3, 12.0)]:
        W = torch.randn(d_out, d_in, generator=g)
        A = torch.randn(rank, d_in, generator=g)
        B = torch.randn(d_out, rank, generator=g)
        x = torch.randn(3, d_in, generator=g)
        merged = answer(W.clone(), A.clone(), B.clone(), alpha, rank)
        if not isinstance(merged, torch.Tensor) or merged.shape != W.shape:
            shape = (
                tuple(merged.shape)
                if isinstance(merged, torch.Tensor)
                else type(merged)
            )
            yield (
                f"the merged weight must have W's shape {tuple(W.shape)}, got {shape}: "
                "B @ A is (out, in), A @ B is not"
            )
            return
        adapter = x @ W.T + (alpha / rank) * (x @ A.T) @ B.T
        if torch.allclose(x @ merged.T, adapter, atol=1e-5):
            continue
        delta = merged - W
        want = (alpha / rank) * B @ A
        if torch.allclose(delta, torch.zeros_like(delta)):
            yield "your merged weight is W unchanged: add the adapter's (alpha / rank) B A"
        elif torch.allclose(delta, B @ A, atol=1e-5):
            yield f"you added B @ A without its scale: multiply by alpha / rank = {alpha / rank:g}"
        elif torch.allclose(delta, alpha * B @ A, atol=1e-5):
            yield f"you multiplied by alpha = {alpha:g}; LoRA's scale is alpha / rank: divide by the rank too"
        else:
            ratio = float((delta * want).sum() / (want * want).sum())
            yield f"W' - W is not (alpha / rank) B A (its projection on it is {ratio:.3g} times that)"
        return


# --- 05g.bootstrap -----------------------------------------------------------------------------


def _bootstrap(values, n_resamples=10_000, seed=0):
    ci = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
    return ci.low, ci.high


def _quantiles_of_values(values, n_resamples=10_000, seed=0):
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.quantile(0.025)), float(t.quantile(0.975))


def _without_replacement(values, n_resamples=10_000, seed=0):
    mean = sum(values) / len(values)
    return mean, mean


@exercise(
    "05g.bootstrap",
    "A bootstrap confidence interval for exact match",
    difficulty=2,
    reference=_bootstrap,
    wrong=[
        (_quantiles_of_values, "resampled means"),
        (_without_replacement, "with replacement"),
    ],
)
def bootstrap(answer):
    """``answer(values, n_resamples, seed)`` -> ``(low, high)``: the 95 % percentile
    bootstrap interval of the mean of ``values`` (0/1 exact-match scores)."""
    g = torch.Generator().manual_seed(1)
    for n, p in [(100, 0.6), (40, 0.1), (400, 0.83), (25, 0.5)]:
        values = (torch.rand(n, generator=g) < p).int().tolist()
        low, high = (float(v) for v in answer(list(values), 10_000, 0))
        want_low, want_high = _bootstrap(values)
        mean = sum(values) / n
        se = math.sqrt(max(mean * (1 - mean), 1e-12) / n)
        # Resampling noise: the bounds of two runs with other seeds differ by ~0.1 se.
        # Another generator's bounds differ by resampling noise (~0.1 se) and, for 0/1
        # scores, by up to one step of the grid of possible means (1 / n).
        tol = max(0.3 * se, 1.01 / n)
        if abs(low - want_low) <= tol and abs(high - want_high) <= tol:
            continue
        where = f"{n} scores, mean {mean:.2f}"
        if low > high:
            yield f"{where}: low {low:.3f} is above high {high:.3f}"
        elif high - low < 1e-9:
            yield (
                f"{where}: your interval has no width: resample with replacement (drawing n "
                "of n without replacement gives the data back every time)"
            )
        elif high - low > 3 * (want_high - want_low):
            yield (
                f"{where}: [{low:.3f}, {high:.3f}] is as wide as the scores themselves: take "
                "the percentiles of the resampled means, not of the values"
            )
        elif high - low < 0.6 * (want_high - want_low):
            yield (
                f"{where}: [{low:.3f}, {high:.3f}] is too narrow; expected about "
                f"[{want_low:.3f}, {want_high:.3f}] (the 2.5th and 97.5th percentiles)"
            )
        else:
            yield (
                f"{where}: [{low:.3f}, {high:.3f}], expected about "
                f"[{want_low:.3f}, {want_high:.3f}]; is it centred on the sample mean?"
            )
        return
