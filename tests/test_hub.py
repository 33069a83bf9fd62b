"""The hub check answers fast and honours offline mode, so offline runs fall back to local data without retries."""

from __future__ import annotations

import socket
import time

from icl_eval import hub


def test_offline_env_skips_the_network(monkeypatch):
    hub.hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(AssertionError("no network call expected")))
    assert hub.hub_reachable() is False
    hub.hub_reachable.cache_clear()


def test_unreachable_endpoint_is_false_quickly(monkeypatch):
    hub.hub_reachable.cache_clear()
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # A loopback port nobody listens on: refused at once, like an offline machine's DNS failure.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    assert hub.hub_reachable() is False
    assert time.perf_counter() - start < 5
    hub.hub_reachable.cache_clear()


def test_reachable_endpoint_is_true(monkeypatch):
    hub.hub_reachable.cache_clear()
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_reachable() is True
    hub.hub_reachable.cache_clear()
