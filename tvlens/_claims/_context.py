"""What the claims share: one analysis context per task, the sweeps, the comparison, each computed once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tvlens._memo import Memo
from tvlens.analysis import AnalysisContext, as_results, default_layers, get_analysis

__all__ = ["ClaimsContext", "default_tasks"]


def default_tasks(model) -> tuple[str, ...]:
    """A generation task and a second task: toy/antonym and toy/sentiment on the embedded model, else capitalize and antonym."""
    if getattr(model.cfg, "model_name", "") == "tvlens-toy":
        return ("toy/antonym", "toy/sentiment")
    return ("capitalize", "antonym")


@dataclass
class ClaimsContext(Memo):
    """The model, the tasks (the first is the one the per-head and per-layer claims analyse), and caches."""

    model: Any
    model_name: str
    tasks: tuple  # tv.tasks.Task objects
    layer: int  # the LTV layer of the per-head claims (default: the middle layer)
    seed: int = 0
    n: int | None = None
    cache: dict = field(default_factory=dict)
    executor: Any = None  # where the sweeps' and the comparison's LTVs train (tvlens._executor); None: this process
    spec: str | None = None  # the model's spec string, which workers load (needed with an executor)

    @property
    def task(self):
        return self.tasks[0]

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    def analysis_context(self, task=None) -> AnalysisContext:
        task = self.task if task is None else task
        return self.once(("ctx", task.name), lambda: AnalysisContext(self.model, self.model_name, task, self.layer,
                                                                       seed=self.seed, n=self.n, fraction=self.fraction))

    @property
    def fraction(self) -> float:
        """Share of heads called key heads: the paper's 10% of the heads that read θ, and at least 3 of them."""
        pool = (self.n_layers - self.layer) * int(self.model.cfg.n_heads)
        return min(1.0, max(0.1, 3 / pool))

    def analysis(self, name: str, task=None) -> tuple:
        """The results of registered analysis ``name`` (default options) on ``task`` (default: the first)."""
        import dataclasses

        ctx = self.analysis_context(task)

        def run():
            spec = get_analysis(name)
            fields = {f.name for f in dataclasses.fields(spec.options)}
            options = spec.options(**({"fraction": self.fraction} if "fraction" in fields else {}))  # the claims' key-head share
            return as_results(spec.run(ctx, options))

        return self.once(("analysis", name, ctx.task.name), run)

    def layers(self) -> list[int]:
        return default_layers(self.n_layers)

    def sweep(self, task):
        from tvlens.baselines import sweep

        return self.once(("sweep", task.name), lambda: sweep(self.model, task, layers=self.layers(), seed=self.seed,
                                                           executor=self.executor, spec=self.spec))

    def compare(self):
        from tvlens.baselines import compare

        return self.once("compare", lambda: compare(self.model, list(self.tasks), seed=self.seed, executor=self.executor,
                                                      spec=self.spec))

    def rotation(self):
        """Rotation vs stretch of the first task's per-layer LTVs, with the logit lens for the ICL layer."""
        def compute():
            import dataclasses

            # the registered analysis's result (the report's rotation section reads the same one: the per-layer
            # linear fits run once), with the ICL layer the lens measured
            (rot,) = self.analysis("rotation")
            lens = self.analysis("lens")[0]
            return dataclasses.replace(rot, icl_layer=lens.icl_beats_zero_shot_layer)

        return self.once("rotation", compute)
