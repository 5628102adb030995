"""multkan: Kolmogorov-Arnold networks with sum and multiplication nodes for scientific discovery.

The public names load their submodules on first use (PEP 562), so
``import multkan`` imports neither torch nor networkx, sympy or
scikit-learn, and ``multkan --help`` stays fast. The exception classes
import nothing heavy and load at once.
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes
from .errors import (
    CheckpointError,
    GraphError,
    GridWarning,
    InputScaleWarning,
    InvalidDataError,
    InvalidParameterError,
    MultKANError,
    MultKANWarning,
    NonFiniteLossWarning,
    SymbolicError,
    SymbolicFitWarning,
)

if TYPE_CHECKING:
    from .batch import BatchedMultKAN
    from .conserved import find_conserved
    from .datasets import create_dataset, dataset_from_arrays
    from .graph import EdgeId, build_graph
    from .kanpiler import kanpile
    from .model import MultKAN
    from .sklearn import KANRegressor
    from .allocator import set_malloc_thresholds
    from .train import fit

__version__ = "0.1.0"

__all__ = [
    "BatchedMultKAN",
    "CheckpointError",
    "EdgeId",
    "GraphError",
    "GridWarning",
    "InputScaleWarning",
    "InvalidDataError",
    "InvalidParameterError",
    "KANRegressor",
    "MultKAN",
    "MultKANError",
    "MultKANWarning",
    "NonFiniteLossWarning",
    "SymbolicError",
    "SymbolicFitWarning",
    "build_graph",
    "create_dataset",
    "dataset_from_arrays",
    "find_conserved",
    "fit",
    "kanpile",
    "set_malloc_thresholds",
]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    {
        "BatchedMultKAN": ".batch",
        "EdgeId": ".graph",
        "KANRegressor": ".sklearn",
        "MultKAN": ".model",
        "build_graph": ".graph",
        "create_dataset": ".datasets",
        "dataset_from_arrays": ".datasets",
        "find_conserved": ".conserved",
        "fit": ".train",
        "kanpile": ".kanpiler",
        "set_malloc_thresholds": ".allocator",
    },
)
