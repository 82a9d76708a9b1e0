"""Sentence embeddings, semantic search and clustering with a pretrained encoder.

A sentence encoder such as all-MiniLM-L6-v2 (Reimers & Gurevych 2019; Wang et al. 2020) turns a
text into one vector: run the encoder, average the final hidden states of the real tokens (mean
pooling, padding excluded) and scale the result to length 1. Texts with similar meaning get
vectors with a large dot product (= cosine similarity, the vectors having length 1):

- :func:`mean_pool`, :func:`embed_texts`: texts -> ``(N, d)`` unit vectors;
- :class:`SemanticIndex`: the ``k`` texts most similar to a query, by cosine similarity;
- :func:`kmeans`: Lloyd's k-means (1982) with k-means++ seeding (Arthur & Vassilvitskii 2007).

Shapes: N = texts, L = tokens, d = embedding width, k = clusters or results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from utils.batches import eval_mode, model_device
from utils.checks import check_min_int
from utils.models import mean_pool  # the one masked mean pooling (re-exported here)

__all__ = [
    "EmptyQueryError",
    "SearchHit",
    "SemanticIndex",
    "embed_texts",
    "kmeans",
    "mean_pool",
]


class EmptyQueryError(ValueError):
    """A search query with no text: there is nothing to compare the documents with."""


@torch.no_grad()
def embed_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 32,
    max_length: int = 256,
    progress: Callable | None = None,
) -> torch.Tensor:
    """Unit-length sentence embeddings ``(N, d)`` (float32, on the CPU) of ``texts``.

    Each text is cut to ``max_length`` tokens (all-MiniLM-L6-v2 was trained on up to 256), run
    through ``model`` (a Hugging Face encoder) in batches sorted by length (less padding), mean
    pooled and L2-normalised. ``progress`` (e.g. ``tqdm``) wraps the batch loop if given.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError("texts must be a list of str")
    if not texts:
        raise ValueError("texts is empty: nothing to embed")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    check_min_int("batch_size", batch_size)
    check_min_int("max_length", max_length)
    device = model_device(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    starts = range(0, len(order), batch_size)
    out = torch.empty(len(texts), model.config.hidden_size)
    with eval_mode(model):
        for start in progress(starts) if progress is not None else starts:
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows],
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            pooled = mean_pool(hidden, batch["attention_mask"])
            out[rows] = F.normalize(pooled, dim=-1).float().cpu()
    return out


@dataclass(frozen=True)
class SearchHit:
    """One result: position of the document in the index, its cosine similarity, its text."""

    index: int
    score: float
    text: str


class SemanticIndex:
    """Cosine-similarity search over documents embedded with :func:`embed_texts`.

    Args:
        embed: ``list[str] -> (N, d)`` unit vectors (e.g. ``partial(embed_texts, model, tok)``).
        texts: the documents.
        embeddings: their vectors ``(N, d)`` if already computed (else ``embed(texts)``).
    """

    def __init__(
        self,
        embed: Callable[[list[str]], torch.Tensor],
        texts: Sequence[str],
        embeddings: torch.Tensor | None = None,
    ) -> None:
        if not callable(embed):
            raise TypeError("embed must be a function list[str] -> (N, d) tensor")
        self.embed = embed
        self.texts = list(texts)
        if not self.texts:
            raise ValueError("the index needs at least one document")
        vectors = embed(self.texts) if embeddings is None else embeddings
        if vectors.dim() != 2 or vectors.shape[0] != len(self.texts):
            raise ValueError(
                f"embeddings must have shape ({len(self.texts)}, d), got {tuple(vectors.shape)}"
            )
        self.embeddings = F.normalize(vectors.float(), dim=-1)  # (N, d)

    def __len__(self) -> int:
        return len(self.texts)

    def search(self, query: str, k: int = 5) -> list[SearchHit]:
        """The ``k`` documents most similar to ``query``, best first.

        An empty (or blank) query raises :class:`EmptyQueryError`; ``k`` larger than the index
        returns every document.
        """
        if not isinstance(query, str):
            raise TypeError(f"query must be a str, got {type(query).__name__}")
        if not query.strip():
            raise EmptyQueryError("The query is empty: type a few words to search for.")
        check_min_int("k", k)
        q = F.normalize(self.embed([query]).float(), dim=-1)[0]  # (d,)
        scores = self.embeddings @ q  # (N,) cosine similarities
        top = torch.topk(scores, min(k, len(self.texts)))
        return [
            SearchHit(int(i), float(s), self.texts[int(i)])
            for s, i in zip(top.values, top.indices, strict=True)
        ]


def kmeans(
    x: torch.Tensor, k: int, iterations: int = 50, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on ``x (N, d)``: ``-> (labels (N,), centroids (k, d))``.

    k-means++ seeding (each new centre drawn with probability proportional to the squared
    distance to the nearest centre chosen so far), then alternate "assign each point to its
    nearest centre" and "move each centre to the mean of its points" until the assignment stops
    changing or ``iterations`` runs out. A centre that loses all its points stays where it is.
    Deterministic for a given ``seed``.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2 or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor of shape (N, d)")
    for name, value, low in (
        ("k", k, 1),
        ("iterations", iterations, 1),
        ("seed", seed, 0),
    ):
        check_min_int(name, value, low)
    if k > x.shape[0]:
        raise ValueError(f"k={k} clusters need at least {k} points, got {x.shape[0]}")
    generator = torch.Generator().manual_seed(seed)
    x = x.float().cpu()
    centres = [x[torch.randint(x.shape[0], (1,), generator=generator)].squeeze(0)]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centres)).min(dim=1).values ** 2  # (N,)
        weights = d2 if bool(d2.sum() > 0) else torch.ones_like(d2)
        centres.append(x[torch.multinomial(weights, 1, generator=generator)].squeeze(0))
    centroids = torch.stack(centres)  # (k, d)
    labels = torch.full((x.shape[0],), -1, dtype=torch.long)
    for _ in range(iterations):
        new_labels = torch.cdist(x, centroids).argmin(dim=1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
        for c in range(k):
            members = labels == c
            if bool(members.any()):
                centroids[c] = x[members].mean(dim=0)
    return labels, centroids
