"""Per-head OV products of a task vector, and the OV reconstruction of its effect.

Context:
    θ added to the residual stream at the input of block ``l`` (last token N) reaches every later
    block's input through the skip connections. Head ``(l', h)`` with ``l' >= l`` reads it through
    its layer norm and its OV circuit: the head's value at N changes by ``LN(θ) @ W_V`` and its
    output by ``A[N, N] * LN(θ) @ W_V @ W_O``, where ``A[N, N]`` is its attention from N to the
    injected position. :func:`ov_products` returns the per-head products ``LN(θ) W_V W_O`` as one
    tensor [layer, head, d_model] (one einsum; ``model.W_V`` is per query head, so under
    grouped-query attention each head uses its group's W_V).

The LayerNorm treatment (``ln=``):
    Layer norm is affine in θ once its scale is fixed: ``LN(x + θ) - LN(x) = w * center(θ) / s``
    (``center`` only for LayerNorm, not RMSNorm; ``w`` is ln1's weight, already folded into
    ``W_V`` when the model was loaded with ``fold_ln``; the bias cancels).
    ``"folded"``: ``s = 1``, the product of the weights alone (as TransformerLens holds them).
    ``"actual"``: ``s`` = ln1's actual scale at θ's position (N by default) in the run with θ, averaged as ``1/s``
    over the prompts (needs ``prompts`` or ``task``). Earlier layers' rows are zero and flagged
    (``valid``).

:func:`ov_reconstruction` adds ``r = Σ products`` (variant A) or ``r + θ`` (variant B) to the
final residual at N of the zero-shot run instead of injecting θ, per prompt with that prompt's
ln1 scales, optionally weighted by each head's attention from N to N; controls: the actual
θ-induced changes of the MLP outputs (``mlp_control``) and of the attention outputs
(``attn_path``), θ alone at the end (``theta_only``), the LTV itself and zero-shot.

>>> import torch, tvlens as tv
>>> from tvlens.analysis import ov_products
>>> model = tv.load_model("toy")
>>> v = tv.TaskVector(torch.randn(1, model.cfg.d_model), (tv.Site(2, -1),), model_fingerprint=tv.fingerprint(model))
>>> ov_products(model, v).products.shape == (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_model)
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int

from tvlens import _backend
from tvlens import _engine as engine
from tvlens._result import ConditionAccuracy, Result
from tvlens._validate import check_choice, check_layers, no_type_check
from tvlens.analysis._inputs import check_vector, final_logits, resolve_prompts, single_layer_theta, steer_edit
from tvlens.errors import ConfigError
from tvlens.vector import TaskVector

__all__ = ["OVProducts", "OVReconstruction", "ov_products", "ov_reconstruction"]

LNMode = Literal["folded", "actual"]
TOP_K = 20  # decoded tokens kept per head


@dataclass(frozen=True, eq=False, repr=False)
class OVProducts(Result):
    """``products[l, h] = LN(θ) @ W_V[l, h] @ W_O[l, h]`` for every head of layers >= the injection layer."""

    products: Float[torch.Tensor, "layer head d_model"]  # zero where not valid
    theta: Float[torch.Tensor, " d_model"]
    layer: int  # injection layer l
    ln: str  # "folded" or "actual"
    inv_scale: Float[torch.Tensor, " layer"]  # the 1/s applied per layer (1 for "folded"; 0 where not valid)
    valid: Bool[torch.Tensor, " layer"]  # layers whose products were computed (>= l and in layers=)
    attention: Float[torch.Tensor, "layer head"]  # mean attention from N to the injected position (run with θ); nan without prompts
    label_proj: Float[torch.Tensor, "layer head"]  # logit lens: mean gold-token logit minus mean logit; nan without prompts
    top_ids: Int[torch.Tensor, "layer head k"]  # top tokens of products @ W_U (ln_final weight, no scale); 0 where not valid
    top_logits: Float[torch.Tensor, "layer head k"]  # nan where not valid
    top_tokens: tuple  # top_tokens[l][h] = the decoded strings of top_ids[l, h] (empty where not valid)
    task: str = ""

    @property
    def ov_norm(self) -> Float[torch.Tensor, "layer head"]:
        return self.products.norm(dim=-1)

    @property
    def cos_theta(self) -> Float[torch.Tensor, "layer head"]:
        return torch.nn.functional.cosine_similarity(self.products, self.theta.expand_as(self.products), dim=-1)

    def weighted(self) -> Float[torch.Tensor, "layer head d_model"]:
        """Products weighted by each head's attention from N to θ's position (its actual write, frozen patterns)."""
        if bool(self.attention[self.valid].isnan().any()):
            raise ConfigError("attention weights need prompts: ov_products(model, vector, prompts=...) or task=...")
        return self.products * self.attention.nan_to_num(0.0)[..., None]  # rows before the injection layer stay zero

    def decoded(self, layer: int, head: int, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` tokens whose unembedding the head's product raises most, with their logits."""
        if not 1 <= k <= self.top_ids.shape[-1]:
            raise ConfigError(f"k must be in 1..{self.top_ids.shape[-1]}, got {k}")
        if not bool(self.valid[layer]):
            raise ConfigError(f"layer {layer} is before the injection layer {self.layer} (or not computed): its heads do not read θ")
        return [(self.top_tokens[layer][head][i], float(self.top_logits[layer, head, i])) for i in range(k)]

    def to_frame(self):
        """One row per head of the valid layers: layer, head, ov_norm, cos_theta, label_proj, attention."""
        import pandas as pd

        n_layers, n_heads = self.products.shape[:2]
        rows = [(lay, h) for lay in range(n_layers) for h in range(n_heads) if bool(self.valid[lay])]
        norm, cos = self.ov_norm, self.cos_theta
        return pd.DataFrame({
            "layer": [r[0] for r in rows], "head": [r[1] for r in rows],
            "ov_norm": [float(norm[r]) for r in rows], "cos_theta": [float(cos[r]) for r in rows],
            "label_proj": [float(self.label_proj[r]) for r in rows], "attention": [float(self.attention[r]) for r in rows],
            "top_token": [self.top_tokens[r[0]][r[1]][0] for r in rows],
        })

    def plot(self):
        """Heatmap of the product norms (layers up, heads across, as the dashboard), decoded top tokens on hover."""
        import plotly.graph_objects as go

        norm = self.ov_norm.masked_fill(~self.valid[:, None], float("nan")).numpy()
        text = [[", ".join(self.top_tokens[lay][h][:5]) for h in range(norm.shape[1])] for lay in range(norm.shape[0])]
        fig = go.Figure(go.Heatmap(z=norm, text=text, colorscale="Viridis", colorbar={"title": "‖W_O W_V LN(θ)‖"},
                                   hovertemplate="L%{y} H%{x}<br>norm %{z:.3g}<br>%{text}<extra></extra>"))
        from tvlens._plot import head_grid_axes

        fig.update_layout(title=f"OV products of θ (layer {self.layer}, LN {self.ln}) {self.task}")
        return head_grid_axes(fig, *norm.shape)

    def __repr__(self) -> str:
        n = int(self.valid.sum()) * self.products.shape[1]
        return f"OVProducts({self.task!r} θ@L{self.layer}, ln={self.ln}, {n} heads, max norm {float(self.ov_norm.max()):.3g})"


