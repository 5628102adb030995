"""Conserved quantities: exact formulas for known flows, residuals on data, and input checks."""

import math

import numpy as np
import pytest
import sympy
import torch

from multkan import InvalidDataError, InvalidParameterError, MultKAN, SymbolicError
from multkan.conserved import (
    DEPENDENT_COSINE,
    ConservationWarning,
    _eigen_start,
    _gradient_overlaps,
    _pairs_model,
    _objective,
    conservation_residual,
    find_conserved,
    is_conserved,
    tidy_quantity,
)

q, p, q1, p1, q2, p2 = sympy.symbols("q p q1 p1 q2 p2", real=True)


def _states(n_state, n_rows=600, low=-2.0, high=2.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_rows, n_state, generator=generator, dtype=torch.float64) * (high - low) + low


def _oscillator(x, omega=1.0):
    return torch.stack([x[:, 1], -(omega**2) * x[:, 0]], dim=1)


def _pendulum(x):
    return torch.stack([x[:, 1], -torch.sin(x[:, 0])], dim=1)


def _same(found, expected):
    return sympy.simplify(found - expected) == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oscillator_gives_exact_energy(seed):
    x = _states(2, seed=seed)
    found = find_conserved(x, _oscillator(x, omega=2.0), names=["q", "p"], progress=False, seed=seed)
    assert _same(found.formulas[0], q**2 + p**2 / 4)
    assert is_conserved(found.formulas[0], [q, p], [p, -4 * q])
    assert found.residual[0] < 1e-4
    assert found.formula_residual[0] < 1e-12


def test_pendulum_gives_cosine_potential():
    x = _states(2, n_rows=800, low=-3.0, high=3.0)
    found = find_conserved(x, _pendulum(x), names=["q", "p"], progress=False)
    assert _same(found.formulas[0], p**2 / 2 - sympy.cos(q))
    assert is_conserved(found.formulas[0], ["q", "p"], [p, -sympy.sin(q)])
    assert found.residual[0] < 1e-2


def test_two_oscillators_give_two_separate_energies():
    x = _states(4, n_rows=800)
    flow = torch.cat([_oscillator(x[:, :2]), _oscillator(x[:, 2:], omega=2.0)], dim=1)
    found = find_conserved(x, flow, n_quantities=2, names=["q1", "p1", "q2", "p2"], progress=False)
    expected = [q1**2 + p1**2, q2**2 + p2**2 / 4]
    assert sorted(map(str, found.formulas)) == sorted(map(str, expected))
    assert all(value < 1e-3 for value in found.residual)
    assert len(found.models) == 2
    assert len(found.symbolic_models) == 2


def test_eigen_start_reaches_the_optimum():
    x = _states(2)
    flow = _oscillator(x, omega=1.5)
    unit = flow / flow.norm(dim=1, keepdim=True)
    model = MultKAN([2, 1], grid=5, k=3, dtype=torch.float64)
    model.update_grid(x)
    before = float(_objective(model, x, unit, [], 1.0).detach())
    assert _eigen_start(model, x, unit, [], 1.0)
    after = float(_objective(model, x, unit, [], 1.0).detach())
    # q**2 + p**2 / 2.25 lies outside the cubic splines only by their approximation error.
    assert before > 1e-2
    assert after < 1e-8
    assert not _eigen_start(MultKAN([2, [0, 1], 1], dtype=torch.float64), x, unit, [], 1.0)


def test_equilibria_are_left_out():
    x = _states(2)
    flow = _oscillator(x)
    flow[:50] = 0.0
    found = find_conserved(x, flow, names=["q", "p"], progress=False, symbolic=False)
    assert found.formulas is None
    assert found.symbolic_models is None
    assert found.residual[0] < 1e-4


def test_dissipative_flow_warns():
    x = _states(2)
    damped = torch.stack([x[:, 1], -x[:, 0] - 0.5 * x[:, 1]], dim=1)
    with pytest.warns(ConservationWarning, match="quantity 0 is conserved only to a residual"):
        found = find_conserved(x, damped, progress=False, symbolic=False, steps=5)
    assert found.residual[0] > 1e-2


