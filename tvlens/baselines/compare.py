"""The paper's Table 1: Vanilla TV, FV and LTV under the six scenarios, per task and averaged.

How the baselines are applied where the paper's scenarios go beyond one site (METHOD.md section 1):
    - Vanilla TV is *extracted at the scenario's sites*: at each site (layer, position) its value
      is mean(h_ICL - h_zero-shot) at that layer and position (``operation="add"``).
    - FV is one vector (from the task's head AIE, computed once per task) *added at every site* of
      the scenario (so ``more_layers`` adds it once per layer).
    - ``icl_prompts``: the vectors (Vanilla TV and FV still extracted as in ``baseline``; the LTV
      trained on 8-shot prompts) are added to 8-shot ICL test prompts.
    - Positions a short prompt lacks (toy zero-shot prompts are 3 tokens: -5, -4 and 4) are
      clipped to the prompt (``out_of_range="clip"``) for every method alike.
    No cell is left undefined on the embedded model. Where a model answers none of a task's clean
    FV prompts the FV is undefined: its cells are NaN (``null`` in JSON), the reason is in
    ``meta["fv_undefined"]``, and the FV's dataset average is NaN too. The dataset average is the mean of per-task accuracies (the
    paper's); its 95% interval is the mean of the per-task Wilson bounds, which always contains
    the average and is conservative (wider than an interval for the average of independent
    estimates); a Wilson interval of the pooled counts would not, because the tasks' test sets
    differ in size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Int

from tvlens._result import Result
from tvlens._validate import no_type_check
from tvlens.baselines.sweep import LABELS, canonical_methods
from tvlens.errors import ConfigError, PromptError
from tvlens.ltv._config import LTVConfig
from tvlens.ltv._scenarios import Scenario, paper_scenarios

log = logging.getLogger(__name__)

__all__ = ["PAPER_NAMES", "CompareResult", "compare", "paper_table_scenarios"]

PAPER_NAMES = {"1_mid_last": "baseline", "2_mid_pos4": "p4", "3_mid_last5": "more_positions",
               "4_every4_last": "more_layers", "5_every2_last5": "both", "6_mid_last_8shot": "icl_prompts"}


def paper_table_scenarios(n_layers: int) -> dict[str, Scenario]:
    """The six scenarios under the table's column names (baseline, p4, ..., icl_prompts)."""
    return {PAPER_NAMES[k]: sc for k, sc in paper_scenarios(n_layers).items()}


def _ci(correct: int, n: int) -> tuple[float, float]:
    from tvlens.stats import wilson_interval

    return wilson_interval(int(correct), int(n))


