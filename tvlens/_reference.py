"""Reference implementations kept for the engine's tests and ``tvlens bench`` only.

Context:
    Before :mod:`tvlens._engine`, the batched head patches (the function-vector AIE, exact
    saliency) resumed from a cached residual stream before layer l and ran the *whole prompt
    width* for every replica. They are kept here, unchanged, as the references the engine's
    last-column runs are checked and timed against. Library code does not call them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float

from tvlens._engine import final_logits, head_chunks, p_gold
from tvlens._hooks import Activations, AddAt, Cache, Edit, SetHeadPerRow, Span, intervene
from tvlens.prompts import PromptBatch
from tvlens.vector import TaskVector

__all__ = ["aie_full_width", "clean_z", "exact_drops_full_width", "measure_conditions_full_width", "steered_logits_full_forward"]

MAX_ROWS = 512  # rows per patched forward pass of the old paths (prompts x heads in a chunk)


def _full_width_replicas(model, batch: PromptBatch, cached: torch.Tensor, layer: int, edits: list, c: int
                         ) -> Float[torch.Tensor, "row d_vocab"]:
    """Final logits at the last token of ``c`` replicas of ``batch`` resumed at ``layer`` from ``cached``, every column."""
    n = len(batch)
    rep = Span(batch.first_index.repeat(c), batch.last_index.repeat(c))
    with intervene(model, *edits, span=rep):
        out = model(cached.repeat(c, 1, 1), start_at_layer=layer, stop_at_layer=model.cfg.n_layers,
                    attention_mask=batch.attention_mask.repeat(c, 1).to(cached.device))  # [c*n, pos, d_model]
    return final_logits(model, out[torch.arange(c * n), batch.last_index.repeat(c).to(out.device)])


def aie_full_width(model, batch: PromptBatch, mean_z: torch.Tensor, heads: list[tuple[int, int]], *,
                   heads_per_pass: int | None = None) -> Float[torch.Tensor, " head"]:
    """The function-vector AIE of ``heads`` as before the engine: full-width replicas resumed before each layer."""
    n = len(batch)
    per = heads_per_pass or max(1, MAX_ROWS // n)
    names = tuple(f"blocks.{lay}.hook_resid_pre" for lay in sorted({lay for lay, _ in heads}))
    with torch.no_grad():
        store = Cache(names)
        with intervene(model, store, span=Span(batch.first_index, batch.last_index)):
            logits = model(batch.tokens, attention_mask=batch.attention_mask)
        base = p_gold(logits[torch.arange(n), batch.last_index], batch.answer_ids)  # [n]
        result: dict[tuple[int, int], float] = {}
        for chunk in head_chunks(heads, per):
            lay, c = chunk[0][0], len(chunk)
            hl = torch.tensor(chunk, dtype=torch.long).repeat_interleave(n, 0)  # [c * n, 2]: replica j = head j
            last = _full_width_replicas(model, batch, store.store[f"blocks.{lay}.hook_resid_pre"], lay,
                                        [SetHeadPerRow(hl, mean_z[hl[:, 0], hl[:, 1]])], c)
            p = p_gold(last, batch.answer_ids.repeat(c)).reshape(c, n)  # [head, prompt]
            for hd, v in zip(chunk, (p - base[None].to(p.device)).mean(1).tolist()):
                result[hd] = v
    return torch.tensor([result[hd] for hd in heads])


def exact_drops_full_width(model, vector: TaskVector, batch: PromptBatch, heads: list[tuple[int, int]], *,
                           heads_per_pass: int | None = None
                           ) -> tuple[Float[torch.Tensor, "batch head"], Float[torch.Tensor, " batch"]]:
    """Exact saliency drops as before the engine: full-width replicas resumed from the steered run before each layer."""
    n = len(batch)
    per = heads_per_pass or max(1, MAX_ROWS // n)
    names = tuple(f"blocks.{lay}.hook_resid_pre" for lay in sorted({lay for lay, _ in heads}))
    steer = AddAt(vector.sites, vector.values.detach(), vector.scale, vector.operation, vector.out_of_range)
    rows = torch.arange(n)
    with torch.no_grad():
        store = Cache(names)
        with intervene(model, steer, store, span=Span(batch.first_index, batch.last_index)):
            resid = model(batch.tokens, attention_mask=batch.attention_mask, stop_at_layer=model.cfg.n_layers)
        base = p_gold(final_logits(model, resid[rows, batch.last_index.to(resid.device)]), batch.answer_ids).cpu()
        drops: dict[tuple[int, int], torch.Tensor] = {}
        for chunk in head_chunks(heads, per):
            lay, c = chunk[0][0], len(chunk)
            keep = [i for i, s in enumerate(vector.sites) if s.layer > lay]  # sites before lay are in the cached stream
            tail = [AddAt(tuple(vector.sites[i] for i in keep), vector.values[keep].detach(), vector.scale, vector.operation,
                          vector.out_of_range)] if keep else []
            hl = torch.tensor(chunk, dtype=torch.long).repeat_interleave(n, 0)  # [c*n, 2]: replica j zeroes head j
            last = _full_width_replicas(model, batch, store.store[f"blocks.{lay}.hook_resid_pre"], lay,
                                        [*tail, SetHeadPerRow(hl, torch.zeros(c * n, model.cfg.d_head))], c)
            p = p_gold(last, batch.answer_ids.repeat(c)).cpu().reshape(c, n)  # [head, prompt]
            for hd, row in zip(chunk, base[None] - p):
                drops[hd] = row
    return torch.stack([drops[hd] for hd in heads], 1), base


def clean_z(model, sub: PromptBatch, layers: Sequence[int]) -> Activations:
    """``attn.hook_z`` of ``layers`` on ``sub`` without θ (the source of path patching)."""
    store = Cache(tuple(f"blocks.{lay}.attn.hook_z" for lay in layers))
    with torch.no_grad(), intervene(model, store, span=Span(sub.first_index, sub.last_index)):
        model(sub.tokens, attention_mask=sub.attention_mask, stop_at_layer=model.cfg.n_layers)
    return store.store


def measure_conditions_full_width(model, vector: TaskVector, batch: PromptBatch, sets, kind: str, *,
                                  positions=(-1,), means_from: str = "steered", batch_size: int = 64):
    """:func:`tvlens.analysis.ablation.measure_conditions` as before the engine: full-width runs resumed
    before the first ablated layer, path-patching sources from full forwards."""
    from tvlens.analysis._inputs import resid_before, run_last, sites_from
    from tvlens.analysis.ablation import ablation_edits

    steer = AddAt(vector.sites, vector.values.detach(), vector.scale, vector.operation, vector.out_of_range)
    layer = min(s.layer for s in vector.sites)
    used = sorted({lay for hs in sets for lay, _ in hs})
    means = None
    if kind == "mean" and used:
        names = [f"blocks.{lay}.attn.hook_z" for lay in used]
        _, acts = run_last(model, batch, [steer] if means_from == "steered" else [], batch_size=batch_size, names=names)
        means = {lay: acts[f"blocks.{lay}.attn.hook_z"].mean(0) for lay in used}  # [head, d_head]
    first = min([layer, *used])
    steered = (first, resid_before(model, batch, first, [steer], batch_size=batch_size))
    tail = sites_from(vector, first)
    sources: dict = {}

    def edits_for(hs):
        def make(sub: PromptBatch):
            clean = None
            if kind == "path" and hs:
                where = sub.tokens.data_ptr()  # sub-batches are views of one tensor: their address names them
                if where not in sources:
                    sources[where] = clean_z(model, sub, used)
                clean = sources[where]
            return [*tail, *ablation_edits(hs, kind, means=means, clean=clean, positions=positions)]
        return make

    def measure(es, start=steered) -> tuple[float, float]:
        resid, _ = run_last(model, batch, es, batch_size=batch_size, start=start)
        with torch.no_grad():
            logits = final_logits(model, resid).float()
        g = batch.answer_ids.to(logits.device)
        return float((logits.argmax(-1) == g).float().mean()), float(p_gold(logits, g).mean())

    return measure([], start=None), measure(tail), [measure(edits_for(hs)) for hs in sets]


def steered_logits_full_forward(model, batch: PromptBatch, conditions: Sequence[Sequence[Edit]], *, batch_size: int = 64
                                ) -> list[Float[torch.Tensor, "batch d_vocab"]]:
    """:func:`tvlens.evaluate.conditions_logits` as before the engine: per condition and sub-batch one full
    forward with the edits hooked in, every column unembedded, the last token's logits kept."""
    out = []
    with torch.no_grad():
        for edits in conditions:
            parts = []
            for sub in batch.split(batch_size):
                with intervene(model, *edits, span=Span(sub.first_index, sub.last_index)):
                    logits = model(sub.tokens, attention_mask=sub.attention_mask)  # [b, pos, d_vocab]
                parts.append(logits[torch.arange(len(sub)), sub.last_index.to(logits.device)].float())
            out.append(torch.cat(parts))
    return out
