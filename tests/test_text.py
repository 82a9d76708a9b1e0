"""Tests for utils.text: torchtext-compatible tokenizer/vocab, BPE, bucketing, LM batching.

Expected tokenizer outputs are written by hand from torchtext 0.18's documented rules; vocab
expectations are counted by hand or checked against an independent ordering property.
"""

import random
import time
from collections import Counter, OrderedDict

import pytest
import torch
from torch.utils.data import DataLoader

from utils.text import (
    BucketBatchSampler,
    CharTokenizer,
    OutOfVocabularyError,
    Vocab,
    VocabIndexError,
    batchify,
    build_vocab_from_iterator,
    decode,
    encode,
    get_batch,
    get_tokenizer,
    iter_bptt,
    pad_collate,
    tokens_to_ids,
    train_bpe_tokenizer,
    vocab,
)

# ----------------------------------------------------------------------------- get_tokenizer


def test_basic_english_matches_torchtext_docs_example():
    tokenizer = get_tokenizer("basic_english")
    assert tokenizer("You can now install TorchText using pip!") == [
        "you",
        "can",
        "now",
        "install",
        "torchtext",
        "using",
        "pip",
        "!",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # apostrophe split off as its own token; double quotes dropped; parentheses and period
        (
            'He said "don\'t" (twice).',
            ["he", "said", "don", "'", "t", "(", "twice", ")", "."],
        ),
        ("It's", ["it", "'", "s"]),
        # <br /> (any case, after lower-casing) becomes a space; ; and : are dropped
        (
            "Great movie.<br /><BR />Loved it; really: yes?",
            ["great", "movie", ".", "loved", "it", "really", "yes", "?"],
        ),
        ("a<br/>b", ["a<br/>b"]),  # only the exact "<br />" spelling is a rule
        ("3.14, 1,000!", ["3", ".", "14", ",", "1", ",", "000", "!"]),
        (
            "state-of-the-art $5 #1",
            ["state-of-the-art", "$5", "#1"],
        ),  # untouched characters
        ("U.S.A.", ["u", ".", "s", ".", "a", "."]),
        ("  \t\n ", []),
        ("", []),
    ],
)
def test_basic_english_rules(text, expected):
    assert get_tokenizer("basic_english")(text) == expected


def test_none_tokenizer_is_plain_whitespace_split():
    assert get_tokenizer(None)("  Hello, World!\tfoo\n") == ["Hello,", "World!", "foo"]


def test_callable_is_returned_unchanged():
    def my_tokenizer(s):
        return list(s)

    assert get_tokenizer(my_tokenizer) is my_tokenizer


@pytest.mark.parametrize("name", ["spacy", "moses", "toktok", "basic-english"])
def test_unsupported_tokenizer_name_explains_alternatives(name):
    with pytest.raises(ValueError, match="basic_english") as info:
        get_tokenizer(name)
    assert name in str(info.value)
    assert "spaCy" in str(info.value)


def test_basic_english_rejects_other_languages_and_bad_types():
    with pytest.raises(ValueError, match="language"):
        get_tokenizer("basic_english", language="de")
    with pytest.raises(TypeError):
        get_tokenizer(42)
    with pytest.raises(TypeError):
        get_tokenizer("basic_english")(b"bytes")


# ----------------------------------------------------------------------------- vocabulary

CORPUS = [["b", "a", "c", "a"], ["c", "b", "d"], ["a"]]  # a:3, b:2, c:2, d:1


def test_vocab_orders_by_frequency_then_lexicographically():
    assert build_vocab_from_iterator(CORPUS).get_itos() == ["a", "b", "c", "d"]
    # all ties: pure lexicographic order, independent of the order of appearance
    assert build_vocab_from_iterator([["z", "y", "x", "B"]]).get_itos() == [
        "B",
        "x",
        "y",
        "z",
    ]


def test_vocab_order_property_on_random_corpus():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(40)]
    corpus = [
        [rng.choice(words[: rng.randint(1, 40)]) for _ in range(20)] for _ in range(50)
    ]
    counts = Counter(token for line in corpus for token in line)
    itos = build_vocab_from_iterator(iter(corpus), specials=["<unk>"]).get_itos()
    assert itos[0] == "<unk>"
    assert sorted(itos[1:]) == sorted(counts)  # every token exactly once
    for left, right in zip(itos[1:], itos[2:], strict=False):
        assert counts[left] > counts[right] or (
            counts[left] == counts[right] and left < right
        )


