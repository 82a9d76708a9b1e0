"""Text pipeline helpers: the torchtext-era API, kept alive, plus modern subword tokenisation.

Many tutorials this book corrects were written against torchtext (``get_tokenizer``,
``build_vocab_from_iterator``, ``Field``/``BucketIterator``, ``batchify``/``get_batch``).
torchtext 0.18 (April 2024) was its last release and it no longer imports with current torch, so
this module re-implements the parts those tutorials rely on, in plain Python and PyTorch:

=====================================  ======================================================
torchtext (<= 0.18)                    here
=====================================  ======================================================
``data.utils.get_tokenizer``           :func:`get_tokenizer` (``None``, ``"basic_english"``,
                                       a callable)
``vocab.build_vocab_from_iterator``    :func:`build_vocab_from_iterator`
``vocab.vocab`` / ``vocab.Vocab``      :func:`vocab` / :class:`Vocab`
``data.BucketIterator`` (legacy)       :class:`BucketBatchSampler` + :func:`pad_collate`
tutorial ``batchify`` / ``get_batch``  :func:`batchify`, :func:`get_batch`, :func:`iter_bptt`
tutorial ``data_process``              :func:`tokens_to_ids`
=====================================  ======================================================

and, for what modern models actually use, :func:`train_bpe_tokenizer` (byte-level BPE with
Hugging Face ``tokenizers``) and :class:`CharTokenizer` (one id per character).
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import Sampler

from utils.checks import check_int

__all__ = [
    "BucketBatchSampler",
    "CharTokenizer",
    "OutOfVocabularyError",
    "Vocab",
    "VocabIndexError",
    "batchify",
    "build_vocab_from_iterator",
    "decode",
    "encode",
    "get_batch",
    "get_tokenizer",
    "iter_bptt",
    "pad_collate",
    "tokens_to_ids",
    "train_bpe_tokenizer",
    "vocab",
]


# ---------------------------------------------------------------------------------------------
# Word-level tokenisation (torchtext.data.utils.get_tokenizer)
# ---------------------------------------------------------------------------------------------

# torchtext's "basic_english" rules, applied in this order to the lower-cased line. The order
# matters: e.g. double quotes are deleted before anything else can pad them with spaces.
_BASIC_ENGLISH_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"'", " '  "),  # apostrophe becomes a token of its own: "don't" -> don ' t
        (r'"', ""),  # double quotes are dropped
        (r"\.", " . "),
        (r"<br \/>", " "),  # HTML line breaks (IMDB reviews are full of them)
        (r",", " , "),
        (r"\(", " ( "),
        (r"\)", " ) "),
        (r"!", " ! "),
        (r"\?", " ? "),
        (r";", " "),  # semicolons and colons are dropped, not kept as tokens
        (r":", " "),
        (r"\s+", " "),
    )
)

_SUPPORTED_TOKENIZERS = (
    'None (str.split), "basic_english", or any callable str -> list[str]'
)


def _split_tokenizer(line: str) -> list[str]:
    """Split on runs of whitespace (torchtext's ``get_tokenizer(None)``)."""
    if not isinstance(line, str):
        raise TypeError(f"tokenizer input must be a str, got {type(line).__name__}")
    return line.split()


def _basic_english_tokenizer(line: str) -> list[str]:
    """torchtext's ``basic_english``: lower-case, apply the regex rules, split on whitespace."""
    if not isinstance(line, str):
        raise TypeError(f"tokenizer input must be a str, got {type(line).__name__}")
    line = line.lower()
    for pattern, replacement in _BASIC_ENGLISH_RULES:
        line = pattern.sub(replacement, line)
    return line.split()


def get_tokenizer(
    tokenizer: str | Callable[[str], list[str]] | None, language: str = "en"
) -> Callable[[str], list[str]]:
    """Return a word tokenizer ``str -> list[str]``, behaving like torchtext 0.18's.

    Args:
        tokenizer: ``None`` gives ``str.split`` (split on whitespace, nothing else).
            ``"basic_english"`` lower-cases, then: puts spaces around ``'`` ``.`` ``,`` ``(``
            ``)`` ``!`` ``?``; deletes ``"``; replaces ``<br />``, ``;`` and ``:`` by a space;
            then splits on whitespace. A callable is returned unchanged.
        language: only ``"en"`` is accepted with ``"basic_english"`` (as in torchtext).

    Raises:
        ValueError: for any other tokenizer name (torchtext's ``"spacy"``, ``"moses"``, ... are
            not bundled: call spaCy or a Hugging Face tokenizer yourself and pass the callable),
            or for a non-English ``language`` with ``"basic_english"``.
        TypeError: if ``tokenizer`` is neither ``None``, a str nor a callable.

    Example:
        >>> get_tokenizer("basic_english")("You can now install TorchText using pip!")
        ['you', 'can', 'now', 'install', 'torchtext', 'using', 'pip', '!']
    """
    if tokenizer is None:
        return _split_tokenizer
    if isinstance(tokenizer, str):
        if tokenizer == "basic_english":
            if language != "en":
                raise ValueError(
                    f'"basic_english" normalisation is only available for English '
                    f'(language="en"), got language={language!r}'
                )
            return _basic_english_tokenizer
        raise ValueError(
            f"tokenizer={tokenizer!r} is not supported; supported are {_SUPPORTED_TOKENIZERS}. "
            "For spaCy pass a callable, e.g. "
            "`nlp = spacy.load('en_core_web_sm'); get_tokenizer(lambda s: [t.text for t in "
            "nlp.tokenizer(s)])`; for subwords use train_bpe_tokenizer() or a Hugging Face "
            "tokenizer (`AutoTokenizer.from_pretrained(...).tokenize`)."
        )
    if callable(tokenizer):
        return tokenizer
    raise TypeError(
        f"tokenizer must be {_SUPPORTED_TOKENIZERS}; got an object of type "
        f"{type(tokenizer).__name__}"
    )


# ---------------------------------------------------------------------------------------------
# Vocabulary (torchtext.vocab)
# ---------------------------------------------------------------------------------------------


class OutOfVocabularyError(RuntimeError, KeyError):
    """A token is not in the :class:`Vocab` and no default index is set.

    Subclasses ``RuntimeError`` (what torchtext raised, so old ``except RuntimeError`` code keeps
    working) and ``KeyError`` (what a Python mapping raises for a missing key).
    """

    def __str__(self) -> str:
        # KeyError.__str__ would wrap the message in quotes; show it as written.
        return str(self.args[0]) if self.args else ""


class VocabIndexError(RuntimeError, IndexError):
    """An index outside ``[0, len(vocab))`` was looked up (RuntimeError in torchtext)."""


def _check_token(token: object, name: str = "token") -> str:
    if not isinstance(token, str):
        raise TypeError(f"{name} must be a str, got {type(token).__name__}: {token!r}")
    return token


class Vocab:
    """A token <-> index mapping with torchtext 0.18's ``Vocab`` interface.

    Args:
        tokens: the tokens in index order (``tokens[i]`` gets index ``i``); no duplicates.
        default_index: index returned for out-of-vocabulary tokens, or ``None`` (the default) to
            raise :class:`OutOfVocabularyError` instead. Like torchtext it is not range-checked
            (torchtext's own example uses ``-1``).

    ``vocab[token] -> int``, ``vocab(tokens) -> list[int]``, ``len(vocab)``, ``token in vocab``.
    """

    def __init__(self, tokens: Iterable[str], default_index: int | None = None) -> None:
        self._itos: list[str] = []
        self._stoi: dict[str, int] = {}
        for token in tokens:
            _check_token(token, "each token")
            if token in self._stoi:
                raise ValueError(
                    f"duplicate token {token!r} in tokens (first at index {self._stoi[token]})"
                )
            self._stoi[token] = len(self._itos)
            self._itos.append(token)
        self._default_index: int | None = None
        self.set_default_index(default_index)

    # -- lookups ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and token in self._stoi

    def __getitem__(self, token: str) -> int:
        """Index of ``token``; the default index if it is unknown and one is set."""
        _check_token(token)
        index = self._stoi.get(token)
        if index is not None:
            return index
        if self._default_index is None:
            raise OutOfVocabularyError(
                f"token {token!r} is not in the vocabulary and no default index is set; add an "
                "unknown-token special (specials=['<unk>']) and call "
                "vocab.set_default_index(vocab['<unk>']) to map unknown tokens to it"
            )
        return self._default_index

    def __call__(self, tokens: Iterable[str]) -> list[int]:
        """Indices of ``tokens`` (same as :meth:`lookup_indices`)."""
        return self.lookup_indices(tokens)

    def lookup_indices(self, tokens: Iterable[str]) -> list[int]:
        """Indices of ``tokens``, one per token, in order."""
        if isinstance(tokens, str):
            raise TypeError(
                "tokens must be a list of str, got a single str; tokenize it first "
                f"(e.g. vocab(tokenizer({tokens[:20]!r}...)))"
            )
        return [self[token] for token in tokens]

    def lookup_token(self, index: int) -> str:
        """The token at ``index`` (``0 <= index < len(vocab)``; negative indices are rejected)."""
        check_int("index", index)
        if not 0 <= index < len(self._itos):
            raise VocabIndexError(
                f"index {index} is out of range for a vocabulary of size {len(self._itos)} "
                f"(valid: 0 .. {len(self._itos) - 1})"
            )
        return self._itos[index]

    def lookup_tokens(self, indices: Iterable[int]) -> list[str]:
        """Tokens at ``indices`` (a list of ints or a 1-D integer tensor)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.tolist()
        return [self.lookup_token(index) for index in indices]

    def get_itos(self) -> list[str]:
        """Index -> token list (a copy)."""
        return list(self._itos)

    def get_stoi(self) -> dict[str, int]:
        """Token -> index dict (a copy)."""
        return dict(self._stoi)

    # -- default index ----------------------------------------------------------------------

    def set_default_index(self, index: int | None) -> None:
        """Index returned for unknown tokens; ``None`` makes unknown tokens an error again."""
        if index is not None:
            check_int("index", index)
        self._default_index = index

    def get_default_index(self) -> int | None:
        """The default index, or ``None`` when unset."""
        return self._default_index

    # -- growing the vocabulary -------------------------------------------------------------

    def insert_token(self, token: str, index: int) -> None:
        """Insert a new ``token`` at ``index`` (``0 <= index <= len``); later tokens shift up.

        The default index is *not* shifted (torchtext did not either), so insert before building
        the model or re-set it.
        """
        _check_token(token)
        check_int("index", index)
        if not 0 <= index <= len(self._itos):
            raise VocabIndexError(
                f"insert index {index} is out of range for a vocabulary of size "
                f"{len(self._itos)} (valid: 0 .. {len(self._itos)})"
            )
        if token in self._stoi:
            raise ValueError(
                f"token {token!r} already exists in the vocabulary at index {self._stoi[token]}"
            )
        self._itos.insert(index, token)
        for position in range(index, len(self._itos)):
            self._stoi[self._itos[position]] = position

    def append_token(self, token: str) -> None:
        """Add a new ``token`` at the end (index ``len(vocab)``)."""
        self.insert_token(token, len(self._itos))

    def __repr__(self) -> str:
        head = ", ".join(repr(t) for t in self._itos[:5])
        more = ", ..." if len(self._itos) > 5 else ""
        return (
            f"Vocab(size={len(self._itos)}, default_index={self._default_index}, "
            f"tokens=[{head}{more}])"
        )


def _check_specials(specials: Sequence[str] | None) -> list[str]:
    if specials is None:
        return []
    if isinstance(specials, str):
        raise TypeError(
            f"specials must be a list of str, not a single str ({specials!r})"
        )
    specials = list(specials)
    for token in specials:
        _check_token(token, "each special")
    if len(set(specials)) != len(specials):
        raise ValueError(f"specials contains duplicates: {specials}")
    return specials


def _check_min_freq(min_freq: int) -> int:
    check_int("min_freq", min_freq)
    if min_freq < 1:
        raise ValueError(f"min_freq must be >= 1, got {min_freq}")
    return min_freq


def vocab(
    ordered_dict: Mapping[str, int],
    min_freq: int = 1,
    specials: Sequence[str] | None = None,
    special_first: bool = True,
) -> Vocab:
    """Build a :class:`Vocab` from ``token -> frequency`` pairs, keeping their order.

    Like ``torchtext.vocab.vocab``: tokens with frequency ``>= min_freq`` are kept in the
    mapping's iteration order (sort it yourself if you want frequency order); ``specials`` are
    removed from the corpus tokens and put first (``special_first=True``) or last. Unlike
    torchtext, ``ordered_dict`` is not modified.
    """
    if not isinstance(ordered_dict, Mapping):
        raise TypeError(
            f"ordered_dict must be a mapping token -> frequency, got {type(ordered_dict).__name__}"
        )
    _check_min_freq(min_freq)
    specials = _check_specials(specials)
    special_set = set(specials)
    corpus_tokens = []
    for token, freq in ordered_dict.items():
        _check_token(token, "each key of ordered_dict")
        if token not in special_set and freq >= min_freq:
            corpus_tokens.append(token)
    tokens = specials + corpus_tokens if special_first else corpus_tokens + specials
    return Vocab(tokens)


def build_vocab_from_iterator(
    iterator: Iterable[Iterable[str]],
    min_freq: int = 1,
    specials: Sequence[str] | None = None,
    special_first: bool = True,
    max_tokens: int | None = None,
) -> Vocab:
    """Count tokens and build a :class:`Vocab`, exactly as torchtext 0.18 did.

    Args:
        iterator: yields one list (or iterable) of tokens per example, e.g.
            ``(tokenizer(line) for line in lines)``.
        min_freq: corpus tokens seen fewer times are left out (specials are always kept).
        specials: e.g. ``["<unk>", "<pad>"]``, kept in the given order and never duplicated by a
            corpus token of the same spelling.
        special_first: specials get indices ``0 .. len(specials)-1`` (True) or come last.
        max_tokens: size budget *including* the specials. torchtext's exact rule, kept here:
            take the ``max_tokens - len(specials)`` most frequent corpus tokens first, *then*
            drop any that are specials or below ``min_freq``, so the result can be smaller
            than ``max_tokens``. Must be ``> len(specials)``.

    Returns:
        A :class:`Vocab` ordered by descending frequency, ties broken lexicographically, with no
        default index set (call ``set_default_index(v["<unk>"])`` yourself).
    """
    _check_min_freq(min_freq)
    specials = _check_specials(specials)
    if max_tokens is not None:
        check_int("max_tokens", max_tokens)
        if max_tokens <= len(specials):
            raise ValueError(
                f"max_tokens={max_tokens} must be greater than len(specials)={len(specials)}, "
                "otherwise the vocabulary would hold only special tokens"
            )
    if isinstance(iterator, str):
        raise TypeError("iterator must yield lists of tokens, not be a single str")
    counts: Counter[str] = Counter()
    for tokens in iterator:
        if isinstance(tokens, str):
            raise TypeError(
                "iterator must yield lists of tokens, but it yielded a str "
                f"({tokens[:30]!r}); wrap it as (tokenizer(line) for line in lines)"
            )
        counts.update(tokens)
    # Descending frequency, then lexicographic, so the result does not depend on input order.
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    if max_tokens is not None:
        ranked = ranked[: max_tokens - len(specials)]
    return vocab(
        OrderedDict(ranked),
        min_freq=min_freq,
        specials=specials,
        special_first=special_first,
    )


# ---------------------------------------------------------------------------------------------
# Subword and character tokenisation
# ---------------------------------------------------------------------------------------------

_BYTE_ALPHABET_SIZE = 256


def train_bpe_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = ("<pad>", "<unk>", "<bos>", "<eos>"),
    lowercase: bool = False,
):
    """Train a byte-level BPE tokenizer (GPT-2 style) with Hugging Face ``tokenizers``.

    Byte-level means every string is representable: no unknown token is ever needed, and
    ``decode(tok, encode(tok, text)) == text`` for any text (with ``lowercase=False``).
    Special tokens get ids ``0 .. len(special_tokens)-1`` in the given order.

    Args:
        texts: training lines (materialised into a list once, to validate them).
        vocab_size: final vocabulary size, at least 256 (byte alphabet) + ``len(special_tokens)``.
            Training may stop below it when no pair reaches ``min_frequency``.
        min_frequency: a pair must occur at least this often to be merged.
        special_tokens: never split, matched verbatim in the input text.
        lowercase: lower-case the text before tokenising (then decoding gives the lower-cased
            text back, not the original).

    Returns:
        A trained ``tokenizers.Tokenizer``.
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )

    if isinstance(texts, str):
        raise TypeError(
            "texts must be an iterable of str (e.g. a list of lines), not one str"
        )
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty; BPE needs some training text")
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(
                f"texts[{position}] must be a str, got {type(text).__name__}"
            )
    if isinstance(special_tokens, str):
        raise TypeError(
            f"special_tokens must be a sequence of str, not one str {special_tokens!r}"
        )
    special_tokens = _check_specials(special_tokens)
    check_int("vocab_size", vocab_size)
    smallest = _BYTE_ALPHABET_SIZE + len(special_tokens)
    if vocab_size < smallest:
        raise ValueError(
            f"vocab_size must be >= {smallest} (256 byte symbols + {len(special_tokens)} special "
            f"tokens), got {vocab_size}"
        )
    check_int("min_frequency", min_frequency)
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")

    tokenizer = Tokenizer(models.BPE())
    if lowercase:
        tokenizer.normalizer = normalizers.Lowercase()
    # add_prefix_space=False keeps the round trip exact (no space invented before the text).
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` under a Hugging Face ``tokenizers.Tokenizer``."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return tokenizer.encode(text).ids


def decode(
    tokenizer, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False
) -> str:
    """Text of ``ids`` under a Hugging Face ``tokenizers.Tokenizer``.

    ``skip_special_tokens`` defaults to False (the library's default is True) so that a text
    which happens to contain ``"<eos>"`` survives a round trip unchanged.
    """
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    return tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)


class CharTokenizer:
    """One id per character: the tokenizer of char-level language models (e.g. tiny Shakespeare).

    Ids follow the sorted order of the characters seen in the training text.
    """

    def __init__(self, chars: Iterable[str]) -> None:
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        for char in chars:
            if not isinstance(char, str) or len(char) != 1:
                raise ValueError(
                    f"each entry of chars must be a single character, got {char!r}"
                )
            if char in self.stoi:
                raise ValueError(f"duplicate character {char!r} in chars")
            self.stoi[char] = len(self.itos)
            self.itos.append(char)
        if not self.itos:
            raise ValueError("CharTokenizer needs at least one character")

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Vocabulary = the distinct characters of ``text``, sorted."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("text is empty; cannot build a character vocabulary")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text``; an unseen character raises ``ValueError``."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            return [self.stoi[char] for char in text]
        except KeyError as missing:
            char = missing.args[0]
            raise ValueError(
                f"character {char!r} (at position {text.index(char)}) was not in the training "
                f"text; the vocabulary has {len(self.itos)} characters"
            ) from None

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of ``ids`` (a list of ints or a 1-D integer tensor)."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
            ids = ids.tolist()
        chars = []
        for index in ids:
            check_int("each id", index)
            if not 0 <= index < len(self.itos):
                raise ValueError(
                    f"id {index} is out of range 0 .. {len(self.itos) - 1}"
                )
            chars.append(self.itos[index])
        return "".join(chars)


# ---------------------------------------------------------------------------------------------
# Batching for classification / seq2seq (BucketIterator's job)
# ---------------------------------------------------------------------------------------------


def _as_id_tensor(seq: object, position: int) -> torch.Tensor:
    if isinstance(seq, torch.Tensor):
        if seq.dim() != 1:
            raise ValueError(
                f"sequence {position} must be 1-D, got a tensor of shape {tuple(seq.shape)}"
            )
        if seq.dtype.is_floating_point or seq.dtype.is_complex:
            raise TypeError(
                f"sequence {position} must hold integer ids, got dtype {seq.dtype}"
            )
        return seq.long()
    if isinstance(seq, (list, tuple)):
        return (
            torch.tensor(seq, dtype=torch.long)
            if seq
            else torch.zeros(0, dtype=torch.long)
        )
    raise TypeError(
        f"sequence {position} must be a list of ints or a 1-D tensor, got {type(seq).__name__}"
    )


def _is_sequence(obj: object) -> bool:
    return isinstance(obj, (list, tuple)) or (
        isinstance(obj, torch.Tensor) and obj.dim() == 1
    )


def pad_collate(
    batch: Sequence, pad_idx: int = 0, batch_first: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pad variable-length id sequences into one tensor (a ``DataLoader`` ``collate_fn``).

    Args:
        batch: either ``[(ids, label), ...]`` or ``[ids, ...]``, where ``ids`` is a list of ints
            or a 1-D integer tensor and ``label`` an int, float or tensor.
        pad_idx: id written into the padding positions.
        batch_first: ``[B, L_max]`` (True) or the old RNN layout ``[L_max, B]``.

    Returns:
        ``(padded, lengths, labels)``: ``padded`` LongTensor ``[B, L_max]`` (or ``[L_max, B]``),
        ``lengths`` LongTensor ``[B]`` (true length of each sequence, e.g. for
        ``pack_padded_sequence``), ``labels`` ``[B]`` (stacked, for tensor labels ``[B, ...]``)
        or ``None`` when the batch has no labels.
    """
    if isinstance(batch, (str, torch.Tensor)) or not isinstance(batch, Sequence):
        raise TypeError(f"batch must be a list of examples, got {type(batch).__name__}")
    if len(batch) == 0:
        raise ValueError("batch is empty")
    check_int("pad_idx", pad_idx)
    # An example is an (ids, label) pair when its first element is itself a sequence; a plain
    # id list such as [4, 7] starts with an int, so it is not mistaken for a pair.
    first = batch[0]
    has_labels = (
        isinstance(first, (list, tuple)) and len(first) == 2 and _is_sequence(first[0])
    )
    sequences, labels = [], []
    for position, example in enumerate(batch):
        if has_labels:
            if not (isinstance(example, (list, tuple)) and len(example) == 2):
                raise ValueError(
                    f"example {position} is not an (ids, label) pair like example 0: {example!r}"
                )
            sequences.append(_as_id_tensor(example[0], position))
            labels.append(example[1])
        else:
            sequences.append(_as_id_tensor(example, position))
    lengths = torch.tensor([len(seq) for seq in sequences], dtype=torch.long)
    padded = torch.nn.utils.rnn.pad_sequence(
        sequences, batch_first=batch_first, padding_value=pad_idx
    )
    label_tensor = None
    if has_labels:
        if all(isinstance(label, torch.Tensor) for label in labels):
            label_tensor = torch.stack(labels)
        else:
            label_tensor = torch.tensor(labels)
    return padded, lengths, label_tensor


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices whose sequence lengths are similar, to waste little padding.

    This is the job torchtext's ``BucketIterator`` did. Each epoch: shuffle all indices, cut
    them into pools of ``batch_size * bucket_size_multiplier``, sort each pool by length, cut
    each pool into batches, then shuffle the order of the batches. Batches stay random from
    epoch to epoch, but within a batch the lengths are close. Use it as
    ``DataLoader(ds, batch_sampler=sampler, collate_fn=pad_collate)``.

    Args:
        lengths: length of every example, ``len(lengths) == len(dataset)``.
        batch_size: examples per batch.
        shuffle: False keeps the pools in index order and the batches unshuffled
            (deterministic, e.g. for evaluation).
        seed: the random stream is ``seed + epoch``; same seed and epoch, same batches.
        drop_last: drop the final incomplete batch.
        bucket_size_multiplier: pool size in batches; larger pools give tighter batches but
            less randomness. A pool of the whole dataset is a full sort.
    """

    def __init__(
        self,
        lengths: Sequence[int] | torch.Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        bucket_size_multiplier: int = 100,
    ) -> None:
        if isinstance(lengths, torch.Tensor):
            if lengths.dim() != 1:
                raise ValueError(
                    f"lengths must be 1-D, got shape {tuple(lengths.shape)}"
                )
            lengths = lengths.tolist()
        lengths = list(lengths)
        if not lengths:
            raise ValueError("lengths is empty; nothing to sample")
        for position, length in enumerate(lengths):
            if isinstance(length, bool) or not isinstance(length, int) or length < 0:
                raise ValueError(
                    f"lengths[{position}] must be a non-negative int, got {length!r}"
                )
        check_int("batch_size", batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_int("bucket_size_multiplier", bucket_size_multiplier)
        if bucket_size_multiplier < 1:
            raise ValueError(
                f"bucket_size_multiplier must be >= 1, got {bucket_size_multiplier}"
            )
        check_int("seed", seed)
        self.lengths = lengths
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.bucket_size_multiplier = bucket_size_multiplier
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch`` (call before each epoch, as with DistributedSampler)."""
        check_int("epoch", epoch)
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return len(self.lengths) // self.batch_size
        return math.ceil(len(self.lengths) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.lengths)
        order = (
            torch.randperm(n, generator=generator).tolist()
            if self.shuffle
            else range(n)
        )
        order = list(order)
        pool_size = self.batch_size * self.bucket_size_multiplier
        batches = []
        for start in range(0, n, pool_size):
            # sorted() is stable, so equal lengths keep their (random) pool order.
            pool = sorted(
                order[start : start + pool_size], key=self.lengths.__getitem__
            )
            for batch_start in range(0, len(pool), self.batch_size):
                batches.append(pool[batch_start : batch_start + self.batch_size])
        # Only the very last pool can end with a short batch (pool_size is a multiple of it).
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        if self.shuffle:
            batch_order = torch.randperm(len(batches), generator=generator).tolist()
            batches = [batches[i] for i in batch_order]
        yield from batches


# ---------------------------------------------------------------------------------------------
# Language-model batching (PyTorch word_language_model tutorial)
# ---------------------------------------------------------------------------------------------


def tokens_to_ids(
    lines: Iterable[str],
    tokenizer: Callable[[str], list[str]],
    vocab: Callable[[list[str]], list[int]],
    eos: str | None = None,
) -> torch.Tensor:
    """Flatten a corpus of lines (WikiText style) into one id stream.

    Every line is tokenised and looked up; lines that produce no token (WikiText's blank lines)
    are skipped. With ``eos`` set (e.g. ``"<eos>"``, which must be in ``vocab``), that token is
    appended after each non-empty line, as the word_language_model example does; the default
    ``None`` matches the torchtext transformer tutorial's ``data_process`` (no end-of-line token).

    Returns:
        LongTensor ``[N]``, all ids concatenated in order (``[0]`` for an empty corpus).
    """
    if isinstance(lines, str):
        raise TypeError(
            "lines must be an iterable of str (e.g. a list or an open file), not a str"
        )
    if not callable(tokenizer):
        raise TypeError(
            f"tokenizer must be callable str -> list[str], got {type(tokenizer)}"
        )
    if not callable(vocab):
        raise TypeError(
            f"vocab must be callable list[str] -> list[int], got {type(vocab)}"
        )
    eos_ids: list[int] = []
    if eos is not None:
        _check_token(eos, "eos")
        if hasattr(vocab, "__contains__") and eos not in vocab:
            raise ValueError(
                f"eos={eos!r} is not in the vocabulary; build it with specials=[..., {eos!r}] "
                "or pass eos=None"
            )
        eos_ids = vocab([eos])
    ids: list[int] = []
    for line in lines:
        if not isinstance(line, str):
            raise TypeError(f"every line must be a str, got {type(line).__name__}")
        tokens = tokenizer(line)
        if tokens:
            ids.extend(vocab(tokens))
            ids.extend(eos_ids)
    return torch.tensor(ids, dtype=torch.long)


def _check_integer_tensor(ids: object, name: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids, got dtype {ids.dtype}")
    return ids


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut one id stream into ``batch_size`` parallel streams, **batch-first**.

    The PyTorch word_language_model tutorial's ``batchify``, transposed to the layout every
    model in this book takes: the trailing ``N % batch_size`` tokens are dropped, the rest is
    split into ``batch_size`` contiguous pieces, and piece ``b`` becomes row ``b``. So
    ``out[b] == ids[b * L:(b + 1) * L]`` with ``L = N // batch_size``.

    Args:
        ids: LongTensor ``[N]``, e.g. from :func:`tokens_to_ids`.
        batch_size: number of parallel streams ``B``.

    Returns:
        LongTensor ``[B, N // B]``. Each stream must get at least 2 tokens (one input and its
        next token), else ``ValueError``.
    """
    _check_integer_tensor(ids, "ids")
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D [N], got shape {tuple(ids.shape)}")
    check_int("batch_size", batch_size, minimum=1)
    length = ids.numel() // batch_size
    if length < 2:
        raise ValueError(
            f"ids has {ids.numel()} tokens, too few for batch_size={batch_size}: every stream "
            "needs at least 2 (an input and its next token)"
        )
    return ids[: length * batch_size].long().view(batch_size, length)


def _check_source(source: object) -> torch.Tensor:
    _check_integer_tensor(source, "source")
    if source.dim() != 2:
        raise ValueError(
            f"source must be 2-D [B, L] from batchify, got {tuple(source.shape)}"
        )
    return source


def get_batch(
    source: torch.Tensor, i: int, bptt: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The language-model window starting at position ``i`` of a :func:`batchify` output.

    Args:
        source: LongTensor ``[B, L]`` from :func:`batchify`.
        i: first position, ``0 <= i < L - 1``.
        bptt: window length ``T`` (the last window may be shorter).

    Returns:
        ``(x, y)``, both LongTensor ``[B, T]`` (views of ``source``), with
        ``y[:, t] == source[:, i + t + 1]``: the next token after ``x[:, t]``.
    """
    _check_source(source)
    check_int("i", i, minimum=0)
    check_int("bptt", bptt, minimum=1)
    length = source.size(1)
    if i >= length - 1:
        raise ValueError(
            f"i must satisfy 0 <= i < {length - 1} (source has {length} positions and a window "
            f"needs a next token), got i={i}"
        )
    seq_len = min(bptt, length - 1 - i)
    return source[:, i : i + seq_len], source[:, i + 1 : i + 1 + seq_len]


def iter_bptt(
    source: torch.Tensor, bptt: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """All :func:`get_batch` windows of ``source [B, L]`` in order: ``i = 0, bptt, 2 * bptt...``.

    Every position but the first of every stream is a target exactly once, and consecutive
    windows continue each stream where the last one stopped, which is what lets an RNN carry
    its hidden state across batches. Each ``(x, y)`` is ``[B, <= bptt]``.
    """
    _check_source(source)
    check_int("bptt", bptt, minimum=1)
    # Validate now, not at the first next(): hand back a generator only once the inputs are good.
    return (get_batch(source, i, bptt) for i in range(0, source.size(1) - 1, bptt))
