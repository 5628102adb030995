"""Symbolic function library and affine fitting of edge functions to it."""

from multkan.symbolic.fitting import AffineFit, CandidateRanking, fit_affine, rank_candidates
from multkan.symbolic.library import (
    REALS,
    SAFE_EPS,
    Domain,
    SymbolicFunction,
    SymbolicLibrary,
    default_library,
)

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
