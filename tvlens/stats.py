"""Error bars for accuracies measured on small query sets.

Context:
    Many test splits hold 13-25 queries, where one query moves the accuracy by 4-8 points. Every
    accuracy tvlens reports therefore comes with a 95% Wilson score interval, which (unlike the
    normal approximation) stays inside [0, 1] and is not degenerate at 0 or 1 correct.

>>> from tvlens.stats import wilson_interval
>>> lo, hi = wilson_interval(20, 25)
>>> round(lo, 3), round(hi, 3)
(0.609, 0.911)
>>> wilson_interval(0, 10)[0]
0.0
"""

from __future__ import annotations

import math

from tvlens._validate import no_type_check
from tvlens.errors import ConfigError

Z95 = 1.959963984540054  # two-sided 95% normal quantile


@no_type_check  # checks its arguments (tvlens._validate.no_type_check)
def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of ``correct`` successes in ``n`` trials (95% by default)."""
    for name, v in (("correct", correct), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{name} must be an integer count, got {type(v).__name__} {v!r}")
    if n < 1 or not 0 <= correct <= n:
        raise ConfigError(f"need 0 <= correct <= n and n >= 1, got correct={correct}, n={n}")
    if not (isinstance(z, (int, float)) and math.isfinite(z) and z > 0):
        raise ConfigError(f"z must be a positive finite number, got {z!r}")
    p = correct / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo, hi = max(0.0, center - half), min(1.0, center + half)
    if correct == 0:
        lo = 0.0
    if correct == n:
        hi = 1.0
    return lo, hi


def accuracy_interval(accuracy: float, n: int) -> tuple[float, float]:
    """:func:`wilson_interval` for an accuracy measured on ``n`` queries."""
    return wilson_interval(round(accuracy * n), n)
