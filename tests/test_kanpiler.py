"""The kanpiler: sympy expressions compiled into networks that compute them."""

import pytest
import sympy
import torch

from multkan import InvalidParameterError
from multkan.kanpiler import kanpile


def _max_error(expression, symbols, low, high, n_points=100, seed=0):
    model = kanpile(expression, symbols, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    x = low + (high - low) * torch.rand(n_points, len(symbols), generator=generator, dtype=torch.float64)
    with torch.no_grad():
        prediction = model(x)[:, 0]
    function = sympy.lambdify(symbols, expression, modules="numpy")
    expected = torch.as_tensor(function(*[x[:, i].numpy() for i in range(len(symbols))]), dtype=torch.float64)
    return float((prediction - expected).abs().max()), model


def test_one_input_used_twice():
    a = sympy.Symbol("a", real=True)
    error, model = _max_error(sympy.sin(5 * a) + sympy.cos(3 * a), [a], -2.0, 0.0)
    assert error < 1e-5
    names = sorted(name for layer in model.layers for name in layer.symbolic_names.values())
    assert "sin" in names
    assert "cos" in names


@pytest.mark.parametrize(
    "text, low, high",
    [
        ("x*y", -1.0, 1.0),
        ("exp(sin(pi*x) + y**2)", -1.0, 1.0),
        ("x*y*z + 2*x - 3", -1.0, 1.0),
        ("sqrt(x)*exp(-y/2)/(1 + z**2)", 0.5, 2.0),
        ("q1*q2/(4*pi*r**2)", 1.0, 2.0),
        ("x*sin(y) + cos(x*y)", -1.0, 1.0),
        # A constant times one function or variable: one edge with the constant as its scale.
        ("pi*x", -1.0, 1.0),
        ("-x", -1.0, 1.0),
        ("-sin(x)", -1.0, 1.0),
        ("exp(-x**2/2)/sqrt(2*pi)", -2.0, 2.0),
        ("sin(-x) + cos(x)**6", -1.0, 1.0),
        # Integer powers beyond the library: products of two powers.
        ("x**7", -1.2, 1.2),
        ("x**12", -1.1, 1.1),
        ("y/x**7", 0.5, 2.0),
        ("-1/x**9", 0.8, 1.5),
        ("2*(x + y)**7", -0.6, 0.6),
    ],
)
def test_compiled_network_matches_expression(text, low, high):
    expression = sympy.sympify(text)
    symbols = sorted(expression.free_symbols, key=lambda s: s.name)
    error, model = _max_error(expression, symbols, low, high)
    assert error < 1e-9


def test_formula_round_trip():
    x, y = sympy.symbols("x y", real=True)
    expression = x * sympy.sin(y) + 3
    model = kanpile(expression, [x, y], dtype=torch.float64)
    formula = model.symbolic_formula(["x", "y"])[0]
    assert sympy.simplify(formula - expression) == 0


@pytest.mark.parametrize(
    "text, mult_nodes",
    [("-x", 0), ("-2*sin(3*x)", 0), ("x**7", 1), ("x**12", 2), ("-x*y**6", 2)],
)
def test_coefficients_and_large_powers_round_trip(text, mult_nodes):
    expression = sympy.sympify(text)
    symbols = sorted(expression.free_symbols, key=lambda s: s.name)
    model = kanpile(expression, symbols, dtype=torch.float64)
    formula = model.symbolic_formula([s.name for s in symbols])[0]
    formula = formula.subs({s: sympy.Symbol(s.name) for s in formula.free_symbols})
    assert sympy.simplify(sympy.nsimplify(formula) - expression) == 0
    assert sum(len(layer.operands) for layer in model.layers) == mult_nodes


def test_unsupported_function_raises():
    x = sympy.Symbol("x")
    with pytest.raises(InvalidParameterError, match="cannot compile"):
        kanpile(sympy.gamma(x), [x])
    with pytest.raises(InvalidParameterError, match="cannot compile x\\*\\*pi"):
        kanpile(x**sympy.pi, [x])


def test_missing_variable_raises():
    x, y = sympy.symbols("x y")
    with pytest.raises(InvalidParameterError, match="also uses"):
        kanpile(x + y, [x])


def _node_names(model):
    return [data["name"] for _, data in model.graph.nodes(data=True) if data["kind"] in ("input", "output")]


def test_output_name_avoids_an_input_name():
    names = _node_names
    assert names(kanpile("x*y")).count("y") == 1
    assert "f" in names(kanpile("x*y"))
    assert "y" in names(kanpile("a*b"))
    assert "g" in names(kanpile("x*y", output_name="g"))


@pytest.mark.parametrize("text", ["x*I", "[x, y]", "x + oo", "x +* y"])
def test_invalid_expressions_raise(text):
    with pytest.raises(InvalidParameterError, match="invalid expression"):
        kanpile(text)


@pytest.mark.parametrize(("text", "expected"), [("x**0.5", "sqrt(x)"), ("x**1.5", "x**(3/2)"), ("x**2.0", "x**2"), ("x**-1.0", "1/x")])
def test_float_exponents_compile(text, expected):
    model = kanpile(text)
    x = sympy.Symbol("x", real=True)
    formula = model.symbolic_formula([x])[0]
    assert sympy.simplify(formula - sympy.sympify(expected, locals={"x": x})) == 0


def test_float_exponent_beyond_fractions_rejected():
    with pytest.raises(InvalidParameterError):
        kanpile("x**0.37")


@pytest.mark.parametrize("order", ["symbols in the expression", "symbols as variables"])
def test_symbols_match_by_name(order):
    x, y = sympy.symbols("x y", real=True)
    expression, variables = ("x*sin(y)", [x, y]) if order == "symbols as variables" else (x * sympy.sin(y), ["x", "y"])
    model = kanpile(expression, variables)
    inputs = torch.tensor([[0.3, -1.2], [1.5, 0.4]], dtype=model.dtype)
    expected = inputs[:, 0] * torch.sin(inputs[:, 1])
    assert torch.allclose(model(inputs)[:, 0], expected, atol=1e-6)


def test_same_name_different_assumptions_is_one_input():
    x_positive, x_plain = sympy.Symbol("x", positive=True), sympy.Symbol("x")
    model = kanpile(x_positive + sympy.sin(x_plain))
    assert model.input_names == ["x"]
    inputs = torch.tensor([[0.5], [1.5]], dtype=model.dtype)
    assert torch.allclose(model(inputs)[:, 0], inputs[:, 0] + torch.sin(inputs[:, 0]), atol=1e-6)
