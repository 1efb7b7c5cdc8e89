"""Mechanistic analyses of a task vector: which heads carry it (OV products, saliency, ablation,
attention sinks, circuit queries), how it becomes an answer (logit lens, linear propagation,
rotation vs stretch), and how vectors relate (geometry, transfer, composition).

Each analysis is a function returning a frozen result with ``.to_frame()`` and ``.plot()``.
"""

# --- heads: OV products, saliency, ablation, sinks ---
from tvlens.analysis.ov import OVProducts as OVProducts
from tvlens.analysis.ov import OVReconstruction as OVReconstruction
from tvlens.analysis.ov import ov_products as ov_products
from tvlens.analysis.ov import ov_reconstruction as ov_reconstruction
from tvlens.analysis.saliency import HeadSaliency as HeadSaliency
from tvlens.analysis.saliency import head_saliency as head_saliency
from tvlens.analysis.saliency import spearman as spearman
from tvlens.analysis.ablation import AblationResult as AblationResult
from tvlens.analysis.ablation import head_ablation as head_ablation
from tvlens.analysis.sinks import SinkResult as SinkResult
from tvlens.analysis.sinks import attention_sinks as attention_sinks

# --- circuit queries ---
from tvlens.analysis.circuit import Circuit as Circuit
from tvlens.analysis.circuit import HeadDetail as HeadDetail
from tvlens.analysis.circuit import circuit as circuit


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
from tvlens.analysis.linear import linear_propagation as linear_propagation
from tvlens.analysis.rotation import RotationStretch as RotationStretch
from tvlens.analysis.rotation import polar as polar
from tvlens.analysis.rotation import rotation_vs_stretch as rotation_vs_stretch


# --- geometry, transfer, composition ---
from tvlens.analysis.geometry import CosineMatrix as CosineMatrix
from tvlens.analysis.geometry import Composition as Composition
from tvlens.analysis.geometry import Transfer as Transfer
from tvlens.analysis.geometry import composition as composition
from tvlens.analysis.geometry import train_vectors as train_vectors
from tvlens.analysis.geometry import transfer_matrix as transfer_matrix
from tvlens.analysis.geometry import vector_cosines as vector_cosines


# --- the registry: one declaration per analysis, read by the CLI, the report and the circuit ---
from tvlens.analysis._registry import GROUPS as GROUPS
from tvlens.analysis._registry import Analysis as Analysis
from tvlens.analysis._registry import Context as AnalysisContext  # noqa: F401 (public name)
from tvlens.analysis._registry import Options as Options
from tvlens.analysis._registry import analyses as analyses
from tvlens.analysis._registry import as_results as as_results
from tvlens.analysis._registry import default_layers as default_layers
from tvlens.analysis._registry import get as get_analysis  # noqa: F401 (public name)
from tvlens.analysis._registry import lens_layers as lens_layers
from tvlens.analysis._registry import option_specs as option_specs
from tvlens.analysis._registry import register as register_analysis  # noqa: F401 (public name)
from tvlens.analysis._registry import unregister as unregister_analysis  # noqa: F401 (public name)