def test_specials_first_or_last_and_never_duplicated():
    corpus = CORPUS + [["<unk>"] * 5]  # a special also occurring in the text
    first = build_vocab_from_iterator(corpus, specials=["<unk>", "<pad>"])
    assert first.get_itos() == ["<unk>", "<pad>", "a", "b", "c", "d"]
    last = build_vocab_from_iterator(
        corpus, specials=["<unk>", "<pad>"], special_first=False
    )
    assert last.get_itos() == ["a", "b", "c", "d", "<unk>", "<pad>"]


def test_min_freq_applies_to_corpus_tokens_only():
    v = build_vocab_from_iterator(CORPUS, min_freq=2, specials=["<unk>"])
    assert v.get_itos() == ["<unk>", "a", "b", "c"]  # <unk> kept with frequency 0


def test_max_tokens_counts_the_specials():
    v = build_vocab_from_iterator(CORPUS, specials=["<unk>", "<pad>"], max_tokens=4)
    assert v.get_itos() == ["<unk>", "<pad>", "a", "b"]
    assert len(v) == 4
    # torchtext's rule: truncate to max_tokens - len(specials) *before* removing specials and
    # applying min_freq, so the vocab can end up smaller than max_tokens.
    corpus = [["<unk>"] * 5 + ["a"] * 3 + ["b"] * 2]
    quirk = build_vocab_from_iterator(corpus, specials=["<unk>"], max_tokens=3)
    assert quirk.get_itos() == ["<unk>", "a"]
    assert build_vocab_from_iterator(CORPUS, min_freq=3, max_tokens=3).get_itos() == [
        "a"
    ]
    with pytest.raises(ValueError, match="max_tokens"):
        build_vocab_from_iterator(CORPUS, specials=["<unk>", "<pad>"], max_tokens=2)


def test_default_index_and_out_of_vocabulary_error():
    v = build_vocab_from_iterator(CORPUS, specials=["<unk>"])
    assert v.get_default_index() is None
    with pytest.raises(OutOfVocabularyError) as info:
        v["zebra"]
    message = str(info.value)
    assert "'zebra'" in message and "set_default_index" in message
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, KeyError)
    v.set_default_index(v["<unk>"])
    assert v.get_default_index() == 0
    assert v["zebra"] == 0
    assert v(["a", "zebra", "d"]) == [1, 0, 4]
    v.set_default_index(None)
    with pytest.raises(RuntimeError):
        v(["zebra"])


def test_itos_stoi_and_lookups_are_consistent():
    v = build_vocab_from_iterator(CORPUS, specials=["<pad>", "<unk>"])
    itos, stoi = v.get_itos(), v.get_stoi()
    assert len(itos) == len(stoi) == len(v) == 6
    for index, token in enumerate(itos):
        assert stoi[token] == index == v[token]
        assert v.lookup_token(index) == token
        assert token in v
    assert "zebra" not in v and 3 not in v
    assert v.lookup_tokens(v.lookup_indices(itos)) == itos
    assert v.lookup_tokens(torch.tensor([2, 0])) == ["a", "<pad>"]
    itos.append("mutated")  # get_itos returns a copy
    assert len(v.get_itos()) == 6


def test_lookup_token_out_of_range():
    v = build_vocab_from_iterator(CORPUS)
    for bad in (4, -1):
        with pytest.raises(VocabIndexError, match="out of range"):
            v.lookup_token(bad)
    assert issubclass(VocabIndexError, IndexError) and issubclass(
        VocabIndexError, RuntimeError
    )
    with pytest.raises(TypeError):
        v.lookup_token("a")


def test_insert_and_append_token():
    v = Vocab(["a", "b", "c"])
    v.insert_token("<unk>", 1)
    assert v.get_itos() == ["a", "<unk>", "b", "c"]
    assert [v[t] for t in ["a", "<unk>", "b", "c"]] == [0, 1, 2, 3]
    v.append_token("d")
    assert v["d"] == 4 and v.lookup_token(4) == "d"
    with pytest.raises(ValueError, match="already exists"):
        v.append_token("a")
    with pytest.raises(VocabIndexError):
        v.insert_token("e", 6)
    with pytest.raises(ValueError, match="duplicate"):
        Vocab(["a", "a"])


