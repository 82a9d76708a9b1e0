"""utils.association: WEAT statistics checked against a direct loop, permutation p-values,
projection, argument checks."""

import itertools
import math

import pytest
import torch

from utils.association import (
    association,
    association_test,
    cosine_matrix,
    effect_size,
    permutation_p_value,
    project_out,
)


def _sets(n=4, d=6, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    A, B = torch.randn(5, d, generator=g), torch.randn(5, d, generator=g)
    X = torch.randn(n, d, generator=g) + shift * A.mean(0)
    Y = torch.randn(n, d, generator=g) + shift * B.mean(0)
    return X, Y, A, B


def _cos(u, v):
    return float(u @ v / (u.norm() * v.norm()))


def test_cosine_and_association_match_a_direct_loop():
    X, _, A, B = _sets()
    torch.testing.assert_close(
        cosine_matrix(X, A), torch.tensor([[_cos(x, a) for a in A] for x in X])
    )
    expected = [
        sum(_cos(x, a) for a in A) / len(A) - sum(_cos(x, b) for b in B) / len(B)
        for x in X
    ]
    torch.testing.assert_close(association(X, A, B), torch.tensor(expected))


def test_effect_size_formula_and_sign():
    X, Y, A, B = _sets(shift=3.0)
    s_x, s_y = association(X, A, B), association(Y, A, B)
    pooled = torch.cat([s_x, s_y])
    mean = pooled.mean()
    std = math.sqrt(
        sum((float(v) - float(mean)) ** 2 for v in pooled) / (len(pooled) - 1)
    )
    expected = (float(s_x.mean()) - float(s_y.mean())) / std
    assert effect_size(X, Y, A, B) == pytest.approx(expected, rel=1e-5)
    assert effect_size(X, Y, A, B) > 1.0  # X was pushed towards A
    assert effect_size(Y, X, A, B) == pytest.approx(-effect_size(X, Y, A, B), rel=1e-6)
    assert effect_size(X, Y, B, A) == pytest.approx(-effect_size(X, Y, A, B), rel=1e-6)


def test_exact_p_value_matches_enumeration():
    X, Y, A, B = _sets(n=4, shift=1.0)
    s = torch.cat([association(X, A, B), association(Y, A, B)]).tolist()
    observed = sum(s[:4]) - sum(s[4:])
    count = total = 0
    for subset in itertools.combinations(range(8), 4):
        stat = sum(s[i] for i in subset) - sum(
            s[i] for i in range(8) if i not in subset
        )
        count += stat >= observed - 1e-12
        total += 1
    p, exact = permutation_p_value(X, Y, A, B)
    assert exact and p == pytest.approx(count / total)


def test_strong_separation_gives_the_smallest_p_and_sampling_agrees(monkeypatch):
    X, Y, A, B = _sets(n=5, shift=6.0)
    p, exact = permutation_p_value(X, Y, A, B)
    assert exact and p == pytest.approx(1 / math.comb(10, 5))
    import utils.association as assoc

    monkeypatch.setattr(assoc, "MAX_EXACT_PARTITIONS", 10)  # force sampling
    g = torch.Generator().manual_seed(0)
    p_sampled, exact = permutation_p_value(X, Y, A, B, n_samples=2000, generator=g)
    assert not exact and 0 < p_sampled < 0.02


def test_association_test_summary():
    X, Y, A, B = _sets(shift=2.0)
    result = association_test(X, Y, A, B)
    assert result.effect_size == pytest.approx(effect_size(X, Y, A, B))
    assert "effect size d" in result.summary() and "exact" in result.summary()


def test_project_out_removes_one_direction():
    X, _, _, _ = _sets()
    u = torch.randn(6)
    Z = project_out(X, u)
    torch.testing.assert_close(Z @ u, torch.zeros(4), atol=1e-5, rtol=0)
    w = torch.randn(6)
    w = w - (w @ u) / (u @ u) * u  # orthogonal to u: untouched
    torch.testing.assert_close(project_out(w[None], u)[0], w)


@pytest.mark.parametrize(
    "call",
    [
        lambda: cosine_matrix(torch.ones(2, 3), torch.ones(2, 4)),
        lambda: cosine_matrix(torch.zeros(2, 3), torch.ones(2, 3)),
        lambda: cosine_matrix(torch.ones(3), torch.ones(2, 3)),
        lambda: cosine_matrix(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2)),
        lambda: effect_size(
            torch.ones(1, 2), torch.ones(1, 2), torch.eye(2), torch.eye(2)
        ),
        lambda: project_out(torch.ones(2, 3), torch.zeros(3)),
        lambda: project_out(torch.ones(2, 3), torch.ones(4)),
        lambda: permutation_p_value(*_sets(), n_samples=0),
    ],
)
def test_bad_inputs_raise_value_errors(call):
    with pytest.raises(ValueError):
        call()


def test_integer_tensors_are_refused():
    with pytest.raises(TypeError):
        cosine_matrix(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3))
