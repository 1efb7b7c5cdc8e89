"""Logit lens, task alignment and decoded tokens: where along the depth a state reads as the answer.

Context:
    The *logit lens* decodes the last-position residual stream after every block as if it were
    the final one: ``W_U ln_final(h^k) + b_U``, with ``ln_final``'s statistics recomputed from
    ``h^k`` (as TransformerLens's ``ActivationCache.accumulated_resid(apply_ln=True)`` does).
    Layer ``k`` in ``0..n_layers-1`` is the input of block ``k`` (``blocks.{k}.hook_resid_pre``);
    layer ``n_layers`` is the final state (``blocks.{L-1}.hook_resid_post``), so the lens at
    layer ``n_layers`` is the model's own logits.

    *Task alignment* of a state ``h`` (``definition="span"``, the default) is
    ``||P_Y c(h)|| / ||c(h)||``: ``P_Y`` projects onto the span of the *readout directions* of the
    task's answer tokens ``Y`` (the columns ``W_U[:, y]`` scaled by ``ln_final``'s weight, when
    the model has one), and ``c`` removes the mean over ``d_model`` when ``ln_final`` is a
    LayerNorm (it centres its input, so that direction is never read). It lies in [0, 1] and
    does not depend on ``h``'s norm. Alternatives: ``"raw_span"`` (plain ``W_U`` columns, no
    LayerNorm handling), ``"max_cos"`` (the largest cosine between ``c(h)`` and one readout
    direction) and, for two-label tasks, ``"label_diff"`` (the authors' earlier definition: the
    cosine of ``h`` with ``W_U[:, y1] - W_U[:, y0]``, plain ``W_U``, no centring; its absolute value,
    so it lies in [0, 1] like the others; :func:`label_difference_cosine` keeps the sign).
    ``Y`` is the label words' first tokens for classification tasks and the distinct
    first tokens of the queries' gold answers for generation tasks.

>>> import tvlens as tv
>>> from tvlens.analysis import logit_lens
>>> model = tv.load_model("toy")
>>> lens = logit_lens(model, "toy/antonym", shots=(0, 8))
>>> lens.accuracy.shape == (2, model.cfg.n_layers + 1)
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int

from tvlens._result import ConditionAccuracy, Result, count_accuracy
from tvlens.errors import ConfigError
from tvlens.prompts import PromptBatch, PromptSet

Definition = Literal["span", "raw_span", "max_cos", "label_diff"]
DEFINITIONS = ("span", "raw_span", "max_cos", "label_diff")

__all__ = ["DecodedTokens", "LensResult", "answer_token_ids", "chance_alignment", "decoded_tokens", "label_difference_cosine",
           "lens_logits", "lens_states", "logit_lens", "readout_directions", "task_alignment"]


# --- readout directions and alignment --------------------------------------------------------------


def _centres(model) -> bool:
    return model.cfg.normalization_type in ("LN", "LNPre")


def readout_directions(model, token_ids: Int[torch.Tensor, " label"], *, definition: str = "span"
                       ) -> Float[torch.Tensor, "d_model direction"]:
    """The residual-stream direction each token's logit reads (see the module docstring): one per label,
    or for ``"label_diff"`` the one direction ``W_U[:, y1] - W_U[:, y0]``."""
    cols = model.W_U[:, token_ids].detach().float()  # [d_model, label]
    if definition == "label_diff":
        if cols.shape[1] != 2:
            raise ConfigError(f"definition='label_diff' needs exactly two label tokens (a two-label task), got {cols.shape[1]}; "
                              "use definition='span' or 'max_cos' for more")
        return cols[:, 1:] - cols[:, :1]  # [d_model, 1]: W_U[y1] - W_U[y0]
    if definition == "raw_span":
        return cols
    ln = getattr(model, "ln_final", None)
    w = getattr(ln, "w", None)
    if w is not None:
        cols = cols * w.detach().float()[:, None]  # ln_final's weight scales each coordinate before W_U
    if _centres(model):
        cols = cols - cols.mean(0, keepdim=True)  # LayerNorm centres its input: the mean direction is unread
    return cols


def task_alignment(
    states: Float[torch.Tensor, "*batch d_model"],
    label_ids: Int[torch.Tensor, " label"] | Sequence[int],
    model,
    *,
    definition: str = "span",
) -> Float[torch.Tensor, "*batch"]:
    """Alignment of each state with the answer tokens' readout directions, in [0, 1].

    ``definition="span"``: ``||P_Y c(h)|| / ||c(h)||`` (module docstring); ``"raw_span"``: the same
    with plain ``W_U`` columns and no centring; ``"max_cos"``: max over labels of cos(c(h), u_y);
    ``"label_diff"`` (two labels): ``|cos(h, W_U[:, y1] - W_U[:, y0])|``.
    """
    if definition not in DEFINITIONS:
        raise ConfigError(f"definition must be one of {DEFINITIONS}, got {definition!r}")
    ids = torch.as_tensor(label_ids, dtype=torch.long)
    if ids.ndim != 1 or not len(ids):
        raise ConfigError("label_ids must be a non-empty list of token ids, e.g. answer_token_ids(model, prompts)")
    if states.shape[-1] != model.cfg.d_model:
        raise ConfigError(f"states must end in d_model={model.cfg.d_model}, got shape {tuple(states.shape)}")
    u = readout_directions(model, ids, definition=definition)  # [d_model, label] ([d_model, 1] for label_diff)
    h = states.detach().float()
    if definition == "label_diff":
        return label_difference_cosine(h, ids, model).abs()
    if definition != "raw_span" and _centres(model):
        h = h - h.mean(-1, keepdim=True)
    norm = h.norm(dim=-1).clamp_min(1e-12)
    if definition == "max_cos":
        cos = (h @ u) / (norm[..., None] * u.norm(dim=0).clamp_min(1e-12))  # [*batch, label]
        return cos.max(-1).values
    q, r = torch.linalg.qr(u)  # orthonormal basis of span(u): [d_model, label]
    keep = r.diagonal().abs() > 1e-6 * r.diagonal().abs().max()  # drop directions of a rank-deficient span
    proj = h @ q[:, keep]  # [*batch, rank] coordinates in the span
    return proj.norm(dim=-1) / norm


def label_difference_cosine(
    states: Float[torch.Tensor, "*batch d_model"],
    label_ids: Int[torch.Tensor, " label"] | Sequence[int],
    model,
) -> Float[torch.Tensor, "*batch"]:
    """Signed ``cos(h, W_U[:, y1] - W_U[:, y0])`` for two label tokens ``(y0, y1)`` (plain ``W_U``, no centring):
    positive where ``h`` raises label 1's logit over label 0's."""
    ids = torch.as_tensor(label_ids, dtype=torch.long)
    if ids.ndim != 1:
        raise ConfigError("label_ids must be a list of two token ids, e.g. answer_token_ids(model, prompts)")
    if states.shape[-1] != model.cfg.d_model:
        raise ConfigError(f"states must end in d_model={model.cfg.d_model}, got shape {tuple(states.shape)}")
    d = readout_directions(model, ids, definition="label_diff")[:, 0]  # [d_model]
    h = states.detach().float()
    return (h @ d) / (h.norm(dim=-1).clamp_min(1e-12) * d.norm().clamp_min(1e-12))


def answer_token_ids(model, prompts: PromptSet | PromptBatch) -> Int[torch.Tensor, " label"]:
    """The task's answer tokens Y: label words' first tokens (classification) or the distinct first
    tokens of the gold answers (generation)."""
    batch = prompts.tokenize(model) if isinstance(prompts, PromptSet) else prompts
    if batch.label_ids is not None:
        return batch.label_ids
    return torch.unique(batch.answer_ids)


# --- the lens ------------------------------------------------------------------------------------


def lens_states(model, batch: PromptBatch, *, intervention=None, batch_size: int = 32
                ) -> Float[torch.Tensor, "layer batch d_model"]:
    """Last-position residual stream before every block and after the last one: [n_layers + 1, batch, d_model].

    ``intervention``: a :mod:`tvlens.interventions` edit (or tuple of edits) applied during the run;
    it is installed before the cache, so a state at an injection site includes the vector.
    """
    from tvlens import _engine as engine
    from tvlens._hooks import Edit

    L = model.cfg.n_layers
    names = [f"blocks.{k}.hook_resid_pre" for k in range(L)] + [f"blocks.{L - 1}.hook_resid_post"]
    edits = () if intervention is None else (intervention,) if isinstance(intervention, Edit) else tuple(intervention)
    _, acts = engine.forward(model, batch, edits, names=names, batch_size=batch_size)  # {name: [batch, d_model]}
    return torch.stack([acts[n] for n in names])  # [layer, batch, d_model]


def lens_logits(model, states: Float[torch.Tensor, "*batch d_model"]) -> Float[torch.Tensor, "*batch d_vocab"]:
    """``W_U ln_final(h) + b_U`` with ``ln_final``'s statistics recomputed from each state."""
    from transformer_lens.utilities.activation_functions import apply_softcap

    shape = states.shape
    h = states.reshape(-1, 1, shape[-1]).to(model.W_U.dtype)  # [n, 1, d_model]: ln_final wants [batch, pos, d]
    with torch.no_grad():
        if getattr(model, "ln_final", None) is not None:
            h = model.ln_final(h)
        logits = h[:, 0] @ model.W_U + model.b_U  # [n, d_vocab]
        logits = apply_softcap(logits, model.cfg.output_logits_soft_cap)
    return logits.float().reshape(*shape[:-1], -1)


