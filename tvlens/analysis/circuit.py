"""Circuit queries: every head analysis of one vector on one task behind one object, each computed once.

Context:
    ``c = tv.circuit(model, vector, task)`` holds the model, the vector and the zero-shot query
    prompts; each analysis (saliency, exact ablation effects, OV products, OV reconstruction,
    attention sinks, key-head ablations) runs the first time a query needs it and is kept on the
    object, so a notebook cell never recomputes what an earlier cell already has.
    :meth:`Circuit.heads` joins them into one frame (a row per head); :meth:`Circuit.head` is one
    head in detail (its attention pattern on an example prompt, the tokens its OV output decodes
    to); :meth:`Circuit.dashboard` renders the page of :mod:`tvlens.viz.heads`.

Intuition:
    Nothing here is a new computation on the model except the example prompt's attention patterns
    and the OV products' direct logits (one matmul for every head); the rest are the results of
    :mod:`~tvlens.analysis.saliency`, :mod:`~tvlens.analysis.ablation`, :mod:`~tvlens.analysis.ov`
    and :mod:`~tvlens.analysis.sinks`, asked for with the same prompts and seed.

>>> import tvlens as tv
>>> model = tv.load_model("toy")
>>> task = tv.tasks.get("toy/antonym")
>>> vector = tv.train_ltv(model, task, layers=[2], progress=False).vector
>>> c = tv.circuit(model, vector, task, fraction=0.25)
>>> len(c.key_heads()), c.spearman() > 0.8      # 3 of the 12 heads from layer 2 on; saliency ranks like ablation
(3, True)
>>> c.head(*c.key_heads()[0]).row["key"]
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Float

from tvlens._memo import Memo
from tvlens._result import Result
from tvlens._validate import check_choice, check_float, check_int, no_type_check
from tvlens.analysis._inputs import check_heads, check_vector, resolve_prompts, steer_edit
from tvlens.analysis._registry import view
from tvlens.errors import ConfigError
from tvlens.prompts import PromptSet
from tvlens.vector import TaskVector

AblationKind = Literal["zero", "mean", "path"]


@dataclass(frozen=True, eq=False)
class DashboardData:
    """What the dashboard shows. Frames and tensors only; no model."""

    title: str
    heads: Any  # pandas DataFrame, one row per head: layer, head, saliency (+ rank, sink_mass, ov_norm, key, ...)
    tokens: tuple[str, ...]  # the example prompt's tokens (as shown on the pattern's axes)
    patterns: Float[torch.Tensor, "layer head pos pos"]  # attention pattern of every head on the example prompt
    decoded: tuple[tuple[str, ...], ...]  # per head (index layer * n_heads + head): its OV output's top tokens
    decoded_values: Float[torch.Tensor, "layer head k"]  # the logits (direct-logit projections) of those tokens
    ablation: Any = None  # DataFrame: kind, none, key, random_mean, random_std (accuracies), or None
    sinks: Any = None  # DataFrame: offset (positions before the last, 0 = last), key, random (mean attention), or None
    injection_layer: int | None = None  # the vector's layer (marked on the plots)
    notes: tuple[str, ...] = field(default=())  # summary lines shown under the title

    def __post_init__(self) -> None:
        missing = [c for c in ("layer", "head", "saliency") if c not in self.heads.columns]
        if missing:
            raise ConfigError(f"the heads frame lacks columns {missing}; build it with Circuit.heads()")
        n_layers, n_heads = int(self.heads["layer"].max()) + 1, int(self.heads["head"].max()) + 1
        if tuple(self.patterns.shape[:2]) != (n_layers, n_heads) or self.patterns.shape[2:] != (len(self.tokens),) * 2:
            raise ConfigError(f"patterns must be [layer, head, pos, pos] = [{n_layers}, {n_heads}, {len(self.tokens)}, "
                              f"{len(self.tokens)}] (the example's tokens), got {list(self.patterns.shape)}")
        if len(self.decoded) != n_layers * n_heads or tuple(self.decoded_values.shape[:2]) != (n_layers, n_heads):
            raise ConfigError(f"decoded tokens must be given for each of the {n_layers * n_heads} heads")

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.heads["layer"].max()) + 1, int(self.heads["head"].max()) + 1


@dataclass(frozen=True, eq=False, repr=False)
class HeadDetail(Result):
    """One head: its row of :meth:`Circuit.heads`, its attention on an example prompt, its OV tokens."""

    layer: int
    head: int
    row: dict  # the head's row of Circuit.heads() (saliency, exact_effect, ov_norm, sink_mass, key, ...)
    tokens: tuple[str, ...]  # the example prompt's tokens
    pattern: Float[torch.Tensor, "pos pos"]  # attention (query, key) on the example prompt, vector added
    decoded: tuple[str, ...]  # top tokens of the head's OV product (empty before the vector's layer)
    decoded_logits: Float[torch.Tensor, " k"]  # their direct logits

    def to_frame(self):
        """Attention from the example's last position to each token."""
        import pandas as pd

        return pd.DataFrame({"position": range(len(self.tokens)), "token": self.tokens,
                             "attention_from_last": self.pattern[-1].tolist()})

    def plot(self):
        import plotly.express as px

        labels = [f"{i}: {t!r}" for i, t in enumerate(self.tokens)]
        return px.imshow(self.pattern.numpy(), x=labels, y=labels, zmin=0, zmax=1, color_continuous_scale="Blues",
                         labels={"x": "key", "y": "query", "color": "attention"},
                         title=f"L{self.layer}H{self.head}: attention on the example prompt (vector added)")

    def __repr__(self) -> str:
        sal = self.row.get("saliency")
        top = ", ".join(repr(t) for t in self.decoded[:5])
        return (f"HeadDetail(L{self.layer}H{self.head}" + (f", saliency={sal:.4g}" if sal is not None else "")
                + f", key={bool(self.row.get('key'))}, OV tokens [{top}])")