def _ln_theta(model, theta: torch.Tensor, layers: list[int]) -> Float[torch.Tensor, "layer d_model"]:
    """``w * center(θ)`` for ln1 of each of ``layers`` (no scale; w = 1 when folded into W_V)."""
    norm = model.cfg.normalization_type
    x = theta - theta.mean() if norm in ("LN", "LNPre") else theta.clone()
    rows = []
    for lay in layers:
        w = getattr(model.blocks[lay].ln1, "w", None)
        rows.append(x * w.detach().float() if w is not None else x)
    return torch.stack(rows)  # [layer, d_model]


def _unembed_dirs(model, vecs: Float[torch.Tensor, "n d_model"]) -> Float[torch.Tensor, "n d_vocab"]:
    """Logit-lens direction: ln_final's weight (no scale, centred for LayerNorm), then W_U."""
    x = vecs
    if model.cfg.normalization_type in ("LN", "LNPre"):
        x = x - x.mean(-1, keepdim=True)
    w = getattr(model.ln_final, "w", None) if model.cfg.normalization_type is not None else None
    if w is not None:
        x = x * w.detach().float()
    return x @ model.W_U.detach().float()  # [n, d_vocab]


def unscaled_products(model, theta: torch.Tensor, layers: list[int]) -> Float[torch.Tensor, "layer head d_model"]:
    """``w * center(θ) @ W_V @ W_O`` for every head of ``layers`` (one einsum), scale 1."""
    x = _ln_theta(model, theta.float(), layers)  # [layer, d_model]
    idx = torch.tensor(layers, dtype=torch.long)
    w_v = _backend.per_query_head(model, "W_V")[idx].detach().float()  # [layer, head, d_model, d_head] (GQA groups repeated)
    w_o = model.W_O[idx].detach().float()  # [layer, head, d_head, d_model]
    return torch.einsum("lm,lhmd,lhde->lhe", x, w_v, w_o)  # [layer, head, d_model]


