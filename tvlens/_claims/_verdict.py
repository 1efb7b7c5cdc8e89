"""Verdict rules and intervals of the claims table: pure functions of numbers, no model.

Context:
    Every claim's verdict follows from its measured numbers through one rule here, against a
    threshold named in :data:`THRESHOLDS`, so a test can feed numbers on each side of it. A rule
    returns ``(verdict, reason)``; ``verdict`` is ``"holds"``, ``"fails"`` or ``"not testable"``.

>>> from tvlens._claims._verdict import at_least, diff_interval
>>> at_least(0.12, 0.10, "key-head ablation costs {value:.2f} more than random")
('holds', 'key-head ablation costs 0.12 more than random (threshold >= 0.10)')
>>> lo, hi = diff_interval(40, 50, 20, 50)
>>> round(lo, 3), round(hi, 3)
(0.21, 0.552)
"""

from __future__ import annotations

import math
from typing import Literal

from tvlens.stats import wilson_interval

__all__ = ["HOLDS", "FAILS", "UNTESTABLE", "THRESHOLDS", "Verdict", "at_least", "at_most", "diff_interval",
           "fisher_interval", "share_interval"]

Verdict = Literal["holds", "fails", "not testable"]
HOLDS: Verdict = "holds"
FAILS: Verdict = "fails"
UNTESTABLE: Verdict = "not testable"

THRESHOLDS: dict[str, float] = {
    "ltv_margin": 0.0,  # LTV minus the better baseline at its worst layer / scenario: > this
    "icl_margin": 0.0,  # best middle-layer LTV minus ICL: >= this
    "ablation_margin": 0.10,  # random-set accuracy minus key-set accuracy ("far below"): >= this
    "saliency_rho": 0.7,  # Spearman of one-pass vs exact saliency: >= this
    "ov_share": 0.5,  # share of the LTV's gain over zero-shot the OV reconstruction recovers: >= this
    "sink_margin": 0.0,  # random minus key heads' attention to the first token: > this
    "location_ratio": 1.5,  # key heads' share in the windows over the chance share: >= this
    "location_min_layers": 6,  # layers from the injection layer to the last needed to tell two windows apart
    "decoded_margin": 0.0,  # late minus early LTV's task-token share among decoded tokens: > this
    "linear_points": 0.10,  # |injected - reconstructed| accuracy at a layer: <= this counts as "within"
    "linear_share": 0.5,  # share of layers within linear_points: > this ("most layers")
    "rotation_margin": 0.0,  # early-layer alignment gain of Q θ over θ: > this
    "rise_rho": 0.5,  # Spearman of cos(θ, Qθ) with the layer: >= this
    "transition_layers": 0.1,  # |transition - ICL layer| <= max(1, this x n_layers)
    "cluster_gap": 0.3,  # within-task minus between-task mean cosine: >= this
    "transfer_max": 0.10,  # mean gain of another task's vector over zero-shot: <= this
    "composition_margin": 0.0,  # a+b (best scale) minus the better single vector on the composed task: > this
}


def _text(template: str, value: float, **kw) -> str:
    return template.format(value=value, **kw)


def at_least(value: float | None, threshold: float, template: str, *, strict: bool = False) -> tuple[Verdict, str]:
    """``holds`` when ``value >= threshold`` (``> `` when ``strict``); ``not testable`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNTESTABLE, "no value could be measured"
    ok = value > threshold if strict else value >= threshold
    sign = ">" if strict else ">="
    return (HOLDS if ok else FAILS), f"{_text(template, value)} (threshold {sign} {threshold:.2f})"


def at_most(value: float | None, threshold: float, template: str) -> tuple[Verdict, str]:
    """``holds`` when ``value <= threshold``; ``not testable`` for None/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return UNTESTABLE, "no value could be measured"
    return (HOLDS if value <= threshold else FAILS), f"{_text(template, value)} (threshold <= {threshold:.2f})"


def diff_interval(c1: int, n1: int, c2: int, n2: int) -> tuple[float, float]:
    """95% interval of ``c1/n1 - c2/n2`` (Newcombe's hybrid score method, from two Wilson intervals)."""
    p1, p2 = c1 / n1, c2 / n2
    l1, u1 = wilson_interval(c1, n1)
    l2, u2 = wilson_interval(c2, n2)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def share_interval(k: int, m: int) -> tuple[float, float]:
    """95% Wilson interval of a share ``k`` of ``m`` (layers, heads, scenarios)."""
    return wilson_interval(int(k), int(m))


def fisher_interval(rho: float, n: int) -> tuple[float, float] | None:
    """95% interval of a Spearman correlation over ``n`` pairs (Fisher z, variance 1.06 / (n - 3)); None for n <= 3."""
    if n <= 3 or math.isnan(rho):
        return None
    r = max(min(rho, 0.999999), -0.999999)
    z, se = math.atanh(r), math.sqrt(1.06 / (n - 3))
    return min(math.tanh(z - 1.96 * se), rho), max(math.tanh(z + 1.96 * se), rho)  # rho = +-1 lies on its own bound