def test_residual_of_formulas_models_and_callables():
    x = _states(2)
    flow = _pendulum(x)
    exact, wrong = conservation_residual([p**2 / 2 - sympy.cos(q), q], x, flow, names=["q", "p"])
    assert float(exact) < 1e-14
    # d q / dt = p. In units where each flow component has an RMS of 1 (f / c), the
    # residual of q is rms(f_q / c_q / |f / c|) over the rows.
    balanced = flow / flow.square().mean(dim=0).sqrt()
    unit_q = balanced[:, 0] / balanced.norm(dim=1)
    assert float(wrong) == pytest.approx(float(unit_q.pow(2).mean().sqrt()), rel=1e-12)
    by_callable = conservation_residual(lambda v: v[:, 1] ** 2 / 2 - torch.cos(v[:, 0]), x, flow)
    assert float(by_callable[0]) < 1e-14
    model = MultKAN([2, 1], dtype=torch.float64)
    assert conservation_residual(model, x, flow).shape == (1,)
    assert math.isnan(float(conservation_residual(lambda v: v[:, 0] * 0, x, flow)[0]))
    # Strings are read as sympy expressions. sign(q - 10) is -1 on the data, and its
    # derivative 2*DiracDelta(q - 10) counts as 0, which NumPy could not evaluate.
    with_sign = conservation_residual("p**2/2 - cos(q) + sign(q - 10)", x.numpy(), flow.numpy(), names=["q", "p"])
    assert float(with_sign[0]) < 1e-14


def test_is_conserved_exact_checks():
    assert is_conserved(q**2 + p**2, [q, p], [p, -q])
    assert not is_conserved(q**2 + 2 * p**2, [q, p], [p, -q])
    assert is_conserved("x*py - y*px", ["x", "y", "px", "py"], ["px", "py", "-x", "-y"])
    with pytest.raises(InvalidParameterError, match="flow"):
        is_conserved(q, [q, p], [p])


def test_tidy_quantity_snaps_a_fitted_pendulum_formula():
    x = _states(2, low=-3.0, high=3.0)
    fitted = (
        -0.0925252057880185 * (1.99919035255915 * p - 0.000312670645452477) ** 2
        + 0.737572879585257 * sympy.sin(1.00103330839354 * q + 7.85433850878255)
        + 0.248291630248808
    )
    tidy, residual = tidy_quantity(fitted, x, _pendulum(x), names=["q", "p"])
    assert tidy == p**2 / 2 - sympy.cos(q)
    assert residual < 1e-14
    # 1.37 is no simple number (4/3 and 11/8 lie beyond what the data allow), so the ratio stays a float.
    tidy, residual = tidy_quantity(q**2 + 1.37 * p**2, x, torch.stack([1.37 * x[:, 1], -x[:, 0]], dim=1), names=["q", "p"])
    assert tidy.coeff(p**2) == 1
    assert float(tidy.coeff(q**2)) == pytest.approx(1 / 1.37, rel=1e-12)
    assert residual < 1e-14


def test_formula_too_deep_for_numpy_is_reported():
    x = _states(2)
    deep = q
    for _ in range(100):
        deep = 2 * sympy.exp(deep) + 1
    with pytest.raises(SymbolicError, match="cannot evaluate the derivative of formula 0 with NumPy: it is nested too deeply"):
        conservation_residual(deep, x, _oscillator(x), names=["q", "p"])


@pytest.mark.parametrize(
    "arguments, error, match",
    [
        (dict(x=np.zeros((20, 2)), flow=np.zeros((20, 3))), InvalidDataError, "one time derivative per state variable"),
        (dict(x=np.zeros((20, 1)), flow=np.ones((20, 1))), InvalidDataError, "at least 2 state variables"),
        (dict(x=np.zeros(20), flow=np.ones(20)), InvalidDataError, "shape"),
        (dict(n_quantities=2), InvalidParameterError, "n_quantities"),
        (dict(n_quantities=0), InvalidParameterError, "n_quantities"),
        (dict(width=[2, 2]), InvalidParameterError, "width"),
        (dict(width=[3, 1]), InvalidParameterError, "width"),
        (dict(steps=0), InvalidParameterError, "steps"),
        (dict(test_fraction=0.95), InvalidParameterError, "test_fraction"),
        (dict(independence=-1.0), InvalidParameterError, "independence"),
        (dict(names=["q", "q"]), InvalidParameterError, "names"),
        (dict(names=[1, 2]), InvalidParameterError, "names"),
        (dict(k=0), InvalidParameterError, "splines of degree 0 have no gradient"),
    ],
)
def test_bad_input_is_named(arguments, error, match):
    x = _states(2, n_rows=40)
    call = dict(x=x, flow=_oscillator(x), progress=False)
    call.update(arguments)
    with pytest.raises(error, match=match):
        find_conserved(call.pop("x"), call.pop("flow"), **call)


