"""The one offline / hub-reachability probe (tvlens._hub): fast answers without network."""

from __future__ import annotations

import socket
import time

import pytest

from tvlens import _hub


@pytest.fixture
def direct(monkeypatch):
    for v in _hub._PROXY_VARS:
        monkeypatch.delenv(v, raising=False)


def test_a_listening_port_is_reachable(direct):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        assert _hub.hub_unreachable(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=2.0) is None
    finally:
        server.close()


def test_a_closed_port_is_unreachable(direct):
    reason = _hub.hub_unreachable("http://127.0.0.1:9", timeout=2.0)
    assert reason is not None and "127.0.0.1:9" in reason


def test_refused_sockets_answer_at_once(direct, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no network here")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    t0 = time.perf_counter()
    reason = _hub.hub_unreachable("https://huggingface.co", timeout=2.0)
    assert "huggingface.co:443" in reason and "no network here" in reason
    assert time.perf_counter() - t0 < 1.0


def test_a_hanging_name_lookup_is_cut_at_the_deadline(direct, monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: time.sleep(10))
    t0 = time.perf_counter()
    reason = _hub.hub_unreachable("https://huggingface.co", timeout=0.2)
    assert "no answer" in reason and time.perf_counter() - t0 < 3.0


def test_behind_a_proxy_it_asks_through_the_proxy(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # a proxy that is not there
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    reason = _hub.hub_unreachable("https://huggingface.co", timeout=2.0)
    assert reason is not None and "via the proxy" in reason


@pytest.mark.parametrize(("value", "offline"), [("1", True), (" yes ", True), ("ON", True), ("0", False), ("", False)])
def test_env_offline(monkeypatch, value, offline):
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", value)
    assert _hub.env_offline("TRANSFORMERS_OFFLINE") is offline
    assert _hub.env_offline() is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _hub.env_offline() is True
