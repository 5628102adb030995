"""Snap the edges of a trained model to symbolic functions.

Each edge ``phi`` is replaced by ``c * f(a * x + b) + d`` with ``f`` from a
:class:`~multkan.symbolic.library.SymbolicLibrary`, fitted to the edge's
values on explicit inputs or on the stored training inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import SymbolicError, SymbolicFitWarning, invalid_parameter, user_stacklevel
from ..graph import EdgeId, graph_layers
from .fitting import fit_affine, rank_candidates
from .library import SymbolicFunction, SymbolicLibrary

if TYPE_CHECKING:
    from ..model import MultKAN

__all__ = ["EdgeFit", "suggest_symbolic", "fix_symbolic", "unfix_symbolic", "auto_symbolic", "resolve_library"]


@dataclass(frozen=True)
class EdgeFit:
    """One candidate fit of an edge.

    Attributes
    ----------
    edge : EdgeId
    name : str
        Library function name.
    params : tuple of float
        ``(a, b, c, d)`` of ``c * f(a * x + b) + d``.
    r2 : float
        Coefficient of determination against the edge's values.
    complexity : int
    score : float
        Ranking score, lower is better (see :func:`multkan.symbolic.rank_candidates`).
    """

    edge: EdgeId
    name: str
    params: tuple[float, float, float, float]
    r2: float
    complexity: int
    score: float


def resolve_library(model: MultKAN, lib: SymbolicLibrary | Iterable[str | SymbolicFunction] | None) -> SymbolicLibrary:
    """Return the candidates: the model's library, a subset by name, or user entries added to it."""
    if lib is None:
        return model.library
    if isinstance(lib, SymbolicLibrary):
        for entry in lib.values():
            if entry.name not in model.library:
                model.library.add(entry)
        return lib
    names = []
    for item in lib:
        if isinstance(item, SymbolicFunction):
            if item.name not in model.library:
                model.library.add(item)
            names.append(item.name)
        elif isinstance(item, str):
            names.append(item)
        else:
            raise invalid_parameter("lib", "a SymbolicLibrary or names / SymbolicFunction entries", item)
    return model.library.subset(names)


def _inputs(model: MultKAN, x: torch.Tensor | None, purpose: str) -> torch.Tensor:
    if x is not None:
        return x
    if model.train_input is None:
        raise SymbolicError(
            f"{purpose} needs data to fit parameters: pass x=<inputs of shape (batch, {model.n_inputs})>, "
            "or call fit() first so the training inputs are stored"
            + (", or use fit_params=False" if purpose == "fix_symbolic" else "")
        )
    return model.train_input.to(model.device)


