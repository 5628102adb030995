"""The compiled MultKAN module against the slow oracle, plus construction rules."""

import math
import warnings

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from multkan import GridWarning, InvalidDataError, InvalidParameterError, MultKAN
from multkan.graph import graph_from_json, graph_to_json

from .oracle import evaluate_graph


def _random_model(seed, width, arity, grid=4, k=3, dtype=torch.float64):
    model = MultKAN(width, grid=grid, k=k, mult_arity=arity, seed=seed, dtype=dtype, noise_scale=3.0)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.layers:
            layer.spline_mask.copy_((torch.rand(layer.spline_mask.shape, generator=generator, dtype=dtype) > 0.2).to(dtype))
            layer.node_bias.copy_(torch.randn(layer.n_out, generator=generator, dtype=dtype) * 0.1)
    return model


def _check_against_oracle(model, n_points=5, seed=0):
    graph = model.to_graph()
    x = torch.rand(n_points, model.n_inputs, generator=torch.Generator().manual_seed(seed), dtype=model.dtype) * 2.4 - 1.2
    fast = model(x)
    for row in range(n_points):
        expected = evaluate_graph(graph, x[row].tolist(), model.k)
        assert fast[row].tolist() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    "width, arity",
    [([2, 5, 1], 2), ([2, [0, 2], 1], 2), ([3, [1, 2], 2], 3), ([2, [2, 2], [1, 1], 1], 4), ([2, [1, 3], 1], [0, [2, 3, 4], 0])],
)
def test_forward_matches_oracle(width, arity):
    _check_against_oracle(_random_model(1, width, arity))


@settings(max_examples=15, deadline=None)
@given(
    n_in=st.integers(1, 3),
    hidden=st.lists(st.tuples(st.integers(0, 3), st.lists(st.integers(2, 4), max_size=2)), min_size=1, max_size=2),
    n_out=st.integers(1, 2),
    grid=st.integers(1, 5),
    k=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
# Hidden values near -1000 overflowed the oracle's math.exp in its SiLU.
@example(n_in=3, hidden=[(0, [2]), (1, [4])], n_out=1, grid=1, k=2, seed=531)
def test_random_graphs_match_oracle(n_in, hidden, n_out, grid, k, seed):
    hidden = [(s if s or a else 1, a) for s, a in hidden]
    width = [n_in] + [[s, len(a)] for s, a in hidden] + [n_out]
    arity = [0] + [list(a) for _, a in hidden] + [0]
    _check_against_oracle(_random_model(seed, width, arity, grid=grid, k=k), n_points=3, seed=seed)


def test_same_seed_same_parameters():
    first, second = MultKAN([2, [3, 1], 1], seed=7), MultKAN([2, [3, 1], 1], seed=7)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)
    different = MultKAN([2, [3, 1], 1], seed=8)
    assert not torch.equal(first.layers[0].coef, different.layers[0].coef)


def test_global_rng_untouched():
    state = torch.get_rng_state()
    MultKAN([2, 5, 1], seed=3)
    assert torch.equal(state, torch.get_rng_state())


def test_forward_has_no_side_effects():
    model = MultKAN([2, [2, 1], 1], seed=0)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model(torch.rand(10, 2))
    for name, value in model.state_dict().items():
        assert torch.equal(before[name], value), name


def test_graph_json_round_trip_is_bit_exact():
    model = _random_model(4, [2, [1, 2], 1], 3, dtype=torch.float32)
    restored = MultKAN.from_graph(graph_from_json(graph_to_json(model.to_graph())), grid=4, dtype=torch.float32)
    x = torch.rand(50, 2)
    assert torch.equal(model(x), restored(x))


def test_to_float64_moves_every_tensor():
    model = MultKAN([2, [1, 1], 1], seed=0).to(torch.float64)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float64, name
        assert tensor.device.type == "cpu", name
    assert model(torch.rand(3, 2)).dtype == torch.float64


def test_float64_input_cast_to_model_dtype():
    model = MultKAN([2, 1], seed=0)
    assert model(torch.rand(4, 2, dtype=torch.float64)).dtype == torch.float32


