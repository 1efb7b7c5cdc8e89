"""Training of the embedded model on the synthetic world (seeded, deterministic, by step count).

Recipe (see docs/embedded-model.md): every training sequence is
``<bos> [<task>] x1 -> y1 , x2 -> y2 , ... , xn -> yn`` for one task, with the loss on every
answer, so the model learns zero-shot, few-shot and many-shot prediction at once. Half of the
sequences carry the task's instruction token right after ``<bos>`` (the instruction pathway that
lets a single residual-stream state carry the task); the rest carry no instruction. No loss
ever targets a task vector: whatever task state the model has is there naturally.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from tvlens._validate import check_float, check_int, no_type_check
from tvlens.errors import ConfigError
from tvlens.toy._world import ARROW, BOS, PAD, SEP, ToyTaskDef, task_token, vocabulary, world

log = logging.getLogger(__name__)


@no_type_check  # validates its own fields (tvlens._validate.no_type_check)
@dataclass(frozen=True)
class ToyTrainConfig:
    """How to train the embedded model. Defaults are the shipped checkpoint's recipe."""

    n_layers: int = 5  # transformer blocks
    d_model: int = 128  # residual stream width
    n_heads: int = 4  # attention heads per block
    d_mlp: int = 512  # MLP hidden width
    n_ctx: int = 96  # maximum sequence length
    steps: int = 2000  # optimiser steps (train by steps: ICL appears as a phase transition)
    batch_size: int = 64  # sequences per step
    lr: float = 2e-3  # peak learning rate (AdamW)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 100  # linear warm-up steps
    min_lr_frac: float = 0.1  # cosine decay floor, as a fraction of lr
    grad_clip: float = 1.0  # gradient-norm clip
    n_examples: int = 10  # input -> output pairs per training sequence
    instruction_frac: float = 0.5  # fraction of sequences with the task's instruction token
    echo_weight: float = 0.4  # probability that a sequence is of an "echo_*" prior task (split evenly)
    seed: int = 0  # seeds the weights and the data stream
    threads: int | None = None  # torch threads (None = leave torch's default)

    def __post_init__(self) -> None:
        o = "ToyTrainConfig"
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "n_ctx", "steps", "batch_size", "n_examples"):
            check_int(o, name, getattr(self, name), min=1)
        check_int(o, "warmup_steps", self.warmup_steps, min=0)
        check_int(o, "seed", self.seed, min=0, max=2**63 - 1)
        if self.threads is not None:
            check_int(o, "threads", self.threads, min=1)
        check_float(o, "lr", self.lr, min=0, min_exclusive=True)
        check_float(o, "weight_decay", self.weight_decay, min=0)
        check_float(o, "grad_clip", self.grad_clip, min=0, min_exclusive=True)
        check_float(o, "min_lr_frac", self.min_lr_frac, min=0, max=1)
        check_float(o, "instruction_frac", self.instruction_frac, min=0, max=1)
        check_float(o, "echo_weight", self.echo_weight, min=0, max=1)
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2):
            raise ConfigError(f"ToyTrainConfig.betas must be a pair (beta1, beta2) of numbers in [0, 1), got {self.betas!r}")
        for i, b in enumerate(self.betas):
            check_float(o, f"betas[{i}]", b, min=0, max=1)
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0 <= self.instruction_frac <= 1 or not 0 <= self.echo_weight < 1:
            raise ConfigError("instruction_frac must be in [0, 1] and echo_weight in [0, 1)")
        if self.steps < 1 or self.batch_size < 1 or self.n_examples < 1:
            raise ConfigError("steps, batch_size and n_examples must be positive")

    def model_config(self, d_vocab: int | None = None):
        from transformer_lens import HookedTransformerConfig

        return HookedTransformerConfig(**self.model_fields(d_vocab))

    def model_fields(self, d_vocab: int | None = None) -> dict:
        """The model's architecture as config fields (HookedTransformerConfig's names; the bridge's too)."""
        return dict(
            n_layers=self.n_layers,
            d_model=self.d_model,
            n_heads=self.n_heads,
            d_head=self.d_model // self.n_heads,
            d_mlp=self.d_mlp,
            n_ctx=self.n_ctx,
            d_vocab=len(vocabulary()) if d_vocab is None else d_vocab,
            act_fn="gelu",
            normalization_type="LN",
            positional_embedding_type="standard",
            seed=self.seed,
            default_prepend_bos=True,
            model_name="tvlens-toy",
        )


