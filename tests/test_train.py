"""Tests for utils.train: loss functions, evaluation, the Trainer, checkpoints and exact resume."""

import functools
import math
import os
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils import lm_recipes, losses, models, optim, train
from utils.train import History, NonFiniteLossError, TrainConfig, Trainer

VOCAB, SEQ, BATCH = 11, 6, 4
CUDA = torch.cuda.is_available()


class TinyLM(torch.nn.Module):
    """Embedding -> (dropout) -> linear: logits [B, T, V]. No batch-dependent layers."""

    def __init__(self, dropout: float = 0.0, return_tuple: bool = False) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(8, VOCAB)
        self.return_tuple = return_tuple

    def forward(self, x):
        logits = self.head(self.dropout(self.embed(x)))
        return (logits, "state") if self.return_tuple else logits


class TinyClassifier(torch.nn.Module):
    """Mean of embeddings (over the first ``lengths`` tokens if given) -> linear: logits [B, 3]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x, lengths=None):
        vectors = self.embed(x)
        if lengths is not None:
            mask = torch.arange(x.size(1))[None, :] < lengths[:, None]
            vectors = vectors * mask[..., None]
            return self.head(vectors.sum(1) / lengths[:, None]), None
        return self.head(vectors.mean(1))


def lm_batch_at(i: int, batch_size: int = BATCH):
    """Deterministic micro-batch ``i``: a random token stream, targets shifted by one."""
    generator = torch.Generator().manual_seed(1000 + i)
    tokens = torch.randint(0, VOCAB, (batch_size, SEQ + 1), generator=generator)
    return tokens[:, :-1].clone(), tokens[
        :, 1:
    ].clone()  # separate storage: safe to edit


def config(**kwargs) -> TrainConfig:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("device", "cpu")
    return TrainConfig(**kwargs)


def new_lm_run(
    dropout=0.0, lr=0.05, optimizer_class=torch.optim.AdamW, schedule=True, steps=6
):
    torch.manual_seed(0)
    model = TinyLM(dropout=dropout)
    optimizer = optimizer_class(model.parameters(), lr=lr)
    scheduler = optim.warmup_cosine(optimizer, 2, steps) if schedule else None
    return model, optimizer, scheduler


# --------------------------------------------------------------------------------------------
# Loss functions and evaluate
# --------------------------------------------------------------------------------------------


def test_lm_loss_matches_manual_cross_entropy_and_ignores_padding():
    torch.manual_seed(0)
    model = TinyLM()
    x, y = lm_batch_at(0)
    y = y.clone()
    y[0, :3] = -100
    loss, metrics, n_tokens = train.lm_loss(model, (x, y))
    logits = model(x)
    keep = y != -100
    log_probs = torch.log_softmax(logits, dim=-1)[keep]
    manual = -log_probs.gather(1, y[keep][:, None]).mean()
    torch.testing.assert_close(loss, manual)
    assert n_tokens == BATCH * SEQ - 3
    assert metrics["accuracy"] == pytest.approx(
        (logits.argmax(-1)[keep] == y[keep]).float().mean().item()
    )
    # a custom ignore_index through functools.partial; tuple outputs give their first element
    y2 = y.clone()
    y2[y2 == -100] = 0
    loss_pad, _, n_pad = functools.partial(train.lm_loss, ignore_index=0)(
        TinyLM(return_tuple=True), (x, y2)
    )
    assert n_pad == int((y2 != 0).sum())
    assert torch.isfinite(loss_pad)


def test_lm_loss_rejects_bad_shapes_and_all_padding():
    model = TinyLM()
    x, y = lm_batch_at(0)
    with pytest.raises(ValueError, match="logits"):
        train.lm_loss(model, (x, y[:, :-1]))
    with pytest.raises(ValueError, match="ignore_index"):
        train.lm_loss(model, (x, torch.full_like(y, -100)))
    with pytest.raises(TypeError, match="batch"):
        train.lm_loss(model, x)


def test_classification_loss_both_batch_forms():
    torch.manual_seed(0)
    model = TinyClassifier()
    x = torch.randint(0, VOCAB, (5, 7))
    labels = torch.tensor([0, 1, 2, 1, 0])
    loss, metrics, n = train.classification_loss(model, (x, labels))
    logits = model(x)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    assert n == 5
    assert metrics["accuracy"] == pytest.approx(
        (logits.argmax(1) == labels).float().mean().item()
    )

    lengths = torch.tensor([7, 3, 5, 1, 7])
    loss_len, _, _ = train.classification_loss(
        model, (x, lengths, labels)
    )  # tuple output
    logits_len = model(x, lengths)[0]
    torch.testing.assert_close(loss_len, F.cross_entropy(logits_len, labels))


def test_evaluate_is_token_weighted_restores_modes_and_uses_no_grad():
    torch.manual_seed(0)
    model = TinyLM(dropout=0.5)
    model.train()
    model.head.eval()  # a mixed state that must come back as it was
    batches = [lm_batch_at(i, batch_size=b) for i, b in enumerate([1, 3, 2])]
    batches[1][1][
        0, :4
    ] = -100  # uneven token counts make a batch-mean differ from a token-mean
    result = train.evaluate(model, batches, train.lm_loss)

    # second derivation: one cross-entropy over all tokens at once, dropout off
    model_copy = TinyLM()
    model_copy.load_state_dict(model.state_dict())
    logits = torch.cat([model_copy(x).reshape(-1, VOCAB) for x, _ in batches])
    targets = torch.cat([y.reshape(-1) for _, y in batches])
    expected = F.cross_entropy(logits, targets, ignore_index=-100).item()
    assert result["loss"] == pytest.approx(expected, rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(expected), rel=1e-6)
    assert result["n_tokens"] == int((targets != -100).sum())
    assert model.training and model.dropout.training and not model.head.training
    assert all(p.grad is None for p in model.parameters())

    first_two = train.evaluate(model, batches, train.lm_loss, max_batches=2)
    assert first_two["n_tokens"] == result["n_tokens"] - 2 * SEQ
    classification = train.evaluate(
        TinyClassifier(), [(torch.randint(0, VOCAB, (4, 5)), torch.tensor([0, 1, 2, 0]))],
        train.classification_loss,
    )  # fmt: skip
    assert "perplexity" not in classification and 0 <= classification["accuracy"] <= 1
    with pytest.raises(ValueError, match="empty"):
        train.evaluate(model, [], train.lm_loss)


# --------------------------------------------------------------------------------------------
# Config and precision validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_steps": 0}, ValueError, "max_steps"),
        ({"max_steps": 2.5}, TypeError, "max_steps"),
        ({"max_steps": True}, TypeError, "max_steps"),
        ({"max_steps": 5, "grad_accum_steps": 0}, ValueError, "grad_accum_steps"),
        ({"max_steps": 5, "clip_grad_norm": -1.0}, ValueError, "clip_grad_norm"),
        (
            {"max_steps": 5, "clip_grad_norm": float("nan")},
            ValueError,
            "clip_grad_norm",
        ),
        ({"max_steps": 5, "precision": "fp8"}, ValueError, "precision"),
        ({"max_steps": 5, "precision": "fp16", "device": "cpu"}, ValueError, "fp16"),
        ({"max_steps": 5, "eval_every": 0}, ValueError, "eval_every"),
        ({"max_steps": 5, "checkpoint_every": 2}, ValueError, "checkpoint_path"),
        ({"max_steps": 5, "device": "tpu9"}, ValueError, "device"),
        ({"max_steps": 5, "seed": -1}, ValueError, "seed"),
        ({"max_steps": 5, "compile": "yes"}, TypeError, "compile"),
        ({"max_steps": 5, "peak_flops": 0}, ValueError, "peak_flops"),
    ],
)
def test_config_validation(kwargs, error, message):
    with pytest.raises(error, match=message):
        TrainConfig(**kwargs)


def test_resolve_precision_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert train.resolve_precision("auto", cpu) == "fp32"
    assert train.resolve_precision("bf16", cpu) == "bf16"
    assert train.resolve_precision("auto", cuda, bf16_supported=True) == "bf16"
    assert (
        train.resolve_precision("auto", cuda, bf16_supported=False) == "fp16"
    )  # e.g. a T4
    assert train.resolve_precision("fp16", cuda, bf16_supported=True) == "fp16"
    with pytest.raises(ValueError, match="native bf16"):
        train.resolve_precision("bf16", cuda, bf16_supported=False)
    with pytest.raises(ValueError, match="CUDA"):
        train.resolve_precision("fp16", cpu)


@pytest.mark.skipif(CUDA, reason="checks the CPU-only guard")
def test_fp16_on_a_cpu_only_machine_is_refused_by_the_trainer():
    model, optimizer, _ = new_lm_run()
    with pytest.raises(ValueError, match="fp16"):
        Trainer(
            model, optimizer, train.lm_loss, TrainConfig(max_steps=1, precision="fp16")
        )


def test_peak_flops_lookup():
    assert train.peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert train.peak_flops_for("NVIDIA A100 80GB PCIe") == 312e12
    assert train.peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert train.peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert train.peak_flops_for("Tesla T4") == 65e12
    assert train.peak_flops_for("NVIDIA L4") == 121e12
    assert train.peak_flops_for("NVIDIA L40S") == 362e12
    assert train.peak_flops_for("NVIDIA A10") == 125e12
    assert train.peak_flops_for("NVIDIA A10G") is None  # not "A10", not "A100"
    assert train.peak_flops_for("Tesla V100-PCIE-16GB") == 112e12
    assert train.peak_flops_for("Some Laptop GPU") is None
    # the book's convention (Kaplan: the causal half of the scores), and the dense count
    assert (
        train.training_flops_per_token(1000, n_layers=2, d_model=8, seq_len=16)
        == 6000 + 1536
    )
    dense = train.training_flops_per_token(1000, 2, 8, 16, attention="dense")
    assert dense == 6000 + 3072
    assert train.training_flops_per_token(1000) == 6000


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def test_gradient_accumulation_equals_one_big_batch():
    def run(accum, batch_at):
        model, optimizer, scheduler = new_lm_run(optimizer_class=optim.Adam, steps=4)
        cfg = config(max_steps=4, grad_accum_steps=accum, clip_grad_norm=0.5)
        history = Trainer(model, optimizer, train.lm_loss, cfg, scheduler).fit(batch_at)
        return model, history

    def big_batch_at(i):  # the two micro-batches 2i and 2i+1 as one batch
        (x1, y1), (x2, y2) = lm_batch_at(2 * i), lm_batch_at(2 * i + 1)
        return torch.cat([x1, x2]), torch.cat([y1, y2])

    accumulated, history_accumulated = run(2, lm_batch_at)
    big, history_big = run(1, big_batch_at)
    for a, b in zip(accumulated.parameters(), big.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    for name in (
        "train_loss",
        "grad_norm",
    ):  # Python floats from fp32 values: compare as fp32
        accumulated_values = torch.tensor(getattr(history_accumulated, name))
        torch.testing.assert_close(
            accumulated_values, torch.tensor(getattr(history_big, name))
        )


def test_clipping_limits_the_update_and_records_the_unclipped_norm():
    torch.manual_seed(0)
    model = TinyLM()
    reference = TinyLM()
    reference.load_state_dict(model.state_dict())
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    cfg = config(max_steps=1, clip_grad_norm=0.01, seed=None)
    history = Trainer(model, optimizer, train.lm_loss, cfg).fit(lm_batch_at)

    train.lm_loss(reference, lm_batch_at(0))[0].backward()
    true_norm = torch.linalg.vector_norm(
        torch.cat([p.grad.flatten() for p in reference.parameters()])
    )
    assert history.grad_norm[0] == pytest.approx(true_norm.item(), rel=1e-5)
    assert true_norm > 0.01  # so clipping did something
    update = torch.cat(
        [
            (p.detach() - b).flatten()
            for p, b in zip(model.parameters(), before, strict=True)
        ]
    )
    assert torch.linalg.vector_norm(update).item() == pytest.approx(0.01, rel=1e-4)


def test_scheduler_steps_once_per_optimizer_step():
    model, optimizer, _ = new_lm_run(lr=0.1, schedule=False)
    scheduler = optim.warmup_cosine(
        optimizer, warmup_steps=2, total_steps=5, min_lr_ratio=0.0
    )
    cfg = config(max_steps=5, grad_accum_steps=3)
    history = Trainer(model, optimizer, train.lm_loss, cfg, scheduler).fit(lm_batch_at)
    cosine = [0.1 * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(3)]
    assert history.lr == pytest.approx([0.05, 0.1, *cosine])
    assert scheduler.last_epoch == 5
    assert history.steps == [1, 2, 3, 4, 5]
    assert len(history.train_metrics["accuracy"]) == 5


def test_throughput_and_mfu_are_recorded():
    model, optimizer, scheduler = new_lm_run()
    cfg = config(max_steps=3, flops_per_token=600.0, peak_flops=1e9, log_every=1)
    history = Trainer(model, optimizer, train.lm_loss, cfg, scheduler).fit(lm_batch_at)
    assert all(t > 0 for t in history.tokens_per_s)
    assert history.mfu == pytest.approx([600.0 * t / 1e9 for t in history.tokens_per_s])
    assert history.time == sorted(history.time)
    no_peak = Trainer(
        *new_lm_run()[:2], train.lm_loss, config(max_steps=1, flops_per_token=6.0)
    )
    assert no_peak.fit(lm_batch_at).mfu == [None]  # CPU: no known peak


def test_progress_bar_path_runs(capsys):
    model, optimizer, scheduler = new_lm_run()
    cfg = config(max_steps=2, progress=True, log_every=1)
    Trainer(model, optimizer, train.lm_loss, cfg, scheduler).fit(lm_batch_at)
    captured = capsys.readouterr()
    assert "step 2/2" in captured.out + captured.err


def test_classification_training_with_eval_records():
    torch.manual_seed(0)
    model = TinyClassifier()
    x = torch.randint(0, VOCAB, (12, 5))
    labels = x[:, 0] % 3  # learnable from the tokens
    data = [(x[i : i + 4], labels[i : i + 4]) for i in range(0, 12, 4)]
    optimizer = optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    cfg = config(max_steps=30, eval_every=10)
    history = Trainer(model, optimizer, train.classification_loss, cfg).fit(data, data)
    assert history.eval_steps == [10, 20, 30]
    assert history.eval_loss[-1] < history.eval_loss[0]
    assert history.eval_metric("accuracy")[-1] >= 0.5
    assert "perplexity" not in history.eval[-1]


def test_bf16_autocast_on_cpu_runs_the_model_in_bf16():
    dtypes = []

    def spying_loss(model, batch):
        dtypes.append(model(batch[0]).dtype)
        return train.lm_loss(model, batch)

    model, optimizer, scheduler = new_lm_run()
    trainer = Trainer(
        model, optimizer, spying_loss, config(max_steps=3, precision="bf16"), scheduler
    )
    history = trainer.fit(lm_batch_at, [lm_batch_at(99)])
    assert trainer.precision == "bf16" and trainer.scaler is None
    assert dtypes == [torch.bfloat16] * 4  # 3 training steps + 1 evaluation
    assert all(math.isfinite(v) for v in history.train_loss)
    assert model.head.weight.dtype == torch.float32  # master weights stay fp32

    dtypes.clear()
    auto = Trainer(*new_lm_run()[:2], spying_loss, config(max_steps=1))
    auto.fit(lm_batch_at)
    assert auto.precision == "fp32" and dtypes == [torch.float32]


def test_non_finite_loss_stops_with_the_step_number():
    calls = {"n": 0}

    def loss_with_nan_at_step_3(model, batch):
        loss, metrics, n = train.lm_loss(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics, n

    model, optimizer, scheduler = new_lm_run()
    trainer = Trainer(
        model, optimizer, loss_with_nan_at_step_3, config(max_steps=6), scheduler
    )
    with pytest.raises(NonFiniteLossError, match="step 3") as error:
        trainer.fit(lm_batch_at)
    assert error.value.step == 3 and trainer.step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_diverging_training_raises_non_finite_loss_error():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e3)

    def mse(model, batch):
        x, y = batch
        return F.mse_loss(model(x), y), {}, len(x)

    data = [(torch.randn(8, 4) * 10, torch.randn(8, 1))]
    trainer = Trainer(model, optimizer, mse, config(max_steps=200, clip_grad_norm=None))
    with pytest.raises(NonFiniteLossError, match=r"at step \d+"):
        trainer.fit(data)
    assert trainer.step < 200


def test_data_errors_are_clear():
    model, optimizer, _ = new_lm_run()
    with pytest.raises(ValueError, match="empty"):
        Trainer(model, optimizer, train.lm_loss, config(max_steps=2)).fit([])
    one_shot = (lm_batch_at(i) for i in range(2))
    with pytest.raises(ValueError, match="one-shot"):
        Trainer(model, optimizer, train.lm_loss, config(max_steps=3)).fit(one_shot)
    with pytest.raises(TypeError, match="train_batches"):
        Trainer(model, optimizer, train.lm_loss, config(max_steps=2)).fit(42)
    with pytest.raises(TypeError, match="re-iterable"):
        Trainer(model, optimizer, train.lm_loss, config(max_steps=2)).fit(
            lm_batch_at, eval_batches=iter([lm_batch_at(0)])
        )
    with pytest.raises(ValueError, match="eval_batches"):
        Trainer(model, optimizer, train.lm_loss, config(max_steps=2, eval_every=1)).fit(
            lm_batch_at
        )
    with pytest.raises(TypeError, match="n_tokens"):
        Trainer(
            model,
            optimizer,
            lambda m, b: (train.lm_loss(m, b)[0], {}, 0),
            config(max_steps=1),
        ).fit(lm_batch_at)


def test_compile_wraps_the_forward_model_but_checkpoints_the_original(
    monkeypatch, tmp_path
):
    compiled = []

    class Wrapper(torch.nn.Module):  # stands in for torch.compile's OptimizedModule
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

        def forward(self, *args):
            compiled.append(True)
            return self._orig_mod(*args)

    monkeypatch.setattr(torch, "compile", Wrapper)
    model, optimizer, scheduler = new_lm_run()
    path = tmp_path / "run.pt"
    cfg = config(max_steps=2, compile=True, checkpoint_path=str(path))
    Trainer(model, optimizer, train.lm_loss, cfg, scheduler).fit(lm_batch_at)
    assert len(compiled) == 2
    saved = torch.load(path, weights_only=True)
    assert set(saved["model"]) == set(TinyLM().state_dict())


# --------------------------------------------------------------------------------------------
# Checkpoints and exact resume
# --------------------------------------------------------------------------------------------


class ReplayableBatches:
    """A re-iterable that is not a sequence: 5 batches per pass, same order every pass."""

    def __iter__(self):
        return (lm_batch_at(i) for i in range(5))


def shuffled_loader():
    """A shuffling DataLoader with its own seeded generator: same order whenever re-created."""
    x, y = lm_batch_at(0, batch_size=10)
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y),
        batch_size=4,  # 3 batches per pass (4, 4, 2): resuming crosses pass boundaries
        shuffle=True,
        generator=torch.Generator().manual_seed(5),
    )


DATA_FORMS = {  # each run gets a freshly made data source, as a new session would
    "batch_at": lambda: lm_batch_at,
    "list": lambda: [lm_batch_at(i) for i in range(7)],
    "iterable": ReplayableBatches,
    "dataloader": shuffled_loader,
}


@pytest.mark.parametrize(
    ("data_form", "optimizer_class"),
    [
        ("batch_at", torch.optim.AdamW),
        ("list", torch.optim.AdamW),
        ("iterable", torch.optim.AdamW),
        ("dataloader", torch.optim.AdamW),
        (
            "batch_at",
            optim.AdamW,
        ),  # the teaching optimizer's state survives a checkpoint too
    ],
    ids=["batch_at", "list", "iterable", "dataloader", "batch_at-utils.optim.AdamW"],
)
def test_resume_is_exact(tmp_path, data_form, optimizer_class):
    eval_batches = [lm_batch_at(100), lm_batch_at(101)]
    total, interrupted_at = 8, 4

    def make_trainer(max_steps, path):
        model, optimizer, scheduler = new_lm_run(
            dropout=0.3, optimizer_class=optimizer_class, steps=total
        )
        cfg = config(
            max_steps=max_steps,
            grad_accum_steps=2,
            eval_every=2,
            checkpoint_path=path,
            seed=3,
        )
        return Trainer(model, optimizer, train.lm_loss, cfg, scheduler)

    straight = make_trainer(total, None)
    straight.fit(DATA_FORMS[data_form](), eval_batches)

    path = str(tmp_path / "ckpt" / "run.pt")
    make_trainer(interrupted_at, path).fit(DATA_FORMS[data_form](), eval_batches)
    assert os.path.exists(path)
    # scramble every RNG, as a new Python session would
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    resumed = make_trainer(total, path)  # fresh model, optimizer and scheduler
    history = resumed.fit(DATA_FORMS[data_form](), eval_batches)

    assert history.steps == list(range(1, total + 1))
    assert (
        history.train_loss == straight.history.train_loss
    )  # exactly, not approximately
    assert history.lr == straight.history.lr
    assert history.grad_norm == straight.history.grad_norm
    assert history.eval == straight.history.eval
    for a, b in zip(
        resumed.model.parameters(), straight.model.parameters(), strict=True
    ):
        assert torch.equal(a, b)
    assert resumed.micro_batches_consumed == 2 * total


def test_dropout_rng_matters_for_resume(tmp_path):
    """Without the RNG restore the resumed run differs: the exactness test can fail."""
    path = str(tmp_path / "run.pt")

    def make_trainer(max_steps, checkpoint_path=path):
        model, optimizer, scheduler = new_lm_run(dropout=0.3, steps=6)
        cfg = config(max_steps=max_steps, checkpoint_path=checkpoint_path)
        return Trainer(model, optimizer, train.lm_loss, cfg, scheduler)

    straight = make_trainer(6, checkpoint_path=None)
    straight.fit(lm_batch_at)
    make_trainer(3).fit(lm_batch_at)
    resumed = make_trainer(6)
    resumed.load_checkpoint(path, restore_rng=False)
    torch.manual_seed(12345)
    resumed.fit(lm_batch_at)
    assert resumed.history.train_loss[:3] == straight.history.train_loss[:3]
    assert resumed.history.train_loss[3:] != straight.history.train_loss[3:]


def test_checkpoint_contents_load_with_weights_only(tmp_path):
    path = tmp_path / "run.pt"
    model, optimizer, scheduler = new_lm_run(optimizer_class=optim.Adam)
    cfg = config(max_steps=4, checkpoint_path=str(path), checkpoint_every=2)
    trainer = Trainer(model, optimizer, train.lm_loss, cfg, scheduler)
    trainer.fit(lm_batch_at, [lm_batch_at(50)])
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["step"] == 4 and checkpoint["micro_batches_consumed"] == 4
    assert checkpoint["config"]["max_steps"] == 4
    assert set(checkpoint["rng"]) == {"python", "numpy", "torch", "cuda"}
    assert checkpoint["scheduler"]["last_epoch"] == 4
    assert History.from_dict(checkpoint["history"]) == trainer.history
    assert [name for name in os.listdir(tmp_path)] == [
        "run.pt"
    ]  # no temporary file left over

    # a finished run resumes to "nothing left to do"
    model2, optimizer2, scheduler2 = new_lm_run(optimizer_class=optim.Adam)
    again = Trainer(model2, optimizer2, train.lm_loss, cfg, scheduler2)
    assert again.fit(lm_batch_at) == trainer.history
    for a, b in zip(model2.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_a_scheduler_mismatch(tmp_path):
    path = str(tmp_path / "run.pt")
    model, optimizer, scheduler = new_lm_run()
    Trainer(
        model,
        optimizer,
        train.lm_loss,
        config(max_steps=2, checkpoint_path=path),
        scheduler,
    ).fit(lm_batch_at)
    model, optimizer, _ = new_lm_run()
    trainer = Trainer(
        model, optimizer, train.lm_loss, config(max_steps=4, checkpoint_path=path)
    )
    with pytest.raises(ValueError, match="scheduler"):
        trainer.fit(lm_batch_at)


def test_history_round_trip():
    history = History(
        steps=[1, 2],
        train_loss=[2.0, 1.5],
        lr=[0.1, 0.1],
        grad_norm=[1.0, 0.5],
        tokens_per_s=[10.0, 12.0],
        mfu=[None, None],
        time=[0.1, 0.2],
        train_metrics={"accuracy": [0.1, 0.2]},
        eval=[{"step": 2, "loss": 1.4, "perplexity": math.exp(1.4)}],
    )
    assert History.from_dict(history.to_dict()) == history
    assert (
        history.eval_steps == [2] and history.eval_loss == [1.4] and len(history) == 2
    )
    with pytest.raises(ValueError, match="unknown"):
        History.from_dict({"bogus": []})


# --------------------------------------------------------------------------------------------
# CUDA-only paths (skipped on CPU machines)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp16", "bf16", "auto"])
def test_cuda_mixed_precision_trains_and_resumes(tmp_path, precision):
    path = str(tmp_path / "run.pt")

    def make_trainer(max_steps):
        model, optimizer, scheduler = new_lm_run(dropout=0.3, steps=6)
        cfg = config(
            max_steps=max_steps,
            precision=precision,
            device="cuda",
            checkpoint_path=path,
        )
        return Trainer(model, optimizer, train.lm_loss, cfg, scheduler)

    make_trainer(3).fit(lm_batch_at, [lm_batch_at(9)])
    resumed = make_trainer(6)
    history = resumed.fit(lm_batch_at, [lm_batch_at(9)])
    assert (resumed.scaler is not None) == (resumed.precision == "fp16")
    assert all(math.isfinite(v) for v in history.train_loss) and len(history) == 6
    assert resumed.peak_flops is None or resumed.peak_flops > 1e13
    checkpoint = torch.load(path, weights_only=True)
    assert (checkpoint["grad_scaler"] is not None) == (resumed.precision == "fp16")


# --------------------------------------------------------------------------------------------
# fp16 with a GradScaler, run on the CPU
# --------------------------------------------------------------------------------------------

INF = float("inf")


def use_fp16_on_the_cpu(monkeypatch, **scaler_options):
    """Trainers made after this run fp16 autocast with a real GradScaler on the CPU (torch has
    both there; the book's rules keep fp16 for CUDA, where it is worth it)."""
    monkeypatch.setattr(train, "resolve_precision", lambda precision, device: "fp16")
    monkeypatch.setattr(
        train,
        "make_grad_scaler",
        lambda device, precision: torch.amp.GradScaler("cpu", **scaler_options),
    )


def overflow_at(trainer, steps):
    """Make the gradients of the steps ``steps`` (counted from 1) infinite, as an fp16
    overflow does: the hook replaces the head's gradient in every backward of those steps."""

    def hook(grad):
        return torch.full_like(grad, INF) if trainer.step + 1 in steps else grad

    trainer.model.head.weight.register_hook(hook)


def recorded(events, name, function):
    @functools.wraps(function)  # keeps the LR scheduler's mark on optimizer.step
    def wrapper(*args, **kwargs):
        events.append(name)
        return function(*args, **kwargs)

    return wrapper


def global_norm(model):
    return torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for p in model.parameters()])
    )


