"""Association tests on embeddings: how much closer one set of vectors sits to one attribute set
than to another (a small, measurable probe of bias).

The statistic follows the Word Embedding Association Test (WEAT) of Caliskan et al. (2017); May et
al. (2019) apply it to sentence encoders by placing the words in template sentences. For two
*target* sets X, Y (e.g. sentences with male and female names) and two *attribute* sets A, B (e.g.
career and family sentences), each target vector w gets

    s(w, A, B) = mean_{a in A} cos(w, a) - mean_{b in B} cos(w, b),

the test statistic is ``sum_{x in X} s(x) - sum_{y in Y} s(y)``, the effect size is

    d = (mean_{x in X} s(x) - mean_{y in Y} s(y)) / std_{w in X ∪ Y} s(w)

(sample standard deviation), and the one-sided p-value is the share of equal-size re-partitions of
X ∪ Y whose statistic is at least the observed one. All inputs are tensors of row vectors:
X ``(n_x, d)``, Y ``(n_y, d)``, A ``(n_a, d)``, B ``(n_b, d)``; they need not be normalised.

What such a test measures is narrow: the geometry of the embeddings for the chosen word lists and
templates, not harm in a downstream task. Different lists or templates can give different answers.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from utils.checks import check_min_int

__all__ = [
    "AssociationTest",
    "association",
    "association_test",
    "cosine_matrix",
    "effect_size",
    "permutation_p_value",
    "project_out",
]

# Above this many equal-size re-partitions, the p-value is estimated from random ones.
MAX_EXACT_PARTITIONS = 100_000


def _check_matrix(name: str, x: torch.Tensor, min_rows: int = 1) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor of shape (n, d)")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (n, d), got {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} row(s), got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    if (x.norm(dim=1) == 0).any():
        raise ValueError(f"{name} contains a zero vector: its cosine is undefined")


def _check_same_width(**tensors: torch.Tensor) -> None:
    widths = {name: t.shape[1] for name, t in tensors.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(f"all vectors must have the same width d, got {widths}")


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a (n, d)`` with every row of ``b (m, d)``: ``(n, m)``."""
    _check_matrix("a", a)
    _check_matrix("b", b)
    _check_same_width(a=a, b=b)
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


def association(w: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``s(w, A, B)`` for every row of ``w (n, d)``: mean cosine to A minus mean cosine to B, ``(n,)``."""
    return cosine_matrix(w, A).mean(dim=1) - cosine_matrix(w, B).mean(dim=1)


def effect_size(
    X: torch.Tensor, Y: torch.Tensor, A: torch.Tensor, B: torch.Tensor
) -> float:
    """WEAT effect size d: difference of the targets' mean associations over their pooled std.

    Positive: X sits closer to A (and Y to B) than the other way round. |d| is in standard
    deviations; Caliskan et al. call 0.2 / 0.5 / 0.8 small / medium / large, after Cohen.
    """
    for name, t in (("X", X), ("Y", Y)):
        _check_matrix(name, t)
    if X.shape[0] + Y.shape[0] < 3:
        raise ValueError(
            "X and Y together need at least 3 rows for a standard deviation"
        )
    _check_same_width(X=X, Y=Y, A=A, B=B)
    s_x, s_y = association(X, A, B), association(Y, A, B)
    spread = torch.cat([s_x, s_y]).std()  # sample std (n - 1), as in Caliskan et al.
    if spread == 0:
        raise ValueError(
            "every target has the same association: the effect size is undefined"
        )
    return float((s_x.mean() - s_y.mean()) / spread)


def permutation_p_value(
    X: torch.Tensor,
    Y: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    n_samples: int = 10_000,
    generator: torch.Generator | None = None,
) -> tuple[float, bool]:
    """One-sided p-value of the test statistic ``sum s(x) - sum s(y)`` under re-partitions of
    X ∪ Y into sets of the sizes of X and Y.

    Every re-partition is enumerated when there are at most :data:`MAX_EXACT_PARTITIONS` of them;
    otherwise ``n_samples`` random ones are drawn with ``generator`` (the observed partition is
    counted once, so the estimate is never 0). Returns ``(p, exact)``.
    """
    check_min_int("n_samples", n_samples)
    _check_same_width(X=X, Y=Y, A=A, B=B)
    s = torch.cat([association(X, A, B), association(Y, A, B)]).double()  # (n_x + n_y,)
    n_x, total = X.shape[0], s.sum()
    observed = 2 * s[:n_x].sum() - total  # sum over X minus sum over Y
    tolerance = 1e-12 * max(1.0, float(s.abs().sum()))
    n = s.shape[0]
    if math.comb(n, n_x) <= MAX_EXACT_PARTITIONS:
        index = torch.tensor(list(itertools.combinations(range(n), n_x)))  # (comb, n_x)
        stats = 2 * s[index].sum(dim=1) - total
        return float((stats >= observed - tolerance).double().mean()), True
    keys = torch.rand(n_samples, n, generator=generator)
    index = keys.argsort(dim=1)[
        :, :n_x
    ]  # a uniformly random subset of size n_x per row
    stats = 2 * s[index].sum(dim=1) - total
    hits = int((stats >= observed - tolerance).sum()) + 1
    return hits / (n_samples + 1), False


def project_out(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Remove from each row of ``x (n, d)`` its component along ``direction (d,)``.

    The "hard debiasing" projection of Bolukbasi et al. (2016), applied to any vectors: the result
    is orthogonal to ``direction``. It removes one linear direction only; Gonen and Goldberg (2019)
    show that the information often remains recoverable from the rest.
    """
    _check_matrix("x", x)
    if not isinstance(direction, torch.Tensor) or direction.dim() != 1:
        raise ValueError("direction must be a 1-dimensional tensor (d,)")
    if direction.shape[0] != x.shape[1]:
        raise ValueError(
            f"direction has width {direction.shape[0]}, x has width {x.shape[1]}"
        )
    if not torch.isfinite(direction).all() or direction.norm() == 0:
        raise ValueError("direction must be a finite, non-zero vector")
    u = F.normalize(direction.to(x.dtype), dim=0)
    return x - (x @ u)[:, None] * u


@dataclass(frozen=True)
class AssociationTest:
    """The result of :func:`association_test`."""

    effect_size: float
    p_value: float
    exact: bool
    mean_association_x: float
    mean_association_y: float

    def summary(self) -> str:
        how = "exact" if self.exact else "sampled"
        return (
            f"effect size d = {self.effect_size:+.2f}, one-sided p = {self.p_value:.4f} "
            f"({how} permutation test); mean s(x) = {self.mean_association_x:+.4f}, "
            f"mean s(y) = {self.mean_association_y:+.4f}"
        )


def association_test(
    X: torch.Tensor,
    Y: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    n_samples: int = 10_000,
    generator: torch.Generator | None = None,
) -> AssociationTest:
    """Effect size, p-value and mean associations of targets X, Y with attributes A, B."""
    d = effect_size(X, Y, A, B)
    p, exact = permutation_p_value(X, Y, A, B, n_samples=n_samples, generator=generator)
    return AssociationTest(
        d,
        p,
        exact,
        float(association(X, A, B).mean()),
        float(association(Y, A, B).mean()),
    )
