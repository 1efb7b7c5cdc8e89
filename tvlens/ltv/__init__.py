"""Learned task vectors: training (naive and prefix-cached fast path) and configuration."""

from tvlens.ltv._config import LTVConfig as LTVConfig
from tvlens.ltv._objective import FastObjective as FastObjective
from tvlens.ltv._objective import NaiveObjective as NaiveObjective
from tvlens.ltv._objective import TargetBatch as TargetBatch
from tvlens.ltv._objective import build_targets as build_targets
from tvlens.ltv._train import LTVResult as LTVResult
from tvlens.ltv._train import train_ltv as train_ltv
from tvlens.ltv._scenarios import Scenario as Scenario
from tvlens.ltv._scenarios import paper_scenarios as paper_scenarios
from tvlens.ltv._parallel import train_ltv_layers as train_ltv_layers
