"""Attribution scores and pruning of MultKAN models.

:func:`attribution` and :func:`feature_score` score edges, nodes and inputs
from the standard deviation of every edge's values, passing shares of
the output scores backwards through the network. :func:`prune` uses those scores to
return a smaller copy of a model; :func:`prune_edge`, :func:`prune_node` and
:func:`prune_input` make single edits. The model passed in is never changed.
:func:`detect_separability`, :func:`test_symmetry` and :func:`modular_tree`
find additive, multiplicative and general modules from second derivatives.
"""

from .attribution import Attribution, attribution, edge_statistics, feature_score
from .pruning import PruningWarning, prune, prune_edge, prune_input, prune_node
from .separability import ModularTree, SeparabilityResult, detect_separability, interaction_scores, modular_tree, test_symmetry

__all__ = [
    "Attribution",
    "ModularTree",
    "PruningWarning",
    "SeparabilityResult",
    "attribution",
    "detect_separability",
    "edge_statistics",
    "feature_score",
    "interaction_scores",
    "modular_tree",
    "prune",
    "prune_edge",
    "prune_input",
    "prune_node",
    "test_symmetry",
]
