"""The library code the chapters print fits the page: no line of a listing over 88 characters.

Chapters show library functions with ``inspect.getsource`` or ``utils.listing.show_source``.
The page shows 88 characters of code without a scroll bar (CONTRIBUTING, "Code width"), so
every function they print must keep within that. :data:`PRINTED` maps the expression a
notebook passes to the object it names; a test fails when a notebook prints something that is
not in it, so that a new listing is checked too.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WIDTH = 88

# expression in the notebook -> "module:qualified.name"
PRINTED = {
    "NGramLM._prob_of_ids": "utils.ngram:NGramLM._prob_of_ids",
    "wordvec.sgns_loss": "utils.wordvec:sgns_loss",
    "MultiHeadAttention.forward": "utils.attention:MultiHeadAttention.forward",
    "book_optim.SGD.step": "utils.optim:SGD.step",
    "book_optim.Adam.step": "utils.optim:Adam.step",
    "Trainer.train_step": "utils.train:Trainer.train_step",
    "TransformerClassifier.forward": "utils.models:TransformerClassifier.forward",
    "R.SeedTutorialLM.forward": "utils.lm_recipes:SeedTutorialLM.forward",
    "R.TiedAdaptiveSoftmax.target_log_probs": (
        "utils.lm_recipes:TiedAdaptiveSoftmax.target_log_probs"
    ),
    "finetune.hf_classification_loss": "utils.finetune:hf_classification_loss",
    "ddp.train": "utils.ddp:train",
    "ddp._wrap": "utils.ddp:_wrap",
    "decoding.next_tokens": "utils.decoding:next_tokens",
    "sft.assistant_loss": "utils.sft:assistant_loss",
    "lora.LoRALinear.forward": "utils.lora:LoRALinear.forward",
    "dpo.dpo_loss": "utils.dpo:dpo_loss",
}
# PyTorch's own code, printed to compare with the book's: not ours to wrap
NOT_OURS = {"torch_adam._single_tensor_adam", "torch.optim.AdamW"}

_CALL = re.compile(r"\b(?:getsource|show_source)\(\s*([\w.]+)")


def _printed_in_notebooks() -> set[str]:
    found = set()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text(encoding="utf-8"))["cells"]:
            if cell["cell_type"] == "code":
                found.update(_CALL.findall("".join(cell["source"])))
    return found


def _resolve(target: str):
    module, qualname = target.split(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_printed_listing_is_checked():
    missing = _printed_in_notebooks() - set(PRINTED) - NOT_OURS
    assert not missing, f"notebooks print {sorted(missing)}: add them to PRINTED"


@pytest.mark.parametrize("expression", sorted(PRINTED))
def test_printed_listing_fits_the_page(expression):
    source = inspect.getsource(_resolve(PRINTED[expression]))
    wide = [f"{len(line)}: {line}" for line in source.splitlines() if len(line) > WIDTH]
    assert not wide, f"{expression} has lines over {WIDTH} characters:\n" + "\n".join(
        wide
    )
