"""The graders of chapter 6c's exercises (prompting an instruct model); see :mod:`utils.grader`."""

from __future__ import annotations

import re
import string
from collections import Counter

from utils.grader import exercise
from utils.textmetrics import exact_match as _book_em
from utils.textmetrics import normalize_answer, token_f1

# SmolLM2-135M-Instruct's chat template (ChatML), as its tokenizer writes it.
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _chat(messages, add_generation_prompt=True, default_system=True):
    text = ""
    if default_system and messages[0]["role"] != "system":
        text += f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


_CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of Italy?"},
    ],
    [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Nice to meet you, Ada!"},
        {"role": "user", "content": "What is my name?"},
    ],
]


@exercise(
    "06c.chat_template",
    "Write SmolLM2's chat template by hand",
    difficulty=2,
    reference=_chat,
    wrong=[
        (
            lambda ms, add_generation_prompt=True: _chat(
                ms, add_generation_prompt, False
            ),
            "default system",
        ),
        (lambda ms, add_generation_prompt=True: _chat(ms, False), "assistant's turn"),
        (
            lambda ms, add_generation_prompt=True: _chat(
                ms, add_generation_prompt
            ).replace("<|im_end|>\n", "<|im_end|>"),
            "first difference",
        ),
        (
            lambda ms, add_generation_prompt=True: (
                f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
                + _chat(ms, add_generation_prompt, False)
            ),
            "already has a system message",
        ),
    ],
)
def chat_template(answer):
    """``answer(messages, add_generation_prompt=True)`` -> ``str``: the prompt text SmolLM2's
    tokenizer builds with ``apply_chat_template(messages, tokenize=False)``."""
    for messages in _CONVERSATIONS:
        for gen in (True, False):
            got = answer([dict(m) for m in messages], add_generation_prompt=gen)
            if not isinstance(got, str):
                yield f"return the prompt as a str, got {type(got).__name__}"
                return
            want = _chat(messages, gen)
            if got == want:
                continue
            has_system = messages[0]["role"] == "system"
            where = f"{len(messages)} message(s), add_generation_prompt={gen}"
            if not has_system and got == _chat(messages, gen, default_system=False):
                yield (
                    f"{where}: no system message was given, and SmolLM2's template then adds "
                    f"its default system message first: {DEFAULT_SYSTEM!r}"
                )
            elif has_system and got.count("<|im_start|>system") > 1:
                yield (
                    f"{where}: the conversation already has a system message; the default one "
                    "is added only when the first message is not from the system"
                )
            elif gen and got == _chat(messages, False):
                yield (
                    f"{where}: the prompt must end by opening the assistant's turn, "
                    "'<|im_start|>assistant\\n', so that the model writes the answer"
                )
            elif not gen and got == _chat(messages, True):
                yield f"{where}: without add_generation_prompt, do not open the assistant's turn"
            else:
                i = next(
                    (
                        k
                        for k, (a, b) in enumerate(zip(got, want, strict=False))
                        if a != b
                    ),
                    min(len(got), len(want)),
                )
                yield (
                    f"{where}: first difference at character {i}: you wrote "
                    f"{got[max(0, i - 12) : i + 12]!r}, the template writes "
                    f"{want[max(0, i - 12) : i + 12]!r}"
                )
            return


_PUNCT = set(string.punctuation)


def _normalize(text):
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _em(prediction, answers):
    return any(_normalize(prediction) == _normalize(a) for a in answers)


_EM_CASES = [
    ("Paris", ["Paris"], True),
    ("paris.", ["Paris"], True),
    ("The Eiffel Tower", ["Eiffel Tower"], True),
    ("1917", ["in 1917", "1917"], True),
    ("  May  21 , 1917 ", ["21 May 1917", "May 21, 1917"], True),
    ("It was founded in 1917.", ["1917"], False),
    ("London", ["Paris"], False),
    ("an apple", ["apple"], True),
    ("Theatre", ["atre"], False),
]


