"""Trained sentiment classifiers handed from chapter 5 to chapter 6: saved once, loaded anywhere.

Chapter 5 trains two IMDb classifiers: 5.1 a :class:`utils.models.TransformerClassifier` on a
word vocabulary, and 5.4 a fine-tuned Hugging Face encoder. Each notebook ends by writing an
*export*: a folder holding the weights and everything needed to turn raw text into the model's
input (tokenizer, vocabulary, how long reviews are cut), plus ``export.json`` describing it.
:func:`load_classifier` reads either kind back as an :class:`ExportedClassifier`, whose
:meth:`~ExportedClassifier.predict_proba` maps review texts to class probabilities ``[N, 2]``.

Exports live under ``checkpoints/exports/`` (git-ignored, like the training checkpoints) in a
folder named by notebook and profile (:func:`export_dir`). A folder is written under a temporary
name and renamed into place, so a reader running at the same time never sees half an export.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from utils.atomic import atomic_path
from utils.finetune import cut_head_tail  # the cut 5.4 trains with; 5.1 uses it too

__all__ = [
    "ExportedClassifier",
    "clean_review",
    "cut_head_tail",
    "export_dir",
    "export_hf_classifier",
    "export_word_classifier",
    "load_classifier",
]

FORMAT = 1
META_FILE = "export.json"


def export_dir(notebook: str, profile: str, root: str | Path = "checkpoints") -> Path:
    """``<root>/exports/<notebook>_<profile>``: where ``notebook`` exports its classifier."""
    for name, value in (("notebook", notebook), ("profile", profile)):
        if (
            not isinstance(value, str)
            or not value
            or "/" in value
            or value.startswith(".")
        ):
            raise ValueError(f"{name} must be a plain name, got {value!r}")
    return Path(root) / "exports" / f"{notebook}_{profile}"


def clean_review(review: str) -> str:
    """IMDb's HTML line breaks and runs of white space become single spaces."""
    return " ".join(review.replace("<br />", " ").split())


def _write_atomically(folder: Path, write) -> Path:
    """Call ``write(tmp_folder)``, then move the finished folder to ``folder``."""
    folder = Path(folder)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        write(tmp)
    return folder


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    (folder / META_FILE).write_text(
        json.dumps({"format": FORMAT, **meta}, indent=2) + "\n"
    )


def export_word_classifier(
    folder: str | Path,
    model: torch.nn.Module,
    model_kwargs: dict[str, Any],
    itos: Sequence[str],
    *,
    head_tokens: int,
    tail_tokens: int,
    unk_token: str = "<unk>",
    tokenizer: str = "basic_english",
    clean_html: bool = False,
    info: dict[str, Any] | None = None,
) -> Path:
    """Export a :class:`~utils.models.TransformerClassifier` with its word pipeline (5.1).

    ``model_kwargs`` are the constructor's keyword arguments besides the vocabulary size, which is
    ``len(itos)`` (``itos``: the vocabulary's tokens in id order). A text is tokenised by
    ``utils.text.get_tokenizer(tokenizer)``, mapped to ids (unknown words -> ``unk_token``) and
    cut to ``head_tokens`` + ``tail_tokens``; with ``clean_html`` the text first goes through
    :func:`clean_review`, as it must if the model was trained that way. ``info``: anything worth showing the reader (test
    accuracy, training size), stored as JSON.
    """
    itos = list(itos)
    if unk_token not in itos:
        raise ValueError(f"the vocabulary has no {unk_token!r} token")
    if head_tokens < 0 or tail_tokens < 0 or head_tokens + tail_tokens < 1:
        raise ValueError(
            f"bad cut: head_tokens={head_tokens}, tail_tokens={tail_tokens}"
        )
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        torch.save(state, tmp / "model.pt")
        _write_meta(
            tmp,
            {
                "kind": "word",
                "model_kwargs": model_kwargs,
                "itos": itos,
                "unk_token": unk_token,
                "tokenizer": tokenizer,
                "clean_html": clean_html,
                "head_tokens": head_tokens,
                "tail_tokens": tail_tokens,
                "info": info or {},
            },
        )

    return _write_atomically(Path(folder), write)


