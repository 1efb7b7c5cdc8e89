"""Compute-once caches for the contexts that analyses and claims share (ground level: imports nothing of tvlens)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)


class Memo:
    """A mixin for a (data)class with a ``cache: dict`` field: :meth:`once` computes a value on first use only."""

    cache: dict

    def once(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for; the stored value after that."""
        if key not in self.cache:
            log.info("%s: computing %s", type(self).__name__, key if isinstance(key, str) else key[0])
            self.cache[key] = compute()
        return self.cache[key]