def test_fp16_step_order_and_clipping_of_the_unscaled_gradients(monkeypatch):
    cfg = config(max_steps=3, grad_accum_steps=2, clip_grad_norm=0.1)
    fp32 = Trainer(*new_lm_run(steps=3)[:2], train.lm_loss, cfg).fit(lm_batch_at)
    use_fp16_on_the_cpu(monkeypatch)
    model, optimizer, scheduler = new_lm_run(steps=3)
    trainer = Trainer(model, optimizer, train.lm_loss, cfg, scheduler)
    scaler = trainer.scaler
    assert trainer.precision == "fp16" and isinstance(scaler, torch.amp.GradScaler)

    events, seen = [], {"scaled": [], "clipped": [], "stepped": []}
    for name in ("scale", "step", "update"):
        setattr(scaler, name, recorded(events, name, getattr(scaler, name)))
    optimizer.step = recorded(events, "optimizer.step", optimizer.step)
    scheduler.step = recorded(events, "scheduler.step", scheduler.step)
    model.head.weight.register_post_accumulate_grad_hook(
        lambda p: events.append("backward")
    )
    unscale, clip, step = scaler.unscale_, train.clip_gradients, optimizer.step

    def spying_unscale(opt):
        events.append("unscale_")
        seen["scaled"].append((global_norm(model), scaler.get_scale()))
        return unscale(opt)

    def spying_clip(opt, max_norm):
        events.append("clip")
        seen["clipped"].append(global_norm(model))
        return clip(opt, max_norm)

    def spying_step(*args, **kwargs):
        seen["stepped"].append(global_norm(model))
        return step(*args, **kwargs)

    scaler.unscale_, optimizer.step = spying_unscale, functools.wraps(step)(spying_step)
    monkeypatch.setattr(train, "clip_gradients", spying_clip)
    history = trainer.fit(lm_batch_at)

    one_step = ["scale", "backward"] * 2 + [
        "unscale_",
        "clip",
        "step",
        "optimizer.step",
    ]
    assert events == (one_step + ["update", "scheduler.step"]) * 3
    for (scaled, scale), clipped, stepped, recorded_norm in zip(
        seen["scaled"], seen["clipped"], seen["stepped"], history.grad_norm, strict=True
    ):
        assert scale == 2.0**16 and scaled.item() == pytest.approx(
            scale * clipped.item()
        )
        assert clipped.item() == pytest.approx(recorded_norm) and recorded_norm > 0.1
        assert stepped.item() == pytest.approx(0.1, rel=1e-4)  # clipped to max_norm
    # the norm clipping saw is the true one: what an fp32 run of the same first step computes
    assert history.grad_norm[0] == pytest.approx(fp32.grad_norm[0], rel=1e-2)


