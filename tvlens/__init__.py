"""tvlens: learned task vectors and how they steer a transformer, on TransformerLens.

>>> import tvlens as tv
>>> model = tv.load_model("toy")          # the embedded model, offline
>>> task = tv.tasks.get("toy/antonym")
"""

import logging as _logging

from tvlens import errors as errors
from tvlens import interventions as interventions
from tvlens import tasks as tasks
from tvlens._fingerprint import fingerprint as fingerprint
from tvlens._models import load_model as load_model
from tvlens.evaluate import BaselineTable as BaselineTable
from tvlens.evaluate import EvalResult as EvalResult
from tvlens.evaluate import evaluate as evaluate
from tvlens.evaluate import icl_baselines as icl_baselines
from tvlens.prompts import PromptBatch as PromptBatch
from tvlens.prompts import PromptSet as PromptSet
from tvlens.prompts import SplitConfig as SplitConfig
from tvlens.prompts import TaskSplits as TaskSplits
from tvlens.prompts import make_prompts as make_prompts
from tvlens.prompts import make_splits as make_splits
from tvlens.prompts import tokenize_prompts as tokenize_prompts

__version__ = "0.1.0"
_logging.getLogger(__name__).addHandler(_logging.NullHandler())

from tvlens.ltv import LTVConfig as LTVConfig
from tvlens.ltv import LTVResult as LTVResult
from tvlens.ltv import train_ltv as train_ltv
from tvlens.ltv import train_ltv_layers as train_ltv_layers
from tvlens.sites import Site as Site
from tvlens.sites import site_grid as site_grid
from tvlens.steer import steer as steer
from tvlens.steer import steering as steering
from tvlens.vector import TaskVector as TaskVector
from tvlens.ltv import paper_scenarios as paper_scenarios
from tvlens.baselines import vanilla_tv as vanilla_tv
from tvlens.baselines import AIEResult as AIEResult
from tvlens.baselines import function_vector as function_vector
from tvlens.baselines import head_aie as head_aie
from tvlens.baselines import SweepResult as SweepResult
from tvlens.baselines import sweep as sweep
from tvlens.baselines import CompareResult as CompareResult
from tvlens.baselines import compare as compare
from tvlens.baselines import vanilla_tv_per_prompt as vanilla_tv_per_prompt
from tvlens import analysis as analysis
from tvlens.analysis.circuit import circuit as circuit
from tvlens._claims import ClaimsResult as ClaimsResult
from tvlens._claims import claims as claims
