"""Reference implementations kept for the engine's tests and ``tvlens bench`` only.

Context:
    Before :mod:`tvlens._engine`, the batched head patches (the function-vector AIE, exact
    saliency) resumed from a cached residual stream before layer l and ran the *whole prompt
    width* for every replica. They are kept here, unchanged, as the references the engine's
    last-column runs are checked and timed against. Library code does not call them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from jaxtyping import Float

from tvlens._engine import final_logits, final_residual, head_chunks, p_gold
from tvlens._hooks import Activations, AddAt, AddToHeads, Cache, Edit, SetHeadPerRow, Span, intervene
from tvlens.prompts import PromptBatch
from tvlens.vector import TaskVector

__all__ = ["aie_full_width", "aie_loop", "clean_z", "exact_drops_full_width", "grad_attribution_full_width",
           "measure_conditions_full_width", "resid_before", "run_last", "sites_from", "steered_logits_full_forward"]

MAX_ROWS = 512  # rows per patched forward pass of the old paths (prompts x heads in a chunk)


def _full_width_replicas(model, batch: PromptBatch, cached: torch.Tensor, layer: int, edits: list, c: int
                         ) -> Float[torch.Tensor, "row d_vocab"]:
    """Final logits at the last token of ``c`` replicas of ``batch`` resumed at ``layer`` from ``cached``, every column."""
    n = len(batch)
    rep = Span(batch.first_index.repeat(c), batch.last_index.repeat(c))
    with intervene(model, *edits, span=rep):
        out = final_residual(model, cached.repeat(c, 1, 1), batch.attention_mask.repeat(c, 1).to(cached.device),
                             start_at_layer=layer)  # [c*n, pos, d_model]
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
            resid = final_residual(model, batch.tokens, batch.attention_mask)
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
        final_residual(model, sub.tokens, sub.attention_mask)
    return store.store


def measure_conditions_full_width(model, vector: TaskVector, batch: PromptBatch, sets, kind: str, *,
                                  positions=(-1,), means_from: str = "steered", batch_size: int = 64):
    """:func:`tvlens.analysis.ablation.measure_conditions` as before the engine: full-width runs resumed
    before the first ablated layer, path-patching sources from full forwards."""
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


# --- the full-width loops the analyses ran before the engine (moved from tvlens.analysis._inputs) ---


def run_last(model, batch: PromptBatch, edits: Callable[[PromptBatch], Sequence[Edit]] | Sequence[Edit] = (), *,
             batch_size: int = 64, names: Sequence[str] = (),
             start: tuple[int, torch.Tensor] | None = None,
             at: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Final residual at each prompt's last token [batch, d_model] (no grad), with ``edits``.

    ``edits`` may be a function of the sub-batch. ``names``: hook points whose activation at each
    prompt's last token is also returned (``{name: [batch, ...]}``). ``start=(layer, resid)``
    resumes from a cached residual stream before ``layer`` ([batch, pos, d_model], see
    :func:`resid_before`) instead of running the earlier blocks again. ``at``: each row's column
    to read ``names`` at instead of its last token (attention patterns: still the last token's row).
    """
    out, caught = [], {n: [] for n in names}
    with torch.no_grad():
        for i, sub in enumerate(batch.split(batch_size)):
            es = list(edits(sub) if callable(edits) else edits)
            store = Cache(tuple(names))
            with intervene(model, *es, store, span=Span(sub.first_index, sub.last_index)):
                if start is None:
                    resid = final_residual(model, sub.tokens, sub.attention_mask)  # [b, pos, d_model]
                else:
                    x = start[1][i * batch_size : i * batch_size + len(sub)]
                    resid = final_residual(model, x, sub.attention_mask.to(x.device), start_at_layer=start[0])
            rows = torch.arange(len(sub))
            out.append(resid[rows, sub.last_index.to(resid.device)].float())
            cols = sub.last_index if at is None else at[i * batch_size : i * batch_size + len(sub)]
            for n in names:
                act = store.store[n]
                # hook_pattern is [b, head, query, key]: keep the last query's row; others [b, pos, ...]
                caught[n].append(act[rows, :, sub.last_index.to(act.device)].float() if n.endswith("hook_pattern")
                                 else act[rows, cols.to(act.device)].float())
    return torch.cat(out), {n: torch.cat(v) for n, v in caught.items()}


