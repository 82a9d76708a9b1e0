"""utils.lm_recipes: the adaptive softmax is exact, the batches and evaluation cover what they
claim, the tutorial's model is causal, budgeted training stops, and the benchmark's tiny mode runs.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from utils import lm_recipes as R

REPO = Path(__file__).resolve().parents[1]
V, CUTOFFS, D = 50, [10, 30], 8


def _stream(n=400, seed=0):
    # Zipf-like ids so every cluster is used
    g = torch.Generator().manual_seed(seed)
    weights = 1.0 / torch.arange(1, V + 1, dtype=torch.float)
    return torch.multinomial(weights, n, replacement=True, generator=g)


def _take_the_accelerator_path(monkeypatch):
    """What the adaptive softmax does on a GPU (no cluster's rows picked), here on the CPU."""
    monkeypatch.setattr(R, "reading_is_free", lambda tensor: False)


@pytest.mark.parametrize("path", ["cpu", "accelerator"])
def test_tied_adaptive_softmax_equals_pytorch_adaptive_softmax(monkeypatch, path):
    if path == "accelerator":
        _take_the_accelerator_path(monkeypatch)
    torch.manual_seed(0)
    ours = R.TiedAdaptiveSoftmax(D, V, CUTOFFS)
    embedding = torch.randn(V, D)
    theirs = torch.nn.AdaptiveLogSoftmaxWithLoss(
        D, V, CUTOFFS, div_value=1.0, head_bias=False
    )
    with (
        torch.no_grad()
    ):  # the same parameters in PyTorch's layout: identity projections
        theirs.head.weight.copy_(
            torch.cat([embedding[:10], ours.cluster_scores.weight])
        )
        for k, (lo, hi) in enumerate([(10, 30), (30, V)]):
            theirs.tail[k][0].weight.copy_(torch.eye(D))
            theirs.tail[k][1].weight.copy_(embedding[lo:hi])
    h = torch.randn(64, D)
    assert_close(ours.log_probs(h, embedding), theirs.log_prob(h))
    targets = torch.randint(0, V, (64,))
    assert_close(
        ours.target_log_probs(h, targets, embedding), theirs(h, targets).output
    )


def test_adaptive_distribution_sums_to_one_and_gathers():
    torch.manual_seed(1)
    softmax = R.TiedAdaptiveSoftmax(D, V, CUTOFFS)
    embedding, h = torch.randn(V, D), torch.randn(20, D)
    full = softmax.log_probs(h, embedding)
    assert_close(full.exp().sum(-1), torch.ones(20))
    targets = torch.arange(20) * 2  # head and both tail clusters
    assert_close(
        softmax.target_log_probs(h, targets, embedding), full[torch.arange(20), targets]
    )


@pytest.mark.parametrize(
    "targets_below", [V, CUTOFFS[1]]
)  # all clusters; the last one empty
def test_both_paths_give_the_same_log_probs_and_gradients(monkeypatch, targets_below):
    """The accelerator path scores every row of every cluster and keeps each row's own value
    (torch.where); the CPU path scores only a cluster's rows. Same values up to rounding, and
    the same gradients (the discarded values get none)."""
    torch.manual_seed(2)
    softmax = R.TiedAdaptiveSoftmax(D, V, CUTOFFS)
    embedding = torch.randn(V, D, requires_grad=True)
    h = torch.randn(64, D, requires_grad=True)
    targets = torch.randint(0, targets_below, (64,))

    def log_probs_and_grads():
        out = softmax.target_log_probs(h, targets, embedding)
        weights = (h, embedding, softmax.cluster_scores.weight)
        return out, torch.autograd.grad((out * torch.linspace(1, 2, 64)).sum(), weights)

    on_cpu = log_probs_and_grads()
    _take_the_accelerator_path(monkeypatch)
    assert_close(log_probs_and_grads(), on_cpu)


@pytest.mark.parametrize("cutoffs", [[], [0, 10], [10, 10], [30, 10], [10, V]])
def test_bad_cutoffs_are_rejected(cutoffs):
    with pytest.raises(ValueError, match="cutoffs"):
        R.TiedAdaptiveSoftmax(D, V, cutoffs)


@pytest.mark.parametrize("kind", ["transformer", "lstm"])
def test_adaptive_loss_is_the_full_cross_entropy(kind):
    torch.manual_seed(0)
    if kind == "transformer":
        model = R.AdaptiveTransformerLM(V, CUTOFFS, 16, 2, 1, max_len=12).eval()
    else:
        model = R.AdaptiveLSTMLM(V, CUTOFFS, 16, 1).eval()
    windows = _stream(3 * 13).view(3, 13)
    x, y = windows[:, :-1], windows[:, 1:]
    assert R.cross_entropy_check(model, x, y) < 1e-5
    loss, metrics, n = R.adaptive_lm_loss(model, (x, y))
    assert_close(loss, F.cross_entropy(model(x).flatten(0, 1), y.flatten()))
    assert metrics == {} and n == 36
    # the output weights are the embedding (tied): one tensor
    assert model.embedding_weight.data_ptr() in {
        p.data_ptr() for p in model.parameters()
    }


def test_batchify_and_eval_chunks_cover_every_target_once():
    stream = torch.arange(103)
    columns = R.batchify(stream, 4)
    assert columns.shape == (4, 25) and columns[1, 0] == 25  # row b = the b-th piece
    chunks = R.eval_chunks(columns, 7)
    assert [x.shape[1] for x, _ in chunks] == [7, 7, 7, 3]
    targets = torch.cat([y for _, y in chunks], dim=1)
    assert torch.equal(targets, columns[:, 1:])
    for x, y in chunks:
        assert torch.equal(x + 1, y)  # y is x shifted by one position
    with pytest.raises(ValueError, match="too few"):
        R.batchify(torch.arange(5), 4)


def test_contiguous_chunks_cycle_and_count_tokens():
    batches = R.ContiguousChunks(R.batchify(torch.arange(103), 4), bptt=7)
    assert len(batches) == 4
    assert torch.equal(batches(5)[0], batches(1)[0])  # epoch 2, chunk 1
    assert batches.tokens_in(4) == 4 * 24 and batches.tokens_in(5) == 4 * 24 + 28


def test_random_windows_are_deterministic_and_shifted():
    stream = torch.arange(1000)
    batches = R.RandomWindows(stream, batch_size=5, context=9, seed=3)
    x, y = batches(7)
    assert x.shape == y.shape == (5, 9) and torch.equal(x + 1, y)
    assert torch.equal(batches(7)[0], x) and not torch.equal(batches(8)[0], x)
    assert batches.tokens_in(3) == 3 * 5 * 9
    with pytest.raises(ValueError, match="too short"):
        R.RandomWindows(torch.arange(5), 2, 9)


def test_seed_model_is_causal():
    torch.manual_seed(0)
    model = R.SeedTutorialLM(V, d_model=16, n_heads=2, d_ff=16, n_layers=2).eval()
    x = _stream(10).view(1, 10)
    changed = x.clone()
    changed[0, 6:] = (changed[0, 6:] + 1) % V
    assert_close(model(x)[:, :6], model(changed)[:, :6])
    assert not torch.allclose(model(x)[:, 6:], model(changed)[:, 6:])


def test_frequency_cutoffs_are_valid():
    cutoffs = R.frequency_cutoffs(_stream(5000), V, head_share=0.5)
    assert 0 < cutoffs[0] < cutoffs[1] < V
    R.TiedAdaptiveSoftmax(D, V, cutoffs)  # accepted


def test_train_for_budget_stops_each_run(tmp_path):
    stream = _stream(2000)
    seed_run = R.seed_recipe(V, stream, seed=0)
    torch.manual_seed(0)
    model = R.AdaptiveTransformerLM(V, CUTOFFS, 16, 2, 1, max_len=8)
    path = str(tmp_path / "book.pt")
    book = R.book_recipe(model, stream, 0.3, 4, 8, 3e-3, checkpoint_path=path)
    runs = {"seed": seed_run, "book": book}
    R.train_for_budget(runs, budget_s=0.3, turn_s=0.1, progress=False)
    for run in runs.values():
        assert run.done(0.3) and run.trainer.step >= 1
    assert book.trainer.step <= book.planned_steps
    # a rebuilt book recipe reuses the planned schedule stored next to its checkpoint
    again = R.book_recipe(model, stream, 99.0, 4, 8, 3e-3, checkpoint_path=path)
    assert again.planned_steps == book.planned_steps
    with pytest.raises(ValueError, match="budget_s"):
        R.train_for_budget(runs, budget_s=0)


def test_sample_extends_the_prompt_and_rejects_bad_temperature():
    torch.manual_seed(0)
    model = R.AdaptiveTransformerLM(V, CUTOFFS, 16, 2, 1, max_len=8)
    prompt = torch.tensor([[1, 2, 3]])
    out = R.sample(
        model, prompt, 12, 1.0, context=8, generator=torch.Generator().manual_seed(0)
    )
    assert out.shape == (1, 15) and torch.equal(out[:, :3], prompt)
    for temperature in (0.0, float("inf")):  # one rule with decoding: finite and > 0
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            R.sample(
                model, prompt, 2, temperature, context=8, generator=torch.Generator()
            )


@pytest.mark.parametrize(
    "name", ["adaptive transformer", "adaptive lstm", "seed tutorial"]
)
def test_decoding_generate_drives_the_recipe_models(name):
    """The one sampling loop runs the models that have no ``max_len``, given ``context=``,
    and draws what the tutorial's loop drew: softmax(log-probs / T), one multinomial draw."""
    from utils import decoding
    from utils.losses import logits_of

    torch.manual_seed(0)
    model = {
        "adaptive transformer": lambda: R.AdaptiveTransformerLM(
            V, CUTOFFS, 16, 2, 1, max_len=8
        ),
        "adaptive lstm": lambda: R.AdaptiveLSTMLM(V, CUTOFFS, 16, 1),
        "seed tutorial": lambda: R.SeedTutorialLM(V, d_model=16, d_ff=16, n_layers=1),
    }[name]()
    model.train()
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    out = decoding.generate(
        model,
        prompt,
        6,
        temperature=0.8,
        context=8,
        generator=torch.Generator().manual_seed(1),
    )
    assert model.training  # its mode is given back
    assert out.ids.shape == (1, 8 + 6) and out.dropped == 2 and out.note is not None

    model.eval()
    ids, generator = prompt, torch.Generator().manual_seed(1)
    with torch.no_grad():  # the loop by hand
        for _ in range(6):
            logits = logits_of(model(ids[:, -8:]))[:, -1].float()
            probs = torch.softmax(logits / 0.8, dim=-1)
            ids = torch.cat(
                [ids, torch.multinomial(probs, 1, generator=generator)], dim=1
            )
    assert torch.equal(out.new_ids, ids[:, -6:])
    with pytest.raises(TypeError, match="context=N"):
        decoding.generate(
            model, prompt, 2
        )  # no max_len and no context: say what to pass
    with pytest.raises(ValueError, match="context"):
        decoding.generate(model, prompt, 2, context=0)


def test_benchmark_tiny_mode_writes_its_ratio(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import lm_recipes as benchmark

    out = tmp_path / "lm.json"
    assert benchmark.main(["--tiny", "--budget-s", "0.5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    ratio = report["book_over_seed_valid_ppl"]
    seed, book = report["results"]["seed"], report["results"]["book"]
    assert ratio == pytest.approx(book["valid_perplexity"] / seed["valid_perplexity"])
    assert seed["valid_tokens_scored"] == book["valid_tokens_scored"] > 0
    assert report["machine"]["torch"] == torch.__version__
    with pytest.raises(SystemExit):
        benchmark.main(["--budget-s", "-1"])
