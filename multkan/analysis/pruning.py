"""Pruning: remove nodes, inputs and edges from a copy of a model.

Every function here edits the graph IR returned by ``model.to_graph()``,
which is a copy that carries all parameters, and compiles the result into a
new model. The model passed in is never changed.

Parameters survive because each one lives on the part of the graph it
belongs to. Knots (``grid``) live on source nodes, and ``coef``,
``scale_base`` and ``scale_sp`` on function edges. The name and affine
parameters of a symbolic edge live in the edge's ``function``, and
``scale`` and ``bias`` on nodes. Removing a node removes only its own knots
and its own edges.

A pruned edge becomes ``{"type": "zero"}`` and keeps its coefficients, as
an edge switched off in a compiled layer does after ``to_graph``. A removed
node takes its incoming and outgoing edges with it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import networkx as nx
import torch

from ..errors import InvalidParameterError, MultKANWarning, invalid_parameter, is_integer, user_stacklevel
from ..graph import EdgeId, graph_layers, reindex
from .attribution import edge_statistics, scores_from_magnitudes

if TYPE_CHECKING:
    from ..model import MultKAN

__all__ = ["PruningWarning", "prune", "prune_edge", "prune_node", "prune_input"]


class PruningWarning(MultKANWarning):
    """Pruning kept a node that its thresholds would remove, so that no layer ends up empty."""


# Graph helpers.


def _is_active(data: dict) -> bool:
    """Return whether an edge is a function edge that computes something (spline or symbolic)."""
    return data.get("kind") == "function" and data["function"]["type"] != "zero"


def _removal_set(graph: nx.DiGraph, node: str) -> set[str]:
    """Return ``node`` with everything that must go with it: a mult node takes its operand sums."""
    data = graph.nodes[node]
    if "operand_of" in data:
        node = data["operand_of"]
    if graph.nodes[node]["kind"] == "mult":
        return {node, *graph.predecessors(node)}
    return {node}


def _layer_nodes(graph: nx.DiGraph, layer: int) -> list[str]:
    """Return the node ids that layer ``layer`` passes on (no operand sums), in index order."""
    members = [(d["index"], n) for n, d in graph.nodes(data=True) if d["layer"] == layer and "index" in d]
    return [n for _, n in sorted(members)]


def _rebuild(model: MultKAN, graph: nx.DiGraph, columns: list[int] | None = None) -> MultKAN:
    """Renumber ``graph``, compile it with the settings of ``model`` and copy the training inputs.

    ``columns`` are the input columns that remain, when inputs were removed.
    """
    reindex(graph)
    options = model.options
    pruned = type(model).from_graph(
        graph,
        grid=model.grid_size,
        k=model.k,
        grid_range=options.grid_range,
        grid_eps=model.grid_eps,
        base_fun=options.base_fun,
        noise_scale=options.noise_scale,
        scale_base_mu=options.scale_base_mu,
        scale_base_sigma=options.scale_base_sigma,
        affine_trainable=options.affine_trainable,
        sp_trainable=options.sp_trainable,
        sb_trainable=options.sb_trainable,
        seed=model.seed,
        dtype=model.dtype,
        device=model.device,
        library=model._library,
    )
    train_input = getattr(model, "train_input", None)
    if train_input is not None:
        train_input = train_input.detach().clone()
        pruned.train_input = train_input if columns is None else train_input[:, columns]
    return pruned


# Single edits.


def prune_edge(model: MultKAN, edge: EdgeId | Sequence[int]) -> MultKAN:
    """Return a copy of ``model`` in which one function edge is switched off.

    Parameters
    ----------
    model : MultKAN
    edge : EdgeId or (layer, source, target)
        ``source`` indexes the nodes of layer ``layer``, ``target`` the
        targets of layer ``layer + 1`` (plain sums, then mult operands).

    Returns
    -------
    MultKAN
        The edge becomes ``{"type": "zero"}`` and contributes 0. Its
        coefficients stay on the graph. Nothing else changes, even when the
        target is left without active edges.
    """
    layer, source, target = model.edge(edge)
    graph = model.to_graph()
    structure = graph_layers(graph)
    source_id, target_id = structure[layer].nodes[source], structure[layer + 1].subnodes[target]
    if not graph.has_edge(source_id, target_id):
        raise InvalidParameterError(
            f"invalid edge {(layer, source, target)}: the graph has no function edge {source_id!r} -> {target_id!r}. "
            "Choose one of multkan.graph.function_edges(model.graph)."
        )
    graph.edges[source_id, target_id]["function"] = {"type": "zero"}
    return _rebuild(model, graph)


def _resolve_node(model: MultKAN, graph: nx.DiGraph, node: str | Sequence[int]) -> str:
    """Turn a node id or ``(layer, index)`` into a node id, or raise InvalidParameterError."""
    if isinstance(node, str):
        if node not in graph:
            hidden = [n for n, d in graph.nodes(data=True) if d["kind"] in ("sum", "mult") and "index" in d]
            listed = ", ".join(repr(n) for n in hidden[:8]) + (", ..." if len(hidden) > 8 else "")
            raise InvalidParameterError(f"invalid node {node!r}: not found in the model. Hidden nodes are {listed}")
        return node

    is_pair = isinstance(node, Sequence) and len(node) == 2
    if not is_pair or not all(is_integer(v) for v in node):
        raise invalid_parameter("node", "a node id such as 'L1:sum2' or a pair (layer, index) of ints", node)
    layer, index = (int(v) for v in node)
    n_layers = len(model.layers) + 1
    if not 0 <= layer < n_layers:
        raise invalid_parameter("node layer", f"0 <= layer < {n_layers}", layer)
    nodes = _layer_nodes(graph, layer)
    if not 0 <= index < len(nodes):
        raise invalid_parameter("node index", f"0 <= index < {len(nodes)} in layer {layer}", index)
    return nodes[index]


def prune_node(model: MultKAN, node: str | Sequence[int]) -> MultKAN:
    """Return a copy of ``model`` without one hidden sum or mult node.

    Parameters
    ----------
    model : MultKAN
    node : str or (layer, index)
        A node id such as ``"L1:sum2"`` or ``"L1:mult0"``, or its position
        among the nodes that a hidden layer passes on (plain sums first,
        then mult nodes). Node ids do not change when other nodes are
        removed, positions do.

    Returns
    -------
    MultKAN
        The node and its incoming and outgoing edges are gone, so its
        contribution to the next layer is dropped. Removing a mult node
        removes its operand sums. Given an operand id such as
        ``"L1:mult0.operand1"``, the whole mult node is removed, because a
        product with a missing operand is not defined by the graph.

    Raises
    ------
    InvalidParameterError
        For unknown nodes, input and output nodes (use :func:`prune_input`
        for inputs) and the last node of a layer.
    """
    graph = model.to_graph()
    node = _resolve_node(model, graph, node)
    kind = graph.nodes[node]["kind"]
    if kind == "input":
        raise InvalidParameterError(
            f"invalid node {node!r}: it is an input, but prune_node removes only hidden sum and mult nodes. "
            f"Use prune_input({graph.nodes[node]['name']!r}) to remove an input."
        )
    if kind == "output":
        raise InvalidParameterError(f"invalid node {node!r}: it is an output, but prune_node removes only hidden sum and mult nodes")

    removed = _removal_set(graph, node)
    layer = graph.nodes[node]["layer"]
    if all(n in removed for n in _layer_nodes(graph, layer)):
        owner = graph.nodes[node].get("operand_of")
        description = "it is" if owner is None else f"it is an operand of {owner!r}, which is"
        raise InvalidParameterError(f"invalid node {node!r}: {description} the last node of layer {layer}, and a layer cannot be empty")
    graph.remove_nodes_from(removed)
    return _rebuild(model, graph)


def prune_input(model: MultKAN, inputs: int | str | Sequence[int | str], x: torch.Tensor | None = None) -> MultKAN:
    """Return a copy of ``model`` without some inputs.

    Parameters
    ----------
    model : MultKAN
    inputs : int, str or sequence of them
        Input indices (0-based, before removal) or input names.
    x : array of shape (batch, n_inputs), optional
        With ``x``, each removed edge is replaced by its mean over ``x``,
        added to its target's bias as :func:`prune` does, so a weak input's
        constant offset is not lost. Without it the edges are dropped.

    Returns
    -------
    MultKAN
        Takes ``n_inputs - len(inputs)`` columns, in the old order;
        ``input_names`` and ``train_input`` lose the removed columns. The
        outgoing edges of the removed inputs are dropped.
    """
    if isinstance(inputs, str) or is_integer(inputs):
        inputs = [inputs]
    if not isinstance(inputs, Sequence) or len(inputs) == 0:
        raise invalid_parameter("inputs", "an input index, an input name, or a non-empty list of them", inputs)

    names = model.input_names
    positions = set()
    for entry in inputs:
        if isinstance(entry, str):
            if entry not in names:
                raise invalid_parameter("inputs", f"names among {names}", entry)
            positions.add(names.index(entry))
        elif is_integer(entry) and 0 <= entry < len(names):
            positions.add(int(entry))
        else:
            raise invalid_parameter("inputs", f"indices in [0, {len(names) - 1}] or names among {names}", entry)
    if len(positions) == len(names):
        raise InvalidParameterError(f"invalid inputs {list(inputs)!r}: removing every input leaves a model without inputs")

    graph = model.to_graph()
    input_nodes = _layer_nodes(graph, 0)
    removed_edges, edge_position = [], {}
    if x is not None:
        _, means = edge_statistics(model, x)
        targets = graph_layers(graph)[1].subnodes
        for p in positions:
            for j, target in enumerate(targets):
                edge = (input_nodes[p], target)
                if graph.has_edge(*edge) and _is_active(graph.edges[edge]):
                    removed_edges.append(edge)
                    edge_position[edge] = (0, p, j)
    graph.remove_nodes_from(input_nodes[p] for p in positions)
    if removed_edges:
        _fold_means(graph, removed_edges, edge_position, means)
    columns = [p for p in range(len(names)) if p not in positions]
    return _rebuild(model, graph, columns)


# Pruning by scores.


def _check_threshold(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise invalid_parameter(name, "a finite number >= 0", value)
    return float(value)


def _dead_nodes(graph: nx.DiGraph, layer: int) -> set[str]:
    """Return the nodes of hidden layer ``layer`` that have no effect or a constant value.

    A node with no active outgoing edge has no effect. A plain sum with no
    active incoming edge is constant, and so is a mult node with such an
    operand (the product is 0, so it passes on its bias).
    """
    dead = set()
    for node in _layer_nodes(graph, layer):
        outgoing = [d for _, _, d in graph.out_edges(node, data=True) if d.get("kind") == "function"]
        if not any(_is_active(d) for d in outgoing):
            dead.add(node)
            continue
        sums = list(graph.predecessors(node)) if graph.nodes[node]["kind"] == "mult" else [node]
        for target in sums:
            if not any(_is_active(d) for _, _, d in graph.in_edges(target, data=True)):
                dead.add(node)
    return dead


def _remove_keeping_one(graph: nx.DiGraph, layer: int, doomed: set[str], score: dict[str, float]) -> tuple[bool, bool]:
    """Remove the ``doomed`` nodes of ``layer``, but keep the best-scored node if all of them would go.

    Return whether any node was removed and whether a doomed node was kept.
    """
    alive = _layer_nodes(graph, layer)
    doomed = {n for n in doomed if n in graph}
    kept_one = False
    if doomed and all(n in doomed for n in alive):
        best = max(alive, key=lambda n: score[n])
        doomed.discard(best)
        kept_one = True
    removed = set()
    for node in doomed:
        removed |= _removal_set(graph, node)
    graph.remove_nodes_from(removed)
    return bool(removed), kept_one


def prune(model: MultKAN, x: torch.Tensor, node_th: float = 1e-2, edge_th: float = 3e-2) -> MultKAN:
    """Return a copy of ``model`` without its unimportant hidden nodes and edges.

    Parameters
    ----------
    model : MultKAN
    x : array of shape (batch, n_inputs)
        Inputs on which scores are computed, usually the training inputs.
    node_th : float
        Hidden nodes whose score (see :func:`multkan.analysis.attribution`)
        is below ``node_th`` are removed.
    edge_th : float
        Remaining edges whose score is below ``edge_th`` become zero edges.

    Returns
    -------
    MultKAN
        The pruned copy; ``model`` is unchanged.

    Notes
    -----
    The steps, all with the scores of the unpruned model:

    1. Remove hidden nodes scoring below ``node_th``, a mult node with its
       operand sums.
    2. Switch off edges scoring below ``edge_th``.
    3. Repeat until nothing changes: remove every hidden node without an
       active outgoing edge, every plain sum without an active incoming
       edge, and every mult node with such an operand (its product is
       then the constant 0).
    4. Replace what each removed or switched-off edge contributed by its
       mean over ``x``: the target's bias grows by
       ``scale_target * mean_b phi_ij(x_i^(b))``. A node that is constant
       on ``x`` is therefore removed without changing the output on ``x``.

    A step that would empty a hidden layer keeps that layer's best-scored
    node and emits a :class:`PruningWarning`. Input nodes are never
    removed, only their edges.
    """
    node_th = _check_threshold("node_th", node_th)
    edge_th = _check_threshold("edge_th", edge_th)
    magnitudes, means = edge_statistics(model, x)
    scores = scores_from_magnitudes(model, magnitudes)

    graph = model.to_graph()
    structure = graph_layers(graph)
    node_score = {n: float(s) for layer, values in zip(structure, scores.node_scores) for n, s in zip(layer.nodes, values)}
    edge_position = {}
    for layer in range(len(structure) - 1):
        for i, source in enumerate(structure[layer].nodes):
            for j, target in enumerate(structure[layer + 1].subnodes):
                if graph.has_edge(source, target):
                    edge_position[(source, target)] = (layer, i, j)
    originally_active = [edge for edge in edge_position if _is_active(graph.edges[edge])]
    hidden_layers = range(1, len(structure) - 1)
    kept_layers = set()

    for layer in hidden_layers:
        low = {n for n in structure[layer].nodes if node_score[n] < node_th}
        _, kept_one = _remove_keeping_one(graph, layer, low, node_score)
        if kept_one:
            kept_layers.add(layer)

    for edge, (layer, i, j) in edge_position.items():
        if graph.has_edge(*edge) and _is_active(graph.edges[edge]) and float(scores.edge_scores[layer][i, j]) < edge_th:
            graph.edges[edge]["function"] = {"type": "zero"}

    changed = True
    while changed:
        changed = False
        for layer in hidden_layers:
            removed, kept_one = _remove_keeping_one(graph, layer, _dead_nodes(graph, layer), node_score)
            changed = changed or removed
            if kept_one:
                kept_layers.add(layer)

    _fold_means(graph, originally_active, edge_position, means)
    if kept_layers:
        warnings.warn(
            f"prune kept one node in hidden layers {sorted(kept_layers)} although every node there scored below "
            f"node_th={node_th} or became constant or without effect after edges were removed, because a layer cannot be empty. "
            "Lower node_th or edge_th, or train longer before pruning.",
            PruningWarning,
            stacklevel=user_stacklevel(),
        )
    return _rebuild(model, graph)


def _fold_means(graph: nx.DiGraph, originally_active, edge_position, means) -> None:
    """Add the mean of every edge that pruning removed or switched off to its target's bias."""
    for source, target in originally_active:
        if graph.has_edge(source, target) and _is_active(graph.edges[source, target]):
            continue
        if target not in graph or "operand_of" in graph.nodes[target]:
            # NOTE: operand sums have no bias in the IR, so the mean of an edge into a
            # surviving mult operand is dropped and the product shifts.
            continue
        layer, i, j = edge_position[(source, target)]
        data = graph.nodes[target]
        data["bias"] = data.get("bias", 0.0) + data.get("scale", 1.0) * float(means[layer][i, j])