def resid_before(model, batch: PromptBatch, layer: int, edits: Sequence[Edit] = (), *,
                 batch_size: int = 64) -> Float[torch.Tensor, "batch pos d_model"]:
    """The residual stream before block ``layer`` (``edits`` at earlier hooks applied), for :func:`run_last`'s ``start``."""
    out = []
    with torch.no_grad():
        for sub in batch.split(batch_size):
            with intervene(model, *edits, span=Span(sub.first_index, sub.last_index)):
                out.append(final_residual(model, sub.tokens, sub.attention_mask, stop_at_layer=layer))  # [b, pos, d_model]
    return torch.cat(out)


def sites_from(vector: TaskVector, layer: int) -> list[Edit]:
    """The vector's edit restricted to its sites at ``layer`` and later (for a run resumed before ``layer``)."""
    keep = [i for i, s in enumerate(vector.sites) if s.layer >= layer]
    if not keep:
        return []
    return [AddAt(tuple(vector.sites[i] for i in keep), vector.values[keep].detach(), vector.scale, vector.operation,
                  vector.out_of_range)]


def aie_loop(model, batch: PromptBatch, mean_z: torch.Tensor, heads: list[tuple[int, int]]) -> Float[torch.Tensor, " head"]:
    """The function-vector AIE as a loop: one patched forward pass per head (mean ablation of that head at the last token)."""
    from tvlens._hooks import ablate_heads
    from tvlens.evaluate import last_token_logits

    n = len(batch)
    with torch.no_grad():
        base = p_gold(last_token_logits(model, batch, batch_size=n), batch.answer_ids)
        out = []
        span = Span(batch.first_index, batch.last_index)
        for layer, head in heads:
            with ablate_heads(model, [(layer, head)], how="mean", means={layer: mean_z[layer]}, positions=[-1], span=span):
                logits = model(batch.tokens, attention_mask=batch.attention_mask)
            p = p_gold(logits[torch.arange(n), batch.last_index], batch.answer_ids)
            out.append(float((p - base).mean()))
    return torch.tensor(out)


def grad_attribution_full_width(model, vector: TaskVector, batch: PromptBatch, layers: list[int], *,
                                batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`tvlens.analysis.saliency.grad_attribution` as before the engine: a full forward and backward pass."""
    cfg = model.cfg
    names = tuple(f"blocks.{lay}.attn.hook_z" for lay in layers)
    steer = AddAt(vector.sites, vector.values.detach(), vector.scale, vector.operation, vector.out_of_range)
    attrs, ps = [], []
    for sub in batch.split(batch_size):
        delta = torch.zeros(len(sub), len(layers), cfg.n_heads, cfg.d_head, device=cfg.device, requires_grad=True)
        store = Cache(names)
        with torch.enable_grad(), intervene(model, steer, store, AddToHeads(tuple(layers), delta),
                                            span=Span(sub.first_index, sub.last_index)):
            resid = final_residual(model, sub.tokens, sub.attention_mask)  # [b, pos, d_model]
            rows = torch.arange(len(sub))
            p = p_gold(final_logits(model, resid[rows, sub.last_index.to(resid.device)]), sub.answer_ids)  # [b]
            (grad,) = torch.autograd.grad(p.sum(), delta)
        z = torch.stack([store.store[n][rows, sub.last_index.to(store.store[n].device)] for n in names], 1)  # [b, layer, head, d_head]
        attrs.append(torch.einsum("blhd,blhd->blh", z.float(), grad.float()).cpu())
        ps.append(p.detach().cpu())
    return torch.cat(attrs), torch.cat(ps)
