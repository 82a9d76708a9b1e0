"""A count-based n-gram language model with Kneser–Ney and simpler smoothing methods.

An n-gram model approximates the chain rule

    P(w_1 .. w_T) = prod_t P(w_t | w_1 .. w_{t-1})          (exact)

by the Markov assumption P(w_t | w_1 .. w_{t-1}) ≈ P(w_t | w_{t-n+1} .. w_{t-1}): only the last
``n - 1`` words are kept as context. The conditional probabilities are estimated from counts.

Sentence boundaries. Every training or test sentence is a ``list[str]`` of tokens *without*
boundary markers. The model pads it on the left with ``n - 1`` copies of ``<s>`` (so the first
word has a full-length context) and appends one ``</s>``. ``</s>`` is predicted like any word (a
model must learn where sentences end); ``<s>`` is only ever context, never predicted, and is not
part of the vocabulary. Perplexity therefore counts ``len(sentence) + 1`` predictions per sentence.

Unknown words. The vocabulary is every training token plus ``</s>`` plus ``unk_token``
(``"<unk>"``, which WikiText-2 already uses for rare words). A test word outside the vocabulary
is scored as ``unk_token``.

Smoothing (``smoothing=``):

- ``"kneser-ney"`` (default): interpolated Kneser–Ney (Kneser & Ney 1995; Chen & Goodman 1999)
  with one absolute discount per order. Lower orders use *continuation counts*: how many distinct
  words precede an n-gram, not how often it occurs (n-grams starting with ``<s>`` cannot be
  extended to the left and keep their plain counts).
- ``"absolute"``: interpolated absolute discounting (plain counts at every order).
- ``"add-k"``: add ``k`` to every count of the highest order, no interpolation.
- ``"mle"``: maximum likelihood, relative frequencies of the highest order. Unseen n-grams get
  probability 0 (and a context never seen in training gives 0 for every word), so perplexity
  becomes infinite as soon as one test n-gram is new: the reason smoothing exists.

The interpolated methods compute, for the level-k context ``h`` (the last ``k - 1`` words):

    P_k(w | h) = (max(c_k(h w) - D_k, 0) + D_k * T_k(h) * P_{k-1}(w | h')) / c_k(h)

with ``c_k(h) = sum_w c_k(h w)``, ``T_k(h)`` the number of distinct words seen after ``h``, ``h'``
the context without its first word and ``P_0(w) = 1 / |V|``. A context never seen at level k
passes ``P_{k-1}`` through unchanged. With ``0 < D_k <= 1`` every ``P_k(. | h)`` sums to 1 over
the vocabulary.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

BOS = "<s>"
EOS = "</s>"
UNK = "<unk>"
SMOOTHING_METHODS = ("kneser-ney", "absolute", "add-k", "mle")

_BOS_ID = -1  # never a vocabulary index, so it can never be predicted


def _check_sentences(sentences, name: str = "sentences") -> None:
    """Sentences must be a list/tuple of lists/tuples of strings without boundary markers."""
    if isinstance(sentences, str) or not isinstance(sentences, Sequence):
        raise TypeError(
            f"{name} must be a list of sentences (lists of str), got {type(sentences)}"
        )
    for i, sentence in enumerate(sentences):
        if isinstance(sentence, str) or not isinstance(sentence, Sequence):
            raise TypeError(
                f"{name}[{i}] must be a list of tokens, got {type(sentence).__name__}"
                + (
                    " (split the string into words first)"
                    if isinstance(sentence, str)
                    else ""
                )
            )
        for token in sentence:
            if not isinstance(token, str):
                raise TypeError(f"{name}[{i}] holds a non-string token {token!r}")
            if token in (BOS, EOS):
                raise ValueError(
                    f"{name}[{i}] contains {token!r}; pass sentences without boundary markers, "
                    f"the model adds {BOS!r} and {EOS!r} itself"
                )


class NGramLM:
    """Count-based n-gram language model (see the module docstring for the formulas).

    Args:
        order: n, the number of words in an n-gram (context = ``n - 1`` words), >= 1.
        smoothing: one of ``"kneser-ney"``, ``"absolute"``, ``"add-k"``, ``"mle"``.
        discount: D for the interpolated methods, a float in ``(0, 1]`` used at every order, or
            ``None`` to estimate one per order from the training counts with Ney et al.'s (1994)
            ``D = n1 / (n1 + 2 n2)`` (n1, n2: number of n-grams with count exactly 1 and 2;
            where no n-gram has count 1 the formula is undefined and D = 0.5 is used).
        k: the pseudo-count of ``"add-k"``, > 0.
        unk_token: the token unknown test words are mapped to.

    Attributes (after :meth:`fit`):
        vocab: the vocabulary (training tokens, ``</s>``, ``unk_token``), sorted.
        discounts: ``discounts[k]`` is the D used at order k (``discounts[0]`` is unused).

    Example:
        >>> lm = NGramLM(2).fit([["a", "b"], ["b", "a", "b"]])
        >>> round(sum(lm.distribution(["a"]).values()), 6)
        1.0
    """

    def __init__(
        self,
        order: int,
        smoothing: str = "kneser-ney",
        discount: float | None = None,
        k: float = 1.0,
        unk_token: str = UNK,
    ) -> None:
        if isinstance(order, bool) or not isinstance(order, int) or order < 1:
            raise ValueError(f"order must be an int >= 1, got {order!r}")
        if smoothing not in SMOOTHING_METHODS:
            raise ValueError(
                f"smoothing must be one of {SMOOTHING_METHODS}, got {smoothing!r}"
            )
        if discount is not None and (
            isinstance(discount, bool)
            or not isinstance(discount, (int, float))
            or not 0.0 < discount <= 1.0
        ):
            raise ValueError(
                f"discount must be None (estimate it) or a number in (0, 1], got {discount!r}"
            )
        if (
            isinstance(k, bool)
            or not isinstance(k, (int, float))
            or not (0.0 < k < math.inf)
        ):
            raise ValueError(f"k must be a finite number > 0, got {k!r}")
        if not isinstance(unk_token, str) or unk_token in (BOS, EOS):
            raise ValueError(f"unk_token must be a string other than {BOS!r}/{EOS!r}")
        self.order = order
        self.smoothing = smoothing
        self.discount = discount
        self.k = float(k)
        self.unk_token = unk_token
        self.vocab: list[str] = []  # index -> word; filled by fit()
        self._index: dict[str, int] = {}
        # _counts[level][context ids] = {word id: count}; level k has contexts of k - 1 ids.
        self._counts: list[dict[tuple[int, ...], dict[int, int]]] = []
        # _stats[level][context] = (sum of the counts, number of distinct following words)
        self._stats: list[dict[tuple[int, ...], tuple[int, int]]] = []
        self.discounts: list[float] = []  # D_k per level (index 0 unused)

    # ------------------------------------------------------------------ training

    @property
    def fitted(self) -> bool:
        return bool(self.vocab)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError(
                "this NGramLM is not fitted yet: call .fit(sentences) first"
            )

    def _ids(self, tokens: Sequence[str]) -> list[int]:
        unk = self._index[self.unk_token]
        return [self._index.get(t, unk) for t in tokens]

    def _padded(self, sentence: Sequence[str]) -> list[int]:
        return [_BOS_ID] * (self.order - 1) + self._ids(sentence) + [self._index[EOS]]

    def fit(self, sentences: Sequence[Sequence[str]]) -> NGramLM:
        """Count the n-grams of ``sentences`` (a list of token lists) and return ``self``.

        Fitting again replaces everything learnt before.
        """
        _check_sentences(sentences)
        if len(sentences) == 0:
            raise ValueError("sentences is empty: need at least one training sentence")
        words = sorted({t for s in sentences for t in s} | {EOS, self.unk_token})
        self.vocab = words
        self._index = {w: i for i, w in enumerate(words)}

        n = self.order
        top: dict[tuple[int, ...], dict[int, int]] = {}
        for sentence in sentences:
            ids = self._padded(sentence)
            for t in range(n - 1, len(ids)):
                followers = top.setdefault(tuple(ids[t - n + 1 : t]), {})
                followers[ids[t]] = followers.get(ids[t], 0) + 1
        counts = [dict() for _ in range(n + 1)]
        counts[n] = top
        # Derive level k from level k + 1: every level-k n-gram occurrence is the suffix of a
        # level-(k+1) one, because each sentence was padded with n - 1 <s>.
        for level in range(n - 1, 0, -1):
            lower = counts[level]
            for context, followers in counts[level + 1].items():
                short = context[1:]
                for word, count in followers.items():
                    if self.smoothing == "kneser-ney" and not (
                        short and short[0] == _BOS_ID
                    ):
                        count = (
                            1  # continuation count: one more distinct left neighbour
                        )
                    bucket = lower.setdefault(short, {})
                    bucket[word] = bucket.get(word, 0) + count
        self._counts = counts
        self._stats = [
            {h: (sum(f.values()), len(f)) for h, f in level.items()} for level in counts
        ]
        self.discounts = [0.0] + [self._level_discount(lv) for lv in range(1, n + 1)]
        return self

    def _level_discount(self, level: int) -> float:
        if self.smoothing not in ("kneser-ney", "absolute"):
            return 0.0
        if self.discount is not None:
            return float(self.discount)
        n1 = n2 = 0
        for followers in self._counts[level].values():
            for c in followers.values():
                n1 += c == 1
                n2 += c == 2
        if n1 == 0:
            return 0.5  # no singletons to learn from; a middle-of-the-road value
        return n1 / (n1 + 2 * n2)

    # ------------------------------------------------------------------ scoring

    def _context_ids(self, context: Sequence[str] | None) -> tuple[int, ...]:
        if context is None:
            context = ()
        if isinstance(context, str) or not isinstance(context, Sequence):
            raise TypeError(
                f"context must be a list of str (previous words), got {context!r}"
            )
        if self.order == 1:
            return ()
        keep = list(context)[-(self.order - 1) :]
        for token in keep:
            if not isinstance(token, str):
                raise TypeError(f"context holds a non-string token {token!r}")
        unk = self._index[self.unk_token]
        ids = [_BOS_ID if t == BOS else self._index.get(t, unk) for t in keep]
        # A context shorter than n - 1 words is the start of a sentence.
        return tuple([_BOS_ID] * (self.order - 1 - len(ids)) + ids)

    def _prob_of_ids(self, word: int, context: tuple[int, ...]) -> float:
        """P(word | context) from ids; ``context`` holds exactly ``order - 1`` ids."""
        n = self.order
        if self.smoothing in ("mle", "add-k"):
            followers = self._counts[n].get(context)
            total = self._stats[n][context][0] if followers is not None else 0
            count = followers.get(word, 0) if followers is not None else 0
            if self.smoothing == "mle":
                return count / total if total else 0.0
            return (count + self.k) / (total + self.k * len(self.vocab))
        prob = 1.0 / len(self.vocab)  # level 0: uniform over the vocabulary
        for level in range(1, n + 1):
            history = context[n - level :]  # the last level - 1 ids
            followers = self._counts[level].get(history)
            if followers is None:
                continue  # unseen context: the lower-order estimate passes through
            total, n_types = self._stats[level][history]
            d = self.discounts[level]
            prob = (max(followers.get(word, 0) - d, 0.0) + d * n_types * prob) / total
        return prob

    def _word_id(self, word: str) -> int:
        if not isinstance(word, str):
            raise TypeError(f"word must be a str, got {type(word).__name__}")
        if word == BOS:
            raise ValueError(
                f"{BOS!r} is only ever context; the model never predicts it"
            )
        return self._index.get(word, self._index[self.unk_token])

    def prob(self, word: str, context: Sequence[str] | None = None) -> float:
        """P(word | context). ``context`` = the previous words of the sentence (a list of str);
        only its last ``order - 1`` are used, a shorter one means "at the start of a sentence".
        Words outside the vocabulary are scored as ``unk_token``."""
        self._check_fitted()
        return self._prob_of_ids(self._word_id(word), self._context_ids(context))

    def logprob(self, word: str, context: Sequence[str] | None = None) -> float:
        """Natural log of :meth:`prob`; ``-inf`` where the probability is 0 (MLE only)."""
        p = self.prob(word, context)
        return math.log(p) if p > 0 else -math.inf

    def distribution(self, context: Sequence[str] | None = None) -> dict[str, float]:
        """The whole conditional distribution ``{word: P(word | context)}`` over the vocabulary."""
        self._check_fitted()
        ctx = self._context_ids(context)
        return {w: self._prob_of_ids(i, ctx) for i, w in enumerate(self.vocab)}

    def _events(self, sentences: Sequence[Sequence[str]]):
        """Yield (word id, context ids) for every prediction in ``sentences``."""
        n = self.order
        for sentence in sentences:
            ids = self._padded(sentence)
            for t in range(n - 1, len(ids)):
                yield ids[t], tuple(ids[t - n + 1 : t])

    def cross_entropy(self, sentences: Sequence[Sequence[str]]) -> float:
        """Average negative log-probability per predicted token, in nats (``inf`` if any is 0).

        Each sentence contributes ``len(sentence) + 1`` predictions (its words and ``</s>``).
        """
        self._check_fitted()
        _check_sentences(sentences)
        total, n_tokens = 0.0, 0
        for word, context in self._events(sentences):
            p = self._prob_of_ids(word, context)
            if p <= 0.0:
                return math.inf
            total -= math.log(p)
            n_tokens += 1
        if n_tokens == 0:
            raise ValueError("sentences is empty: nothing to score")
        return total / n_tokens

    def perplexity(self, sentences: Sequence[Sequence[str]]) -> float:
        """``exp(cross_entropy)``: the geometric mean of 1 / P(w_t | context) over all tokens."""
        ce = self.cross_entropy(sentences)
        return (
            math.exp(ce) if ce < 700 else math.inf
        )  # exp overflows a float beyond ~709

    # ------------------------------------------------------------------ counting diagnostics

    def num_ngrams(self, n: int | None = None) -> int:
        """Number of distinct n-grams (default: of the model's order) seen in training, ``<s>``
        padding included (``("<s>", "The")`` is a bigram)."""
        self._check_fitted()
        n = self.order if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= self.order:
            raise ValueError(f"n must be an int in [1, {self.order}], got {n!r}")
        return sum(len(f) for f in self._counts[n].values())

    def unseen_rate(self, sentences: Sequence[Sequence[str]]) -> float:
        """Share of the n-grams (of the model's order) in ``sentences`` never seen in training.

        For an MLE model this is exactly the share of test tokens given probability 0.
        """
        self._check_fitted()
        _check_sentences(sentences)
        unseen = total = 0
        top = self._counts[self.order]
        for word, context in self._events(sentences):
            total += 1
            unseen += word not in top.get(context, ())
        if total == 0:
            raise ValueError("sentences is empty: nothing to count")
        return unseen / total

    # ------------------------------------------------------------------ generation

    def _sample_id(self, context: tuple[int, ...], rng: random.Random) -> int:
        """Draw a word id from P(. | context) exactly, reading the formula as a mixture.

        At level k the probability splits into the discounted counts (total mass
        ``(c(h) - D T(h)) / c(h)``) and the share ``D T(h) / c(h)`` handed to level k - 1, so we
        either pick a follower in proportion to ``max(c - D, 0)`` or move down one level.
        """
        n = self.order
        if self.smoothing in ("mle", "add-k"):
            levels, followers_top = [n], self._counts[n].get(context)
            if self.smoothing == "add-k":
                total = self._stats[n][context][0] if followers_top is not None else 0
                if rng.random() * (total + self.k * len(self.vocab)) >= total:
                    return rng.randrange(len(self.vocab))  # the uniform part of add-k
            elif followers_top is None:
                raise ValueError(
                    "MLE cannot continue: this context never occurred in training"
                )
        else:
            levels = range(n, 0, -1)
        for level in levels:
            history = context[n - level :]
            followers = self._counts[level].get(history)
            if followers is None:
                continue
            total, n_types = self._stats[level][history]
            d = self.discounts[level]
            r = rng.random() * total
            if r < total - d * n_types:
                for word, count in followers.items():
                    r -= max(count - d, 0.0)
                    if r < 0:
                        return word
                return word  # floating-point round-off at the very end of the loop
        return rng.randrange(len(self.vocab))

    def generate(
        self,
        max_words: int = 30,
        seed: int | None = 0,
        prefix: Sequence[str] | None = None,
    ) -> list[str]:
        """Sample one sentence: ``prefix`` (default empty) then words drawn from the model until
        ``</s>`` or ``max_words`` words in total. Returns the words without ``<s>``/``</s>``.

        ``seed`` makes the draw reproducible (a private ``random.Random``; the global random
        state is untouched).
        """
        self._check_fitted()
        if (
            isinstance(max_words, bool)
            or not isinstance(max_words, int)
            or max_words < 1
        ):
            raise ValueError(f"max_words must be an int >= 1, got {max_words!r}")
        prefix = [] if prefix is None else prefix
        _check_sentences([prefix], name="prefix")
        rng = random.Random(seed)
        words = list(prefix)
        eos = self._index[EOS]
        while len(words) < max_words:
            word = self._sample_id(self._context_ids(words), rng)
            if word == eos:
                break
            words.append(self.vocab[word])
        return words

    def __repr__(self) -> str:
        state = f"|V|={len(self.vocab)}" if self.fitted else "not fitted"
        return f"NGramLM(order={self.order}, smoothing={self.smoothing!r}, {state})"
