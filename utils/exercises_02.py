"""The graders of chapter 2's exercises (tokens, BERT's masking, LayerNorm, parameter counts);
see :mod:`utils.grader`."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models
from torch import nn

from utils.grader import exercise, open_exercise
from utils.models import TransformerLM


def _tensor(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{what} should be a torch tensor, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------ BPE encoding


def _bpe_encode(word: str, merges) -> list[str]:
    symbols = list(word)
    for left, right in merges:  # replay the merges in the order they were learnt
        out, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and symbols[i] == left and symbols[i + 1] == right:
                out.append(left + right)
                i += 2
            else:
                out.append(symbols[i])
                i += 1
        symbols = out
    return symbols


def _first_only(word, merges):
    """Each merge applied to its first occurrence only."""
    symbols = list(word)
    for left, right in merges:
        for i in range(len(symbols) - 1):
            if symbols[i] == left and symbols[i + 1] == right:
                symbols[i : i + 2] = [left + right]
                break
    return symbols


def _longest_match(word, merges):
    """Greedy longest match from the left over the vocabulary (WordPiece-style)."""
    vocab = set(word) | {a + b for a, b in merges}
    out, i = [], 0
    while i < len(word):
        j = max(j for j in range(i + 1, len(word) + 1) if word[i:j] in vocab)
        out.append(word[i:j])
        i = j
    return out


def _right_to_left(word, merges):
    symbols = list(word)
    for left, right in merges:
        out, i = [], len(symbols) - 1
        while i >= 0:
            if i > 0 and symbols[i - 1] == left and symbols[i] == right:
                out.append(left + right)
                i -= 2
            else:
                out.append(symbols[i])
                i -= 1
        symbols = out[::-1]
    return symbols


# Sennrich et al.'s toy counts without </w> learn these merges (section 2.2's learn_bpe).
_MERGES_TOY = [
    ("e", "s"), ("es", "t"), ("l", "o"), ("lo", "w"), ("n", "e"), ("ne", "w"),
    ("new", "est"), ("low", "e"), ("w", "i"), ("wi", "d"),
]  # fmt: skip
_MERGES_ORDER = [("b", "c"), ("a", "b"), ("a", "a")]  # "abc" -> a bc, not ab c
_MERGES_REPEAT = [("a", "a"), ("aa", "aa"), ("a", "b")]
_BPE_CASES = [
    (_MERGES_TOY, ["lowest", "newer", "wider", "low", "widest", "slow"]),
    (_MERGES_ORDER, ["abc", "aabc", "cab"]),
    (_MERGES_REPEAT, ["aaa", "aaaaa", "abab", "aaaaaab"]),
]


def _library_tokens(word: str, merges) -> list[str]:
    """The same merges run by Hugging Face ``tokenizers`` (a BPE model, no pre-tokenizer)."""
    vocab = {}
    for symbol in sorted(set(word) | {c for pair in merges for s in pair for c in s}):
        vocab.setdefault(symbol, len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return Tokenizer(models.BPE(vocab=vocab, merges=list(merges))).encode(word).tokens


@exercise(
    "02.bpe_encode",
    "Encode a word with learnt BPE merges",
    difficulty=2,
    reference=_bpe_encode,
    wrong=[
        (_first_only, "every occurrence"),
        (_longest_match, "longest"),
        (_right_to_left, "left to right"),
    ],
)
def bpe_encode(answer):
    """``answer(word, merges)`` -> list of str pieces; ``merges`` a list of ``(left, right)``
    pairs in the order BPE training learnt them."""
    for merges, words in _BPE_CASES:
        for word in words:
            want = _library_tokens(word, merges)
            assert want == _bpe_encode(word, merges)  # the library agrees with the loop
            got = answer(word, list(merges))
            if not isinstance(got, (list, tuple)) or not all(
                isinstance(p, str) for p in got
            ):
                yield f"return a list of strings (the pieces), got {got!r}"
                return
            got = list(got)
            if got == want:
                continue
            head = f"{word!r} with merges {merges}: you got {got}, expected {want}"
            if "".join(got) != word:
                yield f"{head}; your pieces do not spell the word again"
            elif got == _first_only(word, merges):
                yield (
                    f"{head}. Apply each merge to every occurrence of the pair in the "
                    "word, not only the first"
                )
            elif got == _longest_match(word, merges):
                yield (
                    f"{head}. That is a greedy longest match over the vocabulary "
                    "(WordPiece-style); BPE replays the merges in the order they were "
                    "learnt, whatever piece is longest"
                )
            elif got == _right_to_left(word, merges):
                yield (
                    f"{head}. Overlapping pairs are merged from left to right: 'aaa' with "
                    "the merge (a, a) is 'aa a'"
                )
            elif got == _bpe_encode(word, merges[::-1]):
                yield f"{head}. Apply the merges in the order they were learnt (first first)"
            else:
                yield head
            return


# ------------------------------------------------------------------------------ BERT masking


def _bert_masking(ids, special, mask_id, vocab_size, generator):
    selected = (torch.rand(ids.shape, generator=generator) < 0.15) & ~special
    r = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    inputs = torch.where(selected & (r < 0.8), mask_id, ids)
    inputs = torch.where(selected & (r >= 0.8) & (r < 0.9), random_ids, inputs)
    labels = torch.where(selected, ids, -100)
    return inputs, labels


def _all_masked(ids, special, mask_id, vocab_size, generator):
    selected = (torch.rand(ids.shape, generator=generator) < 0.15) & ~special
    return torch.where(selected, mask_id, ids), torch.where(selected, ids, -100)


def _labels_everywhere(ids, special, mask_id, vocab_size, generator):
    inputs, _ = _bert_masking(ids, special, mask_id, vocab_size, generator)
    return inputs, ids.clone()


def _specials_too(ids, special, mask_id, vocab_size, generator):
    return _bert_masking(ids, torch.zeros_like(special), mask_id, vocab_size, generator)


@exercise(
    "02.bert_masking",
    "BERT's masking recipe: 15%, then 80/10/10",
    difficulty=2,
    reference=_bert_masking,
    wrong=[
        (_all_masked, "80%"),
        (_labels_everywhere, "-100"),
        (_specials_too, "special"),
    ],
)
def bert_masking(answer):
    """``answer(ids, special, mask_id, vocab_size, generator)`` -> ``(inputs, labels)``;
    ``ids`` and ``special`` ``[B, L]`` (long, bool: True = never selected), the outputs
    ``[B, L]`` long. Checked on ~10⁶ positions: the shares of each action, the labels."""
    B, L, V, mask_id = 1000, 1000, 1000, 1000  # [MASK] = V: no random token equals it
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(V, (B, L), generator=g)
    special = torch.zeros(B, L, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True  # [CLS] and [SEP]
    special[:, -60:] = True  # padding at the end of every row
    out = answer(
        ids.clone(), special.clone(), mask_id, V, torch.Generator().manual_seed(1)
    )
    if not isinstance(out, tuple) or len(out) != 2:
        yield "return a pair (inputs, labels)"
        return
    inputs, labels = (
        _tensor(t, n) for t, n in zip(out, ("inputs", "labels"), strict=True)
    )
    for name, t in (("inputs", inputs), ("labels", labels)):
        if t.shape != ids.shape:
            yield f"{name} has shape {tuple(t.shape)}, expected {tuple(ids.shape)} like ids"
            return
    selected = labels != -100
    if not (selected.any() and (~selected).any()):
        yield (
            "your labels are never -100 (or always): they must be -100, the ignore index "
            "of F.cross_entropy, everywhere except at the selected positions"
        )
        return
    if (selected & special).any():
        yield (
            "special positions ([CLS], [SEP], padding) were selected: never select a "
            "position where special is True"
        )
        return
    if not torch.equal(labels[selected], ids[selected]):
        yield "at a selected position the label must be the original token id, ids[i]"
        return
    if not torch.equal(inputs[~selected], ids[~selected]):
        yield "a position that was not selected changed in inputs; leave it as it was"
        return
    share = selected.sum().item() / (~special).sum().item()
    if abs(share - 0.15) > 0.005:
        yield (
            f"{share:.1%} of the ordinary positions were selected; BERT selects 15% of them "
            "(special positions do not count)"
        )
        return
    n = selected.sum().item()
    masked = (inputs[selected] == mask_id).sum().item() / n
    kept = (inputs[selected] == ids[selected]).sum().item() / n
    replaced = 1 - masked - kept
    if masked > 0.95:
        yield (
            f"{masked:.0%} of the selected positions became [MASK]; BERT replaces 80% by "
            "[MASK], 10% by a random token and leaves 10% unchanged"
        )
    elif (
        abs(masked - 0.8) > 0.01 or abs(kept - 0.1) > 0.01 or abs(replaced - 0.1) > 0.01
    ):
        yield (
            f"of the selected positions {masked:.1%} became [MASK], {replaced:.1%} another "
            f"token and {kept:.1%} stayed; expected 80%, 10%, 10% (a random token may "
            "happen to equal the original: ~0.01% here)"
        )


# ------------------------------------------------------------------------------ LayerNorm


def _layer_norm(x, gamma, beta, eps=1e-5, unbiased=False, eps_inside=True, dim=-1):
    mu = x.mean(dim=dim, keepdim=True)
    var = x.var(dim=dim, keepdim=True, unbiased=unbiased)
    scale = (var + eps).sqrt() if eps_inside else var.sqrt() + eps
    return gamma * (x - mu) / scale + beta


@exercise(
    "02.layer_norm",
    "Layer normalisation from its formula",
    difficulty=1,
    reference=lambda x, gamma, beta, eps=1e-5: _layer_norm(x, gamma, beta, eps),
    wrong=[
        (lambda x, g, b, eps=1e-5: _layer_norm(x, g, b, eps, unbiased=True), "d - 1"),
        (lambda x, g, b, eps=1e-5: x / x.shape[-1] ** 0.5, "normalises nothing"),
        (lambda x, g, b, eps=1e-5: _layer_norm(x, g, b, eps, dim=-2), "features"),
        (lambda x, g, b, eps=1e-5: _layer_norm(x, 1.0, 0.0, eps), "gain"),
    ],
)
def layer_norm(answer):
    """``answer(x, gamma, beta, eps=1e-5)`` -> ``LN(x)`` over the last axis; x ``[..., d]``,
    gamma and beta ``[d]``. Compared with ``nn.LayerNorm`` (random gain and bias)."""
    g = torch.Generator().manual_seed(0)
    for shape, eps, scale in (
        ((2, 5, 8), 1e-5, 3.0),
        ((3, 4), 1e-5, 1.0),
        ((1, 6, 16), 0.1, 0.2),
    ):
        d = shape[-1]
        ln = nn.LayerNorm(d, eps=eps, dtype=torch.float64)
        with torch.no_grad():
            ln.weight.copy_(torch.randn(d, generator=g, dtype=torch.float64))
            ln.bias.copy_(torch.randn(d, generator=g, dtype=torch.float64))
        x = scale * torch.randn(*shape, generator=g, dtype=torch.float64) + 1
        gamma, beta = ln.weight.detach().clone(), ln.bias.detach().clone()
        want = ln(x).detach()
        got = _tensor(answer(x.clone(), gamma, beta, eps), "LN(x)")
        if got.shape != want.shape:
            yield f"LN(x) has shape {tuple(got.shape)}, expected {tuple(want.shape)} like x"
            return
        got = got.detach().to(torch.float64)
        if torch.allclose(got, want, atol=1e-8):
            continue

        def near(other, got=got):
            return torch.allclose(got, other, atol=1e-8)

        what = f"x of shape {shape}, eps={eps}"
        if near(_layer_norm(x, gamma, beta, eps, unbiased=True)):
            yield (
                f"{what}: you used the unbiased variance (divide by d - 1); LayerNorm's "
                "variance is the biased one, dividing by d"
            )
        elif near(_layer_norm(x, gamma, beta, eps, eps_inside=False)):
            yield f"{what}: eps belongs under the square root, sqrt(σ² + eps), not σ + eps"
        elif near(x / d**0.5):
            yield (
                f"{what}: dividing by √d (the seed article's formula) normalises nothing: "
                "subtract the mean and divide by the standard deviation of each position"
            )
        elif x.dim() > 2 and near(_layer_norm(x, gamma, beta, eps, dim=-2)):
            yield (
                f"{what}: you normalised over the positions (dim -2); LayerNorm normalises "
                "each position over its d features (the last axis)"
            )
        elif near(_layer_norm(x, 1.0, 0.0, eps)):
            yield f"{what}: you left out the learnt gain γ and bias β: γ ⊙ x̂ + β"
        elif near(_layer_norm(x, gamma, beta, 0.0)):
            yield f"{what}: you left out eps; it goes under the square root, sqrt(σ² + eps)"
        else:
            err = (got - want).abs().max().item()
            yield f"{what}: LN(x) differs from nn.LayerNorm by up to {err:.3g}"
        return


# ------------------------------------------------------------------------------ parameters


def _lm_params(vocab, d, n_layers, max_len, d_ff=None, tie_weights=True):
    d_ff = 4 * d if d_ff is None else d_ff
    block = 4 * d + 4 * (d * d + d) + (d * d_ff + d_ff) + (d_ff * d + d)
    head = 0 if tie_weights else vocab * d
    return vocab * d + max_len * d + n_layers * block + 2 * d + head


_LM_SHAPES = [  # vocab, d_model, n_heads, n_layers, max_len, d_ff, tie_weights
    (50_257, 768, 12, 12, 1024, None, True),  # GPT-2 small
    (33_278, 128, 4, 2, 64, None, True),  # section 2.1's small model
    (1000, 64, 4, 3, 32, 200, False),
    (500, 96, 3, 1, 16, None, False),
]


def _as_kwargs(v, d, n_layers, L, d_ff, tie):
    return dict(
        vocab=v, d_model=d, n_layers=n_layers, max_len=L, d_ff=d_ff, tie_weights=tie
    )


@exercise(
    "02.lm_parameters",
    "Count the parameters of a GPT-style TransformerLM",
    difficulty=2,
    reference=lambda vocab, d_model, n_layers, max_len, d_ff=None, tie_weights=True: (
        _lm_params(vocab, d_model, n_layers, max_len, d_ff, tie_weights)
    ),
    wrong=[
        (
            lambda vocab, d_model, n_layers, max_len, d_ff=None, tie_weights=True: (
                _lm_params(vocab, d_model, n_layers, max_len, d_ff, tie_weights)
                + (vocab * d_model if tie_weights else 0)
            ),
            "tied",
        ),
        (
            lambda vocab, d_model, n_layers, max_len, d_ff=None, tie_weights=True: (
                _lm_params(vocab, d_model, n_layers, max_len, d_ff, tie_weights)
                - max_len * d_model
            ),
            "position",
        ),
        (
            lambda vocab, d_model, n_layers, max_len, d_ff=None, tie_weights=True: (
                _lm_params(vocab, d_model, n_layers, max_len, d_ff, tie_weights)
                - (4 * n_layers + 2) * d_model
            ),
            "LayerNorm",
        ),
        (
            lambda vocab, d_model, n_layers, max_len, d_ff=None, tie_weights=True: (
                _lm_params(vocab, d_model, n_layers, max_len, None, tie_weights)
            ),
            "d_ff",
        ),
    ],
)
def lm_parameters(answer):
    """``answer(vocab, d_model, n_layers, max_len, d_ff=None, tie_weights=True)`` -> the
    parameter count of ``utils.models.TransformerLM`` (learned positions; ``d_ff`` None = 4d)."""
    for v, d, heads, n_layers, L, d_ff, tie in _LM_SHAPES:
        if v == 50_257:  # GPT-2 small: the count of its released weights
            want = 124_439_808
        else:  # built on the CPU (the meta device's first use costs a second of imports)
            with torch.random.fork_rng(devices=[]):  # leave the reader's random state
                model = TransformerLM(
                    v, d, heads, n_layers, d_ff=d_ff, max_len=L, tie_weights=tie
                )
            want = sum(p.numel() for p in model.parameters())  # tied: counted once
        assert want == _lm_params(v, d, n_layers, L, d_ff, tie)
        got = answer(v, d, n_layers, L, d_ff=d_ff, tie_weights=tie)
        if isinstance(got, bool) or not isinstance(got, int):
            if not (isinstance(got, float) and got.is_integer()):
                yield f"return a whole number of parameters, got {got!r}"
                return
        got = int(got)
        if got == want:
            continue
        ff = 4 * d if d_ff is None else d_ff
        what = f"V={v:,}, d={d}, {n_layers} layer(s), L={L}, d_ff={ff}, tied={tie}"
        diff = got - want
        if tie and diff == v * d:
            yield (
                f"{what}: {got:,} counts the output layer as well, but it is tied: it is "
                "the token embedding matrix, one tensor used twice, counted once"
            )
        elif not tie and diff == -v * d:
            yield f"{what}: {got:,} leaves out the untied output layer's V x d weights"
        elif diff == -L * d:
            yield f"{what}: {got:,} leaves out the learned position table, L x d = {L * d:,}"
        elif diff == -(4 * n_layers + 2) * d:
            yield (
                f"{what}: {got:,} leaves out the LayerNorms: two per block and a final "
                "one, each with a gain and a bias of d"
            )
        elif diff == -4 * n_layers * d:
            yield f"{what}: {got:,} leaves out the two LayerNorms of every block (2d each)"
        elif diff == -2 * d:
            yield f"{what}: {got:,} leaves out the final LayerNorm (ln_f, 2d)"
        elif diff == -n_layers * (9 * d + ff):
            yield (
                f"{what}: {got:,} leaves out the biases (and LayerNorms) of the blocks: "
                "9d + d_ff per block"
            )
        elif diff == -n_layers * (5 * d + ff):
            yield (
                f"{what}: {got:,} leaves out the biases of the linear layers: 4d in the "
                "attention, d_ff + d in the MLP, per block"
            )
        elif d_ff is not None and got == _lm_params(v, d, n_layers, L, None, tie):
            yield f"{what}: {got:,} assumes d_ff = 4d; use the d_ff you are given"
        else:
            yield f"{what}: you counted {got:,}, the model has {want:,} ({diff:+,})"
        return


# --- 02.vocab_budget (open-ended) ---------------------------------------------------------

open_exercise(
    "02.vocab_budget",
    "Which tokenizer gives the best model for a fixed budget?",
    difficulty=3,
    rubric=[
        "Holds the model (all but its embedding rows), the steps, the batch and the context "
        "in tokens fixed across tokenizers, and says how much text each run therefore saw.",
        "Compares the models in bits (or nats) per character or per word of the held-out "
        "text, not in per-token perplexity, and shows from the table why per-token numbers "
        "mislead.",
        "Reports each tokenizer's vocabulary size, characters per token and the embedding "
        "parameters it costs (V x d).",
        "Explains the result by what a longer token buys at a fixed budget (more text per "
        "step and per context window), and names what stops ever larger vocabularies from "
        "winning on real text (rare tokens seen too seldom, V x d parameters, a wider "
        "softmax).",
    ],
    answer="""
        Train one model per tokenizer with identical settings and score the held-out text in
        bits per character: the loss per token divided by ln 2 and by the characters per
        token. Per-token perplexity does not compare across tokenizers, because a token that
        covers more text is harder to predict. With the tokens per step fixed, longer tokens
        let every step and every context window see more text, so bits per character fall as
        the vocabulary grows, on the toy grammar until every word is one token and BPE has
        nothing left to merge. On real text the gain shrinks and turns: rare tokens get few
        updates, every entry costs d parameters in the embedding (and the output layer), and
        the softmax widens.
    """,
)
