"""Attention sinks: where key heads look from the last token, compared with random heads.

Context:
    One forward pass with θ injected caches every head's attention pattern; from the last query
    position N of each prompt the attention to every key position is read, aligned from the end
    (offset 0 = N, 1 = N-1, ...; left or right padding alike) and averaged over prompts (each
    offset over the prompts long enough to have it). ``sink_mass[l, h]`` is the mean attention
    from N to the first token (BOS: the usual attention sink) and ``final_mass[l, h]`` the mean
    attention to the positions where θ sits (the vector's sites at its injection layer, -1 by
    default), for EVERY head. Key heads are compared with ``n_random`` random sets of the same
    size (seeded); the layer histogram of the key heads shows where they cluster (paper: just
    after the injection layer, and in the last layers).

>>> import tvlens as tv
>>> from tvlens.analysis import attention_sinks
>>> model = tv.load_model("toy")
>>> v = tv.train_ltv(model, "toy/antonym", progress=False).vector
>>> res = attention_sinks(model, v, "toy/antonym", [(3, 0), (4, 1)])
>>> res.sink_mass.shape == (model.cfg.n_layers, model.cfg.n_heads)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tvlens import _engine as engine
from tvlens._result import Result
from tvlens._validate import check_float, check_int, no_type_check
from tvlens.analysis._inputs import (check_heads, check_vector, heads_from, injection, pool_heads, random_head_sets,
                                     resolve_prompts, steer_edit)
from tvlens.errors import ConfigError
from tvlens.sites import resolve_columns
from tvlens.vector import TaskVector

__all__ = ["SinkResult", "attention_sinks"]


@dataclass(frozen=True, eq=False, repr=False)
class SinkResult(Result):
    """Attention from the last token, per head, with key heads vs random heads."""

    task: str
    layer: int  # injection layer
    key_heads: tuple  # (layer, head) pairs
    random_heads: tuple  # random sets of the same size
    profile: Float[torch.Tensor, "layer head offset"]  # mean attention from N to position N - offset
    counts: Int[torch.Tensor, " offset"]  # prompts having each offset
    sink_mass: Float[torch.Tensor, "layer head"]  # mean attention from N to the first token (BOS)
    final_mass: Float[torch.Tensor, "layer head"]  # mean attention from N to θ's positions
    n: int  # prompts

    def _mean_over(self, heads) -> torch.Tensor:
        if not heads:
            return torch.full(self.profile.shape[-1:], float("nan"))
        idx = torch.tensor(list(heads))
        return self.profile[idx[:, 0], idx[:, 1]].mean(0)  # [offset]

    @property
    def key_profile(self) -> Float[torch.Tensor, " offset"]:
        return self._mean_over(self.key_heads)

    @property
    def random_profile(self) -> Float[torch.Tensor, " offset"]:
        """Mean over the random sets of each set's mean profile."""
        return torch.stack([self._mean_over(hs) for hs in self.random_heads]).mean(0) if self.random_heads else self._mean_over(())

    def group_mass(self) -> dict:
        """Mean sink and final-position mass of the key heads and of the random heads."""
        def mass(t, heads):
            return float(torch.stack([t[a, b] for a, b in heads]).mean()) if heads else float("nan")
        rand = [hd for hs in self.random_heads for hd in hs]
        return {"key_sink": mass(self.sink_mass, self.key_heads), "key_final": mass(self.final_mass, self.key_heads),
                "random_sink": mass(self.sink_mass, rand), "random_final": mass(self.final_mass, rand)}

    def layer_histogram(self) -> Int[torch.Tensor, " layer"]:
        """Number of key heads in each layer."""
        hist = torch.zeros(self.sink_mass.shape[0], dtype=torch.long)
        for lay, _ in self.key_heads:
            hist[lay] += 1
        return hist

    def to_frame(self):
        """One row per head: layer, head, sink_mass, final_mass, key."""
        import pandas as pd

        n_layers, n_heads = self.sink_mass.shape
        key = set(map(tuple, self.key_heads))
        rows = [(lay, h) for lay in range(n_layers) for h in range(n_heads)]
        return pd.DataFrame({"layer": [r[0] for r in rows], "head": [r[1] for r in rows],
                             "sink_mass": [float(self.sink_mass[r]) for r in rows], "final_mass": [float(self.final_mass[r]) for r in rows],
                             "key": [r in key for r in rows]})

    def profile_frame(self):
        """Long frame of the aligned attention profiles: group ("key" / "random"), offset, attention."""
        import pandas as pd

        k, r = self.key_profile, self.random_profile
        off = list(range(len(k)))
        return pd.DataFrame({"group": ["key"] * len(off) + ["random"] * len(off), "offset": off * 2,
                             "attention": k.tolist() + r.tolist(), "prompts": self.counts.tolist() * 2})

    def plot(self):
        """Left: attention from N to N - offset, key vs random heads; right: layers of the key heads."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("attention from the last token", "key heads per layer"))
        off = list(range(len(self.counts)))
        labels = ["N" if o == 0 else f"N-{o}" for o in off]
        fig.add_trace(go.Scatter(x=labels, y=self.key_profile.tolist(), mode="lines+markers", name="key heads"), 1, 1)
        fig.add_trace(go.Scatter(x=labels, y=self.random_profile.tolist(), mode="lines+markers", name="random heads"), 1, 1)
        fig.add_trace(go.Bar(x=list(range(len(self.layer_histogram()))), y=self.layer_histogram().tolist(), name="key heads",
                             showlegend=False), 1, 2)
        from tvlens._plot import integer_axis

        fig.add_vline(x=self.layer, line_dash="dash", row=1, col=2)
        # short axis titles: a long one is centred on its subplot and runs off the page's left edge
        fig.update_xaxes(title_text="key position (N = last token)", row=1, col=1)
        fig.update_yaxes(title_text="attention", row=1, col=1)
        fig.update_xaxes(title_text="layer (dashed: injection)", row=1, col=2)
        fig.update_yaxes(title_text="key heads", row=1, col=2)
        integer_axis(fig, "x", row=1, col=2)
        integer_axis(fig, "y", row=1, col=2)  # counts of heads
        fig.update_layout(title=f"Attention sinks, {self.task} θ@L{self.layer} (n={self.n}; the farthest key is BOS "
                                "for the longest prompt)", margin={"l": 70, "r": 30})
        return fig

    def __repr__(self) -> str:
        m = self.group_mass()
        return (f"SinkResult({self.task!r} θ@L{self.layer}, {len(self.key_heads)} key heads: sink {m['key_sink']:.2f} vs "
                f"random {m['random_sink']:.2f}, final {m['key_final']:.2f} vs random {m['random_final']:.2f})")


@no_type_check  # checks its arguments
def attention_sinks(model, vector: TaskVector, task=None, key_heads=None, *, prompts=None, n_random: int = 5, seed: int = 0,
                    fraction: float = 0.1, pool=None, n: int | None = None, batch_size: int = 64) -> SinkResult:
    """Attention from the last token for every head (θ injected); key heads vs ``n_random`` random sets."""
    from tvlens.analysis.saliency import HeadSaliency

    check_int("attention_sinks", "n_random", n_random, min=0)
    check_int("attention_sinks", "seed", seed)
    check_float("attention_sinks", "fraction", fraction, min=0, max=1)
    check_vector(model, vector)
    if key_heads is None:
        raise ConfigError("give the key heads: (layer, head) pairs or a HeadSaliency (head_saliency(...)), whose top fraction is taken")
    layer, positions = injection(vector)
    key = heads_from(model, key_heads, fraction)
    if pool is None:
        pool = key_heads.ranked() if isinstance(key_heads, HeadSaliency) else pool_heads(model, layer)
    sets = random_head_sets(check_heads(model, pool, "pool"), len(key), n_random, seed, exclude=key)
    ps = resolve_prompts(task, prompts, n=n, seed=seed, batch_size=batch_size, vector=vector)
    vector.check_task(ps.task)
    batch = ps.tokenize(model)
    cfg = model.cfg
    names = [f"blocks.{lay}.attn.hook_pattern" for lay in range(cfg.n_layers)]
    _, acts = engine.forward(model, batch, [steer_edit(vector)], batch_size=batch_size, names=names)
    att = torch.stack([acts[nm] for nm in names], 1)  # [batch, layer, head, key pos]: from each prompt's last token
    b, width = len(batch), att.shape[-1]
    rows = torch.arange(b)
    last, first = batch.last_index, batch.first_index
    offsets = torch.arange(width)
    cols = last[:, None] - offsets[None]  # [batch, offset]: the key column at each offset from the end
    have = cols >= first[:, None]  # inside the prompt
    gathered = att.gather(-1, cols.clamp(min=0)[:, None, None, :].expand(-1, cfg.n_layers, cfg.n_heads, -1))  # [b, layer, head, offset]
    gathered = gathered * have[:, None, None, :]
    counts = have.sum(0)  # [offset]
    keep = int((counts > 0).sum())
    profile = (gathered.sum(0) / counts.clamp(min=1))[..., :keep]  # [layer, head, offset]
    sink = att[rows, :, :, first].mean(0)  # [layer, head]
    theta_cols = torch.stack([resolve_columns(p, last, first, "clip") for p in positions], 1)  # [batch, site]
    final = att.gather(-1, theta_cols[:, None, None, :].expand(-1, cfg.n_layers, cfg.n_heads, -1)).sum(-1).mean(0)  # [layer, head]
    return SinkResult(ps.task.name, layer, tuple(key), tuple(sets), profile.cpu(), counts[:keep].cpu(), sink.cpu(), final.cpu(), b)


# --- the registry's declaration (tvlens analyze sinks, the report's section, the circuit's columns) ---

from dataclasses import field as _field  # noqa: E402

from tvlens.analysis._registry import Analysis, Options, register  # noqa: E402


@dataclass(frozen=True)
class SinkOptions(Options):
    """Options of ``tvlens analyze sinks``."""

    fraction: float = _field(default=0.1, metadata={"help": "share of heads called key heads, in (0, 1] (default 0.1)", "min": 0, "max": 1,
                                           "min_exclusive": True})
    n_random: int = _field(default=5, metadata={"help": "random head sets (default 5)", "min": 1})


def _run_sinks(ctx, opts: SinkOptions):
    return attention_sinks(ctx.model, ctx.vector, prompts=ctx.prompts, key_heads=ctx.key_heads(opts.fraction),
                           n_random=opts.n_random, seed=ctx.seed)


register(Analysis("sinks", SinkOptions, _run_sinks, SinkResult, "Attention sinks", "Heads",
                  "Attention from the last position, key vs random heads.", order=40,
                  head_columns=lambda r: {"sink_mass": r.sink_mass, "final_mass": r.final_mass}))
