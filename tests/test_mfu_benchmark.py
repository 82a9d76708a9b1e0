"""benchmarks/mfu.py: its --tiny run writes a complete report, and its FLOP count is the book's."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import mfu  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)


def test_tiny_run_writes_a_complete_report(tmp_path):
    out = tmp_path / "mfu.json"
    assert mfu.main(["--tiny", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu" and report["machine"]["cpu_count"] >= 1
    assert report["settings"]["threads"] == [1]
    (run,) = report["runs"]
    assert run["peak_flops_median"] > 0
    assert len(run["peak_flops_per_repeat"]) == report["settings"]["repeats"]
    assert set(run["sizes"]) == {"d32-L2", "d48-L2"}
    for size in run["sizes"].values():
        assert size["tokens_per_s_median"] > 0
        assert math.isfinite(size["mfu"]) and size["mfu"] > 0
        assert (
            size["mfu_dense_attention"] > size["mfu"]
        )  # counts the whole T x T matrix
        assert size["mfu"] == pytest.approx(statistics.median(size["mfu_per_repeat"]))
    breakdown = report["time_breakdown"]
    assert sum(breakdown["time_share"].values()) == pytest.approx(1.0)
    assert "matrix products" in breakdown["time_share"]


def test_model_flops_follow_the_books_convention():
    # 3 x (2N + 2·L·T·d + 2·d·V): weights, causal attention, output layer; forward + backward.
    args = mfu.parse_args(["--tiny"])
    args = mfu.resolve_settings(args, torch.device("cpu"))
    shape = mfu.SHAPES["d32-L2"]
    model = mfu.ladder_model(shape, args.vocab, args.context)
    flops = mfu.model_flops(model, shape, args)
    n = flops["non_embedding_params"]
    d, layers, t, v = shape.d_model, shape.n_layers, args.context, args.vocab
    assert flops["per_token"] == 3 * (2 * n + 2 * layers * t * d + 2 * d * v)
    assert flops["per_token_dense_attention"] == 3 * (
        2 * n + 4 * layers * t * d + 2 * d * v
    )
    shares = flops["share_weights"] + flops["share_attention"] + flops["share_lm_head"]
    assert shares == pytest.approx(1.0)


def test_matmul_peak_counts_two_n_cubed():
    rates = mfu.matmul_peak(64, 3, torch.float32, torch.device("cpu"))
    assert len(rates) == 3 and all(r > 0 for r in rates)


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit, match="unknown sizes"):
        mfu.resolve_settings(mfu.parse_args(["--sizes", "d7-L1"]), torch.device("cpu"))
    with pytest.raises(SystemExit, match="threads must be >= 1"):
        mfu.resolve_settings(mfu.parse_args(["--threads", "0"]), torch.device("cpu"))
