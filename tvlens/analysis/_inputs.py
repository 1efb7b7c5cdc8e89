"""Shared inputs of the analyses: a task or prompts -> a PromptSet; a vector -> its injection.

Context:
    Every analysis takes a model, a :class:`~tvlens.vector.TaskVector` and either a task (a
    :class:`~tvlens.tasks.Task` or its name; zero-shot test queries are built from it) or a
    ready :class:`~tvlens.prompts.PromptSet`. :func:`resolve_prompts` turns either into a
    PromptSet; :func:`injection` names the vector's injection layer and positions;
    :func:`run_last` runs the model on a tokenised batch in sub-batches with edits (built per
    sub-batch, so edits that patch from a per-row source stay aligned) and returns the
    final residual stream at each prompt's last token, from which :func:`final_logits` and
    :func:`p_gold` follow.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from jaxtyping import Float

from tvlens._hooks import AddAt, Span
from tvlens._validate import no_type_check
from tvlens.errors import ConfigError
from tvlens._engine import final_logits as final_logits  # re-exported: the analyses' one head on last-token residuals
from tvlens._engine import p_gold as p_gold  # re-exported
from tvlens.prompts import PromptBatch, PromptSet, make_prompts, make_splits
from tvlens.vector import TaskVector

Head = tuple[int, int]


@no_type_check  # checks its arguments
def split_seed(vector, seed: int = 0) -> int:
    """The seed of the task's splits: the vector's own (``meta["split_seed"]``, set by training) when it has one, else ``seed``.

    The one rule every analysis follows, so an analysis of a trained vector reads that vector's held-out test queries.
    """
    meta = getattr(vector, "meta", None) or {}
    return int(meta["split_seed"]) if "split_seed" in meta else int(seed)


def resolve_prompts(task=None, prompts: PromptSet | None = None, *, n: int | None = None, split: str = "test",
                    k: int = 0, seed: int = 0, batch_size: int = 1, vector=None) -> PromptSet:
    """``prompts`` as given, or ``k``-shot prompts of ``task``'s ``split`` queries (the first ``n``).

    The splits' seed is :func:`split_seed` (``vector``'s own when it has one); ``seed`` draws the
    demonstrations. Also checks the options every analysis shares (``n``, ``batch_size``).
    """
    from tvlens._validate import check_int

    if n is not None:
        check_int("", "n", n, min=1)
    check_int("", "batch_size", batch_size, min=1)
    from tvlens.tasks import get as get_task
    from tvlens.tasks._task import Task

    if prompts is not None:
        if task is not None and not isinstance(task, (str, Task)) and not isinstance(task, PromptSet):
            raise ConfigError(f"task must be a tv.tasks.Task or a task name, got {type(task).__name__}")
        if not isinstance(prompts, PromptSet):
            raise ConfigError(f"prompts must be a tv.PromptSet (tv.make_prompts(...)), got {type(prompts).__name__}")
        return prompts if n is None else prompts.subset(slice(0, n))
    if isinstance(task, PromptSet):  # passed positionally where a task was expected
        return task if n is None else task.subset(slice(0, n))
    if task is None:
        raise ConfigError("give a task (tv.tasks.get(...) or its name) or prompts= (a tv.PromptSet of queries)")
    if not isinstance(task, (str, Task)):
        raise ConfigError(f"task must be a tv.tasks.Task or a task name, got {type(task).__name__}; or pass prompts=")
    task = get_task(task) if isinstance(task, str) else task
    return make_prompts(make_splits(task, seed=split_seed(vector, seed)), split, k=k, seed=seed, n=n)


def check_vector(model, vector: TaskVector, task=None, *, what: str = "vector") -> None:
    """The one check of a vector an analysis is about to use (every analysis, baseline and CLI command):
    a TaskVector, finite now (values edited in place after construction included), of this model's
    shape; a vector of another model fingerprint or another task warns (TvlensWarning), never raises."""
    from tvlens.vector import check_vector_use

    if not isinstance(vector, TaskVector):
        raise ConfigError(f"{what} must be a tv.TaskVector (e.g. tv.train_ltv(...).vector), got {type(vector).__name__}")
    check_vector_use(model, vector, task)


def check_prompt_task(model, vector: TaskVector, prompts) -> None:
    """:func:`check_vector` with the task of ``prompts`` (a PromptSet)."""
    check_vector(model, vector, getattr(prompts, "task", None))


def injection(vector: TaskVector) -> tuple[int, tuple[int, ...]]:
    """(first injection layer, positions at that layer) of ``vector``."""
    layer = min(s.layer for s in vector.sites)
    return layer, tuple(s.position for s in vector.sites if s.layer == layer)


def single_layer_theta(vector: TaskVector) -> tuple[int, Float[torch.Tensor, " d_model"]]:
    """(layer, θ) of a vector whose sites all lie in one layer (θ = the sum of its rows, times scale)."""
    layers = vector.layers
    if len(layers) != 1:
        raise ConfigError(f"this analysis needs a vector injected at one layer, got layers {list(layers)}; "
                          "take one layer's sites: tv.TaskVector(values=v.values[i:i+1], sites=v.sites[i:i+1], ...)")
    if vector.operation != "add":
        raise ConfigError("this analysis needs an added vector (operation='add'); OV products of a replaced state are undefined")
    return layers[0], (vector.values.float().sum(0) * vector.scale).detach()


def steer_edit(vector: TaskVector) -> AddAt:
    return AddAt(vector.sites, vector.values.detach(), vector.scale, vector.operation, vector.out_of_range)


def span_of(batch: PromptBatch) -> Span:
    return Span(batch.first_index, batch.last_index)


def check_heads(model, heads, what: str = "heads") -> tuple[Head, ...]:
    """``heads`` as a tuple of (layer, head) pairs inside the model."""
    from tvlens._validate import is_strict_int

    try:
        pairs = [tuple(hd) for hd in heads]
    except TypeError:
        raise ConfigError(f"{what} must be (layer, head) pairs, e.g. [(3, 1), (5, 0)] or a HeadSaliency's .top(0.1)") from None
    bad = [hd for hd in pairs if len(hd) != 2 or not all(is_strict_int(x) for x in hd)]
    if isinstance(heads, (str, bytes)) or bad:
        raise ConfigError(f"{what} must be (layer, head) pairs of integers, e.g. [(3, 1), (5, 0)] or a HeadSaliency's "
                          f".top(0.1); got {bad[0] if bad else heads!r}")
    out = tuple((int(layer), int(h)) for layer, h in pairs)
    cfg = model.cfg
    bad = [hd for hd in out if not (0 <= hd[0] < cfg.n_layers and 0 <= hd[1] < cfg.n_heads)]
    if bad:
        raise ConfigError(f"{what} {bad} are outside this model's {cfg.n_layers} layers x {cfg.n_heads} heads")
    if len(set(out)) != len(out):
        raise ConfigError(f"{what} lists a head twice: {sorted(out)}; give each head once")
    return out


def random_head_sets(pool: Sequence[Head], size: int, n: int, seed: int, exclude: Sequence[Head] = ()) -> list[tuple[Head, ...]]:
    """``n`` random sets of ``size`` heads drawn from ``pool`` (seeded; ``exclude`` left out when possible)."""
    from tvlens._validate import check_int
    from tvlens.errors import DegenerateInputError

    check_int("random heads", "seed", seed)
    check_int("random heads", "n_random", n, min=0)
    rng = random.Random(f"tvlens-random-heads-{seed}")
    rest = [h for h in pool if h not in set(exclude)]
    if len(rest) < size:
        rest = list(pool)
    if n and len(rest) < size:
        raise DegenerateInputError(f"the pool of random heads holds {len(rest)} heads, fewer than the {size} key heads each "
                                   "random set must match; give a larger pool=, fewer key heads (a smaller fraction), "
                                   "or n_random=0")
    return [tuple(sorted(rng.sample(rest, size))) for _ in range(n)]


def heads_from(model, heads, fraction: float = 0.1) -> tuple[Head, ...]:
    """A HeadSaliency (its top ``fraction``) or explicit (layer, head) pairs."""
    if callable(getattr(heads, "top", None)):  # a HeadSaliency (not imported: saliency imports this module)
        return tuple(heads.top(fraction))  # top() checks the fraction
    return check_heads(model, heads)


def pool_heads(model, layer: int) -> tuple[Head, ...]:
    """Every head of layers >= ``layer`` (the heads that can read a vector injected there)."""
    return tuple((l_, h) for l_ in range(layer, model.cfg.n_layers) for h in range(model.cfg.n_heads))