def test_vocab_factory_keeps_mapping_order_without_mutating_it():
    counts = OrderedDict([("z", 5), ("<unk>", 9), ("a", 1), ("m", 3)])
    v = vocab(counts, min_freq=2, specials=["<unk>"])
    assert v.get_itos() == ["<unk>", "z", "m"]
    assert list(counts) == [
        "z",
        "<unk>",
        "a",
        "m",
    ]  # torchtext popped specials; we do not
    assert (
        vocab(counts, special_first=False, specials=["<pad>"]).get_itos()[-1] == "<pad>"
    )


def test_vocab_argument_validation():
    with pytest.raises(ValueError, match="min_freq"):
        build_vocab_from_iterator(CORPUS, min_freq=0)
    with pytest.raises(TypeError, match="yielded a str"):
        build_vocab_from_iterator(["a line of text"])
    with pytest.raises(ValueError, match="duplicates"):
        build_vocab_from_iterator(CORPUS, specials=["<unk>", "<unk>"])
    with pytest.raises(TypeError):
        build_vocab_from_iterator(CORPUS)("not a list")


# ----------------------------------------------------------------------------- subword / char

TRAIN_LINES = [
    f"The quick brown fox {i} jumps over the lazy dog; the dog sleeps, the fox runs."
    for i in range(300)
]


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(TRAIN_LINES, vocab_size=320)


def test_bpe_trains_fast_and_learns_merges():
    start = time.perf_counter()
    tokenizer = train_bpe_tokenizer(TRAIN_LINES, vocab_size=320)
    assert time.perf_counter() - start < 1.0
    assert 256 + 4 < tokenizer.get_vocab_size() <= 320
    ids = encode(tokenizer, "the quick brown fox")
    assert len(ids) < len(b"the quick brown fox") / 2  # merges compress frequent words


def test_bpe_special_tokens_get_the_first_ids(bpe):
    for index, token in enumerate(["<pad>", "<unk>", "<bos>", "<eos>"]):
        assert bpe.token_to_id(token) == index


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox.",
        "  leading and trailing spaces  ",
        "tabs\tand\nnewlines\r\n",
        "Unicode: héllo wörld, 日本語, emoji 🦊🐶, zero\u200bwidth",
        "a text that mentions <eos> and <pad> literally",
        "",
    ],
)
def test_bpe_round_trip_is_exact(bpe, text):
    ids = encode(bpe, text)
    assert decode(bpe, ids) == text
    assert decode(bpe, torch.tensor(ids, dtype=torch.long)) == text


def test_bpe_lowercase_and_validation():
    lower = train_bpe_tokenizer(TRAIN_LINES[:50], vocab_size=300, lowercase=True)
    assert decode(lower, encode(lower, "The FOX")) == "the fox"
    with pytest.raises(ValueError, match="vocab_size must be >= 260"):
        train_bpe_tokenizer(TRAIN_LINES, vocab_size=100)
    with pytest.raises(TypeError):
        train_bpe_tokenizer("one string", vocab_size=300)
    with pytest.raises(ValueError, match="empty"):
        train_bpe_tokenizer([], vocab_size=300)


def test_char_tokenizer_round_trip_and_unknown_char():
    text = "hello world!\nto be or not to be"
    tokenizer = CharTokenizer.from_text(text)
    assert tokenizer.itos == sorted(set(text))
    assert tokenizer.vocab_size == len(set(text))
    ids = tokenizer.encode(text)
    assert ids[0] == sorted(set(text)).index("h")
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(torch.tensor(ids)) == text
    with pytest.raises(ValueError, match="'Z'") as info:
        tokenizer.encode("heZlo")
    assert "position 2" in str(info.value)
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode([tokenizer.vocab_size])


# ----------------------------------------------------------------------------- pad_collate


def test_pad_collate_with_labels_matches_manual_padding():
    batch = [([5, 6, 7], 1), ([8], 0), (torch.tensor([9, 10]), 1)]
    padded, lengths, labels = pad_collate(batch, pad_idx=0)
    expected = torch.tensor([[5, 6, 7], [8, 0, 0], [9, 10, 0]])
    torch.testing.assert_close(padded, expected)
    assert padded.dtype == torch.long
    torch.testing.assert_close(lengths, torch.tensor([3, 1, 2]))
    torch.testing.assert_close(labels, torch.tensor([1, 0, 1]))
    seq_first, _, _ = pad_collate(batch, pad_idx=-1, batch_first=False)
    torch.testing.assert_close(seq_first, torch.where(expected == 0, -1, expected).t())


