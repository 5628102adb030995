"""Structure searches: one-dimensional formulas, power law times a group, separable products."""

import itertools

import numpy as np
import pytest
import sympy
import torch

from multkan.discover import discover
from multkan.feynman import get_equation
from multkan.structure import _Inner, _partitions, _score_power_rows, factored_sum, fit_univariate, power_law_group, separable_product

z = sympy.Symbol("z", positive=True)


def _assert_same(found, truth):
    assert found is not None
    assert sympy.simplify(found - truth) == 0, f"found {found}, expected {truth}"


@pytest.mark.parametrize(
    "truth, low, high",
    [
        (1 / (sympy.exp(z / (2 * sympy.pi)) - 1), 0.05, 25.0),
        (sympy.exp(-(z**2) / 2), 1 / 3, 3.0),
        (1 / (z**2 - 1), 1.2, 5.0),
        (sympy.asin(z / 6), 0.2, 5.0),
    ],
)
def test_fit_univariate_exact(truth, low, high):
    values = np.random.default_rng(0).uniform(low, high, 800)
    labels = sympy.lambdify(z, truth, "numpy")(values)
    fitted = fit_univariate(values, labels, z)
    assert fitted is not None
    expression, rmse = fitted
    assert rmse < 1e-10
    _assert_same(sympy.nsimplify(expression, [sympy.pi]), truth)


def test_fit_univariate_constant_input():
    assert fit_univariate(np.full(50, 2.0), np.arange(50.0), z) is None


def _symbols(names):
    return [sympy.Symbol(name, real=True) for name in names]


def test_power_law_group_relativistic_mass():
    rng = np.random.default_rng(1)
    m, v, c = rng.uniform(1, 5, 1000), rng.uniform(1, 2, 1000), rng.uniform(3, 10, 1000)
    x = torch.tensor(np.column_stack([m, v, c]))
    y = torch.tensor(m / np.sqrt(1 - v**2 / c**2))
    symbols = _symbols(["m", "v", "c"])
    found = power_law_group(x, y, symbols)
    _assert_same(found, symbols[0] / sympy.sqrt(1 - symbols[1] ** 2 / symbols[2] ** 2))


def test_power_law_group_skips_plain_power_law():
    rng = np.random.default_rng(2)
    x = rng.uniform(1, 5, (500, 3))
    y = 2 * x[:, 0] * x[:, 1] ** 2 / x[:, 2]
    assert power_law_group(torch.tensor(x), torch.tensor(y), _symbols("abc")) is None


def test_power_law_group_needs_positive_inputs():
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (500, 2))
    y = np.exp(x[:, 0] / (x[:, 1] + 2))
    assert power_law_group(torch.tensor(x), torch.tensor(y), _symbols("ab")) is None


def test_separable_product_sign_change():
    rng = np.random.default_rng(4)
    r, force, theta = rng.uniform(1, 5, 1000), rng.uniform(1, 5, 1000), rng.uniform(0, 5, 1000)
    x = torch.tensor(np.column_stack([r, force, theta]))
    y = torch.tensor(r * force * np.sin(theta))
    symbols = _symbols(["r", "F", "theta"])
    found = separable_product(x, y, symbols)
    _assert_same(found, symbols[0] * symbols[1] * sympy.sin(symbols[2]))


def test_separable_product_rejects_sum():
    rng = np.random.default_rng(5)
    x = rng.uniform(1, 5, (500, 2))
    assert separable_product(torch.tensor(x), torch.tensor(x[:, 0] + x[:, 1]), _symbols("ab")) is None


def test_factored_sum_prefactor_times_offset():
    rng = np.random.default_rng(6)
    beta, alpha, theta = rng.uniform(1, 5, 1000), rng.uniform(1, 5, 1000), rng.uniform(1, 5, 1000)
    x = torch.tensor(np.column_stack([beta, alpha, theta]))
    y = torch.tensor(beta * (1 + alpha * np.cos(theta)))
    symbols = _symbols(["beta", "alpha", "theta"])
    found = factored_sum(x, y, symbols)
    _assert_same(found, symbols[0] * (1 + symbols[1] * sympy.cos(symbols[2])))


@pytest.mark.slow
def test_factored_sum_product_times_sum():
    rng = np.random.default_rng(7)
    columns = rng.uniform(1, 5, (1000, 4))
    m, u, v, w = columns.T
    y = torch.tensor(m * (u**2 + v**2 + w**2) / 2)
    symbols = _symbols(["m", "u", "v", "w"])
    found = factored_sum(torch.tensor(columns), y, symbols)
    _assert_same(sympy.nsimplify(found), symbols[0] * (symbols[1] ** 2 + symbols[2] ** 2 + symbols[3] ** 2) / 2)


def test_factored_sum_rejects_unstructured():
    rng = np.random.default_rng(8)
    x = rng.uniform(1, 5, (400, 2))
    y = np.sin(x[:, 0] * x[:, 1]) + x[:, 0]
    assert factored_sum(torch.tensor(x), torch.tensor(y), _symbols("ab")) is None


@pytest.mark.slow
def test_discover_group_method_feynman():
    equation = get_equation("I.10.7")
    dataset = equation.sample(n_train=1000, n_test=500, seed=0, dtype=torch.float64)
    result = discover(
        dataset, list(equation.variable_names), true_formula=equation.expr, methods=("power_law", "power_law_group"), progress=False
    )
    assert result.method == "power_law_group"
    assert result.exact


def _partitions_by_brute_force(n_var, limit):
    """Every labelling of the inputs as prefactor (0), additive (1) or product (2), filtered and stably sorted by cost."""
    found = []
    for labels in itertools.product(range(3), repeat=n_var):
        groups = tuple(tuple(i for i in range(n_var) if labels[i] == label) for label in range(3))
        if len(groups[2]) == 1 or not (groups[1] or groups[2]):
            continue
        found.append((len(groups[0]) + len(groups[2]), groups))
    found.sort(key=lambda entry: entry[0])
    return [groups for _, groups in found[:limit]]


@pytest.mark.parametrize("n_var", [2, 3, 5, 8])
@pytest.mark.parametrize("limit", [1, 40, 800])
def test_factored_sum_partitions_match_brute_force(n_var, limit):
    assert _partitions(n_var, limit) == _partitions_by_brute_force(n_var, limit)


def test_partitions_of_many_inputs_bounded():
    # 3**40 labellings: only the cheapest cost levels may be built.
    partitions = _partitions(40, 800)
    assert len(partitions) == 800
    costs = [len(prefactor) + len(product) for prefactor, _, product in partitions]
    assert costs == sorted(costs)
    assert costs[-1] == 2
    assert all(sorted(p + r + q) == list(range(40)) and len(q) != 1 for p, r, q in partitions)



def test_power_rows_skip_overflow(capfd):
    # exp(700 u) / median reaches 1e152 at u = 1, where the weight 1/sqrt(t) of the
    # target exp(-744 u) is 1e161: the product overflows, which LAPACK used to be given.
    u = np.linspace(0.0, 1.0, 64)
    y = np.exp(-744.0 * u)
    inner = [_Inner("exp(700u)", lambda v: np.exp(700.0 * v), lambda s: sympy.exp(700 * s), 2)]
    scored = _score_power_rows(u, y, inner, [0], sympy.Symbol("u"))
    assert "DLASCL" not in capfd.readouterr().err
    assert all(np.isfinite(entry[0]) for entry in scored)
