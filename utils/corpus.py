"""A small corpus the project generates itself: the last-resort fallback when no real data is there.

The text comes from a seeded toy grammar, so it has real structure for a model to learn (word
order, agreement between sentiment words and labels, speaker turns) but none of the richness of
natural language. Any number computed on it says only that the code runs: the loaders in
:mod:`utils.data` announce loudly when they hand this corpus out.
"""

from __future__ import annotations

import random

# fmt: off
_SUBJECTS = ["the model", "a researcher", "the network", "the team", "a student", "the system",
             "the optimizer", "the city", "the river", "an engineer", "the council", "the album"]
_VERBS = ["learns", "describes", "predicts", "builds", "measures", "follows", "changes",
          "records", "explains", "releases", "visits", "trains"]
_OBJECTS = ["the data", "a new method", "the results", "several words", "the history",
            "a long sentence", "the language", "an old bridge", "the first season", "a small town",
            "the next token", "its own errors"]
_ADVERBS = ["quickly", "carefully", "again", "in 1998", "during the war", "after the season",
            "for the first time", "with great care", "in the north", "each year"]
_TOPICS = ["Language model", "River Thames", "Neural network", "Old Town Hall", "Summer season",
           "Token prediction", "Mountain railway", "City council", "Early history", "Music album"]
# fmt: on


def _sentence(rng: random.Random) -> str:
    parts = [rng.choice(_SUBJECTS), rng.choice(_VERBS), rng.choice(_OBJECTS)]
    if rng.random() < 0.6:
        parts.append(rng.choice(_ADVERBS))
    if rng.random() < 0.3:
        parts += ["and", rng.choice(_VERBS), rng.choice(_OBJECTS)]
    words = " ".join(parts).split()
    words[0] = words[0].capitalize()
    return " ".join(words) + " ."


def wikitext_like(n_paragraphs: int, seed: int) -> list[str]:
    """Lines in WikiText-2's layout: `` = Heading = `` lines, paragraphs, blank lines between."""
    rng = random.Random(seed)
    lines: list[str] = [""]
    for i in range(n_paragraphs):
        if i % 8 == 0:
            lines += [f" = {rng.choice(_TOPICS)} = ", ""]
        lines += [
            " " + " ".join(_sentence(rng) for _ in range(rng.randint(2, 6))) + " ",
            "",
        ]
    return lines


# fmt: off
_POSITIVE = ["wonderful", "moving", "brilliant", "funny", "beautiful", "great", "touching",
             "clever", "superb", "charming"]
_NEGATIVE = ["boring", "awful", "dull", "predictable", "terrible", "weak", "clumsy",
             "pointless", "bad", "tedious"]
# fmt: on
_NOUNS = [
    "plot",
    "acting",
    "script",
    "ending",
    "soundtrack",
    "direction",
    "cast",
    "dialogue",
]


def movie_reviews(n: int, seed: int) -> list[tuple[int, str]]:
    """``n`` balanced (label, text) reviews; label 1 = positive. Some carry a misleading word."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = i % 2
        main, other = (_POSITIVE, _NEGATIVE) if label else (_NEGATIVE, _POSITIVE)
        sentences = []
        for _ in range(rng.randint(2, 7)):
            words = main if rng.random() < 0.8 else other
            sentences.append(f"The {rng.choice(_NOUNS)} was {rng.choice(words)}.")
        verdict = "I loved it" if label else "I would not watch it again"
        out.append((label, " ".join(sentences) + f" {verdict}.<br /><br />"))
    rng.shuffle(out)
    return out


_SPEAKERS = ["FIRST CITIZEN", "MENENIUS", "CORIOLANUS", "JULIET", "ROMEO", "KING HENRY"]


def play_like(n_chars: int, seed: int) -> str:
    """Speaker turns in Tiny Shakespeare's layout (``NAME:`` line, speech, blank line)."""
    rng = random.Random(seed)
    chunks, size = [], 0
    while size < n_chars:
        speech = " ".join(
            _sentence(rng).rstrip(" .") + "," for _ in range(rng.randint(1, 3))
        )
        turn = f"{rng.choice(_SPEAKERS).title()}:\n{speech[:-1]}.\n\n"
        chunks.append(turn)
        size += len(turn)
    return "".join(chunks)[:n_chars]