def test_an_fp16_overflow_skips_the_update_shrinks_the_scale_and_still_counts(
    monkeypatch,
):
    use_fp16_on_the_cpu(monkeypatch)
    model, optimizer, scheduler = new_lm_run(steps=4)
    trainer = Trainer(model, optimizer, train.lm_loss, config(max_steps=4), scheduler)
    overflow_at(trainer, {2})
    after, updates, train_step = {}, [], trainer.train_step
    optimizer.step = recorded(updates, "update", optimizer.step)

    def recording_train_step(data):
        train_step(data)
        after[trainer.step] = {
            "params": [p.detach().clone() for p in model.parameters()],
            "adam_steps": [
                float(optimizer.state[p]["step"]) for p in model.parameters()
            ],
            "scale": trainer.scaler.get_scale(),
            "updates": len(updates),
        }

    trainer.train_step = recording_train_step
    history = trainer.fit(lm_batch_at)

    assert [after[s]["updates"] for s in (1, 2, 3, 4)] == [
        1,
        1,
        2,
        3,
    ]  # step 2: no update
    for a, b in zip(after[1]["params"], after[2]["params"], strict=True):
        assert torch.equal(a, b)
    assert after[2]["adam_steps"] == after[1]["adam_steps"] == [1.0] * 3  # 3 tensors
    assert not torch.equal(
        after[2]["params"][0], after[3]["params"][0]
    )  # updates resume
    assert [after[s]["scale"] for s in (1, 2, 3, 4)] == [
        2.0**16,
        2.0**15,
        2.0**15,
        2.0**15,
    ]
    # the skipped step is a step: it used its batch and appears in the history
    assert trainer.step == 4 and trainer.micro_batches_consumed == 4
    assert history.steps == [1, 2, 3, 4] and all(map(math.isfinite, history.train_loss))
    assert history.grad_norm[1] == INF and all(
        map(math.isfinite, history.grad_norm[::2])
    )