class Circuit(Memo):
    """The head analyses of ``vector`` on ``prompts`` (zero-shot test queries of ``task`` by default).

    Every method caches its result on the object. ``fraction`` is the share of heads called key
    heads (the paper's top 10%); ``seed`` seeds the random head sets of the ablations and sinks.
    """

    @no_type_check  # checks its arguments
    def __init__(self, model, vector: TaskVector, task=None, *, prompts: PromptSet | None = None, n: int | None = None,
                 fraction: float = 0.1, n_random: int = 5, seed: int = 0, example: int = 0):
        check_vector(model, vector)
        check_float("circuit", "fraction", fraction, min=0, max=1, min_exclusive=True)
        check_int("circuit", "n_random", n_random, min=1)
        self.model, self.vector = model, vector
        self.prompts = resolve_prompts(task, prompts, n=n, seed=seed, vector=vector)
        check_int("circuit", "example", example, min=0, max=len(self.prompts) - 1)
        self.task = self.prompts.task
        vector.check_task(self.task)
        self.fraction, self.n_random, self.seed, self.example = fraction, n_random, seed, example
        self.layer = min(s.layer for s in vector.sites)
        self.cache: dict = {}

    # --- the analyses, each once -------------------------------------------------------------

    def saliency(self):
        """One-pass gradient saliency (:func:`tvlens.analysis.saliency.head_saliency`, mode="grad")."""
        from tvlens.analysis.saliency import head_saliency

        return self.once("saliency", lambda: head_saliency(self.model, self.vector, prompts=self.prompts, mode="grad"))

    def exact(self):
        """Exact per-head ablation effects (:func:`~tvlens.analysis.saliency.head_saliency`, mode="exact")."""
        from tvlens.analysis.saliency import head_saliency

        return self.once("exact", lambda: head_saliency(self.model, self.vector, prompts=self.prompts, mode="exact"))

    def ov(self):
        """Per-head OV products of the vector (:func:`tvlens.analysis.ov.ov_products`)."""
        from tvlens.analysis.ov import ov_products

        return self.once("ov", lambda: ov_products(self.model, self.vector, prompts=self.prompts))

    def reconstruction(self):
        """Accuracy with the OV products added instead of the vector (:func:`~tvlens.analysis.ov.ov_reconstruction`)."""
        from tvlens.analysis.ov import ov_reconstruction

        return self.once("reconstruction", lambda: ov_reconstruction(self.model, self.vector, prompts=self.prompts))

    def sinks(self):
        """Attention from the last position, key vs random heads (:func:`tvlens.analysis.sinks.attention_sinks`)."""
        from tvlens.analysis.sinks import attention_sinks

        return self.once("sinks", lambda: attention_sinks(self.model, self.vector, key_heads=self.key_heads(), prompts=self.prompts,
                                                           n_random=self.n_random, seed=self.seed))

    @no_type_check  # checks its arguments, with messages that name the fix
    def ablate(self, kind: AblationKind = "zero", *, heads=None, n_random: int | None = None, seed: int | None = None):
        """Accuracy with ``heads`` (the key heads by default) ablated vs random head sets of the same size."""
        from tvlens.analysis.ablation import head_ablation

        check_choice("circuit.ablate", "kind", kind, ("zero", "mean", "path"))
        heads = tuple(self.key_heads()) if heads is None else check_heads(self.model, heads)
        n_random = self.n_random if n_random is None else n_random
        seed = self.seed if seed is None else seed
        return self.once(("ablate", kind, heads, n_random, seed), lambda: head_ablation(
            self.model, self.vector, heads=list(heads), prompts=self.prompts, kind=kind, n_random=n_random, seed=seed))

    # --- every registered analysis, on this circuit's vector and prompts ------------------------

    @property
    def context(self):
        """The registry's :class:`~tvlens.analysis._registry.Context` of this circuit (caches shared with it)."""
        from tvlens.analysis._registry import Context

        return Context(self.model, getattr(self.model.cfg, "model_name", ""), self.task, self.layer, seed=self.seed,
                       given_vector=self.vector, given_prompts=self.prompts, fraction=self.fraction, cache=self.cache)

    @staticmethod
    def analyses() -> list[str]:
        """The names of every registered analysis (:meth:`analysis` runs one)."""
        from tvlens.analysis._registry import analyses

        return [a.name for a in analyses()]

    def analysis(self, name: str, **options):
        """Registered analysis ``name`` (options by keyword, else its defaults) on this circuit's vector,
        prompts, seed and key heads; its result(s), computed once."""
        from tvlens.analysis._registry import get

        spec = get(name)
        opts = spec.options(**options)
        out = self.once(("analysis", name, opts), lambda: spec.run(self.context, opts))
        return out

    # --- queries -----------------------------------------------------------------------------

    def key_heads(self, fraction: float | None = None) -> list[tuple[int, int]]:
        """The top ``fraction`` of heads by saliency, most salient first."""
        return list(self.saliency().top(self.fraction if fraction is None else fraction))

    def spearman(self) -> float:
        """Spearman correlation between one-pass saliency and the exact ablation effects (paper: validated)."""
        from tvlens.analysis.saliency import spearman

        return self.once("spearman", lambda: float(spearman(self.saliency().scores, self.exact().scores)))

    def heads(self, *, exact: bool = True, sinks: bool = True):
        """One row per head of the model: layer, head, saliency, rank, exact_effect, ov_norm, ov_alignment
        (cosine of the OV product to θ), label_proj, sink_mass (attention from the last token to the
        first), final_mass (to θ's positions), key.

        Heads before the vector's layer do not read it: their saliency, rank, exact effect and OV
        columns are NaN. ``exact=False`` / ``sinks=False`` leave those columns out (not computed)."""
        key = ("heads", exact, sinks)
        return self.once(key, lambda: self._heads_frame(exact, sinks)).copy()

    def _heads_frame(self, exact: bool, sinks: bool):
        import pandas as pd

        cfg = self.model.cfg
        sal, ov = self.saliency(), self.ov()
        nan = torch.full((cfg.n_layers, cfg.n_heads), float("nan"))
        rank = nan.clone()  # heads before the vector's layer are not scored (nan)
        order = torch.tensor(sal.ranked()).reshape(-1, 2)  # [scored head, (layer, head)], most salient first
        rank[order[:, 0], order[:, 1]] = torch.arange(1, len(order) + 1, dtype=rank.dtype)
        valid = ov.valid[:, None].expand(cfg.n_layers, cfg.n_heads)  # [layer, head]: the heads that read θ
        cols = {"saliency": sal.scores, "rank": rank,
                "exact_effect": self.exact().scores if exact else None,
                "ov_norm": torch.where(valid, ov.ov_norm, nan), "ov_alignment": torch.where(valid, ov.cos_theta, nan),
                "label_proj": ov.label_proj}
        if sinks:
            s = self.sinks()
            cols.update(sink_mass=s.sink_mass, final_mass=s.final_mass)
        frame = pd.DataFrame({"layer": [a for a in range(cfg.n_layers) for _ in range(cfg.n_heads)],
                              "head": [b for _ in range(cfg.n_layers) for b in range(cfg.n_heads)],
                              **{k: v.float().flatten().tolist() for k, v in cols.items() if v is not None}})
        for spec in _extra_per_head():  # per-head analyses registered beyond the ones above
            for col, t in spec.head_columns(self.analysis(spec.name)).items():
                frame[col] = t.float().flatten().tolist()  # [layer, head] -> one value per row
        key = set(self.key_heads())
        frame["key"] = [(int(a), int(b)) in key for a, b in zip(frame["layer"], frame["head"])]
        return frame

    def query(self, *, layer: int | None = None, min_saliency: float | None = None, key: bool | None = None):
        """Rows of :meth:`heads` filtered by layer, a saliency threshold and/or the key flag, most salient first."""
        df = self.heads()
        if layer is not None:
            df = df[df["layer"] == layer]
        if min_saliency is not None:
            df = df[df["saliency"] >= min_saliency]
        if key is not None:
            df = df[df["key"] == key]
        return df.sort_values("saliency", ascending=False).reset_index(drop=True)

    def example_patterns(self) -> tuple[tuple[str, ...], Float[torch.Tensor, "layer head pos pos"]]:
        """The example prompt's tokens and every head's attention pattern on it, with the vector added."""
        return self.once("patterns", self._patterns)

    def _patterns(self):
        from tvlens import _engine as engine

        batch = self.prompts.subset([self.example]).tokenize(self.model)
        names = tuple(f"blocks.{i}.attn.hook_pattern" for i in range(self.model.cfg.n_layers))
        _, acts = engine.forward(self.model, batch, [steer_edit(self.vector)], whole=names)
        pats = torch.stack([acts[n][0] for n in names]).cpu()  # [layer, head, pos, pos]
        tokens = tuple(self.model.tokenizer.decode([t]) for t in batch.tokens[0].tolist())
        return tokens, pats

    def decoded(self) -> tuple[tuple[tuple[str, ...], ...], Float[torch.Tensor, "layer head k"]]:
        """Every head's OV product's top tokens and their logits (:class:`~tvlens.analysis.ov.OVProducts`'s
        ``top_tokens``, ``top_logits``), one tuple per head (index layer * n_heads + head); heads before
        the vector's layer do not read it and decode to nothing."""
        ov = self.ov()
        n_layers, n_heads = ov.products.shape[:2]
        toks = tuple(tuple(ov.top_tokens[a][b]) if bool(ov.valid[a]) else () for a in range(n_layers) for b in range(n_heads))
        return toks, torch.where(ov.valid[:, None, None], ov.top_logits, torch.zeros(()))  # uncomputed layers: 0

    def head(self, layer: int, head: int) -> HeadDetail:
        """One head in detail (its row, attention pattern on the example prompt, OV tokens)."""
        (layer, head), = check_heads(self.model, [(layer, head)], "head")
        frame = self.heads()
        row = frame[(frame["layer"] == layer) & (frame["head"] == head)].iloc[0].to_dict()
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        tokens, pats = self.example_patterns()
        toks, vals = self.decoded()
        i = layer * self.model.cfg.n_heads + head
        return HeadDetail(layer, head, row, tokens, pats[layer, head], toks[i], vals[layer, head, : len(toks[i])])

    # --- the document of `tvlens analyze heads` -----------------------------------------------

    def key_layer_histogram(self) -> list[int]:
        """Key heads per layer, one count per layer of the model."""
        layers = [layer for layer, _ in self.key_heads()]
        return [layers.count(i) for i in range(self.model.cfg.n_layers)]

    def other_sinks(self) -> dict[str, float]:
        """Mean attention from the last token to the first token / to θ's position over the heads that read θ and are not key heads."""
        frame = self.heads()
        other = frame[(frame["layer"] >= self.layer) & ~frame["key"]]
        return {"other_sink": float(other["sink_mass"].mean()), "other_final": float(other["final_mass"].mean())}

    def payload(self, kinds: tuple[str, ...] = ("zero", "mean", "path")) -> dict:
        """Every head analysis as plain data: the heads that read θ, Spearman, ablations (``kinds``; the
        first is ``ablation``), OV reconstruction, sinks, key heads per layer."""
        kinds = tuple(dict.fromkeys(kinds))
        for kind in kinds:
            check_choice("circuit.payload", "kinds", kind, ("zero", "mean", "path"))
        frame = self.heads()
        abl = {k: self.ablate(k).row() for k in kinds}
        rec = self.reconstruction()
        cols = ("saliency", "exact_effect", "ov_norm", "ov_alignment", "label_proj", "sink_mass", "final_mass")
        return {
            "task": self.task.name, "n_queries": len(self.prompts), "key_fraction": self.fraction,
            "key_heads": [list(h) for h in self.key_heads()],
            "heads": [{"layer": int(r["layer"]), "head": int(r["head"]), **{c: float(r[c]) for c in cols[:1]}, "rank": int(r["rank"]),
                       **{c: float(r[c]) for c in cols[1:]}, "key": bool(r["key"])}
                      for r in frame.to_dict(orient="records") if r["layer"] >= self.layer],  # the heads that read θ
            "spearman_saliency_vs_exact": self.spearman(),
            "ablation": abl[kinds[0]] if kinds else None, "ablations": abl,
            "ov_reconstruction": {**rec.accuracies, "cos_a_vs_attn": rec.cos_a_vs_attn},
            "sinks": {**self.sinks().group_mass(), **self.other_sinks()},  # key heads vs the random sets' heads vs the rest
            "key_layer_histogram": self.key_layer_histogram(),
            "injection_layer": self.layer,
        }

    @staticmethod
    def text_of(p: dict, model: str = "", vector: dict | None = None) -> str:
        """The printed summary of :meth:`payload` (``vector``: sites and norm, for the first line)."""
        top = sorted(p["heads"], key=lambda r: r["rank"])[:10]
        v = vector or {}
        lines = [f"{p['task']} on {model}: vector at {', '.join(v.get('sites', []))} (norm {v.get('norm', float('nan')):.3g}), "
                 f"{p['n_queries']} zero-shot test queries",
                 f"{'head':>8} {'saliency':>10} {'exact':>9} {'OV norm':>9} {'sink':>6} {'key':>4}"]
        lines += [f"{'L%dH%d' % (r['layer'], r['head']):>8} {r['saliency']:>10.4g} {r['exact_effect']:>9.4f} {r['ov_norm']:>9.3g} "
                  f"{r['sink_mass']:>6.3f} {'*' if r['key'] else '':>4}" for r in top]
        lines.append(f"Spearman(saliency, exact ablation effect) = {p['spearman_saliency_vs_exact']:.3f}")
        for kind, a in p["ablations"].items():
            lines.append(f"ablation ({kind}): none {a['none']:.3f}, key heads {a['key']:.3f}, "
                         f"random heads {a['random_mean']:.3f} ± {a['random_std']:.3f}")
        r = p["ov_reconstruction"]
        lines.append(f"OV reconstruction: LTV {r['ltv']:.3f}, zero-shot {r['zero_shot']:.3f}, "
                     f"A (sum of products) {r['variant_a']:.3f}, B (sum + vector) {r['variant_b']:.3f}")
        s = p["sinks"]
        lines.append(f"attention from the last token to the first token (sink) / to the vector's position: key heads "
                     f"{s['key_sink']:.3f} / {s['key_final']:.3f}, random heads {s['random_sink']:.3f} / {s['random_final']:.3f}, "
                     f"all other heads from layer {p['injection_layer']} on {s['other_sink']:.3f} / {s['other_final']:.3f}")
        lines.append(f"key heads per layer (vector at layer {p['injection_layer']}): {p['key_layer_histogram']}")
        return "\n".join(lines)

    # --- pages -------------------------------------------------------------------------------

    def dashboard_data(self, *, kinds: tuple[str, ...] = ("zero", "mean", "path")):
        """The frames and tensors :mod:`tvlens.viz.heads` draws (a :class:`DashboardData`)."""
        import pandas as pd

        for kind in kinds:
            check_choice("circuit.dashboard", "kinds", kind, ("zero", "mean", "path"))
        ablation = pd.DataFrame([self.ablate(k).row() for k in kinds]) if kinds else None
        s = self.sinks()
        sinks = pd.DataFrame({"offset": range(s.profile.shape[-1]), "key": s.key_profile.tolist(), "random": s.random_profile.tolist()})
        tokens, pats = self.example_patterns()
        toks, vals = self.decoded()
        rec = self.reconstruction()
        notes = (f"task {self.task.name}, {len(self.prompts)} zero-shot queries; vector {self.vector.method} at "
                 f"{', '.join(map(str, self.vector.sites))} (norm {float(self.vector.values.norm()):.3g})",
                 f"key heads: top {self.fraction:.0%} by saliency ({len(self.key_heads())} of the {int(self.saliency().scores.isfinite().sum())} heads from layer {self.layer} on); "
                 f"Spearman(saliency, exact ablation effect) = {self.spearman():.3f}",
                 f"OV reconstruction: LTV {rec.ltv:.3f}, zero-shot {rec.zero_shot:.3f}, "
                 f"variant A (sum of products) {rec.variant_a:.3f}, variant B (sum + vector) {rec.variant_b:.3f}")
        return DashboardData(f"Which heads carry the {self.task.name} vector", self.heads(), tokens, pats, toks, vals,
                             ablation, sinks, self.layer, notes)

    def dashboard(self, path: str | os.PathLike | None = None, *, kinds: tuple[str, ...] = ("zero", "mean", "path"),
                  overwrite: bool = True):
        """The head-saliency dashboard: written to ``path`` when given; shown inline in Jupyter either way.

        The page is a view: :mod:`tvlens.viz.heads` renders it and registers itself as the view
        ``"dashboard"`` (:func:`tvlens.analysis._registry.view` finds it; this layer never imports viz).
        """
        from tvlens._validate import check_output_path

        if path is not None:
            check_output_path(path, "dashboard path")  # before the analyses run
        return view("dashboard")(self.dashboard_data(kinds=kinds), path, overwrite=overwrite)

    def __repr__(self) -> str:
        done = sorted({k if isinstance(k, str) else k[0] for k in self.cache})
        return (f"Circuit({self.task.name!r}, vector at {', '.join(map(str, self.vector.sites))}, {len(self.prompts)} queries, "
                f"key fraction {self.fraction}; computed: {', '.join(done) or 'nothing yet'})")

    def _repr_html_(self) -> str:
        import html

        head = f"<pre>{html.escape(repr(self))}</pre>"
        if ("heads", True, True) not in self.cache:
            return head + "<p>call .heads() for the table, .dashboard() for the page</p>"
        return head + self.query().head(10).to_html(index=False, float_format=lambda x: f"{x:.4g}")


BUILT_IN_COLUMNS = ("ov", "saliency", "sinks")  # registered per-head analyses whose columns heads() computes itself


def _extra_per_head():
    from tvlens.analysis._registry import analyses

    return [a for a in analyses() if a.head_columns is not None and a.name not in BUILT_IN_COLUMNS]


@no_type_check  # Circuit checks the arguments
def circuit(model, vector: TaskVector, task=None, *, prompts: PromptSet | None = None, n: int | None = None,
            fraction: float = 0.1, n_random: int = 5, seed: int = 0, example: int = 0) -> Circuit:
    """A :class:`Circuit`: the head analyses of ``vector`` on ``task`` (or ``prompts``), computed lazily, cached."""
    if task is None and prompts is None:
        raise ConfigError("tv.circuit needs a task (or its name) or prompts= (a tv.PromptSet of zero-shot queries)")
    return Circuit(model, vector, task, prompts=prompts, n=n, fraction=fraction, n_random=n_random, seed=seed, example=example)
