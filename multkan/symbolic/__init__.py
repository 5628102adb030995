"""Symbolic function library and affine fitting of edge functions to it.

The names load their submodules, and with them torch and sympy, on first use.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .fitting import AffineFit, CandidateRanking, fit_affine, rank_candidates
    from .library import Domain, REALS, SAFE_EPS, SymbolicFunction, SymbolicLibrary, default_library

__all__ = [
    "REALS",
    "SAFE_EPS",
    "AffineFit",
    "CandidateRanking",
    "Domain",
    "SymbolicFunction",
    "SymbolicLibrary",
    "default_library",
    "fit_affine",
    "rank_candidates",
]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    {
        "AffineFit": ".fitting",
        "CandidateRanking": ".fitting",
        "Domain": ".library",
        "REALS": ".library",
        "SAFE_EPS": ".library",
        "SymbolicFunction": ".library",
        "SymbolicLibrary": ".library",
        "default_library": ".library",
        "fit_affine": ".fitting",
        "rank_candidates": ".fitting",
    },
)
