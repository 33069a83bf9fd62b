"""The hub check answers fast and honours offline mode, so offline runs fall back to local data without retries."""

from __future__ import annotations

import socket
import time

import pytest

from icl_eval import hub


@pytest.fixture()
def online(monkeypatch):
    """No offline flag set, and a fresh answer for each test (the real check is cached per process)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    hub.hub_reachable.cache_clear()
    yield monkeypatch
    hub.hub_reachable.cache_clear()


def test_offline_env_skips_the_network(online):
    online.setenv("HF_HUB_OFFLINE", "1")
    online.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no network call expected")))
    assert hub.hub_reachable() is False


def test_unreachable_endpoint_is_false_quickly(online):
    # A loopback port nobody listens on: refused at once, like an offline machine's DNS failure.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    assert hub.hub_reachable() is False
    assert time.perf_counter() - start < 5


def test_reachable_endpoint_is_true(online):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        online.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_reachable() is True