def export_hf_classifier(
    folder: str | Path,
    model: Any,
    tokenizer: Any,
    *,
    max_length: int,
    head_tokens: int | None,
    clean_html: bool = True,
    info: dict[str, Any] | None = None,
) -> Path:
    """Export a fine-tuned ``transformers`` sequence classifier and its tokenizer (5.4).

    Texts are cut by :func:`utils.finetune.encode_head_tail` (``max_length``, ``head_tokens``)
    exactly as in training, after :func:`clean_review` if ``clean_html``. The weights and tokenizer
    go through ``save_pretrained``.
    """

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_meta(
            tmp,
            {
                "kind": "hf",
                "clean_html": clean_html,
                "max_length": max_length,
                "head_tokens": head_tokens,
                "info": info or {},
            },
        )

    return _write_atomically(Path(folder), write)


@dataclass
class ExportedClassifier:
    """A classifier read back by :func:`load_classifier`: ``kind`` is ``"word"`` or ``"hf"``,
    ``info`` what the exporting notebook recorded, ``model`` the module (eval mode),
    ``clean_html`` whether texts go through :func:`clean_review` first (as in training)."""

    kind: str
    model: Any
    info: dict[str, Any]
    clean_html: bool
    _logits: Any  # list of B texts -> logits [B, C]: the model's own tokenizer, cut and padding

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Class probabilities ``[N, C]`` (CPU, float32) for ``N`` review texts."""
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            logits = self._logits(
                [clean_review(t) for t in chunk] if self.clean_html else chunk
            )
            out.append(torch.softmax(logits.float(), dim=-1).cpu())
        if not out:
            return torch.empty(0, 2)
        return torch.cat(out)


def load_classifier(
    folder: str | Path, device: str | torch.device = "cpu"
) -> ExportedClassifier:
    """Read an export written by :func:`export_word_classifier` or :func:`export_hf_classifier`.

    Raises ``FileNotFoundError`` when ``folder`` holds no export (run the notebook that writes
    it), ``ValueError`` when its description is not one this code can read.
    """
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"no classifier export in {folder} (no {META_FILE})")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path} is not valid JSON: {error}") from error
    if meta.get("format") != FORMAT or meta.get("kind") not in ("word", "hf"):
        raise ValueError(
            f"{meta_path}: format {meta.get('format')!r}, kind {meta.get('kind')!r} "
            f"(this code reads format {FORMAT}, kinds 'word' and 'hf')"
        )
    device = torch.device(device)
    if meta["kind"] == "word":
        return _load_word(folder, meta, device)
    return _load_hf(folder, meta, device)


def _load_word(
    folder: Path, meta: dict[str, Any], device: torch.device
) -> ExportedClassifier:
    from utils import text
    from utils.models import TransformerClassifier

    itos = meta["itos"]
    model = TransformerClassifier(len(itos), **meta["model_kwargs"])
    model.load_state_dict(
        torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    )
    model.to(device).eval()
    vocab = text.Vocab(itos, default_index=itos.index(meta["unk_token"]))
    unk = vocab.get_default_index()
    tokenize = text.get_tokenizer(meta["tokenizer"])
    head, tail = meta["head_tokens"], meta["tail_tokens"]

    def logits(texts: list[str]) -> torch.Tensor:
        ids = [cut_head_tail(vocab(tokenize(t)), head, tail) or [unk] for t in texts]
        return model(text.pad_collate(ids, pad_idx=model.pad_idx)[0].to(device))

    return ExportedClassifier("word", model, meta["info"], meta["clean_html"], logits)


def _load_hf(
    folder: Path, meta: dict[str, Any], device: torch.device
) -> ExportedClassifier:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from utils.batches import move_to_device
    from utils.finetune import encode_head_tail, pad_batch

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, local_files_only=True
    )
    model.to(device).eval()

    def logits(texts: list[str]) -> torch.Tensor:
        ids = encode_head_tail(
            tokenizer, texts, meta["max_length"], meta["head_tokens"]
        )[0]
        return model(**move_to_device(pad_batch(tokenizer, ids), device)).logits

    return ExportedClassifier("hf", model, meta["info"], meta["clean_html"], logits)
