"""The :class:`TaskVector` value: one d_model vector per site, plus self-describing metadata.

Saved as a single safetensors file whose header carries the metadata as JSON: nothing is ever
unpickled, and the file says which model, hook, operation and training run produced it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float

from tvlens._validate import no_type_check
from tvlens.errors import CheckpointError, ConfigError, IncompatibleModelError, NonFiniteError, warn
from tvlens.sites import Site

FORMAT = "tvlens-task-vector/1"
Operation = Literal["add", "replace"]


def check_scale(scale, name: str = "scale") -> float:
    """``scale`` as a float; a ConfigError for text, bools or nan/inf."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise ConfigError(f"{name} must be a finite number, got {type(scale).__name__} {scale!r}; e.g. {name}=1.0")
    if not math.isfinite(scale):
        raise NonFiniteError(f"{name} must be a finite number, got {scale!r}; e.g. {name}=1.0")
    return float(scale)


def _template_key(record: dict) -> tuple:
    return tuple(record.get(k) for k in ("query", "answer_prefix", "separator"))


def _template_label(record: dict) -> str:
    name, query = record.get("name"), record.get("query", "?")
    return f"{name!r} ({query!r})" if name and name != query else repr(query)


def _nonfinite_summary(v: torch.Tensor) -> str:
    return f"{int(torch.isnan(v).sum())} nan, {int(torch.isinf(v).sum())} inf of {v.numel()}"


def _cached_fingerprint(model) -> str:
    """tv.fingerprint(model), computed again only when a parameter changed (its version counter moved)."""
    from tvlens._fingerprint import fingerprint

    key = tuple((id(p), p._version) for p in model.parameters())
    cached = model.__dict__.get("_tvlens_fingerprint")
    if cached is None or cached[0] != key:
        cached = (key, fingerprint(model))
        model.__dict__["_tvlens_fingerprint"] = cached
    return cached[1]


def check_vector_use(model, vector: "TaskVector", task=None) -> None:
    """Checks of a vector at use, the same for every analysis, baseline and command.

    Raises :class:`~tvlens.errors.NonFiniteError` when its values turned nan/inf after
    construction (an in-place edit) and :class:`~tvlens.errors.IncompatibleModelError` for
    another shape; warns (:class:`~tvlens.errors.TvlensWarning`) for another model fingerprint
    and, when ``task`` is given, for another task or template.
    """
    if not bool(torch.isfinite(vector.values).all()):
        raise NonFiniteError(f"task vector {vector.task!r} has non-finite values ({_nonfinite_summary(vector.values)}), "
                             "changed in place after it was built; use a finite vector (reload it, or retrain)")
    check_scale(vector.scale, "scale")
    vector.check_compatible(model, allow_other_fingerprint=True)
    if vector.model_fingerprint:
        fp = _cached_fingerprint(model)
        if fp != vector.model_fingerprint:
            warn(f"task vector {vector.task!r} was made on model {vector.model_fingerprint}, not on this model ({fp}); "
                 "results describe a vector of another model: train one on this model unless that is what you study")
    if task is not None:
        vector.check_task(task)


