"""Training a learned task vector: ``tv.train_ltv(model, task, layers=..., positions=...)``.

>>> import tvlens as tv
>>> model = tv.load_model("toy")
>>> res = tv.train_ltv(model, "toy/antonym", layers=[1], positions=[-1], progress=False)
>>> res.vector
TaskVector(ltv 'toy/antonym', add, sites=[L1@-1], d_model=128)
>>> res.val_accuracy > 0.8
True
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from tvlens import _backend
from tvlens._result import Result
from tvlens._validate import no_type_check
from tvlens.errors import CheckpointError, ConfigError, NonFiniteError
from tvlens.ltv._config import LTVConfig
from tvlens.ltv._objective import build_targets, make_objective
from tvlens.ltv._scale import site_residual_rms
from tvlens.prompts import TaskSplits, make_prompts, make_splits
from tvlens.sites import Site, check_sites, site_grid
from tvlens.tasks._task import Task
from tvlens.vector import TaskVector

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LTVResult(Result):
    """A trained vector with its history. ``history`` has one dict per epoch."""

    vector: TaskVector
    history: tuple[dict, ...]  # epoch, step, train_loss, val_accuracy, lr, seconds
    val_accuracy: float  # best validation accuracy (the returned vector's)
    best_epoch: int
    steps: int
    seconds: float
    splits: TaskSplits
    shots: int
    from_store: bool = False  # loaded from the vector store (tvlens.store) instead of trained in this call

    @property
    def n_val(self) -> int:
        """How many validation queries each val accuracy was measured on."""
        cap = self.vector.meta.get("config", {}).get("n_val", len(self.splits.val))  # hand-built results have no config
        return min(int(cap), len(self.splits.val))

    @property
    def val_ci95(self) -> tuple[float, float]:
        """95% Wilson interval of :attr:`val_accuracy` (see :mod:`tvlens.stats`)."""
        from tvlens.stats import accuracy_interval

        return accuracy_interval(self.val_accuracy, self.n_val)

    def to_frame(self):
        """One row per epoch, with the 95% Wilson interval of each val accuracy."""
        import pandas as pd

        from tvlens.stats import accuracy_interval

        df = pd.DataFrame(list(self.history))
        if len(df):
            cis = [accuracy_interval(a, self.n_val) for a in df["val_accuracy"]]
            df["val_ci_low"], df["val_ci_high"] = [c[0] for c in cis], [c[1] for c in cis]
        return df

    def plot(self):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        df = self.to_frame()
        fig = make_subplots(specs=[[{"secondary_y": True}]])
        fig.add_trace(go.Scatter(x=df["epoch"], y=df["train_loss"], name="train loss"), secondary_y=False)
        fig.add_trace(go.Scatter(x=df["epoch"], y=df["val_accuracy"], name="val accuracy"), secondary_y=True)
        fig.update_layout(title=f"LTV training: {self.vector.task}", xaxis_title="epoch")
        return fig

    def __repr__(self) -> str:
        return f"LTVResult({self.vector!r}, val_acc={self.val_accuracy:.3f}, epochs={len(self.history)}, steps={self.steps})"


def _accuracy(objective, theta, n: int, batch_size: int) -> tuple[float, float]:
    """First-token accuracy (full-vocabulary argmax) and mean NLL; one target per row."""
    correct, nll = 0, 0.0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            logits, tb = objective.target_logits(theta, torch.arange(start, min(n, start + batch_size)))
            correct += int((logits.argmax(-1) == tb.first_target).sum())
            nll += float(torch.nn.functional.cross_entropy(logits.float(), tb.first_target, reduction="sum"))
    return correct / n, nll / n


def _save_checkpoint(path: Path, phi, opt, step: int, epoch: int, best, history, gen, meta: dict, improved: int) -> None:
    from safetensors.torch import save_file

    from tvlens._io import atomic_write

    state = opt.state[phi] if phi in opt.state else {}
    # "theta" holds the optimised parameter phi (theta / site scale); "best_theta" the best theta itself
    tensors = {"theta": phi.detach().clone(), "best_theta": best[1].clone(), "rng": gen.get_state()}
    for k in ("exp_avg", "exp_avg_sq"):
        if k in state:
            tensors[k] = state[k].clone()
    header = {"step": step, "epoch": epoch, "best_acc": best[0], "best_epoch": best[2], "best_loss": best[3], "history": history,
              "improved_epoch": improved, "adam_step": float(state["step"]) if "step" in state else 0.0, **meta}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"tvlens_ltv_checkpoint": json.dumps(header)}))


_CHECKPOINT_TENSORS = ("theta", "best_theta", "rng")


def _load_checkpoint(path: Path, meta: dict):
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file (a directory?); pass the path of a checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a corrupt or foreign file
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not a readable safetensors file ({e}); delete it to start over, "
            "or pass another checkpoint path"
        ) from None
    if "tvlens_ltv_checkpoint" not in metadata:
        what = "a task-vector file (TaskVector.save / --out)" if "tvlens" in metadata else "not an LTV training checkpoint"
        raise CheckpointError(
            f"{str(path)!r} is {what}, not a training checkpoint; give checkpoint= a path of its own "
            "(not the vector's output path), or delete the file to start over"
        )
    try:
        header = json.loads(metadata["tvlens_ltv_checkpoint"])
        missing = [k for k in ("step", "epoch", "best_acc", "best_epoch", "best_loss", "history") if k not in header]
        missing += [k for k in _CHECKPOINT_TENSORS if k not in tensors]
        if missing:
            raise ValueError(f"missing {missing}")
    except ValueError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged ({e}); delete it to start over") from None
    for k in ("config", "sites", "task", "shots", "model_fingerprint", "split_seed", "out_of_range"):
        if header.get(k) != meta.get(k):
            raise CheckpointError(
                f"checkpoint {str(path)!r} belongs to another run ({k}: {header.get(k)!r} != {meta.get(k)!r}); "
                "delete it or pass another checkpoint path"
            )
    if not all(bool(torch.isfinite(tensors[k]).all()) for k in ("theta", "best_theta")):
        raise CheckpointError(f"checkpoint {str(path)!r} holds non-finite values; delete it to start over")
    return header, tensors


def _diverged(what: str, epoch: int, step: int, cfg: LTVConfig, ckpt: Path | None) -> NonFiniteError:
    kept = (f"the last good state is kept in {str(ckpt)!r} (rerunning resumes from it and diverges again: "
            "delete it or use another path with the new settings)") if ckpt is not None and ckpt.exists() else "nothing was saved"
    return NonFiniteError(
        f"LTV training diverged at epoch {epoch}, step {step}: {what} is not finite; {kept}. "
        f"Lower the learning rate (lr={cfg.lr:g}; e.g. LTVConfig(lr={min(cfg.lr, 5e-2) / 10:g})) or init_range"
    )


@no_type_check  # checks its arguments (tvlens._validate.no_type_check)
def train_ltv(
    model,
    task: Task | str,
    *,
    layers: Iterable[int] | int | None = None,
    positions: Iterable[int] | int = (-1,),
    sites: Iterable[Site] | None = None,
    shots: int = 0,
    config: LTVConfig = LTVConfig(),
    splits: TaskSplits | None = None,
    checkpoint: str | os.PathLike | None = None,
    out_of_range: str = "error",
    progress: bool = True,
    cache=None,
) -> LTVResult:
    """Train one vector per site (default: middle layer, last position) on ``task``'s train queries.

    ``shots=k`` trains (and is meant to apply) the vector on k-shot ICL prompts. Sites that a
    short prompt lacks raise unless ``out_of_range`` is ``"skip"`` or ``"clip"`` (stored in the vector). With
    ``checkpoint=path`` the run state is saved atomically after every epoch and an interrupted
    run with the same arguments resumes from it. Same seed -> bit-identical vector on CPU.

    ``cache``: the vector store (:mod:`tvlens.store`). None (default) uses ``$TVLENS_CACHE_DIR/vectors``
    unless ``$TVLENS_NO_CACHE`` is set; False trains and stores nothing; a directory or a
    ``VectorStore`` uses that store. A hit returns the stored vector and history (``from_store=True``),
    bit-identical to training it again; a miss trains and stores the result.
    """
    from tvlens import _progress
    from tvlens._fingerprint import fingerprint
    from tvlens.store import ltv_key_fields
    from tvlens.store import resolve as resolve_store
    from tvlens.tasks import get as get_task

    task = get_task(task) if isinstance(task, str) else task
    if not isinstance(config, LTVConfig):
        raise ConfigError(f"config must be a tv.LTVConfig, got {type(config).__name__}; e.g. config=tv.LTVConfig(lr=1e-2)")
    if out_of_range not in ("error", "skip", "clip"):
        raise ConfigError(f"out_of_range must be 'error', 'skip' or 'clip', got {out_of_range!r}")
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise ConfigError(f"shots must be an integer >= 0 (demonstrations per training prompt), got {shots!r}")
    if sites is None:
        sites = site_grid(model.cfg.n_layers // 2 if layers is None else layers, positions)
    sites = tuple(sites)
    check_sites(sites, model.cfg.n_layers)
    splits = splits or make_splits(task, seed=0)
    cfg = config
    fp = fingerprint(model)
    store = resolve_store(cache)
    fields = None
    if store is not None:
        fields = ltv_key_fields(model, task, sites=sites, splits=splits, config=cfg, shots=shots,
                                out_of_range=out_of_range, fingerprint=fp)
        if (res := _from_store(store, fields, out_of_range, splits, shots)) is not None:
            return res
    train_ps = make_prompts(splits, "train", k=shots, seed=cfg.seed, n=cfg.n_train)
    val_ps = make_prompts(splits, "val", k=shots, seed=cfg.seed + 1, n=cfg.n_val)
    t0 = time.perf_counter()
    train_obj = make_objective(model, build_targets(model, train_ps, padding_side=cfg.padding_side, multi_token=cfg.multi_token), sites, fast=cfg.fast, out_of_range=out_of_range)
    val_obj = make_objective(model, build_targets(model, val_ps, padding_side=cfg.padding_side, multi_token=False), sites, fast=cfg.fast, out_of_range=out_of_range)

    gen = torch.Generator().manual_seed(cfg.seed)
    d_model = model.cfg.d_model
    # theta = phi * scale: with scale_to_residual, lr and init_range are in units of each site's residual RMS
    if cfg.scale_to_residual:
        scale = site_residual_rms(model, train_obj.tb, sites, out_of_range)
        log.info("residual RMS at the sites: %s", ", ".join(f"{s}: {r:.3g}" for s, r in zip(sites, scale.tolist())))
    else:
        scale = torch.ones(len(sites))
    scale = scale.to(model.cfg.dtype)[:, None]
    phi = torch.nn.Parameter(torch.empty(len(sites), d_model).uniform_(-cfg.init_range, cfg.init_range, generator=gen))
    opt = torch.optim.AdamW([phi], lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-cfg.epoch_size // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.max_epochs
    meta = {"config": cfg.to_dict(), "sites": [[s.layer, s.position] for s in sites], "task": task.name,
            "shots": shots, "model_fingerprint": fp, "split_seed": splits.seed, "out_of_range": out_of_range}

    history: list[dict] = []
    step, start_epoch, elapsed = 0, 0, 0.0
    best = (-1.0, (phi * scale).detach().clone(), -1, float("inf"))  # (val acc, theta, epoch, val loss)
    improved = -1  # last epoch whose val accuracy beat every earlier one (the patience clock)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        header, tensors = _load_checkpoint(ckpt, meta)
        with torch.no_grad():
            phi.copy_(tensors["theta"])
        if "exp_avg" in tensors:
            opt.state[phi] = {"step": torch.tensor(header["adam_step"]), "exp_avg": tensors["exp_avg"], "exp_avg_sq": tensors["exp_avg_sq"]}
        gen.set_state(tensors["rng"])
        step, start_epoch, history = header["step"], header["epoch"], header["history"]
        elapsed = history[-1]["seconds"] if history else 0.0
        best = (header["best_acc"], tensors["best_theta"], header["best_epoch"], header["best_loss"])
        improved = header.get("improved_epoch", header["best_epoch"])
        log.info("resuming %s from epoch %d (step %d)", ckpt, start_epoch, step)

    n_train = len(train_obj.tb)
    bar = _progress.bar(total=total_steps, initial=step, desc=f"ltv {task.name}", disable=not progress)
    for epoch in range(start_epoch, cfg.max_epochs):
        if improved >= 0 and epoch - improved > cfg.patience:  # the paper's rule: no better accuracy for `patience` epochs
            break
        order = torch.cat([torch.randperm(n_train, generator=gen) for _ in range(-(-cfg.epoch_size // n_train))])[: cfg.epoch_size]
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            if len(idx) == 0:
                break
            lr = cfg.lr * (1 - step / total_steps) if cfg.schedule == "linear" else cfg.lr
            for g in opt.param_groups:
                g["lr"] = lr
            loss, _, _ = train_obj.loss(phi * scale, idx)
            if not math.isfinite(loss.item()):
                raise _diverged("the training loss", epoch, step, cfg, ckpt)
            (phi.grad,) = torch.autograd.grad(loss, [phi])  # no gradients for the model's weights
            if not bool(torch.isfinite(phi.grad).all()):
                raise _diverged("the gradient of theta", epoch, step, cfg, ckpt)
            try:
                opt.step()
            except RuntimeError as exc:  # Adam's update itself overflowed (a finite loss and gradient at a huge lr)
                if "overflow" not in str(exc):
                    raise
                raise _diverged("the optimiser's update", epoch, step, cfg, ckpt) from exc
            if not bool(torch.isfinite(phi).all()):
                raise _diverged("theta (the vector being trained)", epoch, step, cfg, ckpt)
            losses.append(loss.item())
            step += 1
            bar.update(1)
        val_acc, val_loss = _accuracy(val_obj, (phi * scale).detach(), len(val_obj.tb), cfg.eval_batch_size)
        history.append({"epoch": epoch, "step": step, "train_loss": sum(losses) / max(1, len(losses)),
                        "val_accuracy": val_acc, "val_loss": val_loss, "lr": lr,
                        "seconds": round(elapsed + time.perf_counter() - t0, 3)})
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val=f"{val_acc:.3f}")
        log.info("ltv %s epoch %d loss %.4f val_acc %.3f", task.name, epoch, history[-1]["train_loss"], val_acc)
        if val_acc > best[0]:
            improved = epoch
        # the returned vector: highest validation accuracy, ties broken by lower validation loss (small val
        # sets); the stopping rule above looks at accuracy only
        if val_acc > best[0] or (val_acc == best[0] and val_loss < best[3]):
            best = (val_acc, (phi * scale).detach().clone(), epoch, val_loss)
        if ckpt is not None:
            _save_checkpoint(ckpt, phi, opt, step, epoch + 1, best, history, gen, meta, improved)
    bar.close()
    seconds = elapsed + time.perf_counter() - t0
    from importlib.metadata import version

    vector = TaskVector(
        values=best[1].clone(),
        sites=sites,
        task=task.name,
        template=task.template_record(),
        model_fingerprint=fp,
        d_model=d_model,
        n_layers=model.cfg.n_layers,
        operation="add",
        method="ltv",
        out_of_range=out_of_range,
        meta={"config": cfg.to_dict(), "seed": cfg.seed, "shots": shots, "val_accuracy": best[0],
              "best_epoch": best[2], "steps": step, "transformer_lens": version("transformer_lens"),
              "torch": torch.__version__, "dtype": str(model.cfg.dtype).removeprefix("torch."),
              "split_seed": splits.seed, "site_rms": [round(float(x), 6) for x in scale.flatten()],
              "lr_effective": [cfg.lr * float(x) for x in scale.flatten()], "backend": _backend.describe(model)},
    )
    result = LTVResult(vector, tuple(history), best[0], best[2], step, seconds, splits, shots)
    if store is not None:
        try:
            store.put(fields, vector, {"history": list(history), "val_accuracy": best[0], "best_epoch": best[2],
                                       "steps": step, "seconds": seconds})
        except (OSError, ValueError) as e:  # a read-only or full cache, a non-finite history value: the trained vector is still returned
            log.warning("could not save the vector to the store %s (%s); continuing without it", store.root, e)
    return result


def _from_store(store, fields: dict, out_of_range: str, splits, shots: int) -> LTVResult | None:
    """The stored LTV of ``fields`` as :func:`train_ltv` returns it (None: absent or failing verification)."""
    hit = store.get(fields)
    if hit is None:
        return None
    r, vector = hit.record, hit.vector
    if vector.out_of_range != out_of_range:  # a last-token-only entry stored under another choice (same training)
        vector = dataclasses.replace(vector, out_of_range=out_of_range)
    return LTVResult(vector, tuple(r["history"]), r["val_accuracy"], r["best_epoch"], r["steps"], r["seconds"], splits, shots,
                     from_store=True)


def stored_ltv(model, task, *, sites, shots: int, config: LTVConfig, out_of_range: str, splits, cache=None) -> LTVResult | None:
    """What :func:`train_ltv` with these arguments would load from the store, without training on a miss (None:
    no store, or no valid entry)."""
    from tvlens._fingerprint import fingerprint
    from tvlens.store import ltv_key_fields
    from tvlens.store import resolve as resolve_store

    store = resolve_store(cache)
    if store is None:
        return None
    fields = ltv_key_fields(model, task, sites=tuple(sites), splits=splits, config=config, shots=shots,
                            out_of_range=out_of_range, fingerprint=fingerprint(model))
    return _from_store(store, fields, out_of_range, splits, shots)
