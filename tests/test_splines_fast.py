"""The fast basis paths (custom autograd node, local evaluation, cached knot spans) against the references."""

import pytest
import torch

from multkan import MultKAN
from multkan import splines
from multkan.splines import (
    _cox_de_boor,
    bspline_basis,
    bspline_basis_reference,
    bspline_basis_uniform,
    extend_grid,
    knot_reciprocals,
    uniform_grid,
)

ORDERS = [0, 1, 2, 3, 5]


def _random_grid(n_in, grid_size, k, seed):
    generator = torch.Generator().manual_seed(seed)
    gaps = 0.2 + torch.rand(n_in, grid_size, generator=generator, dtype=torch.float64)
    interior = torch.cat([torch.zeros(n_in, 1, dtype=torch.float64), gaps.cumsum(dim=1)], dim=1) - 1.0
    return extend_grid(interior, k)


def _points(grid, n_points, seed, *, spill=0.3):
    """Sample points over the extended knots plus ``spill`` of their span on each side."""
    generator = torch.Generator().manual_seed(seed)
    low, high = grid[:, 0], grid[:, -1]
    span = high - low
    fractions = torch.rand(n_points, grid.shape[0], generator=generator, dtype=torch.float64)
    return low - spill * span + (1 + 2 * spill) * span * fractions


def _away_from_knots(x, grid, distance=1e-4):
    """Move points within ``distance`` of a knot, where a derivative may jump, off that knot."""
    gaps = (x.unsqueeze(-1) - grid).abs().min(dim=-1).values
    return torch.where(gaps < distance, x + 3 * distance, x)


def _plain_recursion(x, grid, k):
    """The recursion differentiated op by op, the reference for gradients."""
    return _cox_de_boor(x, grid, k, knot_reciprocals(grid, k))[1]


@pytest.fixture(params=["dense", "local"])
def path(request, monkeypatch):
    """Run a test on the dense recursion and again with every grid sent to the local evaluation."""
    monkeypatch.setattr(splines, "LOCAL_BASIS_MIN", 10**9 if request.param == "dense" else 1)
    return request.param


@pytest.mark.parametrize("k", ORDERS)
def test_basis_matches_scalar_reference(path, k):
    grid = _random_grid(2, 6, k, seed=k)
    x = _points(grid, 60, seed=k + 10)
    basis = bspline_basis(x, grid, k)
    assert basis.shape == (60, 2, 6 + k)
    for b in range(60):
        for i in range(2):
            expected = bspline_basis_reference(float(x[b, i]), grid[i].tolist(), k)
            assert basis[b, i].tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_basis_exact_at_knots(path, k):
    grid = _random_grid(1, 5, k, seed=1)
    x = grid[0][:, None]
    basis = bspline_basis(x, grid, k)
    for b in range(x.shape[0]):
        expected = bspline_basis_reference(float(x[b, 0]), grid[0].tolist(), k)
        assert basis[b, 0].tolist() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("k", [2, 3])
def test_local_path_equals_dense_path_large_grid(k, monkeypatch):
    grid = _random_grid(3, 60, k, seed=2)
    x = _points(grid, 500, seed=3)
    local = bspline_basis(x, grid, k)
    monkeypatch.setattr(splines, "LOCAL_BASIS_MIN", 10**9)
    dense = bspline_basis(x, grid, k)
    assert torch.allclose(local, dense, atol=1e-12)


@pytest.mark.parametrize("k", ORDERS)
def test_gradcheck_wrt_x(path, k):
    grid = _random_grid(2, 4, k, seed=k)
    x = _away_from_knots(_points(grid, 12, seed=k), grid).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda value: bspline_basis(value, grid, k), (x,))