class SequenceSampler:
    """Draws token-id training sequences of the toy world (numpy Generator, seeded)."""

    def __init__(self, cfg: ToyTrainConfig, rng: np.random.Generator) -> None:
        self.cfg, self.rng = cfg, rng
        self.ids = {t: i for i, t in enumerate(vocabulary())}
        self.tasks: list[ToyTaskDef] = list(world().values())
        benchmark = [t for t in self.tasks if t.evaluated]
        n_echo = len(self.tasks) - len(benchmark)
        weights = [(1 - cfg.echo_weight) / len(benchmark) if t.evaluated else cfg.echo_weight / n_echo for t in self.tasks]
        self.weights = np.array(weights) / sum(weights)
        # per task: encoded inputs, outputs, and rows grouped by label for balanced pair tasks
        self.enc: list[tuple[np.ndarray, np.ndarray, list[np.ndarray] | None]] = []
        for t in self.tasks:
            x = np.array([[self.ids[w] for w in inp] for inp, _ in t.table])
            y = np.array([self.ids[o] for _, o in t.table])
            groups = None
            if t.arity == 2 and t.label_words:
                groups = [np.flatnonzero(y == self.ids[lab]) for lab in t.label_words or ()]
            self.enc.append((x, y, groups))

    def sequence(self, task_idx: int, instruct: bool) -> tuple[list[int], list[int]]:
        """One sequence and the positions whose next token is an answer."""
        x, y, groups = self.enc[task_idx]
        n = self.cfg.n_examples
        if groups is None:
            rows = self.rng.choice(len(y), size=n, replace=False)
        else:
            labs = self.rng.integers(0, len(groups), size=n)
            rows = np.array([self.rng.choice(groups[g]) for g in labs])
        toks = [self.ids[BOS]]
        if instruct:
            toks.append(self.ids[task_token(self.tasks[task_idx].name)])
        answer_at: list[int] = []
        for r in rows:
            toks += x[r].tolist() + [self.ids[ARROW]]
            answer_at.append(len(toks) - 1)
            toks += [int(y[r]), self.ids[SEP]]
        return toks[:-1], answer_at

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded tokens [batch, pos] and a boolean loss mask [batch, pos]."""
        task_idx = self.rng.choice(len(self.tasks), size=size, p=self.weights)
        instruct = self.rng.random(size) < self.cfg.instruction_frac
        seqs = [self.sequence(int(t), bool(i)) for t, i in zip(task_idx, instruct)]
        length = max(len(s) for s, _ in seqs)
        tokens = torch.full((size, length), self.ids[PAD], dtype=torch.long)
        mask = torch.zeros((size, length), dtype=torch.bool)
        for b, (s, at) in enumerate(seqs):
            tokens[b, : len(s)] = torch.tensor(s)
            mask[b, at] = True
        return tokens, mask


def world_fingerprint() -> str:
    """A short hash of the toy world's vocabulary and task tables (checkpoints record it)."""
    import hashlib

    h = hashlib.sha256("\n".join(vocabulary()).encode())
    for d in world().values():
        h.update(repr((d.name, d.table)).encode())
    return h.hexdigest()[:16]