def test_fp16_skipped_steps_keep_their_place_in_the_schedule(monkeypatch):
    """The schedule is a function of the step number: a skipped step uses up its rate (no
    shift, so the planned schedule still ends at max_steps), and PyTorch's warning about a
    first ``optimizer.step()`` that did not happen is silenced, as that is intended."""
    use_fp16_on_the_cpu(monkeypatch)

    def run(overflows):
        model, optimizer, scheduler = new_lm_run(steps=5)
        trainer = Trainer(
            model, optimizer, train.lm_loss, config(max_steps=5), scheduler
        )
        overflow_at(trainer, overflows)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = trainer.fit(lm_batch_at)
        return trainer, history, [str(w.message) for w in caught]

    clean, skipping = run(set()), run({1, 3})  # the first step too: where PyTorch warns
    assert skipping[0].scaler.get_scale() == 2.0**14  # two overflows, two halvings
    assert skipping[1].lr == clean[1].lr  # the same rate at every step
    cosine = [
        0.05 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 3))) for k in range(3)
    ]
    assert clean[1].lr == pytest.approx(
        [0.025, 0.05, *cosine]
    )  # warm-up 2, max_steps 5
    assert skipping[0].scheduler.last_epoch == 5
    assert not [m for m in skipping[2] if "lr_scheduler.step()" in m], skipping[2]


