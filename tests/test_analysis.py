"""Attribution scores and pruning: closed-form scores, exact pruning of dead parts, parameter survival."""

import copy
import math

import networkx as nx
import numpy as np
import pytest
import torch

from multkan import InvalidDataError, InvalidParameterError, MultKAN, create_dataset
from multkan.analysis import PruningWarning, attribution, feature_score, prune, prune_edge, prune_input, prune_node


def _linear_model(width, weights, mult_arity=2, dtype=torch.float64):
    """A model whose edges are ``phi_ij(x) = weights[l][i][j] * x`` (identity base, zero splines)."""
    model = MultKAN(width, mult_arity=mult_arity, base_fun="identity", seed=0, dtype=dtype)
    with torch.no_grad():
        for layer, weight in zip(model.layers, weights):
            layer.coef.zero_()
            layer.scale_sp.fill_(1.0)
            layer.scale_base.copy_(torch.tensor(weight, dtype=dtype))
    return model


def _random_model(width, mult_arity=2, seed=0):
    """A float64 model with large random splines, so that every edge is clearly non-linear."""
    return MultKAN(width, grid=4, mult_arity=mult_arity, seed=seed, dtype=torch.float64, noise_scale=3.0)


def _inputs(n_inputs, rows=200, seed=0, dtype=torch.float64):
    return torch.rand(rows, n_inputs, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


def _switch_off_incoming(model, layer, target):
    for source in range(model.layers[layer].n_in):
        model.layers[layer].set_zero(source, target)


def _switch_off_outgoing(model, layer, source):
    for target in range(model.layers[layer].n_sub):
        model.layers[layer].set_zero(source, target)


# Attribution.


def test_attribution_two_linear_edges():
    model = _linear_model([2, 1], [[[1.0], [2.0]]])
    x = _inputs(2)
    scores = attribution(model, x)

    magnitude = torch.stack([x[:, 0].std(correction=0), 2 * x[:, 1].std(correction=0)])
    expected = magnitude / magnitude.sum()
    assert torch.allclose(scores.edge_magnitudes[0][:, 0], magnitude)
    assert torch.allclose(scores.edge_scores[0][:, 0], expected)
    assert torch.allclose(scores.input_scores, expected)
    assert torch.allclose(scores.node_scores[1], torch.ones(1, dtype=torch.float64))
    assert torch.allclose(scores.subnode_scores[0], torch.ones(1, dtype=torch.float64))


def test_attribution_zero_edge_scores_zero():
    model = _linear_model([2, 1], [[[1.0], [0.0]]])
    scores = attribution(model, _inputs(2))
    assert scores.edge_scores[0].tolist() == [[1.0], [0.0]]
    assert scores.input_scores.tolist() == [1.0, 0.0]


def test_attribution_ignores_constant_offset():
    model = _linear_model([2, 1], [[[1.0], [0.0]]])
    with torch.no_grad():
        # B-splines sum to 1 inside the grid range, so this edge is 5 on [-1, 1].
        model.layers[0].coef[1, 0] = 5.0
    x = _inputs(2)
    edge_values = model.activations(x)[0]["edges"]
    assert torch.allclose(edge_values[:, 1, 0], torch.full((200,), 5.0, dtype=torch.float64))
    scores = attribution(model, x)
    assert scores.input_scores[1] < 1e-12
    assert scores.input_scores[0] == pytest.approx(1.0)


def test_attribution_mult_operands_get_node_score():
    model = _linear_model([2, [0, 1], 1], [[[1.0, 0.0], [0.0, 1.0]], [[1.0]]])
    x = _inputs(2)
    assert torch.allclose(model(x)[:, 0], x[:, 0] * x[:, 1])

    scores = attribution(model, x)
    assert scores.edge_scores[0].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert scores.subnode_scores[0].tolist() == [1.0, 1.0]
    assert scores.node_scores[1].tolist() == [1.0]
    assert scores.edge_scores[1].tolist() == [[1.0]]
    assert scores.input_scores.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attribution_constant_operand(dtype):
    model = _linear_model([2, [0, 1], 1], [[[1.0, 0.0], [0.0, 0.0]], [[1.0]]], dtype=dtype)
    with torch.no_grad():
        model.layers[0].coef[1, 1] = 3.0  # operand 1 is the constant 3, up to rounding
    x = _inputs(2, dtype=dtype)
    assert torch.allclose(model(x)[:, 0], 3 * x[:, 0])

    scores = attribution(model, x)
    assert scores.edge_magnitudes[0][1, 1] == 0.0
    assert scores.subnode_scores[0].tolist() == [1.0, 1.0]
    assert scores.input_scores.tolist() == [1.0, 0.0]


def test_attribution_zero_node_scale():
    model = _linear_model([1, 2, 1], [[[1.0, 1.0]], [[1.0], [1.0]]])
    with torch.no_grad():
        model.layers[0].node_scale[1] = 0.0
    scores = attribution(model, _inputs(1))
    assert scores.node_scores[1].tolist() == [1.0, 0.0]
    assert scores.edge_scores[0].tolist() == [[1.0, 0.0]]
    assert scores.input_scores.tolist() == [1.0]


def test_attribution_dead_target_finite():
    model = _linear_model([2, 2, 1], [[[1.0, 0.0], [1.0, 0.0]], [[1.0], [1.0]]])
    scores = attribution(model, _inputs(2))
    for tensor in scores.edge_scores + scores.node_scores + scores.subnode_scores:
        assert bool(torch.isfinite(tensor).all())
    assert scores.node_scores[1][1] == 0.0
    assert scores.edge_scores[0][:, 1].tolist() == [0.0, 0.0]
    assert scores.input_scores.sum() == pytest.approx(1.0)


def test_attribution_per_output_sums_to_total():
    model = _random_model([3, [2, 1], 2])
    x = _inputs(3)
    total = attribution(model, x)
    first, second = attribution(model, x, output=0), attribution(model, x, output=1)
    assert first.node_scores[-1].tolist() == [1.0, 0.0]
    for layer in range(3):
        assert torch.allclose(first.node_scores[layer] + second.node_scores[layer], total.node_scores[layer])
    for layer in range(2):
        assert torch.allclose(first.edge_scores[layer] + second.edge_scores[layer], total.edge_scores[layer])


def test_attribution_shapes():
    model = _random_model([3, [2, 2], [1, 1], 2], mult_arity=[0, [2, 3], [4], 0])
    scores = attribution(model, _inputs(3))
    assert [tuple(t.shape) for t in scores.edge_scores] == [(3, 7), (4, 5), (2, 2)]
    assert [tuple(t.shape) for t in scores.subnode_scores] == [(7,), (5,), (2,)]
    assert [tuple(t.shape) for t in scores.node_scores] == [(3,), (4,), (2,), (2,)]
    assert scores.input_scores.shape == (3,)


def test_feature_score_equals_input_scores():
    model = _random_model([3, 4, 1])
    x = _inputs(3)
    assert torch.equal(feature_score(model, x), attribution(model, x).input_scores)
    assert torch.equal(model.feature_score(x), attribution(model, x).input_scores)


def test_attribution_rejects_bad_inputs():
    model = _random_model([2, 3, 1])
    with pytest.raises(InvalidDataError, match="at least 2 rows, received 1"):
        attribution(model, _inputs(2, rows=1))
    x = _inputs(2)
    x[4, 0] = math.nan
    with pytest.raises(InvalidDataError, match="1 non-finite values"):
        attribution(model, x)
    with pytest.raises(InvalidParameterError, match="invalid output"):
        attribution(model, _inputs(2), output=1)
    with pytest.raises(InvalidDataError, match="pass x, or call fit"):
        model.attribution()


# Single edits.


def test_prune_edge_switches_edge_off():
    model = _random_model([2, 3, 1])
    x = _inputs(2)
    pruned = model.prune_edge((1, 2, 0))

    data = pruned.to_graph().edges["L1:sum2", "L2:output0"]
    assert data["function"] == {"type": "zero"}
    assert data["coef"] == model.to_graph().edges["L1:sum2", "L2:output0"]["coef"]
    removed = model.activations(x)[1]["edges"][:, 2, 0]
    assert torch.allclose(pruned(x)[:, 0], model(x)[:, 0] - removed, atol=1e-12)
    assert model.layers[1].spline_mask[2, 0] == 1.0


def test_prune_edge_missing_edge_raises():
    graph = _random_model([2, 3, 1]).to_graph()
    graph.remove_edge("L1:sum2", "L2:output0")
    model = MultKAN.from_graph(graph, grid=4, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match=r"invalid edge \(1, 2, 0\): the graph has no function edge 'L1:sum2' -> 'L2:output0'"):
        prune_edge(model, (1, 2, 0))
    with pytest.raises(InvalidParameterError, match="invalid edge target"):
        model.prune_edge((1, 2, 5))


def test_prune_node_by_id_and_position():
    model = _random_model([2, 4, 1])
    _switch_off_outgoing(model, 1, 2)
    x = _inputs(2)
    by_id, by_position = model.prune_node("L1:sum2"), model.prune_node((1, 2))

    assert by_id.width == [2, 3, 1]
    assert nx.utils.graphs_equal(by_id.graph, by_position.graph)
    assert "L1:sum2" not in by_id.graph
    assert (by_id(x) - model(x)).abs().max() < 1e-12
    # Ids survive removal, positions are renumbered.
    assert by_id.graph.nodes["L1:sum3"]["index"] == 2
    assert nx.utils.graphs_equal(by_id.prune_node("L1:sum3").graph, by_id.prune_node((1, 2)).graph)


def test_prune_node_mult_removes_operands():
    model = _random_model([2, [1, 2], 1], mult_arity=[0, [3, 2], 0])
    pruned = prune_node(model, "L1:mult0")
    assert pruned.width == [2, [1, 1], 1]
    assert pruned.mult_arity == [[], [2], []]
    for operand in range(3):
        assert f"L1:mult0.operand{operand}" not in pruned.graph
    assert pruned.graph.nodes["L1:mult1"]["index"] == 1
    assert pruned(_inputs(2)).shape == (200, 1)


def test_prune_node_operand_removes_mult():
    model = _random_model([2, [1, 2], 1])
    by_operand = prune_node(model, "L1:mult1.operand0")
    by_mult = prune_node(model, "L1:mult1")
    assert nx.utils.graphs_equal(by_operand.graph, by_mult.graph)
    assert by_operand.width == [2, [1, 1], 1]


def test_prune_node_rejects_inputs_and_outputs():
    model = _random_model([2, 3, 1])
    with pytest.raises(InvalidParameterError, match=r"'L0:input1': it is an input.*prune_input\('x_2'\)"):
        prune_node(model, "L0:input1")
    with pytest.raises(InvalidParameterError, match="'L2:output0': it is an output, but prune_node removes only hidden"):
        prune_node(model, (2, 0))
    with pytest.raises(InvalidParameterError, match="'L1:sum7': not found in the model. Hidden nodes are 'L1:sum0'"):
        prune_node(model, "L1:sum7")
    with pytest.raises(InvalidParameterError, match="invalid node index"):
        prune_node(model, (1, 3))
    with pytest.raises(InvalidParameterError, match="invalid node:"):
        prune_node(model, 1.5)


def test_prune_node_last_in_layer_raises():
    model = _random_model([2, [0, 1], 1])
    with pytest.raises(InvalidParameterError, match="'L1:mult0.operand1': it is an operand of 'L1:mult0', which is the last node of layer 1"):
        prune_node(model, "L1:mult0.operand1")
    with pytest.raises(InvalidParameterError, match="'L1:mult0': it is the last node of layer 1"):
        prune_node(model, (1, 0))


def test_prune_input_by_name_and_index():
    model = MultKAN([3, 4, 1], grid=4, seed=0, dtype=torch.float64, input_names=["a", "b", "c"])
    _switch_off_outgoing(model, 0, 1)
    model.train_input = _inputs(3, rows=10)
    by_name, by_index = model.prune_input("b"), prune_input(model, [1])

    assert nx.utils.graphs_equal(by_name.graph, by_index.graph)
    assert nx.utils.graphs_equal(by_name.graph, prune_input(model, np.int64(1)).graph)
    assert by_name.input_names == ["a", "c"]
    assert by_name.n_inputs == 2
    assert torch.equal(by_name.train_input, model.train_input[:, [0, 2]])
    x = _inputs(3)
    assert (by_name(x[:, [0, 2]]) - model(x)).abs().max() < 1e-12
    with pytest.raises(InvalidDataError, match="the model has 2 inputs"):
        by_name(x)


def test_prune_input_rejects_bad_entries():
    model = MultKAN([3, 2, 1], input_names=["a", "b", "c"])
    with pytest.raises(InvalidParameterError, match=r"names among \['a', 'b', 'c'\], received 'd'"):
        prune_input(model, "d")
    with pytest.raises(InvalidParameterError, match=r"indices in \[0, 2\]"):
        prune_input(model, 3)
    with pytest.raises(InvalidParameterError, match=r"indices in \[0, 2\]"):
        prune_input(model, [True])
    with pytest.raises(InvalidParameterError, match="leaves a model without inputs"):
        prune_input(model, ["a", 1, "c"])


def test_parameters_survive_pruning():
    model = _random_model([2, [2, 1], 2])
    model.layers[1].set_symbolic(1, 0, "sin", model._resolve_symbolic("sin"), (1.5, 0.2, 0.7, -0.1))
    with torch.no_grad():
        model.layers[0].node_scale.copy_(torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64))
        model.layers[0].node_bias.copy_(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    before = model.to_graph()
    after = prune_node(model, "L1:sum0").to_graph()

    for node, data in after.nodes(data=True):
        for key in ("grid", "grid_uniform", "scale", "bias", "name", "kind"):
            assert data.get(key) == before.nodes[node].get(key), (node, key)
    for source, target, data in after.edges(data=True):
        for key in ("coef", "scale_base", "scale_sp", "function"):
            assert data.get(key) == before.edges[source, target].get(key), (source, target, key)
    assert after.edges["L1:sum1", "L2:output0"]["function"]["name"] == "sin"


# Pruning by scores.


def test_prune_dead_sum_is_exact():
    model = _random_model([2, 3, 1])
    _switch_off_incoming(model, 0, 1)
    x = _inputs(2)
    constant_edge = model.activations(x)[1]["edges"][:, 1, 0]
    assert constant_edge.abs().min() > 1e-3

    pruned = prune(model, x, node_th=1e-6, edge_th=0.0)
    assert pruned.width == [2, 2, 1]
    assert "L1:sum1" not in pruned.graph
    assert (pruned(x) - model(x)).abs().max() < 1e-6


def test_prune_dead_operand_removes_mult():
    model = _random_model([2, [2, 1], 1])
    _switch_off_incoming(model, 0, 2)  # operand 0 of the mult node
    x = _inputs(2)
    pruned = prune(model, x, node_th=0.0, edge_th=0.0)
    assert pruned.width == [2, 2, 1]
    assert "L1:mult0" not in pruned.graph
    assert (pruned(x) - model(x)).abs().max() < 1e-6


def test_prune_leaves_original_untouched():
    model = _random_model([2, [2, 1], 1])
    _switch_off_incoming(model, 0, 1)
    model.train_input = _inputs(2)
    parameters = copy.deepcopy(model.state_dict())
    graph = copy.deepcopy(model.graph)

    pruned = model.prune(node_th=0.05, edge_th=0.05)
    assert pruned.width != model.width
    assert model.state_dict().keys() == parameters.keys()
    for name, value in model.state_dict().items():
        assert torch.equal(value, parameters[name]), name
    assert nx.utils.graphs_equal(model.graph, graph)
    assert torch.equal(pruned.train_input, model.train_input)


def test_prune_keeps_one_node_per_layer():
    model = _random_model([2, [2, 1], 3, 1])
    with pytest.warns(PruningWarning, match=r"hidden layers \[1, 2\]"):
        pruned = prune(model, _inputs(2), node_th=10.0)
    assert pruned.width in ([2, 1, 1, 1], [2, [0, 1], 1, 1])
    assert pruned(_inputs(2)).shape == (200, 1)


def test_prune_edge_threshold_folds_means():
    model = _linear_model([2, 1], [[[1.0], [0.01]]])
    with torch.no_grad():
        model.layers[0].coef[1, 0] = 3.0  # adds the constant 3 inside the grid range
    x = _inputs(2)
    pruned = prune(model, x, node_th=0.0, edge_th=0.05)

    assert pruned.to_graph().edges["L0:input1", "L1:output0"]["function"] == {"type": "zero"}
    expected_bias = float(model.activations(x)[0]["edges"][:, 1, 0].detach().mean())
    assert pruned.graph.nodes["L1:output0"]["bias"] == pytest.approx(expected_bias)
    assert torch.allclose(pruned(x)[:, 0], x[:, 0] + expected_bias)


def test_prune_rejects_bad_thresholds():
    model = _random_model([2, 3, 1])
    for name, value in [("node_th", -1.0), ("node_th", math.nan), ("edge_th", math.inf), ("edge_th", "0.1")]:
        with pytest.raises(InvalidParameterError, match=f"invalid {name}: expected a finite number >= 0"):
            prune(model, _inputs(2), **{name: value})


def test_dead_node_does_not_crash():
    model = _random_model([2, [2, 1], 1])
    _switch_off_incoming(model, 0, 0)
    _switch_off_outgoing(model, 1, 1)
    x = _inputs(2)

    scores = attribution(model, x)
    assert all(bool(torch.isfinite(t).all()) for t in scores.node_scores + scores.edge_scores)
    restored = MultKAN.from_graph(model.to_graph(), grid=4, dtype=torch.float64)
    assert torch.equal(restored(x), model(x))
    assert prune_node(model, "L1:sum0").width == [2, [1, 1], 1]
    pruned = prune(model, x, node_th=0.0, edge_th=0.0)
    assert pruned.width == [2, [0, 1], 1]
    assert (pruned(x) - model(x)).abs().max() < 1e-6


def test_mult_arity_spellings_agree():
    x = _inputs(3)
    shared = MultKAN([3, [2, 1], 1], mult_arity=2, seed=3, dtype=torch.float64)
    listed = MultKAN([3, [2, 1], 1], mult_arity=[0, [2], 0], seed=3, dtype=torch.float64)
    assert nx.utils.graphs_equal(shared.graph, listed.graph)
    assert torch.equal(shared(x), listed(x))

    first, second = attribution(shared, x), attribution(listed, x)
    for a, b in zip(first.edge_scores + first.node_scores, second.edge_scores + second.node_scores):
        assert torch.equal(a, b)
    pruned_shared, pruned_listed = prune(shared, x, node_th=0.3, edge_th=0.1), prune(listed, x, node_th=0.3, edge_th=0.1)
    assert pruned_shared.width != shared.width
    assert nx.utils.graphs_equal(pruned_shared.to_graph(), pruned_listed.to_graph())
    assert torch.equal(pruned_shared(x), pruned_listed(x))


@pytest.mark.parametrize("mult_arity", [3, 4, [0, [2, 4], 0]])
def test_higher_arities(mult_arity):
    model = _random_model([2, [1, 2], 1], mult_arity=mult_arity)
    x = _inputs(2)
    scores = attribution(model, x)
    layer = model.layers[0]
    for mult, positions in enumerate(layer.operands):
        for position in positions:
            assert scores.subnode_scores[0][position] == scores.node_scores[1][layer.n_sum + mult]

    _switch_off_incoming(model, 0, layer.operands[1][-1])
    pruned = prune(model, x, node_th=0.0, edge_th=0.0)
    assert "L1:mult1" not in pruned.graph
    assert (pruned(x) - model(x)).abs().max() < 1e-6
    assert prune_node(model, "L1:mult0").mult_arity[1] == [len(layer.operands[1])]


@pytest.mark.slow
def test_prune_trained_standard_example():
    data = create_dataset(lambda x: torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2), n_var=2, train_num=300, test_num=100, seed=0)
    model = MultKAN([2, 5, 1], grid=5, seed=0)
    model.fit(data, opt="LBFGS", steps=30, lamb=0.01, progress=False)
    pruned = model.prune()

    assert pruned.width[1] < 5
    assert pruned.width[1] >= 1
    history = pruned.fit(data, steps=3, progress=False)
    assert math.isfinite(history["test_loss"][-1])
    assert history["test_loss"][-1] < 0.1
    restored = MultKAN.from_graph(pruned.to_graph(), grid=pruned.grid_size, k=pruned.k)
    assert torch.equal(restored(data["test_input"]), pruned(data["test_input"]))
