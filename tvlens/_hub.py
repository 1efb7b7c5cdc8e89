"""The one offline / hub-reachability probe, shared by model loading and hub datasets.

Context: without network, Hugging Face clients retry for tens of seconds before failing. tvlens
asks first: is offline mode requested (environment, read now), and does the hub answer within a
few seconds? Name resolution ignores socket timeouts, so the probe runs in a daemon thread with a
hard deadline. Directly, it opens a TCP connection to the endpoint's host; behind a proxy
(``HTTPS_PROXY``/``ALL_PROXY``) it sends an HTTP HEAD request through the proxy instead.
"""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse

HUB_TIMEOUT_S = 3.0  # seconds the probe waits before declaring "no network"
_TRUE = {"1", "ON", "YES", "TRUE"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def env_offline(*extra_vars: str) -> bool:
    """True when ``HF_HUB_OFFLINE`` (or one of ``extra_vars``) is set to 1/ON/YES/TRUE right now."""
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in ("HF_HUB_OFFLINE", *extra_vars))


def hub_unreachable(endpoint: str, timeout: float = HUB_TIMEOUT_S) -> str | None:
    """None when ``endpoint`` answers within ``timeout`` seconds, else a short reason why not."""
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    proxied = any(os.environ.get(v) for v in _PROXY_VARS)
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            if proxied:
                import httpx

                httpx.head(endpoint, timeout=timeout, follow_redirects=False)  # any status will do
            else:
                socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except Exception as e:  # OSError, httpx.HTTPError, ...: all mean "not reachable from here"
            outcome.append(f"cannot connect to {host}:{port}{' via the proxy' if proxied else ''} ({type(e).__name__}: {e})")

    thread = threading.Thread(target=probe, daemon=True, name="tvlens-hub-probe")
    thread.start()
    thread.join(timeout + 1.0)
    return outcome[0] if outcome else f"no answer from {host}:{port} within {timeout:g} s"
