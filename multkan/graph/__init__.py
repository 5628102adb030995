"""The graph IR: a networkx DiGraph of input, sum, mult and output nodes.

The names load their submodules, and with them networkx, on first use.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from ._build import EdgeId, LayerSpec, build_graph, node_id, parse_width
    from ._json import graph_from_dict, graph_from_json, graph_to_dict, graph_to_json
    from ._structure import GraphLayer, edge_id_of, function_edges, graph_layers, reindex, validate_graph

__all__ = [
    "EdgeId",
    "GraphLayer",
    "LayerSpec",
    "build_graph",
    "edge_id_of",
    "function_edges",
    "graph_from_dict",
    "graph_from_json",
    "graph_layers",
    "graph_to_dict",
    "graph_to_json",
    "node_id",
    "parse_width",
    "reindex",
    "validate_graph",
]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    globals(),
    {
        "EdgeId": "._build",
        "GraphLayer": "._structure",
        "LayerSpec": "._build",
        "build_graph": "._build",
        "edge_id_of": "._structure",
        "function_edges": "._structure",
        "graph_from_dict": "._json",
        "graph_from_json": "._json",
        "graph_layers": "._structure",
        "graph_to_dict": "._json",
        "graph_to_json": "._json",
        "node_id": "._build",
        "parse_width": "._build",
        "reindex": "._structure",
        "validate_graph": "._structure",
    },
)