def test_leading_dimensions_kept():
    model = MultKAN([3, 2], seed=0)
    x = torch.rand(4, 5, 3)
    out = model(x)
    assert out.shape == (4, 5, 2)
    assert torch.allclose(out.reshape(-1, 2), model(x.reshape(-1, 3)))


@pytest.mark.parametrize("shape, width", [((1000, 2), [1, 2]), ((1000,), [1, 1]), ((10, 3), [2, 1])])
def test_wrong_input_width_raises(shape, width):
    model = MultKAN(width, seed=0)
    with pytest.raises(InvalidDataError, match=f"the model has {width[0]} inputs.*received shape"):
        model(torch.rand(shape))


def test_complex_input_raises():
    with pytest.raises(InvalidDataError, match="real numbers"):
        MultKAN([1, 1])(torch.zeros(2, 1, dtype=torch.complex64))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"grid": 0}, "grid"),
        ({"k": -1}, "k"),
        ({"grid_range": (1, -1)}, "grid_range"),
        ({"grid_eps": 2.0}, "grid_eps"),
        ({"dtype": torch.int32}, "dtype"),
        ({"base_fun": "relu"}, "base_fun"),
    ],
)
def test_invalid_constructor_arguments(kwargs, name):
    with pytest.raises(InvalidParameterError, match=f"invalid {name}"):
        MultKAN([2, 1], **kwargs)


def test_refine_by_integer_factor_keeps_function():
    model = _random_model(2, [2, [1, 1], 1], 2, grid=3)
    x = torch.rand(200, 2, dtype=torch.float64) * 2 - 1
    model.update_grid(x)
    refined = model.refine(9)
    assert refined.layers[0].grid.shape[1] == 9 + 2 * 3 + 1
    assert torch.allclose(refined(x), model(x), atol=1e-8)
    assert model.layers[0].coef.shape[-1] == 3 + 3


def test_refine_non_multiple_keeps_function_closely():
    model = MultKAN([1, 1], grid=4, seed=0, dtype=torch.float64)
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)[:, None]
    refined = model.refine(7)
    assert torch.allclose(refined(x), model(x), atol=1e-2)