def test_non_finite_and_resting_data_are_rejected():
    x = _states(2, n_rows=40)
    flow = _oscillator(x)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(InvalidDataError, match="row 3, column 1 is nan"):
        find_conserved(bad, flow, progress=False)
    with pytest.raises(InvalidDataError, match="at least 10 rows where the flow is not zero"):
        find_conserved(x, torch.zeros_like(x), progress=False)


def test_long_formulas_are_left_as_they_are():
    x = _states(2)
    long = sum(sympy.Float(0.1 * (i + 1)) * sympy.cos((i + 1) * q + sympy.Float(0.37) * p) for i in range(12))
    assert sympy.count_ops(long) > 60
    tidy, residual = tidy_quantity(long, x, _oscillator(x), names=["q", "p"])
    assert tidy == long
    assert residual == pytest.approx(float(conservation_residual(long, x, _oscillator(x), names=["q", "p"])[0]))


@pytest.mark.parametrize(
    "name, box, flow, expected",
    [
        ("duffing", (-2.0, 2.0), lambda v: torch.stack([v[:, 1], -v[:, 0] - v[:, 0] ** 3], 1), p**2 + q**2 + q**4 / 2),
        ("double well", (-2.0, 2.0), lambda v: torch.stack([v[:, 1], v[:, 0] - v[:, 0] ** 3], 1), p**2 - q**2 + q**4 / 2),
        ("lotka-volterra", (0.2, 3.0), lambda v: torch.stack([v[:, 0] - v[:, 0] * v[:, 1], v[:, 0] * v[:, 1] - v[:, 1]], 1), q + p - sympy.log(q) - sympy.log(p)),
        ("pendulum g", (-3.1, 3.1), lambda v: torch.stack([v[:, 1], -9.81 * torch.sin(v[:, 0])], 1), sympy.Rational(50, 981) * p**2 - sympy.cos(q)),
    ],
)
def test_sums_beyond_one_function_per_edge(name, box, flow, expected):
    # q**2/2 + q**4/4 or x - log(x) is no single library function, and 1/(2*9.81) no simple fraction.
    x = _states(2, n_rows=1000, low=box[0], high=box[1])
    found = find_conserved(x, flow(x), names=["q", "p"], progress=False)
    assert _same(found.formulas[0], expected), name
    assert found.formula_residual[0] < 1e-12


def test_noisy_flow_gets_no_extra_terms():
    x = _states(2, n_rows=1000, low=-3.0, high=3.0)
    flow = _pendulum(x)
    generator = torch.Generator().manual_seed(1)
    noisy = flow * (1 + 1e-3 * torch.randn(flow.shape, generator=generator, dtype=torch.float64))
    found = find_conserved(x, noisy, names=["q", "p"], progress=False)
    # An exact refit would fit the noise with tiny extra terms; those are dropped.
    assert _same(found.formulas[0], p**2 / 2 - sympy.cos(q))
    assert 1e-6 < found.formula_residual[0] < 1e-2


def test_is_conserved_matches_symbols_by_name():
    plain_q, plain_p = sympy.symbols("q p")
    # The formulas of find_conserved use real symbols; a flow in plain symbols still applies.
    assert not is_conserved(p**2 + q**2, [plain_q, plain_p], [plain_p, -sympy.sin(plain_q)])
    assert is_conserved(p**2 / 2 - sympy.cos(q), [plain_q, plain_p], [plain_p, -sympy.sin(plain_q)])
    # E, I, S and N name variables here, not sympy's constants.
    assert is_conserved("S + I + R", ["S", "I", "R"], ["-b*S*I", "b*S*I - g*I", "g*I"])
    x = _states(2, n_rows=100)
    rotation = torch.stack([x[:, 1], -x[:, 0]], dim=1)
    assert float(conservation_residual("E**2 + I**2", x, rotation, names=["E", "I"])[0]) < 1e-14