def test_fp16_resume_restores_the_grad_scaler_exactly(monkeypatch, tmp_path):
    use_fp16_on_the_cpu(
        monkeypatch, growth_interval=3
    )  # the scale doubles after 3 good steps
    path, total = str(tmp_path / "run.pt"), 8

    def make_trainer(max_steps, checkpoint_path):
        model, optimizer, scheduler = new_lm_run(dropout=0.3, steps=total)
        cfg = config(max_steps=max_steps, checkpoint_path=checkpoint_path, seed=3)
        trainer = Trainer(model, optimizer, train.lm_loss, cfg, scheduler)
        overflow_at(trainer, {6})
        return trainer

    straight = make_trainer(total, None)
    straight.fit(lm_batch_at)
    make_trainer(4, path).fit(lm_batch_at)
    saved = torch.load(path, weights_only=True)["grad_scaler"]
    assert (
        saved["scale"] == 2.0**17 and saved["_growth_tracker"] == 1
    )  # not a fresh scaler's
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    resumed = make_trainer(total, path)
    history = resumed.fit(lm_batch_at)

    assert history.steps == list(range(1, total + 1))
    for name in ("train_loss", "grad_norm", "lr"):
        assert getattr(history, name) == getattr(straight.history, name), name
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    assert (
        resumed.scaler.get_scale() == 2.0**16
    )  # grew to 2^17 at step 3, halved at step 6
    for a, b in zip(
        resumed.model.parameters(), straight.model.parameters(), strict=True
    ):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# No waiting for the device between logging steps
