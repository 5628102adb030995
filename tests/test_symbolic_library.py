"""Tests of the symbolic function library: entries, domains, safe variants, registry and sympy import."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sympy
import torch

from multkan.errors import InvalidParameterError, SymbolicError
from multkan.symbolic import REALS, SAFE_EPS, Domain, SymbolicFunction, SymbolicLibrary, default_library

REQUIRED_NAMES = [
    "x", "x^2", "x^3", "x^4", "x^5", "1/x", "1/x^2", "1/x^3", "1/x^4", "1/x^5", "sqrt", "x^1.5",
    "1/sqrt(x)", "x^(1/3)", "exp", "log", "abs", "sin", "cos", "tan", "tanh", "sinh", "cosh", "sgn",
    "arcsin", "arccos", "arctan", "arctanh", "gaussian", "0",
]

# Tolerances of torch against the numpy lambdification of the sympy expression.
# float64: both sides are correctly rounded to a few ulp. float32: torch computes in
# float32 and the reference in float64 on the same (float32-rounded) inputs.
TOLERANCES = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def points_inside(domain: Domain, count: int = 50, shrink: float = 0.0) -> torch.Tensor:
    """Return ``count`` float64 points of ``domain`` within [-3, 3].

    Open ends move inward by 1% of the width, plus ``shrink`` for every end and
    around the excluded point.
    """
    low = max(domain.low, -3.0)
    high = min(domain.high, 3.0)
    width = high - low
    if domain.low_open and math.isfinite(domain.low):
        low += 0.01 * width
    if domain.high_open and math.isfinite(domain.high):
        high -= 0.01 * width
    low += shrink
    high -= shrink
    if domain.excluded is None:
        return torch.linspace(low, high, count, dtype=torch.float64)
    gap = 0.1 + shrink
    below = torch.linspace(low, domain.excluded - gap, count // 2, dtype=torch.float64)
    above = torch.linspace(domain.excluded + gap, high, count - count // 2, dtype=torch.float64)
    return torch.cat([below, above])


def numpy_reference(entry: SymbolicFunction, values: torch.Tensor) -> np.ndarray:
    symbol = sympy.Symbol("x", real=True)
    compiled = sympy.lambdify(symbol, entry.sympy_fn(symbol), modules="numpy")
    array = values.to(torch.float64).numpy()
    return np.broadcast_to(np.asarray(compiled(array), dtype=np.float64), array.shape)


def test_default_names_present():
    library = default_library()
    assert list(library) == REQUIRED_NAMES
    assert len(library) == len(REQUIRED_NAMES)


def test_default_aliases_resolve():
    library = default_library()
    assert library["sign"].name == "sgn"
    assert library["cbrt"].name == "x^(1/3)"
    assert library["x^0.5"].name == "sqrt"
    assert library["zero"].name == "0"
    assert "sign" in library
    assert "nonsense" not in library
    assert library.get("sign").name == "sgn"
    assert library.get("nonsense") is None


def test_default_complexities():
    complexities = default_library().complexities()
    assert complexities["0"] == 0
    assert complexities["x"] == 1
    assert complexities["x^2"] == 2
    assert complexities["sin"] == 2
    assert complexities["exp"] == 2
    assert complexities["tan"] == 3
    assert all(isinstance(value, int) and 0 <= value <= 5 for value in complexities.values())


@pytest.mark.parametrize("name", REQUIRED_NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torch_matches_sympy(name, dtype):
    entry = default_library()[name]
    values = points_inside(entry.domain).to(dtype)
    assert bool(entry.domain.contains(values).all())
    result = entry.torch_fn(values)
    assert result.dtype == dtype
    assert result.shape == values.shape
    expected = torch.from_numpy(np.array(numpy_reference(entry, values)))
    torch.testing.assert_close(result.to(torch.float64), expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("name", REQUIRED_NAMES)
def test_safe_matches_exact_inside(name):
    entry = default_library()[name]
    values = points_inside(entry.domain, shrink=10 * SAFE_EPS)
    torch.testing.assert_close(entry.safe_torch_fn(values), entry.torch_fn(values), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", REQUIRED_NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_safe_finite_everywhere(name, dtype):
    entry = default_library()[name]
    big = torch.finfo(dtype).max
    specials = [0.0, SAFE_EPS / 3, 1e-30, 1.0, math.pi / 2, 1 + 1e-7, 80.0, 1e3, 1e10, 1e30, big]
    values = torch.tensor(specials + [-value for value in specials], dtype=dtype, requires_grad=True)
    result = entry.safe_torch_fn(values)
    assert bool(torch.isfinite(result).all()), result
    if result.requires_grad:
        (gradient,) = torch.autograd.grad(result.sum(), values)
        assert bool(torch.isfinite(gradient).all()), gradient


def test_safe_reciprocal_keeps_sign():
    entry = default_library()["1/x"]
    result = entry.safe_torch_fn(torch.tensor([-1e-9, 0.0, 1e-9], dtype=torch.float64))
    assert result.tolist() == [-1 / SAFE_EPS, 1 / SAFE_EPS, 1 / SAFE_EPS]


def test_cube_root_real_for_negative():
    entry = default_library()["x^(1/3)"]
    result = entry.torch_fn(torch.tensor([-8.0, -1.0, 0.0, 27.0], dtype=torch.float64))
    torch.testing.assert_close(result, torch.tensor([-2.0, -1.0, 0.0, 3.0], dtype=torch.float64))


def test_domain_contains():
    log_domain = default_library()["log"].domain
    values = torch.tensor([-1.0, 0.0, 1e-300, 5.0], dtype=torch.float64)
    assert log_domain.contains(values).tolist() == [False, False, True, True]
    arcsin_domain = default_library()["arcsin"].domain
    assert arcsin_domain.contains(torch.tensor([-1.0, 1.0, 1.0001])).tolist() == [True, True, False]
    reciprocal_domain = default_library()["1/x"].domain
    assert reciprocal_domain.contains(torch.tensor([-2.0, 0.0, 2.0])).tolist() == [True, False, True]


def test_domain_contains_range():
    log_domain = Domain(0.0, math.inf)
    lower = torch.tensor([0.5, -0.1, 0.0, 1e-4, 0.01])
    upper = torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0])
    assert log_domain.contains_range(lower, upper).tolist() == [True, False, False, True, True]
    assert log_domain.contains_range(lower, upper, margin=1e-3).tolist() == [True, False, False, False, True]

    reciprocal_domain = Domain(excluded=0.0)
    lower = torch.tensor([-2.0, -1.0, 1.0, -2.0])
    upper = torch.tensor([-1.0, 1.0, 2.0, -1e-6])
    assert reciprocal_domain.contains_range(lower, upper, margin=1e-3).tolist() == [True, False, True, False]

    closed = Domain(-1.0, 1.0, False, False)
    assert closed.contains_range(torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.01])).tolist() == [True, False]


def test_domain_infinite_ends_open():
    domain = Domain(-math.inf, 0.0, low_open=False, high_open=False)
    assert domain.low_open
    assert not domain.high_open


@pytest.mark.parametrize(
    "low, high, excluded",
    [(1.0, 0.0, None), (0.0, 0.0, None), (math.nan, 1.0, None), (0.0, 1.0, 2.0), (0.0, 1.0, 0.0)],
)
def test_domain_rejects_bad_bounds(low, high, excluded):
    with pytest.raises(InvalidParameterError):
        Domain(low, high, excluded=excluded)


def test_domain_from_sympy_set():
    x = sympy.Symbol("x")
    assert Domain.from_sympy_set(sympy.S.Reals) == REALS
    assert Domain.from_sympy_set(sympy.Interval.open(0, sympy.oo)) == Domain(0.0, math.inf)
    assert Domain.from_sympy_set(sympy.Interval(-1, 1)) == Domain(-1.0, 1.0, False, False)
    union = sympy.Union(sympy.Interval.open(-sympy.oo, 1), sympy.Interval.open(1, sympy.oo))
    assert Domain.from_sympy_set(union) == Domain(excluded=1.0)
    complement = sympy.Complement(sympy.Interval(0, 5), sympy.FiniteSet(2))
    assert Domain.from_sympy_set(complement) == Domain(0.0, 5.0, False, False, 2.0)
    periodic = sympy.calculus.util.continuous_domain(sympy.tan(x), x, sympy.S.Reals)
    with pytest.raises(SymbolicError, match="domain="):
        Domain.from_sympy_set(periodic)


def test_domain_round_trip_sympy():
    for domain in (REALS, Domain(0.0, math.inf), Domain(-1.0, 1.0, False, False), Domain(excluded=0.0)):
        assert Domain.from_sympy_set(domain.to_sympy_set()) == domain


def test_unknown_name_lists_allowed():
    library = default_library()
    with pytest.raises(InvalidParameterError) as info:
        library["sinc"]
    message = str(info.value)
    assert "'sinc'" in message
    assert "'sin'" in message
    assert "'gaussian'" in message
    with pytest.raises(InvalidParameterError, match="'nope'"):
        library.subset(["sin", "nope"])


def test_subset_order_and_aliases():
    library = default_library().subset(["sin", "sign", "x", "sin"])
    assert list(library) == ["sin", "sgn", "x"]
    assert library["sign"].name == "sgn"
    assert "cbrt" not in library


def test_add_and_replace():
    library = default_library().subset(["x"])
    x = sympy.Symbol("x")
    entry = SymbolicFunction.from_sympy("sq", x**2, x)
    library.add(entry)
    assert list(library) == ["x", "sq"]
    with pytest.raises(InvalidParameterError, match="replace=True"):
        library.add(entry)
    replacement = SymbolicFunction.from_sympy("sq", x**2 + 1, x)
    library.add(replacement, replace=True)
    assert library["sq"] is replacement
    default = default_library()
    with pytest.raises(InvalidParameterError, match="alias"):
        default.add(SymbolicFunction.from_sympy("sign", x, x))
    assert "sq" not in default_library()


def test_library_from_entries():
    x = sympy.Symbol("x")
    library = SymbolicLibrary([SymbolicFunction.from_sympy("cube", x**3, x)], {"x3": "cube"})
    assert library["x3"].name == "cube"
    assert library.aliases == {"x3": "cube"}
    with pytest.raises(InvalidParameterError):
        library.add_alias("cube", "cube")


def test_entry_rejects_bad_fields():
    with pytest.raises(InvalidParameterError, match="complexity"):
        SymbolicFunction("f", torch.sin, sympy.sin, REALS, -1)
    with pytest.raises(InvalidParameterError, match="complexity"):
        SymbolicFunction("f", torch.sin, sympy.sin, REALS, True)
    with pytest.raises(InvalidParameterError, match="torch_fn"):
        SymbolicFunction("f", "sin", sympy.sin, REALS, 2)
    with pytest.raises(InvalidParameterError, match="domain"):
        SymbolicFunction("f", torch.sin, sympy.sin, (0, 1), 2)
    with pytest.raises(InvalidParameterError, match="name"):
        SymbolicFunction("", torch.sin, sympy.sin, REALS, 2)


def test_from_sympy_user_entry():
    x = sympy.Symbol("x")
    expr = x * sympy.exp(-x)
    entry = SymbolicFunction.from_sympy("xexp", expr, x)
    assert entry.domain == REALS
    assert entry.complexity == sympy.count_ops(expr) + 1
    assert entry.complexity >= 3

    values = torch.linspace(-2.0, 4.0, 50, dtype=torch.float64, requires_grad=True)
    result = entry.torch_fn(values)
    torch.testing.assert_close(result, values * torch.exp(-values))
    (gradient,) = torch.autograd.grad(result.sum(), values)
    torch.testing.assert_close(gradient, (1 - values.detach()) * torch.exp(-values.detach()))

    a, b = sympy.symbols("a b")
    assert entry.sympy_fn(a * x + b) == (a * x + b) * sympy.exp(-(a * x + b))
    assert torch.isfinite(entry.safe_torch_fn(torch.tensor([-1e3, 0.0, 1e3]))).all()


def test_from_sympy_string_expression():
    x = sympy.Symbol("x")
    entry = SymbolicFunction.from_sympy("xexp", "x*exp(-x)", x)
    torch.testing.assert_close(entry.torch_fn(torch.tensor([1.0])), torch.tensor([math.exp(-1.0)]))


def test_from_sympy_derives_domains():
    x = sympy.Symbol("x")
    assert SymbolicFunction.from_sympy("f", sympy.log(x - 1), x).domain == Domain(1.0, math.inf)
    assert SymbolicFunction.from_sympy("f", 1 / (x - 2), x).domain == Domain(excluded=2.0)
    assert SymbolicFunction.from_sympy("f", sympy.sqrt(1 - x**2), x).domain == Domain(-1.0, 1.0, False, False)


def test_from_sympy_constant():
    x = sympy.Symbol("x")
    entry = SymbolicFunction.from_sympy("three", sympy.Integer(3), x)
    assert entry.complexity == 0
    assert entry.is_constant
    assert entry.torch_fn(torch.zeros(2, 3)).tolist() == [[3.0] * 3] * 2


def test_from_sympy_numpy_fallback():
    x = sympy.Symbol("x")
    entry = SymbolicFunction.from_sympy("sec", sympy.sec(x), x, domain=Domain(-1.5, 1.5))
    values = torch.linspace(-1.4, 1.4, 30, dtype=torch.float64, requires_grad=True)
    result = entry.torch_fn(values)
    torch.testing.assert_close(result, 1 / torch.cos(values))
    (gradient,) = torch.autograd.grad(result.sum(), values)
    detached = values.detach()
    torch.testing.assert_close(gradient, torch.tan(detached) / torch.cos(detached))


def test_from_sympy_nan_in_derived_domain():
    x = sympy.Symbol("x")
    # sympy reads x**(1/3) as the principal complex root, whose continuous domain is
    # all reals, but torch returns NaN for negative x.
    with pytest.raises(SymbolicError, match="domain=Domain"):
        SymbolicFunction.from_sympy("root", x ** sympy.Rational(1, 3), x)
    entry = SymbolicFunction.from_sympy("root", x ** sympy.Rational(1, 3), x, domain=Domain(0.0, math.inf, False))
    assert entry.domain.low == 0.0


def test_from_sympy_underivable_domain():
    x = sympy.Symbol("x")
    with pytest.raises(SymbolicError, match="domain="):
        SymbolicFunction.from_sympy("s", sympy.sign(x), x)
    with pytest.raises(SymbolicError, match="domain="):
        SymbolicFunction.from_sympy("t", sympy.tan(x), x)


def test_from_sympy_rejects_extra_symbols():
    x, y = sympy.symbols("x y")
    with pytest.raises(InvalidParameterError, match="y"):
        SymbolicFunction.from_sympy("f", x * y, x)
    with pytest.raises(InvalidParameterError, match="symbol"):
        SymbolicFunction.from_sympy("f", x, "x")


def test_parity_and_kind():
    library = default_library()
    assert library["x^2"].parity == 1
    assert library["sin"].parity == -1
    assert library["x^(1/3)"].parity == -1
    assert library["tan"].parity == -1
    assert library["exp"].parity == 0
    assert library["arccos"].parity == 0
    assert library["sqrt"].parity == 0
    assert library["x"].is_identity
    assert not library["x^2"].is_identity
    assert library["0"].is_constant
    assert not library["sin"].is_constant
