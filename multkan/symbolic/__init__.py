"""Symbolic function library, affine fitting of edge functions to it, and formulas of whole models.

The names load their submodules, and with them torch and sympy, on first use.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from .edges import auto_symbolic, fix_symbolic, suggest_symbolic, unfix_symbolic
    from .fitting import AffineFit, CandidateRanking, fit_affine, rank_candidates
    from .formula import simplify_constants, snap_constants, symbolic_formula
    from .library import Domain, REALS, SAFE_EPS, SymbolicFunction, SymbolicLibrary, default_library

__all__ = [
    "REALS",
    "SAFE_EPS",
    "AffineFit",
    "CandidateRanking",
    "Domain",
    "SymbolicFunction",
    "SymbolicLibrary",
    "auto_symbolic",
    "default_library",
    "fit_affine",
    "fix_symbolic",
    "rank_candidates",
    "simplify_constants",
    "snap_constants",
    "suggest_symbolic",
    "symbolic_formula",
    "unfix_symbolic",
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
        "auto_symbolic": ".edges",
        "fix_symbolic": ".edges",
        "suggest_symbolic": ".edges",
        "unfix_symbolic": ".edges",
        "simplify_constants": ".formula",
        "snap_constants": ".formula",
        "symbolic_formula": ".formula",
    },
)