def _steered_stats(model, vector: TaskVector, prompts, layers: list[int], batch_size: int):
    """Per prompt and layer, in the run with θ: 1/ln1 scale at θ's column [b, layer], and each head's
    attention from the last token N to θ's column [b, layer, head] (a position a prompt lacks is clipped)."""
    from tvlens.sites import resolve_columns

    batch = prompts.tokenize(model)
    col = resolve_columns(vector.sites[0].position, batch.last_index, batch.first_index, "clip")  # [b]
    names = [f"blocks.{lay}.ln1.hook_scale" for lay in layers] + [f"blocks.{lay}.attn.hook_pattern" for lay in layers]
    _, acts = engine.forward(model, batch, [steer_edit(vector)], batch_size=batch_size, names=names, at=col)
    inv = torch.stack([1.0 / acts[f"blocks.{lay}.ln1.hook_scale"][:, 0] for lay in layers], 1)  # [b, layer]
    rows = torch.arange(len(batch))
    att = torch.stack([acts[f"blocks.{lay}.attn.hook_pattern"][rows, :, col] for lay in layers], 1)  # [b, layer, head]
    return batch, inv, att


@no_type_check  # checks its arguments
def ov_products(model, vector: TaskVector, task=None, *, prompts=None, n: int | None = None, seed: int = 0,
                ln: LNMode = "folded", layers=None, batch_size: int = 64) -> OVProducts:
    """Every head's OV product with θ, [layer, head, d_model] (see the module docstring for ``ln``).

    ``prompts`` (a PromptSet) or ``task`` give the attention weights, the logit-lens projection
    onto the gold answers and, for ``ln="actual"``, the ln1 scales. ``layers``: a subset of the
    layers >= the injection layer (default: all of them).
    """
    check_choice("ov_products", "ln", ln, ("folded", "actual"))
    check_vector(model, vector)
    layer, theta = single_layer_theta(vector)
    if len(vector.sites) != 1:
        raise ConfigError(f"OV products need a vector with one site, got {len(vector.sites)}; take one: v.values[i:i+1], v.sites[i:i+1]")
    cfg = model.cfg
    todo = list(range(layer, cfg.n_layers)) if layers is None else list(check_layers("ov_products", "layers (at or after the injection layer)", layers, cfg.n_layers, low=layer))
    have = prompts is not None or task is not None
    if ln == "actual" and not have:
        raise ConfigError("ln='actual' needs the ln1 scales of real prompts: pass prompts=tv.make_prompts(...) or task=...")
    products = torch.zeros(cfg.n_layers, cfg.n_heads, cfg.d_model)
    inv = torch.zeros(cfg.n_layers)
    att = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
    proj = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
    idx = torch.tensor(todo)
    raw = unscaled_products(model, theta, todo)  # [layer', head, d_model]
    if have:
        ps = resolve_prompts(task, prompts, n=n, seed=seed, batch_size=batch_size, vector=vector)
        vector.check_task(ps.task)
        batch, inv_b, att_b = _steered_stats(model, vector, ps, todo, batch_size)
        att[idx] = att_b.mean(0).cpu()
        inv[idx] = inv_b.mean(0).cpu() if ln == "actual" else 1.0
        task_name = ps.task.name
    else:
        inv[idx] = 1.0
        task_name = vector.task
    products[idx] = raw * inv[idx][:, None, None]
    # logit lens of the computed layers only (L x H x d_vocab floats would be large for big models)
    logits = _unembed_dirs(model, products[idx].reshape(-1, cfg.d_model)).reshape(len(todo), cfg.n_heads, -1)  # [layer', head, vocab]
    if have:
        gold = batch.answer_ids.to(logits.device)
        proj[idx] = (logits[..., gold].mean(-1) - logits.mean(-1)).cpu()
    k = min(TOP_K, logits.shape[-1])
    top_logits = torch.full((cfg.n_layers, cfg.n_heads, k), float("nan"))
    top_ids = torch.zeros(cfg.n_layers, cfg.n_heads, k, dtype=torch.long)
    top_logits[idx], top_ids[idx] = (t.cpu() for t in logits.topk(k, dim=-1))
    dec = model.tokenizer.decode if model.tokenizer is not None else str
    tokens = tuple(tuple((tuple(dec([int(t)]) for t in top_ids[lay, h]) if lay in todo else ()) for h in range(cfg.n_heads))
                   for lay in range(cfg.n_layers))
    valid = torch.zeros(cfg.n_layers, dtype=torch.bool)
    valid[idx] = True
    return OVProducts(products, theta.cpu(), layer, ln, inv, valid, att, proj, top_ids.cpu(), top_logits.cpu(), tokens, task_name)


