"""The graders of chapter 6a's exercises (classification and search with a sentence encoder);
see :mod:`utils.grader`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.grader import exercise
from utils.models import mean_pool


def _tensor(value, what: str) -> torch.Tensor:
    if not torch.is_tensor(value):
        raise TypeError(f"{what} should be a torch tensor, got {type(value).__name__}")
    return value


def _embed(hidden, mask):
    m = mask.to(hidden.dtype).unsqueeze(-1)
    return F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def _close(a, b) -> bool:
    return a.shape == b.shape and torch.allclose(a.to(b.dtype), b, atol=1e-8)


@exercise(
    "06a.sentence_embedding",
    "Mean pooling to a unit-length sentence embedding",
    difficulty=1,
    reference=_embed,
    wrong=[
        (lambda h, m: F.normalize(h.mean(1), dim=-1), "padding"),
        (lambda h, m: mean_pool(h, m), "length 1"),
        (lambda h, m: F.normalize(h[:, 0], dim=-1), "first token"),
    ],
)
def sentence_embedding(answer):
    """``answer(hidden [B, L, d], mask [B, L])`` -> ``[B, d]``: the masked mean of the real
    tokens' vectors (mask 1 = token, 0 = padding), scaled to length 1."""
    g = torch.Generator().manual_seed(0)
    for B, L, d in ((3, 5, 8), (1, 1, 4), (4, 7, 16)):
        hidden = torch.randn(B, L, d, generator=g, dtype=torch.float64) + 0.5
        lengths = torch.randint(1, L + 1, (B,), generator=g)
        lengths[0] = L  # one row without padding
        mask = (torch.arange(L) < lengths[:, None]).long()
        got = _tensor(answer(hidden.clone(), mask.clone()), "the embeddings")
        want = F.normalize(mean_pool(hidden, mask), dim=-1)
        if got.shape != want.shape:
            yield f"shape {tuple(got.shape)}, expected {tuple(want.shape)} [B, d]"
            return
        if _close(got, want):
            continue
        got = got.to(want.dtype)
        norms = got.norm(dim=-1)
        if _close(got, mean_pool(hidden, mask)):
            yield (
                f"your vectors have lengths {[round(x, 3) for x in norms.tolist()]}: divide "
                "by the norm so that each has length 1 (then cosine = dot product)"
            )
        elif _close(got, F.normalize(hidden.mean(1), dim=-1)):
            yield (
                f"lengths {lengths.tolist()} of {L}: your mean counts the padding positions; "
                "average over the real tokens only (sum of m·h divided by the sum of m)"
            )
        elif _close(got, F.normalize(hidden[:, 0], dim=-1)):
            yield (
                "you took the first token's vector (as BERT's [CLS] pooling does); "
                "all-MiniLM-L6-v2 was trained with the mean over the real tokens"
            )
        elif not torch.allclose(norms, torch.ones_like(norms), atol=1e-6):
            yield f"your vectors have lengths {norms.tolist()}, not 1"
        else:
            cos = (got * want).sum(-1).min().item()
            yield f"unit vectors, but pointing elsewhere (lowest cosine with the truth {cos:.3f})"
        return


def _top_k(query, docs, k):
    scores = F.normalize(docs, dim=-1) @ F.normalize(query, dim=-1)
    return scores.topk(k).indices


@exercise(
    "06a.cosine_search",
    "Search by cosine similarity",
    difficulty=2,
    reference=_top_k,
    wrong=[
        (lambda q, docs, k: (docs @ q).topk(k).indices, "dot product"),
        (
            lambda q, docs, k: _top_k(q, docs, docs.shape[0]).flip(0)[:k],
            "least similar",
        ),
        (lambda q, docs, k: _top_k(q, docs, k).sort().values, "best first"),
        (
            lambda q, docs, k: (
                torch.cdist(q[None], docs)[0].topk(k, largest=False).indices
            ),
            "Euclidean",
        ),
    ],
)
def cosine_search(answer):
    """``answer(query [d], docs [N, d], k)`` -> ``[k]`` long tensor: the indices of the ``k``
    documents of highest cosine similarity with ``query``, best first. The documents are *not*
    unit vectors."""
    g = torch.Generator().manual_seed(3)
    for n, d, k in ((20, 8, 5), (7, 4, 7), (50, 16, 1), (30, 6, 10)):
        docs = torch.randn(n, d, generator=g, dtype=torch.float64)
        docs = (
            docs
            * torch.logspace(-1, 1, n, dtype=torch.float64)[
                torch.randperm(n, generator=g)
            ][:, None]
        )
        query = torch.randn(d, generator=g, dtype=torch.float64) * 3
        got = _tensor(answer(query.clone(), docs.clone(), k), "the result")
        want = _top_k(query, docs, k)
        if got.shape != (k,):
            yield f"N={n}, k={k}: shape {tuple(got.shape)}, expected ({k},)"
            return
        got = got.long()
        if torch.equal(got, want):
            continue
        cos = F.normalize(docs, dim=-1) @ F.normalize(query, dim=-1)
        where = f"N={n}, k={k}"
        if k > 1 and torch.equal(got.sort().values, want.sort().values):
            yield f"{where}: the right documents, in the wrong order: return them best first"
        elif torch.equal(got, (docs @ query).topk(k).indices):
            yield (
                f"{where}: you ranked by the dot product, which favours long document "
                "vectors; normalise both sides first (cosine similarity)"
            )
        elif torch.equal(got, cos.topk(k, largest=False).indices):
            yield f"{where}: you returned the least similar documents"
        elif torch.equal(
            got, torch.cdist(query[None], docs)[0].topk(k, largest=False).indices
        ):
            yield (
                f"{where}: you ranked by Euclidean distance between unnormalised vectors, "
                "which mixes length into it; rank by cosine similarity"
            )
        else:
            missing = sorted(set(want.tolist()) - set(got.tolist()))
            yield (
                f"{where}: got {got.tolist()}, expected {want.tolist()}"
                + (f" (missing {missing})" if missing else "")
            )
        return


