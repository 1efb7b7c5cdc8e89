"""Mechanistic analyses of a task vector: which heads carry it (OV products, saliency, ablation,
attention sinks, circuit queries), how it becomes an answer (logit lens, linear propagation,
rotation vs stretch), and how vectors relate (geometry, transfer, composition).

Each analysis is a function returning a frozen result with ``.to_frame()`` and ``.plot()``.
"""

# --- heads: OV products, saliency, ablation, sinks ---


# --- circuit queries ---


# --- logit lens, linear propagation ---
from tvlens.analysis.lens import DecodedTokens as DecodedTokens
from tvlens.analysis.lens import LensResult as LensResult
from tvlens.analysis.lens import answer_token_ids as answer_token_ids
from tvlens.analysis.lens import decoded_tokens as decoded_tokens
from tvlens.analysis.lens import lens_logits as lens_logits
from tvlens.analysis.lens import lens_states as lens_states
from tvlens.analysis.lens import logit_lens as logit_lens
from tvlens.analysis.lens import task_alignment as task_alignment
from tvlens.analysis.linear import LinearFit as LinearFit
from tvlens.analysis.linear import RotationStretch as RotationStretch
from tvlens.analysis.linear import linear_propagation as linear_propagation
from tvlens.analysis.linear import polar as polar
from tvlens.analysis.linear import rotation_vs_stretch as rotation_vs_stretch


# --- geometry, transfer, composition ---
