"""Function vectors (Todd et al. 2024): the summed output of the attention heads that carry the task.

Context:
    1. Clean prompts: ``shots``-shot ICL prompts (train queries) that the model answers correctly;
       the mean of every head's ``attn.hook_z`` (its output before ``W_O``) at the last token over
       them is ``mean_z`` [layer, head, d_head].
    2. Corrupted prompts: the same demonstrations with their labels shuffled.
    3. The indirect effect of head (l, h) on a corrupted prompt is p(gold first token) with that
       head's last-token z set to ``mean_z[l, h]`` minus p(gold) unpatched; the AIE is its mean
       over corrupted prompts (:func:`head_aie`, an :class:`AIEResult` [layer, head]).
    4. FV = sum over the ``top_k`` heads by AIE of ``mean_z[l, h] @ W_O[l, h]``, ADDED at the
       injection site (``blocks.{layer}.hook_resid_pre``, last token; Todd add at a block's output,
       i.e. our ``layer + 1``).

    The patching is batched: the corrupted batch is replicated once per head of a chunk and each
    replica patches its own head (:class:`tvlens.interventions.SetHeadPerRow`), so a model with
    L x H heads needs about ``L * H / heads_per_pass`` forward passes, not L * H; and a chunk of
    layer-l heads runs only the last column from block l (:mod:`tvlens._engine`: every earlier
    column's keys and values are computed once).
    ``hook_z`` and ``W_O`` are per *query* head, so grouped-query attention models work unchanged.

The AIE is returned beside the vector: ``tv.function_vector(..., return_aie=True)`` gives
``(vector, aie)``; ``tv.function_vector(..., aie=aie)`` reuses an AIE (it does not depend on the
injection layer, so a layer sweep computes it once).

>>> import tvlens as tv
>>> model = tv.load_model("toy")
>>> fv, aie = tv.function_vector(model, "toy/antonym", layer=2, top_k=4, shots=8, return_aie=True)
>>> fv.method, aie.aie.shape == (model.cfg.n_layers, model.cfg.n_heads)
('fv', True)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Float

from tvlens import _backend
from tvlens import _engine as engine
from tvlens._engine import final_logits, head_chunks, p_gold
from tvlens._hooks import SetHeadPerRow
from tvlens._result import Result
from tvlens._validate import no_type_check
from tvlens.errors import ConfigError, PromptError
from tvlens.evaluate import last_token_logits
from tvlens.prompts import PromptBatch, PromptSet, TaskSplits, make_prompts, make_splits
from tvlens.sites import Site, check_sites, site_grid
from tvlens.tasks._task import Example, Task
from tvlens.vector import TaskVector

__all__ = ["AIEResult", "function_vector", "head_aie"]

log = logging.getLogger(__name__)

@dataclass(frozen=True, eq=False, repr=False)
class AIEResult(Result):
    """Average indirect effect of every attention head on p(gold) in corrupted ICL prompts."""

    task: str
    aie: Float[torch.Tensor, "layer head"]  # mean over corrupted prompts of p(gold | head patched) - p(gold)
    mean_z: Float[torch.Tensor, "layer head d_head"]  # mean last-token hook_z over correct clean prompts
    p_corrupt: float  # mean p(gold) on the corrupted prompts, unpatched
    clean_accuracy: float  # accuracy of the model on the clean prompts (those correct are used)
    n_clean: int  # correct clean prompts averaged into mean_z
    n_corrupt: int  # corrupted prompts averaged into the AIE
    shots: int  # demonstrations per prompt

    def top(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` heads of largest AIE, as (layer, head, aie), largest first."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.aie.numel():
            raise ConfigError(f"k must be an integer in 1..{self.aie.numel()} (the model's heads), got {k!r}")
        vals, idx = self.aie.flatten().topk(k)
        n_heads = self.aie.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads, float(v)) for v, i in zip(vals, idx)]

    def to_frame(self):
        """One row per head: layer, head, aie, rank (1 = largest AIE)."""
        import pandas as pd

        n_layers, n_heads = self.aie.shape
        flat = self.aie.flatten()
        rank = torch.empty_like(flat, dtype=torch.long)
        rank[flat.argsort(descending=True)] = torch.arange(1, len(flat) + 1)
        return pd.DataFrame({"layer": [i // n_heads for i in range(len(flat))], "head": [i % n_heads for i in range(len(flat))],
                             "aie": flat.tolist(), "rank": rank.tolist()})

    def plot(self):
        """Heatmap of the AIE, layers up (layer 0 at the bottom, as every per-head figure), heads across."""
        import plotly.express as px

        from tvlens._plot import head_grid_axes

        fig = px.imshow(self.aie.numpy(), labels={"x": "head", "y": "layer", "color": "AIE"}, color_continuous_scale="RdBu",
                        color_continuous_midpoint=0.0, aspect="auto", origin="lower",
                        title=f"{self.task}: average indirect effect per head (n={self.n_corrupt} corrupted prompts)")
        return head_grid_axes(fig, *self.aie.shape)

    def __repr__(self) -> str:
        (layer, head, v), = self.top(1)
        return (f"AIEResult({self.task!r}, {tuple(self.aie.shape)} heads, n_clean={self.n_clean}, n_corrupt={self.n_corrupt}, "
                f"top L{layer}H{head}={v:.3f})")


def shuffled_labels(prompts: PromptSet, seed: int) -> PromptSet:
    """The same demonstrations and queries, each prompt's demonstration labels shuffled among them."""
    rng = random.Random(f"tvlens-fv-corrupt-{prompts.task.base_name}-{seed}")
    demos = []
    for ds in prompts.demos:
        outs = [d.output for d in ds]
        rng.shuffle(outs)
        demos.append(tuple(Example(d.fields, o) for d, o in zip(ds, outs)))
    return PromptSet(prompts.task, prompts.split, prompts.k, prompts.queries, tuple(demos), prompts.seed)


