"""Configuration of learned-task-vector training."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from tvlens.errors import ConfigError


@dataclass(frozen=True)
class LTVConfig:
    """How a learned task vector is trained. ``LTVConfig()`` is tvlens's fast batched default;
    ``LTVConfig.paper()`` is the recipe of Yang et al. (batch 1, lr 5e-3, 100-query epochs)."""

    lr: float = 6e-2  # peak AdamW learning rate (in units of the site's residual RMS, see scale_to_residual)
    weight_decay: float = 0.01  # AdamW weight decay
    init_range: float = 0.01  # theta starts as Uniform(-init_range, init_range) (times the RMS, likewise)
    scale_to_residual: bool = True  # lr and init_range scale with the residual RMS measured at each site
    batch_size: int = 32  # queries per optimiser step
    epoch_size: int = 256  # queries drawn (with reshuffling) per epoch
    max_epochs: int = 25  # upper bound on epochs
    patience: int = 6  # stop after this many epochs without a better validation accuracy
    schedule: Literal["linear", "constant"] = "linear"  # lr decays linearly to 0 over max_epochs
    n_train: int = 600  # at most this many training queries (the split's first n)
    n_val: int = 400  # at most this many validation queries
    fast: bool = True  # prefix-cached fast path (False: naive full forward, for checking)
    padding_side: Literal["left", "right"] = "left"  # how training prompts are padded
    multi_token: bool = True  # generation tasks: mean teacher-forced NLL over every answer token
    eval_batch_size: int = 64  # queries per batch in validation
    seed: int = 0  # seeds theta's init and the query order

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.batch_size < 1 or self.epoch_size < 1 or self.max_epochs < 1:
            raise ConfigError("lr, batch_size, epoch_size and max_epochs must be positive")
        if self.patience < 1 or self.init_range < 0 or self.n_train < 1 or self.n_val < 1:
            raise ConfigError("patience, n_train and n_val must be >= 1 and init_range >= 0")
        if self.schedule not in ("linear", "constant"):
            raise ConfigError(f"schedule must be 'linear' or 'constant', got {self.schedule!r}")
        if self.padding_side not in ("left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")

    @classmethod
    def paper(cls, **changes) -> LTVConfig:
        """The paper's recipe: U(-0.1, 0.1), AdamW lr 5e-3 wd 0.01, linear decay, batch 1,
        epochs of 100 queries up to 10, patience 2, 600 train / 400 validation queries."""
        base = dict(lr=5e-3, weight_decay=0.01, init_range=0.1, batch_size=1, epoch_size=100,
                    max_epochs=10, patience=2, schedule="linear", n_train=600, n_val=400, scale_to_residual=False)
        base.update(changes)
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LTVConfig:
        return cls(**d)
