"""Steering: run a model with a task vector added at its sites, inside a context manager.

>>> import tvlens as tv
>>> model = tv.load_model("toy")
>>> vector = tv.train_ltv(model, "toy/antonym", layers=[2], progress=False).vector
>>> with tv.steer(model, vector):
...     out = model.generate("kevi ->", max_new_tokens=1, verbose=False)
>>> out != model.generate("kevi ->", max_new_tokens=1, verbose=False)   # no hook is left here
True
>>> ps = tv.make_prompts(tv.make_splits(tv.tasks.get("toy/antonym")), "test", k=0)
>>> tv.evaluate(model, ps, intervention=tv.steering(model, vector)).accuracy > tv.evaluate(model, ps).accuracy
True

Context:
    Built on :mod:`tvlens.interventions`: the vector is ADDED to ``blocks.{layer}.hook_resid_pre``
    (``operation="replace"`` overwrites instead) through hooks that live only inside the block;
    nothing on the model instance is patched. Positions of a site are resolved per forward call
    from that call's attention mask (left or right padding both work); when TransformerLens uses
    no mask (right padding, no KV cache) trailing pad tokens count as padding.

Generation policy (``generation=``):
    ``"prompt"`` (default): the vector is applied at its sites *of the prompt* only; generated
    tokens are not steered directly (they see the steered prompt through attention). This is the
    paper's setting. ``"every_token"``: additionally every generated token is steered at the
    sites with position -1. Both policies give the same tokens with and without the KV cache.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tvlens._hooks import AddAt, GenerationPolicy, Span, intervene
from tvlens.errors import ConfigError
from tvlens.vector import TaskVector, check_scale

__all__ = ["GenerationPolicy", "steer", "steering"]


def _edit(model, vector: TaskVector, scale: float | None, generation: str, allow_other_fingerprint: bool) -> AddAt:
    if generation not in ("prompt", "every_token"):
        raise ConfigError(f"generation must be 'prompt' or 'every_token', got {generation!r}")
    scale = check_scale(vector.scale if scale is None else scale)
    vector.check_compatible(model, allow_other_fingerprint=allow_other_fingerprint)
    return AddAt(vector.sites, vector.values, scale, vector.operation, vector.out_of_range, generation)


@contextlib.contextmanager
def steer(
    model,
    vector: TaskVector,
    scale: float | None = None,
    *,
    generation: GenerationPolicy = "prompt",
    allow_other_fingerprint: bool = False,
) -> Iterator[None]:
    """Inside the block, every forward pass of ``model`` carries ``scale * vector`` at its sites."""
    with intervene(model, _edit(model, vector, scale, generation, allow_other_fingerprint)):
        yield


class steering:  # noqa: N801  (used like a function: evaluate(..., intervention=steering(model, v)))
    """An ``intervention`` for :func:`tvlens.evaluate`: ``evaluate(..., intervention=steering(model, v))``.

    Called with a prompt batch it returns the context that steers that batch, its prompt spans
    taken from the batch itself.
    """

    def __init__(self, model, vector: TaskVector, scale: float | None = None, *,
                 generation: GenerationPolicy = "prompt", allow_other_fingerprint: bool = False) -> None:
        self.model = model
        self.vector = vector  # lets evaluate() warn when the vector was trained on another task
        self.edit = _edit(model, vector, scale, generation, allow_other_fingerprint)

    def __call__(self, batch=None):
        span = None if batch is None else Span(batch.first_index, batch.last_index)
        return intervene(self.model, self.edit, span=span)

    def __repr__(self) -> str:
        return f"steering({len(self.edit.sites)} sites, scale={self.edit.scale})"