@dataclass(frozen=True, eq=False, repr=False)
class LensResult(Result):
    """Logit-lens accuracy and task alignment per condition and layer (the paper's Figure 7A).

    The accuracies are held as counts of the ``n`` queries per condition and layer; each layer's
    accuracy by condition is a :class:`~tvlens._result.ConditionAccuracy` (:meth:`at_layer`: Wilson
    intervals, frame, plot). ``accuracy`` and ``label_accuracy`` read the counts as shares [condition, layer].
    """

    task: str
    conditions: tuple[str, ...]  # "zero-shot", "8-shot ICL", "θ@L1", ...
    layers: tuple[int, ...]  # 0..n_layers: input of block k; n_layers = final state
    correct: Int[torch.Tensor, "condition layer"]  # queries whose lens argmax over the full vocabulary == first gold token
    label_correct: Int[torch.Tensor, "condition layer"]  # the same with the argmax over the answer tokens Y only
    alignment: Float[torch.Tensor, "condition layer"]  # mean task alignment of the (un-normalised) states
    definition: str
    n: int  # queries per condition
    answer_ids: Int[torch.Tensor, " label"]
    chance_alignment: float | None = None  # "span" alignment of a random direction, sqrt(rank(Y) / d): the floor

    def __post_init__(self) -> None:
        object.__setattr__(self, "conditions", tuple(self.conditions))
        object.__setattr__(self, "layers", tuple(self.layers))
        shape = (len(self.conditions), len(self.layers))
        for name in ("correct", "label_correct", "alignment"):
            if tuple(getattr(self, name).shape) != shape:
                raise ConfigError(f"LensResult.{name} must have shape [condition, layer] = {list(shape)}, "
                                  f"got {list(getattr(self, name).shape)}")

    @classmethod
    def declared_dims(cls, fields: dict) -> dict[str, int]:
        c, lay = fields.get("conditions"), fields.get("layers")
        return {**({"condition": len(c)} if isinstance(c, (list, tuple)) else {}),
                **({"layer": len(lay)} if isinstance(lay, (list, tuple)) else {})}

    @property
    def accuracy(self) -> Float[torch.Tensor, "condition layer"]:
        """Lens accuracy per condition and layer (share of the ``n`` queries, float32)."""
        return count_accuracy(self.correct, self.n)

    @property
    def label_accuracy(self) -> Float[torch.Tensor, "condition layer"]:
        """Accuracy of the argmax over the answer tokens Y only, per condition and layer."""
        return count_accuracy(self.label_correct, self.n)

    def at_layer(self, layer: int, what: str = "accuracy") -> ConditionAccuracy:
        """The accuracy by condition at ``layer`` (``what``: ``"accuracy"`` or ``"label_accuracy"``), with
        Wilson intervals; ``at_layer(n_layers)`` is the model's own accuracy under each condition."""
        if what not in ("accuracy", "label_accuracy"):
            raise ConfigError(f"what must be 'accuracy' or 'label_accuracy', got {what!r}")
        if layer not in self.layers:
            raise ConfigError(f"no layer {layer!r}; the layers are {list(self.layers)}")
        counts = self.correct if what == "accuracy" else self.label_correct
        return ConditionAccuracy(self.task, self.conditions, counts[:, self.layers.index(layer)], self.n)

    def __repr__(self) -> str:
        return f"LensResult({self.task!r}, {len(self.conditions)} conditions x {len(self.layers)} layers, n={self.n})"

    def to_frame(self):
        """One row per (condition, layer): accuracy (with its 95% Wilson interval and count), label_accuracy, alignment."""
        import pandas as pd

        acc, lab = self.accuracy, self.label_accuracy
        ci = {layer: self.at_layer(layer) for layer in self.layers}
        rows = [{"condition": c, "layer": layer, "accuracy": float(acc[i, j]),
                 "ci_low": ci[layer].interval(c)[0], "ci_high": ci[layer].interval(c)[1], "correct": int(self.correct[i, j]),
                 "label_accuracy": float(lab[i, j]), "alignment": float(self.alignment[i, j])}
                for i, c in enumerate(self.conditions) for j, layer in enumerate(self.layers)]
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        """The final layer's accuracy by condition (the model's own, :meth:`ConditionAccuracy.summary`), and where
        ICL first beats zero-shot."""
        return {**self.at_layer(self.layers[-1]).summary(), "icl_beats_zero_shot_layer": self.icl_beats_zero_shot_layer}

    def wide(self, what: str = "accuracy"):
        """``what`` (accuracy, label_accuracy, alignment) as a frame: a row per layer, a column per condition."""
        return self.to_frame().pivot(index="layer", columns="condition", values=what)[list(self.conditions)]

    def payload(self) -> dict:
        """The JSON of ``tvlens analyze lens``: per condition, accuracy, label accuracy and alignment per layer."""
        per = {what: {c: getattr(self, what)[i].tolist() for i, c in enumerate(self.conditions)}
               for what in ("accuracy", "label_accuracy", "alignment")}
        at = [self.at_layer(layer) for layer in self.layers]
        return {"task": self.task, "n": self.n, "layers": list(self.layers), "conditions": list(self.conditions),
                "alignment_definition": self.definition, "chance_alignment": self.chance_alignment, **per,
                "correct": {c: self.correct[i].tolist() for i, c in enumerate(self.conditions)},
                "ci95": {c: [list(a.interval(c)) for a in at] for c in self.conditions},
                "icl_beats_zero_shot_layer": self.icl_beats_zero_shot_layer}

    def text(self, model: str = "") -> str:
        """Accuracy and task alignment per layer (a column per condition), and where ICL first beats zero-shot."""
        f2 = lambda x: f"{x:.2f}"  # noqa: E731
        on = f" ({model}, n={self.n} test queries)" if model else f" (n={self.n} test queries)"
        return "\n".join([f"logit lens on {self.task}{on}: accuracy per layer "
                          f"(layer k = input of block k; {max(self.layers)} = final state)", self.wide().to_string(float_format=f2),
                          "task alignment per layer:", self.wide("alignment").to_string(float_format=f2),
                          f"ICL first beats zero-shot at layer {self.icl_beats_zero_shot_layer}"])

    def curve(self, condition: str, what: str = "accuracy") -> Float[torch.Tensor, " layer"]:
        if condition not in self.conditions:
            raise ConfigError(f"no condition {condition!r}; the conditions are {list(self.conditions)}")
        return getattr(self, what)[self.conditions.index(condition)]

    @property
    def icl_beats_zero_shot_layer(self) -> int | None:
        """First layer where the ICL condition's lens accuracy exceeds zero-shot's (None: never, or no ICL)."""
        icl = [c for c in self.conditions if c.endswith("ICL")]
        if "zero-shot" not in self.conditions or not icl:
            return None
        better = (self.curve(icl[-1]) > self.curve("zero-shot")).nonzero()
        return int(self.layers[int(better[0])]) if len(better) else None

    def plot(self):
        """Lens accuracy (left) and task alignment (right) per layer, one line per condition."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("logit-lens accuracy", f"task alignment ({self.definition})"))
        palette = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3"]
        for i, c in enumerate(self.conditions):
            color = palette[i % len(palette)]
            for col, what in ((1, self.accuracy), (2, self.alignment)):
                fig.add_trace(go.Scatter(x=list(self.layers), y=what[i].tolist(), mode="lines+markers", name=c,
                                         legendgroup=c, showlegend=col == 1, line={"color": color}), row=1, col=col)
        if self.chance_alignment is not None:
            fig.add_hline(y=self.chance_alignment, line_dash="dot", line_color="gray", row=1, col=2,
                          annotation_text="random direction", annotation_position="bottom right")
        fig.update_xaxes(title_text="layer (input of block; last = final state)")
        fig.update_layout(title=f"Logit lens: {self.task} (n={self.n})", height=420)
        return fig


def _condition_name(v) -> str:
    return "θ@" + ",".join(str(s) for s in v.sites)


def logit_lens(
    model,
    task,
    *,
    vectors: Sequence | Mapping = (),
    shots: Sequence[int] = (0, 8),
    prompts: PromptSet | None = None,
    n: int | None = 200,
    seed: int = 0,
    definition: str = "span",
    batch_size: int = 32,
) -> LensResult:
    """Logit lens over every layer for zero-shot and k-shot ICL prompts and for each vector injected
    into the zero-shot prompts (pass early and late vectors, e.g. at L/4 and 3L/4, for Figure 7A).

    ``vectors``: TaskVectors (named by their sites) or ``{name: TaskVector}``; ``n`` test queries
    (None: all). ``prompts`` (zero-shot test queries) replaces ``task``'s own; then only k=0 runs.
    """
    from tvlens._hooks import AddAt
    from tvlens._validate import check_int
    from tvlens.analysis._inputs import split_seed
    from tvlens.prompts import make_prompts, make_splits
    from tvlens.tasks import get as get_task

    check_int("logit_lens", "batch_size", batch_size, min=1)
    if definition not in DEFINITIONS:
        raise ConfigError(f"definition must be one of {DEFINITIONS}, got {definition!r}")
    named = dict(vectors) if isinstance(vectors, Mapping) else {_condition_name(v): v for v in vectors}
    from tvlens.analysis._inputs import check_vector

    for name, v in named.items():
        check_vector(model, v, what=f"vectors[{name!r}]")
    sets: dict[str, PromptSet] = {}
    if prompts is not None:
        sets["zero-shot"] = prompts
        task = prompts.task
    else:
        task = get_task(task) if isinstance(task, str) else task
        splits = make_splits(task, seed=split_seed(next(iter(named.values()), None), seed))  # the vectors' own, when they have one
        for k in shots:
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise ConfigError(f"shots must be integers >= 0, got {k!r}; e.g. shots=(0, 8)")
            sets["zero-shot" if k == 0 else f"{k}-shot ICL"] = make_prompts(splits, "test", k=k, seed=seed, n=n)
        if named and "zero-shot" not in sets:
            sets["zero-shot"] = make_prompts(splits, "test", k=0, seed=seed, n=n)
    for v in named.values():
        v.check_task(task)
    zero = sets.get("zero-shot")
    runs = [(name, ps, None) for name, ps in sets.items()]
    runs += [(name, zero, AddAt(v.sites, v.values, scale=v.scale, operation=v.operation, out_of_range=v.out_of_range))
             for name, v in named.items()]
    if not sets:
        from tvlens.errors import DegenerateInputError

        raise DegenerateInputError("logit_lens has no condition to run: shots is empty and no vectors were given; "
                                   "give shots=(0, 8) or vectors=[...]")
    ids = answer_token_ids(model, next(iter(sets.values())))
    acc, lab, ali, counts = [], [], [], set()
    for name, ps, edit in runs:
        batch = ps.tokenize(model)
        states = lens_states(model, batch, intervention=edit, batch_size=batch_size)  # [layer, batch, d_model]
        gold = batch.answer_ids
        a, la = [], []
        for k in range(states.shape[0]):  # one layer at a time: [batch, d_vocab] stays small
            logits = lens_logits(model, states[k])
            a.append((logits.argmax(-1) == gold).sum())
            la.append((ids[logits[:, ids].argmax(-1)] == gold).sum())
        acc.append(torch.stack(a))
        lab.append(torch.stack(la))
        ali.append(task_alignment(states, ids, model, definition=definition).mean(-1))
        counts.add(len(batch))
    if len(counts) != 1:  # every condition runs on n queries (the shares are counts / n)
        raise ConfigError(f"the conditions ran on different numbers of queries {sorted(counts)}; give n= no larger than "
                          "the task's test split")
    return LensResult(task=task.name, conditions=tuple(name for name, _, _ in runs),
                      layers=tuple(range(model.cfg.n_layers + 1)), correct=torch.stack(acc), label_correct=torch.stack(lab),
                      alignment=torch.stack(ali), definition=definition, n=counts.pop(), answer_ids=ids,
                      chance_alignment=chance_alignment(model, ids, definition))


def chance_alignment(model, label_ids, definition: str = "span") -> float | None:
    """Expected ``"span"``/``"raw_span"`` alignment of a random direction, ``sqrt(rank / d)`` (``d`` = d_model,
    minus 1 when LayerNorm centres): with many answer tokens the span covers much of the space and
    every state scores near this floor; for ``"label_diff"`` (one direction, rank 1) the RMS |cos| of a random
    direction, ``sqrt(1 / d_model)``. None for ``"max_cos"``."""
    if definition == "max_cos":
        return None
    u = readout_directions(model, torch.as_tensor(label_ids, dtype=torch.long), definition=definition)
    d = model.cfg.d_model - (1 if definition not in ("raw_span", "label_diff") and _centres(model) else 0)
    return float((torch.linalg.matrix_rank(u) / d) ** 0.5)


from tvlens.analysis._decoded import DecodedTokens as DecodedTokens  # noqa: E402  (one public module)
from tvlens.analysis._decoded import decoded_tokens as decoded_tokens  # noqa: E402


# --- the registry's declarations (the report's lens and decoded sections; tvlens analyze decoded) ---

from dataclasses import field as _field  # noqa: E402

from tvlens.analysis._registry import Analysis, Options, lens_layers, register  # noqa: E402


@dataclass(frozen=True)
class LensOptions(Options):
    """Options of the logit-lens section (``tvlens analyze lens`` keeps its own hand-written options)."""

    shots: int | None = _field(default=None, metadata={"help": "ICL demonstrations (default: 8 on the embedded model, 5 otherwise)", "min": 1})
    definition: Literal["span", "raw_span", "max_cos", "label_diff"] = _field(default="span", metadata={
        "help": "task-alignment definition (label_diff: two-label tasks only)"})


def _run_lens(ctx, opts: LensOptions):
    early, late = lens_layers(ctx.model.cfg.n_layers)[0], lens_layers(ctx.model.cfg.n_layers)[-1]
    vectors = {f"LTV at L{early} (L/4)": ctx.ltv_at(early), f"LTV at L{late} (3L/4)": ctx.ltv_at(late)}
    shots = opts.shots if opts.shots is not None else (8 if ctx.toy else 5)
    return logit_lens(ctx.model, ctx.task, vectors=vectors, shots=(0, shots), n=ctx.n or 200, seed=ctx.seed, definition=opts.definition)


@dataclass(frozen=True)
class DecodedOptions(Options):
    """Options of ``tvlens analyze decoded``."""

    top_k: int = _field(default=10, metadata={"help": "decoded tokens per vector (default 10)", "min": 1})
    through_ln: bool = _field(default=True, metadata={"help": "through ln_final (default) or W_U only"})


def _run_decoded(ctx, opts: DecodedOptions):
    return decoded_tokens(ctx.model, {f"L{layer}": v for layer, v in ctx.vectors_by_layer().items()}, k=opts.top_k,
                          through_ln=opts.through_ln)


register(Analysis("lens", LensOptions, _run_lens, LensResult, "Logit lens and task alignment", "Logit lens and linearity",
                  "Per layer: logit-lens accuracy and task alignment for zero-shot, ICL and LTVs injected early and late (Figure 7A).",
                  order=10, cli=False))
register(Analysis("decoded", DecodedOptions, _run_decoded, DecodedTokens, "Decoded tokens of the LTV per layer",
                  "Logit lens and linearity", "Top tokens of each layer's LTV through ln_final and W_U (Figure 7B).", order=20))
