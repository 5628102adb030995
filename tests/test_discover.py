"""discover: reasons for methods without a formula, constant inputs, the network's method."""

import numpy as np
import pytest
import sympy
import torch

from multkan import InvalidDataError, InvalidParameterError
from multkan.datasets import dataset_from_arrays
from multkan.discover import METHODS, discover


def _dataset(x, y):
    return dataset_from_arrays(torch.tensor(x), torch.tensor(y)[:, None], test_size=0.25, seed=0, dtype=torch.float64)


def test_power_law_reason_negative_inputs():
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (200, 2))
    result = discover(_dataset(x, x[:, 0] + x[:, 1]), ["a", "b"], methods=("power_law", "additive"), progress=False)
    assert result.skipped["power_law"] == "needs positive inputs"
    assert "skipped" in result.to_dict()


def test_power_law_reason_sign_change():
    rng = np.random.default_rng(1)
    x = rng.uniform(1, 2, (200, 2))
    result = discover(_dataset(x, x[:, 0] - x[:, 1]), ["a", "b"], methods=("power_law", "additive"), progress=False)
    assert result.skipped["power_law"] == "needs a target of one sign"


def test_power_law_constant_input_column():
    rng = np.random.default_rng(2)
    x = np.column_stack([rng.uniform(1, 5, 200), np.ones(200)])
    result = discover(_dataset(x, 3 * x[:, 0]), ["a", "b"], methods=("power_law",), progress=False)
    a = sympy.Symbol("a", real=True)
    assert sympy.simplify(result.formula - 3 * a) == 0


def test_network_method_recorded():
    rng = np.random.default_rng(3)
    x = rng.uniform(1, 2, (200, 2))
    result = discover(_dataset(x, x[:, 0] * x[:, 1]), ["a", "b"], methods=("power_law", "additive"), progress=False)
    assert result.method == "power_law"
    assert result.network_method == "additive"
    assert result.model is not None
    assert result.to_dict()["network_method"] == "additive"


def test_methods_listed_in_order():
    assert METHODS[:4] == ("power_law", "power_law_group", "separable_product", "factored_sum")


def test_progress_bar_ends_full_on_early_stop(capsys):
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, size=(200, 2))
    data = _dataset(x, x[:, 0] * x[:, 1] ** 2)
    result = discover(data, ["a", "b"], methods=("power_law", "additive", "multiplicative"), stop_rmse=1e-6, progress=True)
    assert result.method == "power_law"
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "100%" in bar
    # The total stays at the three methods; the two not needed count as done.
    assert "3/3" in bar
    assert "2 methods not needed" in bar


def test_time_limit_skips_later_methods(monkeypatch):
    import time as clock

    import multkan.discover

    rng = np.random.default_rng(4)
    x = rng.uniform(1, 2, (200, 2))
    data = _dataset(x, x[:, 0] * x[:, 1])
    ran = []
    original = multkan.discover._run_method
    now = clock.perf_counter

    def recording(method, *arguments, **options):
        ran.append(method)
        result = original(method, *arguments, **options)
        # The limit passes while the first method runs.
        monkeypatch.setattr(clock, "perf_counter", lambda: now() + 1000.0)
        return result

    monkeypatch.setattr(multkan.discover, "_run_method", recording)
    result = discover(data, ["a", "b"], methods=("power_law", "separable_product", "additive"), time_limit=10, progress=False)
    assert ran == ["power_law"]
    assert result.method == "power_law"
    assert result.skipped["separable_product"] == "not run: the time limit of 10 s was reached"
    assert result.skipped["additive"] == result.skipped["separable_product"]


def test_time_limit_before_any_formula_raises():
    rng = np.random.default_rng(5)
    x = rng.uniform(1, 2, (200, 2))
    with pytest.raises(InvalidDataError, match=r"no formula within the time limit of 1e-09 s \(power_law: not run: the time limit"):
        discover(_dataset(x, x[:, 0] * x[:, 1]), ["a", "b"], methods=("power_law", "additive"), time_limit=1e-9, progress=False)


