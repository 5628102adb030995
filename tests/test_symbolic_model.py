"""Symbolic edges on a model: fixing, auto_symbolic, formulas against the forward pass."""

import math
import warnings

import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multkan import InvalidParameterError, MultKAN, SymbolicError, SymbolicFitWarning, create_dataset
from multkan.symbolic.formula import formula_error, snap_value


def _forward_vs_formula(model, n_points=40, seed=0, low=-1.0, high=1.0):
    generator = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(n_points, model.n_inputs, generator=generator, dtype=model.dtype)
    expressions = model.symbolic_formula()
    symbols = [sympy.Symbol(n, real=True) for n in model.input_names]
    with torch.no_grad():
        forward = model(x)
    worst = 0.0
    for output, expression in enumerate(expressions):
        function = sympy.lambdify(symbols, expression, modules="numpy")
        values = torch.as_tensor(function(*[x[:, i].numpy() for i in range(model.n_inputs)]), dtype=torch.float64)
        worst = max(worst, float((values - forward[:, output].double()).abs().max()))
    return worst


def test_fix_without_fit_needs_no_data():
    model = MultKAN([2, 4, 2], seed=0)
    assert model.fix_symbolic((0, 0, 0), "sin", fit_params=False) is None
    assert model.layers[0].symbolic_names[(0, 0)] == "sin"
    assert model.layers[0].spline_mask[0, 0] == 0
    x = torch.zeros(1, 2)
    with torch.no_grad():
        before = model(x)
    assert torch.isfinite(before).all()


def test_fix_with_fit_and_no_data_raises():
    model = MultKAN([2, 4, 2], seed=0)
    with pytest.raises(SymbolicError, match="pass x="):
        model.fix_symbolic((0, 0, 0), "sin", fit_params=True)


def test_fix_then_unfix_restores_spline():
    model = MultKAN([2, 3, 1], seed=0)
    x = torch.rand(20, 2)
    with torch.no_grad():
        before = model(x)
    model.fix_symbolic((0, 1, 2), "x", fit_params=False)
    model.unfix_symbolic((0, 1, 2))
    with torch.no_grad():
        assert torch.equal(model(x), before)
    assert model.to_graph().edges["L0:input1", "L1:sum2"]["function"] == {"type": "spline"}


def test_fix_symbolic_pykan_positional_form():
    model = MultKAN([2, 4, 2], seed=0)
    assert model.fix_symbolic(0, 1, 2, "sin", False) is None
    assert model.layers[0].symbolic_names[(1, 2)] == "sin"
    model.fix_symbolic(0, 0, 3, "x", fit_params_bool=False)
    assert model.layers[0].symbolic_names[(0, 3)] == "x"
    model.unfix_symbolic(0, 1, 2)
    assert (1, 2) not in model.layers[0].symbolic_names


def test_fix_symbolic_pykan_form_bad_arguments():
    model = MultKAN([2, 4, 2], seed=0)
    with pytest.raises(InvalidParameterError, match="pykan's"):
        model.fix_symbolic(0, 1, 2)
    with pytest.raises(InvalidParameterError, match="at most"):
        model.fix_symbolic((0, 1, 2), "sin", False, "extra")
    with pytest.raises(InvalidParameterError, match="unfix_symbolic"):
        model.unfix_symbolic(0, 1)


def test_clean_sine_edge_becomes_sine():
    data = create_dataset(lambda x: torch.sin(3 * x[:, 0]), n_var=1, train_num=300, test_num=50, seed=0)
    model = MultKAN([1, 1], grid=5, seed=0)
    model.fit(data, steps=20, progress=False)
    suggestions = model.suggest_symbolic((0, 0, 0), ["x", "x^2", "sin", "0"])
    assert suggestions[0].name == "sin"
    assert suggestions[0].r2 > 0.99
    report = model.auto_symbolic(["x", "x^2", "sin", "0"])
    assert [r.name for r in report] == ["sin"]


