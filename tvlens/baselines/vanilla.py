"""Vanilla task vectors (Hendel et al. 2023): the residual stream of ICL prompts, averaged.

Context:
    For k-shot ICL prompts whose query is a *dummy* query (here: the train split's queries), the
    residual stream at the injection site is averaged over prompts (METHOD.md section 2). Two
    operations, both returned as a :class:`~tvlens.TaskVector` so steering, saving and evaluation
    are the same code as for learned vectors:

    - ``operation="replace"`` (Hendel's): the vector is mean h_ICL; applying it OVERWRITES the
      zero-shot state at the site.
    - ``operation="add"`` (the LTV paper's): the vector is mean(h_ICL - h_zero-shot) over the
      same queries; applying it is ADDED to the zero-shot state.

    Hendel's own evaluation, where each test prompt is steered by the vector of its own
    demonstrations (averaged over a few dummy queries), is :func:`vanilla_tv_per_prompt`.

    Sites follow tvlens's convention: layer ``l`` is ``blocks.{l}.hook_resid_pre`` (the input of
    block ``l``; Hendel's "layer l" is the output of block l, i.e. our ``l + 1``).

>>> import tvlens as tv
>>> model = tv.load_model("toy")
>>> v = tv.vanilla_tv(model, "toy/antonym", layer=2, shots=5)
>>> v
TaskVector(vanilla_tv 'toy/antonym', add, sites=[L2@-1], d_model=128)
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from jaxtyping import Float

from tvlens import _backend
from tvlens import _engine as engine
from tvlens._memo import memo_key, tensor_digest
from tvlens._validate import no_type_check
from tvlens.errors import ConfigError
from tvlens.prompts import PromptSet, TaskSplits, make_prompts, make_splits
from tvlens.sites import OutOfRange, Site, check_sites, resolve_columns, site_grid
from tvlens.tasks._task import Task
from tvlens.vector import TaskVector

__all__ = ["residual_at_sites", "vanilla_tv", "vanilla_tv_per_prompt"]


# every layer's residual at one column per prompt, kept per model for the few latest prompt sets: a sweep asks
# for the same ICL prompts' residual at each of its layers, and one forward pass reads them all
_RESID_MEMO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MEMO_ENTRIES = 4
# the all-layer pass holds every layer's activations of a sub-batch at once: above the engine's memory budget for one
# run (a large model, long prompts) each call reads its own layers instead
_MEMO_MAX_BYTES = engine.Budget().max_bytes


def _all_layers_fit(model, batch, batch_size: int) -> bool:
    """Whether one sub-batch's residual streams at every layer fit :data:`_MEMO_MAX_BYTES`."""
    cfg = model.cfg
    rows, width = min(batch_size, len(batch)), batch.tokens.shape[1]
    return rows * width * cfg.d_model * cfg.n_layers * torch.finfo(cfg.dtype).bits // 8 <= _MEMO_MAX_BYTES


def _all_layers_at(model, batch, col: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor] | None:
    """``{blocks.{l}.hook_resid_pre: [batch, d_model]}`` at column ``col`` of each row for every layer, from the
    memo or one forward pass; None where no memo may serve (hooks installed)."""
    state = memo_key(model)
    if state is None:
        return None
    key = (state, tensor_digest(batch.tokens, batch.attention_mask, col), batch_size)
    memo = _RESID_MEMO.setdefault(model, OrderedDict())
    if key not in memo:
        names = [f"blocks.{lay}.hook_resid_pre" for lay in range(model.cfg.n_layers)]
        _, acts = engine.forward(model, batch, names=names, at=col[:, None], batch_size=batch_size)
        memo[key] = {n: acts[n][:, 0].cpu() for n in names}
        while len(memo) > _MEMO_ENTRIES:
            memo.popitem(last=False)
    memo.move_to_end(key)
    return memo[key]