# --------------------------------------------------------------------------------------------

# Every way Python code reads a tensor's value: on a GPU each one waits for the device (a sync).
# The first ones hand a value to Python; the others make a tensor whose size depends on values.
HOST_READS = (
    "item",
    "tolist",
    "numpy",
    "cpu",
    "__float__",
    "__int__",
    "__bool__",
    "__index__",
)
SIZE_FROM_VALUES = ("nonzero", "masked_select", "unique")


def count_host_reads(monkeypatch, when):
    """Patch every host read (and torch.cuda.synchronize) to note ``when()`` it happens.

    Covers the reads above, ``nonzero`` & co. as methods and functions, and indexing with a
    boolean mask (``x[mask]``: its size is the number of True values).
    """
    reads = []

    def spy(original, only_if=lambda *args: True):
        def wrapper(*args, **kwargs):
            if only_if(*args):
                reads.append(when())
            return original(*args, **kwargs)

        return wrapper

    def boolean_index(tensor, index):
        items = index if isinstance(index, tuple) else (index,)
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)

    for name in HOST_READS + SIZE_FROM_VALUES:
        monkeypatch.setattr(torch.Tensor, name, spy(getattr(torch.Tensor, name)))
    for name in SIZE_FROM_VALUES:
        monkeypatch.setattr(torch, name, spy(getattr(torch, name)))
    monkeypatch.setattr(
        torch.Tensor, "__getitem__", spy(torch.Tensor.__getitem__, boolean_index)
    )
    monkeypatch.setattr(torch.cuda, "synchronize", spy(torch.cuda.synchronize))
    return reads


