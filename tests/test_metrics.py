"""Tests for utils.metrics: reading numbers back from the device, the StepRecorder, History."""

import math
import time

import pytest
import torch

from utils.metrics import (
    History,
    NonFiniteLossError,
    StepRecorder,
    read_scalars,
    read_together,
)


def test_read_together_gives_what_item_gives_for_every_dtype():
    tensors = [
        torch.tensor(0.1),  # fp32: float64 on the way keeps it exact
        torch.tensor(1 / 3, dtype=torch.bfloat16),
        torch.tensor(2**40 + 1),  # int64 beyond fp32's exact range
        torch.tensor([2.5]),  # one element, one dimension
    ]
    assert read_together(tensors) == [t.item() for t in tensors]


def test_read_scalars_mixes_numbers_and_tensors_in_order():
    values = [1, torch.tensor(0.25), 3.5, torch.tensor(7)]
    assert read_scalars(values) == [1.0, 0.25, 3.5, 7.0]
    assert read_scalars([]) == []


def make_step(recorder, step, losses, n_tokens, accuracy, grad_norm=1.0, lr=0.1):
    for loss, n, acc in zip(losses, n_tokens, accuracy, strict=True):
        recorder.add_micro_batch(torch.tensor(loss), {"accuracy": torch.tensor(acc)}, n)
    recorder.end_step(step, torch.tensor(grad_norm), lr)


def test_recorder_means_over_micro_batches_and_fills_the_history_on_flush():
    recorder, history = StepRecorder(flops_per_token=10.0, peak_flops=1e6), History()
    make_step(recorder, 1, [2.0, 4.0], [10, 30], [0.5, 0.1])
    make_step(
        recorder, 2, [1.0, 1.0], [20, torch.tensor(20)], [1.0, 0.0], grad_norm=3.0
    )
    assert len(history) == 0  # nothing read yet
    recorder.flush(history)
    assert history.steps == [1, 2]
    assert history.train_loss == [3.0, 1.0]  # mean of the micro-batch means
    assert history.train_metrics["accuracy"] == pytest.approx(
        [0.2, 0.5]
    )  # token-weighted
    assert history.grad_norm == [1.0, 3.0] and history.lr == [0.1, 0.1]
    assert (
        history.tokens_per_s[0] == history.tokens_per_s[1] > 0
    )  # one rate for the span
    assert history.mfu == pytest.approx([10.0 * t / 1e6 for t in history.tokens_per_s])
    recorder.flush(history)  # nothing pending: nothing happens
    assert len(history) == 2


def test_untimed_spans_are_left_out_of_the_throughput():
    recorder, history = StepRecorder(), History()
    make_step(recorder, 1, [1.0], [1000], [0.0])
    with recorder.untimed():
        time.sleep(0.2)
    recorder.flush(history)
    assert history.tokens_per_s[0] > 1000 / 0.2  # the sleep did not count


def test_recorder_raises_at_the_first_non_finite_value():
    recorder, history = StepRecorder(), History()
    make_step(recorder, 1, [1.0], [1], [0.0])
    make_step(recorder, 2, [1.0], [1], [0.0], grad_norm=math.inf)
    make_step(recorder, 3, [math.nan], [1], [0.0])
    with pytest.raises(NonFiniteLossError, match="gradient norm .* step 2") as error:
        recorder.flush(history)
    assert error.value.step == 2 and history.steps == [1]

    recorder, history = StepRecorder(), History()
    make_step(
        recorder, 1, [1.0], [1], [0.0], grad_norm=math.inf
    )  # fp16 overflow: normal
    make_step(recorder, 2, [math.nan], [1], [0.0])
    with pytest.raises(NonFiniteLossError, match="loss .* step 2"):
        recorder.flush(history, check_grad_norm=False)
    assert history.grad_norm == [math.inf]


def test_summary_line():
    history = History(
        steps=[1, 2], train_loss=[2.0, 1.5], lr=[0.1, 0.05], grad_norm=[1.0, 0.5],
        tokens_per_s=[1000.0, 12345.0], mfu=[None, 0.25], time=[0.1, 0.2],
        eval=[{"step": 2, "loss": 1.25}],
    )  # fmt: skip
    line = history.summary_line(max_steps=10)
    assert line == (
        "step 2/10 | loss 1.5000 | lr 5.00e-02 | grad norm 0.500 | 12,345 tok/s | MFU 25.0% | "
        "eval loss 1.2500"
    )
