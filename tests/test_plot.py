"""Network and history figures: drawn objects, names, opacities, files."""

import os

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from multkan import InvalidDataError, InvalidParameterError, MultKAN
from multkan.plot import SYMBOLIC_COLOR, plot_history, plot_network


def _inputs(model, n=128, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, model.n_inputs, generator=generator) * 2 - 1


def _with_gid(items, prefix):
    return [item for item in items if (item.get_gid() or "").startswith(prefix)]


def _axes(figure):
    (ax,) = figure.axes[:1]
    return ax


def _edges(ax):
    return {line.get_gid(): line for line in _with_gid(ax.lines, "edge:")}


def _active_edges(model):
    gids = set()
    for position, layer in enumerate(model.layers):
        active = (layer.spline_mask > 0) | (layer.symbolic_mask > 0)
        gids |= {f"edge:{position}:{i}:{j}" for i, j in torch.nonzero(active).tolist()}
    return gids


def _count(ax, prefix):
    return len(_with_gid(ax.lines, prefix))


def test_names_and_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = MultKAN([2, [1, 1], 1], seed=0)
    figure = plot_network(model, _inputs(model), input_names=["mass", "speed"], output_names=["energy"], title="one mult node")
    assert isinstance(figure, Figure)
    assert os.listdir(tmp_path) == []

    ax = _axes(figure)
    assert set(_edges(ax)) == _active_edges(model)
    assert len(_edges(ax)) == 8
    assert len(_with_gid(ax.child_axes, "curve:")) == 8
    assert _count(ax, "node:input:") == 2
    assert _count(ax, "node:sum:") == 1
    assert _count(ax, "node:mult:") == 1
    assert _count(ax, "node:output:") == 1
    assert _count(ax, "operand:") == 2
    assert _count(ax, "wire:") == 2
    assert [text.get_text() for text in ax.texts].count("×") == 1
    names = {text.get_gid(): text.get_text() for text in _with_gid(ax.texts, "name:")}
    assert names == {"name:input:0": "mass", "name:input:1": "speed", "name:output:0": "energy"}
    assert ax.get_title() == "one mult node"