def _edge_samples(model: MultKAN, x: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the inputs (batch, n_in) and edge values (batch, n_in, n_sub) of one layer."""
    with torch.no_grad():
        values = model.layer_inputs(x)[layer]
        return values, model.layers[layer].edge_values(values)


def _fit_edges(model, x, layer, edges, library, a_range, b_range):
    inputs, values = _edge_samples(model, x, layer)
    return _fit_samples(inputs, values, edges, library, a_range, b_range)


def _fit_samples(inputs, values, edges, library, a_range, b_range):
    """Fit every library function to the given edges' samples, from :func:`_edge_samples`."""
    sources = [e.source for e in edges]
    targets = [e.target for e in edges]
    edge_x = inputs[:, sources].T.contiguous()
    edge_y = values[:, sources, targets].T.contiguous()
    return fit_affine(edge_x, edge_y, library, a_range=a_range, b_range=b_range)


def _strong_edges(values, edges) -> torch.Tensor:
    """Return which edges have a standard deviation of at least ``STRONG_EDGE`` times the largest among ``edges``."""
    if values.shape[0] < 2:
        return torch.zeros(len(edges), dtype=torch.bool)
    sources = torch.tensor([e.source for e in edges], device=values.device)
    targets = torch.tensor([e.target for e in edges], device=values.device)
    spread = values[:, sources, targets].std(dim=0)
    return (spread >= STRONG_EDGE * spread.max()) & (spread > 0)


def _without_constants(fit, strong: torch.Tensor):
    """Return ``fit`` with the constant candidates made invalid on the ``strong`` edges that have another valid candidate.

    A constant fits every edge with r2 = 0, and when no library function
    fits an edge, simplicity can still rank it first. On a spline of
    J0(20 x) (test RMSE 3e-4, best library fit a gaussian with r2 0.58)
    the snapped model predicted a constant.
    """
    import dataclasses

    constant = torch.tensor([function.is_constant for function in fit.functions], device=fit.r2.device)
    # An edge with no valid non-constant candidate (a library of "0" only) keeps its constants.
    alternative = (fit.valid & ~constant[None, :]).any(dim=1)
    blocked = (strong.to(fit.r2.device) & alternative)[:, None] & constant[None, :]
    if not bool(blocked.any()):
        return fit
    return dataclasses.replace(fit, valid=fit.valid & ~blocked, r2=fit.r2.masked_fill(blocked, float("-inf")))


def _max_r2_when_poor(fit, strong: torch.Tensor, choices: list[int]) -> list[int]:
    """Replace the choice of each strong edge whose chosen r2 is below ``STRONG_EDGE_R2`` by its most accurate valid candidate.

    On J0(20 x) the simplest valid candidate was ``x`` with r2 0.0002,
    and the gaussian (r2 0.58) is the better of two poor fits.
    """
    rows = torch.arange(len(choices), device=fit.r2.device)
    chosen = torch.tensor(choices, device=fit.r2.device)
    best = torch.where(fit.valid, fit.r2, torch.full_like(fit.r2, float("-inf"))).argmax(dim=1)
    poor = fit.r2[rows, chosen.clamp_min(0)] < STRONG_EDGE_R2
    replace = strong.to(fit.r2.device) & (chosen >= 0) & poor & fit.valid[rows, best]
    return torch.where(replace, best, chosen).tolist()


def suggest_symbolic(
    model: MultKAN,
    edge: EdgeId | Sequence[int],
    lib=None,
    *,
    x: torch.Tensor | None = None,
    topk: int = 5,
    weight_simple: float = 0.8,
    r2_threshold: float = 0.0,
    a_range: tuple[float, float] = (-10.0, 10.0),
    b_range: tuple[float, float] = (-10.0, 10.0),
) -> list[EdgeFit]:
    """Rank library functions for one edge, best first.

    As in :func:`auto_symbolic`, an edge whose standard deviation is at
    least ``STRONG_EDGE`` (1%) of the largest in its layer gets no constant
    candidate while another one is valid.

    Returns
    -------
    list of EdgeFit
        At most ``topk`` candidates whose fit is valid on the edge's inputs.
    """
    edge = model.edge(edge)
    library = resolve_library(model, lib)
    inputs, values = _edge_samples(model, _inputs(model, x, "suggest_symbolic"), edge.layer)
    # The same rule as auto_symbolic: the edge against the layer's active spline edges.
    layer_edges = _active_spline_edges(model, edge.layer)
    if edge not in layer_edges:
        layer_edges.append(edge)
    strong = _strong_edges(values, layer_edges)[layer_edges.index(edge)].reshape(1)
    fit = _without_constants(_fit_samples(inputs, values, [edge], library, a_range, b_range), strong)
    ranking = rank_candidates(fit, None, weight_simple=weight_simple, r2_threshold=r2_threshold)
    suggestions = []
    for index in ranking.order[0].tolist():
        score = float(ranking.score[0, index])
        if score == float("inf") or len(suggestions) >= topk:
            break
        function = fit.functions[index]
        params = tuple(float(v) for v in fit.params[0, index])
        suggestions.append(EdgeFit(edge, function.name, params, float(fit.r2[0, index]), function.complexity, score))
    return suggestions


# Existing edges named in the error for a missing one.
EDGES_LISTED = 12
# auto_symbolic and suggest_symbolic offer a constant for an edge only when
# its standard deviation is below this fraction of the largest in its layer.
STRONG_EDGE = 0.01
# Such an edge whose chosen function explains less than this share of its
# variance takes its most accurate candidate instead. NOTE: a judgement
# (below it a simpler function barely describes the edge), not a survey.
STRONG_EDGE_R2 = 0.6


def _set_edge_function(model: MultKAN, edge: EdgeId, name: str | None, params=None) -> None:
    """Update the compiled layer and the graph IR for one edge; ``name`` None restores its spline."""
    layer = model.layers[edge.layer]
    structure = graph_layers(model.graph)
    source = structure[edge.layer].nodes[edge.source]
    target = structure[edge.layer + 1].subnodes[edge.target]
    if not model.graph.has_edge(source, target):
        action = "made symbolic" if name is not None else "turned back into a spline"
        present = [
            (edge.layer, i, j)
            for i, node in enumerate(structure[edge.layer].nodes)
            for j, sub in enumerate(structure[edge.layer + 1].subnodes)
            if model.graph.has_edge(node, sub)
        ]
        listing = ", ".join(map(str, present[:EDGES_LISTED])) + (", ..." if len(present) > EDGES_LISTED else "")
        raise SymbolicError(
            f"edge {tuple(edge)} is not in the graph (pruned, or never created, as in a compiled formula); it cannot be {action}. "
            f"Edges of layer {edge.layer}: {listing or 'none'}"
        )
    if name is None:
        layer.set_symbolic(edge.source, edge.target, None)
        model.graph.edges[source, target]["function"] = {"type": "spline"}
        return
    function = model.library[name]
    layer.set_symbolic(edge.source, edge.target, function.name, function.safe_torch_fn, params)
    model.graph.edges[source, target]["function"] = {"type": "symbolic", "name": function.name, "params": list(params)}


def fix_symbolic(
    model: MultKAN,
    edge: EdgeId | Sequence[int],
    name: str,
    *,
    fit_params: bool = True,
    x: torch.Tensor | None = None,
    a_range: tuple[float, float] = (-10.0, 10.0),
    b_range: tuple[float, float] = (-10.0, 10.0),
) -> float | None:
    """Replace one edge by ``c * f(a * x + b) + d`` with ``f = library[name]``.

    With ``fit_params`` the parameters are fitted to the edge's values on
    ``x`` (or the stored training inputs) and the fit's r2 is returned.
    Without it, ``(a, b, c, d) = (1, 0, 1, 0)`` and None is returned, which
    needs no data and no forward pass.
    """
    edge = model.edge(edge)
    function = model.library[name]
    if not fit_params:
        _set_edge_function(model, edge, function.name, (1.0, 0.0, 1.0, 0.0))
        return None

    fit = _fit_edges(model, _inputs(model, x, "fix_symbolic"), edge.layer, [edge], [function], a_range, b_range)
    if not bool(fit.valid[0, 0]):
        raise SymbolicError(
            f"cannot fix edge {tuple(edge)} to {function.name!r}: no (a, b) in a_range={a_range}, b_range={b_range} "
            f"keeps a*x + b inside its domain on the edge's inputs; choose another function"
        )
    params = tuple(float(v) for v in fit.params[0, 0])
    _set_edge_function(model, edge, function.name, params)
    return float(fit.r2[0, 0])


def unfix_symbolic(model: MultKAN, edge: EdgeId | Sequence[int]) -> None:
    """Turn a symbolic edge back into its spline, which was kept untouched."""
    _set_edge_function(model, model.edge(edge), None)


def _active_spline_edges(model: MultKAN, layer: int) -> list[EdgeId]:
    mask = model.layers[layer].spline_mask
    return [EdgeId(layer, int(i), int(j)) for i, j in mask.nonzero().tolist()]


# auto_symbolic warns about snapped edges whose fit has a lower r2.
WEAK_R2 = 0.99

# A chain collapses into one function only when that function fits the
# chain's output at least this well (see auto_symbolic).
CHAIN_R2 = 0.9999


def _chains(model: MultKAN) -> list[tuple[EdgeId, EdgeId]]:
    """Return the spline edge pairs ``(l, i, n), (l + 1, n, j)`` around sum nodes with one incoming and one outgoing edge."""
    chains = []
    for position in range(len(model.layers) - 1):
        layer, after = model.layers[position], model.layers[position + 1]
        incoming = (layer.spline_mask + layer.symbolic_mask) > 0
        outgoing = (after.spline_mask + after.symbolic_mask) > 0
        for node in range(layer.n_sum):
            sources = incoming[:, node].nonzero().flatten().tolist()
            targets = outgoing[node].nonzero().flatten().tolist()
            if len(sources) != 1 or len(targets) != 1:
                continue
            first, second = EdgeId(position, sources[0], node), EdgeId(position + 1, node, targets[0])
            if bool(layer.spline_mask[sources[0], node]) and bool(after.spline_mask[node, targets[0]]):
                chains.append((first, second))
    return chains


def _collapse_chains(model, inputs, library, a_range, b_range, weight_simple, r2_threshold, selection, r2_factor) -> list[EdgeFit]:
    """Snap chains whose output one library function fits with r2 >= CHAIN_R2; return their records."""
    identity = next((function for function in library.values() if function.is_identity), None)
    chains = _chains(model) if identity is not None else []
    if not chains:
        return []
    with torch.no_grad():
        layer_inputs = model.layer_inputs(inputs)
        chain_x = torch.stack([layer_inputs[first.layer][:, first.source] for first, _ in chains])
        chain_y = torch.stack(
            [model.layers[second.layer].edge_values(layer_inputs[second.layer])[:, second.source, second.target] for _, second in chains]
        )
    fit = fit_affine(chain_x, chain_y, library, a_range=a_range, b_range=b_range)
    ranking = rank_candidates(fit, None, weight_simple=weight_simple, r2_threshold=r2_threshold)
    choices = _simplest_choices(fit, r2_threshold, r2_factor, ranking.best) if selection == "simplest" else ranking.best.tolist()
    report = []
    for row, (first, second) in enumerate(chains):
        best = int(choices[row])
        layer = model.layers[first.layer]
        scale, bias = float(layer.node_scale[first.target]), float(layer.node_bias[first.target])
        if best < 0 or fit.functions[best].is_constant or float(fit.r2[row, best]) < CHAIN_R2 or scale == 0.0:
            continue
        function = fit.functions[best]
        params = tuple(float(v) for v in fit.params[row, best])
        # The node passes on scale * u + bias, which the identity edge maps back to u.
        inverse = (1.0 / scale, -bias / scale, 1.0, 0.0)
        _set_edge_function(model, first, function.name, params)
        _set_edge_function(model, second, identity.name, inverse)
        score = float(ranking.score[row, best])
        r2 = float(fit.r2[row, best])
        report.append(EdgeFit(first, function.name, params, r2, function.complexity, score))
        report.append(EdgeFit(second, identity.name, inverse, r2, identity.complexity, score))
    return report


# The least unexplained variance _simplest_choices multiplies by r2_factor.
# With 1e-5 and the default factor 10, x (1 - r2 1.4e-5) wins over a sliver
# of tan (6e-8) on the edges of x * y. x^2 (about 1e-3) still loses to
# exp(-x^2 / 2) on [1, 3].
SIMPLEST_FLOOR = 1e-5


def _simplest_choices(fit, r2_threshold: float, r2_factor: float, scored: torch.Tensor) -> list[int]:
    """Index of the least complex candidate within ``r2_factor`` of the best unexplained variance, per edge.

    The best unexplained variance counts as at least SIMPLEST_FLOOR, so the
    limit is never below ``r2_factor * SIMPLEST_FLOOR``. The candidate that
    ranks first by score (``scored``, -1 for none) is always eligible, so
    this choice is never more complex than the ranking's.
    """
    r2 = torch.where(fit.valid, fit.r2.to(torch.float64), -torch.inf)
    complexity = torch.tensor([f.complexity for f in fit.functions], dtype=torch.float64)
    # Among equally complex candidates, one that cancels large terms comes last (see AffineFit.cancels).
    cancels = fit.cancels()
    choices = []
    for row in range(r2.shape[0]):
        best_r2 = float(r2[row].max())
        if not best_r2 >= r2_threshold:
            choices.append(-1)
            continue
        limit = r2_factor * max(1.0 - best_r2, SIMPLEST_FLOOR) + 1e-12
        eligible = (1.0 - r2[row] <= limit) & (r2[row] >= r2_threshold)
        if int(scored[row]) >= 0:
            eligible[int(scored[row])] = True
        order = sorted(
            eligible.nonzero().flatten().tolist(),
            key=lambda j: (float(complexity[j]), bool(cancels[row, j]), -float(r2[row, j])),
        )
        choices.append(order[0])
    return choices


def auto_symbolic(
    model: MultKAN,
    lib=None,
    *,
    x: torch.Tensor | None = None,
    r2_threshold: float = 0.0,
    weight_simple: float = 0.8,
    a_range: tuple[float, float] = (-10.0, 10.0),
    b_range: tuple[float, float] = (-10.0, 10.0),
    selection: str = "score",
    r2_factor: float = 10.0,
    collapse_chains: bool = True,
    warn_weak: bool = True,
) -> list[EdgeFit]:
    """Snap every active spline edge to its best-ranked library function.

    With ``selection="score"`` each edge takes the candidate with the best
    ranking score (see :func:`multkan.symbolic.rank_candidates`). With
    ``selection="simplest"`` it takes the least complex candidate whose
    unexplained variance ``1 - r2`` is at most ``r2_factor`` times that of
    the best fit, which prefers ``x`` over a slightly better ``arcsin`` on
    a nearly straight edge. A trained spline is only so close to the
    function it approximates, so the score adds ``UNEXPLAINED_FLOOR``
    (1e-4) to ``1 - r2`` and "simplest" counts the best ``1 - r2`` as at
    least ``SIMPLEST_FLOOR`` (1e-5). So a sliver of ``tan`` that also fits
    the spline's small wiggles does not beat ``x``. Among equally complex candidates it prefers one
    that does not cancel large terms (:meth:`AffineFit.cancels`). Neither
    rule sets a clean edge (best r2 > 0.99) to the constant ``0``. An edge
    whose standard deviation is at least ``STRONG_EDGE`` (1%) of the largest
    in its layer is not set to a constant while another candidate is
    valid, and when its chosen function
    has r2 below ``STRONG_EDGE_R2`` (0.6) it takes its most accurate
    candidate instead, which the weak-fit warning then lists.

    With ``collapse_chains``, a chain comes first: a sum node with exactly
    one incoming and one outgoing edge, both splines, such as the hidden
    node of ``[1, 1, 1]``. The chain's output is a function of one input,
    and when one library function fits it with r2 of at least
    ``CHAIN_R2``, the first edge takes that function and the second the
    identity. A network may split ``sin(3x)`` into two parabola-like
    edges, each of which ``x^2`` fits well while their composition is not
    ``sin``. Other chains are left to the per-edge fits.

    Layers are processed in order. Each layer's edges are fitted in one
    vectorised call on the inputs that the already snapped layers produce,
    so later layers see the symbolic functions of earlier ones. An edge
    with no candidate above ``r2_threshold`` keeps its spline and a
    :class:`~multkan.errors.SymbolicFitWarning` names it. With
    ``warn_weak``, another one names the edges snapped with r2 below
    ``WEAK_R2`` (0.99), whose functions may not match the splines.

    Returns
    -------
    list of EdgeFit
        One record per snapped edge, the collapsed chains first. Both edges
        of a chain carry the r2 and score of the chain's fit.
    """
    if selection not in ("score", "simplest"):
        raise invalid_parameter("selection", "'score' or 'simplest'", selection)
    library = resolve_library(model, lib)
    inputs = _inputs(model, x, "auto_symbolic")
    report: list[EdgeFit] = []
    if collapse_chains:
        report.extend(_collapse_chains(model, inputs, library, a_range, b_range, weight_simple, r2_threshold, selection, r2_factor))
    unfitted: list[EdgeId] = []
    for layer in range(len(model.layers)):
        edges = _active_spline_edges(model, layer)
        if not edges:
            continue
        layer_inputs, values = _edge_samples(model, inputs, layer)
        strong = _strong_edges(values, edges)
        fit = _without_constants(_fit_samples(layer_inputs, values, edges, library, a_range, b_range), strong)
        ranking = rank_candidates(fit, None, weight_simple=weight_simple, r2_threshold=r2_threshold)
        choices = _simplest_choices(fit, r2_threshold, r2_factor, ranking.best) if selection == "simplest" else ranking.best.tolist()
        choices = _max_r2_when_poor(fit, strong, list(choices))
        for row, edge in enumerate(edges):
            best = int(choices[row])
            if best < 0:
                unfitted.append(edge)
                continue
            function = fit.functions[best]
            params = tuple(float(v) for v in fit.params[row, best])
            _set_edge_function(model, edge, function.name, params)
            report.append(EdgeFit(edge, function.name, params, float(fit.r2[row, best]), function.complexity, float(ranking.score[row, best])))

    import warnings

    if unfitted:
        warnings.warn(
            f"{len(unfitted)} edges kept their splines because no candidate reached r2 >= {r2_threshold}: "
            f"{[tuple(e) for e in unfitted]}. Lower r2_threshold or extend the library.",
            SymbolicFitWarning,
            stacklevel=user_stacklevel(),
        )
    # Constants go only to weak edges (see _without_constants), where r2 = 0 is expected.
    constants = {function.name for function in library.values() if function.is_constant}
    weak = [(tuple(record.edge), record.name, round(record.r2, 4)) for record in report if record.r2 < WEAK_R2 and record.name not in constants]
    if weak and warn_weak:
        warnings.warn(
            f"{len(weak)} edges were snapped with r2 below {WEAK_R2}, so the formula may not match the network: {weak}. "
            "Check the candidates with suggest_symbolic(edge), train longer or refine the grid before snapping, "
            "or pass warn_weak=False.",
            SymbolicFitWarning,
            stacklevel=user_stacklevel(),
        )
    return report
