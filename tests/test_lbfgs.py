"""multkan.lbfgs.FlatLBFGS against torch.optim.LBFGS with the strong Wolfe line search."""

import pytest
import torch

from multkan.lbfgs import FlatLBFGS, _cubic_minimiser


def _rosenbrock(z: torch.Tensor) -> torch.Tensor:
    return (100 * (z[1:] - z[:-1] ** 2) ** 2 + (1 - z[:-1]) ** 2).sum()


def _logistic(z: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    features = torch.randn(50, z.numel(), generator=generator, dtype=torch.float64)
    labels = (torch.rand(50, generator=generator, dtype=torch.float64) > 0.5).double()
    return torch.nn.functional.binary_cross_entropy_with_logits(features @ z, labels) + 1e-3 * (z**2).sum()


def _run(objective, start, make_optimizer, steps, reset_at=()):
    flat = start.clone().requires_grad_()
    flat.grad = torch.zeros_like(flat)
    optimizer = make_optimizer(flat)
    points, losses = [], []

    def closure():
        flat.grad.zero_()
        with torch.enable_grad():
            loss = objective(flat)
            loss.backward()
        points.append(flat.detach().clone())
        losses.append(float(loss.detach()))
        return loss

    for step in range(steps):
        if step in reset_at:
            if isinstance(optimizer, FlatLBFGS):
                optimizer.reset()
            else:
                optimizer.state.clear()
        optimizer.step(closure)
    return points, losses, flat.detach().clone()


def _ours(**options):
    return lambda flat: FlatLBFGS(flat, **options)


def _torch(**options):
    return lambda flat: torch.optim.LBFGS([flat], line_search_fn="strong_wolfe", **options)


@pytest.mark.parametrize(
    ("objective", "start", "options", "steps", "reset_at"),
    [
        # Rosenbrock needs the zoom phase and many curvature pairs (the history of 10 wraps).
        (_rosenbrock, torch.tensor([-1.2, 1.0, -0.5, 0.8], dtype=torch.float64), dict(max_iter=20, history_size=10), 3, ()),
        (_rosenbrock, torch.tensor([-1.2, 1.0], dtype=torch.float64), dict(max_iter=5, history_size=3, lr=0.5), 6, (3,)),
        (_logistic, torch.zeros(6, dtype=torch.float64), dict(max_iter=20, history_size=10, tolerance_grad=1e-32, tolerance_change=1e-32), 2, ()),
    ],
)
def test_same_evaluations_as_torch_lbfgs(objective, start, options, steps, reset_at):
    ours = _run(objective, start, _ours(**options), steps, reset_at)
    reference = _run(objective, start, _torch(**options), steps, reset_at)
    assert len(ours[0]) == len(reference[0]) > steps
    for point, expected in zip(ours[0], reference[0]):
        torch.testing.assert_close(point, expected, rtol=1e-9, atol=1e-12)
    assert ours[1] == pytest.approx(reference[1], rel=1e-9, abs=1e-14)
    torch.testing.assert_close(ours[2], reference[2], rtol=1e-9, atol=1e-12)


def test_converges_on_rosenbrock():
    _, losses, final = _run(_rosenbrock, torch.tensor([-1.2, 1.0], dtype=torch.float64), _ours(max_iter=100, tolerance_grad=1e-12, tolerance_change=1e-15), 1)
    torch.testing.assert_close(final, torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-6)
    assert losses[-1] < 1e-12


def test_step_returns_the_loss_before_the_step():
    flat = torch.tensor([3.0, -2.0], dtype=torch.float64, requires_grad=True)
    flat.grad = torch.zeros_like(flat)
    optimizer = FlatLBFGS(flat)

    def closure():
        flat.grad.zero_()
        loss = (flat**2).sum()
        loss.backward()
        return loss

    assert float(optimizer.step(closure).detach()) == 13.0
    # A quadratic with identity Hessian: the first step along -g with t = 1/|g|_1, then the line search finds 0.
    assert float(flat.detach().abs().max()) < 1e-6


def test_gradient_below_tolerance_stops_before_moving():
    flat = torch.tensor([1e-9, 0.0], dtype=torch.float64, requires_grad=True)
    flat.grad = torch.zeros_like(flat)
    calls = []

    def closure():
        calls.append(1)
        flat.grad.copy_(flat.detach())
        return (flat.detach() ** 2).sum() / 2

    FlatLBFGS(flat, tolerance_grad=1e-7).step(closure)
    assert len(calls) == 1
    assert flat.detach().tolist() == [1e-9, 0.0]


def test_needs_contiguous_cpu_tensor_with_grad():
    with pytest.raises(ValueError, match="invalid flat: expected one contiguous CPU tensor"):
        FlatLBFGS(torch.zeros(3, requires_grad=True))


@pytest.mark.parametrize(
    ("points", "expected"),
    [
        # f = (t - 1)^2 sampled at 0 and 3: the cubic through the values and slopes is that parabola.
        ((0.0, 1.0, -2.0, 3.0, 4.0, 4.0), 1.0),
        # f = t^3 - 3 t at -2 and 2 (slopes 9 and 9): the local minimum is t = 1.
        ((-2.0, -2.0, 9.0, 2.0, 2.0, 9.0), 1.0),
    ],
)
def test_cubic_minimiser(points, expected):
    assert _cubic_minimiser(*points, -10.0, 10.0) == pytest.approx(expected, rel=1e-12)


def test_cubic_minimiser_edge_cases():
    assert _cubic_minimiser(0.0, 1.0, -2.0, 3.0, 4.0, 4.0, 2.0, 5.0) == 2.0
    # d1 = -0.4, so d1^2 < g1 g2: no turning point.
    assert _cubic_minimiser(0.0, 0.0, 1.0, 1.0, 0.8, 1.0, 0.0, 4.0) == 2.0
    # d1 = -1, d2 = 0 and g1 = g2: the step is -infinity, clipped to the lower bound.
    assert _cubic_minimiser(0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 4.0) == 0.0


def test_cubic_minimiser_matches_torch():
    reference = pytest.importorskip("torch.optim.lbfgs")._cubic_interpolate
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        t1, f1, g1, t2, f2, g2 = (torch.randn(6, generator=generator, dtype=torch.float64) * 3).tolist()
        bounds = (min(t1, t2), max(t1, t2))
        expected = float(reference(t1, f1, torch.tensor(g1, dtype=torch.float64), t2, f2, torch.tensor(g2, dtype=torch.float64)))
        assert _cubic_minimiser(t1, f1, g1, t2, f2, g2, *bounds) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_overflowing_gradient_gives_no_numpy_warning():
    # Gradients near 1e200 overflow in the dot products; the loss check of fit handles the inf, numpy must stay quiet.
    flat = torch.tensor([1e200, -1e200], dtype=torch.float64, requires_grad=True)
    flat.grad = torch.zeros_like(flat)

    def closure():
        flat.grad.copy_(flat.detach() * 1e10)
        return (flat.detach() ** 2).sum()

    FlatLBFGS(flat, max_iter=3).step(closure)  # pytest turns any RuntimeWarning into an error
