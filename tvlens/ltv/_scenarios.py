"""The six training scenarios of the paper's main table (METHOD.md section 1), for any depth."""

from __future__ import annotations

from dataclasses import dataclass

from tvlens.sites import Site, site_grid


@dataclass(frozen=True)
class Scenario:
    """Where and on what prompts an LTV is trained and applied."""

    name: str
    description: str
    sites: tuple[Site, ...]
    shots: int = 0  # 0 = zero-shot prompts; 8 = the vector is trained and applied on 8-shot prompts


def paper_scenarios(n_layers: int) -> dict[str, Scenario]:
    """Scenarios (1)-(6) for a model with ``n_layers`` blocks (the paper's L = 32 gives its table).

    (1) L = {L/2}, P = {-1}; (2) L = {L/2}, P = {4}; (3) L = {L/2}, P = {-5..-1};
    (4) L = {0, 4, 8, ...}, P = {-1}; (5) L = {0, 2, 4, ...}, P = {-5..-1};
    (6) as (1) but trained and applied on 8-shot ICL prompts.
    """
    mid = n_layers // 2
    last5 = list(range(-5, 0))
    specs = [
        ("1_mid_last", "L={L/2}, P={-1}", site_grid([mid], [-1]), 0),
        ("2_mid_pos4", "L={L/2}, P={4}", site_grid([mid], [4]), 0),
        ("3_mid_last5", "L={L/2}, P={-5..-1}", site_grid([mid], last5), 0),
        ("4_every4_last", "L={0,4,8,...}, P={-1}", site_grid(range(0, n_layers, 4), [-1]), 0),
        ("5_every2_last5", "L={0,2,4,...}, P={-5..-1}", site_grid(range(0, n_layers, 2), last5), 0),
        ("6_mid_last_8shot", "L={L/2}, P={-1}, 8-shot ICL prompts", site_grid([mid], [-1]), 8),
    ]
    return {name: Scenario(name, desc, sites, shots) for name, desc, sites, shots in specs}
