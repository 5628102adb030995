"""Validate a graph IR and read its layer structure."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from ..errors import GraphError
from ._build import EdgeId

__all__ = ["GraphLayer", "validate_graph", "graph_layers", "reindex", "function_edges", "edge_id_of"]

NODE_KINDS = ("input", "sum", "mult", "output")
EDGE_FUNCTIONS = ("spline", "symbolic", "zero")


@dataclass(frozen=True)
class GraphLayer:
    """Node ids of one layer in compiled order.

    Attributes
    ----------
    nodes : tuple of str
        Values passed to the next layer: plain sums (or inputs, outputs),
        then mult nodes.
    subnodes : tuple of str
        Targets of function edges: plain sums, then the operands of each
        mult node in order. Empty for the input layer.
    operands : tuple of tuple of int
        For each mult node, the positions of its operands in ``subnodes``.
    """

    nodes: tuple[str, ...]
    subnodes: tuple[str, ...]
    operands: tuple[tuple[int, ...], ...]

    @property
    def n_sum(self) -> int:
        return len(self.nodes) - len(self.operands)


def validate_graph(graph: nx.DiGraph) -> None:
    """Raise :class:`GraphError` unless ``graph`` is a well-formed MultKAN IR.

    Checks node kinds, layering (function edges go from layer l to a sum or
    output of layer l + 1; wires join an operand sum to its mult node in the
    same layer), mult arity >= 2, unique input and output names, the edge
    function types, and that the graph has no cycle.
    """
    if not isinstance(graph, nx.DiGraph):
        raise GraphError(f"invalid graph: expected a networkx.DiGraph, received {type(graph).__name__}")

    for node, data in graph.nodes(data=True):
        kind = data.get("kind")
        if kind not in NODE_KINDS:
            raise GraphError(f"invalid node {node!r}: kind must be one of {NODE_KINDS}, received {kind!r}")
        if not isinstance(data.get("layer"), int):
            raise GraphError(f"invalid node {node!r}: missing integer 'layer'")
        if kind == "mult":
            wires = [u for u, _, d in graph.in_edges(node, data=True) if d.get("kind") == "wire"]
            if len(wires) < 2:
                raise GraphError(f"invalid mult node {node!r}: arity must be >= 2, it has {len(wires)} operand wires")

    for source, target, data in graph.edges(data=True):
        _validate_edge(graph, source, target, data)

    if not nx.is_directed_acyclic_graph(graph):
        cycle = nx.find_cycle(graph)
        raise GraphError(f"invalid graph: it contains the cycle {cycle}")

    for kind in ("input", "output"):
        names = [d.get("name") for _, d in graph.nodes(data=True) if d["kind"] == kind]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise GraphError(f"invalid graph: duplicate {kind} names {duplicates}")


def _validate_edge(graph: nx.DiGraph, source: str, target: str, data: dict) -> None:
    kind = data.get("kind")
    source_data, target_data = graph.nodes[source], graph.nodes[target]
    if kind == "function":
        if target_data["layer"] != source_data["layer"] + 1:
            raise GraphError(
                f"invalid edge {source!r} -> {target!r}: a function edge must join layer l to l + 1, "
                f"received layers {source_data['layer']} and {target_data['layer']}"
            )
        if target_data["kind"] not in ("sum", "output"):
            raise GraphError(f"invalid edge {source!r} -> {target!r}: a function edge must end at a sum or output node")
        function_type = data.get("function", {}).get("type")
        if function_type not in EDGE_FUNCTIONS:
            raise GraphError(f"invalid edge {source!r} -> {target!r}: function type must be one of {EDGE_FUNCTIONS}, received {function_type!r}")
    elif kind == "wire":
        if target_data["kind"] != "mult" or target_data["layer"] != source_data["layer"] or source_data.get("operand_of") != target:
            raise GraphError(f"invalid wire {source!r} -> {target!r}: a wire must join an operand sum to its own mult node")
    else:
        raise GraphError(f"invalid edge {source!r} -> {target!r}: kind must be 'function' or 'wire', received {kind!r}")


def graph_layers(graph: nx.DiGraph) -> list[GraphLayer]:
    """Return the compiled order of every layer, read from ``index`` and ``sub_index``."""
    n_layers = 1 + max(d["layer"] for _, d in graph.nodes(data=True))
    layers = []
    for layer in range(n_layers):
        members = [(n, d) for n, d in graph.nodes(data=True) if d["layer"] == layer]
        nodes = sorted((d["index"], n) for n, d in members if "index" in d)
        subnodes = sorted((d["sub_index"], n) for n, d in members if "sub_index" in d)
        sub_position = {n: i for i, (_, n) in enumerate(subnodes)}
        operands = []
        for _, n in nodes:
            if graph.nodes[n]["kind"] == "mult":
                wired = sorted(graph.predecessors(n), key=lambda u: graph.nodes[u]["sub_index"])
                operands.append(tuple(sub_position[u] for u in wired))
        layers.append(
            GraphLayer(
                nodes=tuple(n for _, n in nodes),
                subnodes=tuple(n for _, n in subnodes),
                operands=tuple(operands),
            )
        )
    return layers


def reindex(graph: nx.DiGraph) -> nx.DiGraph:
    """Renumber ``index`` and ``sub_index`` densely after nodes were removed.

    The relative order is kept, and so are node ids. Returns the same graph.
    """
    for layer in graph_layers(graph):
        for position, node in enumerate(layer.nodes):
            graph.nodes[node]["index"] = position
        for position, node in enumerate(layer.subnodes):
            graph.nodes[node]["sub_index"] = position
        for node in layer.nodes:
            if graph.nodes[node]["kind"] == "mult":
                graph.nodes[node]["arity"] = graph.in_degree(node)
    return graph


def edge_id_of(graph: nx.DiGraph, source: str, target: str) -> EdgeId:
    """Return the :class:`EdgeId` of the function edge ``source -> target``."""
    layer = graph.nodes[source]["layer"]
    return EdgeId(layer, graph.nodes[source]["index"], graph.nodes[target]["sub_index"])


def function_edges(graph: nx.DiGraph) -> dict[EdgeId, tuple[str, str]]:
    """Map the id of every function edge to its ``(source, target)`` node ids."""
    return {
        edge_id_of(graph, u, v): (u, v) for u, v, d in graph.edges(data=True) if d.get("kind") == "function"
    }
