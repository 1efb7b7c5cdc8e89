"""Extracted baselines: vanilla task vectors (Hendel et al.) and function vectors (Todd et al.)."""

from tvlens.baselines.vanilla import vanilla_tv as vanilla_tv
