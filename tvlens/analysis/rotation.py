"""Rotation vs stretch: the polar decomposition of each layer's propagator ``W_TV(l) = Q S``.

Context:
    ``W = U Sigma V^T`` (SVD) gives ``Q = U V^T`` (orthogonal: a rotation, possibly with a
    reflection) and ``S = V Sigma V^T`` (symmetric positive semi-definite: a stretch). ``Q theta``
    is where the propagation *points* theta. Per layer this module reports the task alignment
    (:func:`tvlens.analysis.task_alignment`, final-layer readout) of ``theta`` and of ``Q theta``,
    ``cos(theta, Q theta)``, ``||Q - I||_F`` and the decoded tokens of ``Q theta``. When early
    vectors are mostly rotated into the answer directions and late ones mostly stretched,
    ``cos(theta, Q theta)`` rises with depth; the *transition layer* is the first layer of the
    sweep from which ``cos(theta, Q theta) >= threshold`` (default 0.5) holds at every later layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tvlens._result import ConditionAccuracy, Result, count_accuracy
from tvlens.analysis._inputs import split_seed
from tvlens.analysis.lens import answer_token_ids, decoded_tokens, task_alignment
from tvlens.analysis.linear import linear_propagation
from tvlens.errors import ConfigError

__all__ = ["ROTATION_CONDITIONS", "RotationStretch", "polar", "rotation_vs_stretch", "transition_layer"]


def polar(W: Float[torch.Tensor, "d_out d_in"]) -> tuple[Float[torch.Tensor, "d_out d_in"], Float[torch.Tensor, "d_in d_in"]]:
    """``(Q, S)`` with ``W = Q @ S``, ``Q`` orthogonal and ``S`` symmetric positive semi-definite (via SVD)."""
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ConfigError(f"polar() takes a square matrix, got shape {tuple(W.shape)}")
    U, sig, Vh = torch.linalg.svd(W.double())  # W = U diag(sig) Vh
    Q = U @ Vh
    S = Vh.T @ torch.diag(sig) @ Vh
    S = (S + S.T) / 2  # exactly symmetric
    return Q.to(W.dtype), S.to(W.dtype)


def transition_layer(layers: Sequence[int], cos: Sequence[float], threshold: float = 0.5) -> int | None:
    """First layer from which ``cos >= threshold`` holds at it and every later layer (None: never)."""
    out = None
    for layer, c in sorted(zip(layers, cos), reverse=True):
        if c < threshold:
            break
        out = layer
    return out


ROTATION_CONDITIONS = ("injected", "reconstructed", "mean_shift", "zero_shot")  # the accuracy conditions per layer
_METRICS = ("fit_r2", "cos_theta_Qtheta", "alignment_theta", "alignment_Qtheta", "q_minus_i", "q_minus_i_rel", "theta_norm")


@dataclass(frozen=True, eq=False, repr=False)
class RotationStretch(Result):
    """Per-layer linear propagation and its rotation / stretch split (the paper's Figures 8A, 9A-C).

    Per layer of ``layers``: the accuracy of the test queries under each of :data:`ROTATION_CONDITIONS`
    (θ injected at its site, W θ or the true mean shift added to the final state, zero-shot) held as
    counts of ``n[layer]`` queries, a :class:`~tvlens._result.ConditionAccuracy` per layer
    (:meth:`at_layer`); the fit's R², ``cos(θ, Qθ)``, the task alignment of θ and Qθ, ``||Q - I||_F``
    (and over ``sqrt(d_model)``), ``||θ||`` and the decoded tokens of θ and Qθ. :attr:`rows` gives one
    dict per layer (the columns of :meth:`to_frame`).
    """

    task: str
    layers: tuple[int, ...]
    correct: Int[torch.Tensor, "layer condition"]  # test queries answered correctly, in ``conditions`` order
    n: Int[torch.Tensor, " layer"]  # test queries of each layer's fit
    fit_r2: Float[torch.Tensor, " layer"]  # held-out R² of W_TV (float64: the fits' numbers exactly)
    cos_theta_Qtheta: Float[torch.Tensor, " layer"]
    alignment_theta: Float[torch.Tensor, " layer"]
    alignment_Qtheta: Float[torch.Tensor, " layer"]
    q_minus_i: Float[torch.Tensor, " layer"]  # ||Q - I||_F
    q_minus_i_rel: Float[torch.Tensor, " layer"]  # ||Q - I||_F / sqrt(d_model)
    theta_norm: Float[torch.Tensor, " layer"]
    decoded_theta: tuple[str, ...]  # top tokens of θ, repr'd and space-joined, per layer
    decoded_Qtheta: tuple[str, ...]
    n_copies: tuple[int, ...]
    seconds: tuple[float, ...]  # each fit's time
    transition_layer: int | None  # rotation gives way to stretch (see the module docstring)
    icl_layer: int | None  # first layer where ICL beats zero-shot in logit-lens accuracy (when a lens was given)
    threshold: float
    definition: str  # task-alignment definition
    conditions: tuple[str, ...] = ROTATION_CONDITIONS

    def __post_init__(self) -> None:
        for name in ("layers", "conditions", "decoded_theta", "decoded_Qtheta", "n_copies", "seconds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        L = len(self.layers)
        if tuple(self.correct.shape) != (L, len(self.conditions)):
            raise ConfigError(f"RotationStretch.correct must have shape [layer, condition] = {[L, len(self.conditions)]}, "
                              f"got {list(self.correct.shape)}")
        for name in ("n", *_METRICS):
            if tuple(getattr(self, name).shape) != (L,):
                raise ConfigError(f"RotationStretch.{name} must hold one value per layer ({L}), got shape {list(getattr(self, name).shape)}")
        for name in ("decoded_theta", "decoded_Qtheta", "n_copies", "seconds"):
            if len(getattr(self, name)) != L:
                raise ConfigError(f"RotationStretch.{name} must hold one entry per layer ({L}), got {len(getattr(self, name))}")

    @classmethod
    def declared_dims(cls, fields: dict) -> dict[str, int]:
        lay, c = fields.get("layers"), fields.get("conditions", ROTATION_CONDITIONS)
        return {**({"layer": len(lay)} if isinstance(lay, (list, tuple)) else {}),
                **({"condition": len(c)} if isinstance(c, (list, tuple)) else {})}

    def at_layer(self, layer: int) -> ConditionAccuracy:
        """The accuracy by condition (:data:`ROTATION_CONDITIONS`) at ``layer``, with Wilson intervals."""
        if layer not in self.layers:
            raise ConfigError(f"no layer {layer!r}; the layers are {list(self.layers)}")
        i = self.layers.index(layer)
        return ConditionAccuracy(self.task, self.conditions, self.correct[i], int(self.n[i]))

    @property
    def accuracy(self) -> Float[torch.Tensor, "layer condition"]:
        """Share of each layer's test queries answered correctly per condition (float32, as the fits measured it)."""
        return count_accuracy(self.correct, self.n[:, None])

    @property
    def rows(self) -> tuple[dict, ...]:
        """One dict per layer: layer, {injected, reconstructed, zero_shot, mean_shift}_acc, the metrics, the decoded
        tokens, n_test, n_copies, seconds."""
        acc = self.accuracy
        col = {c: i for i, c in enumerate(self.conditions)}
        out = []
        for i, layer in enumerate(self.layers):
            row = {"layer": layer, **{f"{c}_acc": float(acc[i, col[c]]) for c in ("injected", "reconstructed", "zero_shot", "mean_shift")
                                      if c in col}}
            row.update({m: float(getattr(self, m)[i]) for m in _METRICS})
            row.update({"decoded_theta": self.decoded_theta[i], "decoded_Qtheta": self.decoded_Qtheta[i], "n_test": int(self.n[i]),
                        "n_copies": self.n_copies[i], "seconds": self.seconds[i]})
            out.append(row)
        return tuple(out)

    def __repr__(self) -> str:
        return (f"RotationStretch({self.task!r}, layers {list(self.layers)}, "
                f"transition_layer={self.transition_layer}, icl_layer={self.icl_layer})")

    def to_frame(self):
        """One row per layer (the keys of :attr:`rows`)."""
        import pandas as pd

        return pd.DataFrame(list(self.rows))

    def accuracy_frame(self):
        """One row per (layer, condition): accuracy, its 95% Wilson interval, n, correct."""
        import pandas as pd

        return pd.concat([self.at_layer(layer).to_frame().assign(layer=layer) for layer in self.layers], ignore_index=True)[
            ["layer", "condition", "accuracy", "ci_low", "ci_high", "n", "correct"]]

    def payload(self) -> dict:
        """The JSON of ``tvlens analyze linear --json``: per layer its row and, as in every accuracy-by-condition
        result, ``conditions``: {condition: {accuracy, correct, ci95}}."""
        return {"task": self.task,
                "layers": [{**r, "conditions": self.at_layer(r["layer"]).payload()["conditions"]} for r in self.rows],
                "transition_layer": self.transition_layer, "icl_beats_zero_shot_layer": self.icl_layer,
                "threshold": self.threshold, "alignment_definition": self.definition}

    def text(self, model: str = "") -> str:
        """The per-layer table, the transition layer and the ICL layer, and the decoded tokens of Qθ."""
        cols = ["layer", "injected_acc", "reconstructed_acc", "zero_shot_acc", "fit_r2", "cos_theta_Qtheta",
                "alignment_theta", "alignment_Qtheta", "q_minus_i_rel"]
        on = f" ({model})" if model else ""
        return "\n".join([f"linear propagation on {self.task}{on}:",
                          self.to_frame()[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"),
                          f"transition layer (cos(θ, Qθ) >= {self.threshold} from there on): {self.transition_layer}; "
                          f"ICL first beats zero-shot in logit-lens accuracy at layer {self.icl_layer}",
                          "decoded tokens of Qθ:"] + [f"  L{r['layer']}: {r['decoded_Qtheta']}" for r in self.rows])

    def plot(self):
        """Accuracy (injected, reconstructed, zero-shot; 95% Wilson intervals), alignment of theta vs Q theta, cos(theta, Q theta)."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        df = self.to_frame()
        acc = self.accuracy_frame()
        bars = {}
        for c in ("injected", "reconstructed", "zero_shot"):
            a = acc[acc.condition == c]
            bars[f"{c}_acc"] = {"type": "data", "symmetric": False, "array": (a.ci_high - a.accuracy).tolist(),
                                "arrayminus": (a.accuracy - a.ci_low).tolist()}
        fig = make_subplots(rows=1, cols=3, subplot_titles=("accuracy: θ vs W θ", "alignment: θ vs Qθ",
                                                             "cos(θ, Qθ) and ||Q − I||/√d"))
        x = df["layer"].tolist()
        for col, name, label in (("injected_acc", 1, "injected θ"), ("reconstructed_acc", 1, "reconstructed Wθ"),
                                 ("zero_shot_acc", 1, "zero-shot"), ("alignment_theta", 2, "alignment(θ)"),
                                 ("alignment_Qtheta", 2, "alignment(Qθ)"), ("cos_theta_Qtheta", 3, "cos(θ, Qθ)"),
                                 ("q_minus_i_rel", 3, "||Q − I||/√d")):
            fig.add_trace(go.Scatter(x=x, y=df[col].tolist(), mode="lines+markers", name=label, error_y=bars.get(col)),
                          row=1, col=name)
        for layer, dash in ((self.transition_layer, "dash"), (self.icl_layer, "dot")):
            if layer is not None:
                for c in (1, 2, 3):
                    fig.add_vline(x=layer, line_dash=dash, line_color="gray", row=1, col=c)
        fig.update_xaxes(title_text="injection layer")
        fig.update_layout(title=f"Linear propagation and rotation vs stretch: {self.task}<br><sup>dashed: transition layer "
                                f"{self.transition_layer}; dotted: ICL beats zero-shot (logit lens) from layer {self.icl_layer}</sup>",
                          height=450)
        return fig


def rotation_vs_stretch(
    model,
    vectors_by_layer: Mapping[int, object] | Sequence,
    task=None,
    *,
    prompts=None,
    n: int | None = 200,
    seed: int = 0,
    lens=None,
    threshold: float = 0.5,
    k: int = 5,
    definition: str = "span",
    fits: Mapping[int, object] | None = None,
    **fit_options,
) -> RotationStretch:
    """Fit ``W_TV(l)`` for each layer's one-site vector and split it into rotation and stretch.

    ``vectors_by_layer``: ``{layer: TaskVector}`` or one-site TaskVectors. ``lens``: a
    :class:`~tvlens.analysis.LensResult` with an ICL condition, for the ICL-beats-zero-shot layer.
    ``fits``: ``{layer: LinearFit}`` already computed (skips those fits); ``n`` test queries (None: all)
    and ``seed`` as in :func:`~tvlens.analysis.linear_propagation`, where the other ``fit_options`` go;
    ``k``: decoded tokens of θ and Qθ.
    """
    from tvlens.prompts import make_prompts, make_splits
    from tvlens.tasks import get as get_task

    from tvlens._validate import is_strict_int, check_float, check_int
    from tvlens.analysis._inputs import check_vector
    from tvlens.errors import DegenerateInputError

    if isinstance(vectors_by_layer, Mapping):
        vecs = dict(vectors_by_layer)
    elif isinstance(vectors_by_layer, (str, bytes)) or not isinstance(vectors_by_layer, Sequence):
        raise ConfigError(f"vectors_by_layer must be {{layer: TaskVector}} or a list of one-site TaskVectors, "
                          f"got {type(vectors_by_layer).__name__}")
    else:
        for v in vectors_by_layer:
            check_vector(model, v)
        vecs = {v.sites[0].layer: v for v in vectors_by_layer}
        if len(vecs) != len(vectors_by_layer):
            raise ConfigError("two vectors of vectors_by_layer share a layer; give one vector per layer")
    if not vecs:
        raise DegenerateInputError("give at least one vector: {layer: TaskVector}, e.g. from tv.train_ltv(model, task, layers=[l])")
    for key, v in vecs.items():
        check_vector(model, v, what=f"vectors_by_layer[{key!r}]")
        if not is_strict_int(key) or int(key) not in v.layers or len(v.layers) != 1:
            raise ConfigError(f"vectors_by_layer[{key!r}] holds a vector injected at layer(s) {list(v.layers)}, not at "
                              f"layer {key!r}; key each vector by its own layer ({{v.sites[0].layer: v}}) or pass a list")
    check_float("rotation_vs_stretch", "threshold", threshold, min=-1, max=1)
    check_int("rotation_vs_stretch", "k", k, min=1)
    if "n_test" in fit_options:
        from tvlens._validate import renamed

        n = renamed("rotation_vs_stretch", "n_test", "n", fit_options.pop("n_test"), n)
    fit_options = {**fit_options, "n": n, "seed": seed}
    if prompts is None:
        if task is None:
            raise ConfigError("give a task (name or tv.tasks.Task) or prompts=tv.make_prompts(...)")
        task = get_task(task) if isinstance(task, str) else task
        prompts = make_prompts(make_splits(task, seed=split_seed(next(iter(vecs.values())), seed)), "test", k=0, seed=seed, n=n)
    ids = answer_token_ids(model, prompts)
    d = model.cfg.d_model
    eye = torch.eye(d)
    layers, correct, ns, metrics, dec_theta, dec_q, copies, secs = [], [], [], [], [], [], [], []
    for layer in sorted(vecs):
        v = vecs[layer]
        fit = (fits or {}).get(layer) or linear_propagation(model, v, task, prompts=None if task is not None else prompts, **fit_options)
        Q, _ = polar(fit.W)
        theta = fit.theta
        q_theta = Q @ theta
        align = task_alignment(torch.stack([theta, q_theta]), ids, model, definition=definition)
        dec = decoded_tokens(model, {"θ": theta, "Qθ": q_theta}, k)
        accs = {"injected": fit.injected_acc, "reconstructed": fit.reconstructed_acc, "mean_shift": fit.mean_shift_acc,
                "zero_shot": fit.zero_shot_acc}
        layers.append(layer)
        correct.append([round(accs[c] * fit.n_test) for c in ROTATION_CONDITIONS])  # the fit's shares are counts / n_test
        ns.append(fit.n_test)
        metrics.append([fit.fit_r2, float(torch.nn.functional.cosine_similarity(theta, q_theta, dim=0)), float(align[0]),
                        float(align[1]), float((Q - eye).norm()), float((Q - eye).norm() / d**0.5), float(theta.norm())])
        dec_theta.append(" ".join(map(repr, dec.tokens[0])))
        dec_q.append(" ".join(map(repr, dec.tokens[1])))
        copies.append(fit.n_copies)
        secs.append(round(fit.seconds, 2))
    m = torch.tensor(metrics, dtype=torch.float64)  # [layer, metric]: python floats kept exactly
    cols = {name: m[:, j] for j, name in enumerate(_METRICS)}
    return RotationStretch(
        task=prompts.task.name if task is None else task.name, layers=tuple(layers), correct=torch.tensor(correct),
        n=torch.tensor(ns), **cols, decoded_theta=tuple(dec_theta), decoded_Qtheta=tuple(dec_q), n_copies=tuple(copies),
        seconds=tuple(secs), transition_layer=transition_layer(layers, cols["cos_theta_Qtheta"].tolist(), threshold),
        icl_layer=None if lens is None else lens.icl_beats_zero_shot_layer, threshold=float(threshold), definition=definition)


# --- the registry's declaration (the report's rotation section; tvlens analyze rotation) ---

from dataclasses import field as _field  # noqa: E402

from tvlens.analysis._registry import Analysis, Options, register  # noqa: E402


@dataclass(frozen=True)
class RotationOptions(Options):
    """Options of ``tvlens analyze rotation``."""

    threshold: float = _field(default=0.5, metadata={"help": "cos(theta, Q theta) from which a layer counts as stretch (default 0.5)"})


def _run_rotation(ctx, opts: RotationOptions):
    return rotation_vs_stretch(ctx.model, ctx.vectors_by_layer(), ctx.task, threshold=opts.threshold)


register(Analysis("rotation", RotationOptions, _run_rotation, RotationStretch, "Rotation vs stretch", "Logit lens and linearity",
                  "Polar decomposition of W_TV per layer (Figure 9).", order=40))