def test_time_limit_stops_a_structure_search(monkeypatch):
    import time as clock

    import multkan.structure

    rng = np.random.default_rng(5)
    x = rng.uniform(1, 2, (200, 4))
    data = _dataset(x, x[:, 0] * x[:, 1] + x[:, 2] ** 2 + x[:, 3])
    checks = []
    original = multkan.structure._check_deadline

    def counting(deadline):
        checks.append(deadline)
        if len(checks) == 3:
            # The limit passes while factored_sum screens its third assignment.
            monkeypatch.setattr(clock, "perf_counter", lambda: deadline + 1.0)
        original(deadline)

    monkeypatch.setattr(multkan.structure, "_check_deadline", counting)
    with pytest.raises(InvalidDataError, match="factored_sum: stopped: the time limit of 1000 s was reached"):
        discover(data, ["a", "b", "c", "d"], methods=("factored_sum", "additive"), time_limit=1000, progress=False)


def test_time_limit_stops_naming_the_factors(monkeypatch):
    import time as clock

    import multkan.structure

    rng = np.random.default_rng(5)
    x = rng.uniform(1, 2, (200, 3))
    data = _dataset(x, x[:, 0] * (x[:, 1] + np.sin(x[:, 2])))
    original = multkan.structure.fit_univariate
    calls = []

    def late(*arguments, deadline=None, **options):
        # The limit passes once factored_sum has found its assignment and names the first factor.
        calls.append(deadline)
        monkeypatch.setattr(clock, "perf_counter", lambda: deadline + 1.0)
        return original(*arguments, deadline=deadline, **options)

    monkeypatch.setattr(multkan.structure, "fit_univariate", late)
    with pytest.raises(InvalidDataError, match="factored_sum: stopped: the time limit of 1000 s was reached"):
        discover(data, ["a", "b", "c"], methods=("factored_sum",), time_limit=1000, progress=False)
    assert len(calls) == 1
    assert calls[0] is not None


def test_fit_univariate_checks_its_deadline():
    import time as clock

    from multkan.structure import SearchTimeout, fit_univariate

    z = np.linspace(0.5, 2.0, 100)
    with pytest.raises(SearchTimeout):
        fit_univariate(z, np.sin(z), sympy.Symbol("z"), deadline=clock.perf_counter() - 1.0)
    expression, rmse = fit_univariate(z, np.sin(z), sympy.Symbol("z"), deadline=clock.perf_counter() + 3600.0)
    assert rmse < 1e-9


def test_invalid_time_limit_raises():
    rng = np.random.default_rng(6)
    x = rng.uniform(1, 2, (50, 2))
    with pytest.raises(InvalidParameterError, match="invalid time_limit"):
        discover(_dataset(x, x[:, 0]), ["a", "b"], time_limit=0, progress=False)


def test_skipped_methods_in_the_given_order():
    rng = np.random.default_rng(7)
    x = rng.uniform(-2, 2, (200, 2))
    # multiplicative is ruled out before any method runs, power_law when it runs.
    result = discover(_dataset(x, x[:, 0] + x[:, 1]), ["a", "b"], methods=("power_law", "multiplicative", "additive"), progress=False)
    assert list(result.skipped) == ["power_law", "multiplicative"]


def test_network_order_follows_the_formula():
    from multkan.discover import _network_order

    a, b = sympy.symbols("a b", positive=True)
    remaining = ["power_law_group", "additive", "multiplicative", "mult_node"]
    assert _network_order(3 * a * b**2, remaining) == ["multiplicative", "mult_node", "power_law_group", "additive"]
    assert _network_order(a**2, remaining)[0] == "multiplicative"
    # The CLI's default run puts mult_node before multiplicative, and that order stays.
    assert _network_order(a * b, ["mult_node", "additive", "multiplicative"]) == ["mult_node", "multiplicative", "additive"]
    assert _network_order(a + sympy.sin(b) + 1, remaining) == ["additive", "power_law_group", "multiplicative", "mult_node"]
    assert _network_order(sympy.sin(a * b), remaining) == remaining
    assert _network_order(a * b, ["additive"]) == ["additive"]


