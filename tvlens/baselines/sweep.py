"""Layer sweep (the paper's Figure 2): accuracy of each method's vector at every layer.

For each layer a fresh single-site vector (last token) of each method is made on ``task`` and
evaluated on the zero-shot test queries; zero-shot and ``icl_shots``-shot ICL accuracies on the
same queries are the reference lines. Where the model answers none of the FV's clean prompts,
the FV row is NaN and ``meta["fv_undefined"]`` says why. Method names: ``"ltv"``, ``"vanilla_tv"`` (alias
``"vanilla"``) and ``"fv"``; the FV's head AIE is computed once (it does not depend on the layer).

>>> import tvlens as tv
>>> model = tv.load_model("toy")
>>> res = tv.sweep(model, "toy/antonym", methods=("vanilla", "fv"), layers=[1, 2], fv_shots=8)
>>> res.methods, res.layers
(('vanilla_tv', 'fv'), (1, 2))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int

from tvlens._result import Result
from tvlens._validate import no_type_check
from tvlens.errors import ConfigError, PromptError
from tvlens.ltv._config import LTVConfig
from tvlens.prompts import TaskSplits
from tvlens.tasks._task import Task

__all__ = ["SweepResult", "canonical_methods", "sweep"]

METHODS = ("ltv", "vanilla_tv", "fv")
ALIASES = {"vanilla": "vanilla_tv", "function_vector": "fv"}
LABELS = {"ltv": "LTV", "vanilla_tv": "Vanilla TV", "fv": "FV"}


def canonical_methods(methods: Sequence[str]) -> tuple[str, ...]:
    if isinstance(methods, str):
        methods = (methods,)
    out = tuple(ALIASES.get(m, m) for m in methods)
    bad = [m for m in out if m not in METHODS]
    if bad or not out or len(set(out)) != len(out):
        raise ConfigError(f"methods must be distinct names among {METHODS} (or 'vanilla'), got {tuple(methods)!r}")
    return out


def _ci(correct: int, n: int) -> tuple[float, float]:
    from tvlens.stats import wilson_interval

    if int(correct) < 0:  # -1 marks an undefined cell (no FV: no clean prompt answered correctly)
        return math.nan, math.nan
    return wilson_interval(int(correct), int(n))


@dataclass(frozen=True, eq=False, repr=False)
class SweepResult(Result):
    """Accuracy of each method's single-site vector at each layer, with reference lines."""

    task: str
    layers: tuple[int, ...]
    methods: tuple[str, ...]
    correct: Int[torch.Tensor, "method layer"]  # correct test queries
    n_test: int  # zero-shot test queries each accuracy is measured on
    zero_shot_correct: int
    icl_correct: int
    icl_shots: int
    meta: dict  # options used (shots, top_k, config)

    @property
    def accuracy(self) -> torch.Tensor:
        """[method, layer] accuracies."""
        c = self.correct.float()
        return torch.where(c < 0, torch.nan, c / self.n_test)  # NaN: undefined (see meta["fv_undefined"])

    @property
    def zero_shot(self) -> float:
        return self.zero_shot_correct / self.n_test

    @property
    def icl(self) -> float:
        return self.icl_correct / self.n_test

    def at(self, method: str, layer: int) -> float:
        return float(self.accuracy[self.methods.index(ALIASES.get(method, method)), self.layers.index(layer)])

    def to_frame(self):
        """One row per (method, layer): accuracy and its 95% Wilson interval; then the reference lines."""
        import pandas as pd

        rows = []
        for i, m in enumerate(self.methods):
            for j, layer in enumerate(self.layers):
                c = int(self.correct[i, j])
                lo, hi = _ci(c, self.n_test)
                rows.append({"method": m, "layer": layer, "accuracy": c / self.n_test if c >= 0 else math.nan, "ci_low": lo, "ci_high": hi, "n": self.n_test})
        for name, c in (("zero_shot", self.zero_shot_correct), (f"icl_{self.icl_shots}shot", self.icl_correct)):
            lo, hi = _ci(c, self.n_test)
            rows.append({"method": name, "layer": None, "accuracy": c / self.n_test, "ci_low": lo, "ci_high": hi, "n": self.n_test})
        df = pd.DataFrame(rows)
        df["layer"] = df["layer"].astype("Int64")  # integers, blank for the reference lines
        return df

    def plot(self):
        """Accuracy vs layer per method (95% Wilson bands as error bars), zero-shot and ICL as lines."""
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure()
        for m in self.methods:
            d = df[df.method == m]
            fig.add_trace(go.Scatter(x=d.layer, y=d.accuracy, mode="lines+markers", name=LABELS[m],
                                     error_y={"type": "data", "symmetric": False, "array": d.ci_high - d.accuracy,
                                              "arrayminus": d.accuracy - d.ci_low}))
        fig.add_hline(y=self.zero_shot, line_dash="dot", annotation_text="zero-shot")
        fig.add_hline(y=self.icl, line_dash="dash", annotation_text=f"{self.icl_shots}-shot ICL")
        fig.update_layout(title=f"{self.task}: accuracy of a single-site vector (last token) per layer (n={self.n_test})",
                          xaxis_title="layer (blocks.{l}.hook_resid_pre)", yaxis_title="accuracy", yaxis_range=[0, 1.05],
                          xaxis={"tickmode": "array", "tickvals": list(self.layers)})
        return fig

    def payload(self) -> dict:
        """The JSON shape of ``tvlens sweep --json``."""
        return {"task": self.task, "layers": list(self.layers), "n_test": self.n_test,
                "methods": {m: [int(c) / self.n_test if c >= 0 else math.nan for c in self.correct[i]] for i, m in enumerate(self.methods)},
                "methods_ci95": {m: [list(_ci(int(c), self.n_test)) for c in self.correct[i]] for i, m in enumerate(self.methods)},
                "zero_shot": self.zero_shot, "zero_shot_ci95": list(_ci(self.zero_shot_correct, self.n_test)),
                "icl": self.icl, "icl_ci95": list(_ci(self.icl_correct, self.n_test)), "icl_shots": self.icl_shots,
                "options": self.meta}

    def __repr__(self) -> str:
        best = {m: f"{float(self.accuracy[i].max()):.2f}@L{self.layers[int(self.accuracy[i].argmax())]}" for i, m in enumerate(self.methods)}
        return f"SweepResult({self.task!r}, layers={list(self.layers)}, best={best}, zero_shot={self.zero_shot:.2f}, icl={self.icl:.2f})"


