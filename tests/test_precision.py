"""Tests for utils.precision: the precision rules, autocast contexts and the fp16 GradScaler."""

import warnings

import pytest
import torch

from utils import precision


def test_autocast_runs_matmuls_in_bf16_on_the_cpu_and_fp32_does_nothing():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with precision.autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with precision.autocast(torch.device("cpu"), "fp32"):
        assert (a @ b).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")


def test_only_fp16_gets_a_grad_scaler():
    cpu = torch.device("cpu")
    assert precision.make_grad_scaler(cpu, "fp32") is None
    assert precision.make_grad_scaler(cpu, "bf16") is None
    with (
        warnings.catch_warnings()
    ):  # without a GPU torch warns that the scaler is disabled
        warnings.simplefilter("ignore", UserWarning)
        scaler = precision.make_grad_scaler(torch.device("cuda"), "fp16")
    assert type(scaler).__name__ == "GradScaler"


def test_precision_names_are_checked():
    assert precision.PRECISIONS == ("auto", "fp32", "bf16", "fp16")
    with pytest.raises(ValueError, match="precision"):
        precision.resolve_precision("fp8", torch.device("cpu"))
    assert set(precision.AUTOCAST_DTYPES) == {"bf16", "fp16"}


def test_a_scaler_can_start_afresh_after_an_interrupted_step():
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    scaler.scale(model(torch.ones(2, 3)).sum()).backward()
    scaler.unscale_(optimizer)  # ... and then Ctrl-C, before step() and update()
    with pytest.raises(RuntimeError, match="unscale_"):
        scaler.unscale_(optimizer)
    precision.forget_unfinished_step(scaler)
    scaler.unscale_(optimizer)  # a new step may unscale again
    scaler.step(optimizer)
    scaler.update()
    assert (
        scaler.get_scale() == 8.0
    )  # the scale is kept (growth only after 2000 good steps)
    precision.forget_unfinished_step(None)  # no scaler (fp32, bf16): nothing to do


def test_autocast_dtype_follows_resolve_precision():
    cuda = torch.device("cuda")
    assert precision.autocast_dtype("cpu") is None
    assert precision.autocast_dtype("cpu", "bf16") is torch.bfloat16
    assert precision.autocast_dtype(cuda, bf16_supported=True) is torch.bfloat16
    assert precision.autocast_dtype(cuda, bf16_supported=False) is torch.float16
    assert precision.autocast_dtype(cuda, "fp32", bf16_supported=True) is None
    with pytest.raises(ValueError, match="native bf16"):
        precision.autocast_dtype(cuda, "bf16", bf16_supported=False)


def test_nb_autocast_dtype_is_the_precision_rule():
    from utils import nb

    assert nb.autocast_dtype("cpu") is precision.autocast_dtype("cpu") is None