def test_product_formula_multiplicative_network():
    rng = np.random.default_rng(8)
    x = rng.uniform(1, 5, (300, 2))
    result = discover(_dataset(x, x[:, 0] * x[:, 1] ** 2), ["a", "b"], methods=METHODS, stop_rmse=1e-6, stop_needs_network=True, progress=False)
    assert result.method == "power_law"
    assert result.network_method == "multiplicative"
    # In the target's units (y up to 125), not in those of log|y|.
    prediction = np.exp(result.model(torch.tensor(x)).detach().numpy()[:, 0])
    assert result.model_test_rmse is not None
    assert result.model_test_rmse < 0.05
    assert np.sqrt(np.mean((prediction - x[:, 0] * x[:, 1] ** 2) ** 2)) < 0.05


def test_time_limit_between_network_stages(monkeypatch):
    import time as clock

    from multkan import MultKAN

    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, (200, 2))
    fits = []
    original = MultKAN.fit
    now = clock.perf_counter

    def counting(model, *arguments, **options):
        fits.append(1)
        history = original(model, *arguments, **options)
        # The limit passes during the first training stage.
        monkeypatch.setattr(clock, "perf_counter", lambda: now() + 1000.0)
        return history

    monkeypatch.setattr(MultKAN, "fit", counting)
    with pytest.raises(InvalidDataError, match="mult_node: stopped: the time limit of 100 s was reached"):
        discover(_dataset(x, x[:, 0] * x[:, 1]), ["a", "b"], methods=("mult_node",), steps=2, time_limit=100, progress=False)
    assert len(fits) == 1


# Constants, noise and magnitudes of the power law and the networks.


def test_power_law_two_pi_narrow_range():
    # g in [9.7, 9.9]: the constant is 2*pi to rounding, and 44/7 lies 4e-4 from it.
    rng = np.random.default_rng(0)
    length, g = rng.uniform(0.1, 2, 500), rng.uniform(9.7, 9.9, 500)
    data = _dataset(np.column_stack([length, g]), 2 * np.pi * np.sqrt(length / g))
    result = discover(data, ["L", "g"], methods=("power_law",), progress=False)
    L, g = sympy.symbols("L g", real=True)
    assert sympy.simplify(result.formula - 2 * sympy.pi * sympy.sqrt(L) / sympy.sqrt(g)) == 0


