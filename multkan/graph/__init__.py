"""The graph IR: a networkx DiGraph of input, sum, mult and output nodes."""

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
