"""Per-layer OV reconstruction: each head's OV product written into its own layer's attention output.

Context:
    :func:`~tvlens.analysis.ov.ov_reconstruction` adds the sum of the per-head OV products of θ to
    the *final* residual at the last token N of the zero-shot run. The paper's reconstruction can
    also be read per layer: head ``(l', h)`` (``l' >= l``, θ injected at layer ``l``) writes its
    product ``LN(θ) W_V W_O`` into ``blocks.{l'}.hook_attn_out`` at N, and the zero-shot run
    *continues* from there, so later MLPs and heads read (and may amplify or undo) what earlier
    heads wrote. That is a reading the final-residual reconstruction cannot express.

    Conditions (accuracy on the zero-shot test queries, full-vocabulary argmax):
    ``zero_shot``; ``ltv`` (θ injected at its site); ``key_heads`` (the products of the key heads,
    the top ``fraction`` by saliency, each at its layer); ``key_heads_weighted`` (each product
    scaled by the head's attention from N to θ's position in the run with θ, per prompt, as
    ov.py's weighted variant); ``all_heads`` and ``all_heads_weighted`` (every head of layers
    ``>= l``). Products use each prompt's ln1 scale at θ's position (``ln="actual"``, as
    :func:`~tvlens.analysis.ov.ov_reconstruction`) or none (``ln="folded"``).

    Every condition is a suffix run of :mod:`tvlens._engine` from layer ``l`` over the last
    column only (the edits write N alone); the engine falls back to a full forward by itself where
    the cache cannot serve the model.

>>> import tvlens as tv
>>> from tvlens.analysis.ov_layers import ov_layer_reconstruction
>>> model = tv.load_model("toy")
>>> v = tv.train_ltv(model, "toy/antonym", layers=[2], progress=False).vector
>>> r = ov_layer_reconstruction(model, v, "toy/antonym", n=16)
>>> r.conditions
('zero_shot', 'ltv', 'key_heads', 'key_heads_weighted', 'all_heads', 'all_heads_weighted')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float

from tvlens import _engine as engine
from tvlens._hooks import AddPerRow
from tvlens._result import ConditionAccuracy
from tvlens._validate import check_float, no_type_check
from tvlens.analysis._inputs import check_heads, single_layer_theta, steer_edit
from tvlens.analysis._registry import Analysis, Options, register
from tvlens.analysis.ov import _steered_stats, reconstruction_inputs, unscaled_products
from tvlens.errors import ConfigError
from tvlens.sites import Site
from tvlens.vector import TaskVector

__all__ = ["OVLayerReconstruction", "ov_layer_reconstruction"]

CONDITIONS = ("zero_shot", "ltv", "key_heads", "key_heads_weighted", "all_heads", "all_heads_weighted")


@dataclass(frozen=True, eq=False, repr=False)
class OVLayerReconstruction(ConditionAccuracy):
    """Accuracy by condition (see the module docstring) when OV products are written into each head's own layer."""

    layer: int = 0  # θ's injection layer l
    ln: str = "actual"
    key_heads: tuple = ()  # (layer, head) pairs whose products make the key_heads conditions
    write_norm: float = 0.0  # mean norm over prompts of everything the key_heads condition writes (summed over layers)


@dataclass(frozen=True, eq=False)
class _AddAtHook(AddPerRow):
    """``values[b]`` added to row ``b`` at ``site.position`` of hook point ``hook`` (e.g. ``blocks.3.hook_attn_out``)."""

    hook: str = ""

    def hook_names(self, model) -> tuple[str, ...]:
        return (self.hook,)


def _writes(raw: Float[torch.Tensor, "layer head d_model"], inv: Float[torch.Tensor, "batch layer"],
            weight: Float[torch.Tensor, "batch layer head"], mask: torch.Tensor) -> Float[torch.Tensor, "batch layer d_model"]:
    """Per prompt and layer, the sum of the selected heads' products (``mask`` [layer, head]) scaled by ``inv`` and ``weight``."""
    return torch.einsum("bl,blh,lh,lhe->ble", inv, weight, mask.to(raw.dtype), raw)  # [batch, layer', d_model]


@no_type_check  # checks its arguments
def ov_layer_reconstruction(model, vector: TaskVector, task=None, *, prompts=None, n: int | None = None, seed: int = 0,
                            heads=None, fraction: float = 0.1, ln: Literal["folded", "actual"] = "actual", batch_size: int = 64,
                            budget: engine.Budget = engine.Budget()) -> OVLayerReconstruction:
    """Accuracy with each head's OV product of θ added to its own layer's attention output at N (see the module docstring).

    ``heads``: the key heads (default: the top ``fraction`` by one-pass saliency on the same prompts).
    """
    check_float("ov_layer_reconstruction", "fraction", fraction, min=0, max=1, min_exclusive=True)
    layer, theta, ps = reconstruction_inputs("ov_layer_reconstruction", "the per-layer OV reconstruction", model, vector,
                                             task, prompts, ln, n, batch_size, seed)
    if heads is None:
        from tvlens.analysis.saliency import head_saliency

        heads = head_saliency(model, vector, prompts=ps, mode="grad").top(fraction)
    heads = check_heads(model, heads)
    early = [h for h in heads if h[0] < layer]
    if early:
        raise ConfigError(f"heads {early} lie before the injection layer {layer}: they do not read θ; give heads of layers >= {layer}")
    lw = layer_writes(model, vector, ps, heads, ln, batch_size)
    counts = [lw.correct([], budget), lw.correct([steer_edit(vector)], budget)]
    for name in CONDITIONS[2:]:
        counts.append(lw.correct(lw.edits(name), budget))
    write_norm = float(lw.writes["key_heads"].sum(1).norm(dim=-1).mean())
    return OVLayerReconstruction(ps.task.name, CONDITIONS, torch.tensor(counts), len(lw.batch), layer, ln, tuple(heads), write_norm)


