"""The regulariser's edge spreads from feature scatter matrices, against the tensor of edge values."""

import pytest
import torch

from multkan import MultKAN
from multkan.nn._layer import UNIFORM_LOCAL_MIN, _FusedSplineLayerWithScatter
from multkan.train import regularization


def _reference(model, x, lamb_l1=1.0, lamb_entropy=2.0):
    """The regulariser from every edge's values, the obvious way."""
    values = x
    reg = torch.zeros((), dtype=x.dtype)
    for layer in model.layers:
        edges = layer.edge_values(values)
        magnitude = edges.std(dim=0) / (values.std(dim=0) + 0.1)[:, None]
        total = magnitude.sum()
        p = magnitude / (total + 1e-12)
        reg = reg + lamb_l1 * total - lamb_entropy * (p * torch.log(p + 1e-12)).sum()
        values = layer.combine(edges.sum(dim=1))
    return values, reg


def _perturbed(width, **options):
    model = MultKAN(width, dtype=torch.float64, seed=0, **options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return model


def _inputs(n_rows, n_inputs, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_rows, n_inputs, generator=generator, dtype=torch.float64) * 3.6 - 1.8


def _assert_matches(model, x):
    output, reg = regularization(model, x)
    expected_output, expected_reg = _reference(model, x)
    torch.testing.assert_close(output, expected_output, rtol=1e-12, atol=1e-13)
    assert float(reg.detach()) == pytest.approx(float(expected_reg.detach()), rel=1e-10)

    parameters = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(reg + output.square().mean(), parameters, allow_unused=True)
    expected = torch.autograd.grad(expected_reg + expected_output.square().mean(), parameters, allow_unused=True)
    for parameter, grad, reference in zip(parameters, grads, expected):
        if reference is None:
            assert grad is None or float(grad.abs().max()) == 0.0
        else:
            torch.testing.assert_close(grad, reference, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize(
    ("width", "options"),
    [
        ([2, 5, 1], dict(grid=5, k=3)),
        ([3, 4, 3, 2], dict(grid=4, k=2, affine_trainable=True)),
        ([3, [1, 2], 2], dict(grid=5, k=3, mult_arity=3)),
        ([2, 3, 1], dict(grid=3, k=1, base_fun="identity")),
    ],
)
def test_regularization_matches_edge_values(width, options):
    model = _perturbed(width, **options)
    _assert_matches(model, _inputs(50, width[0]))


def test_regularization_with_masked_edges():
    model = _perturbed([3, 4, 1], grid=5, k=3)
    with torch.no_grad():
        model.layers[0].spline_mask[0] = 0.0
        model.layers[1].spline_mask[2, 0] = 0.0
    _assert_matches(model, _inputs(40, 3))
    _, reg = regularization(model, _inputs(40, 3))
    reg.backward()
    assert torch.isfinite(model.layers[0].scale_sp.grad).all()


def test_regularization_after_grid_update():
    model = _perturbed([2, 4, 1], grid=5, k=3)
    x = _inputs(80, 2)
    model.update_grid(x, grid_eps=0.1)
    assert model.layers[0]._spline_constants().uniform is None
    _assert_matches(model, x)


def test_regularization_local_basis():
    model = _perturbed([2, 3, 1], grid=5, k=3)
    rows = UNIFORM_LOCAL_MIN // model.layers[0]._spline_constants().grid_columns.numel() + 1
    x = _inputs(rows, 2)
    assert model.layers[0]._fused_constants(x).uniform is not None
    _assert_matches(model, x)


def test_regularization_symbolic_layer_uses_edge_values():
    model = _perturbed([2, 3, 1], grid=5, k=3)
    model.fix_symbolic(0, 0, 1, "sin", fit_params_bool=False)
    assert model.layers[0].target_sums_and_edge_std(_inputs(10, 2)) is None
    _assert_matches(model, _inputs(30, 2))


def test_edge_std_is_sample_std():
    model = _perturbed([2, 3, 1], grid=5, k=3)
    x = _inputs(25, 2)
    sums, std = model.layers[0].target_sums_and_edge_std(x)
    edges = model.layers[0].edge_values(x)
    torch.testing.assert_close(std, edges.std(dim=0), rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(sums, edges.sum(dim=1), rtol=1e-12, atol=1e-13)
    assert model.layers[0].target_sums_and_edge_std(x[:1]) is None


@pytest.mark.parametrize("local", [False, True])
def test_scatter_layer_gradcheck(local):
    model = _perturbed([3, 2, 1], grid=4, k=3)
    layer = model.layers[0]
    constants = layer._spline_constants()
    if not local:
        constants = constants.dense
    x = _inputs(12, 3).requires_grad_()
    leaves = (x, *(t.detach().clone().requires_grad_() for t in (layer.coef, layer.scale_sp, layer.scale_base)))

    def function(x, coef, scale_sp, scale_base):
        return _FusedSplineLayerWithScatter.apply(x, coef, scale_sp, scale_base, layer.spline_mask, constants, 3, "silu")

    assert torch.autograd.gradcheck(function, leaves)
    assert torch.autograd.gradgradcheck(function, leaves)
