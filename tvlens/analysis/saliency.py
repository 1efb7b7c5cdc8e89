"""Key-head saliency: which heads' outputs at the last token matter for the answer with θ injected.

Context:
    ``mode="grad"`` (first-order attribution): with θ injected, every head's output at N
    (``attn.hook_z``, before ``W_O``; ``z · dp/dz`` equals ``(z W_O) · dp/d(z W_O)``) is dotted
    with the gradient of p(gold first token), from ONE forward and ONE backward pass for all
    heads (a zero ``AddToHeads`` edit that requires grad), both over the last column only from
    the first scored layer (the steered prefix computed once by :mod:`tvlens._engine`). ``a · dp/da`` is the first-order
    estimate of the drop in p(gold) when the head's output at N is zeroed.
    ``mode="exact"``: that drop measured, head by head, batched: the steered run's prefix is
    computed once (:mod:`tvlens._engine`), and a chunk of layer-l' heads runs only the last
    column from block l' with the batch replicated once per head, each replica zeroing its own
    head at N.
    Either way ``scores[l, h]`` = mean over queries of ``|a · dp/da|`` (grad) or of ``|drop|``
    (exact); ``attribution`` keeps the signed mean. Heads before the injection layer are not
    scored by default (``layers=``): they cannot read θ.

>>> import tvlens as tv
>>> from tvlens.analysis import head_saliency
>>> model = tv.load_model("toy")
>>> v = tv.train_ltv(model, "toy/antonym", progress=False).vector
>>> sal = head_saliency(model, v, "toy/antonym")
>>> len(sal.top(0.1)) >= 1
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float

from tvlens import _engine as engine
from tvlens import _progress
from tvlens._engine import head_chunks
from tvlens._hooks import AddToHeads, SetHeadPerRow
from tvlens._result import Result
from tvlens._validate import check_choice, check_float, check_int, check_layers, no_type_check
from tvlens.analysis._inputs import check_vector, final_logits, injection, p_gold, resolve_prompts, steer_edit
from tvlens.errors import ConfigError
from tvlens.prompts import PromptBatch
from tvlens.vector import TaskVector

__all__ = ["HeadSaliency", "head_saliency", "spearman"]

@dataclass(frozen=True, eq=False, repr=False)
class HeadSaliency(Result):
    """``scores[l, h]``: how much head (l, h)'s output at the last token matters for p(gold), θ injected."""

    scores: Float[torch.Tensor, "layer head"]  # mean |a . dp/da| (grad) or mean |drop in p(gold)| (exact); nan = not scored
    attribution: Float[torch.Tensor, "layer head"]  # the signed mean (grad: a . dp/da; exact: p - p_ablated)
    mode: str  # "grad" or "exact"
    layer: int  # the vector's injection layer
    task: str
    n: int  # queries averaged over
    p_gold: float  # mean p(gold first token) with θ injected

    def ranked(self) -> list[tuple[int, int]]:
        """Every scored head, highest score first."""
        flat = self.scores.flatten()
        ok = ~flat.isnan()
        idx = torch.arange(len(flat))[ok][flat[ok].argsort(descending=True, stable=True)]
        h = self.scores.shape[1]
        return [(int(i) // h, int(i) % h) for i in idx]

    @no_type_check  # checks its argument
    def top(self, fraction: float = 0.1) -> list[tuple[int, int]]:
        """The highest-scoring ``fraction`` of the scored heads (at least one), highest first."""
        check_float("HeadSaliency.top", "fraction", fraction, min=0, max=1, min_exclusive=True)
        order = self.ranked()
        return order[: max(1, round(fraction * len(order)))]

    def to_frame(self):
        """One row per scored head: layer, head, score, rank (1 = highest), attribution."""
        import pandas as pd

        order = self.ranked()
        rank = {hd: i + 1 for i, hd in enumerate(order)}
        rows = sorted(order)
        return pd.DataFrame({"layer": [r[0] for r in rows], "head": [r[1] for r in rows],
                             "score": [float(self.scores[r]) for r in rows], "rank": [rank[r] for r in rows],
                             "attribution": [float(self.attribution[r]) for r in rows]})

    @no_type_check
    def query(self, layer: int | None = None, min_score: float | None = None):
        """Rows of :meth:`to_frame` of one ``layer`` and/or with ``score >= min_score``, highest first."""
        df = self.to_frame()
        if layer is not None:
            df = df[df["layer"] == layer]
        if min_score is not None:
            df = df[df["score"] >= min_score]
        return df.sort_values("rank").reset_index(drop=True)

    def plot(self):
        """Heatmap of the scores (layers up from layer 0 at the bottom, heads across; as the dashboard)."""
        import plotly.graph_objects as go

        from tvlens._plot import head_grid_axes

        fig = go.Figure(go.Heatmap(z=self.scores.numpy(), colorscale="Viridis", colorbar={"title": "saliency"},
                                   hovertemplate="L%{y} H%{x}<br>score %{z:.3g}<extra></extra>"))
        fig.update_layout(title=f"Head saliency ({self.mode}) of θ@L{self.layer}, {self.task}, n={self.n}")
        return head_grid_axes(fig, *self.scores.shape)

    def __repr__(self) -> str:
        top = ", ".join(f"L{a}H{b}" for a, b in self.top(0.1)[:5])
        return f"HeadSaliency({self.mode}, {self.task!r} θ@L{self.layer}, n={self.n}, p_gold={self.p_gold:.3f}, top: {top})"


def spearman(a, b) -> float:
    """Spearman rank correlation of two score tensors (or HeadSaliency), over entries finite in both."""
    import pandas as pd

    a = a.scores if isinstance(a, HeadSaliency) else torch.as_tensor(a)
    b = b.scores if isinstance(b, HeadSaliency) else torch.as_tensor(b)
    if a.shape != b.shape:
        raise ConfigError(f"spearman needs scores of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.flatten().double(), b.flatten().double()
    ok = a.isfinite() & b.isfinite()
    if int(ok.sum()) < 2:
        raise ConfigError("spearman needs at least two heads scored in both")
    ra = pd.Series(a[ok].numpy()).rank()  # average ranks for ties
    rb = pd.Series(b[ok].numpy()).rank()
    return float(ra.corr(rb))  # Pearson correlation of the ranks


def grad_attribution(model, vector: TaskVector, batch: PromptBatch, layers: list[int], *,
                     batch_size: int = 32) -> tuple[Float[torch.Tensor, "batch layer head"], Float[torch.Tensor, " batch"]]:
    """``a · dp(gold)/da`` of every head of ``layers`` at each prompt's last token, and p(gold), θ injected.

    The steered run's prefix is computed once without grad (:mod:`tvlens._engine`); each
    sub-batch then runs only the remaining columns from the first of ``layers`` under grad, with
    a zero ``AddToHeads`` leaf at N whose gradient is every head's (causal attention: the earlier
    columns do not depend on it).
    """
    cfg = model.cfg
    names = tuple(f"blocks.{lay}.attn.hook_z" for lay in layers)
    start = min(layers)
    with torch.no_grad():
        pre = engine.prefix(model, batch, positions=(-1,), layer=start, base=[steer_edit(vector)])
    per = min(batch_size, engine.rows_per_pass(pre, start, grad=True))
    attrs, ps = [], []
    for lo in range(0, len(batch), per):
        rows = torch.arange(lo, min(lo + per, len(batch)))
        delta = torch.zeros(len(rows), len(layers), cfg.n_heads, cfg.d_head, device=cfg.device, requires_grad=True)
        with torch.enable_grad():
            out = engine.run(pre, [AddToHeads(tuple(layers), delta)], start=start, rows=rows, names=names)
            p = p_gold(final_logits(model, out.last()), batch.answer_ids[rows])  # [b]
            (grad,) = torch.autograd.grad(p.sum(), delta)  # rows are independent: row b's grad is dp_b/dz_b
        z = torch.stack([out.at_last(out.acts[n]) for n in names], 1).detach()  # [b, layer, head, d_head]
        attrs.append(torch.einsum("blhd,blhd->blh", z.float(), grad.float()).cpu())
        ps.append(p.detach().cpu())
    return torch.cat(attrs), torch.cat(ps)


def exact_drops(model, vector: TaskVector, batch: PromptBatch, heads: list[tuple[int, int]], *,
                heads_per_pass: int | None = None, progress: bool = False, budget: engine.Budget = engine.Budget()
                ) -> tuple[Float[torch.Tensor, "batch head"], Float[torch.Tensor, " batch"]]:
    """p(gold) with θ minus p(gold) with θ and head h's output at N zeroed, for each of ``heads``; and p(gold).

    Many heads per forward pass: the batch is replicated once per head of a chunk. The steered
    run's prefix (keys and values of the columns before the last, or before θ's first column)
    is computed once; a chunk of layer-l' heads runs only the remaining columns from block l'
    (:func:`tvlens._engine.run`). ``heads_per_pass`` defaults to what ``budget`` allows.
    """
    n = len(batch)
    first = min([lay for lay, _ in heads] + [s.layer for s in vector.sites])
    with torch.no_grad():
        pre = engine.prefix(model, batch, positions=(-1,), layer=first, base=[steer_edit(vector)])
        base = p_gold(final_logits(model, pre.final()), batch.answer_ids).cpu()  # [n]
        drops: dict[tuple[int, int], torch.Tensor] = {}
        per = heads_per_pass or max(1, engine.rows_per_pass(pre, budget=budget) // n)
        for chunk in _progress.bar(head_chunks(heads, per), desc="exact head saliency", unit="pass", disable=not progress):
            lay, c = chunk[0][0], len(chunk)
            hl = torch.tensor(chunk, dtype=torch.long).repeat_interleave(n, 0)  # [c*n, 2]: replica j zeroes head j
            out = engine.run(pre, [SetHeadPerRow(hl, torch.zeros(c * n, model.cfg.d_head))], start=lay, replicas=c)
            p = p_gold(final_logits(model, out.last()), batch.answer_ids.repeat(c)).cpu().reshape(c, n)  # [head, prompt]
            for hd, row in zip(chunk, base[None] - p):
                drops[hd] = row
    return torch.stack([drops[hd] for hd in heads], 1), base


@no_type_check  # checks its arguments
def head_saliency(model, vector: TaskVector, task=None, *, prompts=None, mode: Literal["grad", "exact"] = "grad",
                  layers=None, n: int | None = None, seed: int = 0, batch_size: int = 32, heads_per_pass: int | None = None,
                  progress: bool = True) -> HeadSaliency:
    """Saliency of every head of ``layers`` (default: the injection layer and later) for ``task``'s zero-shot queries.

    ``progress``: a tqdm bar over the exact mode's forward passes (``False`` turns it off).
    """
    check_choice("head_saliency", "mode", mode, ("grad", "exact"))
    check_vector(model, vector)
    cfg = model.cfg
    first, _ = injection(vector)
    todo = list(range(first, cfg.n_layers)) if layers is None else list(check_layers("head_saliency", "layers", layers, cfg.n_layers))
    if heads_per_pass is not None:
        check_int("head_saliency", "heads_per_pass", heads_per_pass, min=1)
    ps = resolve_prompts(task, prompts, n=n, seed=seed, batch_size=batch_size, vector=vector)
    vector.check_task(ps.task)
    batch = ps.tokenize(model)
    scores = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
    signed = scores.clone()
    idx = torch.tensor(todo)
    if mode == "grad":
        attr, p = grad_attribution(model, vector, batch, todo, batch_size=batch_size)  # [b, layer', head]
        scores[idx], signed[idx] = attr.abs().mean(0), attr.mean(0)
    else:
        heads = [(lay, h) for lay in todo for h in range(cfg.n_heads)]
        drop, p = exact_drops(model, vector, batch, heads, heads_per_pass=heads_per_pass, progress=progress)  # [b, head]
        scores[idx] = drop.abs().mean(0).reshape(len(todo), cfg.n_heads)
        signed[idx] = drop.mean(0).reshape(len(todo), cfg.n_heads)
    return HeadSaliency(scores, signed, mode, first, ps.task.name, len(batch), float(p.mean()))


# --- the registry's declaration (tvlens analyze saliency, the report's section, the circuit's column) ---

from dataclasses import dataclass as _dataclass  # noqa: E402
from dataclasses import field as _field  # noqa: E402

from tvlens.analysis._registry import Analysis, Options, register  # noqa: E402


@_dataclass(frozen=True)
class SaliencyOptions(Options):
    """Options of ``tvlens analyze saliency``."""

    mode: Literal["grad", "exact"] = _field(default="grad", metadata={"help": "one-pass gradient (default) or exact ablation effects"})


def _run_saliency(ctx, opts: SaliencyOptions):
    return head_saliency(ctx.model, ctx.vector, prompts=ctx.prompts, mode=opts.mode, progress=False)


register(Analysis("saliency", SaliencyOptions, _run_saliency, HeadSaliency, "Key-head saliency", "Heads",
                  "|a · dp(gold)/da| per head with θ injected, averaged over queries.", order=20,
                  head_columns=lambda r: {"saliency": r.scores}))