def test_clean_edges_never_become_zero():
    data = create_dataset(lambda x: torch.sin(3 * x[:, 0]), n_var=1, train_num=300, test_num=50, seed=0)
    model = MultKAN([1, 1, 1], grid=5, seed=2)
    model.fit(data, steps=20, progress=False)
    report = model.auto_symbolic(["x", "x^2", "sin", "0"])
    assert len(report) == 2
    for record in report:
        assert record.name != "0"
        assert record.r2 > 0.98


def test_domain_respected_for_sqrt_and_log():
    data = create_dataset(lambda x: x[:, 0] ** 2 + 0.3 * x[:, 0], n_var=1, train_num=200, test_num=50, seed=1)
    model = MultKAN([1, 1], grid=5, seed=0)
    model.fit(data, steps=10, progress=False)
    report = model.auto_symbolic(["x", "sqrt", "log"], warn_weak=False)
    a, b, _, _ = report[0].params
    if report[0].name in ("sqrt", "log"):
        low, high = sorted((a * -1 + b, a * 1 + b))
        assert low >= 0.0
    expression = model.symbolic_formula()[0]
    check = formula_error(expression, [sympy.Symbol("x_1", real=True)], data["train_input"], data["train_label"])
    assert check.finite
    with torch.no_grad():
        assert torch.isfinite(model(data["train_input"])).all()


@pytest.mark.parametrize("arity", [2, 3, 4, [0, [2, 3], 0], [0, [4, 2], 0]])
def test_mult_formula_equals_forward(arity):
    model = MultKAN([2, [0, 2], 1], mult_arity=arity, seed=0, dtype=torch.float64)
    for layer_index, layer in enumerate(model.layers):
        for i in range(layer.n_in):
            for j in range(layer.n_sub):
                model.fix_symbolic((layer_index, i, j), "x", fit_params=False)
    assert _forward_vs_formula(model) < 1e-6


def test_formula_with_numeric_edges_raises():
    model = MultKAN([2, 2, 1], seed=0)
    with pytest.raises(SymbolicError, match="still splines"):
        model.symbolic_formula()
    expressions = model.symbolic_formula(numeric_edges="function")
    assert expressions[0].atoms(sympy.core.function.AppliedUndef)


_FUNCTIONS = ["x", "x^2", "sin", "exp", "tanh", "cos", "x^3", "gaussian", "0"]


@settings(max_examples=20, deadline=None)
@given(
    n_in=st.integers(1, 3),
    n_sum=st.integers(0, 2),
    arities=st.lists(st.integers(2, 4), min_size=0, max_size=2),
    seed=st.integers(0, 10_000),
)
def test_random_symbolic_graphs_formula_equals_forward(n_in, n_sum, arities, seed):
    if n_sum == 0 and not arities:
        n_sum = 1
    width = [n_in, [n_sum, len(arities)], 1]
    model = MultKAN(width, mult_arity=[0, arities, 0], seed=seed, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    for layer_index, layer in enumerate(model.layers):
        for i in range(layer.n_in):
            for j in range(layer.n_sub):
                name = _FUNCTIONS[int(torch.randint(len(_FUNCTIONS), (1,), generator=generator))]
                model.fix_symbolic((layer_index, i, j), name, fit_params=False)
                params = (torch.rand(4, generator=generator, dtype=torch.float64) - 0.5).tolist()
                with torch.no_grad():
                    layer.symbolic_affine[i, j] = torch.tensor(params, dtype=torch.float64)
    assert _forward_vs_formula(model, seed=seed) < 1e-8


@pytest.mark.parametrize(
    "value, expected",
    [(0.9998, 1.0), (-2.003, -2.0), (0.4997, 0.5), (3.1410, math.pi), (1.5705, math.pi / 2), (0.37, None)],
)
def test_snap_value(value, expected):
    snapped = snap_value(value, tolerance=1e-2)
    if expected is None:
        assert snapped is None
    else:
        assert snapped == pytest.approx(expected, abs=1e-12)


def test_snap_constants_keeps_exact_parameters():
    data = create_dataset(lambda x: 2 * torch.sin(x[:, 0]), n_var=1, train_num=200, test_num=20, seed=0, dtype=torch.float64)
    model = MultKAN([1, 1], seed=0, dtype=torch.float64)
    model.fix_symbolic((0, 0, 0), "sin", fit_params=False)
    with torch.no_grad():
        model.layers[0].symbolic_affine[0, 0] = torch.tensor([1.004, 0.002, 1.997, 0.0], dtype=torch.float64)
    result = model.snap_constants(data)
    assert [where.split()[-1] for where, _, _ in result.kept] == ["a", "b", "c"]
    assert result.loss_after < 1e-10
    expression = model.symbolic_formula()[0]
    x = sympy.Symbol("x_1", real=True)
    assert sympy.simplify(expression - 2 * sympy.sin(x)).is_number


def test_pickle_after_symbolic_fix():
    import pickle

    model = MultKAN([2, 2, 1], seed=0)
    model.fix_symbolic((0, 0, 1), "sin", fit_params=False)
    model.fix_symbolic((1, 1, 0), "gaussian", fit_params=False)
    restored = pickle.loads(pickle.dumps(model))
    x = torch.rand(10, 2)
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))
    assert restored.layers[0].symbolic_names == {(0, 1): "sin"}
    assert model.layers[0].symbolic_functions


