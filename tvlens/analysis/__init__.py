"""Mechanistic analyses of a task vector: which heads carry it (OV products, saliency, ablation,
attention sinks, circuit queries), how it becomes an answer (logit lens, linear propagation,
rotation vs stretch), and how vectors relate (geometry, transfer, composition).

Each analysis is a function returning a frozen result with ``.to_frame()`` and ``.plot()``.
"""

# --- heads: OV products, saliency, ablation, sinks ---


# --- circuit queries ---


# --- logit lens, linear propagation ---


# --- geometry, transfer, composition ---
from tvlens.analysis.geometry import CosineMatrix as CosineMatrix
from tvlens.analysis.geometry import Composition as Composition
from tvlens.analysis.geometry import Transfer as Transfer
from tvlens.analysis.geometry import composition as composition
from tvlens.analysis.geometry import train_vectors as train_vectors
from tvlens.analysis.geometry import transfer_matrix as transfer_matrix
from tvlens.analysis.geometry import vector_cosines as vector_cosines