def take_the_accelerator_path(monkeypatch):
    """Make this CPU run stand in for a GPU one: the value checks that only a CPU does for
    free (the range of token ids, all-padding rows, the adaptive softmax picking a cluster's
    rows) take the path they take on an accelerator."""
    monkeypatch.setattr(
        losses, "_require_counted_targets", lambda counted, ignore_index: None
    )
    for module in (models, lm_recipes):
        monkeypatch.setattr(module, "reading_is_free", lambda tensor: False)


def test_no_host_reads_between_logging_steps(monkeypatch):
    # lm_loss checks for an all-padding batch only when the targets are on the CPU (a GPU would
    # have to stop for it); remove that check so this CPU run stands in for a GPU one.
    take_the_accelerator_path(monkeypatch)
    model, optimizer, _ = new_lm_run(optimizer_class=torch.optim.SGD, schedule=False)
    cfg = config(max_steps=7, grad_accum_steps=2, sync_every=3)
    trainer = Trainer(model, optimizer, train.lm_loss, cfg)
    reads = count_host_reads(monkeypatch, lambda: trainer.step + 1)  # the step computed
    history = trainer.fit(lm_batch_at)
    # reads (of all the numbers since the last logging step) on every sync_every-th step and the
    # last only; SGD reads nothing (Adam reads its step counter, kept on the CPU even with a GPU)
    assert sorted(set(reads)) == [3, 6, 7]
    assert (
        history.steps == list(range(1, 8))
        and len(history.train_metrics["accuracy"]) == 7
    )

    # the spy does catch a per-step read: a loss function that calls .item() every micro-batch
    def reading_loss(model, batch):
        loss, metrics, n_tokens = train.lm_loss(model, batch)
        return loss, {"loss_again": loss.item()}, n_tokens

    model, optimizer, _ = new_lm_run(optimizer_class=torch.optim.SGD, schedule=False)
    trainer = Trainer(model, optimizer, reading_loss, cfg)
    reads = count_host_reads(monkeypatch, lambda: trainer.step + 1)  # the step computed
    trainer.fit(lm_batch_at)
    assert set(reads) == set(range(1, 8))


def classifier_batch_at(i: int):
    """Token ids with trailing padding (id 0), at least one real token per row; 3 labels."""
    x, _ = lm_batch_at(i)
    x[:, 0] = x[:, 0].clamp(min=1)
    x[torch.arange(SEQ) >= torch.arange(BATCH)[:, None] + 2] = (
        0  # row b: b + 2 real tokens
    )
    return x, x[:, 0] % 3


BOOK_MODELS = {  # name: (model, loss function, batch_at), small sizes
    "TransformerLM": lambda: (
        models.TransformerLM(VOCAB, 8, 2, 2, max_len=SEQ),
        train.lm_loss,
        lm_batch_at,
    ),
    "TransformerLM-rope": lambda: (
        models.TransformerLM(VOCAB, 8, 2, 1, max_len=SEQ, pos_encoding="rope"),
        train.lm_loss,
        lm_batch_at,
    ),
    "TransformerClassifier": lambda: (
        models.TransformerClassifier(VOCAB, 3, 8, 2, 2, max_len=SEQ),  # mean pooling
        train.classification_loss,
        classifier_batch_at,
    ),
    "LSTMLM": lambda: (models.LSTMLM(VOCAB, 8, 8, 1), train.lm_loss, lm_batch_at),
    "AdaptiveTransformerLM": lambda: (  # ids 0-3 head, 4-7 and 8-10 the clusters
        lm_recipes.AdaptiveTransformerLM(VOCAB, [4, 8], 8, 2, 2, max_len=SEQ),
        lm_recipes.adaptive_lm_loss,
        lm_batch_at,
    ),
}


@pytest.mark.parametrize("name", BOOK_MODELS)
def test_the_book_models_do_no_host_reads_between_logging_steps(monkeypatch, name):
    """The trainer's promise holds for the real models: their forward passes read nothing
    back on an accelerator (on a CPU they check values, which is free there)."""

    def run(accelerator):
        torch.manual_seed(0)
        model, loss_fn, batch_at = BOOK_MODELS[name]()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        cfg = config(max_steps=7, grad_accum_steps=2, sync_every=3)
        trainer = Trainer(model, optimizer, loss_fn, cfg)
        with monkeypatch.context() as patch:
            if accelerator:
                take_the_accelerator_path(patch)
            reads = count_host_reads(patch, lambda: trainer.step + 1)
            history = trainer.fit(batch_at)
        return reads, history

    reads, history = run(accelerator=True)
    assert sorted(set(reads)) == [3, 6, 7]  # the logging steps only
    assert history.steps == list(range(1, 8)) and all(
        map(math.isfinite, history.train_loss)
    )
    cpu_reads, cpu_history = run(accelerator=False)
    assert set(cpu_reads) == set(range(1, 8))  # the spy sees the CPU's value checks
    assert (
        cpu_history.train_loss == history.train_loss
    )  # the two paths compute the same


def test_reading_back_late_changes_nothing():
    def run(sync_every):
        model, optimizer, scheduler = new_lm_run(dropout=0.3, steps=7)
        cfg = config(max_steps=7, grad_accum_steps=2, sync_every=sync_every)
        trainer = Trainer(model, optimizer, train.lm_loss, cfg, scheduler)
        return trainer, trainer.fit(lm_batch_at, [lm_batch_at(50)])

    every_step, late = run(1), run(4)
    for name in ("steps", "train_loss", "lr", "grad_norm", "train_metrics", "eval"):
        assert getattr(every_step[1], name) == getattr(late[1], name), name
    for a, b in zip(
        every_step[0].model.parameters(), late[0].model.parameters(), strict=True
    ):
        assert torch.equal(a, b)
    assert len(late[1].tokens_per_s) == 7 and all(t > 0 for t in late[1].tokens_per_s)