def test_auto_symbolic_parameters_finite_on_deep_model():
    data = create_dataset(
        lambda x: torch.sin(x[:, 0]) * x[:, 1] + x[:, 2] ** 2 - x[:, 3], n_var=4, train_num=300, test_num=50, seed=0
    )
    model = MultKAN([4, 4, 4, 1], grid=20, seed=0)
    model.fit(data, steps=5, lamb=0.01, progress=False)
    import warnings

    from multkan import MultKANWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MultKANWarning)
        pruned = model.prune()
    library = ["x", "x^2", "x^3", "exp", "log", "sqrt", "1/x", "sin", "tanh", "0"]
    report = pruned.auto_symbolic(library, warn_weak=False)
    assert report
    for record in report:
        assert all(math.isfinite(v) for v in record.params)
    expressions = pruned.symbolic_formula()
    assert len(expressions) == 1
    with torch.no_grad():
        assert torch.isfinite(pruned(data["train_input"])).all()


def _standard_function(x):
    return torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_standard_example_recovers_formula(seed):
    import warnings

    from multkan import MultKANWarning
    from multkan.symbolic.formula import simplify_constants, snap_formula_constants

    data = create_dataset(_standard_function, n_var=2, train_num=1000, test_num=1000, seed=0)
    model = MultKAN([2, 5, 1], grid=5, k=3, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MultKANWarning)
        for _ in range(3):
            model.fit(data, steps=50, lamb=0.01, progress=False)
            model = model.prune()
            if model.width[1] == 1:
                break
    assert model.width == [2, 1, 1]

    model = model.refine(10)
    model.fit(data, steps=50, progress=False)
    report = model.auto_symbolic(selection="simplest")
    assert sorted(r.name for r in report) == ["exp", "sin", "x^2"]
    model.fit(data, steps=20, update_grid=False, progress=False)
    model.snap_constants(data)

    x_1, x_2 = sympy.symbols("x_1 x_2", real=True)
    expression = snap_formula_constants(model.symbolic_formula()[0])
    expression = simplify_constants(expression, [x_1, x_2], data["train_input"], data["train_label"])
    truth = sympy.exp(sympy.sin(sympy.pi * x_1) + x_2**2)
    assert sympy.simplify(expression - truth) == 0


