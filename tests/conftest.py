"""Shared pytest configuration for the unit tests."""

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: loads a large pretrained model or runs a notebook (seconds to minutes)",
    )


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seed torch and use one thread: tiny tensors gain nothing from intra-op threads, and on a
    shared 2-core machine the thread pool's contention made tests several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def isolated_data_env(monkeypatch, tmp_path):
    """No data folder, an empty cache, no network: the loaders must fall back (or fail clearly)."""
    from utils import data

    for var in (data.DATA_DIR_ENV, data.NO_FALLBACK_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    return tmp_path


@pytest.fixture(scope="session")
def minilm_tokenizer():
    """all-MiniLM-L6-v2's WordPiece tokenizer, from the offline package (no network, no model)."""
    from transformers import AutoTokenizer

    from utils.pretrained import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


@pytest.fixture(scope="session")
def tiny_bert_config(minilm_tokenizer):
    """``make(**overrides)`` -> a 1-layer, width-16 ``BertConfig`` with MiniLM's vocabulary, for
    fast tests of code around BERT-style models (random weights, nothing downloaded)."""
    from transformers import BertConfig

    def make(**overrides):
        settings = dict(
            vocab_size=minilm_tokenizer.vocab_size,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
        )
        return BertConfig(**{**settings, **overrides})

    return make