def test_pad_collate_without_labels_and_tensor_labels():
    # [[1, 2], [3, 4]] are two id sequences, not an (ids, label) pair
    padded, lengths, labels = pad_collate([[1, 2], [3, 4, 5]], pad_idx=9)
    torch.testing.assert_close(padded, torch.tensor([[1, 2, 9], [3, 4, 5]]))
    torch.testing.assert_close(lengths, torch.tensor([2, 3]))
    assert labels is None
    _, _, stacked = pad_collate(
        [([1], torch.tensor([0.5, 1.0])), ([2, 3], torch.tensor([1.0, 0]))]
    )
    torch.testing.assert_close(stacked, torch.tensor([[0.5, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="empty"):
        pad_collate([])
    with pytest.raises(TypeError, match="integer"):
        pad_collate([torch.tensor([0.5])])


# ----------------------------------------------------------------------------- bucketing


def _random_lengths(n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 101, (n,), generator=generator).tolist()


def _padding_waste(batches, lengths):
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


def test_bucket_sampler_covers_every_index_once_per_epoch():
    lengths = _random_lengths(1003)
    sampler = BucketBatchSampler(lengths, batch_size=32, bucket_size_multiplier=5)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 32  # ceil(1003 / 32)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(1003))
        assert sorted(len(b) for b in batches)[0] == 1003 % 32


def test_bucket_sampler_is_deterministic_and_reshuffles_per_epoch():
    lengths = _random_lengths(500)
    a = BucketBatchSampler(lengths, batch_size=16, seed=3, bucket_size_multiplier=4)
    b = BucketBatchSampler(lengths, batch_size=16, seed=3, bucket_size_multiplier=4)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    c = BucketBatchSampler(lengths, batch_size=16, seed=4, bucket_size_multiplier=4)
    assert list(c) != first


def test_bucket_sampler_drop_last_and_no_shuffle():
    lengths = _random_lengths(100)
    dropped = list(BucketBatchSampler(lengths, batch_size=32, drop_last=True))
    assert len(dropped) == 3 and all(len(b) == 32 for b in dropped)
    assert len({i for b in dropped for i in b}) == 96
    ordered = list(BucketBatchSampler(lengths, batch_size=10, shuffle=False))
    flat_lengths = [lengths[i] for b in ordered for i in b]
    assert flat_lengths == sorted(lengths)  # one pool holds everything: a full sort


def test_bucketing_wastes_much_less_padding_than_random_batches():
    lengths = _random_lengths(2000, seed=1)
    order = torch.randperm(2000, generator=torch.Generator().manual_seed(1)).tolist()
    random_waste = _padding_waste(
        [order[i : i + 32] for i in range(0, 2000, 32)], lengths
    )

    def bucket_waste(multiplier):
        sampler = BucketBatchSampler(
            lengths, batch_size=32, bucket_size_multiplier=multiplier
        )
        return _padding_waste(list(sampler), lengths)

    # Lengths uniform in 1..100: a random batch's max is ~97 while its mean is ~50, so about
    # half of the padded tensor is padding. Sorting pools of 10 batches leaves each batch a
    # length spread of ~10 (about 10% waste); one pool of everything (default multiplier,
    # 3200 > 2000) leaves ~1.5%. A pool of a single batch cannot help at all.
    assert random_waste > 0.45
    assert bucket_waste(10) < 0.12
    assert bucket_waste(100) < 0.02
    assert bucket_waste(1) > 0.45


def test_bucket_sampler_with_dataloader_and_pad_collate():
    lengths = _random_lengths(64)
    dataset = [(list(range(1, n + 1)), n % 2) for n in lengths]
    sampler = BucketBatchSampler(lengths, batch_size=8)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=pad_collate)
    seen = 0
    for padded, batch_lengths, labels in loader:
        assert padded.shape == (len(batch_lengths), int(batch_lengths.max()))
        torch.testing.assert_close(labels, batch_lengths % 2)
        seen += len(labels)
    assert seen == 64


def test_bucket_sampler_validation():
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler([1, 2], batch_size=0)
    with pytest.raises(ValueError, match=r"lengths\[1\]"):
        BucketBatchSampler([1, -2], batch_size=1)
    with pytest.raises(ValueError, match="empty"):
        BucketBatchSampler([], batch_size=1)


# ----------------------------------------------------------------------------- LM batching


def test_batchify_is_batch_first_and_drops_the_tail():
    ids = torch.arange(26)
    source = batchify(ids, 4)
    assert source.shape == (4, 6) and source.dtype == torch.long
    for b in range(4):
        torch.testing.assert_close(source[b], torch.arange(b * 6, b * 6 + 6))
    assert 24 not in source and 25 not in source  # 26 % 4 trailing tokens dropped
    # the same stream rule as lm_recipes: each stream needs an input and its next token
    for short in (torch.arange(3), torch.arange(7)):
        with pytest.raises(ValueError, match="too few"):
            batchify(short, 4)
    assert batchify(torch.arange(8), 4).shape == (4, 2)
    with pytest.raises(TypeError, match="integer"):
        batchify(torch.rand(10), 2)
    with pytest.raises(TypeError, match="batch_size"):
        batchify(ids, 2.0)
    with pytest.raises(ValueError, match="batch_size"):
        batchify(ids, 0)


def test_text_and_lm_recipes_share_one_batchify():
    from utils import lm_recipes

    assert lm_recipes.batchify is batchify
    columns = batchify(torch.arange(103), 4)
    chunks = lm_recipes.eval_chunks(columns, 7)
    windows = list(iter_bptt(columns, 7))
    assert len(chunks) == len(windows)
    for (x, y), (wx, wy) in zip(chunks, windows, strict=True):
        assert torch.equal(x, wx) and torch.equal(y, wy)


def test_get_batch_is_batch_first_and_shifted_by_one():
    source = batchify(
        torch.arange(100, 140), 4
    )  # [4, 10]; row b = 100 + 10b .. 109 + 10b
    x, y = get_batch(source, 2, bptt=3)
    assert x.shape == y.shape == (4, 3)
    for b in range(4):
        start = 100 + 10 * b + 2
        torch.testing.assert_close(x[b], torch.arange(start, start + 3))
        torch.testing.assert_close(y[b], torch.arange(start + 1, start + 4))
    # last window is shorter: from i=8 only one next token remains
    x_last, y_last = get_batch(source, 8, bptt=3)
    assert x_last.shape == (4, 1)
    torch.testing.assert_close(y_last[:, 0], source[:, 9])
    with pytest.raises(ValueError, match="i must satisfy"):
        get_batch(source, 9, bptt=3)
    with pytest.raises(ValueError, match="bptt"):
        get_batch(source, 0, bptt=0)
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        get_batch(torch.arange(10), 0, bptt=2)


def test_iter_bptt_windows_tile_each_stream():
    stream = torch.randint(0, 50, (103,), generator=torch.Generator().manual_seed(0))
    source = batchify(stream, 5)  # [5, 20]
    windows = list(iter_bptt(source, bptt=6))
    assert [x.shape[1] for x, _ in windows] == [6, 6, 6, 1]  # 19 predictable steps
    xs = torch.cat([x for x, _ in windows], dim=1)
    ys = torch.cat([y for _, y in windows], dim=1)
    for b in range(5):
        column = stream[b * 20 : (b + 1) * 20]
        torch.testing.assert_close(xs[b], column[:-1])
        torch.testing.assert_close(ys[b], column[1:])
    with pytest.raises(ValueError, match="bptt"):
        iter_bptt(source, bptt=0)  # validated before the first next()


def test_tokens_to_ids_flattens_lines_and_adds_eos():
    lines = ["Hello world.", "", "   \n", "World again!"]
    tokenizer = get_tokenizer("basic_english")
    v = build_vocab_from_iterator(
        (tokenizer(line) for line in lines), specials=["<unk>", "<eos>"]
    )
    # tokens: world x2; then ! . again hello once each (lexicographic)
    assert v.get_itos() == ["<unk>", "<eos>", "world", "!", ".", "again", "hello"]
    with_eos = tokens_to_ids(lines, tokenizer, v, eos="<eos>")
    torch.testing.assert_close(with_eos, torch.tensor([6, 2, 4, 1, 2, 5, 3, 1]))
    without = tokens_to_ids(lines, tokenizer, v)
    torch.testing.assert_close(without, torch.tensor([6, 2, 4, 2, 5, 3]))
    assert tokens_to_ids([], tokenizer, v).shape == (0,)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokens_to_ids(lines, tokenizer, v, eos="</s>")
    with pytest.raises(OutOfVocabularyError):
        tokens_to_ids(["unseen words"], tokenizer, v)


def test_text_uses_the_one_check_int():
    from utils import checks, text

    assert not hasattr(text, "_check_int")
    assert text.check_int is checks.check_int
    with pytest.raises(TypeError, match="min_freq must be an int, got str"):
        text.build_vocab_from_iterator([["a"]], min_freq="2")
