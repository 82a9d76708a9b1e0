"""Is the network there? One fast, bounded check shared by the data loaders and model loaders.

Downloads (:mod:`utils.data`) and hub models (:mod:`utils.pretrained`) ask before they try, so that
a machine without internet gets a clear answer at once instead of a library retrying for tens of
seconds. ``LLMBOOK_OFFLINE=1`` answers "no" without touching the network.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlsplit

OFFLINE_ENV = "LLMBOOK_OFFLINE"
_TRUE_VALUES = {"1", "true", "yes", "on"}
_cache: dict[tuple[str, int], bool] = {}


def offline_forced() -> bool:
    """True when ``LLMBOOK_OFFLINE`` is set to 1/true/yes/on: never touch the network."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in _TRUE_VALUES


def _proxy_endpoint() -> tuple[str, int] | None:
    """The (host, port) of an HTTPS proxy from the environment, if one is configured."""
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        value = os.environ.get(name)
        if value:
            parts = urlsplit(value if "://" in value else f"http://{value}")
            if parts.hostname:
                return parts.hostname, parts.port or 8080
    return None


def _can_connect(host: str, port: int, timeout: float) -> bool:
    """Open and close one TCP connection; a worker thread bounds the DNS lookup by ``timeout`` too."""
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so a hanging resolver could block far longer than asked.
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result) and result[0]


def network_available(
    host: str = "huggingface.co", port: int = 443, timeout: float = 2.0
) -> bool:
    """Whether ``host:port`` accepts a TCP connection (through an HTTPS proxy if one is set).

    The answer is cached per process and per (host, port). ``LLMBOOK_OFFLINE=1`` forces ``False``
    without touching the network.
    """
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"port must be an integer in 1..65535, got {port!r}")
    if (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not timeout > 0
    ):
        raise ValueError(
            f"timeout must be a positive number of seconds, got {timeout!r}"
        )
    if offline_forced():
        return False
    key = (host, port)
    if key not in _cache:
        proxy = _proxy_endpoint()
        target = proxy if proxy is not None else key
        _cache[key] = _can_connect(target[0], target[1], float(timeout))
    return _cache[key]
