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


# --- geometry, transfer, composition ---