@dataclass(frozen=True, eq=False, repr=False)
class OVReconstruction(ConditionAccuracy):
    """Accuracy when the per-head OV products replace the injection of θ (paper: LTV 83, OV rec. 52).

    The conditions (:data:`RECONSTRUCTION_CONDITIONS`), each readable as an attribute (``rec.variant_a``):
    ``ltv`` θ injected at its site; ``zero_shot``; ``variant_a`` final residual at N + Σ_{l'>=l, h}
    products; ``variant_b`` Σ products + θ; ``*_weighted`` products weighted by each head's attention
    from N to N; ``mlp_control`` / ``attn_path`` the final residual + the actual θ-induced change of
    every MLP / attention output (layers >= l) at N; ``theta_only`` the final residual + θ.
    """

    layer: int = 0
    ln: str = "actual"
    cos_a_vs_attn: float = float("nan")  # cosine between mean r (variant A, weighted) and the mean actual attention-path change

    ltv = property(lambda self: self.accuracy("ltv"))
    zero_shot = property(lambda self: self.accuracy("zero_shot"))
    variant_a = property(lambda self: self.accuracy("variant_a"))
    variant_b = property(lambda self: self.accuracy("variant_b"))
    variant_a_weighted = property(lambda self: self.accuracy("variant_a_weighted"))
    variant_b_weighted = property(lambda self: self.accuracy("variant_b_weighted"))
    mlp_control = property(lambda self: self.accuracy("mlp_control"))
    attn_path = property(lambda self: self.accuracy("attn_path"))
    theta_only = property(lambda self: self.accuracy("theta_only"))

    def plot(self):
        fig = super().plot()
        fig.update_layout(title=f"OV reconstruction of θ@L{self.layer} ({self.task}, LN {self.ln}, n={self.n}, 95% intervals)")
        return fig

    def __repr__(self) -> str:
        return (f"OVReconstruction({self.task!r} θ@L{self.layer}: ltv={self.ltv:.2f} zero_shot={self.zero_shot:.2f} "
                f"A={self.variant_a:.2f} B={self.variant_b:.2f} A_w={self.variant_a_weighted:.2f} B_w={self.variant_b_weighted:.2f} "
                f"mlp={self.mlp_control:.2f})")


