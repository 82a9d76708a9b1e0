"""Tests for utils.checkpoint: atomic saving, the format check, random-number-generator state."""

import random

import numpy as np
import pytest
import torch

from utils import checkpoint


def draw():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_state_round_trip_through_a_weights_only_file(tmp_path):
    checkpoint.seed_rngs(7)
    draw()
    path = tmp_path / "sub" / "rng.pt"
    checkpoint.save_atomically(
        {"format": checkpoint.CHECKPOINT_FORMAT, "rng": checkpoint.rng_state()}, path
    )
    expected = draw()
    checkpoint.seed_rngs(123)  # scramble
    checkpoint.set_rng_state(checkpoint.load(path)["rng"])
    assert draw() == expected
    assert sorted(p.name for p in path.parent.iterdir()) == [
        "rng.pt"
    ]  # no temporary file


def test_load_refuses_files_that_are_not_checkpoints(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not a utils.train checkpoint"):
        checkpoint.load(path)


def test_a_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    checkpoint.save_atomically(
        {"format": checkpoint.CHECKPOINT_FORMAT, "step": 1}, path
    )

    def failing_save(obj, file):
        with open(file, "wb") as handle:
            handle.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_atomically(
            {"format": checkpoint.CHECKPOINT_FORMAT, "step": 2}, path
        )
    assert checkpoint.load(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
