"""Structure search by relaxation (Taranov, Bakhteev & Strijov): MixedOp cells, first-order
DARTS, discretisation."""

from kompakt.search.darts import SearchConfig, search
from kompakt.search.space import MixedOp, SearchedNet, SuperNet

__all__ = ["MixedOp", "SearchConfig", "SearchedNet", "SuperNet", "search"]