def _trained_beyond_grid():
    """Return a [2, 5, 1] model trained without grid updates, whose hidden inputs leave the grid [-1, 1], and its data."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(600, 2, generator=generator, dtype=torch.float64) * 2 - 1
    y = torch.exp(torch.sin(math.pi * x[:, [0]]) + x[:, [1]] ** 2)
    data = {"train_input": x[:400], "train_label": y[:400], "test_input": x[400:], "test_label": y[400:]}
    model = MultKAN([2, 5, 1], grid=5, seed=0, dtype=torch.float64)
    model.fit(data, steps=30, update_grid=False, progress=False)
    with torch.no_grad():
        hidden = model.layer_inputs(x)[1]
    assert float(hidden.abs().max()) > 1.05
    return model, data


def test_refine_with_inputs_keeps_fit():
    model, data = _trained_beyond_grid()

    def rmse(module):
        with torch.no_grad():
            return float((module(data["test_input"]) - data["test_label"]).square().mean().sqrt())

    # The new knots follow the inputs, not the old knots, so the outputs move by more
    # than 1e-3 of their spread (reported), while the fit stays about as good.
    with pytest.warns(GridWarning, match="changed the outputs on x"):
        refined = model.refine(10, data["train_input"])
    assert rmse(refined) < 1.5 * rmse(model)
    with torch.no_grad():
        hidden = model.layer_inputs(data["train_input"])[1]
    assert float(refined.layers[1].grid[:, 3].min()) <= float(hidden.min()) + 1e-9
    assert float(refined.layers[1].grid[:, -4].max()) >= float(hidden.max()) - 1e-9


def test_refine_without_inputs_warns():
    model, data = _trained_beyond_grid()
    with pytest.warns(GridWarning, match="inputs leave the grid in layer 1"):
        model.refine(10)


def test_refine_with_inputs_after_grid_updates_silent():
    # The usual order: fit with grid updates, then refine on the training inputs.
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(400, 2, generator=generator, dtype=torch.float64) * 2 - 1
    y = torch.exp(torch.sin(math.pi * x[:, [0]]) + x[:, [1]] ** 2)
    model = MultKAN([2, 5, 1], grid=5, seed=0, dtype=torch.float64)
    model.fit({"train_input": x, "train_label": y, "test_input": x, "test_label": y}, steps=30, progress=False)
    refined = model.refine(10, x)
    with torch.no_grad():
        assert float((refined(x) - model(x)).abs().max()) < 1e-3 * float(model(x).std())


def test_refine_inside_grid_silent():
    # With the hidden inputs inside the grid, refining by a factor keeps the function, with no warning.
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(300, 2, generator=generator, dtype=torch.float64) * 2 - 1
    data = {"train_input": x, "train_label": x[:, :1] * x[:, 1:], "test_input": x[:50], "test_label": x[:50, :1] * x[:50, 1:]}
    model = MultKAN([2, [0, 1], 1], grid=5, seed=0, dtype=torch.float64)
    model.fit(data, steps=20, update_grid=False, progress=False)
    refined = model.refine(10)
    assert torch.allclose(refined(x), model(x), atol=1e-6)


def test_update_grid_keeps_function_on_samples():
    model = MultKAN([2, 3, 1], grid=8, seed=0, dtype=torch.float64)
    x = torch.rand(500, 2, dtype=torch.float64) * 1.6 - 0.8
    before = model(x)
    model.update_grid(x)
    assert torch.allclose(model(x), before, atol=1e-3)
    assert (model.layers[0].grid.diff(dim=1) > 0).all()


def test_width_property_round_trips():
    model = MultKAN([2, [3, 2], 1], mult_arity=3)
    assert model.width == [2, [3, 2], 1]
    assert model.mult_arity == [[], [3, 3], []]


@pytest.mark.parametrize("grid", [5, 30])
def test_forward_and_backward_on_meta_device(grid):
    # Shape inference without memory: no step may read a tensor's values.
    model = MultKAN([2, [1, 1], 1], grid=grid, k=3, device="meta")
    x = torch.zeros(4, 2, device="meta", requires_grad=True)
    y = model(x)
    assert (y.shape, y.device.type) == ((4, 1), "meta")
    y.sum().backward()
    assert model.layers[0].coef.grad.shape == model.layers[0].coef.shape
    assert x.grad.shape == (4, 2)


def test_chunked_grid_update_matches(monkeypatch):
    import multkan.model

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(500, 3, generator=generator, dtype=torch.float64) * 2 - 1
    models = []
    for budget in (multkan.model.GRID_UPDATE_BYTES, 1):
        # One byte: chunks of one row.
        monkeypatch.setattr(multkan.model, "GRID_UPDATE_BYTES", budget)
        models.append(MultKAN([3, 4, 2, 1], grid=5, k=3, seed=0, dtype=torch.float64).update_grid(x, grid_eps=0.0))
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("width, grid", [([2, [1, 1], 1], 5), ([2, 5, 1], 5), ([3, 4, 2], 30)])
def test_zero_rows_give_zero_rows(width, grid):
    # As torch.nn.Linear: a (0, n_in) batch maps to (0, n_out), with gradients of the right shapes.
    model = MultKAN(width, grid=grid, k=3, seed=0, dtype=torch.float64)
    x = torch.zeros(0, width[0], dtype=torch.float64, requires_grad=True)
    y = model(x)
    assert y.shape == (0, model.n_outputs)
    (gradient,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    assert gradient.shape == (0, width[0])
    y.sum().backward()
    assert float(model.layers[0].coef.grad.abs().sum()) == 0.0
    assert model(torch.zeros(3, 0, width[0], dtype=torch.float64)).shape == (3, 0, model.n_outputs)


@pytest.mark.parametrize("threshold", ["node_th", "edge_th"])
def test_prune_threshold_checked_first(threshold):
    # No fit yet, so no training inputs: the invalid value is still what the message names.
    with pytest.raises(InvalidParameterError, match=f"invalid {threshold}: expected a finite number >= 0, received -1"):
        MultKAN([2, 1]).prune(**{threshold: -1})


# pykan's forms and devices.


def test_unavailable_device_is_named():
    with pytest.raises(InvalidParameterError, match=r"invalid device: expected one of \['cpu'.*received 'banana'"):
        MultKAN([2, 1], device="banana")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidParameterError, match="received 'cuda'"):
            MultKAN([2, 1], device="cuda")
    assert MultKAN([2, 1], device="cpu:0").device == torch.device("cpu")


def _two_of_four_inputs():
    from multkan import create_dataset

    dataset = create_dataset(lambda x: torch.sin(3 * x[:, [0]]) + x[:, [1]] ** 2, n_var=4, seed=0)
    model = MultKAN([4, 3, 1], grid=5, seed=0)
    model.fit(dataset, steps=20, progress=False)
    return model


def test_prune_input_by_relative_threshold():
    model = _two_of_four_inputs()
    scores = model.feature_score()
    assert float(scores[2]) < 0.05 * float(scores.max())
    assert float(scores[3]) < 0.05 * float(scores.max())
    pruned = model.prune_input(threshold=0.05)
    assert pruned.input_names == ["x_1", "x_2"]
    x = model.train_input
    # The removed inputs contributed almost nothing.
    assert torch.allclose(pruned(x[:, :2]), model(x), atol=0.05)
    assert model.prune_input(threshold=0.0).input_names == model.input_names
    with pytest.raises(InvalidParameterError, match="exactly one of them"):
        model.prune_input()
    with pytest.raises(InvalidParameterError, match="exactly one of them"):
        model.prune_input([0], threshold=0.1)
    with pytest.raises(InvalidParameterError, match="keeps at least one input"):
        model.prune_input(threshold=2.0)


def test_pykan_forms_of_suggest_symbolic_and_attribute():
    model = _two_of_four_inputs()
    assert model.suggest_symbolic(0, 0, 0, lib=["sin", "x^2"]) == model.suggest_symbolic((0, 0, 0), ["sin", "x^2"])
    with pytest.raises(InvalidParameterError, match="suggest_symbolic arguments"):
        model.suggest_symbolic(0, 0)
    assert torch.equal(model.attribute().input_scores, model.feature_score())


def test_frozen_scales_survive_fit_prune_refine_and_save(tmp_path):
    from multkan import create_dataset

    data = create_dataset(lambda x: torch.sin(2 * x[:, [0]]) + x[:, [1]], n_var=2, train_num=100, test_num=20, seed=0)
    model = MultKAN([2, 3, 1], grid=5, seed=0, sp_trainable=False, sb_trainable=False)
    scales = [(layer.scale_sp.detach().clone(), layer.scale_base.detach().clone()) for layer in model.layers]
    coef = model.layers[0].coef.detach().clone()
    model.fit(data, steps=5, progress=False)
    for layer, (sp, sb) in zip(model.layers, scales):
        assert torch.equal(layer.scale_sp, sp)
        assert torch.equal(layer.scale_base, sb)
    assert not torch.equal(model.layers[0].coef, coef)
    with warnings.catch_warnings():
        # After 5 steps the hidden inputs may leave their grid, which refine reports; the scales are what matter here.
        warnings.simplefilter("ignore", GridWarning)
        refined = model.refine(7)
    for derived in (model.prune(), refined, model.copy()):
        assert all(not layer.scale_sp.requires_grad and not layer.scale_base.requires_grad for layer in derived.layers)
    model.save(tmp_path / "frozen.safetensors")
    loaded = MultKAN.load(tmp_path / "frozen.safetensors")
    assert all(not layer.scale_sp.requires_grad and not layer.scale_base.requires_grad for layer in loaded.layers)
    assert all(layer.scale_sp.requires_grad for layer in MultKAN([2, 1], seed=0).layers)


def test_batch_keeps_frozen_scales():
    from multkan import BatchedMultKAN

    batch = BatchedMultKAN([2, 3, 1], seeds=[0, 1], sp_trainable=False)
    assert not batch.layers[0].scale_sp.requires_grad
    assert batch.layers[0].scale_base.requires_grad
    assert not batch.model(1).layers[0].scale_sp.requires_grad
