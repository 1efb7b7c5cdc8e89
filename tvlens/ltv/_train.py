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

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from tvlens._result import Result
from tvlens.errors import CheckpointError
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

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame(list(self.history))

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


def _save_checkpoint(path: Path, phi, opt, step: int, epoch: int, best, history, gen, meta: dict) -> None:
    from safetensors.torch import save_file

    state = opt.state[phi] if phi in opt.state else {}
    # "theta" holds the optimised parameter phi (theta / site scale); "best_theta" the best theta itself
    tensors = {"theta": phi.detach().clone(), "best_theta": best[1].clone(), "rng": gen.get_state()}
    for k in ("exp_avg", "exp_avg_sq"):
        if k in state:
            tensors[k] = state[k].clone()
    header = {"step": step, "epoch": epoch, "best_acc": best[0], "best_epoch": best[2], "best_loss": best[3], "history": history,
              "adam_step": float(state["step"]) if "step" in state else 0.0, **meta}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"tvlens_ltv_checkpoint": json.dumps(header)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_checkpoint(path: Path, meta: dict):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["tvlens_ltv_checkpoint"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    for k in ("config", "sites", "task", "shots", "model_fingerprint", "split_seed", "out_of_range"):
        if header.get(k) != meta.get(k):
            raise CheckpointError(
                f"checkpoint {str(path)!r} belongs to another run ({k}: {header.get(k)!r} != {meta.get(k)!r}); "
                "delete it or pass another checkpoint path"
            )
    return header, tensors


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
) -> LTVResult:
    """Train one vector per site (default: middle layer, last position) on ``task``'s train queries.

    ``shots=k`` trains (and is meant to apply) the vector on k-shot ICL prompts. Sites that a
    short prompt lacks raise unless ``out_of_range`` is ``"skip"`` or ``"clip"`` (stored in the vector). With
    ``checkpoint=path`` the run state is saved atomically after every epoch and an interrupted
    run with the same arguments resumes from it. Same seed -> bit-identical vector on CPU.
    """
    from tqdm.auto import tqdm

    from tvlens._fingerprint import fingerprint
    from tvlens.tasks import get as get_task

    task = get_task(task) if isinstance(task, str) else task
    if sites is None:
        sites = site_grid(model.cfg.n_layers // 2 if layers is None else layers, positions)
    sites = tuple(sites)
    check_sites(sites, model.cfg.n_layers)
    splits = splits or make_splits(task, seed=0)
    cfg = config
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
    fp = fingerprint(model)
    meta = {"config": cfg.to_dict(), "sites": [[s.layer, s.position] for s in sites], "task": task.name,
            "shots": shots, "model_fingerprint": fp, "split_seed": splits.seed, "out_of_range": out_of_range}

    history: list[dict] = []
    step, start_epoch, elapsed = 0, 0, 0.0
    best = (-1.0, (phi * scale).detach().clone(), -1, float("inf"))  # (val acc, theta, epoch, val loss)
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
        log.info("resuming %s from epoch %d (step %d)", ckpt, start_epoch, step)

    n_train = len(train_obj.tb)
    bar = tqdm(total=total_steps, initial=step, desc=f"ltv {task.name}", disable=not progress)
    for epoch in range(start_epoch, cfg.max_epochs):
        if epoch - best[2] > cfg.patience and best[2] >= 0:
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
            (phi.grad,) = torch.autograd.grad(loss, [phi])  # no gradients for the model's weights
            opt.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
        val_acc, val_loss = _accuracy(val_obj, (phi * scale).detach(), len(val_obj.tb), cfg.eval_batch_size)
        history.append({"epoch": epoch, "step": step, "train_loss": sum(losses) / max(1, len(losses)),
                        "val_accuracy": val_acc, "val_loss": val_loss, "lr": lr,
                        "seconds": round(elapsed + time.perf_counter() - t0, 3)})
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val=f"{val_acc:.3f}")
        log.info("ltv %s epoch %d loss %.4f val_acc %.3f", task.name, epoch, history[-1]["train_loss"], val_acc)
        # better = higher validation accuracy, ties broken by lower validation loss (small val sets)
        if val_acc > best[0] or (val_acc == best[0] and val_loss < best[3]):
            best = (val_acc, (phi * scale).detach().clone(), epoch, val_loss)
        if ckpt is not None:
            _save_checkpoint(ckpt, phi, opt, step, epoch + 1, best, history, gen, meta)
    bar.close()
    seconds = elapsed + time.perf_counter() - t0
    from importlib.metadata import version

    vector = TaskVector(
        values=best[1].clone(),
        sites=sites,
        task=task.name,
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
              "lr_effective": [cfg.lr * float(x) for x in scale.flatten()]},
    )
    return LTVResult(vector, tuple(history), best[0], best[2], step, seconds, splits, shots)