@exercise(
    "06c.exact_match",
    "Exact match after SQuAD's normalisation",
    difficulty=1,
    reference=_em,
    wrong=[
        (lambda p, answers: p in answers, "lower case"),
        (
            lambda p, answers: any(
                " ".join("".join(c for c in p.lower() if c not in _PUNCT).split())
                == " ".join("".join(c for c in a.lower() if c not in _PUNCT).split())
                for a in answers
            ),
            "articles",
        ),
        (
            lambda p, answers: _normalize(p) == _normalize(answers[0]),
            "any of the accepted",
        ),
        (
            lambda p, answers: any(_normalize(a) in _normalize(p) for a in answers),
            "contains",
        ),
    ],
)
def exact_match(answer):
    """``answer(prediction, answers)`` -> bool: the normalised prediction equals one of the
    normalised accepted answers (lower case, no punctuation, no a/an/the, single spaces)."""
    for prediction, answers, want in _EM_CASES:
        assert (
            _book_em(prediction, answers) == want
        )  # the cases agree with the book's metric
        got = answer(prediction, list(answers))
        if not isinstance(got, (bool, int)) or got not in (0, 1, True, False):
            yield f"return True or False, got {got!r}"
            return
        if bool(got) == want:
            continue
        case = f"prediction {prediction!r}, accepted {answers}"
        if want:
            norm_p = _normalize(prediction)
            if len(answers) > 1 and norm_p != _normalize(answers[0]):
                yield f"{case}: a match with any of the accepted answers counts"
            elif (
                "the" in prediction.lower().split()
                or "an" in prediction.lower().split()
            ):
                yield (
                    f"{case}: both normalise to {norm_p!r}; SQuAD's normalisation drops the "
                    "articles a, an, the"
                )
            else:
                yield (
                    f"{case}: both normalise to {norm_p!r}; lower case, drop punctuation and "
                    "articles, and collapse spaces before comparing"
                )
        elif any(_normalize(a) in _normalize(prediction) for a in answers):
            yield (
                f"{case}: the reply contains the answer but is not the answer; that is the "
                "lenient 'contains' score, exact match needs equality"
            )
        else:
            yield f"{case}: these differ after normalisation; exact match must be False"
        return


def _f1(prediction, answers):
    pred = _normalize(prediction).split()
    best = 0.0
    for a in answers:
        gold = _normalize(a).split()
        if not pred or not gold:
            best = max(best, float(pred == gold))
            continue
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            prec, rec = common / len(pred), common / len(gold)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def _f1_sets(prediction, answers):
    pred = _normalize(prediction).split()
    best = 0.0
    for a in answers:
        gold = _normalize(a).split()
        common = len(set(pred) & set(gold))
        if common and pred and gold:
            prec, rec = common / len(pred), common / len(gold)
            best = max(best, 2 * prec * rec / (prec + rec))
    return best


def _f1_raw(prediction, answers):  # no normalisation: case, punctuation, articles count
    best = 0.0
    for a in answers:
        pred, gold = prediction.split(), a.split()
        common = sum((Counter(pred) & Counter(gold)).values())
        if common:
            best = max(best, 2 * common / (len(pred) + len(gold)))
    return best


def _f1_mean(prediction, answers):
    return sum(_f1(prediction, [a]) for a in answers) / len(answers)


def _precision(prediction, answers):
    pred = _normalize(prediction).split()
    return max(
        sum((Counter(pred) & Counter(_normalize(a).split())).values())
        / max(len(pred), 1)
        for a in answers
    )


_F1_CASES = [
    ("Paris", ["Paris"]),
    ("in the year 1917", ["1917"]),
    ("the war graves commission", ["Commonwealth War Graves Commission"]),
    ("graves graves", ["war graves graves"]),
    ("May 1917", ["21 May 1917", "1917"]),
    ("London", ["Paris"]),
    ("", ["Paris"]),
    ("the", ["a"]),
]


@exercise(
    "06c.token_f1",
    "SQuAD's word-overlap F1",
    difficulty=2,
    reference=_f1,
    wrong=[
        (_f1_sets, "multiplicity"),
        (_f1_mean, "best"),
        (_precision, "recall"),
        (_f1_raw, "normalise"),
    ],
)
def token_f1_exercise(answer):
    """``answer(prediction, answers)`` -> float in [0, 1]: the best over the accepted answers of
    the harmonic mean of word precision and recall (words counted with multiplicity, after
    normalisation); compared with ``utils.textmetrics.token_f1``."""
    for prediction, answers in _F1_CASES:
        want = token_f1(prediction, answers)
        got = float(answer(prediction, list(answers)))
        if abs(got - want) < 1e-9:
            continue
        case = f"prediction {prediction!r}, accepted {answers}"
        pred = normalize_answer(prediction).split()
        if not pred and not any(normalize_answer(a) for a in answers):
            yield (
                f"{case}: both normalise to the empty string; SQuAD scores two empty "
                f"answers as a match, F1 = 1 (got {got:.3f})"
            )
        elif abs(got - _f1_sets(prediction, answers)) < 1e-9 and len(set(pred)) < len(
            pred
        ):
            yield (
                f"{case}: F1 {got:.3f} counts shared words as a set; count them with "
                "multiplicity (a word is shared min(count in prediction, count in answer) "
                f"times, Counter & Counter): {want:.3f}"
            )
        elif len(answers) > 1 and abs(got - _f1_mean(prediction, answers)) < 1e-9:
            yield (
                f"{case}: {got:.3f} averages over the accepted answers; take the best "
                f"match: {want:.3f}"
            )
        elif abs(got - _precision(prediction, answers)) < 1e-9:
            yield (
                f"{case}: {got:.3f} is the precision alone; F1 is the harmonic mean of "
                f"precision and recall: {want:.3f}"
            )
        elif not prediction and want == 0.0:
            yield f"{case}: an empty prediction shares no word: F1 = 0, got {got:.3f}"
        else:
            yield (
                f"{case}: F1 {got:.3f}, expected {want:.3f} (normalise both texts first: "
                "lower case, no punctuation, no a/an/the)"
            )
        return