def test_path_writes_png(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = MultKAN([2, [1, 1], 1], seed=0)
    plot_network(model, _inputs(model), path="network.png")
    assert os.listdir(tmp_path) == ["network.png"]
    data = (tmp_path / "network.png").read_bytes()
    assert data.startswith(b"\x89PNG")
    assert len(data) > 1000


def test_default_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = MultKAN([3, 2, 2], input_names=["a", "b", "c"], output_names=["u", "v"], seed=0)
    ax = _axes(model.plot())
    names = [text.get_text() for text in _with_gid(ax.texts, "name:")]
    assert names == ["a", "b", "c", "u", "v"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "width, arity, n_mult, n_operands",
    [([2, [0, 1], 1], 3, 1, 3), ([3, [1, 2], 1], [0, [2, 3], 0], 2, 5), ([2, [1, 1], [0, 1], 1], [0, [4], [2], 0], 2, 6)],
)
def test_mult_arities(width, arity, n_mult, n_operands):
    model = MultKAN(width, mult_arity=arity, seed=1)
    for x in (None, _inputs(model)):
        ax = _axes(plot_network(model, x))
        assert set(_edges(ax)) == _active_edges(model)
        assert _count(ax, "node:mult:") == n_mult
        assert _count(ax, "operand:") == n_operands
        assert _count(ax, "wire:") == n_operands
        assert [text.get_text() for text in ax.texts].count("×") == n_mult


def test_mult_node_above_operands():
    model = MultKAN([2, [0, 1], 1], mult_arity=3, seed=0)
    ax = _axes(plot_network(model))
    (mult,) = _with_gid(ax.lines, "node:mult:")
    operands = _with_gid(ax.lines, "operand:")
    mult_x, mult_y = mult.get_xdata()[0], mult.get_ydata()[0]
    assert all(operand.get_ydata()[0] < mult_y for operand in operands)
    assert mult_x == pytest.approx(np.mean([operand.get_xdata()[0] for operand in operands]))


def test_zero_edges_hidden():
    model = MultKAN([3, 4, 2], seed=2)
    model.layers[0].set_zero(0, 1)
    model.layers[0].set_zero(2, 3)
    model.layers[1].set_zero(1, 0)
    ax = _axes(plot_network(model, _inputs(model)))
    gids = set(_edges(ax))
    assert len(gids) == 3 * 4 + 4 * 2 - 3
    assert gids == _active_edges(model)
    assert "edge:0:0:1" not in gids
    assert len(ax.child_axes) == len(gids)


@pytest.mark.parametrize("x", [None, "inputs"])
def test_edges_fixed_to_zero_function_hidden(x):
    model = MultKAN([2, 3, 1], seed=0)
    model.fix_symbolic((0, 1, 2), "0", fit_params=False)
    model.fix_symbolic((1, 0, 0), "zero", fit_params=False)
    model.fix_symbolic((0, 0, 0), "sin", fit_params=False)
    assert model.layers[0].symbolic_names[(1, 2)] == "0"
    assert model.layers[1].symbolic_names[(0, 0)] == "0"
    x = _inputs(model) if x == "inputs" else None

    ax = _axes(plot_network(model, x))
    gids = set(_edges(ax))
    assert "edge:0:1:2" not in gids
    assert "edge:1:0:0" not in gids
    assert "edge:0:0:0" in gids
    assert gids == _active_edges(model) - {"edge:0:1:2", "edge:1:0:0"}
    assert not [inset for inset in ax.child_axes if inset.get_gid() in ("curve:0:1:2", "curve:1:0:0")]
    labels = [text.get_text() for text in _with_gid(ax.texts, "label:")]
    labels += [inset.title.get_text() for inset in ax.child_axes if (inset.title.get_gid() or "").startswith("label:")]
    assert labels == ["sin"]


def test_all_edges_of_layer_zero():
    model = MultKAN([2, 2, 1], seed=0)
    for j in range(2):
        model.layers[1].set_zero(j, 0)
    ax = _axes(plot_network(model, _inputs(model)))
    assert not any(gid.startswith("edge:1:") for gid in _edges(ax))
    assert len(_edges(ax)) == 4


def test_symbolic_edge_coloured_and_labelled():
    model = MultKAN([2, 3, 1], seed=0)
    model.layers[0].set_symbolic(1, 2, "sin", model.library["sin"].safe_torch_fn, (2.0, 0.0, 1.0, 0.0))
    for x in (None, _inputs(model)):
        ax = _axes(plot_network(model, x))
        edge = _edges(ax)["edge:0:1:2"]
        assert to_rgba(edge.get_color())[:3] == to_rgba(SYMBOLIC_COLOR)[:3]
        assert to_rgba(_edges(ax)["edge:0:0:0"].get_color())[:3] == (0.0, 0.0, 0.0)
        labels = _with_gid(ax.texts, "label:") + [text for inset in ax.child_axes for text in _with_gid(inset.texts + [inset.title], "label:")]
        assert [(label.get_gid(), label.get_text()) for label in labels] == [("label:0:1:2", "sin")]


@pytest.mark.parametrize("layer", [0, 1])
def test_opacity_follows_attribution(layer):
    model = MultKAN([2, 3, 2], seed=3)
    x = _inputs(model)
    scores = model.attribution(x).edge_scores[layer].flatten()
    ax = _axes(plot_network(model, x, show_curves=False))
    assert ax.child_axes == []
    n_in, n_sub = model.layers[layer].n_in, model.layers[layer].n_sub
    alphas = torch.tensor([_edges(ax)[f"edge:{layer}:{i}:{j}"].get_alpha() for i in range(n_in) for j in range(n_sub)])
    assert alphas[scores.argmax()] == pytest.approx(1.0)
    assert alphas[scores.argmin()] < 1.0
    order = torch.argsort(scores)
    assert torch.all(alphas[order].diff() >= 0)
    assert alphas == pytest.approx((0.08 + 0.92 * scores / scores.max()).tolist())


def test_dead_layers_faint():
    model = MultKAN([2, 2, 1], seed=0)
    with torch.no_grad():
        model.layers[0].node_scale.zero_()
    ax = _axes(plot_network(model, _inputs(model), show_curves=False))
    alphas = {gid: line.get_alpha() for gid, line in _edges(ax).items()}
    assert len(alphas) == 6
    assert list(alphas.values()) == pytest.approx([0.08] * 6)


def test_no_inputs_full_opacity():
    model = MultKAN([2, 3, 1], seed=0)
    ax = _axes(plot_network(model))
    assert {line.get_alpha() for line in _edges(ax).values()} == {1.0}
    assert ax.child_axes == []


def test_curve_follows_edge_values():
    model = MultKAN([2, 2, 1], seed=0)
    x = _inputs(model, n=50)
    ax = _axes(plot_network(model, x))
    (inset,) = _with_gid(ax.child_axes, "curve:0:1:0")
    (line,) = inset.lines
    record = model.activations(x)[0]
    order = torch.argsort(record["inputs"][:, 1])
    assert np.allclose(line.get_xdata(), record["inputs"][order, 1].numpy())
    assert np.allclose(line.get_ydata(), record["edges"][order, 1, 0].detach().numpy())


def test_draws_into_given_axes():
    figure = Figure()
    other = figure.add_subplot(1, 2, 1)
    ax = figure.add_subplot(1, 2, 2)
    model = MultKAN([2, 2, 1], seed=0)
    returned = plot_network(model, _inputs(model), ax=ax)
    assert returned is figure
    assert len(_edges(ax)) == 6
    assert _edges(other) == {}


def test_subfigure_returns_root():
    figure = Figure()
    subfigure = figure.subfigures(1, 2)[1]
    ax = subfigure.add_subplot()
    assert plot_network(MultKAN([2, 2, 1]), ax=ax) is figure
    assert plot_history({"train_loss": [1.0, 0.5]}, ax=ax) is figure


def test_model_plot_uses_train_input():
    model = MultKAN([2, 2, 1], seed=0)
    model.train_input = _inputs(model)
    ax = _axes(model.plot(scale=0.5))
    assert len(ax.child_axes) == 6


@pytest.mark.parametrize(
    "options, match",
    [({"input_names": ["a"]}, "input_names"), ({"output_names": "y"}, "output_names"), ({"scale": 0}, "scale")],
)
def test_invalid_options(options, match):
    with pytest.raises(InvalidParameterError, match=match):
        plot_network(MultKAN([2, 2, 1]), **options)


# Training history.


def test_history_losses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    history = {"train_loss": [0.5, 0.1, 0.01], "test_loss": [0.6, 0.2, 0.02], "reg": [0.0, 0.0, 0.0]}
    figure = plot_history(history)
    ax = _axes(figure)
    assert [line.get_gid() for line in ax.lines] == ["history:train_loss", "history:test_loss"]
    assert ax.get_yscale() == "log"
    assert os.listdir(tmp_path) == []


def test_history_with_reg(tmp_path):
    history = {"train_loss": [0.5, 0.1], "test_loss": [0.6, 0.2], "reg": [3.0, 2.0]}
    path = tmp_path / "history.png"
    ax = _axes(plot_history(history, path=path))
    assert _count(ax, "history:reg") == 1
    assert path.read_bytes().startswith(b"\x89PNG")


def test_history_zero_losses_linear():
    ax = _axes(plot_history({"train_loss": [0.0, 0.0], "test_loss": [0.0, 0.0], "reg": []}))
    assert ax.get_yscale() == "linear"


def test_history_from_fit():
    model = MultKAN([2, 1], grid=3, seed=0)
    data = {
        "train_input": _inputs(model, 32), "train_label": torch.zeros(32, 1),
        "test_input": _inputs(model, 16, seed=1), "test_label": torch.zeros(16, 1),
    }
    history = model.fit(data, steps=2, progress=False, update_grid=False, opt="Adam", lr=0.01)
    ax = _axes(plot_history(history))
    assert _count(ax, "history:") == 2


def test_history_invalid():
    with pytest.raises(InvalidParameterError, match="history"):
        plot_history([0.1, 0.2])


def test_plot_too_few_rows_message():
    with pytest.raises(InvalidDataError, match=r"network plots\) take the standard deviation over rows, so they need at least 2 rows, received 0"):
        MultKAN([2, 3, 1]).plot(torch.zeros(0, 2))


def test_large_network_figure_is_capped():
    from multkan.plot import MAX_FIGURE_INCHES, plot_network

    # With edge curves (rows given) this network drew 123 x 74 inches before the cap.
    figure = plot_network(MultKAN([10, 20, 10, 1], seed=0), torch.rand(50, 10) * 2 - 1)
    width, height = figure.get_size_inches()
    assert max(width, height) == pytest.approx(MAX_FIGURE_INCHES, rel=1e-6)
    small = plot_network(MultKAN([2, 5, 1], seed=0)).get_size_inches()
    assert max(small) < 10


def test_unknown_plot_option_is_named():
    with pytest.raises(InvalidParameterError, match=r"invalid plot options: expected keywords among \['ax', 'path'.*received \['beta', 'in_vars'\]"):
        MultKAN([2, 1], seed=0).plot(beta=3, in_vars=["a", "b"])