def _lr_at(step: int, cfg: ToyTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


@dataclass(frozen=True)
class ToyTrainResult:
    """What :func:`train_toy_model` returns: the model and its training history."""

    model: object  # HookedTransformer
    config: ToyTrainConfig
    losses: tuple[float, ...]
    seconds: float
    history: dict = field(default_factory=dict)


def train_toy_model(cfg: ToyTrainConfig = ToyTrainConfig(), *, progress: bool = True) -> ToyTrainResult:
    """Train the embedded model from scratch (deterministic for a given config on CPU).

    ``cfg.threads`` sets torch's thread count for the run only; the caller's count is restored after.
    Trains a HookedTransformer, so it needs TransformerLens 3.x (the trained checkpoint loads on either backend).
    """
    from tvlens import _backend

    if not _backend.HAS_HOOKED:
        raise ConfigError("training the embedded model builds a HookedTransformer, which TransformerLens 4 removed; "
                          "train it in an environment with pip install 'transformer_lens<4' (the checkpoint it writes "
                          "loads on TransformerLens 4's bridge too)")
    threads = torch.get_num_threads()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        return _train(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: ToyTrainConfig, progress: bool) -> ToyTrainResult:
    from transformer_lens import HookedTransformer

    from tvlens import _progress

    torch.manual_seed(cfg.seed)
    model = HookedTransformer(cfg.model_config())
    with tempfile.TemporaryDirectory() as tmp:  # TransformerLens reloads tokenizers by path
        from tvlens.toy._tokenizer import build_tokenizer

        model.set_tokenizer(build_tokenizer(tmp))
    model.train()
    sampler = SequenceSampler(cfg, np.random.default_rng(cfg.seed))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = _progress.bar(range(cfg.steps), desc="toy-train", disable=not progress)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        tokens, mask = sampler.batch(cfg.batch_size)
        logits = model(tokens)  # [batch, pos, d_vocab]
        targets = tokens[:, 1:][mask[:, :-1]]
        loss = torch.nn.functional.cross_entropy(logits[:, :-1][mask[:, :-1]], targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            log.info("toy-train step %d loss %.4f", step, loss.item())
    model.eval()
    return ToyTrainResult(model=model, config=cfg, losses=tuple(losses), seconds=time.perf_counter() - t0)


def save_toy_checkpoint(result: ToyTrainResult, directory: str | Path, metrics: dict | None = None) -> Path:
    """Write weights (safetensors), configs and tokenizer to ``directory`` atomically."""
    from safetensors.torch import save_file

    from tvlens._io import atomic_write_dir
    from tvlens.toy._tokenizer import build_tokenizer

    def fill(tmp: Path) -> None:
        state = {k: v.detach().contiguous().clone() for k, v in result.model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        meta = {
            "format": "tvlens-toy/1",
            "world": world_fingerprint(),
            "train_config": asdict(result.config),
            "train_seconds": round(result.seconds, 1),
            "final_loss": result.losses[-1],
            "metrics": metrics or {},
        }
        (tmp / "tvlens_toy.json").write_text(json.dumps(meta, indent=2))
        build_tokenizer(tmp / "tokenizer")

    return atomic_write_dir(directory, fill)


def read_toy_checkpoint(directory: str | Path) -> tuple[dict, object, dict]:
    """A checkpoint written by :func:`save_toy_checkpoint` as (model config fields, tokenizer,
    TransformerLens-format state dict), for either backend."""
    from safetensors.torch import load_file

    from tvlens.toy._tokenizer import load_tokenizer

    directory = Path(directory)
    meta = json.loads((directory / "tvlens_toy.json").read_text())
    tc = meta["train_config"]
    tc["betas"] = tuple(tc["betas"])
    cfg = ToyTrainConfig(**tc)
    if meta.get("world") != world_fingerprint():
        log.warning("toy checkpoint %s was trained on another version of the toy world; its tasks may not match "
                    "tvlens.tasks' toy/* definitions (retrain with `tvlens toy-train`)", directory)
    tokenizer = load_tokenizer(directory / "tokenizer")
    return cfg.model_fields(d_vocab=len(tokenizer.get_vocab())), tokenizer, load_file(str(directory / "model.safetensors"))


def load_toy_checkpoint(directory: str | Path):
    """Load a checkpoint written by :func:`save_toy_checkpoint` as a HookedTransformer."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    fields, tokenizer, state = read_toy_checkpoint(directory)
    model = HookedTransformer(HookedTransformerConfig(**fields), tokenizer=tokenizer, move_to_device=False)
    model.load_state_dict(state)
    model.eval()
    return model
