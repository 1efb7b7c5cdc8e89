"""Behaviour under steering: which option of a ``myopic`` item greedy generations commit to.

``behaviour(model)`` builds each method's vector on the ``myopic`` task (``"ltv"``: trained on the
multi-token sooner responses, teacher-forced; ``"vanilla"`` and ``"fv"``: from ICL prompts;
``"zero_shot"``: no vector), adds it at its site on each zero-shot test prompt's last token,
generates ``max_new_tokens`` greedy tokens (:func:`tvlens._engine_generate.generate`) and judges
the text with the rule-based :func:`tvlens.tasks._judge.judge` (sooner / later / unclear). The
result holds, per method, the counts and Wilson intervals of each verdict, and sample generations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tvlens._result import Result
from tvlens.errors import ConfigError
from tvlens.stats import wilson_interval

log = logging.getLogger(__name__)

METHODS = ("zero_shot", "ltv", "vanilla", "fv")
VERDICTS = ("sooner", "later", "unclear")


@dataclass(frozen=True, eq=False, repr=False)
class BehaviourResult(Result):
    """Per method: how many generations commit to the sooner / later option or neither."""

    task: str
    layer: int
    max_new_tokens: int
    methods: tuple[str, ...]
    counts: tuple[tuple[int, int, int], ...]  # per method: (sooner, later, unclear)
    samples: tuple[tuple[str, str, str, str], ...]  # (method, question, generated text, verdict)

    def fraction(self, method: str, verdict: str = "sooner") -> float:
        c = self.counts[self.methods.index(method)]
        return c[VERDICTS.index(verdict)] / max(sum(c), 1)

    def interval(self, method: str, verdict: str = "sooner") -> tuple[float, float]:
        c = self.counts[self.methods.index(method)]
        return wilson_interval(c[VERDICTS.index(verdict)], sum(c))

    def to_frame(self):
        import pandas as pd

        rows = []
        for m, c in zip(self.methods, self.counts):
            row = {"method": m, "n": sum(c)}
            for v in VERDICTS:
                lo, hi = self.interval(m, v)
                row.update({v: self.fraction(m, v), f"{v}_lo": lo, f"{v}_hi": hi})
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self):
        import plotly.graph_objects as go

        df = self.to_frame()
        fig = go.Figure()
        for v in VERDICTS:
            fig.add_bar(name=v, x=df["method"], y=df[v],
                        error_y={"type": "data", "symmetric": False, "array": df[f"{v}_hi"] - df[v], "arrayminus": df[v] - df[f"{v}_lo"]})
        fig.update_layout(barmode="group", yaxis_title="fraction of generations", title=f"{self.task}: layer {self.layer}")
        return fig

    def payload(self) -> dict:
        return {"task": self.task, "layer": self.layer, "max_new_tokens": self.max_new_tokens,
                "methods": {m: {v: self.fraction(m, v) for v in VERDICTS} | {"n": sum(c), "sooner_interval": list(self.interval(m))}
                            for m, c in zip(self.methods, self.counts)}}

    def text(self) -> str:
        lines = [f"{self.task}, layer {self.layer}, {self.max_new_tokens} greedy tokens (Wilson 95% intervals)"]
        for m, c in zip(self.methods, self.counts):
            parts = [f"{v} {self.fraction(m, v):.2f} [{self.interval(m, v)[0]:.2f}, {self.interval(m, v)[1]:.2f}]" for v in VERDICTS]
            lines.append(f"  {m:<9} n={sum(c):<4} " + "  ".join(parts))
        return "\n".join(lines)


def method_vector(model, method: str, task, splits, *, layer: int, shots: int, seed: int, ltv_config=None,
                  fv_clean: int = 20, fv_corrupt: int = 10, vanilla_prompts: int = 20):
    """The TaskVector of ``method`` at ``layer`` (None for ``"zero_shot"``)."""
    from tvlens.baselines import function_vector, vanilla_tv
    from tvlens.ltv import LTVConfig, train_ltv

    if method == "zero_shot":
        return None
    if method == "ltv":
        return train_ltv(model, task, layers=[layer], config=ltv_config or LTVConfig(), splits=splits, progress=False).vector
    if method == "vanilla":
        return vanilla_tv(model, task, layer=layer, shots=shots, splits=splits, seed=seed, n_prompts=vanilla_prompts)
    if method == "fv":
        return function_vector(model, task, layer=layer, shots=shots, splits=splits, seed=seed, n_clean=fv_clean,
                               n_corrupt=fv_corrupt)
    raise ConfigError(f"unknown method {method!r}; choose from {METHODS}")


def behaviour(model, task: str = "myopic", methods: Sequence[str] = METHODS, *, layer: int | None = None, n: int = 50,
              shots: int = 5, max_new_tokens: int = 32, seed: int = 0, ltv_config=None, batch_size: int = 8,
              n_samples: int = 3, vectors: dict | None = None) -> BehaviourResult:
    """Greedy generations on ``n`` zero-shot test prompts of ``task`` under each method's vector, judged.

    ``vectors`` may give ready TaskVectors by method name (the others are built here).
    """
    from tvlens._engine_generate import generate
    from tvlens._hooks import AddAt
    from tvlens.prompts import make_prompts, make_splits
    from tvlens.tasks import get as get_task
    from tvlens.tasks._judge import judge
    from tvlens.tasks._myopic import item_for

    if task != "myopic":
        raise ConfigError(f"behaviour has a judge for the 'myopic' task only, got {task!r}")
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"methods {list(methods)}: choose from {METHODS}")
    t = get_task(task)
    layer = model.cfg.n_layers // 2 if layer is None else layer
    splits = make_splits(t, seed=seed)
    ps = make_prompts(splits, "test", k=0)
    ps = ps.subset(slice(0, min(n, len(ps))))
    counts, samples = [], []
    for m in methods:
        vec = (vectors or {}).get(m) or method_vector(model, m, t, splits, layer=layer, shots=shots, seed=seed,
                                                      ltv_config=ltv_config)
        edits = [] if vec is None else [AddAt(vec.sites, vec.values, vec.scale, vec.operation, vec.out_of_range)]
        c = {v: 0 for v in VERDICTS}
        for start in range(0, len(ps), batch_size):
            sub = ps.subset(slice(start, start + batch_size))
            out = generate(model, sub.tokenize(model, padding_side="left"), edits, max_new_tokens=max_new_tokens)
            for q, ids in zip(sub.queries, out.tolist()):
                text = model.tokenizer.decode(ids)
                verdict = judge(text, item_for(q.inputs["x"]))
                c[verdict] += 1
                if sum(1 for s in samples if s[0] == m) < n_samples:
                    samples.append((m, q.inputs["x"], text, verdict))
        log.info("behaviour %s: %s", m, c)
        counts.append(tuple(c[v] for v in VERDICTS))
    return BehaviourResult(task, layer, max_new_tokens, tuple(methods), tuple(counts), tuple(samples))


# --- the registry's declaration (tvlens analyze behaviour) ---

from dataclasses import field as _field  # noqa: E402

from tvlens.analysis._registry import Analysis, Options, register  # noqa: E402


@dataclass(frozen=True)
class BehaviourOptions(Options):
    """Options of ``tvlens analyze behaviour``."""

    tokens: int = _field(default=32, metadata={"help": "greedy tokens generated per prompt (default 32)", "min": 1})
    shots: int = _field(default=5, metadata={"help": "ICL shots for the Vanilla TV and FV, >= 2: the FV's corrupted prompts "
                                                      "shuffle the demonstrations' labels (default 5)", "min": 2})


def _run_behaviour(ctx, opts: BehaviourOptions):
    # the myopic task has its own judge: --task is not used; --layer and --n are
    return behaviour(ctx.model, "myopic", layer=ctx.layer, n=ctx.n or 50, shots=opts.shots, max_new_tokens=opts.tokens,
                     seed=ctx.seed)


register(Analysis("behaviour", BehaviourOptions, _run_behaviour, BehaviourResult, "Behaviour (myopic choices)", "Baselines",
                  "Greedy generations on the myopic task under LTV, Vanilla TV and FV, judged sooner / later / unclear.",
                  order=90, report=False))
