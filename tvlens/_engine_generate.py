"""Greedy generation through the engine, with steering edits.

``generate(model, batch, edits, max_new_tokens=...)`` runs the left-padded prompts once (the
edits see the prompt span, so a site at position -1 is each prompt's last token) and then one new
token at a time on TransformerLens's key-value cache; every row runs the same number of steps.
``every_generated`` edits (e.g. :class:`AddToGenerated`) also act on each generated column.
Tests check batched left-padded output against each prompt generated alone, and the cached loop
against full forwards of the growing sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tvlens._engine import to_model
from tvlens._hooks import Edit, Span, intervene
from tvlens.errors import ConfigError
from tvlens.prompts import PromptBatch


@dataclass(frozen=True, eq=False)
class AddToGenerated(Edit):
    """``scale * value`` added at ``hook`` on every column after the prompt (generated tokens)."""

    hook: str
    value: Float[torch.Tensor, " d_model"]
    scale: float = 1.0

    def hook_names(self, model) -> tuple[str, ...]:
        return (self.hook,)

    def apply(self, name, act, pos):
        cols = pos.offset + torch.arange(pos.width)
        gen = (cols[None] > pos.span.last[:, None]).to(act.device)[..., None]  # [batch, pos, 1]
        if not bool(gen.any()):
            return None
        return act + gen * (self.scale * self.value).to(device=act.device, dtype=act.dtype)


def generate(model, batch: PromptBatch, edits: Sequence[Edit] = (), *, max_new_tokens: int = 32,
             use_cache: bool = True) -> Int[torch.Tensor, "batch new"]:
    """Greedy continuation tokens of every prompt of ``batch`` (left padding), ``edits`` installed.

    ``use_cache=False`` recomputes the whole sequence each step (the oracle of the cached loop).
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch.padding_side != "left":
        raise ConfigError("generate needs left-padded prompts; tokenize with padding_side='left'")
    from tvlens import _backend

    if use_cache and _backend.kv_cache_unsupported_reason(model) is not None:
        use_cache = False  # the backend would ignore past_kv_cache: each step would see only the new token
    span = Span(batch.first_index, batch.last_index)
    tokens, mask = batch.tokens, batch.attention_mask
    new: list[torch.Tensor] = []
    with torch.no_grad(), intervene(model, *edits, span=span):
        if use_cache:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            cache = TransformerLensKeyValueCache.init_cache(model.cfg, model.cfg.device, len(batch))
            logits = model(to_model(model, tokens), attention_mask=to_model(model, mask), past_kv_cache=cache)
            for step in range(max_new_tokens):
                nxt = logits[:, -1].argmax(-1)
                new.append(nxt.cpu())
                if step + 1 == max_new_tokens:
                    break
                one = torch.ones(len(batch), 1, dtype=mask.dtype)
                logits = model(to_model(model, nxt[:, None]), attention_mask=to_model(model, one), past_kv_cache=cache)
        else:
            for _ in range(max_new_tokens):
                logits = model(to_model(model, tokens), attention_mask=to_model(model, mask))
                nxt = logits[:, -1].argmax(-1).cpu()
                new.append(nxt)
                tokens = torch.cat([tokens, nxt[:, None]], 1)
                mask = torch.cat([mask, torch.ones(len(batch), 1, dtype=mask.dtype)], 1)
    return torch.stack(new, 1)
