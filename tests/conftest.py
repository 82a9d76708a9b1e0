"""Shared pytest configuration for the unit tests."""

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: loads a large pretrained model or runs a notebook (seconds to minutes)"
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