def _probe_gradient(E, y, w, b, lam):
    p = torch.sigmoid(E @ w + b)
    n = E.shape[0]
    return E.T @ (p - y) / n + lam * w, (p - y).sum() / n


def _variant(E, y, w, b, lam, *, per_n=True, l2=1.0, sign=1.0):
    p = torch.sigmoid(E @ w + b)
    n = E.shape[0] if per_n else 1
    return sign * E.T @ (p - y) / n + l2 * lam * w, sign * (p - y).sum() / n


@exercise(
    "06a.probe_gradient",
    "The gradient of the linear probe's loss",
    difficulty=2,
    reference=_probe_gradient,
    wrong=[
        (lambda E, y, w, b, lam: _variant(E, y, w, b, lam, per_n=False), "1/N"),
        (lambda E, y, w, b, lam: _variant(E, y, w, b, lam, l2=0.0), "L2 penalty"),
        (lambda E, y, w, b, lam: _variant(E, y, w, b, lam, l2=0.5), "λ/2"),
        (lambda E, y, w, b, lam: _variant(E, y, w, b, lam, sign=-1.0), "sign"),
    ],
)
def probe_gradient(answer):
    """``answer(E [N, d], y [N] (0./1.), w [d], b [] , lam)`` -> ``(grad_w [d], grad_b [])``
    of the mean binary cross-entropy of ``sigmoid(E w + b)`` plus ``lam/2·‖w‖²``; compared
    with autograd."""
    g = torch.Generator().manual_seed(0)
    for n, d, lam in ((16, 5, 0.1), (3, 8, 0.5), (40, 3, 0.01)):
        E = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = (torch.rand(n, generator=g) < 0.5).double()
        w = torch.randn(d, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.randn((), generator=g, dtype=torch.float64, requires_grad=True)
        loss = (
            F.binary_cross_entropy_with_logits(E @ w + b, y) + lam / 2 * w.pow(2).sum()
        )
        want_w, want_b = torch.autograd.grad(loss, (w, b))
        out = answer(E, y, w.detach().clone(), b.detach().clone(), lam)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            yield "return a pair (grad_w, grad_b)"
            return
        gw = _tensor(out[0], "grad_w").double()
        gb = torch.as_tensor(out[1], dtype=torch.float64)
        if gw.shape != want_w.shape or gb.numel() != 1:
            yield f"grad_w must have shape ({d},) and grad_b one value"
            return
        gb = gb.reshape(())
        if torch.allclose(gw, want_w, atol=1e-9) and torch.allclose(
            gb, want_b, atol=1e-9
        ):
            continue
        args = (E, y, w.detach(), b.detach(), lam)

        def near(pair, gw=gw, gb=gb):
            return torch.allclose(gw, pair[0], atol=1e-9) and torch.allclose(
                gb, pair[1], atol=1e-9
            )

        where = f"N={n}, λ={lam}"
        if near(_variant(*args, sign=-1.0)):
            yield (
                f"{where}: your gradient has the wrong sign: it is (p − y), prediction minus "
                "target; (y − p) points uphill"
            )
        elif near(_variant(*args, per_n=False)):
            yield (
                f"{where}: your data term is {n} = N times too large: the loss is a *mean* "
                "over the N examples, so divide Eᵀ(p − y) and Σ(p − y) by N (the 1/N)"
            )
        elif near(_variant(*args, l2=0.0)):
            yield (
                f"{where}: grad_w lacks the L2 penalty's term λ·w (the gradient of λ/2·‖w‖²)"
            )
        elif near(_variant(*args, l2=0.5)):
            yield f"{where}: the penalty λ/2·‖w‖² has gradient λ·w, not λ/2·w"
        elif near(_variant(*args, l2=2.0)):
            yield f"{where}: the penalty λ/2·‖w‖² has gradient λ·w, not 2λ·w"
        elif torch.allclose(gw, want_w, atol=1e-9):
            yield f"{where}: grad_w is right; grad_b = {gb.item():.4g}, autograd says {want_b.item():.4g}"
        else:
            err = (gw - want_w).abs().max().item()
            yield f"{where}: grad_w differs from autograd's by up to {err:.3g}"
        return
