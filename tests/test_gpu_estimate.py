"""utils.gpu_estimate: parameter and FLOP counts against the real models, the memory model
against the peak memory measured on the CPU, and the plan arithmetic."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from utils import gpu_estimate as ge
from utils.models import TransformerClassifier, TransformerLM, count_parameters

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


def test_parameter_counts_match_the_book_models():
    lm = TransformerLM(1000, 64, 4, 3, max_len=32)
    shape = ge.Transformer(
        vocab=1000, d_model=64, n_layers=3, n_heads=4, context=32, batch=2, positions=32
    )
    assert shape.n_params == count_parameters(lm)
    linear = sum(
        m.weight.numel() for m in lm.modules() if isinstance(m, torch.nn.Linear)
    )
    assert shape.matmul_params == linear  # the blocks and the (tied) output layer
    classifier = TransformerClassifier(
        1000, 2, d_model=64, n_heads=4, n_layers=3, max_len=32
    )
    untied = ge.replace(shape, output_rows=2, tied=False)
    assert untied.n_params == count_parameters(classifier)


def test_training_flops_equal_the_counted_flops_of_a_step():
    """3 x (2 M + 4 n L d) per token is what FlopCounterMode counts for a step with the
    attention written out (the fused CPU kernel is not counted)."""
    V, d, H, n, L, B = 500, 64, 4, 2, 16, 3
    model = TransformerLM(V, d, H, n, max_len=L)
    x = torch.randint(0, V, (B, L + 1), generator=torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter:
        logits = model(x[:, :-1], return_attention=True)[0]
        F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
    shape = ge.Transformer(
        vocab=V, d_model=d, n_layers=n, n_heads=H, context=L, batch=B
    )
    assert (
        counter.get_total_flops() == 3 * shape.forward_flops_per_token() * shape.tokens
    )


# Sizes the book profile trains: 4b (a big vocabulary: the logits dominate), 5e's largest
# ladder model (97 characters: the activations dominate), 7.5, and 7.7 with and without the
# attention weights written out.
BOOK_SIZES = {
    "4b": dict(vocab=33_278, d_model=128, n_layers=2, n_heads=4, context=64, batch=16),
    "5e d192-L4": dict(
        vocab=97, d_model=192, n_layers=4, n_heads=6, context=128, batch=16
    ),
    "7.5": dict(
        vocab=30_522, d_model=256, n_layers=4, n_heads=4, context=128, batch=16
    ),
    "7.7": dict(vocab=8192, d_model=256, n_layers=4, n_heads=4, context=256, batch=8),
    "7.7 explicit": dict(
        vocab=8192,
        d_model=256,
        n_layers=4,
        n_heads=4,
        context=256,
        batch=8,
        explicit_attention=True,
    ),
}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("name", list(BOOK_SIZES))
def test_memory_estimate_matches_the_measured_cpu_peak(name, precision):
    """A few Trainer steps of a TransformerLM on the CPU (tests/peak_probe.py, a fresh process),
    fp32 or bf16 autocast (what "amp" is on a GPU).

    Tolerance: the estimate is at least the peak of the bytes PyTorch's allocator handed out
    and at most 30 % above it (measured: 5-18 % above); and it is within 160 MiB of the rise of
    the process's resident memory, which also holds the allocator's and oneDNN's own memory
    (measured: 30-95 MiB more than the tensors), or at most 30 % above that rise.
    """
    spec = dict(BOOK_SIZES[name], precision=precision)
    run = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "peak_probe.py"), json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    sizes = {k: v for k, v in spec.items() if k != "precision"}
    shape = ge.Transformer(**sizes, positions=sizes["context"])
    estimate = ge.training_peak_bytes(shape, "fp32" if precision == "fp32" else "amp")
    tensors, rss = measured["tensor_peak_bytes"], measured["rss_peak_bytes"]
    report = f"estimate {estimate / MiB:.0f} MiB, tensors {tensors / MiB:.0f}, rss {rss / MiB:.0f}"
    assert tensors <= estimate <= 1.3 * tensors, report
    assert rss - 160 * MiB <= estimate <= 1.3 * rss, report


def test_time_is_the_flops_or_the_per_step_floor():
    tiny = ge.Transformer(
        vocab=97, d_model=32, n_layers=2, n_heads=2, context=128, batch=32
    )
    big = ge.Transformer(
        vocab=8192, d_model=768, n_layers=12, n_heads=12, context=512, batch=8
    )
    for gpu in ge.TARGETS:
        seconds = ge.Plan("x").train("t", tiny, 1000).estimate(gpu)["seconds"]
        assert seconds == pytest.approx(1000 * gpu.step_floor(2))  # launch-bound
        seconds = (
            ge.Plan("x").train("t", big, 10, precision="fp32").estimate(gpu)["seconds"]
        )
        flops = 10 * 3 * big.forward_flops_per_token() * big.tokens
        assert seconds == pytest.approx(flops / gpu.flops_per_s("fp32"))
    budget = ge.Plan("x").train("t", big, budget_s=150.0, eval_batches=2)
    assert budget.estimate(ge.T4)["seconds"] > 150.0  # the budget, then the evaluation
    assert ge.T4.flops_per_s("amp") > ge.T4.flops_per_s("fp32")
    with pytest.raises(ValueError, match="precision"):
        ge.T4.flops_per_s("fp8")


def test_plan_peak_total_and_per_gpu_models():
    lm = ge.Transformer(
        vocab=8192, d_model=256, n_layers=4, n_heads=4, context=256, batch=8
    )
    plan = ge.Plan("demo").host("cpu work", 10.0).train("train", lm, 100)
    plan.forward("eval", lm, 5).decode("decode", ge.replace(lm, context=1), 20)
    plan.compute("matmul", 1e12, 2 * MiB).fixed("timed", 3.0, 5 * MiB)
    t4 = plan.estimate(ge.T4)
    assert t4["peak_bytes"] == max(p["peak_bytes"] for p in t4["phases"])
    assert t4["peak_bytes"] == ge.training_peak_bytes(lm, "amp")
    assert t4["seconds"] == pytest.approx(sum(p["seconds"] for p in t4["phases"]))
    assert t4["phases"][0]["seconds"] == 10.0 * ge.T4.host_factor
    assert t4["fits"] and plan.fits(ge.H100)
    json.dumps(plan.to_dict())  # JSON-ready
    assert "demo" in plan.report() and "train" in plan.report()

    def by_memory(gpu):  # sizes that depend on the device, as in chapter 7.7
        return ge.replace(lm, batch=64 if gpu.memory_bytes > 40 * 2**30 else 8)

    rule = ge.Plan("rule").train("t", by_memory, 10)
    assert rule.estimate(ge.H100)["peak_bytes"] > rule.estimate(ge.T4)["peak_bytes"]
    huge = ge.Plan("huge").train("t", ge.replace(lm, batch=4096), 10)
    assert not huge.fits(ge.T4) and "DOES NOT FIT" in huge.report()


def test_largest_fitting_and_usable_memory():
    assert ge.T4.usable_bytes == ge.usable_bytes(
        ge.T4.memory_bytes, ge.T4.context_bytes
    )
    assert ge.T4.usable_bytes < ge.T4.memory_bytes
    sizes = [4, 2, 1]

    def peak(gib):
        return gib * 2**30

    assert ge.largest_fitting(sizes, peak, 5 * 2**30) == 4
    assert ge.largest_fitting(sizes, peak, 3 * 2**30) == 2
    assert ge.largest_fitting(sizes, peak, 0.5 * 2**30) == 1  # none fits: the smallest
    with pytest.raises(ValueError, match="empty"):
        ge.largest_fitting([], peak, 1.0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n_heads"):
        ge.Transformer(vocab=10, d_model=30, n_layers=1, n_heads=4, context=8, batch=1)
    with pytest.raises(ValueError, match="context"):
        ge.Transformer(vocab=10, d_model=32, n_layers=1, n_heads=4, context=0, batch=1)
    lm = ge.LSTM(vocab=100, d_model=16, n_layers=1, context=8, batch=2)
    with pytest.raises(ValueError, match="steps"):
        ge.Plan("x").train("t", lm)  # neither steps nor a budget
    with pytest.raises(ValueError, match="optimizer"):
        ge.Plan("x").train("t", lm, 10, optimizer="lion")
    with pytest.raises(ValueError, match="seconds"):
        ge.Plan("x").host("h", -1)