RECONSTRUCTION_CONDITIONS = ("ltv", "zero_shot", "variant_a", "variant_b", "variant_a_weighted", "variant_b_weighted",
                             "mlp_control", "attn_path", "theta_only")


def reconstruction_inputs(fn: str, what: str, model, vector: TaskVector, task, prompts, ln: str, n: int | None,
                          batch_size: int, seed: int = 0):
    """The checked inputs of a reconstruction (``fn`` names the function, ``what`` the analysis in errors):
    the injection layer, θ and the prompts; the vector must have one site, at the last position."""
    check_choice(fn, "ln", ln, ("folded", "actual"))
    check_vector(model, vector)
    layer, theta = single_layer_theta(vector)
    if len(vector.sites) != 1 or vector.sites[0].position != -1:
        raise ConfigError(f"{what} needs a vector with one site at the last position (Site(layer, -1))")
    ps = resolve_prompts(task, prompts, n=n, seed=seed, batch_size=batch_size, vector=vector)
    vector.check_task(ps.task)
    return layer, theta, ps


@dataclass(frozen=True, eq=False)
class FinalResidualTerms:
    """What the final-residual reconstruction adds, per prompt at the last token N (all [batch, d_model])."""

    batch: object  # the tokenized PromptBatch
    r0: Float[torch.Tensor, "batch d_model"]  # final residual of the zero-shot run
    r1: Float[torch.Tensor, "batch d_model"]  # final residual of the run with θ
    rec: Float[torch.Tensor, "batch d_model"]  # Σ_{l'>=l, h} products (variant A), each layer at the prompt's ln1 scale
    rec_w: Float[torch.Tensor, "batch d_model"]  # the same weighted by each head's attention from N to θ's position
    d_attn: Float[torch.Tensor, "batch d_model"]  # actual θ-induced change of the attention outputs (layers >= l)
    d_mlp: Float[torch.Tensor, "batch d_model"]  # actual θ-induced change of the MLP outputs (layers >= l)
    model: object = None

    def correct(self, resid: Float[torch.Tensor, "batch d_model"]) -> int:
        """Queries whose full-vocabulary argmax of ``resid`` read as the final state is the gold token."""
        with torch.no_grad():
            pred = final_logits(self.model, resid).argmax(-1)
        return int((pred == self.batch.answer_ids.to(pred.device)).sum())


