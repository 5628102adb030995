"""The fused layer: exact gradients and agreement with the unfused operations."""

import pytest
import torch

from multkan import MultKAN
from multkan.nn._layer import _FusedSplineLayer, _unfused_sums


def _layer_inputs(k, base_fun, seed=0):
    model = MultKAN([3, 4, 2], grid=5, k=k, base_fun=base_fun, dtype=torch.float64, seed=seed)
    layer = model.layers[0]
    with torch.no_grad():
        layer.spline_mask[0, 1] = 0.0
    generator = torch.Generator().manual_seed(seed)
    # Points beyond the extended knots (|x| > 1.6) check the zero basis there.
    x = torch.rand(40, 3, generator=generator, dtype=torch.float64) * 4 - 2
    return layer, x


def _fused(layer, k, base_fun):
    constants = layer._spline_constants()

    def function(x, coef, scale_sp, scale_base):
        return _FusedSplineLayer.apply(
            x, coef, scale_sp, scale_base, layer.spline_mask, constants.grid_columns, k,
            constants.reciprocal_columns, constants.derivative_scale, base_fun,
        )

    return function


def _leaves(layer, x):
    return tuple(t.detach().clone().requires_grad_() for t in (x, layer.coef, layer.scale_sp, layer.scale_base))


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("base_fun", ["silu", "identity", "zero"])
def test_fused_layer_gradcheck(k, base_fun):
    layer, x = _layer_inputs(k, base_fun)
    assert torch.autograd.gradcheck(_fused(layer, k, base_fun), _leaves(layer, x))


@pytest.mark.parametrize("k", [2, 3])
def test_fused_layer_gradgradcheck(k):
    layer, x = _layer_inputs(k, "silu")
    assert torch.autograd.gradgradcheck(_fused(layer, k, "silu"), _leaves(layer, x))


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
@pytest.mark.parametrize("base_fun", ["silu", "identity", "zero"])
def test_fused_layer_matches_unfused(k, base_fun):
    layer, x = _layer_inputs(k, base_fun, seed=k)
    fused_inputs = _leaves(layer, x)
    plain_inputs = _leaves(layer, x)
    fused = _fused(layer, k, base_fun)(*fused_inputs)
    plain = _unfused_sums(*plain_inputs, layer.spline_mask, layer.grid, k, base_fun)
    torch.testing.assert_close(fused, plain, rtol=1e-12, atol=1e-12)

    weights = torch.randn_like(fused)
    fused_grads = torch.autograd.grad(fused, fused_inputs, weights)
    plain_grads = torch.autograd.grad(plain, plain_inputs, weights)
    for name, a, b in zip(("x", "coef", "scale_sp", "scale_base"), fused_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_layer_forward_same_with_and_without_grad():
    model = MultKAN([2, [1, 2], 1], grid=4, k=3, dtype=torch.float64, seed=3)
    model.layers[0].set_symbolic(0, 0, "sin", torch.sin, affine=(1.0, 0.2, 0.5, 0.1))
    x = torch.rand(30, 2, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(model(x.requires_grad_()), expected, rtol=0, atol=0)