def test_constant_quantity_has_nan_residual():
    x = _states(2, n_rows=100)
    assert math.isnan(float(conservation_residual(lambda v: torch.ones(v.shape[0], dtype=v.dtype), x, _oscillator(x))[0]))


def test_constant_formula_warns():
    x = _states(2, n_rows=800, low=-3.0, high=3.0)
    # With only the zero function to snap to, the formula is a constant.
    with pytest.warns(ConservationWarning, match=r"the formula of quantity 0, [-\d.e]+, is a constant, against"):
        found = find_conserved(x, _pendulum(x), names=["q", "p"], lib=["0"], progress=False)
    assert not found.formulas[0].free_symbols
    assert found.residual[0] < 1e-2


def test_three_oscillators_give_three_energies():
    x = _states(6, n_rows=1500)
    flow = torch.cat([_oscillator(x[:, 0:2]), _oscillator(x[:, 2:4], omega=2.0), _oscillator(x[:, 4:6], omega=3.0)], dim=1)
    names = ["q1", "p1", "q2", "p2", "q3", "p3"]
    found = find_conserved(x, flow, n_quantities=3, names=names, progress=False)
    q3, p3 = sympy.symbols("q3 p3", real=True)
    expected = [q1**2 + p1**2, q2**2 + p2**2 / 4, q3**2 + p3**2 / 9]
    assert sorted(map(str, found.formulas)) == sorted(map(str, expected))
    assert max(found.formula_residual) < 1e-12


def test_single_trajectory_level_set_warning():
    # One circle of the oscillator: every quantity is constant on it.
    angle = torch.linspace(0, 2 * math.pi, 400, dtype=torch.float64)[:-1]
    x = torch.stack([1.5 * torch.cos(angle), -1.5 * torch.sin(angle)], dim=1)
    with pytest.warns(ConservationWarning, match="one level set of quantity 0") as record:
        find_conserved(x, _oscillator(x), names=["q", "p"], progress=False, symbolic=False)
    ratio = float(str(record[0].message).split("spread over them is ")[1].split(" ")[0])
    assert ratio < 1e-2


def test_several_trajectories_no_level_set_warning():
    # Five circles of different radii: the energy differs between them.
    angle = torch.linspace(0, 2 * math.pi, 120, dtype=torch.float64)[:-1]
    x = torch.cat([torch.stack([r * torch.cos(angle), -r * torch.sin(angle)], dim=1) for r in (0.5, 0.9, 1.3, 1.7, 2.1)])
    found = find_conserved(x, _oscillator(x), names=["q", "p"], progress=False)
    assert _same(found.formulas[0], q**2 + p**2)