@dataclass(frozen=True, eq=False)
class LayerWrites:
    """What the per-layer reconstruction writes, per prompt and layer >= l, and the suffix runs that score it."""

    model: object
    batch: object  # the tokenized PromptBatch
    layer: int  # θ's injection layer l
    layers: tuple[int, ...]  # l .. n_layers - 1
    key: torch.Tensor  # [layer', head] bool: the key heads
    writes: dict  # condition name (CONDITIONS[2:]) -> [batch, layer', d_model]
    pre: object  # the engine's prefix (last column) from layer l

    def edits(self, name: str, alpha: float = 1.0):
        """The edits of condition ``name``: its writes, times ``alpha``, added to each layer's attention output at N."""
        used = self.key if name.startswith("key") else torch.ones_like(self.key)
        w = self.writes[name] if alpha == 1.0 else self.writes[name] * alpha
        todo = [i for i in range(len(self.layers)) if bool(used[i].any())]  # layers with a selected head
        return lambda rows: [_AddAtHook(Site(self.layers[i], -1), w[rows.to(w.device), i],
                                        hook=f"blocks.{self.layers[i]}.hook_attn_out") for i in todo]

    def correct(self, edits, budget: engine.Budget = engine.Budget()) -> int:
        """Queries answered correctly (full-vocabulary argmax) by the suffix run from l with ``edits``."""
        with torch.no_grad():
            pred = engine.run_rows(self.pre, edits, start=self.layer, budget=budget,
                                   read=lambda r: engine.final_logits(self.model, r.last()).argmax(-1).cpu())
        return int((pred == self.batch.answer_ids).sum())


def layer_writes(model, vector: TaskVector, ps, heads, ln: str, batch_size: int = 64) -> LayerWrites:
    """The per-layer writes of every condition for checked inputs (``heads``: checked key heads, layers >= l)."""
    layer, theta = single_layer_theta(vector)
    cfg = model.cfg
    layers = list(range(layer, cfg.n_layers))
    raw = unscaled_products(model, theta, layers)  # [layer', head, d_model]
    batch, inv, att = _steered_stats(model, vector, ps, layers, batch_size)  # [b, layer'], [b, layer', head]
    if ln == "folded":
        inv = torch.ones_like(inv)
    dev = raw.device
    inv, att = inv.to(dev).float(), att.to(dev).float()
    key = torch.zeros(len(layers), cfg.n_heads, dtype=torch.bool)  # [layer', head]
    for a, b in heads:
        key[a - layer, b] = True
    every = torch.ones_like(key)
    ones = torch.ones_like(att)
    writes = {"key_heads": _writes(raw, inv, ones, key), "key_heads_weighted": _writes(raw, inv, att, key),
              "all_heads": _writes(raw, inv, ones, every), "all_heads_weighted": _writes(raw, inv, att, every)}  # [b, layer', d]
    pre = engine.prefix(model, batch, positions=(-1,), layer=layer)
    return LayerWrites(model, batch, layer, tuple(layers), key, writes, pre)


# --- the registry's declaration: tvlens analyze ov_layers, the report's section, Circuit.analysis("ov_layers") ---


@dataclass(frozen=True)
class OVLayersOptions(Options):
    """Options of ``tvlens analyze ov_layers``."""

    fraction: float = field(default=0.1, metadata={"help": "share of heads called key heads, in (0, 1] (default 0.1)", "min": 0, "max": 1,
                                           "min_exclusive": True})
    ln: Literal["folded", "actual"] = field(default="actual", metadata={"help": "ln1 scale of the products: actual (default) or folded"})


def _run(ctx, opts: OVLayersOptions) -> OVLayerReconstruction:
    return ov_layer_reconstruction(ctx.model, ctx.vector, prompts=ctx.prompts, heads=ctx.key_heads(opts.fraction), ln=opts.ln)


register(Analysis("ov_layers", OVLayersOptions, _run, OVLayerReconstruction, "Per-layer OV reconstruction", "Heads",
                  "Each key head's OV product of θ added to its own layer's attention output at the last token of the "
                  "zero-shot run, which then continues; plain and weighted by the head's attention to θ's position; "
                  "against the same with every head that reads θ.", order=50))
