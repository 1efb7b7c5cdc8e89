"""Configuration of learned-task-vector training."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from tvlens._validate import check_bool, check_choice, check_float, check_int, no_type_check
from tvlens.errors import ConfigError


@no_type_check  # validates its own fields (tvlens._validate.no_type_check)
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
        # every field by name: the message names the field and its allowed range
        o = "LTVConfig"
        check_float(o, "lr", self.lr, min=0, min_exclusive=True)
        check_float(o, "weight_decay", self.weight_decay, min=0)
        check_float(o, "init_range", self.init_range, min=0)
        check_bool(o, "scale_to_residual", self.scale_to_residual)
        for name in ("batch_size", "epoch_size", "max_epochs", "patience", "n_train", "n_val", "eval_batch_size"):
            check_int(o, name, getattr(self, name), min=1)
        check_choice(o, "schedule", self.schedule, ("linear", "constant"))
        check_bool(o, "fast", self.fast)
        check_choice(o, "padding_side", self.padding_side, ("left", "right"))
        check_bool(o, "multi_token", self.multi_token)
        check_int(o, "seed", self.seed, min=0, max=2**63 - 1)

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
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"unknown LTVConfig field(s) {unknown}; the fields are {sorted(cls.__dataclass_fields__)}")
        return cls(**d)