@dataclass(frozen=True, eq=False, repr=False)
class CompareResult(Result):
    """Correct counts [method, scenario, task] on each task's test queries, and the references."""

    tasks: tuple[str, ...]
    scenarios: tuple[str, ...]
    methods: tuple[str, ...]
    correct: Int[torch.Tensor, "method scenario task"]
    n_test: Int[torch.Tensor, " task"]
    zero_shot_correct: Int[torch.Tensor, " task"]
    icl_correct: Int[torch.Tensor, " task"]  # at 8 shots (the icl_prompts scenario's prompts)
    descriptions: tuple[str, ...]  # one per scenario
    meta: dict

    def accuracy(self, method: str, scenario: str, task: str | None = None) -> float:
        """Accuracy of one cell: a task's, or the dataset average (mean over tasks) when ``task`` is None."""
        i, j = self.methods.index(method), self.scenarios.index(scenario)
        c = self.correct[i, j].double()
        acc = torch.where(c < 0, torch.nan, c / self.n_test.double())  # -1: the method was undefined (no FV)
        return float(acc.mean()) if task is None else float(acc[self.tasks.index(task)])

    def ci95(self, method: str, scenario: str, task: str | None = None) -> tuple[float, float]:
        i, j = self.methods.index(method), self.scenarios.index(scenario)
        if task is None:  # the mean of the per-task Wilson bounds: contains the mean accuracy, conservative
            if bool((self.correct[i, j] < 0).any()):
                return math.nan, math.nan
            bounds = [_ci(int(c), int(n)) for c, n in zip(self.correct[i, j], self.n_test)]
            return sum(b[0] for b in bounds) / len(bounds), sum(b[1] for b in bounds) / len(bounds)
        t = self.tasks.index(task)
        if int(self.correct[i, j, t]) < 0:
            return math.nan, math.nan
        return _ci(int(self.correct[i, j, t]), int(self.n_test[t]))

    def table(self, task: str | None = None):
        """The paper's layout: rows Vanilla TV / FV / LTV, columns the scenarios (dataset average by default)."""
        import pandas as pd

        return pd.DataFrame([[self.accuracy(m, s, task) for s in self.scenarios] for m in self.methods],
                            index=[LABELS[m] for m in self.methods], columns=list(self.scenarios))

    def to_frame(self):
        """Long form: one row per (method, scenario, task), task ``"mean"`` = the dataset average."""
        import pandas as pd

        rows = []
        for m in self.methods:
            for s in self.scenarios:
                for t in (*self.tasks, None):
                    lo, hi = self.ci95(m, s, t)
                    n = int(self.n_test.sum()) if t is None else int(self.n_test[self.tasks.index(t)])
                    rows.append({"method": m, "scenario": s, "task": t or "mean", "accuracy": self.accuracy(m, s, t),
                                 "ci_low": lo, "ci_high": hi, "n": n})
        return pd.DataFrame(rows)

    def plot(self):
        """Grouped bars: dataset-average accuracy per scenario and method, with 95% intervals."""
        import plotly.graph_objects as go

        fig = go.Figure()
        for m in self.methods:
            acc = [self.accuracy(m, s) for s in self.scenarios]
            cis = [self.ci95(m, s) for s in self.scenarios]
            fig.add_trace(go.Bar(x=list(self.scenarios), y=acc, name=LABELS[m],
                                 error_y={"type": "data", "symmetric": False, "array": [c[1] - a for a, c in zip(acc, cis)],
                                          "arrayminus": [a - c[0] for a, c in zip(acc, cis)]}))
        zs = float((self.zero_shot_correct.double() / self.n_test.double()).mean())
        fig.add_hline(y=zs, line_dash="dot", annotation_text="zero-shot")
        fig.update_layout(barmode="group", title=f"Dataset-average accuracy over {len(self.tasks)} tasks",
                          yaxis_title="accuracy", yaxis_range=[0, 1.05])
        return fig

    def payload(self) -> dict:
        """The JSON shape of ``tvlens compare --json``."""
        zs = (self.zero_shot_correct.double() / self.n_test.double())
        icl = (self.icl_correct.double() / self.n_test.double())
        return {
            "scenarios": list(self.scenarios),
            "scenario_descriptions": dict(zip(self.scenarios, self.descriptions)),
            "methods": {m: {s: self.accuracy(m, s) for s in self.scenarios} for m in self.methods},
            "methods_ci95": {m: {s: list(self.ci95(m, s)) for s in self.scenarios} for m in self.methods},
            "per_task": {t: {m: {s: self.accuracy(m, s, t) for s in self.scenarios} for m in self.methods} for t in self.tasks},
            "per_task_ci95": {t: {m: {s: list(self.ci95(m, s, t)) for s in self.scenarios} for m in self.methods} for t in self.tasks},
            "n_test": {t: int(n) for t, n in zip(self.tasks, self.n_test)},
            "zero_shot": {t: float(a) for t, a in zip(self.tasks, zs)}, "zero_shot_mean": float(zs.mean()),
            "icl_8shot": {t: float(a) for t, a in zip(self.tasks, icl)}, "icl_8shot_mean": float(icl.mean()),
            "options": self.meta,
        }

    def __repr__(self) -> str:
        cells = ", ".join(f"{m}={self.accuracy(m, self.scenarios[0]):.2f}" for m in self.methods)
        return f"CompareResult({len(self.tasks)} tasks x {len(self.scenarios)} scenarios; {self.scenarios[0]}: {cells})"


