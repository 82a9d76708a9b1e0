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


def test_seed_everything_is_seed_rngs():
    from utils import checkpoint

    def draw():
        return random.random(), np.random.rand(), torch.rand(1).item()

    nb.seed_everything(2**32 - 1)
    first = draw()
    checkpoint.seed_rngs(2**32 - 1)
    assert draw() == first
    with pytest.raises(nb.ParameterError):
        nb.seed_everything(2**32)


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


def _namespace(**overrides):
    ns = {
        "profile": "smoke",
        "seed": 0,
        "device": "cpu",
        "steps": None,
        "frac": None,
        "opt": None,
    }
    ns.update(overrides)
    return ns


KNOBS = {
    "steps": (2, 50, 500, nb.Int(1)),
    "frac": (0.1, 1.0, 1.0, nb.Float(0.001, 1.0)),
    "opt": ("sgd", "adamw", "adamw", nb.Choice("sgd", "adamw")),
}


def test_configure_fills_defaults_per_profile_and_writes_back(capsys):
    ns = _namespace()
    cfg = nb.configure(ns, KNOBS)
    assert (cfg.steps, cfg.frac, cfg.opt) == (2, 0.1, "sgd")
    assert (
        ns["steps"] == 2
        and ns["device"] == torch.device("cpu")
        and ns["profile"] == "smoke"
    )
    out = capsys.readouterr().out
    assert "steps = 2" in out and "(smoke default)" in out
    cfg = nb.configure(_namespace(profile="book", steps=7), KNOBS, report=False)
    assert (cfg.steps, cfg.frac, cfg.opt) == (7, 1.0, "adamw")


@pytest.mark.parametrize(
    "override, message",
    [
        ({"steps": 0}, r"steps=0 is out of range.*>= 1"),
        ({"frac": 2.0}, r"frac=2.0 is out of range.*between 0.001 and 1.0"),
        (
            {"opt": "adam"},
            r"opt='adam' is not allowed; choose one of \('sgd', 'adamw'\)",
        ),
        ({"profile": "fast"}, "smoke, book, gpu"),
        ({"seed": -1}, "seed=-1"),
        ({"device": "banana"}, "not a valid torch device"),
    ],
)
def test_configure_rejects_bad_values_with_clear_messages(override, message):
    with pytest.raises(nb.ParameterError, match=message):
        nb.configure(_namespace(**override), KNOBS, report=False)


def test_configure_rejects_a_knob_missing_from_the_parameters_cell_or_malformed():
    ns = _namespace()
    del ns["frac"]
    with pytest.raises(nb.ParameterError, match="defines no frac"):
        nb.configure(ns, KNOBS, report=False)
    with pytest.raises(
        nb.ParameterError, match=r"expected \(smoke, book, gpu, allowed\)"
    ):
        nb.configure(_namespace(), {"steps": (1, 2, nb.Int(1))}, report=False)
    with pytest.raises(nb.ParameterError, match="handled by configure"):
        nb.configure(_namespace(), {"seed": (1, 2, 3, nb.Int(0))}, report=False)
    with pytest.raises(nb.ParameterError, match="must be divisible"):
        nb.require(128 % 3 == 0, "d_model=128 must be divisible by n_heads=3")


def test_glue_writes_what_myst_nb_glue_writes():
    """Our glue (no myst-nb needed on Colab) emits the same output as myst-nb's, for a string."""
    from IPython.core.interactiveshell import InteractiveShell
    from myst_nb import glue as myst_glue

    shell = InteractiveShell.instance()
    captured = []
    shell.display_pub.publish = lambda data, metadata=None, **kw: captured.append(
        (data, metadata)
    )
    assert nb.glue("ppl", 1203.84, ",.1f") is None  # no Out[] when it ends a cell
    myst_glue("ppl", "1,203.8", display=False)
    assert captured[0] == captured[1]
    assert captured[0][0] == {"application/papermill.record/text/plain": "'1,203.8'"}
    with pytest.raises(ValueError, match="identifier"):
        nb.glue("not a name", 1)
