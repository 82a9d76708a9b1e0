"""utils.batches: model_device and eval_mode (the one copy of each)."""

import pytest
import torch

from utils import decoding, finetune, search, viz
from utils.batches import eval_mode, model_device
from utils.models import TransformerLM


def test_model_device_parameters_buffers_and_none():
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    norm = torch.nn.BatchNorm1d(3, affine=False)  # buffers only
    assert model_device(norm) == torch.device("cpu")
    with pytest.raises(ValueError, match="no parameters or buffers"):
        model_device(torch.nn.ReLU())
    assert model_device(torch.nn.ReLU(), default="cpu") == torch.device("cpu")
    assert model_device(lambda x: x, default="cpu") == torch.device("cpu")


def test_eval_mode_restores_every_submodule():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train()
    model[0].eval()  # a frozen part kept in eval mode
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and model[1].training and not model[0].training
    with pytest.raises(RuntimeError), eval_mode(model):
        raise RuntimeError
    assert model.training and not model[0].training


def test_generate_keeps_a_frozen_submodule_in_eval_mode():
    torch.manual_seed(0)
    lm = TransformerLM(vocab_size=11, d_model=8, n_heads=2, n_layers=1, max_len=8)
    lm.train()
    lm.blocks[0].eval()
    lm.generate(torch.zeros(1, 1, dtype=torch.long), max_new_tokens=2, greedy=True)
    decoding.generate(lm, torch.zeros(1, 1, dtype=torch.long), 2, greedy=True)
    assert lm.training and not lm.blocks[0].training


def test_the_old_private_copies_are_gone():
    assert not hasattr(decoding, "_model_device")
    assert not hasattr(viz, "_model_device")
    assert finetune.model_device is search.model_device is model_device
