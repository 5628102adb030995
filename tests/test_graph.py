"""The graph IR: width notation, validation, JSON round trip, networkx interplay."""

import json

import networkx as nx
import pytest

from multkan.errors import GraphError, InvalidParameterError
from multkan.graph import (
    build_graph,
    function_edges,
    graph_from_json,
    graph_layers,
    graph_to_json,
    parse_width,
    validate_graph,
)


def test_plain_width_counts():
    graph = build_graph([2, 5, 1])
    kinds = nx.get_node_attributes(graph, "kind")
    assert list(kinds.values()).count("input") == 2
    assert list(kinds.values()).count("sum") == 5
    assert list(kinds.values()).count("output") == 1
    assert len(function_edges(graph)) == 2 * 5 + 5 * 1


def test_mult_layer_structure():
    graph = build_graph([2, [0, 2], 1], mult_arity=3)
    layer = graph_layers(graph)[1]
    assert layer.n_sum == 0
    assert layer.operands == ((0, 1, 2), (3, 4, 5))
    assert len(layer.subnodes) == 6
    assert graph.nodes["L1:mult1"]["arity"] == 3
    assert graph.in_degree("L1:mult1") == 3


def test_arity_spellings_give_equal_graphs():
    single = build_graph([3, [2, 1], 1], mult_arity=2)
    per_node = build_graph([3, [2, 1], 1], mult_arity=[0, [2], 0])
    assert nx.utils.graphs_equal(single, per_node)


def test_mixed_arities():
    graph = build_graph([2, [1, 3], 1], mult_arity=[0, [2, 3, 4], 0])
    assert [len(o) for o in graph_layers(graph)[1].operands] == [2, 3, 4]


@pytest.mark.parametrize(
    "width, arity, message",
    [
        ([2], 2, "width"),
        ([2, "a", 1], 2, "width\\[1\\]"),
        ([2, [0, 0], 1], 2, "width\\[1\\]"),
        ([[1, 1], 2, 1], 2, "width\\[0\\]"),
        ([2, [0, 2], 1], [0, [2], 0, 0], "mult_arity"),
        ([2, [0, 2], 1], [0, [2], 0], "mult_arity\\[1\\]"),
    ],
)
def test_invalid_width_raises(width, arity, message):
    with pytest.raises(InvalidParameterError, match=message):
        parse_width(width, arity)


def test_arity_below_two_raises():
    with pytest.raises(GraphError, match="arity >= 2"):
        build_graph([2, [0, 1], 1], mult_arity=1)


def test_duplicate_names_raise():
    with pytest.raises(GraphError, match="unique"):
        build_graph([2, 1], input_names=["a", "a"])


def test_json_round_trip_is_equal():
    graph = build_graph([3, [2, 2], 2], mult_arity=[0, [2, 3], 0], input_names=["a", "b", "c"])
    text = graph_to_json(graph)
    json.loads(text)
    restored = graph_from_json(text)
    assert nx.utils.graphs_equal(graph, restored)
    assert graph_to_json(restored) == text


def test_cycle_rejected():
    graph = build_graph([1, 1, 1])
    graph.add_edge("L2:output0", "L0:input0", kind="function", layer=2, function={"type": "spline"})
    with pytest.raises(GraphError):
        validate_graph(graph)


def test_skip_layer_edge_rejected():
    graph = build_graph([1, 1, 1])
    graph.add_edge("L0:input0", "L2:output0", kind="function", layer=0, function={"type": "spline"})
    with pytest.raises(GraphError, match="layer l to l \\+ 1"):
        validate_graph(graph)


def test_unknown_node_kind_rejected():
    graph = build_graph([1, 1])
    graph.nodes["L1:output0"]["kind"] = "max"
    with pytest.raises(GraphError, match="kind must be one of"):
        validate_graph(graph)


def test_unknown_edge_function_rejected():
    graph = build_graph([1, 1])
    graph.edges["L0:input0", "L1:output0"]["function"] = {"type": "table"}
    with pytest.raises(GraphError, match="function type"):
        validate_graph(graph)


def test_malformed_json_rejected():
    with pytest.raises(GraphError):
        graph_from_json('{"format": "multkan-graph", "version": 1, "nodes": [{}]}')
    with pytest.raises(GraphError, match="invalid graph JSON"):
        graph_from_json("{not json")


def test_networkx_algorithms_work():
    graph = build_graph([2, [1, 1], 1])
    order = list(nx.topological_sort(graph))
    assert order.index("L1:mult0.operand0") < order.index("L1:mult0") < order.index("L2:output0")
    assert nx.has_path(graph, "L0:input1", "L2:output0")
