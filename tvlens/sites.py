"""Injection sites: (layer, position) pairs and their resolution to token columns of a batch.

A site's position counts from the END of each prompt when negative (-1 = last token) and from
its START when non-negative (0 = the BOS token, 4 = the fifth token). Under padding, prompts of
one batch start and end at different columns; :func:`resolve_columns` maps a position to the
right column of every row, for left and right padding alike.

>>> from tvlens.sites import Site, site_grid
>>> site_grid(layers=[0, 2], positions=[-2, -1])
(Site(layer=0, position=-2), Site(layer=0, position=-1), Site(layer=2, position=-2), Site(layer=2, position=-1))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Int

from tvlens._validate import no_type_check
from tvlens.errors import PromptError

OutOfRange = Literal["error", "skip", "clip"]
"""What to do with a site position that a (short) prompt does not have: raise (default), skip
that prompt (no vector there), or clip to the nearest real token (BOS or the last token)."""


@no_type_check  # validates its own fields (tvlens._validate.no_type_check)
@dataclass(frozen=True, order=True)
class Site:
    """Where a vector is added: the input of block ``layer`` (``blocks.{layer}.hook_resid_pre``) at ``position``."""

    layer: int
    position: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer", _as_int(self.layer, "layer"))
        object.__setattr__(self, "position", _as_int(self.position, "position"))
        if self.layer < 0:
            raise PromptError(f"site layer must be >= 0, got {self.layer}; layers count from 0 (the first block)")

    @property
    def hook_name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_pre"

    def __str__(self) -> str:
        return f"L{self.layer}@{self.position}"

    @classmethod
    def parse(cls, text: str) -> Site:
        """``"L3@-1"`` or ``"3:-1"`` -> ``Site(3, -1)``."""
        t = text.strip().lstrip("Ll")
        sep = "@" if "@" in t else ":"
        try:
            layer, pos = t.split(sep) if sep in t else (t, "-1")
            return cls(int(layer), int(pos))
        except ValueError:
            raise PromptError(f"cannot parse site {text!r}; write it as 'L<layer>@<position>', e.g. 'L2@-1'") from None


def _as_int(value, what: str) -> int:
    """``value`` as an int; a PromptError naming ``what`` for floats, bools, text and the like."""
    import operator

    if isinstance(value, bool):
        raise PromptError(f"{what} must be an integer, got the bool {value!r}; write whole numbers, e.g. 2")
    try:
        return operator.index(value)  # ints and numpy/torch integers; never floats or strings
    except TypeError:
        raise PromptError(
            f"{what} must be an integer, got {type(value).__name__} {value!r}; write whole numbers, e.g. 2"
        ) from None


def _int_list(values, what: str) -> list[int]:
    if isinstance(values, (str, bytes)):
        raise PromptError(f"{what} must be an integer or a list of integers, got the string {values!r}; "
                          f"write {what}=[3, 4] (not {what}={values!r})")
    if not isinstance(values, Iterable) or getattr(values, "ndim", None) == 0:
        return [_as_int(values, what)]
    return [_as_int(v, what) for v in values]


@no_type_check
def site_grid(layers: Iterable[int] | int, positions: Iterable[int] | int = (-1,)) -> tuple[Site, ...]:
    """Every (layer, position) combination: one independent vector per site (the paper's L x P)."""
    layers = _int_list(layers, "layers")
    positions = _int_list(positions, "positions")
    if not layers or not positions:
        raise PromptError("give at least one layer and one position")
    sites = tuple(Site(layer, p) for layer in layers for p in positions)
    if len(set(sites)) != len(sites):
        raise PromptError(f"duplicate sites in layers={layers} positions={positions}")
    return sites


def check_sites(sites: Sequence[Site], n_layers: int) -> None:
    """Raise a clear error for a layer the model does not have."""
    for s in sites:
        if not 0 <= s.layer < n_layers:
            raise PromptError(f"site {s} is at layer {s.layer} but the model has layers 0..{n_layers - 1}")


def resolve_columns(
    position: int,
    last_index: Int[torch.Tensor, " batch"],
    first_index: Int[torch.Tensor, " batch"],
    out_of_range: OutOfRange = "error",
) -> Int[torch.Tensor, " batch"]:
    """The token column of ``position`` in every row, given each row's first and last real column.

    Rows whose prompt lacks the position raise, get -1 (``"skip"``) or the nearest real column
    (``"clip"``), per ``out_of_range``.
    """
    cols = last_index + 1 + position if position < 0 else first_index + position
    bad = (cols < first_index) | (cols > last_index)
    if out_of_range == "skip":
        return torch.where(bad, -1, cols)
    if out_of_range == "clip":
        return torch.minimum(torch.maximum(cols, first_index), last_index)
    if out_of_range != "error":
        raise PromptError(f"out_of_range must be 'error', 'skip' or 'clip', got {out_of_range!r}")
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        length = int(last_index[row] - first_index[row] + 1)
        raise PromptError(
            f"position {position} falls outside prompt {row} of {length} tokens (BOS included); "
            "use a position inside every prompt (e.g. -1 for the last token), or out_of_range='skip'/'clip'"
        )
    return cols
