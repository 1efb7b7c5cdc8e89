"""OV reconstruction with a scale α: the reconstruction times α, α chosen on validation queries.

Context:
    The OV reconstruction (:func:`~tvlens.analysis.ov.ov_reconstruction`, final residual;
    :func:`~tvlens.analysis.ov_layers.ov_layer_reconstruction`, per layer) adds a fixed shift to
    the zero-shot run. On a generation task whose answer depends on the query no constant shift of
    the final state can be right; on a classification task one can. Its size, though, is set by
    the products as they are (ln1's scale at θ's position, the attention from N to N), so a
    reconstruction pointing the right way may still be too weak or too strong. This analysis
    multiplies it by α from a grid, picks α on the *validation* queries (most correct; ties: the
    α nearest 1 on a log scale) and reports accuracy on the *test* queries, at α = 1 and at that α.

    Readings (:data:`VARIANTS`): ``variant_a`` (final residual + α Σ products), ``variant_a_weighted``
    (each product weighted by its head's attention from N to θ's position), ``per_layer`` and
    ``per_layer_weighted`` (every head's product, times α, added to its own layer's attention
    output at N; the run continues). Conditions: ``zero_shot``, ``ltv`` and, per reading,
    ``<reading>_alpha1`` and ``<reading>_best``, all on the same test queries (Wilson intervals
    from :class:`~tvlens._result.ConditionAccuracy`). ``test_correct`` / ``val_correct`` hold the
    whole grid [reading, α]. α = 1 is always in the grid.

>>> import tvlens as tv
>>> from tvlens.analysis.ov_scale import ov_scale
>>> model = tv.load_model("toy")
>>> v = tv.train_ltv(model, "toy/sentiment", layers=[2], progress=False).vector
>>> r = ov_scale(model, v, "toy/sentiment", n=16, n_val=16, alphas=(0.0, 1.0, 4.0))
>>> r.alphas, r.conditions[:4]
((0.0, 1.0, 4.0), ('zero_shot', 'ltv', 'variant_a_alpha1', 'variant_a_best'))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Int

from tvlens import _engine as engine
from tvlens._result import ConditionAccuracy
from tvlens._validate import no_type_check
from tvlens.analysis._inputs import resolve_prompts
from tvlens.analysis._registry import Analysis, Options, register
from tvlens.analysis.ov import final_residual_terms, reconstruction_inputs
from tvlens.analysis.ov_layers import layer_writes
from tvlens.errors import ConfigError
from tvlens.vector import TaskVector

__all__ = ["OVScale", "ov_scale"]

VARIANTS = ("variant_a", "variant_a_weighted", "per_layer", "per_layer_weighted")
DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
CONDITIONS = ("zero_shot", "ltv") + tuple(f"{v}_{s}" for v in VARIANTS for s in ("alpha1", "best"))


@dataclass(frozen=True, eq=False, repr=False)
class OVScale(ConditionAccuracy):
    """Test accuracy of the OV reconstruction at α = 1 and at the α chosen on validation queries (module docstring)."""

    layer: int  # θ's injection layer l
    ln: str
    alphas: tuple[float, ...]  # the grid, ascending, 1.0 included
    variants: tuple[str, ...]
    best_alpha: tuple[float, ...]  # per reading, chosen on the validation queries
    test_correct: Int[torch.Tensor, "variant alpha"]  # test queries answered correctly per reading and α
    val_correct: Int[torch.Tensor, "variant alpha"]  # the same on the validation queries
    n_val: int
    val_zero_shot: int  # validation queries correct zero-shot
    val_ltv: int  # ... and with θ injected

    @classmethod
    def declared_dims(cls, fields: dict) -> dict[str, int]:
        v, a = fields.get("variants"), fields.get("alphas")
        return {**super().declared_dims(fields), **({"variant": len(v)} if isinstance(v, (list, tuple)) else {}),
                **({"alpha": len(a)} if isinstance(a, (list, tuple)) else {})}

    def best(self, variant: str) -> float:
        """The α chosen on the validation queries for ``variant``."""
        return self.best_alpha[self._variant(variant)]

    def curve(self, variant: str, split: str = "test") -> list[float]:
        """Accuracy of ``variant`` at every α of the grid, on the test or the validation queries."""
        if split not in ("test", "val"):
            raise ConfigError(f"split must be 'test' or 'val', got {split!r}")
        counts, n = (self.test_correct, self.n) if split == "test" else (self.val_correct, self.n_val)
        return [int(k) / n for k in counts[self._variant(variant)]]

    def _variant(self, variant: str) -> int:
        if variant not in self.variants:
            raise ConfigError(f"unknown reading {variant!r}; the readings are {list(self.variants)}")
        return self.variants.index(variant)

    def text(self) -> str:
        lines = [super().text(), f"  α grid {list(self.alphas)}; chosen on {self.n_val} validation queries:"]
        lines += [f"  {v}: α={self.best(v):g} (val {max(self.curve(v, 'val')):.3f})" for v in self.variants]
        return "\n".join(lines)

    def __repr__(self) -> str:
        parts = " ".join(f"{v}={self.accuracy(v + '_alpha1'):.2f}/{self.accuracy(v + '_best'):.2f}@{self.best(v):g}" for v in self.variants)
        return f"OVScale({self.task!r} θ@L{self.layer}: ltv={self.accuracy('ltv'):.2f} zero_shot={self.accuracy('zero_shot'):.2f} {parts})"


def check_alphas(alphas) -> tuple[float, ...]:
    """The grid as ascending unique floats with 1.0 added; every α finite and >= 0."""
    try:
        vals = [float(a) for a in alphas]
    except (TypeError, ValueError):
        raise ConfigError(f"alphas must be a sequence of numbers >= 0, e.g. (0, 0.5, 1, 2, 4), got {alphas!r}") from None
    bad = [a for a in vals if not math.isfinite(a) or a < 0]
    if bad:
        raise ConfigError(f"alphas must be finite and >= 0, got {bad}; e.g. alphas=(0, 0.5, 1, 2, 4)")
    return tuple(sorted(set(vals) | {1.0}))


def choose_alpha(alphas: tuple[float, ...], counts: list[int]) -> float:
    """The α with the most correct queries; ties go to the α nearest 1 on a log scale (α = 0 farthest)."""
    return min(zip(alphas, counts), key=lambda ac: (-ac[1], abs(math.log(ac[0])) if ac[0] > 0 else math.inf))[0]


def _grid(model, vector: TaskVector, ps, ln: str, alphas, batch_size: int, budget) -> tuple[int, int, list[list[int]]]:
    """(zero-shot count, LTV count, counts [reading][α]) on the prompts ``ps``."""
    fr = final_residual_terms(model, vector, ps, ln, batch_size)
    lw = layer_writes(model, vector, ps, [], ln, batch_size)
    rows = [[fr.correct(fr.r0 + a * fr.rec) for a in alphas], [fr.correct(fr.r0 + a * fr.rec_w) for a in alphas],
            [lw.correct(lw.edits("all_heads", a), budget) for a in alphas],
            [lw.correct(lw.edits("all_heads_weighted", a), budget) for a in alphas]]  # in VARIANTS' order
    return fr.correct(fr.r0), fr.correct(fr.r1), rows


@no_type_check  # checks its arguments
def ov_scale(model, vector: TaskVector, task=None, *, prompts=None, val_prompts=None, n: int | None = None,
             n_val: int | None = None, seed: int = 0, alphas=DEFAULT_ALPHAS, ln: Literal["folded", "actual"] = "actual",
             batch_size: int = 64, budget: engine.Budget = engine.Budget()) -> OVScale:
    """OV reconstruction times α, α chosen on validation queries, accuracy on test queries (module docstring).

    ``prompts`` / ``n``: the zero-shot test queries (default: the task's test split, the vector's
    own split seed); ``val_prompts`` / ``n_val``: the validation queries (default: the same
    task's validation split).
    """
    grid = check_alphas(alphas)
    layer, _, ps = reconstruction_inputs("ov_scale", "the scaled OV reconstruction", model, vector, task, prompts, ln, n,
                                         batch_size, seed)
    vs = resolve_prompts(ps.task if val_prompts is None else task, val_prompts, n=n_val, split="val", seed=seed,
                         batch_size=batch_size, vector=vector)
    vector.check_task(vs.task)
    val0, val1, val = _grid(model, vector, vs, ln, grid, batch_size, budget)
    zero, ltv, test = _grid(model, vector, ps, ln, grid, batch_size, budget)
    best = tuple(choose_alpha(grid, row) for row in val)
    one = grid.index(1.0)
    counts = [zero, ltv]
    for i, b in enumerate(best):
        counts += [test[i][one], test[i][grid.index(b)]]
    return OVScale(ps.task.name, CONDITIONS, torch.tensor(counts), len(ps), layer, ln, grid, VARIANTS, best,
                   torch.tensor(test), torch.tensor(val), len(vs), val0, val1)


# --- the registry's declaration: tvlens analyze ov_scale, the report's section, Circuit.analysis("ov_scale") ---


@no_type_check  # Options checks its fields (the CLI gives the grid as a list; Options makes it a tuple)
@dataclass(frozen=True)
class OVScaleOptions(Options):
    """Options of ``tvlens analyze ov_scale``."""

    alphas: tuple[float, ...] = field(default=DEFAULT_ALPHAS, metadata={"help": "the α grid (1 is always added)", "min": 0})
    n_val: int | None = field(default=None, metadata={"help": "validation queries that choose α (default: all)", "min": 1})
    ln: Literal["folded", "actual"] = field(default="actual", metadata={"help": "ln1 scale of the products: actual (default) or folded"})


def _run(ctx, opts: OVScaleOptions) -> OVScale:
    from tvlens.prompts import make_prompts

    val = make_prompts(ctx.splits, "val", k=0, seed=ctx.seed, n=opts.n_val)
    return ov_scale(ctx.model, ctx.vector, prompts=ctx.prompts, val_prompts=val, alphas=opts.alphas, ln=opts.ln)


register(Analysis("ov_scale", OVScaleOptions, _run, OVScale, "OV reconstruction with a scale", "Heads",
                  "The OV reconstruction (final residual, variant A plain and attention-weighted; per layer, every head) "
                  "times α, α chosen on validation queries, against the LTV and zero-shot on the same test queries.",
                  order=55))
