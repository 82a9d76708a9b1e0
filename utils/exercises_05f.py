"""The graders of chapter 5f's exercises (training beyond one machine); see :mod:`utils.grader`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from utils.ddp import zero_bytes_per_device
from utils.grader import exercise


def _zero(n_params, n_devices, stage, weight=2, grad=2, optimizer=12, order="ogw"):
    """Bytes per device; ``order``: which parts the stages shard first (o, g, w)."""
    size = {"w": weight, "g": grad, "o": optimizer}
    sharded = order[:stage]
    return n_params * sum(
        b / (n_devices if k in sharded else 1) for k, b in size.items()
    )


@exercise(
    "05f.zero_memory",
    "Training memory per device under ZeRO",
    difficulty=1,
    reference=_zero,
    wrong=[
        (lambda n, w, s: 16 * n / (w if s else 1), "shards only the optimizer state"),
        (lambda n, w, s: 16 * n, "does not depend on"),
        (lambda n, w, s: _zero(n, w, min(s + 1, 3)), "one stage ahead"),
        (lambda n, w, s: _zero(n, w, s, weight=4, grad=4), "2-byte"),
        (lambda n, w, s: _zero(n, w, s, order="wgo"), "optimizer state first"),
    ],
)
def zero_memory(answer):
    """``answer(n_params, n_devices, stage)`` -> bytes per device of weights, gradients and
    AdamW state (mixed precision: 2 + 2 + 12 bytes per parameter), ZeRO stage 0-3."""
    cases = [(7.5e9, 64, s) for s in range(4)] + [
        (1e9, 8, 1),
        (1e9, 8, 2),
        (3e8, 1, 3),
        (7e10, 1024, 2),
    ]
    for n, w, stage in cases:
        got = float(answer(n, w, stage))
        want = zero_bytes_per_device(n, w, stage)
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        where = f"Ψ = {n:.3g}, W = {w}, stage {stage}"

        def near(other, got=got):
            return math.isclose(got, other, rel_tol=1e-6)

        if near(16 * n):
            yield (
                f"{where}: {got / 1e9:.3g} GB is the full 16 bytes per parameter: your memory "
                "does not depend on the stage or on W, as in plain data parallelism (stage 0)"
            )
        elif near(16 * n / w):
            yield (
                f"{where}: {got / 1e9:.3g} GB shards everything, which only stage 3 does; "
                "stage 1 shards only the optimizer state (12 bytes), stage 2 also the "
                "gradients, stage 3 also the weights"
            )
        elif stage < 3 and near(_zero(n, w, stage + 1)):
            yield (
                f"{where}: {got / 1e9:.3g} GB is what stage {stage + 1} needs: you are one "
                "stage ahead (stage 1 shards only the optimizer state)"
            )
        elif stage > 0 and near(_zero(n, w, stage - 1)):
            yield f"{where}: {got / 1e9:.3g} GB is what stage {stage - 1} needs: one stage behind"
        elif near(_zero(n, w, stage, weight=4, grad=4)):
            yield (
                f"{where}: {got / 1e9:.4g} GB counts 4-byte weights and gradients; mixed "
                "precision keeps 2-byte (bf16/fp16) ones, next to 12 bytes of fp32 state"
            )
        elif near(_zero(n, w, stage, order="wgo")):
            yield (
                f"{where}: {got / 1e9:.4g} GB shards the weights before the rest; ZeRO shards "
                "the optimizer state first (the largest part), then gradients, then weights"
            )
        else:
            yield (
                f"{where}: you gave {got / 1e9:.4g} GB per device, expected "
                f"{want / 1e9:.4g} GB (off by a factor {got / want:.3g})"
            )
        return


def _combine(grads, counts):
    total = sum(counts)
    return [
        sum(c * g for c, g in zip(counts, per_param, strict=True)) / total
        for per_param in zip(*grads, strict=True)
    ]


def _plain_mean(grads, counts):
    return [sum(per_param) / len(grads) for per_param in zip(*grads, strict=True)]


def _weighted_over_w(grads, counts):
    return [
        sum(c * g for c, g in zip(counts, per_param, strict=True)) / len(grads)
        for per_param in zip(*grads, strict=True)
    ]


@exercise(
    "05f.combine_gradients",
    "Average the ranks' gradients into the global batch's gradient",
    difficulty=2,
    reference=_combine,
    wrong=[
        (_plain_mean, "equal weight"),
        (
            lambda grads, counts: [sum(p) for p in zip(*grads, strict=True)],
            "sum of the ranks'",
        ),
        (_weighted_over_w, "total number of targets"),
    ],
)
def combine_gradients(answer):
    """``answer(grads, counts)`` -> list of tensors: the gradient of the mean loss over all
    targets. ``grads[r]`` is rank r's list of gradients (one tensor per parameter) of the mean
    loss over its ``counts[r]`` targets."""
    g = torch.Generator().manual_seed(0)
    model = nn.Linear(6, 4, dtype=torch.float64)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(12, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (12,), generator=g)

    def grads_of(rows):
        model.zero_grad()
        F.cross_entropy(model(x[rows]), y[rows]).backward()
        return [p.grad.clone() for p in model.parameters()]

    for counts in ((6, 6), (1,), (3, 9), (5, 2, 4, 1), (4, 4, 4)):
        bounds = torch.tensor((0, *counts)).cumsum(0).tolist()
        shards = [
            grads_of(slice(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        ]
        want = grads_of(slice(0, sum(counts)))
        got = answer([list(s) for s in shards], list(counts))
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            yield f"return one tensor per parameter ({len(want)} here), as a list"
            return
        got = [torch.as_tensor(t, dtype=torch.float64) for t in got]
        if [t.shape for t in got] != [t.shape for t in want]:
            yield "each combined gradient must have the shape of its parameter"
            return
        if all(
            torch.allclose(a, b, atol=1e-10) for a, b in zip(got, want, strict=True)
        ):
            continue

        def near(other, got=got):
            return all(
                torch.allclose(a, b, atol=1e-10)
                for a, b in zip(got, other, strict=True)
            )

        if near(_plain_mean(shards, counts)):
            yield (
                f"shards of {counts} targets: the plain mean gives each rank equal weight, "
                "so a target on a small shard counts more; weight rank r by counts[r]"
            )
        elif near([sum(p) for p in zip(*shards, strict=True)]):
            yield (
                f"shards of {counts}: you returned the sum of the ranks' gradients, "
                f"{len(counts)} times too large for equal shards; an all-reduce sums, then "
                "DDP divides"
            )
        elif near(_weighted_over_w(shards, counts)):
            yield (
                f"shards of {counts}: weighting by counts is right, but divide by the total "
                f"number of targets ({sum(counts)}), not by the number of ranks"
            )
        else:
            flat = torch.cat([t.flatten() for t in want])
            err = torch.cat(
                [(a - b).flatten() for a, b in zip(got, want, strict=True)]
            ).norm()
            yield (
                f"shards of {counts}: your gradient is off by {err / flat.norm():.2%} of the "
                "global gradient's norm"
            )
        return


def _ring(tensors):
    world = len(tensors)
    chunks = [list(t.clone().chunk(world)) for t in tensors]
    sent = [0] * world
    for s in range(world - 1):  # reduce-scatter
        out = [(r, (r - s) % world) for r in range(world)]
        payload = [chunks[r][c].clone() for r, c in out]
        for (r, c), values in zip(out, payload, strict=True):
            chunks[(r + 1) % world][c] += values
            sent[r] += values.numel()
    for s in range(world - 1):  # all-gather
        out = [(r, (r + 1 - s) % world) for r in range(world)]
        payload = [chunks[r][c].clone() for r, c in out]
        for (r, c), values in zip(out, payload, strict=True):
            chunks[(r + 1) % world][c] = values
            sent[r] += values.numel()
    return [torch.cat(c) for c in chunks], sent


def _naive(tensors):
    world, n = len(tensors), tensors[0].numel()
    total = torch.stack(tensors).sum(0)
    return [total.clone() for _ in tensors], [(world - 1) * n] + [n] * (world - 1)


def _scatter_only(tensors):
    world = len(tensors)
    chunks = [list(t.clone().chunk(world)) for t in tensors]
    sent = [0] * world
    for s in range(world - 1):
        out = [(r, (r - s) % world) for r in range(world)]
        payload = [chunks[r][c].clone() for r, c in out]
        for (r, c), values in zip(out, payload, strict=True):
            chunks[(r + 1) % world][c] += values
            sent[r] += values.numel()
    return [torch.cat(c) for c in chunks], sent


@exercise(
    "05f.ring_allreduce",
    "A ring all-reduce from scratch",
    difficulty=3,
    reference=_ring,
    wrong=[
        (_naive, "rank 0 sends"),
        (_scatter_only, "all-gather"),
        (lambda ts: ([r / len(ts) for r in _ring(ts)[0]], _ring(ts)[1]), "average"),
        (
            lambda ts: (_ring(ts)[0], [2 * (len(ts) - 1) * ts[0].numel()] * len(ts)),
            "whole tensor",
        ),
    ],
)
def ring_allreduce(answer):
    """``answer(tensors)``: W 1-D tensors of N values (N divisible by W), one per simulated rank
    -> ``(results, sent)``: every rank's sum (W tensors of N values) and the number of values
    each rank sent (W ints); a ring sends 2·(W−1)·N/W per rank."""
    g = torch.Generator().manual_seed(1)
    n = 60
    for world in (2, 3, 4, 5, 1):
        tensors = [
            torch.randn(n, generator=g, dtype=torch.float64) for _ in range(world)
        ]
        copies = [t.clone() for t in tensors]
        want = torch.stack(tensors).sum(0)
        out = answer(tensors)
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            yield "return a pair (results, sent)"
            return
        results, sent = out
        if any(not torch.equal(t, c) for t, c in zip(tensors, copies, strict=True)):
            yield "your function changed its input tensors: work on copies (t.clone())"
            return
        if len(results) != world or len(sent) != world:
            yield f"W = {world}: return {world} results and {world} counts, one per rank"
            return
        for rank, result in enumerate(results):
            result = torch.as_tensor(result, dtype=torch.float64)
            if result.shape != want.shape:
                yield f"W = {world}: rank {rank}'s result has shape {tuple(result.shape)}"
                return
            if torch.allclose(result, want):
                continue
            if torch.allclose(result * world, want):
                yield (
                    f"W = {world}: rank {rank} holds the average; an all-reduce leaves the "
                    "sum (DDP divides by W afterwards)"
                )
                return
            right = [
                torch.allclose(a, b)
                for a, b in zip(result.chunk(world), want.chunk(world), strict=True)
            ]
            if sum(right) == 1:
                yield (
                    f"W = {world}: rank {rank} has the full sum of only one chunk: that is "
                    "the state after the reduce-scatter; the all-gather must then pass the "
                    "finished chunks around the ring"
                )
            else:
                err = (result - want).abs().max().item()
                yield f"W = {world}: rank {rank}'s result is off the sum by up to {err:.3g}"
            return
        expected = 2 * (world - 1) * n // world
        sent = [int(s) for s in sent]
        if sent == [expected] * world:
            continue
        if world > 1 and sent[0] == (world - 1) * n:
            yield (
                f"W = {world}: rank 0 sends {sent[0]} values, (W−1)·N: a root that sends the "
                f"sum to everyone; in a ring each rank sends 2·(W−1)·N/W = {expected}"
            )
        elif sent == [2 * (world - 1) * n] * world:
            yield (
                f"W = {world}: {sent[0]} values per rank is the whole tensor at each of the "
                f"2·(W−1) steps; a ring step passes one chunk of N/W values: {expected}"
            )
        else:
            yield f"W = {world}: the ranks sent {sent}; a ring sends {expected} values each"
        return