def aie_batched(model, batch: PromptBatch, mean_z: torch.Tensor, heads: list[tuple[int, int]], *,
                heads_per_pass: int | None = None, budget: engine.Budget = engine.Budget()) -> Float[torch.Tensor, " head"]:
    """AIE of each of ``heads`` on ``batch`` (corrupted prompts), many heads per forward pass.

    One prefix of the corrupted batch (every column but the last, at every layer) is computed
    once; a chunk of layer-``l`` heads then runs only the last column from block ``l`` up
    (:func:`tvlens._engine.run`), each replica of the batch patching its own head.
    ``heads_per_pass`` defaults to what ``budget`` allows.
    """
    n = len(batch)
    with torch.no_grad():
        pre = engine.prefix(model, batch, positions=(-1,), layer=min(layer for layer, _ in heads))
        base = p_gold(final_logits(model, pre.final()), batch.answer_ids)  # [n]
        result: dict[tuple[int, int], float] = {}
        for chunk in head_chunks(heads, heads_per_pass or max(1, engine.rows_per_pass(pre, budget=budget) // n)):
            layer, c = chunk[0][0], len(chunk)
            hl = torch.tensor(chunk, dtype=torch.long).repeat_interleave(n, 0)  # [c * n, 2]: replica j = head j
            out = engine.run(pre, [SetHeadPerRow(hl, mean_z[hl[:, 0], hl[:, 1]])], start=layer, replicas=c)
            p = p_gold(final_logits(model, out.last()), batch.answer_ids.repeat(c)).reshape(c, n)  # [head, prompt]
            for hd, v in zip(chunk, (p - base[None].to(p.device)).mean(1).tolist()):
                result[hd] = v
    return torch.tensor([result[hd] for hd in heads])


def _clean_and_corrupted(model, task: Task, splits: TaskSplits, shots: int, n_clean: int, n_corrupt: int, seed: int):
    clean = make_prompts(splits, "train", k=shots, seed=seed)
    batch = clean.tokenize(model)
    pred = last_token_logits(model, batch).argmax(-1)
    correct = (pred == batch.answer_ids).nonzero().flatten().tolist()
    if not correct:
        raise PromptError(f"the model answers none of the {len(clean)} {shots}-shot prompts of {task.name!r} correctly, so "
                          "there are no clean prompts for function-vector head means; try other shots= or another task")
    acc = len(correct) / len(clean)
    good = clean.subset(correct[:n_clean])
    return good, shuffled_labels(good.subset(list(range(min(n_corrupt, len(good))))), seed), acc


@no_type_check  # checks its arguments
def head_aie(model, task: Task | str, *, shots: int = 10, n_clean: int = 100, n_corrupt: int = 25,
             splits: TaskSplits | None = None, seed: int = 0, heads_per_pass: int | None = None,
             batch_size: int = 64, cache=None) -> AIEResult:
    """The AIE of every attention head on ``task`` (Todd et al.'s causal mediation analysis).

    ``cache``: the store (:mod:`tvlens.store`), as in :func:`tvlens.train_ltv`. The AIE does not depend
    on an injection layer, so a sweep, a comparison and a report on the same task compute it once;
    a stored AIE is bit-identical to a fresh one.
    """
    from tvlens.store import resolve as resolve_store
    from tvlens.tasks import get as get_task

    task = get_task(task) if isinstance(task, str) else task
    for name, v in (("shots", shots), ("n_clean", n_clean), ("n_corrupt", n_corrupt)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "shots" else 1):
            raise ConfigError(f"{name} must be an integer >= {2 if name == 'shots' else 1}, got {v!r}")
    if heads_per_pass is not None and (isinstance(heads_per_pass, bool) or not isinstance(heads_per_pass, int) or heads_per_pass < 1):
        raise ConfigError(f"heads_per_pass must be a positive integer or None, got {heads_per_pass!r}")
    splits = splits or make_splits(task, seed=seed)
    store = resolve_store(cache)
    if store is not None:
        from tvlens._fingerprint import fingerprint
        from tvlens.store import aie_key_fields

        fields = aie_key_fields(model, task, splits=splits, shots=shots, n_clean=n_clean, n_corrupt=n_corrupt, seed=seed,
                                heads_per_pass=heads_per_pass, batch_size=batch_size, fingerprint=fingerprint(model))
        hit = store.get_tensors(fields)
        if hit is not None:
            t, r = hit
            return AIEResult(task.name, t["aie"], t["mean_z"], r["p_corrupt"], r["clean_accuracy"], r["n_clean"], r["n_corrupt"], shots)
    res = _head_aie(model, task, splits, shots, n_clean, n_corrupt, seed, heads_per_pass, batch_size)
    if store is not None:
        try:
            store.put_tensors(fields, {"aie": res.aie, "mean_z": res.mean_z},
                              {"p_corrupt": res.p_corrupt, "clean_accuracy": res.clean_accuracy, "n_clean": res.n_clean,
                               "n_corrupt": res.n_corrupt})
        except OSError as e:  # a read-only or full cache must not cost the result
            log.warning("could not save the AIE to the store %s (%s); continuing without it", store.root, e)
    return res


def _head_aie(model, task: Task, splits: TaskSplits, shots: int, n_clean: int, n_corrupt: int, seed: int,
              heads_per_pass: int | None, batch_size: int) -> AIEResult:
    clean, corrupt, acc = _clean_and_corrupted(model, task, splits, shots, n_clean, n_corrupt, seed)
    cfg = model.cfg
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
    cb = clean.tokenize(model)
    _, acts = engine.forward(model, cb, names=names, batch_size=batch_size)  # hook_z at each prompt's last token
    z = torch.stack([acts[n].cpu() for n in names], 1)  # [b, layer, head, d_head]
    total = torch.zeros(cfg.n_layers, cfg.n_heads, cfg.d_head)
    for part in z.split(batch_size):  # summed sub-batch by sub-batch, as ever (the same floating-point order)
        total += part.sum(0)
    mean_z = total / len(cb)
    heads = [(layer, h) for layer in range(cfg.n_layers) for h in range(cfg.n_heads)]
    xb = corrupt.tokenize(model)
    aie = aie_batched(model, xb, mean_z.to(cfg.device), heads, heads_per_pass=heads_per_pass)
    with torch.no_grad():
        p_corrupt = float(p_gold(last_token_logits(model, xb), xb.answer_ids).mean())
    return AIEResult(task.name, aie.reshape(cfg.n_layers, cfg.n_heads), mean_z, p_corrupt, acc, len(clean), len(corrupt), shots)


def fv_from_heads(model, mean_z: torch.Tensor, heads: list[tuple[int, int]]) -> Float[torch.Tensor, " d_model"]:
    """sum over ``heads`` of ``mean_z[l, h] @ W_O[l, h]`` (W_O is per query head, also under GQA)."""
    idx = torch.tensor(heads, dtype=torch.long)
    z = mean_z[idx[:, 0], idx[:, 1]].float()  # [k, d_head]
    w_o = model.W_O[idx[:, 0], idx[:, 1]].detach().float().cpu()  # [k, d_head, d_model]
    return torch.einsum("kd,kdm->m", z.cpu(), w_o)  # [d_model]


@no_type_check  # checks its arguments
def function_vector(model, task: Task | str, *, layer: int | Iterable[int] | None = None, positions: Iterable[int] | int = (-1,),
                    sites: Iterable[Site] | None = None, top_k: int = 10, aie: AIEResult | None = None,
                    return_aie: bool = False, shots: int = 10, n_clean: int = 100, n_corrupt: int = 25,
                    splits: TaskSplits | None = None, seed: int = 0, heads_per_pass: int | None = None,
                    out_of_range: str = "error") -> TaskVector | tuple[TaskVector, AIEResult]:
    """The function vector of ``task``, added at ``sites`` (default: layer ``layer`` or L/2, last token).

    Several sites (e.g. a scenario's) all get the same vector. ``return_aie=True`` returns
    ``(vector, aie)``; pass ``aie=`` to reuse one.
    """
    from tvlens._fingerprint import fingerprint
    from tvlens.tasks import get as get_task

    task = get_task(task) if isinstance(task, str) else task
    if aie is None:
        aie = head_aie(model, task, shots=shots, n_clean=n_clean, n_corrupt=n_corrupt, splits=splits, seed=seed,
                       heads_per_pass=heads_per_pass)
    elif not isinstance(aie, AIEResult) or tuple(aie.aie.shape) != (model.cfg.n_layers, model.cfg.n_heads):
        raise ConfigError("aie must be an AIEResult of this model (from tv.head_aie or function_vector(..., return_aie=True))")
    elif aie.task != task.name:
        raise ConfigError(f"aie was computed on task {aie.task!r}, not {task.name!r}")
    top = aie.top(top_k)
    fv = fv_from_heads(model, aie.mean_z, [(layer_, h) for layer_, h, _ in top])
    if sites is None:
        sites = site_grid(model.cfg.n_layers // 2 if layer is None else layer, positions)
    sites = tuple(sites)
    check_sites(sites, model.cfg.n_layers)
    vector = TaskVector(values=fv[None].expand(len(sites), -1).clone(), sites=sites, task=task.name,
                        template=task.template_record(), model_fingerprint=fingerprint(model), d_model=model.cfg.d_model, n_layers=model.cfg.n_layers,
                        operation="add", method="fv", out_of_range=out_of_range,
                        meta={"shots": 0, "source_shots": aie.shots, "top_heads": [list(t) for t in top], "n_clean": aie.n_clean,
                              "n_corrupt": aie.n_corrupt, "seed": seed, "backend": _backend.describe(model)})
    return (vector, aie) if return_aie else vector
