"""Linear propagation of a task vector: the final state shifts by about ``W_TV(l) theta``.

Context:
    For a vector ``theta`` injected at (layer l, last token), the mean over queries of the shift
    of the final last-token state (``blocks.{L-1}.hook_resid_post``, before ``ln_final``) is
    modelled as ``W_TV(l) theta'`` for ``theta'`` near ``theta``. ``W`` is fitted by ridge least
    squares on noisy copies ``theta + lambda_i eps_i`` (``eps_i ~ N(0, I)``, ``lambda_i ~
    U(0, noise) * ||theta|| / sqrt(d_model)``, so a copy's noise is up to ``noise * ||theta||``
    long), more copies than ``d_model`` by default, with held-out copies for R^2.

    Every copy changes nothing below layer l nor before the last token, so the prompts' prefix
    is computed once (keys/values of every earlier column, and the residual at layer l) by
    :func:`tvlens._engine.prefix` and each copy is a replica of a suffix run through blocks
    l..L-1 (:func:`tvlens._engine.run`, tested against full forward passes). The
    *reconstructed* vector ``W theta`` is added to the final state and decoded by ``ln_final`` and
    ``W_U``; its accuracy is set beside real injection.

    Oracle (tests): with ``ln_final``-free, attention-free blocks made linear the map is exactly
    a matrix, and the fit recovers it.

>>> import tvlens as tv
>>> from tvlens.analysis import linear_propagation
>>> model = tv.load_model("toy")
>>> theta = tv.train_ltv(model, "toy/antonym", layers=[2], progress=False).vector
>>> fit = linear_propagation(model, theta, "toy/antonym", n_copies=160)
>>> fit.W.shape == (model.cfg.d_model, model.cfg.d_model)
True
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from jaxtyping import Float

from tvlens import _backend
from tvlens._result import Result
from tvlens._validate import UNSET, renamed
from tvlens.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["LinearFit", "LinearSurrogate", "SuffixStates", "final_states", "layer_states", "linear_propagation", "linear_surrogate",
           "ridge_fit"]


class SuffixStates:
    """Final last-token states of a fixed prompt set for many per-row vectors at one site (an engine prefix)."""

    def __init__(self, model, prompts, site) -> None:
        from tvlens import _engine as engine

        reason = engine.cache_unsupported_reason(model)
        if reason and reason != _backend.suffix_cache_unsupported_reason(model):
            raise ConfigError(f"linear propagation needs the prefix-cached path, which cannot run here ({reason}); "
                              "load the model without ungroup_grouped_query_attention")
        if reason:  # the backend has no prefix cache: every copy is a full forward (right, slower)
            log.warning("linear propagation on full forwards: %s", reason)
        self.model, self.site = model, site
        batch = prompts.tokenize(model, padding_side="left")
        with torch.no_grad():
            self.pre = engine.prefix(model, batch, positions=(site.position,), layer=site.layer)
        self.n = len(batch)
        self.gold = batch.answer_ids

    def states(self, thetas: Float[torch.Tensor, "copy d_model"], *, rows_per_pass: int = 512
               ) -> Float[torch.Tensor, "copy query d_model"]:
        """Final state (pre-ln_final) at each query's last token with ``thetas[c]`` injected, every copy c."""
        from tvlens import _engine as engine
        from tvlens._hooks import AddPerRow

        per = max(1, rows_per_pass // self.n)  # copies per pass
        out = []
        with torch.no_grad():
            for start in range(0, len(thetas), per):
                th = thetas[start : start + per]
                vec = th.repeat_interleave(self.n, 0)  # [copy * query, d_model]: replica c of every query gets copy c
                run = engine.run(self.pre, [AddPerRow(self.site, vec)], start=self.site.layer, replicas=len(th))
                out.append(run.last().float().reshape(len(th), self.n, -1))  # [copy, query, d_model]
        return torch.cat(out)


def layer_states(states: SuffixStates, thetas: Float[torch.Tensor, "copy d_model"], *, rows_per_pass: int = 512
                 ) -> Float[torch.Tensor, "copy layer query d_model"]:
    """Last-token states at the injection point and after each block from the site's layer up (``hook_resid_post``)."""
    from tvlens import _engine as engine
    from tvlens._hooks import AddPerRow

    site, n_layers = states.site, int(states.model.cfg.n_layers)
    names = [f"blocks.{m}.hook_resid_post" for m in range(site.layer, n_layers)]
    per = max(1, rows_per_pass // states.n)
    out = []
    with torch.no_grad():
        for start in range(0, len(thetas), per):
            th = thetas[start : start + per]
            vec = th.repeat_interleave(states.n, 0)
            run = engine.run(states.pre, [AddPerRow(site, vec)], start=site.layer, replicas=len(th), names=names)
            at = [run.at_last(run.acts[nm]).float() for nm in names]  # each [copy * query, d_model]
            out.append(torch.stack(at, 1).reshape(len(th), states.n, len(names), -1).transpose(1, 2))
    return torch.cat(out)


def final_states(model, vector, prompts, thetas: Float[torch.Tensor, "copy d_model"] | None = None
                 ) -> Float[torch.Tensor, "copy query d_model"]:
    """Final last-token states of ``prompts`` with each row of ``thetas`` (default: the vector) at its site."""
    site = _single_site(vector)
    s = SuffixStates(model, prompts, site)
    return s.states(vector.values if thetas is None else thetas)


def _single_site(vector):
    if len(vector.sites) != 1 or vector.operation != "add":
        raise ConfigError(f"linear propagation takes a one-site additive vector, got sites {[str(s) for s in vector.sites]} "
                          f"({vector.operation}); train one per layer: tv.train_ltv(model, task, layers=[l])")
    return vector.sites[0]


def _decode(model, states: Float[torch.Tensor, "query d_model"]):
    from tvlens.analysis.lens import lens_logits

    return lens_logits(model, states)


@dataclass(frozen=True, eq=False, repr=False)
class LinearFit(Result):
    """The fitted propagator ``W_TV(l)`` of one vector and how well it stands in for injection."""

    task: str
    layer: int
    W: Float[torch.Tensor, "d_model d_model"]  # final-state shift ~= W @ theta'
    theta: Float[torch.Tensor, " d_model"]
    fit_r2: float  # 1 - SS_res / SS_tot on held-out copies (SS_tot about their mean shift)
    fit_r2_uncentered: float  # same with SS_tot about zero
    injected_acc: float  # accuracy with theta injected at its site (test queries)
    reconstructed_acc: float  # accuracy with W theta added to the final state instead
    mean_shift_acc: float  # accuracy with the true mean shift (over fit queries) added to the final state
    zero_shot_acc: float
    n_copies: int  # copies used to fit
    n_heldout: int
    n_queries: int  # fit queries (train split) the shift is averaged over
    n_test: int
    noise: float
    ridge: float
    seconds: float

    def __repr__(self) -> str:
        return (f"LinearFit({self.task!r} L{self.layer}: R2={self.fit_r2:.3f}, injected={self.injected_acc:.3f}, "
                f"reconstructed={self.reconstructed_acc:.3f}, zero-shot={self.zero_shot_acc:.3f})")

    def to_frame(self):
        import pandas as pd

        keys = ("layer", "fit_r2", "fit_r2_uncentered", "injected_acc", "reconstructed_acc", "mean_shift_acc",
                "zero_shot_acc", "n_copies", "n_heldout", "n_queries", "n_test", "seconds")
        return pd.DataFrame([{k: getattr(self, k) for k in keys}])

    def plot(self):
        """Accuracy with θ injected at its layer vs W θ (and the true mean shift) added to the final state."""
        import plotly.graph_objects as go

        from tvlens.stats import accuracy_interval

        names = ["zero-shot", f"θ injected at L{self.layer}", "W θ at the end", "mean shift at the end"]
        accs = [self.zero_shot_acc, self.injected_acc, self.reconstructed_acc, self.mean_shift_acc]
        cis = [accuracy_interval(a, self.n_test) for a in accs]
        fig = go.Figure(go.Bar(
            x=names, y=accs, marker_color=["#999999", "#1f77b4", "#d62728", "#ff7f0e"],
            error_y=dict(type="data", symmetric=False, array=[hi - a for a, (_, hi) in zip(accs, cis)],
                         arrayminus=[a - lo for a, (lo, _) in zip(accs, cis)]),
            hovertemplate="%{x}: %{y:.3f}<extra></extra>"))
        fig.update_layout(title=f"Linear propagation, {self.task} θ@L{self.layer}: held-out R² {self.fit_r2:.3f} "
                                f"({self.n_copies} copies, n={self.n_test}, 95% intervals)",
                          yaxis=dict(title="accuracy", range=[0, 1.05]), height=380)
        return fig

    @property
    def W_theta(self) -> Float[torch.Tensor, " d_model"]:
        return self.W @ self.theta


def ridge_fit(X: Float[torch.Tensor, "n d_in"], Y: Float[torch.Tensor, "n d_out"], ridge: float
              ) -> Float[torch.Tensor, "d_out d_in"]:
    """``W`` minimising ``||Y - X W^T||^2 + ridge * (tr(X^T X) / d_in) * ||W||^2`` (ridge relative to X's scale)."""
    X64, Y64 = X.double(), Y.double()
    G = X64.T @ X64  # [d_in, d_in]
    lam = ridge * float(G.diagonal().mean())
    Wt = torch.linalg.solve(G + lam * torch.eye(G.shape[0], dtype=G.dtype), X64.T @ Y64)  # [d_in, d_out]
    return Wt.T.float()


def _r2(pred, true, centered: bool) -> float:
    ref = true.mean(0, keepdim=True) if centered else torch.zeros_like(true[:1])
    return float(1 - ((true - pred) ** 2).sum() / ((true - ref) ** 2).sum().clamp_min(1e-30))


def linear_propagation(
    model,
    vector,
    task=None,
    *,
    prompts=None,
    n_copies: int | None = None,
    n_heldout: int | None = None,
    noise: float = 1.0,
    ridge: float = 1e-3,
    n_queries: int = 16,
    n: int | None = 200,
    seed: int = 0,
    rows_per_pass: int = 512,
    n_test=UNSET,
    cache=None,
) -> LinearFit:
    """Fit ``W_TV(l)`` for a one-site vector and compare ``W theta`` added to the final state with injection.

    ``n_copies`` (default ``ceil(1.1 * d_model)``) noisy copies fit ``W``; ``n_heldout`` (default
    ``max(32, d_model // 8)``) more give R^2. The shift is the mean over ``n_queries`` zero-shot
    train queries; accuracies are on ``n`` zero-shot test queries (None: all; or on ``prompts``).
    ``n_test`` is the old name of ``n``.

    ``cache``: the store (:mod:`tvlens.store`), as in :func:`tvlens.train_ltv`: a fit on the task's own prompts
    (``prompts=None``) is kept under its vector, task, split, options and the fitting code's version, and a hit
    returns the stored ``W`` and accuracies bit for bit (``seconds``: this call's).
    """
    import time

    from tvlens._validate import check_float, check_int
    from tvlens.analysis._inputs import split_seed
    from tvlens.prompts import make_prompts, make_splits
    from tvlens.tasks import get as get_task

    t0 = time.perf_counter()
    d = model.cfg.d_model
    from tvlens.analysis._inputs import check_vector
    from tvlens.errors import DegenerateInputError

    check_vector(model, vector)
    site = _single_site(vector)
    n = renamed("linear_propagation", "n_test", "n", n_test, n)
    check_int("linear_propagation", "seed", seed)
    check_int("linear_propagation", "rows_per_pass", rows_per_pass, min=1)
    if n is not None:
        check_int("linear_propagation", "n", n, min=1)
    if not bool(vector.values.detach().float().norm() * abs(vector.scale) > 0):
        raise DegenerateInputError(f"linear propagation of a zero vector ({vector.task!r} at {site}, scale {vector.scale}): "
                                   "its noisy copies are all zero and W cannot be fitted; give a non-zero vector")
    n_copies = math.ceil(1.1 * d) if n_copies is None else n_copies
    n_heldout = max(32, d // 8) if n_heldout is None else n_heldout
    check_int("linear_propagation", "n_copies", n_copies, min=2)
    check_int("linear_propagation", "n_heldout", n_heldout, min=2)
    check_int("linear_propagation", "n_queries", n_queries, min=1)
    check_float("linear_propagation", "noise", noise, min=0, min_exclusive=True)
    check_float("linear_propagation", "ridge", ridge, min=0)
    if n_copies < d:
        log.warning("n_copies=%d < d_model=%d: W is fitted from fewer copies than dimensions (ridge decides the rest)", n_copies, d)
    own_prompts = prompts is None
    if prompts is None:
        if task is None:
            raise ConfigError("give a task (name or tv.tasks.Task) or prompts=tv.make_prompts(...)")
        task = get_task(task) if isinstance(task, str) else task
        splits = make_splits(task, seed=split_seed(vector, seed))
        fit_prompts = make_prompts(splits, "train", k=0, seed=seed, n=n_queries)
        prompts = make_prompts(splits, "test", k=0, seed=seed, n=n)
    else:
        fit_prompts = prompts.subset(slice(0, n_queries))
        task = prompts.task
    vector.check_task(task)
    theta = vector.values[0].detach().float() * vector.scale
    store, fields = _fit_store(model, vector, task, cache, splits if own_prompts else None,
                               dict(n_copies=n_copies, n_heldout=n_heldout, noise=float(noise), ridge=float(ridge),
                                    n_queries=n_queries, n=n, seed=seed, rows_per_pass=rows_per_pass))
    if fields is not None and (hit := store.get_tensors(fields)) is not None:
        tensors, record = hit
        log.info("linear fit of %s at %s from the store", task.name, site)
        return LinearFit(task=task.name, layer=site.layer, W=tensors["W"], theta=tensors["theta"],
                         seconds=time.perf_counter() - t0, **record)
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(n_copies + n_heldout, d, generator=g)
    lam = torch.rand(n_copies + n_heldout, 1, generator=g) * noise * theta.norm() / math.sqrt(d)
    copies = theta + lam * eps  # [copy, d_model]
    fit_set = SuffixStates(model, fit_prompts, site)
    base = fit_set.states(torch.zeros(1, d))[0]  # [query, d_model]
    with_theta = fit_set.states(theta[None])[0]
    shifts = (fit_set.states(copies, rows_per_pass=rows_per_pass) - base).mean(1)  # [copy, d_model]: mean over queries
    from tvlens._validate import check_finite

    check_finite(f"the final-state shifts of {vector.task!r}'s noisy copies at {site}", shifts,
                 f"the vector (norm {float(theta.norm()):.3g}) overflows this model's states; give a vector of a usable size "
                 "(e.g. rescale it to the norm of a trained one)")
    W = ridge_fit(copies[:n_copies], shifts[:n_copies], ridge)
    check_finite(f"the W_TV fit of {vector.task!r} at {site}", W, "the fit overflowed; give a vector of a usable size or a larger ridge")
    pred = copies[n_copies:] @ W.T
    held = shifts[n_copies:]
    test = SuffixStates(model, prompts, site)
    zs = test.states(torch.zeros(1, d))[0]  # [query, d_model]
    inj = test.states(theta[None])[0]
    gold = test.gold

    def acc(states):
        return float((_decode(model, states).argmax(-1) == gold).float().mean())

    fit = LinearFit(
        task=task.name, layer=site.layer, W=W, theta=theta, fit_r2=_r2(pred, held, True),
        fit_r2_uncentered=_r2(pred, held, False), injected_acc=acc(inj), reconstructed_acc=acc(zs + W @ theta),
        mean_shift_acc=acc(zs + (with_theta - base).mean(0)), zero_shot_acc=acc(zs), n_copies=n_copies,
        n_heldout=n_heldout, n_queries=fit_set.n, n_test=test.n, noise=float(noise), ridge=float(ridge),
        seconds=time.perf_counter() - t0)
    log.info("%r", fit)
    if fields is not None:
        try:
            store.put_tensors(fields, {"W": fit.W, "theta": fit.theta},
                              {k: getattr(fit, k) for k in _STORED_SCALARS})
        except OSError as e:  # a read-only or full cache must not cost the result
            log.warning("could not save the linear fit to the store %s (%s); continuing without it", store.root, e)
    return fit


# the fit's numbers kept beside W and theta in the store (JSON: Python floats round-trip exactly)
_STORED_SCALARS = ("fit_r2", "fit_r2_uncentered", "injected_acc", "reconstructed_acc", "mean_shift_acc", "zero_shot_acc",
                   "n_copies", "n_heldout", "n_queries", "n_test", "noise", "ridge")


def _fit_store(model, vector, task, cache, splits, options: dict):
    """The store and the key fields of a fit on the task's own prompts (``splits``), or (None, None): no store, or
    the caller's own prompts (not keyed)."""
    from tvlens.store import resolve as resolve_store

    store = resolve_store(cache)
    if store is None or splits is None:
        return None, None
    from tvlens._fingerprint import fingerprint
    from tvlens.store import linear_key_fields

    return store, linear_key_fields(model, task, vector, splits=splits, options=options, fingerprint=fingerprint(model))


@dataclass(frozen=True, eq=False, repr=False)
class LinearSurrogate(Result):
    """Figure 8B: per layer from θ's site up, logit-lens accuracy of the zero-shot state plus ``W_m θ`` (the linear
    surrogate, ``W_m`` fitted like ``W_TV`` but to the layer-``m`` state), of the real injected state, and of zero-shot."""

    task: str
    layer: int  # θ's injection layer
    rows: tuple[dict, ...]  # layer, point, surrogate_acc, injected_acc, zero_shot_acc, fit_r2
    n_copies: int
    n_test: int
    seconds: float

    def __repr__(self) -> str:
        return f"LinearSurrogate({self.task!r} θ@L{self.layer}: {len(self.rows)} points, n={self.n_test})"

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(list(self.rows))

    def plot(self):
        import plotly.graph_objects as go

        x = [r["point"] for r in self.rows]
        fig = go.Figure()
        for key, name, colour in (("injected_acc", "real injected state", "#1f77b4"), ("surrogate_acc", "zero-shot + W_m θ", "#d62728"),
                                  ("zero_shot_acc", "zero-shot", "#999999")):
            fig.add_trace(go.Scatter(x=x, y=[r[key] for r in self.rows], name=name, mode="lines+markers", line={"color": colour}))
        fig.update_layout(title=f"Linear surrogate decoded by the logit lens, {self.task} θ@L{self.layer} (n={self.n_test})",
                          xaxis_title="state read", yaxis={"title": "logit-lens accuracy", "range": [0, 1.05]}, height=380)
        return fig


def linear_surrogate(model, vector, task, *, n_copies: int | None = None, n_heldout: int | None = None, noise: float = 1.0,
                     ridge: float = 1e-3, n_queries: int = 16, n: int | None = 200, seed: int = 0,
                     n_test=UNSET) -> LinearSurrogate:
    """Figure 8B: at the injection point and after every block from θ's layer up, fit ``W_m`` (the mean shift of the
    layer-``m`` last-token state ~= ``W_m θ'`` over noisy copies, as in :func:`linear_propagation`) and decode by the
    logit lens the zero-shot state plus ``W_m θ``, the real injected state and the zero-shot state."""
    import time

    from tvlens._validate import check_finite
    from tvlens.analysis._inputs import check_vector, split_seed
    from tvlens.prompts import make_prompts, make_splits
    from tvlens.tasks import get as get_task

    t0 = time.perf_counter()
    from tvlens.errors import DegenerateInputError

    check_vector(model, vector)
    site = _single_site(vector)
    n = renamed("linear_surrogate", "n_test", "n", n_test, n)
    if not bool(vector.values.detach().float().norm() * abs(vector.scale) > 0):
        raise DegenerateInputError(f"the linear surrogate of a zero vector ({vector.task!r} at {site}) cannot be fitted "
                                   "(every noisy copy is zero); give a non-zero vector")
    d = model.cfg.d_model
    n_copies = math.ceil(1.1 * d) if n_copies is None else n_copies
    n_heldout = max(32, d // 8) if n_heldout is None else n_heldout
    task = get_task(task) if isinstance(task, str) else task
    vector.check_task(task)
    splits = make_splits(task, seed=split_seed(vector, seed))
    fit_set = SuffixStates(model, make_prompts(splits, "train", k=0, seed=seed, n=n_queries), site)
    test = SuffixStates(model, make_prompts(splits, "test", k=0, seed=seed, n=n), site)
    theta = vector.values[0].detach().float() * vector.scale
    g = torch.Generator().manual_seed(seed)
    eps = torch.randn(n_copies + n_heldout, d, generator=g)
    lam = torch.rand(n_copies + n_heldout, 1, generator=g) * noise * theta.norm() / math.sqrt(d)
    copies = theta + lam * eps
    base = layer_states(fit_set, torch.zeros(1, d))[0]  # [layer, query, d_model]
    shifts = (layer_states(fit_set, copies) - base).mean(2)  # [copy, layer, d_model]
    check_finite(f"the layer-state shifts of {vector.task!r}'s noisy copies at {site}", shifts, "give a vector of a usable size")
    zs, inj = layer_states(test, torch.zeros(1, d))[0], layer_states(test, theta[None])[0]  # [layer, query, d_model]
    pre = test.pre  # the zero-shot state at θ's site (before block l), where the prefix keeps it
    zs0 = (pre.resid[site.layer][torch.arange(test.n), (pre.batch.last_index - pre.c0).to(pre.resid[site.layer].device)].float()
           if pre.fallback is None and site.layer in pre.resid and site.hook_name.endswith("hook_resid_pre") else None)
    if zs0 is None and site.hook_name.endswith("hook_resid_pre"):  # the prefix keeps no state (full forwards): read it off a run
        from tvlens import _engine as engine

        with torch.no_grad():
            run = engine.run(pre, [], start=site.layer, names=[site.hook_name])
        zs0 = run.at_last(run.acts[site.hook_name]).float()
    gold = test.gold

    def acc(states):
        return float((_decode(model, states).argmax(-1) == gold).float().mean())

    rows = []
    points = [("injection", copies, copies)]  # the state at θ's site: the shift is θ' itself, W = I
    points += [(f"L{m} out", copies, shifts[:, i]) for i, m in enumerate(range(site.layer, model.cfg.n_layers))]
    for i, (point, X, Y) in enumerate(points):
        W = ridge_fit(X[:n_copies], Y[:n_copies], ridge)
        r2 = _r2(X[n_copies:] @ W.T, Y[n_copies:], True)
        if i == 0:
            if zs0 is None:
                continue
            z, real = zs0, zs0 + theta
        else:
            z, real = zs[i - 1], inj[i - 1]
        rows.append({"point": point, "layer": site.layer if i == 0 else site.layer + i - 1, "surrogate_acc": acc(z + W @ theta),
                     "injected_acc": acc(real), "zero_shot_acc": acc(z), "fit_r2": r2})
    res = LinearSurrogate(task.name, site.layer, tuple(rows), n_copies, test.n, time.perf_counter() - t0)
    log.info("%r", res)
    return res


# --- the registry's declaration (the report's linear section; `tvlens analyze linear` is hand-written) ---

from dataclasses import field as _field  # noqa: E402

from tvlens.analysis._registry import Analysis, Options, register  # noqa: E402


@dataclass(frozen=True)
class LinearOptions(Options):
    """Options of the linear-propagation section (``tvlens analyze linear`` keeps its own hand-written options)."""

    noise: float = _field(default=1.0, metadata={"help": "copy noise, as a fraction of ||theta||, > 0 (default 1.0)", "min": 0,
                                                                                               "min_exclusive": True})
    ridge: float = _field(default=1e-3, metadata={"help": "ridge, relative to the copies' mean squared norm (default 1e-3)", "min": 0})
    surrogate: bool = _field(default=False, metadata={"help": "also the linear surrogate at every later layer, decoded by the "
                                                              "logit lens (Figure 8B)"})


def _run_linear(ctx, opts: LinearOptions):
    fit = linear_propagation(ctx.model, ctx.vector, ctx.task, noise=opts.noise, ridge=opts.ridge)
    if not opts.surrogate:
        return fit
    return [fit, linear_surrogate(ctx.model, ctx.vector, ctx.task, noise=opts.noise, ridge=opts.ridge)]


register(Analysis("linear", LinearOptions, _run_linear, LinearFit, "Linear propagation", "Logit lens and linearity",
                  "W_TV fitted so that injecting θ' shifts the final state by W_TV θ' (Figure 8A).", order=30, cli=False))
