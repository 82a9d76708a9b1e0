"""Chat examples generated in code, whose answers can be checked exactly (section 5.7).

Fine-tuning data for an assistant are conversations: a system message (optional), user turns
and the assistant's replies. Public instruction datasets are large, licensed one by one and not
on this machine; these are generated instead, from five task families whose correct reply is
known exactly, so that exact match is a fair score:

==========  =======================================================  ===============
family      user turn(s)                                             assistant reply
==========  =======================================================  ===============
addition    What is 37 + 45? Reply with the number only.             82
km_to_m     How many metres are in 12 kilometres? ...                12000
upper       Write the word river in capital letters. ...             RIVER
sort        Sort these words alphabetically, separated by commas:... fig, kiwi, pear
two_turn    (a system message) 37 + 45? / Now add 10 to that.        82 / 92
==========  =======================================================  ===============

The **split** is by content, not by drawing order: each example has a ``key`` (its operands,
its word, its set of words) and :func:`split_of` sends a key to ``"heldout"`` or ``"train"`` by
a hash, so no held-out question is ever seen in training, however many examples are drawn.
The prompts share their templates on purpose: the model is taught a *format* and a skill, and
the held-out set asks the same kinds of question about other numbers and words.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from utils.checks import check_min_int

__all__ = [
    "FAMILIES",
    "SPLITS",
    "ChatExample",
    "split_of",
    "make_example",
    "make_examples",
    "near_misses",
    "wordy_reply",
]

FAMILIES = ("addition", "km_to_m", "upper", "sort", "two_turn")
SPLITS = ("train", "heldout")
HELDOUT_SHARE = 5  # one key in five is held out

_WORDS = (
    "apple", "river", "stone", "cloud", "tiger", "garden", "window", "summer", "bread",
    "candle", "forest", "silver", "rabbit", "pencil", "orange", "bridge", "winter", "mirror",
    "castle", "planet", "button", "jacket", "market", "rocket", "basket", "island", "violin",
    "spider", "ladder", "desert", "kettle", "lemon", "turtle", "anchor", "meadow", "pillow",
    "harbor", "falcon", "copper", "thunder", "marble", "lantern", "valley", "carpet", "walnut",
    "puzzle", "saddle", "tunnel",
)  # fmt: skip
_FRUITS = (
    "apple", "banana", "cherry", "date", "fig", "grape", "kiwi", "lemon", "lime", "mango",
    "melon", "olive", "peach", "pear", "plum", "quince",
)  # fmt: skip
_CALCULATOR = "You are a calculator. Reply with numbers only."


@dataclass(frozen=True)
class ChatExample:
    """One conversation whose last message is the assistant's reply to check.

    ``messages``: ``({"role": ..., "content": ...}, ...)``, ending with the assistant;
    ``key``: the content that defines the split (family and operands).
    """

    family: str
    messages: tuple[dict, ...]
    key: str

    @property
    def prompt(self) -> list[dict]:
        """The conversation up to (without) the last reply: what the model is asked."""
        return list(self.messages[:-1])

    @property
    def answer(self) -> str:
        """The correct last reply, exactly."""
        return self.messages[-1]["content"]

    @property
    def user_text(self) -> str:
        """All user turns joined by newlines (what a contamination check compares)."""
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")


def split_of(key: str) -> str:
    """``"heldout"`` for one key in five (by SHA-256 of the key), else ``"train"``."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty str, got {key!r}")
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return "heldout" if digest[0] % HELDOUT_SHARE == 0 else "train"


def _chat(*turns: tuple[str, str]) -> tuple[dict, ...]:
    return tuple({"role": role, "content": content} for role, content in turns)


def make_example(family: str, rng: random.Random) -> ChatExample:
    """One example of ``family``, its operands drawn from ``rng``."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
    if family == "addition":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        question = f"What is {a} + {b}? Reply with the number only."
        return ChatExample(
            family,
            _chat(("user", question), ("assistant", str(a + b))),
            f"addition:{a}+{b}",
        )
    if family == "km_to_m":
        k = rng.randint(2, 999)
        question = f"How many metres are in {k} kilometres? Reply with the number only."
        return ChatExample(
            family,
            _chat(("user", question), ("assistant", str(k * 1000))),
            f"km_to_m:{k}",
        )
    if family == "upper":
        word = rng.choice(_WORDS)
        question = (
            f"Write the word {word} in capital letters. Reply with the word only."
        )
        return ChatExample(
            family,
            _chat(("user", question), ("assistant", word.upper())),
            f"upper:{word}",
        )
    if family == "sort":
        words = rng.sample(_FRUITS, 3)
        question = "Sort these words alphabetically, separated by commas: " + ", ".join(
            words
        )
        answer = ", ".join(sorted(words))
        return ChatExample(
            family, _chat(("user", question), ("assistant", answer)), f"sort:{answer}"
        )
    a, b = rng.randint(10, 89), rng.randint(10, 89)
    messages = _chat(
        ("system", _CALCULATOR),
        ("user", f"What is {a} + {b}?"),
        ("assistant", str(a + b)),
        ("user", "Now add 10 to that."),
        ("assistant", str(a + b + 10)),
    )
    return ChatExample(family, messages, f"two_turn:{a}+{b}")


def make_examples(
    n: int, split: str, seed: int = 0, families: tuple[str, ...] = FAMILIES
) -> list[ChatExample]:
    """``n`` examples of ``split`` with distinct keys, families drawn uniformly.

    Deterministic given ``(n, split, seed, families)``. Raises if ``split`` cannot supply
    ``n`` distinct examples (the sort and upper families hold a few hundred keys each).
    """
    check_min_int("n", n)
    check_min_int("seed", seed, minimum=0)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not families or any(f not in FAMILIES for f in families):
        raise ValueError(
            f"families must be a non-empty subset of {FAMILIES}, got {families!r}"
        )
    rng = random.Random(f"{split}:{seed}")
    examples: list[ChatExample] = []
    seen: set[str] = set()
    misses = (
        0  # draws since the last new example: a long run means the split is exhausted
    )
    while len(examples) < n:
        misses += 1
        if misses > 20_000:
            raise ValueError(
                f"could not draw {n} distinct {split} examples from {families} "
                f"(found {len(examples)}); ask for fewer"
            )
        example = make_example(rng.choice(families), rng)
        if example.key in seen or split_of(example.key) != split:
            continue
        seen.add(example.key)
        examples.append(example)
        misses = 0
    return examples


def near_misses(example: ChatExample) -> list[str]:
    """Two wrong replies close to the right one, in the asked-for format.

    A number off by ten and one with its last digit dropped; the word in lower case and
    capitalised; the sorted words reversed and rotated. Used as the wrong candidates of a
    multiple-choice test and as rejected replies of preference pairs.
    """
    if not isinstance(example, ChatExample):
        raise TypeError(f"example must be a ChatExample, got {type(example).__name__}")
    answer = example.answer
    if example.family == "upper":
        return [answer.lower(), answer.capitalize()]
    if example.family == "sort":
        words = answer.split(", ")
        return [", ".join(words[::-1]), ", ".join(words[1:] + words[:1])]
    return [str(int(answer) + 10), answer[:-1]]


def wordy_reply(example: ChatExample) -> str:
    """The right answer inside a sentence: the content kept, the asked-for format broken."""
    if not isinstance(example, ChatExample):
        raise TypeError(f"example must be a ChatExample, got {type(example).__name__}")
    if example.family == "upper":
        return f"The word in capital letters is {example.answer}."
    if example.family == "sort":
        return f"In alphabetical order, the words are: {example.answer}."
    return f"The answer is {example.answer}."
