"""multkan: Kolmogorov-Arnold networks with sum and multiplication nodes for scientific discovery."""

from .datasets import create_dataset, dataset_from_arrays
from .errors import (
    CheckpointError,
    GraphError,
    InvalidDataError,
    InvalidParameterError,
    MultKANError,
    MultKANWarning,
    NonFiniteLossWarning,
    SymbolicError,
    SymbolicFitWarning,
)
from .graph import EdgeId, build_graph
from .kanpiler import kanpile
from .model import MultKAN
from .train import fit

__version__ = "0.1.0"


def __getattr__(name: str):
    # scikit-learn is imported only when the estimator is used, to keep `import multkan` fast.
    if name == "KANRegressor":
        from .sklearn import KANRegressor

        return KANRegressor
    if name == "BatchedMultKAN":
        from .batch import BatchedMultKAN

        return BatchedMultKAN
    raise AttributeError(f"module 'multkan' has no attribute {name!r}")


__all__ = [
    "BatchedMultKAN",
    "CheckpointError",
    "EdgeId",
    "GraphError",
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
    "fit",
    "kanpile",
]
