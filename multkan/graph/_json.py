"""JSON form of the graph IR: plain data, no pickle."""

from __future__ import annotations

import json
from typing import Any

import networkx as nx

from ..errors import GraphError
from ._structure import validate_graph

__all__ = ["graph_to_dict", "graph_from_dict", "graph_to_json", "graph_from_json"]

FORMAT = "multkan-graph"
VERSION = 1


def graph_to_dict(graph: nx.DiGraph) -> dict[str, Any]:
    """Return a JSON-serialisable dict holding every node, edge and attribute."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "graph": {k: v for k, v in graph.graph.items() if k not in ("format", "version")},
        "nodes": [{"id": n, **d} for n, d in graph.nodes(data=True)],
        "edges": [{"source": u, "target": v, **d} for u, v, d in graph.edges(data=True)],
    }


def graph_from_dict(data: dict[str, Any]) -> nx.DiGraph:
    """Rebuild a graph from :func:`graph_to_dict` output and validate it."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise GraphError(f"invalid graph data: expected a dict with format {FORMAT!r}")
    if data.get("version") != VERSION:
        raise GraphError(f"unsupported graph version {data.get('version')!r}: this multkan reads version {VERSION}")
    try:
        graph = nx.DiGraph(format=FORMAT, version=VERSION, **data.get("graph", {}))
        for node in data["nodes"]:
            attributes = {k: v for k, v in node.items() if k != "id"}
            graph.add_node(node["id"], **attributes)
        for edge in data["edges"]:
            attributes = {k: v for k, v in edge.items() if k not in ("source", "target")}
            graph.add_edge(edge["source"], edge["target"], **attributes)
    except (KeyError, TypeError) as error:
        raise GraphError(f"invalid graph data: missing or malformed field ({error})") from error
    validate_graph(graph)
    return graph


def graph_to_json(graph: nx.DiGraph, **json_options: Any) -> str:
    """Serialise ``graph`` to a JSON string."""
    return json.dumps(graph_to_dict(graph), **json_options)


def graph_from_json(text: str) -> nx.DiGraph:
    """Parse a JSON string made by :func:`graph_to_json`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise GraphError(f"invalid graph JSON: {error}") from error
    return graph_from_dict(data)
