"""Shared pytest configuration for the unit tests."""

import pytest


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: loads a large pretrained model or runs a notebook (seconds to minutes)"
    )


@pytest.fixture
def isolated_data_env(monkeypatch, tmp_path):
    """No data folder, an empty cache, no network: the loaders must fall back (or fail clearly)."""
    from utils import data

    for var in (data.DATA_DIR_ENV, data.NO_FALLBACK_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(data.OFFLINE_ENV, "1")
    return tmp_path