def residual_at_sites(
    model, prompts: PromptSet, sites: Sequence[Site], *, out_of_range: OutOfRange = "error", batch_size: int = 64
) -> Float[torch.Tensor, "batch site d_model"]:
    """The residual stream ``blocks.{l}.hook_resid_pre`` of every prompt at every site.

    Sites at one position read every layer in one forward pass, kept for the next call on the same
    prompts and weights (a sweep's layers): the same numbers as a pass per call. Where every layer's
    activations of a sub-batch would exceed the engine's one-run memory budget, each call reads its own.
    """
    batch = prompts.tokenize(model, padding_side="left")
    names = sorted({s.hook_name for s in sites})
    cols = torch.stack([resolve_columns(s.position, batch.last_index, batch.first_index, out_of_range) for s in sites], 1)  # [batch, site]
    at = cols.clamp(min=0)
    one_column = bool((at == at[:, :1]).all()) and all(0 <= s.layer < model.cfg.n_layers for s in sites)
    every = _all_layers_at(model, batch, at[:, 0], batch_size) if one_column and _all_layers_fit(model, batch, batch_size) else None
    if every is not None:
        per_site = [every[s.hook_name] for s in sites]
    else:
        _, acts = engine.forward(model, batch, names=names, at=at, batch_size=batch_size)  # {name: [batch, site, d_model]}
        per_site = [acts[s.hook_name][:, i].cpu() for i, s in enumerate(sites)]  # [batch, d_model] each
    v = torch.stack(per_site, 1)  # [batch, site, d_model]
    return torch.where((cols >= 0)[:, :, None], v, torch.nan)  # a site a prompt lacks ("skip") -> nan