def test_a_nan_found_late_names_the_first_bad_step():
    calls = {"n": 0}

    def loss_with_nan_at_step_2(model, batch):
        loss, metrics, n = train.lm_loss(model, batch)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), metrics, n

    model, optimizer, scheduler = new_lm_run(steps=8)
    cfg = config(max_steps=8, sync_every=4)
    trainer = Trainer(model, optimizer, loss_with_nan_at_step_2, cfg, scheduler)
    with pytest.raises(NonFiniteLossError, match="step 2") as error:
        trainer.fit(lm_batch_at)
    assert error.value.step == 2 and error.value.quantity == "loss"
    assert trainer.step == 3  # found at step 4's read, before step 4's update
    assert trainer.history.steps == [1]  # the steps before the bad one are recorded
    assert all(p.grad is None for p in model.parameters())


def test_sync_every_defaults_by_device_and_is_validated():
    assert train.default_sync_every(torch.device("cpu")) == 1
    assert train.default_sync_every(torch.device("cuda")) == train.GPU_SYNC_EVERY > 1
    model, optimizer, _ = new_lm_run()
    assert Trainer(model, optimizer, train.lm_loss, config(max_steps=1)).sync_every == 1
    cfg = config(max_steps=1, sync_every=5)
    assert Trainer(model, optimizer, train.lm_loss, cfg).sync_every == 5
    with pytest.raises(ValueError, match="sync_every"):
        config(max_steps=1, sync_every=0)


def test_a_tensor_learning_rate_is_recorded_as_it_was_at_each_step():
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(0.1))
    scheduler = optim.warmup_cosine(
        optimizer, warmup_steps=2, total_steps=5, min_lr_ratio=0.0
    )
    cfg = config(max_steps=5, sync_every=5)  # all five read at the end
    history = Trainer(model, optimizer, train.lm_loss, cfg, scheduler).fit(lm_batch_at)
    cosine = [0.1 * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(3)]
    assert history.lr == pytest.approx([0.05, 0.1, *cosine])


def test_loss_functions_return_tensors_and_evaluate_reads_them_at_the_end(monkeypatch):
    model = TinyLM()
    loss, metrics, n_tokens = train.lm_loss(model, lm_batch_at(0))
    assert all(
        isinstance(v, torch.Tensor) and v.dim() == 0
        for v in (n_tokens, *metrics.values())
    )
    assert n_tokens.dtype == torch.int64 and int(n_tokens) == BATCH * SEQ

    monkeypatch.setattr(
        losses, "_require_counted_targets", lambda counted, ignore_index: None
    )
    batches_done = []

    def counting_loss(model, batch):
        batches_done.append(1)
        return train.lm_loss(model, batch)

    reads = count_host_reads(monkeypatch, lambda: len(batches_done))
    result = train.evaluate(model, [lm_batch_at(i) for i in range(5)], counting_loss)
    assert reads and set(reads) == {
        5
    }  # nothing read until every batch has been computed
    assert result["n_tokens"] == 5 * BATCH * SEQ


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_training_continues_exactly_after_interrupts(monkeypatch, precision):
    """Ctrl-C in a notebook: mid-accumulation, or after a step's numbers were read but before
    its update (with fp16: after the GradScaler unscaled the gradients). Calling fit again must
    give the uninterrupted run (no dropout: no RNG involved)."""
    if precision == "fp16":
        use_fp16_on_the_cpu(monkeypatch)

    def run(interrupt):
        model, optimizer, scheduler = new_lm_run(steps=6)
        calls = {"loss": 0, "step": 0}

        def loss_fn(model, batch):
            calls["loss"] += 1
            if interrupt and calls["loss"] == 4:  # second micro-batch of step 2
                raise KeyboardInterrupt
            return train.lm_loss(model, batch)

        original_step = optimizer.step

        def optimizer_step(*args, **kwargs):
            calls["step"] += 1
            if interrupt and calls["step"] == 4:  # step 4: recorded, not yet taken
                raise KeyboardInterrupt
            return original_step(*args, **kwargs)

        optimizer.step = optimizer_step
        trainer = Trainer(
            model, optimizer, loss_fn, config(max_steps=6, grad_accum_steps=2)
        )
        for _ in range(3):
            try:
                return trainer, trainer.fit(lm_batch_at)
            except KeyboardInterrupt:
                pass
        raise AssertionError("fit did not finish")

    straight, interrupted = run(False), run(True)
    assert interrupted[1].steps == list(range(1, 7))
    assert interrupted[1].train_loss == straight[1].train_loss
    assert interrupted[1].train_metrics == straight[1].train_metrics
    if precision == "fp16":
        assert interrupted[0].scaler.state_dict() == straight[0].scaler.state_dict()
    for a, b in zip(
        straight[0].model.parameters(), interrupted[0].model.parameters(), strict=True
    ):
        assert torch.equal(a, b)


def test_resume_is_exact_when_numbers_are_read_back_late(tmp_path):
    """As on a GPU: reads every 3 steps; checkpoints (every 2) read what is pending first."""
    path = str(tmp_path / "run.pt")

    def make_trainer(max_steps, checkpoint_path):
        model, optimizer, scheduler = new_lm_run(dropout=0.3, steps=8)
        cfg = config(
            max_steps=max_steps, sync_every=3, checkpoint_path=checkpoint_path, seed=3,
            checkpoint_every=2 if checkpoint_path else None,
        )  # fmt: skip
        return Trainer(model, optimizer, train.lm_loss, cfg, scheduler)

    straight = make_trainer(8, None)
    straight.fit(lm_batch_at)
    make_trainer(5, path).fit(
        lm_batch_at
    )  # stops after step 5: read at steps 2, 3, 4, 5
    assert torch.load(path, weights_only=True)["history"]["steps"] == [1, 2, 3, 4, 5]
    torch.manual_seed(99)
    resumed = make_trainer(8, path)
    resumed.fit(lm_batch_at)
    assert resumed.history.train_loss == straight.history.train_loss
    assert resumed.history.grad_norm == straight.history.grad_norm
    for a, b in zip(
        resumed.model.parameters(), straight.model.parameters(), strict=True
    ):
        assert torch.equal(a, b)