def _quartic_central_force(seed):
    # H = (px**2 + py**2)/2 + (x**2 + y**2)**2 conserves the energy and L = x*py - y*px.
    generator = torch.Generator().manual_seed(seed)
    state = torch.rand(1500, 4, generator=generator, dtype=torch.float64) * 2 - 1
    x, y, px, py = state.T
    radius_squared = x**2 + y**2
    return state, torch.stack([px, py, -4 * radius_squared * x, -4 * radius_squared * y], dim=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_pairs_width_momentum_and_energy(seed):
    state, flow = _quartic_central_force(seed)
    found = find_conserved(state, flow, n_quantities=2, width="pairs", names=["x", "y", "px", "py"], progress=False, seed=seed)
    x, y, px, py = sympy.symbols("x y px py", real=True)
    momentum, energy = found.formulas
    assert _same(momentum, px * y - py * x) or _same(momentum, py * x - px * y)
    assert _same(energy, px**2 / 4 + py**2 / 4 + (x**2 + y**2) ** 2 / 2)
    assert is_conserved(momentum, [x, y, px, py], [px, py, -4 * (x**2 + y**2) * x, -4 * (x**2 + y**2) * y])


def test_pairs_start_exact_momentum():
    state, flow = _quartic_central_force(0)
    unit = flow / flow.norm(dim=1, keepdim=True)
    model = _pairs_model(4, grid=5, k=3, seed=0, names=["x", "y", "px", "py"], grid_range=(-1.0, 1.0))
    model.update_grid(state)
    assert _eigen_start(model, state, unit, [], 1.0)
    assert float(conservation_residual(model, state, flow)[0]) < 1e-10
    # The first layer stays fixed: every variable and every product of two.
    assert not any(parameter.requires_grad for parameter in model.layers[0].parameters())
    hidden = model.layers[0](state)
    assert torch.allclose(hidden[:, :4], state)
    assert torch.allclose(hidden[:, 4], state[:, 0] * state[:, 1])


def test_pairs_width_rejects_other_strings():
    x = _states(2)
    with pytest.raises(InvalidParameterError, match="'pairs' or a list"):
        find_conserved(x, _oscillator(x), width="products", progress=False)


def _sextic_central_force():
    # V = (x**2 + y**2)**3: its forces are about 100 times the momenta at |x|, |y| near 2.
    generator = torch.Generator().manual_seed(0)
    state = torch.rand(1000, 4, generator=generator, dtype=torch.float64) * 4 - 2
    x, y, px, py = state.T
    radius_4 = (x**2 + y**2) ** 2
    return state, torch.stack([px, py, -6 * radius_4 * x, -6 * radius_4 * y], dim=1)


def test_residual_balances_flow_components():
    # A function of the positions alone is not conserved: without balanced units its
    # residual was 0.0022, as the unit flow points almost along the momenta.
    state, flow = _sextic_central_force()
    names = ["x", "y", "px", "py"]
    assert float(conservation_residual("x**4*y**4", state, flow, names=names)[0]) > 0.1
    assert float(conservation_residual("x*py - y*px", state, flow, names=names)[0]) < 1e-14


def test_inexpressible_second_quantity_warns():
    # The energy has x**4*y**2 terms, which no sum over single variables and pairs holds,
    # so the second formula is no law, while the first (the angular momentum) is exact.
    state, flow = _sextic_central_force()
    with pytest.warns(ConservationWarning, match="quantity 1, .* is probably not conserved"):
        found = find_conserved(state, flow, n_quantities=2, width="pairs", names=["x", "y", "px", "py"], progress=False)
    x, y, px, py = sympy.symbols("x y px py", real=True)
    assert _same(found.formulas[0], px * y - py * x) or _same(found.formulas[0], py * x - px * y)
    assert found.formula_residual[1] > 1e3 * found.formula_residual[0]


def test_gradient_overlaps_of_dependent_formulas():
    state, _ = _sextic_central_force()
    x, y, px, py = sympy.symbols("x y px py", real=True)
    momentum = px * y - py * x
    energy = (px**2 + py**2) / 2 + (x**2 + y**2) ** 3
    overlaps = _gradient_overlaps([momentum, momentum + sympy.sin(x * y) / 100, energy], state, ["x", "y", "px", "py"])
    assert float(overlaps[0, 0]) == pytest.approx(1.0)
    assert float(overlaps[0, 1]) > DEPENDENT_COSINE
    assert float(overlaps[0, 2]) < 0.5


def test_pairs_width_with_noisy_flow():
    # 1% multiplicative noise on the flow: the network's formula is long, and the
    # monomial refit still returns both laws exactly.
    state, flow = _quartic_central_force(0)
    generator = torch.Generator().manual_seed(5)
    noisy = flow * (1 + 0.01 * torch.randn(flow.shape, generator=generator, dtype=torch.float64))
    found = find_conserved(state, noisy, n_quantities=2, width="pairs", names=["x", "y", "px", "py"], progress=False)
    x, y, px, py = sympy.symbols("x y px py", real=True)
    energy = px**2 / 4 + py**2 / 4 + (x**2 + y**2) ** 2 / 2
    momenta = (px * y - py * x, py * x - px * y)
    assert any(_same(formula, energy) for formula in found.formulas)
    assert any(_same(formula, momentum) for formula in found.formulas for momentum in momenta)


def test_is_conserved_rejects_a_long_wrong_formula():
    q, p = sympy.symbols("q p", real=True)
    # Expanding this fifth power took more than 100 s; the numeric check rejects it first.
    quantity = (sympy.cos(0.3 * q + 0.1) + 0.2 * sympy.sinh(0.7 * p - 0.2) + sympy.cos(1.3 * p)) ** 5
    assert not is_conserved(quantity, [q, p], [p, -q])
    # A parameter of the flow that is not a variable gets random values too.
    assert not is_conserved("S + I", ["S", "I", "R"], ["-b*S*I", "b*S*I - g*I", "g*I"])
