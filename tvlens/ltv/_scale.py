"""The residual stream's scale at injection sites, which sets the LTV optimiser's step size.

Context: AdamW moves every coordinate of θ by about ``lr`` per step, whatever the gradient's
size. How far θ must travel to steer the model is set by the residual stream it is added to,
whose per-coordinate scale (RMS) differs between models and layers: 8.7 at the embedded model's
layer 2, 1.9 at SmolLM2's layer 1 and 24 at its layer 29 (last position). A fixed learning rate
therefore crawls on some sites and overshoots on others. With ``LTVConfig(scale_to_residual=True)``
(the default) training optimises φ = θ / rms per site, so ``lr`` and ``init_range`` are in units
of the site's residual RMS and one default serves every model and layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float

from tvlens.ltv._objective import TargetBatch
from tvlens.sites import OutOfRange, Site

MAX_ROWS = 64  # prompts used to measure the scale (the mean settles well before this)


def site_residual_rms(
    model, tb: TargetBatch, sites: Sequence[Site], out_of_range: OutOfRange = "error", max_rows: int = MAX_ROWS
) -> Float[torch.Tensor, " site"]:
    """Mean over prompts of the RMS over d_model of ``blocks.{l}.hook_resid_pre`` at each site's column.

    Measured without any vector, on the first ``max_rows`` prompts of ``tb``; rows where a skipped
    site is absent do not count. A site absent from every row gets the mean of the others.
    """
    from tvlens import _engine as engine

    n = min(len(tb), max_rows)
    cols = tb.site_columns(sites, out_of_range)[:, :n]
    with torch.no_grad():  # the engine's prefix holds the residual before every layer from the lowest site's on
        pre = engine.prefix(model, tb.prompt_batch()[:n], positions=[s.position for s in sites], layer=min(s.layer for s in sites))
        # a model the cache cannot serve: a (logged) full forward that reads the sites' hooks
        acts = engine.run(pre, names=sorted({s.hook_name for s in sites})).acts if pre.fallback else None
    rms = torch.full((len(sites),), float("nan"))
    for i, site in enumerate(sites):
        present = cols[i] >= 0
        if present.any():
            stream = pre.resid[site.layer] if acts is None else acts[site.hook_name]  # [row, suffix, d_model]
            resid = stream[torch.arange(n)[present], cols[i][present] - pre.c0].float()  # [row, d_model]
            rms[i] = resid.pow(2).mean(-1).sqrt().mean()
    if rms.isnan().all():
        return torch.ones(len(sites))
    return torch.where(rms.isnan(), rms.nanmean(), rms)
