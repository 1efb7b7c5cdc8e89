"""Decoded tokens of task vectors: the top tokens of ``W_U ln_final(v)`` or ``W_U v`` (the paper's Figure 7B).

Public through :mod:`tvlens.analysis.lens`; see ``docs/analysis-lens.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tvlens._result import Result
from tvlens.errors import ConfigError

__all__ = ["DecodedTokens", "decoded_tokens"]


@dataclass(frozen=True, eq=False, repr=False)
class DecodedTokens(Result):
    """Top-k tokens of each vector read through the unembedding (the paper's Figure 7B)."""

    labels: tuple[str, ...]  # one per vector row, e.g. "L3@-1"
    token_ids: Int[torch.Tensor, "row k"]
    tokens: tuple[tuple[str, ...], ...]
    scores: Float[torch.Tensor, "row k"]  # the logit (without b_U) of each top token
    through_ln: bool

    def __repr__(self) -> str:
        return f"DecodedTokens({len(self.labels)} vectors, k={self.token_ids.shape[1]}, through_ln={self.through_ln})"

    def to_frame(self):
        """One row per vector: its label and its top tokens, best first."""
        import pandas as pd

        return pd.DataFrame({"vector": list(self.labels), "top_tokens": [" | ".join(map(repr, t)) for t in self.tokens]})

    def long_frame(self):
        """One row per (vector, rank): token, token_id, score."""
        import pandas as pd

        return pd.DataFrame([{"vector": lab, "rank": r, "token": tok, "token_id": int(self.token_ids[i, r]),
                              "score": float(self.scores[i, r])}
                             for i, lab in enumerate(self.labels) for r, tok in enumerate(self.tokens[i])])


def decoded_tokens(model, vectors, k: int = 10, *, through_ln: bool = True) -> DecodedTokens:
    """Top-``k`` tokens of ``W_U ln_final(v)`` (``through_ln=False``: of ``W_U v``), no ``b_U``.

    ``vectors``: a TaskVector (one row per site), a sequence of them, a ``{label: TaskVector or
    tensor}`` mapping or a [row, d_model] tensor.
    """
    from tvlens._validate import check_int
    from tvlens.vector import TaskVector

    check_int("decoded_tokens", "k", k, min=1, max=model.cfg.d_vocab)
    labels, rows = [], []
    items = vectors.items() if isinstance(vectors, Mapping) else [(None, vectors)] if isinstance(vectors, (TaskVector, torch.Tensor)) else [(None, v) for v in vectors]
    for name, v in items:
        if isinstance(v, TaskVector):
            for s, row in zip(v.sites, v.values):
                labels.append(str(s) if name is None else f"{name} {s}" if len(v.sites) > 1 else str(name))
                rows.append(row)
        elif isinstance(v, torch.Tensor):
            t = v.reshape(-1, v.shape[-1])
            for i, row in enumerate(t):
                labels.append(f"{name or 'row'}[{i}]" if len(t) > 1 or name is None else str(name))
                rows.append(row)
        else:
            raise ConfigError(f"vectors must be TaskVectors or tensors, got {type(v).__name__}")
    x = torch.stack(rows).float()
    if x.shape[-1] != model.cfg.d_model:
        raise ConfigError(f"vectors must have width d_model={model.cfg.d_model}, got {x.shape[-1]}")
    with torch.no_grad():
        h = model.ln_final(x[:, None].to(model.W_U.dtype))[:, 0] if through_ln and getattr(model, "ln_final", None) is not None else x
        scores = h.float() @ model.W_U.float()  # [row, d_vocab]
    top = scores.topk(k, dim=-1)
    toks = tuple(tuple(model.tokenizer.decode([int(i)]) for i in r) for r in top.indices)
    return DecodedTokens(tuple(labels), top.indices, toks, top.values, through_ln)
