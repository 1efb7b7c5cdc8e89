"""Extracted baselines: vanilla task vectors (Hendel et al.) and function vectors (Todd et al.)."""

from tvlens.baselines.vanilla import vanilla_tv as vanilla_tv
from tvlens.baselines.vanilla import vanilla_tv_per_prompt as vanilla_tv_per_prompt
from tvlens.baselines.function_vector import AIEResult as AIEResult
from tvlens.baselines.function_vector import function_vector as function_vector
from tvlens.baselines.function_vector import head_aie as head_aie
from tvlens.baselines.sweep import SweepResult as SweepResult
from tvlens.baselines.sweep import sweep as sweep
from tvlens.baselines.compare import CompareResult as CompareResult
from tvlens.baselines.compare import compare as compare
