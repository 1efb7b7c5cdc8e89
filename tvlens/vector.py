"""The :class:`TaskVector` value: one d_model vector per site, plus self-describing metadata.

Saved as a single safetensors file whose header carries the metadata as JSON: nothing is ever
unpickled, and the file says which model, hook, operation and training run produced it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float

from tvlens.errors import CheckpointError, IncompatibleModelError
from tvlens.sites import Site

FORMAT = "tvlens-task-vector/1"
Operation = Literal["add", "replace"]


@dataclass(frozen=True)
class TaskVector:
    """``values[i]`` is added (or, for ``operation="replace"``, written) at ``sites[i]``."""

    values: Float[torch.Tensor, "site d_model"]
    sites: tuple[Site, ...]
    task: str = ""
    model_fingerprint: str = ""  # tvlens.fingerprint of the model it was made on
    d_model: int = 0
    n_layers: int = 0
    operation: Operation = "add"
    scale: float = 1.0  # default scale used by steer() when none is given
    method: str = "ltv"  # "ltv", "vanilla_tv", "fv", ...
    out_of_range: str = "error"  # a prompt lacking a site's position: "error", "skip" or "clip"
    meta: dict = field(default_factory=dict)  # training config, seed, metrics, versions (JSON-able)

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[0] != len(self.sites):
            raise CheckpointError(f"values must be [site, d_model] with one row per site; got {tuple(self.values.shape)} for {len(self.sites)} sites")
        if self.operation not in ("add", "replace"):
            raise CheckpointError(f"operation must be 'add' or 'replace', got {self.operation!r}")
        if self.d_model and self.values.shape[1] != self.d_model:
            raise CheckpointError(f"values have width {self.values.shape[1]} but d_model is {self.d_model}")

    @property
    def hook_names(self) -> tuple[str, ...]:
        return tuple(s.hook_name for s in self.sites)

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted({s.layer for s in self.sites}))

    def __getitem__(self, site: Site) -> Float[torch.Tensor, " d_model"]:
        return self.values[self.sites.index(site)]

    def norms(self) -> dict[str, float]:
        return {str(s): float(v.norm()) for s, v in zip(self.sites, self.values)}

    def with_values(self, values: torch.Tensor, **changes) -> TaskVector:
        return replace(self, values=values, **changes)

    def __repr__(self) -> str:
        sites = ", ".join(map(str, self.sites[:6])) + (", ..." if len(self.sites) > 6 else "")
        return f"TaskVector({self.method} {self.task!r}, {self.operation}, sites=[{sites}], d_model={self.values.shape[1]})"

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(
            {"layer": [s.layer for s in self.sites], "position": [s.position for s in self.sites],
             "norm": [float(v.norm()) for v in self.values]}
        )

    # --- compatibility ---------------------------------------------------------------------

    def check_compatible(self, model, *, allow_other_fingerprint: bool = False) -> None:
        """Raise :class:`IncompatibleModelError` unless this vector fits ``model``."""
        from tvlens._fingerprint import fingerprint

        cfg = model.cfg
        if self.values.shape[1] != cfg.d_model or (self.n_layers and self.n_layers != cfg.n_layers):
            raise IncompatibleModelError(
                f"vector was made for a model with d_model={self.values.shape[1]}, n_layers={self.n_layers or '?'}; "
                f"this model has d_model={cfg.d_model}, n_layers={cfg.n_layers}. Train a vector on this model."
            )
        bad = [s for s in self.sites if not 0 <= s.layer < cfg.n_layers]
        if bad:
            raise IncompatibleModelError(f"sites {bad} are outside this model's layers 0..{cfg.n_layers - 1}")
        if self.model_fingerprint and not allow_other_fingerprint:
            fp = fingerprint(model)
            if fp != self.model_fingerprint:
                raise IncompatibleModelError(
                    f"vector was trained on model {self.model_fingerprint} but this model is {fp}; "
                    "pass allow_other_fingerprint=True to apply it anyway (same shape, other weights)"
                )

    # --- files -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (safetensors, metadata as JSON in the header) atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": FORMAT,
            "sites": [[s.layer, s.position] for s in self.sites],
            "task": self.task,
            "model_fingerprint": self.model_fingerprint,
            "d_model": int(self.values.shape[1]),
            "n_layers": self.n_layers,
            "operation": self.operation,
            "scale": self.scale,
            "method": self.method,
            "out_of_range": self.out_of_range,
            "hook_names": list(self.hook_names),
            "dtype": str(self.values.dtype).removeprefix("torch."),
            "meta": self.meta,
        }
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file({"values": self.values.detach().cpu().contiguous()}, tmp, metadata={"tvlens": json.dumps(header)})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskVector:
        """Read a file written by :meth:`save` (safetensors only: nothing is unpickled)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no task-vector file at {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt") as f:
                header = json.loads((f.metadata() or {}).get("tvlens", "null"))
                values = f.get_tensor("values")
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises several types for a corrupt header
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({e}); was it written by TaskVector.save?") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise CheckpointError(f"{str(path)!r} has no tvlens task-vector metadata (format {FORMAT!r}); save vectors with TaskVector.save")
        return cls(
            values=values,
            sites=tuple(Site(int(layer), int(p)) for layer, p in header["sites"]),
            task=header["task"],
            model_fingerprint=header["model_fingerprint"],
            d_model=header["d_model"],
            n_layers=header["n_layers"],
            operation=header["operation"],
            scale=header["scale"],
            method=header["method"],
            out_of_range=header.get("out_of_range", "error"),
            meta=header.get("meta", {}),
        )
