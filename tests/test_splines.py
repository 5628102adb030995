"""B-spline basis, grids and coefficient fitting against closed forms and a scalar oracle."""

import pytest
import torch

from multkan.errors import InvalidDataError, InvalidParameterError
from multkan.splines import (
    bspline_basis,
    bspline_basis_reference,
    bspline_basis_uniform,
    extend_grid,
    fit_coefficients,
    grid_from_samples,
    spline_values,
    uniform_grid,
)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_basis_matches_reference_on_random_knots(k):
    generator = torch.Generator().manual_seed(k)
    interior = torch.sort(torch.rand(2, 6, generator=generator, dtype=torch.float64), dim=1).values
    grid = extend_grid(interior, k)
    x = interior[:, :1] + (interior[:, -1:] - interior[:, :1]) * torch.rand(2, 40, generator=generator, dtype=torch.float64)
    fast = bspline_basis(x.T.contiguous(), grid, k)
    for i in range(2):
        for b in range(40):
            reference = bspline_basis_reference(float(x[i, b]), grid[i].tolist(), k)
            assert fast[b, i].tolist() == pytest.approx(reference, abs=1e-12)


@pytest.mark.parametrize("k", [1, 3, 4])
def test_uniform_path_equals_general_path(k):
    grid = uniform_grid(-2.0, 3.0, 7, k, n_in=3, dtype=torch.float64)
    x = torch.linspace(-4.0, 5.0, 301, dtype=torch.float64)[:, None].repeat(1, 3)
    general = bspline_basis(x, grid, k)
    fast = bspline_basis_uniform(x, grid[:, 0], grid[:, 1] - grid[:, 0], grid.shape[1], k)
    assert torch.allclose(general, fast, atol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_partition_of_unity_inside_data_range(k):
    grid = grid_from_samples(torch.randn(500, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 6, k)
    low, high = grid[:, k], grid[:, -k - 1]
    x = low + (high - low) * torch.rand(1000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    total = bspline_basis(x, grid, k).sum(dim=-1)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-12)


def test_grid_has_g_plus_2k_plus_1_knots():
    grid = uniform_grid(-1.0, 1.0, 5, 3, n_in=4)
    assert grid.shape == (4, 5 + 2 * 3 + 1)
    assert bspline_basis(torch.zeros(2, 4), grid, 3).shape == (2, 4, 5 + 3)


def test_basis_finite_with_gradients_at_boundaries():
    k, grid = 3, uniform_grid(-1.0, 1.0, 5, 3, dtype=torch.float64)
    knots = grid[0]
    points = torch.cat([knots, knots[:1] - 1e-9, knots[-1:] + 1e-9, torch.tensor([-50.0, 50.0], dtype=torch.float64)])
    x = points[:, None].clone().requires_grad_(True)
    coef = torch.randn(1, 1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    values = spline_values(x, grid, coef, k)
    values.sum().backward()
    assert torch.isfinite(values).all()
    assert torch.isfinite(x.grad).all()
    assert (bspline_basis(torch.tensor([[-50.0], [50.0]], dtype=torch.float64), grid, k) == 0).all()


def test_spline_continuous_at_data_edge_and_zero_far_out():
    k, grid = 3, uniform_grid(-1.0, 1.0, 5, 3, dtype=torch.float64)
    coef = torch.randn(1, 1, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = torch.tensor([[1 - 1e-6], [1 + 1e-6], [5.0]], dtype=torch.float64)
    values = spline_values(x, grid, coef, k).flatten()
    assert abs(float(values[0] - values[1])) < 1e-4
    assert float(values[2]) == 0.0


def test_grid_eps_one_is_uniform():
    x = torch.randn(300, 1, generator=torch.Generator().manual_seed(0)) ** 3
    grid = grid_from_samples(x, 4, 2, grid_eps=1.0)
    interior = grid[0, 2:-2]
    assert torch.allclose(interior, torch.linspace(float(x.min()), float(x.max()), 5), atol=1e-6)


def test_grid_eps_zero_is_quantiles():
    x = torch.arange(101, dtype=torch.float64)[:, None] ** 2
    grid = grid_from_samples(x, 4, 1, grid_eps=0.0)
    expected = torch.tensor([0.0, 25.0, 50.0, 75.0, 100.0], dtype=torch.float64) ** 2
    assert torch.equal(grid[0, 1:-1], expected)


def test_grid_eps_half_mixes_linearly():
    x = torch.arange(101, dtype=torch.float64)[:, None] ** 2
    uniform = grid_from_samples(x, 4, 1, grid_eps=1.0)
    adaptive = grid_from_samples(x, 4, 1, grid_eps=0.0)
    mixed = grid_from_samples(x, 4, 1, grid_eps=0.5)
    assert torch.allclose(mixed[0, 1:-1], (uniform[0, 1:-1] + adaptive[0, 1:-1]) / 2)


@pytest.mark.parametrize(
    "column",
    [torch.full((200,), 0.5), torch.tensor([0.0, 1.0, 2.0]).repeat(70), torch.tensor([1.0, 2.0])],
    ids=["constant", "three-values", "two-samples"],
)
def test_degenerate_samples_give_increasing_knots(column):
    grid = grid_from_samples(column[:, None], 5, 3, grid_eps=0.0)
    assert (grid.diff(dim=1) > 0).all()
    assert torch.isfinite(grid).all()


def test_grid_from_samples_rejects_nonfinite():
    with pytest.raises(InvalidDataError, match="finite"):
        grid_from_samples(torch.tensor([[0.0], [float("nan")]]), 3, 3)


def test_grid_eps_out_of_range_raises():
    with pytest.raises(InvalidParameterError, match="grid_eps"):
        grid_from_samples(torch.zeros(5, 1), 3, 3, grid_eps=1.5)


def test_fit_coefficients_recovers_spline():
    k, grid = 3, uniform_grid(-1.0, 1.0, 6, 3, n_in=2, dtype=torch.float64)
    coef = torch.randn(2, 3, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.rand(400, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    fitted = fit_coefficients(x, spline_values(x, grid, coef, k), grid, k)
    assert torch.allclose(fitted, coef, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_coefficients_rank_deficient_is_finite(dtype):
    k, grid = 3, uniform_grid(-1.0, 1.0, 10, 3, dtype=dtype)
    x = torch.tensor([[-0.5], [0.0], [0.5]], dtype=dtype).repeat(4, 1)
    y = torch.tensor([[1.0], [2.0], [3.0]], dtype=dtype).repeat(4, 1)[:, :, None]
    coef = fit_coefficients(x, y, grid, k)
    assert torch.isfinite(coef).all()
    prediction = spline_values(x, grid, coef, k)
    assert torch.allclose(prediction, y, atol=1e-3)


def test_fewer_samples_than_coefficients_is_finite():
    k, grid = 3, uniform_grid(-1.0, 1.0, 20, 3)
    coef = fit_coefficients(torch.tensor([[0.1], [0.7]]), torch.tensor([[[1.0]], [[-1.0]]]), grid, k)
    assert torch.isfinite(coef).all()


def test_fit_coefficients_from_function(monkeypatch):
    import multkan.splines

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(3000, 3, generator=generator, dtype=torch.float64) * 2 - 1
    y = torch.sin(3 * x).unsqueeze(-1).expand(-1, -1, 2) * torch.tensor([1.0, -2.0], dtype=torch.float64)
    grid = extend_grid(torch.linspace(-1, 1, 8, dtype=torch.float64).expand(3, -1), 3)
    calls = []

    def targets(rows):
        calls.append(rows)
        return y[rows]

    expected = fit_coefficients(x, y, grid, 3)
    # 3 inputs * 10 basis functions: chunks of 100 rows.
    monkeypatch.setattr(multkan.splines, "FIT_CHUNK_ELEMENTS", 3000)
    torch.testing.assert_close(fit_coefficients(x, targets, grid, 3), expected, rtol=1e-12, atol=1e-12)
    assert len(calls) == 30 and sum(len(range(3000)[rows]) for rows in calls) == 3000
    # No samples: zero coefficients of the right shape.
    empty = fit_coefficients(x[:0], y[:0], grid, 3)
    assert empty.shape == (3, 2, 10)
    assert not empty.any()