def test_power_law_keeps_a_measured_constant():
    # 9.80665 lies 7e-4 from 49/5; on exact data that is far outside the constant's uncertainty.
    rng = np.random.default_rng(1)
    m, h = rng.uniform(1, 5, 300), rng.uniform(1, 10, 300)
    result = discover(_dataset(np.column_stack([m, h]), 9.80665 * m * h), ["m", "h"], methods=("power_law",), progress=False)
    (number,) = result.formula.atoms(sympy.Float)
    assert float(number) == pytest.approx(9.80665, rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_power_law_with_one_percent_noise(seed):
    rng = np.random.default_rng(seed)
    n, temperature, volume = rng.uniform(0.5, 5, 500), rng.uniform(250, 400, 500), rng.uniform(0.01, 0.1, 500)
    pressure = 8.314 * n * temperature / volume * (1 + 0.01 * rng.standard_normal(500))
    data = _dataset(np.column_stack([n, temperature, volume]), pressure)
    result = discover(data, ["n", "T", "V"], methods=("power_law",), progress=False)
    n, T, V = sympy.symbols("n T V", real=True)
    constant = sympy.simplify(result.formula / (n * T / V))
    assert constant.is_number
    assert float(constant) == pytest.approx(8.314, rel=3e-3)


def test_power_law_constant_snaps_within_noise():
    # With 1% noise on 500 rows the data cannot tell 0.5 from the fitted constant.
    rng = np.random.default_rng(0)
    m, v = rng.uniform(0.5, 80, 500), rng.uniform(1, 40, 500)
    data = _dataset(np.column_stack([m, v]), m * v**2 / 2 * (1 + 0.01 * rng.standard_normal(500)))
    result = discover(data, ["m", "v"], methods=("power_law",), progress=False)
    m, v = sympy.symbols("m v", real=True)
    assert sympy.simplify(result.formula - m * v**2 / 2) == 0


def test_power_law_rejects_scatter_above_limit():
    rng = np.random.default_rng(3)
    x = rng.uniform(1, 2, (300, 2))
    y = x[:, 0] * x[:, 1] * (1 + 0.2 * rng.standard_normal(300)).clip(0.1)
    result = discover(_dataset(x, y), ["a", "b"], methods=("power_law", "additive"), progress=False)
    assert result.skipped["power_law"].startswith("no power law fits (RMS residual of log|y|")


def _gravity(rows=300):
    rng = np.random.default_rng(0)
    big, small, distance = rng.uniform(1e30, 4e30, rows), rng.uniform(1e24, 6e24, rows), rng.uniform(1e11, 3e11, rows)
    return _dataset(np.column_stack([big, small, distance]), 6.674e-11 * big * small / distance**2)


def test_network_methods_on_astronomical_magnitudes():
    # The raw values gave an infinite loss; the networks now see inputs divided by powers of ten.
    result = discover(_gravity(), ["M", "m", "R"], methods=("multiplicative",), progress=False)
    M, m, R = sympy.symbols("M m R", real=True)
    constant = sympy.simplify(result.formula / (M * m / R**2))
    assert constant.is_number and float(constant) == pytest.approx(6.674e-11, rel=1e-6)
    assert result.model.input_names == ["M / 1e+31", "m / 1e+25", "R / 1e+11"]
    assert result.model.output_names == ["log|y / 1e+23|"]
    report = result.to_dict()
    assert report["network_inputs"] == ["M / 1e+31", "m / 1e+25", "R / 1e+11"]
    assert report["network_output"] == "log|y / 1e+23|"
    assert result.network_input_scale == [1e31, 1e25, 1e11]
    assert report["network_input_scale"] == [1e31, 1e25, 1e11]
    # The network's own prediction, in those units, matches the data.
    data = _gravity()
    scaled = data["test_input"] / torch.tensor(result.network_input_scale, dtype=torch.float64)
    with torch.no_grad():
        prediction = 1e23 * torch.exp(result.model(scaled))
    assert torch.allclose(prediction, data["test_label"], rtol=1e-2)


def test_failed_network_is_a_reason_not_a_crash(monkeypatch):
    from multkan import MultKAN

    def diverging_fit(self, dataset, **options):
        return {"train_loss": [], "test_loss": [], "reg": []}

    monkeypatch.setattr(MultKAN, "fit", diverging_fit)
    rng = np.random.default_rng(4)
    x = rng.uniform(1, 2, (200, 2))
    result = discover(_dataset(x, x[:, 0] * x[:, 1]), ["a", "b"], methods=("power_law", "additive"), progress=False)
    assert result.skipped["additive"] == "failed: training gave no finite loss on this data"
    assert str(result.formula) == "a*b"


def test_network_names_use_the_target_name():
    rng = np.random.default_rng(5)
    x = rng.uniform(1, 2, (200, 2))
    result = discover(_dataset(x, x[:, 0] * x[:, 1]), ["a", "b"], target_name="F", methods=("multiplicative",), progress=False)
    assert result.model.input_names == ["a", "b"]
    assert result.model.output_names == ["log|F|"]
    with pytest.raises(InvalidParameterError, match="target_name"):
        discover(_dataset(x, x[:, 0]), ["a", "b"], target_name="", progress=False)