def _correct(model, prompts, vector) -> int:
    from tvlens.evaluate import evaluate
    from tvlens.steer import steering

    return evaluate(model, prompts, intervention=steering(model, vector)).correct


@no_type_check  # checks its arguments
def sweep(model, task: Task | str, *, methods: Sequence[str] = ("ltv", "vanilla", "fv"), layers: Iterable[int] | None = None,
          ltv_config: LTVConfig = LTVConfig(), vanilla_shots: int = 5, vanilla_operation: str = "add", fv_shots: int = 10,
          top_k: int = 10, icl_shots: int = 8, seed: int = 0, splits: TaskSplits | None = None,
          executor=None, spec: str | None = None) -> SweepResult:
    """Accuracy per (method, layer) of a fresh single-site vector at each of ``layers`` (default: all).

    ``executor`` (``"local"``/``"ray"``/an Executor, :mod:`tvlens._executor`) with the model's ``spec`` string
    trains the layers' LTVs as parallel jobs (the same vectors); LTVs go through the vector store either way."""
    from tvlens import _progress
    from tvlens.baselines.function_vector import function_vector, head_aie
    from tvlens.baselines.vanilla import vanilla_tv
    from tvlens.evaluate import evaluate
    from tvlens.ltv import train_ltv
    from tvlens.prompts import make_prompts, make_splits
    from tvlens.sites import check_sites, site_grid
    from tvlens.tasks import get as get_task

    task = get_task(task) if isinstance(task, str) else task
    methods = canonical_methods(methods)
    from tvlens._validate import check_layers, is_strict_int

    if layers is not None:  # strictly typed (no "34" -> layers 3 and 4, no 2.5 -> 2), in the given order
        check_layers("sweep", "layers", layers, model.cfg.n_layers)
        layers = [layers] if is_strict_int(layers) else layers
    layers = tuple(range(model.cfg.n_layers)) if layers is None else tuple(int(x) for x in layers)
    if not layers:
        raise ConfigError("layers is empty; give at least one layer, or None for every layer")
    check_sites(site_grid(layers, [-1]), model.cfg.n_layers)
    splits = splits or make_splits(task, seed=seed)
    test = make_prompts(splits, "test", k=0, seed=seed)
    zs = evaluate(model, test).correct
    icl = evaluate(model, make_prompts(splits, "test", k=icl_shots, seed=seed)).correct
    aie, fv_undefined = None, ""
    if "fv" in methods:
        try:
            aie = head_aie(model, task, shots=fv_shots, splits=splits, seed=seed)
        except PromptError as e:  # no clean prompt answered correctly: the FV is undefined (NaN cells)
            fv_undefined = str(e)
    k = min(top_k, model.cfg.n_layers * model.cfg.n_heads)
    ltvs = None
    if executor is not None and "ltv" in methods:
        from tvlens.ltv._parallel import train_ltvs

        ltvs = train_ltvs([(task, site_grid([layer], [-1]), 0, ltv_config, "error", splits) for layer in layers],
                          spec=spec, executor=executor, model=model)
    correct = torch.zeros(len(methods), len(layers), dtype=torch.long)
    bar = _progress.bar(total=len(methods) * len(layers), desc=f"sweep {task.name}", disable=None, leave=False)
    try:
        for j, layer in enumerate(layers):
            for i, m in enumerate(methods):
                if m == "ltv":
                    v = ltvs[j] if ltvs is not None else train_ltv(model, task, layers=[layer], config=ltv_config,
                                                                   splits=splits, progress=False).vector
                elif m == "vanilla_tv":
                    v = vanilla_tv(model, task, layer=layer, shots=vanilla_shots, operation=vanilla_operation, splits=splits, seed=seed)
                elif aie is None:
                    correct[i, j] = -1
                    bar.update()
                    continue
                else:
                    v = function_vector(model, task, layer=layer, top_k=k, aie=aie, seed=seed)
                correct[i, j] = _correct(model, test, v)
                bar.update()
    finally:
        bar.close()
    meta = {"vanilla_shots": vanilla_shots, "vanilla_operation": vanilla_operation, "fv_shots": fv_shots, "top_k": k,
            "ltv_config": ltv_config.to_dict(), "seed": seed, "position": -1}
    if fv_undefined:
        meta["fv_undefined"] = fv_undefined
    if aie is not None:
        meta["fv_top_heads"] = [list(t) for t in aie.top(k)]
    return SweepResult(task.name, layers, methods, correct, len(test), zs, icl, icl_shots, meta)