@no_type_check  # checks its arguments
def vanilla_tv(
    model,
    task: Task | str,
    *,
    layer: int | Iterable[int] | None = None,
    positions: Iterable[int] | int = (-1,),
    sites: Iterable[Site] | None = None,
    shots: int = 5,
    operation: Literal["add", "replace"] = "add",
    n_prompts: int | None = 100,
    splits: TaskSplits | None = None,
    seed: int = 0,
    out_of_range: OutOfRange = "error",
    batch_size: int = 64,
) -> TaskVector:
    """A vanilla task vector of ``task`` at ``sites`` (default: layer ``layer`` or L/2, last token).

    The ICL prompts are ``shots``-shot prompts on the first ``n_prompts`` train queries (their
    demonstrations from the demonstration pool); the zero-shot prompts (for ``"add"``) are the same
    queries with no demonstration. A site a prompt lacks raises unless ``out_of_range`` is
    ``"skip"`` (such prompts are left out of that site's mean) or ``"clip"``; the choice is stored in
    the vector, so steering resolves positions the same way.
    """
    from tvlens._fingerprint import fingerprint
    from tvlens.tasks import get as get_task

    task = get_task(task) if isinstance(task, str) else task
    if operation not in ("add", "replace"):
        raise ConfigError(f"operation must be 'add' (the LTV paper's) or 'replace' (Hendel's), got {operation!r}")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise ConfigError(f"shots must be an integer >= 1 (a vanilla task vector is read from ICL prompts), got {shots!r}")
    if out_of_range not in ("error", "skip", "clip"):
        raise ConfigError(f"out_of_range must be 'error', 'skip' or 'clip', got {out_of_range!r}")
    if sites is None:
        sites = site_grid(model.cfg.n_layers // 2 if layer is None else layer, positions)
    sites = tuple(sites)
    check_sites(sites, model.cfg.n_layers)
    splits = splits or make_splits(task, seed=seed)
    icl_ps = make_prompts(splits, "train", k=shots, seed=seed, n=n_prompts)
    h_icl = residual_at_sites(model, icl_ps, sites, out_of_range=out_of_range, batch_size=batch_size)  # [batch, site, d]
    if operation == "add":
        zs_ps = make_prompts(splits, "train", k=0, seed=seed, n=n_prompts)
        h_zs = residual_at_sites(model, zs_ps, sites, out_of_range=out_of_range, batch_size=batch_size)
        diff = h_icl - h_zs  # [batch, site, d_model]; nan where either prompt lacks the site
    else:
        diff = h_icl
    values = diff.nanmean(0)  # [site, d_model]
    values = torch.nan_to_num(values, nan=0.0)  # a site no prompt has is never applied ("skip")
    return TaskVector(
        values=values.float(),
        sites=sites,
        task=task.name,
        template=task.template_record(),
        model_fingerprint=fingerprint(model),
        d_model=model.cfg.d_model,
        n_layers=model.cfg.n_layers,
        operation=operation,
        method="vanilla_tv",
        out_of_range=out_of_range,
        meta={"shots": 0, "source_shots": shots, "n_prompts": len(icl_ps), "seed": seed, "split_seed": splits.seed,
              "operation": operation, "backend": _backend.describe(model)},
    )


@no_type_check  # checks its arguments
def vanilla_tv_per_prompt(
    model,
    task: Task | str,
    *,
    layer: int | None = None,
    shots: int = 5,
    operation: Literal["add", "replace"] = "replace",
    n_dummy: int = 2,
    splits: TaskSplits | None = None,
    seed: int = 0,
    split: str = "test",
):
    """Hendel's evaluation: each query steered by the vector of *its own* demonstrations.

    For query i with demonstrations D_i (those of its ``shots``-shot prompt), the vector is the
    last-token residual at ``blocks.{layer}.hook_resid_pre`` of ``n_dummy`` prompts "D_i + a dummy
    query" (train queries), averaged; with ``"add"`` minus the same dummies' zero-shot state. It is
    applied to query i's zero-shot prompt (default ``"replace"``, Hendel's). Returns the
    :class:`~tvlens.EvalResult` of the ``split`` queries (one vector per prompt, so no TaskVector).
    """
    import random

    from tvlens._hooks import AddPerRow
    from tvlens.evaluate import evaluate
    from tvlens.tasks import get as get_task

    task = get_task(task) if isinstance(task, str) else task
    if operation not in ("add", "replace"):
        raise ConfigError(f"operation must be 'add' or 'replace' (Hendel's), got {operation!r}")
    if isinstance(n_dummy, bool) or not isinstance(n_dummy, int) or n_dummy < 1:
        raise ConfigError(f"n_dummy must be an integer >= 1 (dummy queries per prompt), got {n_dummy!r}")
    layer = model.cfg.n_layers // 2 if layer is None else layer
    site = Site(layer, -1)
    check_sites([site], model.cfg.n_layers)
    splits = splits or make_splits(task, seed=seed)
    icl = make_prompts(splits, split, k=shots, seed=seed)
    rng = random.Random(f"tvlens-hendel-dummies-{task.base_name}-{seed}")
    dummies = [rng.sample(splits.train, min(n_dummy, len(splits.train))) for _ in icl.queries]
    nd = len(dummies[0])
    queries = tuple(q for ds in dummies for q in ds)
    demos = tuple(d for d in icl.demos for _ in range(nd))
    dummy_ps = PromptSet(task, "train", shots, queries, demos, seed)
    h = residual_at_sites(model, dummy_ps, [site])[:, 0].reshape(len(icl), nd, -1).mean(1)  # [query, d_model]
    if operation == "add":
        zs_dummy = PromptSet(task, "train", 0, queries, tuple(() for _ in queries), seed)
        h = h - residual_at_sites(model, zs_dummy, [site])[:, 0].reshape(len(icl), nd, -1).mean(1)
    zs = make_prompts(splits, split, k=0, seed=seed)
    return evaluate(model, zs, intervention=AddPerRow(site, h, operation), batch_size=len(zs),
                    label=f"vanilla_tv per-prompt ({operation}, L{layer})")
