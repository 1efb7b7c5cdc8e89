"""Interventions on TransformerLens hook points, as context managers (``from tvlens import interventions as iv``).

See ``docs/interventions.md``. Every context removes all of its hooks on the way out.
"""

from tvlens._hooks import AblateHeads as AblateHeads
from tvlens._hooks import Activations as Activations
from tvlens._hooks import AddAt as AddAt
from tvlens._hooks import AddPerRow as AddPerRow
from tvlens._hooks import AddToHeads as AddToHeads
from tvlens._hooks import Cache as Cache
from tvlens._hooks import CallPositions as CallPositions
from tvlens._hooks import Edit as Edit
from tvlens._hooks import PatchFrom as PatchFrom
from tvlens._hooks import SetHeadPerRow as SetHeadPerRow
from tvlens._hooks import Span as Span
from tvlens._hooks import ablate_heads as ablate_heads
from tvlens._hooks import add as add
from tvlens._hooks import cache as cache
from tvlens._hooks import intervene as intervene
from tvlens._hooks import patch as patch
from tvlens._hooks import replace as replace

__all__ = ["AblateHeads", "Activations", "AddAt", "AddPerRow", "AddToHeads", "Cache", "CallPositions", "Edit", "PatchFrom", "SetHeadPerRow", "Span",
           "ablate_heads", "add", "cache", "intervene", "patch", "replace"]