def test_simplify_constants_refits_and_snaps():
    x = torch.rand(200, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.5
    y = 3 * torch.exp(2 * x[:, 0])
    symbol = sympy.Symbol("x", real=True)
    noisy = sympy.Float(2.9993) * sympy.exp(sympy.Float(2.0004) * symbol) + sympy.Float(0.0012)
    from multkan.symbolic.formula import simplify_constants

    cleaned = simplify_constants(noisy, [symbol], x, y)
    assert sympy.simplify(cleaned - 3 * sympy.exp(2 * symbol)) == 0


def test_unfix_missing_edge_message():
    from multkan import SymbolicError, kanpile

    model = kanpile("x*sin(y) + exp(z**2)")
    with pytest.raises(SymbolicError, match=r"edge \(0, 0, 0\) is not in the graph \(pruned, or never created") as error:
        model.unfix_symbolic((0, 0, 0))
    # The message lists the edges that exist, and each of them can be unfixed.
    listed = str(error.value).split("Edges of layer 0: ")[1]
    edges = [tuple(int(v) for v in item.split(", ")) for item in listed.strip("()").split("), (")]
    assert edges
    assert (0, 0, 0) not in edges
    for edge in edges:
        model.unfix_symbolic(edge)
    with pytest.raises(SymbolicError, match="it cannot be made symbolic"):
        model.fix_symbolic((0, 0, 0), "sin", fit_params=False)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("selection", ["score", "simplest"])
def test_chain_of_sine_snaps_to_sine(seed, selection):
    data = create_dataset(lambda x: torch.sin(3 * x[:, 0]), n_var=1, seed=0)
    model = MultKAN([1, 1, 1], grid=5, seed=seed)
    model.fit(data, steps=50, progress=False)
    report = model.auto_symbolic(lib=["x", "x^2", "sin", "0"], selection=selection)
    names = [r.name for r in report]
    assert "0" not in names
    assert names == ["sin", "x"]
    assert report[0].r2 > 0.9999
    x_1 = sympy.Symbol("x_1", real=True)
    formula = model.symbolic_formula()[0]
    assert formula.has(sympy.sin)
    # The formula reproduces the network on the training inputs.
    values = torch.tensor([float(formula.subs(x_1, float(v))) for v in data["train_input"][:20, 0]], dtype=torch.float64)
    with torch.no_grad():
        network = model(data["train_input"][:20]).squeeze(-1)
    torch.testing.assert_close(values, network.double(), rtol=1e-4, atol=1e-5)


def test_chain_collapse_can_be_turned_off():
    data = create_dataset(lambda x: torch.sin(3 * x[:, 0]), n_var=1, seed=0)
    model = MultKAN([1, 1, 1], grid=5, seed=4)
    model.fit(data, steps=50, progress=False)
    with pytest.warns(SymbolicFitWarning, match=r"snapped with r2 below 0.99"):
        report = model.copy().auto_symbolic(lib=["x", "x^2", "sin", "0"], collapse_chains=False)
    assert len(report) == 2
    collapsed = model.copy().auto_symbolic(lib=["x", "x^2", "sin", "0"])
    assert [r.name for r in collapsed] == ["sin", "x"]


def test_chain_needs_one_edge_in_and_out():
    from multkan.symbolic.edges import _chains

    model = MultKAN([1, 2, 1], seed=0)
    assert [(tuple(a), tuple(b)) for a, b in _chains(model)] == [((0, 0, 0), (1, 0, 0)), ((0, 0, 1), (1, 1, 0))]
    assert _chains(MultKAN([2, 1, 1], seed=0)) == []
    assert _chains(MultKAN([1, 1, 2], seed=0)) == []
    assert _chains(MultKAN([1, [0, 2], 1], seed=0)) == []


def test_weak_snaps_are_named_in_a_warning():
    data = create_dataset(lambda x: torch.sin(3 * x[:, 0]), n_var=1, seed=0)
    model = MultKAN([1, 1], grid=5, seed=0)
    model.fit(data, steps=20, progress=False)
    with pytest.warns(SymbolicFitWarning, match=r"1 edges were snapped with r2 below 0.99, .*\[\(\(0, 0, 0\), 'x', 0\.\d+\)\]"):
        report = model.copy().auto_symbolic(lib=["x", "0"])
    assert report[0].r2 < 0.99
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.copy().auto_symbolic(lib=["x", "0"], warn_weak=False)
        model.copy().auto_symbolic(lib=["x", "sin"])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_mult_node_reads_back_the_product(seed):
    # Near-linear edges must not snap to slivers of tan and sin, which fit
    # the splines' small curvature better than x (see UNEXPLAINED_FLOOR).
    from multkan.symbolic.formula import simplify_constants, snap_formula_constants

    data = create_dataset(lambda x: x[:, [0]] * x[:, [1]], n_var=2, seed=seed)
    model = MultKAN(width=[2, [0, 1], 1], grid=5, k=3, seed=seed)
    model.fit(data, steps=50, update_grid=False, progress=False)
    with warnings.catch_warnings():
        # The two cross edges carry almost nothing, and no function fits them to r2 0.99.
        warnings.simplefilter("ignore", SymbolicFitWarning)
        report = model.auto_symbolic()
    # The edges into and out of the mult node: x wherever the spline is (nearly) straight.
    assert report[-1].name == "x"
    assert not {fit.name for fit in report} & {"tan", "sin", "arcsin", "arctan"}
    model.fit(data, steps=20, update_grid=False, progress=False)
    x_1, x_2 = sympy.symbols("x_1 x_2", real=True)
    formula = snap_formula_constants(model.symbolic_formula()[0])
    formula = simplify_constants(formula, [x_1, x_2], data["train_input"], data["train_label"])
    assert formula == x_1 * x_2


def test_simplify_constants_absorbed_factors():
    # c1 * (c2 * x) * (c3 * y) with c1 * c2 * c3 = 1: only the product is determined by the data.
    from multkan.symbolic.formula import simplify_constants

    x_1, x_2 = sympy.symbols("x_1 x_2", real=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(200, 2, generator=generator, dtype=torch.float64) * 2 - 1
    y = x[:, 0] * x[:, 1]
    redundant = sympy.Float(14.1270914) * (sympy.Float(0.2561903) * x_2) * (sympy.Float(0.2762384) * x_1)
    assert simplify_constants(redundant, [x_1, x_2], x, y) == x_1 * x_2


def test_readme_mult_example_formula():
    # The README's steps: snap_constants, then snap_formula_constants and simplify_constants.
    # sympy can merge a free constant with snapped ones into a float such as 1.00000000205749.
    from multkan.symbolic.formula import simplify_constants, snap_formula_constants

    data = create_dataset(lambda x: x[:, 0] * x[:, 1], n_var=2, seed=0)
    model = MultKAN(width=[2, [0, 1], 1], grid=5, k=3, seed=0)
    model.fit(data, opt="LBFGS", steps=50, update_grid=False, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SymbolicFitWarning)
        model.auto_symbolic()
    model.fit(data, steps=20, update_grid=False, progress=False)
    model.snap_constants(data)
    x_1, x_2 = sympy.symbols("x_1 x_2", real=True)
    formula = snap_formula_constants(model.symbolic_formula()[0])
    assert simplify_constants(formula, [x_1, x_2], data["train_input"], data["train_label"]) == x_1 * x_2


def test_snap_constants_warns_on_poor_fit():
    from multkan import SymbolicFitWarning

    data = create_dataset(lambda x: torch.exp(3 * x[:, 0]), n_var=1, train_num=200, test_num=20, seed=0, dtype=torch.float64)
    model = MultKAN([1, 1], seed=0, dtype=torch.float64)
    # sin cannot follow exp(3x): the fit is poor, and snapping its constants would dress it up.
    model.fix_symbolic((0, 0, 0), "sin", fit_params=False)
    with pytest.warns(SymbolicFitWarning, match=r"fits the training labels only to an RMSE of [\d.]+ times"):
        model.snap_constants(data)
    exact = MultKAN([1, 1], seed=0, dtype=torch.float64)
    exact.fix_symbolic((0, 0, 0), "exp", fit_params=False)
    with torch.no_grad():
        exact.layers[0].symbolic_affine[0, 0] = torch.tensor([3.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SymbolicFitWarning)
        exact.snap_constants(data)


def test_snap_prefers_simple_multiples_of_pi():
    from multkan.symbolic.formula import _snap_candidates, _snap_constant

    assert _snap_constant(2 * math.pi, 1e-3) == 2 * sympy.pi
    candidates = _snap_candidates(2 * math.pi, 1e-3)
    assert candidates[0] == 2 * sympy.pi
    assert sympy.Rational(44, 7) in candidates
    assert _snap_constant(math.pi, 1e-3) == sympy.pi
    assert _snap_constant(0.5, 1e-6) == sympy.Rational(1, 2)
    assert _snap_constant(9.80665, 1e-6) is None


def test_snap_formula_constants_keeps_small_constants_of_products():
    from multkan.symbolic.formula import snap_formula_constants

    M, m, R, x, y = sympy.symbols("M m R x y")
    assert snap_formula_constants(sympy.Float(6.674e-11) * M * m / R**2) == sympy.Float(6.674e-11) * M * m / R**2
    assert snap_formula_constants(sympy.Float(3.14159265) * x + sympy.Float(1e-9)) == sympy.pi * x
    assert snap_formula_constants(sympy.sin(sympy.Float(2.0) * x + sympy.Float(1e-12))) == sympy.sin(2 * x)
    small = sympy.Float(1e-9) * x + sympy.Float(2e-9) * y
    assert snap_formula_constants(small) == small


def test_strong_edge_takes_most_accurate_candidate():
    # J0(20 x) on [-1, 1]: no library function reaches r2 0.6. The edge must not become a constant or x
    # (r2 0 and 0.0002), but the gaussian, the most accurate candidate (r2 0.58).
    import scipy.special

    data = create_dataset(lambda x: torch.from_numpy(scipy.special.j0(20 * x[:, [0]].numpy())), n_var=1, seed=0)
    model = MultKAN(width=[1, 1], grid=50, seed=0)
    assert model.fit(data, steps=50, progress=False)["test_loss"][-1] < 1e-3
    with pytest.warns(SymbolicFitWarning, match=r"snapped with r2 below 0.99.*'gaussian'"):
        (record,) = model.auto_symbolic()
    assert record.name == "gaussian"
    assert record.r2 == pytest.approx(0.58, abs=0.02)
    rmse = model.fit(data, steps=20, progress=False)["test_loss"][-1]
    assert rmse < 0.7 * float(data["test_label"].std())


def test_weak_edge_still_snaps_to_zero_without_warning():
    # The second input has no effect: its edge is tiny and becomes the constant 0, which needs no weak-fit warning.
    data = create_dataset(lambda x: torch.sin(math.pi * x[:, [0]]), n_var=2, seed=0)
    model = MultKAN(width=[2, 1], grid=5, seed=0)
    model.fit(data, steps=30, lamb=0.01, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = model.auto_symbolic(lib=["sin", "x", "0"])
    names = {tuple(r.edge): r.name for r in report}
    assert names[(0, 0, 0)] == "sin"
    assert names[(0, 1, 0)] == "0"


def test_missing_data_messages_fit_each_call():
    model = MultKAN([2, 3, 1], seed=0)
    with pytest.raises(SymbolicError) as auto:
        model.auto_symbolic()
    assert "fit_params" not in str(auto.value)
    with pytest.raises(SymbolicError, match="or use fit_params=False"):
        model.fix_symbolic((0, 0, 0), "sin")


def test_simplify_constants_checks_symbol_count():
    from multkan.symbolic.formula import simplify_constants

    x_1 = sympy.Symbol("x_1")
    with pytest.raises(InvalidParameterError, match=r"invalid symbols: expected 2 symbols, one per column of x"):
        simplify_constants(sympy.Float(1.5) * x_1, [x_1], torch.rand(10, 2), torch.rand(10))


def test_formula_error_of_complex_infinity_is_not_finite():
    x = sympy.Symbol("x")
    check = formula_error(sympy.zoo * x + 1, [x], torch.rand(5, 1), torch.rand(5))
    assert not check.finite
    assert check.rmse == math.inf


def test_suggest_symbolic_lists_no_constant_for_strong_edge():
    import scipy.special

    data = create_dataset(lambda x: torch.from_numpy(scipy.special.j0(20 * x[:, [0]].numpy())), n_var=1, seed=0)
    model = MultKAN(width=[1, 1], grid=50, seed=0)
    model.fit(data, steps=50, progress=False)
    names = [s.name for s in model.suggest_symbolic((0, 0, 0), topk=30)]
    assert "0" not in names
    assert "gaussian" in names