def final_residual_terms(model, vector: TaskVector, ps, ln: str, batch_size: int = 64) -> FinalResidualTerms:
    """The states and sums :func:`ov_reconstruction` adds up, for checked inputs (:func:`reconstruction_inputs`)."""
    layer, theta = single_layer_theta(vector)
    layers = list(range(layer, model.cfg.n_layers))
    raw = unscaled_products(model, theta, layers)  # [layer', head, d_model]
    outs = [f"blocks.{lay}.hook_attn_out" for lay in layers] + [f"blocks.{lay}.hook_mlp_out" for lay in layers]
    batch, inv, att = _steered_stats(model, vector, ps, layers, batch_size)  # [b, layer'], [b, layer', head]
    if ln == "folded":
        inv = torch.ones_like(inv)
    r0, a0 = engine.forward(model, batch, batch_size=batch_size, names=outs)
    r1, a1 = engine.forward(model, batch, [steer_edit(vector)], batch_size=batch_size, names=outs)
    raw = raw.to(r0.device)
    rec = torch.einsum("bl,lhe->be", inv.to(r0.device), raw)  # [b, d_model]
    rec_w = torch.einsum("bl,blh,lhe->be", inv.to(r0.device), att.to(r0.device), raw)  # [b, d_model]
    d_attn = sum(a1[o] - a0[o] for o in outs if "attn_out" in o)  # [b, d_model]
    d_mlp = sum(a1[o] - a0[o] for o in outs if "mlp_out" in o)
    return FinalResidualTerms(batch, r0, r1, rec, rec_w, d_attn, d_mlp, model)


@no_type_check  # checks its arguments
def ov_reconstruction(model, vector: TaskVector, task=None, *, prompts=None, n: int | None = None, seed: int = 0,
                      ln: LNMode = "actual", batch_size: int = 64) -> OVReconstruction:
    """Accuracy of the OV reconstruction of θ (variants A and B, plain and attention-weighted) and its controls."""
    layer, theta, ps = reconstruction_inputs("ov_reconstruction", "OV reconstruction", model, vector, task, prompts, ln, n,
                                             batch_size, seed)
    st = final_residual_terms(model, vector, ps, ln, batch_size)
    batch, r0, r1, rec, rec_w, d_attn, d_mlp = st.batch, st.r0, st.r1, st.rec, st.rec_w, st.d_attn, st.d_mlp
    th = theta.to(r0.device)
    correct = st.correct

    cos = float(torch.nn.functional.cosine_similarity(rec_w.mean(0), d_attn.mean(0), dim=0))
    counts = [correct(r1), correct(r0), correct(r0 + rec), correct(r0 + rec + th), correct(r0 + rec_w), correct(r0 + rec_w + th),
              correct(r0 + d_mlp), correct(r0 + d_attn), correct(r0 + th)]  # in RECONSTRUCTION_CONDITIONS' order
    return OVReconstruction(ps.task.name, RECONSTRUCTION_CONDITIONS, torch.tensor(counts), len(batch), layer=layer, ln=ln,
                            cos_a_vs_attn=cos)


# --- the registry's declaration (tvlens analyze ov, the report's section, the circuit's columns) ---

from dataclasses import field as _field  # noqa: E402

from tvlens.analysis._registry import Analysis, Options, register  # noqa: E402


@dataclass(frozen=True)
class OVOptions(Options):
    """Options of ``tvlens analyze ov``."""

    products_ln: LNMode = _field(default="folded", metadata={"help": "LN treatment of the per-head products (default folded)"})
    reconstruction_ln: LNMode = _field(default="actual", metadata={"help": "LN treatment of the reconstruction (default actual)"})


def _run_ov(ctx, opts: OVOptions):
    return [ov_products(ctx.model, ctx.vector, prompts=ctx.prompts, ln=opts.products_ln),
            ov_reconstruction(ctx.model, ctx.vector, prompts=ctx.prompts, ln=opts.reconstruction_ln)]


def _ov_columns(results) -> dict:
    prod = results[0]
    valid = prod.valid[:, None].expand_as(prod.ov_norm)  # [layer, head]
    nan = torch.full_like(prod.ov_norm, float("nan"))
    return {"ov_norm": torch.where(valid, prod.ov_norm, nan), "ov_alignment": torch.where(valid, prod.cos_theta, nan),
            "label_proj": prod.label_proj}


register(Analysis("ov", OVOptions, _run_ov, OVProducts, "Per-head OV products and OV reconstruction", "Heads",
                  "W_O W_V θ for every later head, and the accuracy of adding their sum instead of injecting θ.",
                  order=10, head_columns=_ov_columns))
