"""Tests for utils.network: one fast, bounded, cached check shared by data and model loaders."""

from __future__ import annotations

import socket
import time

import pytest

from utils import network


@pytest.fixture(autouse=True)
def fresh_network_cache(monkeypatch):
    """Each test starts with an empty network cache and no forcing or proxy variables."""
    monkeypatch.setattr(network, "_cache", {})
    for name in (
        network.OFFLINE_ENV,
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)


class FakeConnection:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_network_check_is_cached(monkeypatch):
    calls = []

    def connect(address, timeout):
        calls.append(address)
        return FakeConnection()

    monkeypatch.setattr(socket, "create_connection", connect)
    assert network.network_available() is True
    assert network.network_available() is True
    assert calls == [("huggingface.co", 443)]  # one real attempt per process


def test_network_check_failure_and_forced_offline(monkeypatch):
    def refuse(address, timeout):
        raise OSError("no route to host")

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert network.network_available("example.org", 80) is False

    def must_not_connect(address, timeout):
        raise AssertionError("LLMBOOK_OFFLINE=1 must not touch the network")

    monkeypatch.setattr(socket, "create_connection", must_not_connect)
    monkeypatch.setenv(network.OFFLINE_ENV, "1")
    assert network.network_available() is False


def test_network_check_is_bounded_by_timeout(monkeypatch):
    def hang(address, timeout):  # a resolver that ignores the socket timeout
        time.sleep(3)
        return FakeConnection()

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    assert network.network_available(timeout=0.1) is False
    assert time.perf_counter() - start < 2.0


def test_network_check_goes_through_https_proxy(monkeypatch):
    calls = []
    monkeypatch.setattr(
        socket,
        "create_connection",
        lambda address, timeout: calls.append(address) or FakeConnection(),
    )
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    assert network.network_available() is True
    assert calls == [("proxy.internal", 3128)]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"host": ""}, "host"), ({"port": 0}, "port"), ({"timeout": -1}, "timeout")],
)
def test_network_check_validates_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        network.network_available(**kwargs)