@pytest.mark.parametrize("k", [2, 3, 5])
def test_gradgradcheck_wrt_x(path, k):
    grid = _random_grid(2, 4, k, seed=k)
    x = _away_from_knots(_points(grid, 8, seed=k + 1), grid).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda value: bspline_basis(value, grid, k), (x,))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_gradient_matches_plain_autograd(path, k):
    grid = _random_grid(3, 7, k, seed=k)
    x = _points(grid, 200, seed=k + 5)
    weights = torch.randn(200, 3, 7 + k, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    fast_x = x.clone().requires_grad_(True)
    (bspline_basis(fast_x, grid, k) * weights).sum().backward()
    plain_x = x.clone().requires_grad_(True)
    (_plain_recursion(plain_x, grid, k) * weights).sum().backward()
    assert torch.allclose(fast_x.grad, plain_x.grad, atol=1e-9)


def test_order_zero_gradient_is_zero(path):
    grid = _random_grid(1, 4, 0, seed=0)
    x = _points(grid, 10, seed=0).requires_grad_(True)
    bspline_basis(x, grid, 0).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_outside_extended_knots_is_zero_with_finite_gradient(path):
    k, grid = 3, uniform_grid(-1.0, 1.0, 5, 3, dtype=torch.float64)
    x = torch.tensor([[-50.0], [-2.21], [2.2], [50.0]], dtype=torch.float64, requires_grad=True)
    basis = bspline_basis(x, grid, k)
    basis.sum().backward()
    assert (basis == 0).all()
    assert torch.isfinite(x.grad).all()


def test_grid_with_gradient_uses_plain_recursion():
    grid = _random_grid(1, 4, 3, seed=0).requires_grad_(True)
    x = _points(grid.detach(), 20, seed=0, spill=0.0)
    bspline_basis(x, grid, 3).sum().backward()
    assert grid.grad is not None
    assert torch.isfinite(grid.grad).all()


@pytest.mark.parametrize("k", [1, 3])
def test_uniform_path_matches_general_with_gradient(k):
    grid = uniform_grid(-2.0, 3.0, 7, k, n_in=2, dtype=torch.float64)
    x = torch.linspace(-4.0, 5.0, 101, dtype=torch.float64)[:, None].repeat(1, 2)
    general_x, uniform_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    general = bspline_basis(general_x, grid, k)
    uniform = bspline_basis_uniform(uniform_x, grid[:, 0], grid[:, 1] - grid[:, 0], grid.shape[1], k)
    assert torch.allclose(general, uniform, atol=1e-12)
    general.pow(2).sum().backward()
    uniform.pow(2).sum().backward()
    assert torch.allclose(general_x.grad, uniform_x.grad, atol=1e-9)


def test_float32_matches_float64(path):
    grid = _random_grid(2, 30, 3, seed=4)
    x = _points(grid, 300, seed=4)
    single = bspline_basis(x.float(), grid.float(), 3)
    assert single.dtype == torch.float32
    assert torch.allclose(single.double(), bspline_basis(x, grid, 3), atol=1e-5)


def test_inference_mode_forward():
    model = MultKAN([2, 3, 1], grid=5, seed=0)
    x = torch.rand(7, 2)
    expected = model(x)
    with torch.inference_mode():
        assert torch.allclose(model(x), expected)


def test_layer_cache_follows_grid_changes():
    model = MultKAN([2, 3, 1], grid=5, seed=0, dtype=torch.float64)
    layer = model.layers[0]
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    layer.basis(x)

    with torch.no_grad():
        layer.grid.mul_(1.5)
    assert torch.allclose(layer.basis(x), bspline_basis(x, layer.grid, layer.k, reciprocals=knot_reciprocals(layer.grid, layer.k)))

    model.update_grid(x)
    assert torch.allclose(layer.basis(x), bspline_basis(x, layer.grid, layer.k, reciprocals=knot_reciprocals(layer.grid, layer.k)))

    other = MultKAN([2, 3, 1], grid=5, seed=1, dtype=torch.float64)
    other.update_grid(torch.rand(50, 2, dtype=torch.float64) * 4 - 2)
    model.load_state_dict(other.state_dict())
    assert torch.allclose(model(x), other(x))


def test_refined_model_uses_local_path_and_matches():
    model = MultKAN([2, 3, 1], grid=5, seed=0, dtype=torch.float64)
    refined = model.refine(40)
    assert splines._use_local(refined.layers[0].grid, refined.k)
    x = torch.rand(200, 2, dtype=torch.float64) * 2 - 1
    assert torch.allclose(refined(x), model(x), atol=1e-6)


def test_fit_coefficients_chunked_equals_one_chunk(monkeypatch):
    grid = uniform_grid(-1.0, 1.0, 6, 3, n_in=2, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(300, 2, dtype=torch.float64, generator=generator) * 2 - 1
    y = torch.randn(300, 2, 3, dtype=torch.float64, generator=generator)
    whole = splines.fit_coefficients(x, y, grid, 3)
    monkeypatch.setattr(splines, "FIT_CHUNK_ELEMENTS", 2 * 9 * 7)
    chunked = splines.fit_coefficients(x, y, grid, 3)
    assert torch.allclose(chunked, whole, atol=1e-10)
