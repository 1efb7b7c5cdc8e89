"""Steering: run a model with a task vector added at its sites, inside a context manager.

>>> import tvlens as tv
>>> with tv.steer(model, vector):                       # doctest: +SKIP
...     logits = model(tokens)                          # steered
...     out = model.generate("kevi ->", max_new_tokens=3)
>>> # no hook is left on the model here, even if the block raised

Context:
    Positions of a site are resolved per forward call from that call's attention mask (left or
    right padding both work); without a mask every row is taken as unpadded. The vector is
    ADDED to ``blocks.{layer}.hook_resid_pre`` (``operation="replace"`` overwrites instead).

Generation policy (``generation=``):
    ``"prompt"`` (default): the vector is applied at its sites *of the prompt* only; generated
    tokens are not steered directly (they see the steered prompt through attention). This is the
    paper's setting. ``"every_token"``: additionally every generated token is steered at the
    sites with position -1. Both policies give the same tokens with and without the KV cache.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

from tvlens.errors import ConfigError
from tvlens.sites import resolve_columns
from tvlens.vector import TaskVector, check_scale

GenerationPolicy = Literal["prompt", "every_token"]


@dataclass
class _Call:
    """What the hooks need to know about the forward call in flight."""

    offset: int  # absolute index of this call's first column (KV-cache length before the call)
    prompt_first: torch.Tensor  # [batch] absolute column of each prompt's first real token
    prompt_last: torch.Tensor  # [batch] absolute column of each prompt's last real token


def _tokens_and_mask(model, text, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise string input as the model's forward will, and its padding mask (either side)."""
    from transformer_lens import utils

    side = kwargs.get("padding_side", utils.USE_DEFAULT_VALUE)
    bos = kwargs.get("prepend_bos", utils.USE_DEFAULT_VALUE)
    tokens = model.to_tokens(text, prepend_bos=bos, padding_side=side)
    side = model.tokenizer.padding_side if side in (None, utils.USE_DEFAULT_VALUE) else side
    bos = model.cfg.default_prepend_bos if bos in (None, utils.USE_DEFAULT_VALUE) else bos
    return tokens, utils.get_attention_mask(model.tokenizer, tokens, bos, padding_side=side)


def _mask_bounds(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cols = torch.arange(mask.shape[1], device=mask.device)
    real = mask.bool()
    last = torch.where(real, cols, -1).max(-1).values
    first = torch.where(real, cols, mask.shape[1]).min(-1).values
    return first, last


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
    if generation not in ("prompt", "every_token"):
        raise ConfigError(f"generation must be 'prompt' or 'every_token', got {generation!r}")
    vector.check_compatible(model, allow_other_fingerprint=allow_other_fingerprint)
    scale = check_scale(vector.scale if scale is None else scale)
    values = vector.values.to(device=model.cfg.device, dtype=model.cfg.dtype)
    state: dict = {"call": None, "generating": False}
    original_forward, original_generate = model.forward, model.generate

    @functools.wraps(original_forward)
    def forward(input, *args, **kwargs):
        cache = kwargs.get("past_kv_cache")
        offset = int(cache.entries[0].past_keys.shape[1]) if cache is not None else 0
        continuing = state["generating"] and state["call"] is not None
        if not continuing:
            mask = kwargs.get("attention_mask")
            if mask is None:
                if isinstance(input, (str, list)):
                    input, mask = _tokens_and_mask(model, input, kwargs)
                batch, width = input.shape[:2]
                mask = torch.ones(batch, offset + width, dtype=torch.long) if mask is None else mask
            first, last = _mask_bounds(mask)
            state["call"] = _Call(offset, first.cpu(), last.cpu())
        else:
            state["call"] = _Call(offset, state["call"].prompt_first, state["call"].prompt_last)
        return original_forward(input, *args, **kwargs)

    @functools.wraps(original_generate)
    def generate(*args, **kwargs):
        state["generating"], state["call"] = True, None
        try:
            return original_generate(*args, **kwargs)
        finally:
            state["generating"], state["call"] = False, None

    def make_hook(rows: list[int]):
        def hook(resid: torch.Tensor, hook) -> torch.Tensor:
            call: _Call = state["call"]
            batch, width = resid.shape[:2]
            resid = resid.clone()
            for i in rows:
                site = vector.sites[i]
                cols = resolve_columns(site.position, call.prompt_last, call.prompt_first, vector.out_of_range)
                idx = [(b, int(c) - call.offset) for b, c in enumerate(cols.tolist()) if c >= 0 and 0 <= c - call.offset < width]
                if generation == "every_token" and site.position == -1 and state["generating"]:
                    idx += [(b, c) for b in range(batch) for c in range(width)
                            if c + call.offset > int(call.prompt_last[b])]
                if not idx:
                    continue
                b_idx = torch.tensor([b for b, _ in idx], device=resid.device)
                c_idx = torch.tensor([c for _, c in idx], device=resid.device)
                if vector.operation == "replace":
                    resid[b_idx, c_idx] = scale * values[i]
                else:
                    resid[b_idx, c_idx] = resid[b_idx, c_idx] + scale * values[i]
            return resid

        return hook

    by_hook: dict[str, list[int]] = {}
    for i, s in enumerate(vector.sites):
        by_hook.setdefault(s.hook_name, []).append(i)
    fwd_hooks = [(name, make_hook(rows)) for name, rows in by_hook.items()]
    saved = {k: model.__dict__[k] for k in ("forward", "generate") if k in model.__dict__}  # nested steer()
    forward._tvlens_steer = generate._tvlens_steer = (state, saved)
    model.forward, model.generate = forward, generate
    try:
        with model.hooks(fwd_hooks=fwd_hooks):
            yield
    finally:
        state["exited"] = True
        for k, mine in (("forward", forward), ("generate", generate)):
            if model.__dict__.get(k) is not mine:
                continue  # an inner steer() is still open; it skips this one's wrapper when it exits
            restore = saved.get(k)
            while restore is not None and getattr(restore, "_tvlens_steer", ({}, {}))[0].get("exited"):
                restore = restore._tvlens_steer[1].get(k)  # contexts exited out of order: skip closed wrappers
            if restore is not None:
                setattr(model, k, restore)
            else:
                delattr(model, k)  # the class methods show through again
        state["call"] = None

def steering(model, vector: TaskVector, scale: float | None = None, **kw):
    """An ``intervention`` for :func:`tvlens.evaluate`: ``evaluate(..., intervention=steering(model, v))``."""
    check_scale(vector.scale if scale is None else scale)  # fail now, not at the first batch
    fn = lambda batch: steer(model, vector, scale, **kw)  # noqa: E731
    fn.vector = vector  # lets evaluate() warn when the vector was trained on another task
    return fn