@no_type_check  # checks its arguments
def compare(model, tasks: Sequence, *, scenarios: str | Mapping[str, Scenario] = "paper",
            methods: Sequence[str] = ("vanilla_tv", "fv", "ltv"), ltv_config: LTVConfig = LTVConfig(),
            vanilla_shots: int = 5, fv_shots: int = 10, top_k: int = 10, seed: int = 0,
            out_of_range: str = "clip", executor=None, spec: str | None = None) -> CompareResult:
    """Test accuracy of each method under each scenario on each task (see the module doc for the baselines' sites).

    ``executor`` (``"local"``/``"ray"``/an Executor, :mod:`tvlens._executor`) with the model's ``spec`` string
    trains every (task, scenario) LTV as a parallel job first (the same vectors); LTVs go through the vector
    store either way."""
    from tvlens import _progress
    from tvlens.baselines.function_vector import function_vector, head_aie
    from tvlens.baselines.sweep import _correct
    from tvlens.baselines.vanilla import vanilla_tv
    from tvlens.evaluate import evaluate
    from tvlens.ltv import train_ltv
    from tvlens.prompts import make_prompts, make_splits
    from tvlens.tasks import get as get_task

    if scenarios == "paper":
        scenarios = paper_table_scenarios(model.cfg.n_layers)
    elif not isinstance(scenarios, Mapping) or not scenarios or not all(isinstance(s, Scenario) for s in scenarios.values()):
        raise ConfigError("scenarios must be 'paper' or a non-empty {name: tvlens.ltv._scenarios.Scenario} mapping")
    methods = canonical_methods(methods)
    if isinstance(tasks, str):  # iterating it would look up one task per character
        raise ConfigError(f"tasks must be a list of tasks or task names, got the string {tasks!r}; write tasks=[{tasks!r}]")
    tasks = [get_task(t) if isinstance(t, str) else t for t in tasks]
    if not tasks:
        raise ConfigError("tasks is empty; give at least one task name")
    k = min(top_k, model.cfg.n_layers * model.cfg.n_heads)
    names = tuple(scenarios)
    correct = torch.zeros(len(methods), len(names), len(tasks), dtype=torch.long)
    n_test, zs, icl = (torch.zeros(len(tasks), dtype=torch.long) for _ in range(3))
    fv_missing: dict[str, str] = {}
    ltvs = None
    if executor is not None and "ltv" in methods:
        from tvlens.ltv._parallel import train_ltvs

        reqs = [(task, scenarios[n].sites, scenarios[n].shots, ltv_config, out_of_range, make_splits(task, seed=seed))
                for task in tasks for n in names]
        got = train_ltvs(reqs, spec=spec, executor=executor, model=model)
        ltvs = None if got is None else {(t, j): got[t * len(names) + j] for t in range(len(tasks)) for j in range(len(names))}
    bar = _progress.bar(total=len(tasks) * len(names) * len(methods), desc="compare", disable=None, leave=False)
    try:
        for t, task in enumerate(tasks):
            splits = make_splits(task, seed=seed)
            base = make_prompts(splits, "test", k=0, seed=seed)
            n_test[t] = len(base)
            zs[t] = evaluate(model, base).correct
            icl[t] = evaluate(model, make_prompts(splits, "test", k=8, seed=seed)).correct
            aie = None
            if "fv" in methods:
                try:
                    aie = head_aie(model, task, shots=fv_shots, splits=splits, seed=seed)
                except PromptError as e:  # no clean prompt answered correctly: the FV is undefined for this task
                    fv_missing[task.name] = str(e)
                    log.warning("no function vector for %s: %s", task.name, e)
            for j, name in enumerate(names):
                sc = scenarios[name]
                test = make_prompts(splits, "test", k=sc.shots, seed=seed)
                for i, m in enumerate(methods):
                    if m == "ltv" and ltvs is not None:
                        v = ltvs[t, j]
                    elif m == "ltv":
                        v = train_ltv(model, task, sites=sc.sites, shots=sc.shots, config=ltv_config, splits=splits,
                                      out_of_range=out_of_range, progress=False).vector
                    elif m == "vanilla_tv":
                        v = vanilla_tv(model, task, sites=sc.sites, shots=vanilla_shots, splits=splits, seed=seed,
                                       out_of_range=out_of_range)
                    elif aie is None:
                        correct[i, j, t] = -1  # undefined: accuracy NaN, and so the dataset average
                        bar.update()
                        continue
                    else:
                        v = function_vector(model, task, sites=sc.sites, top_k=k, aie=aie, seed=seed, out_of_range=out_of_range)
                    correct[i, j, t] = _correct(model, test, v)
                    bar.update()
    finally:
        bar.close()
    meta = {"vanilla_shots": vanilla_shots, "vanilla_operation": "add", "fv_shots": fv_shots, "top_k": k,
            "ltv_config": ltv_config.to_dict(), "seed": seed, "out_of_range": out_of_range,
            "sites": {n: [str(s) for s in scenarios[n].sites] for n in names},
            "baseline_sites": "vanilla_tv extracted at each scenario site; fv (one vector) added at every scenario site",
            "fv_undefined": fv_missing}
    return CompareResult(tuple(t.name for t in tasks), names, methods, correct, n_test, zs, icl,
                         tuple(scenarios[n].description for n in names), meta)