@no_type_check  # validates its own fields (tvlens._validate.no_type_check)
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
    template: dict = field(default_factory=dict)  # the prompt format it was made on (Task.template_record()); {} = unknown

    def __post_init__(self) -> None:
        v = self.values
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"values must be a torch.Tensor [site, d_model], got {type(v).__name__}; wrap it: torch.tensor(values)"
            )
        if v.device.type == "meta":
            raise CheckpointError("values are on the 'meta' device (shape only, no numbers); give real values, e.g. values.to_empty(device='cpu') then fill them")
        if not v.is_floating_point():
            raise CheckpointError(f"values must be floating point, got {v.dtype}; convert with values.float()")
        sites = self.sites
        if isinstance(sites, list):
            sites = tuple(sites)
            object.__setattr__(self, "sites", sites)
        if not isinstance(sites, tuple) or not all(isinstance(s, Site) for s in sites):
            bad = next((s for s in sites if not isinstance(s, Site)), sites) if isinstance(sites, tuple) else sites
            raise CheckpointError(
                f"sites must be a tuple of tvlens.Site, got {bad!r}; build them with tv.Site(layer, position) "
                "or tv.site_grid(layers, positions)"
            )
        if len(set(sites)) != len(sites):
            raise CheckpointError(f"duplicate sites {[str(s) for s in sites]}; give each site once")
        if v.ndim != 2 or v.shape[0] != len(sites):
            raise CheckpointError(f"values must be [site, d_model] with one row per site; got {tuple(v.shape)} for {len(sites)} sites")
        if self.operation not in ("add", "replace"):
            raise CheckpointError(f"operation must be 'add' or 'replace', got {self.operation!r}")
        if self.d_model and v.shape[1] != self.d_model:
            raise CheckpointError(f"values have width {v.shape[1]} but d_model is {self.d_model}")
        if self.out_of_range not in ("error", "skip", "clip"):
            raise CheckpointError(f"out_of_range must be 'error', 'skip' or 'clip', got {self.out_of_range!r}")
        check_scale(self.scale, "scale")
        if not bool(torch.isfinite(v).all()):
            raise NonFiniteError(
                f"task vector {self.task!r} has non-finite values ({_nonfinite_summary(v)}); a diverged training run? "
                "retrain with a lower lr (tv.LTVConfig(lr=...))"
            )

    def __eq__(self, other: object) -> bool:
        """Equal when every field is: the same values (dtype, shape and numbers), sites and metadata.

        (A generated ``==`` would compare the tensors elementwise and raise on multi-row vectors.)
        """
        if not isinstance(other, TaskVector):
            return NotImplemented
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, torch.Tensor):
                if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a.cpu(), b.cpu()):
                    return False
            elif a != b:
                return False
        return True

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
        if not self.model_fingerprint:
            warn(
                f"task vector {self.task!r} records no model fingerprint, so tvlens cannot check that it was made "
                "for this model; set model_fingerprint=tv.fingerprint(model) when you build or save it"
            )
        elif not allow_other_fingerprint:
            fp = fingerprint(model)
            if fp != self.model_fingerprint:
                raise IncompatibleModelError(
                    f"vector was trained on model {self.model_fingerprint} but this model is {fp}; "
                    "pass allow_other_fingerprint=True to apply it anyway (same shape, other weights)"
                )

    def check_task(self, task) -> None:
        """Warn (:class:`~tvlens.errors.TvlensWarning`) when this vector was made on another task or template.

        ``task`` is a :class:`~tvlens.tasks.Task` (or a task name, which checks the name only). A
        vector of the same task under another prompt template (``capitalize`` vs
        ``capitalize[arrow]``) warns about the template, not about transfer.
        """
        from tvlens.tasks._templates import split_name

        name = task if isinstance(task, str) else task.name
        if not (self.task and name):
            return
        if split_name(self.task)[0] != split_name(name)[0]:
            warn(
                f"task vector trained on {self.task!r} is applied to task {name!r}: its accuracy measures "
                "transfer, not the task; evaluate on the vector's own task unless transfer is what you study"
            )
            return
        if isinstance(task, str) or not self.template:
            return
        mine, theirs = _template_key(self.template), _template_key(task.template_record())
        if mine != theirs:
            warn(
                f"task vector {self.task!r} was made on prompts of template {_template_label(self.template)} but is "
                f"applied to prompts of template {_template_label(task.template_record())} (task {name!r}); "
                f"a vector steers the format it was trained on: use tv.tasks.get({split_name(name)[0]!r}, "
                f"template={self.template.get('name') or self.template.get('query')!r}) or retrain on this template"
            )

    # --- files -----------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
        """Write ``path`` (safetensors, metadata as JSON in the header) atomically.

        The file gets the usual mode for new files (``0o666 & ~umask``); with ``overwrite=False``
        an existing file raises :class:`~tvlens.errors.OutputExistsError` and is left as it was.
        """
        from safetensors.torch import save_file

        from tvlens._io import atomic_write

        if not bool(torch.isfinite(self.values).all()):  # values changed in place since construction
            raise NonFiniteError(f"refusing to save task vector {self.task!r} with non-finite values ({_nonfinite_summary(self.values)})")
        try:
            meta_json = json.dumps(self.meta, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"meta must be JSON-serialisable with finite numbers ({e}); keep only str/int/float/list/dict values") from None
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
            "meta": json.loads(meta_json),
            "template": dict(self.template),
        }
        values = self.values.detach().cpu().contiguous()
        return atomic_write(path, lambda tmp: save_file({"values": values}, str(tmp), metadata={"tvlens": json.dumps(header)}),
                            overwrite=overwrite)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TaskVector:
        """Read a file written by :meth:`save` (safetensors only: nothing is unpickled)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"no task-vector file at {str(path)!r}")
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                values = f.get_tensor("values") if "values" in f.keys() else None
        except Exception as e:  # safetensors raises several types for a corrupt file
            raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({e}); was it written by TaskVector.save?") from None
        if "tvlens_ltv_checkpoint" in metadata:
            raise CheckpointError(f"{str(path)!r} is an LTV training checkpoint, not a task vector; load the vector saved with "
                                  "--out / TaskVector.save (train_ltv(..., checkpoint=) only resumes training)")
        try:
            header = json.loads(metadata.get("tvlens", "null"))
        except ValueError:
            header = None
        if not isinstance(header, dict) or header.get("format") != FORMAT or values is None:
            raise CheckpointError(f"{str(path)!r} has no tvlens task-vector metadata (format {FORMAT!r}); save vectors with TaskVector.save")
        try:
            sites = header["sites"]
            if not isinstance(sites, list) or not all(isinstance(s, list) and len(s) == 2 for s in sites):
                raise ValueError(f"'sites' must be a list of [layer, position] pairs, got {sites!r}")
            for s in sites:
                if not all(isinstance(x, int) and not isinstance(x, bool) for x in s):
                    raise ValueError(f"site {s!r} is not a pair of integers")
            kw = {k: header[k] for k in ("task", "model_fingerprint", "d_model", "n_layers", "operation", "scale", "method")}
            for k in ("d_model", "n_layers"):
                if isinstance(kw[k], bool) or not isinstance(kw[k], int) or kw[k] < 0:
                    raise ValueError(f"{k!r} must be a non-negative integer, got {kw[k]!r}")
            if not isinstance(header.get("meta", {}), dict):
                raise ValueError("'meta' must be an object")
            tmpl = header.get("template", {})  # files before templates were recorded: unknown
            if not isinstance(tmpl, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tmpl.items()):
                raise ValueError(f"'template' must be an object of strings, got {tmpl!r}")
            return cls(
                values=values,
                sites=tuple(Site(layer, p) for layer, p in sites),
                out_of_range=header.get("out_of_range", "error"),
                meta=header.get("meta", {}),
                template=tmpl,
                **kw,
            )
        except KeyError as e:
            raise CheckpointError(f"{str(path)!r}: the tvlens header lacks field {e.args[0]!r}; the file is damaged or hand-edited, save it again with TaskVector.save") from None
        except NonFiniteError as e:
            raise CheckpointError(f"{str(path)!r} holds an unusable task vector: {e}") from None
        except (ValueError, TypeError) as e:  # our ConfigError/CheckpointError are ValueErrors too
            raise CheckpointError(f"{str(path)!r} has an invalid tvlens header: {e}; save the vector again with TaskVector.save") from None

