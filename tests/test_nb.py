"""Notebook conventions: profile resolution, parameter checks, seeding, devices."""

import random

import numpy as np
import pytest
import torch

from utils import nb


def test_profile_from_argument_env_and_default(monkeypatch):
    monkeypatch.delenv(nb.PROFILE_ENV, raising=False)
    assert nb.resolve_profile("smoke") == "smoke"
    assert nb.resolve_profile(" Book ") == "book"
    assert nb.resolve_profile(None) == ("gpu" if torch.cuda.is_available() else "book")
    monkeypatch.setenv(nb.PROFILE_ENV, "smoke")
    assert nb.resolve_profile(None) == "smoke"
    assert nb.resolve_profile("") == "smoke"
    # An explicit parameter wins over the environment.
    assert nb.resolve_profile("book") == "book"


@pytest.mark.parametrize("bad", ["nonsense", "SMOKEY", 3, ["smoke"]])
def test_invalid_profile_names_the_choices(bad):
    with pytest.raises(nb.ParameterError, match="smoke, book, gpu"):
        nb.resolve_profile(bad)


def test_invalid_profile_from_env_says_where_it_came_from(monkeypatch):
    monkeypatch.setenv(nb.PROFILE_ENV, "fast")
    with pytest.raises(nb.ParameterError, match="LLMBOOK_PROFILE"):
        nb.resolve_profile(None)


def test_by_profile_requires_all_three():
    assert nb.by_profile("book", smoke=1, book=2, gpu=3) == 2
    with pytest.raises(nb.ParameterError, match="missing"):
        nb.by_profile("book", smoke=1, book=2)


def test_check_int():
    assert nb.check_int("steps", 5, min_value=1) == 5
    assert nb.check_int("steps", None, allow_none=True) is None
    with pytest.raises(nb.ParameterError, match=r"steps=-3 is out of range.*>= 1"):
        nb.check_int("steps", -3, min_value=1)
    for bad in (2.5, "10", True, None):
        with pytest.raises(nb.ParameterError, match="must be an integer"):
            nb.check_int("steps", bad, min_value=1)


def test_check_float_and_choice():
    assert nb.check_float("frac", 1, min_value=0, max_value=1) == 1.0
    for bad in (float("nan"), float("inf")):
        with pytest.raises(nb.ParameterError, match="finite"):
            nb.check_float("frac", bad)
    with pytest.raises(nb.ParameterError, match="between 0 and 1"):
        nb.check_float("frac", 1.5, min_value=0, max_value=1)
    assert nb.check_choice("mode", "a", ["a", "b"]) == "a"
    with pytest.raises(nb.ParameterError, match="choose one of"):
        nb.check_choice("mode", "c", ["a", "b"])


def test_seed_everything_makes_all_generators_repeat():
    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    nb.seed_everything(123)
    first = draw()
    nb.seed_everything(123)
    assert draw() == first
    with pytest.raises(nb.ParameterError):
        nb.seed_everything(-1)


def test_pick_device():
    assert nb.pick_device("cpu") == torch.device("cpu")
    assert nb.pick_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(nb.ParameterError, match="not a valid torch device"):
        nb.pick_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(nb.ParameterError, match="CUDA is not available"):
            nb.pick_device("cuda")
        assert nb.autocast_dtype("cpu") is None


def test_environment_report_mentions_torch_and_device():
    report = nb.environment_report("cpu")
    assert f"torch {torch.__version__}" in report
    assert "device: cpu" in report
