"""Tests of the vectorised affine fit ``y ~ c * f(a * x + b) + d`` and of candidate ranking."""

from __future__ import annotations

import math
import warnings

import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from multkan.errors import InvalidDataError, InvalidParameterError, SymbolicFitWarning
from multkan.symbolic import (
    REALS,
    AffineFit,
    SymbolicFunction,
    default_library,
    fit_affine,
    rank_candidates,
)


def spread(y: torch.Tensor) -> torch.Tensor:
    """Return max|y - mean(y)| per row, the unit of the coefficient bound."""
    return (y - y.mean(dim=-1, keepdim=True)).abs().amax(dim=-1)


def column(fit: AffineFit, name: str) -> int:
    return fit.names.index(name)


# name, (a, b, c, d), x range: data c * f(a * x + b) + d that the fit must recover.
RECOVERY_CASES = [
    ("sin", (2.5, 0.3, 1.5, -0.2), (-1.0, 1.0)),
    ("exp", (1.3, -0.4, 0.7, 0.1), (-1.0, 1.0)),
    ("x^2", (1.7, 0.5, -0.8, 0.3), (-1.0, 1.0)),
    ("1/x", (1.5, 0.2, 0.9, 0.0), (0.5, 2.0)),
    ("tanh", (3.0, -1.0, 2.0, 0.5), (-1.0, 1.0)),
    ("log", (2.0, 3.0, 1.0, -1.0), (-1.0, 1.0)),
    ("gaussian", (2.0, -0.5, 1.2, 0.4), (-1.0, 1.0)),
    ("sqrt", (1.5, 2.0, -0.7, 0.2), (-1.0, 1.0)),
    ("arctan", (4.0, 1.0, 0.5, -0.3), (-1.0, 1.0)),
    ("cos", (-3.3, 0.7, 1.0, 1.0), (-2.0, 2.0)),
    ("x^3", (0.8, -0.2, 2.0, 0.0), (-3.0, 3.0)),
]


@pytest.mark.parametrize("name, params, x_range", RECOVERY_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_recovery_single(name, params, x_range, dtype):
    a, b, c, d = params
    x = torch.linspace(*x_range, 400, dtype=torch.float64)
    y = c * default_library()[name].torch_fn(a * x + b) + d
    fit = fit_affine(x[None].to(dtype), y[None].to(dtype), [name, "x", "0"])
    k = column(fit, name)
    assert fit.params.dtype == dtype
    assert bool(fit.valid[0, k])
    assert fit.r2[0, k].item() > 0.999
    prediction = fit.predict(x[None].to(dtype))[0, k].to(torch.float64)
    tolerance = 1e-6 if dtype == torch.float64 else 1e-3
    assert (prediction - y).abs().max().item() <= tolerance * spread(y).item()


def test_recovery_full_library():
    cases = RECOVERY_CASES[:6]
    x = torch.stack([torch.linspace(*x_range, 1000, dtype=torch.float64) for _, _, x_range in cases])
    library = default_library()
    y = torch.stack(
        [c * library[name].torch_fn(a * x[row] + b) + d for row, (name, (a, b, c, d), _) in enumerate(cases)]
    )
    fit = fit_affine(x, y, library)
    prediction = fit.predict(x)
    for row, (name, _, _) in enumerate(cases):
        k = column(fit, name)
        assert fit.r2[row, k].item() > 0.999, name
        assert (prediction[row, k] - y[row]).abs().max().item() <= 1e-6 * spread(y[row]).item(), name
    ranking = rank_candidates(fit)
    assert ranking.best_names == [name for name, _, _ in cases]


def test_sin_chosen_over_polynomials():
    x = torch.linspace(-1.0, 1.0, 200)[None]
    y = torch.sin(3 * x)
    fit = fit_affine(x, y, ["x", "x^2", "sin", "0"])
    assert fit.r2[0, column(fit, "sin")].item() > 0.99
    for weight in (0.0, 0.5, 0.8, 0.99, 1 - 1e-9):
        ranking = rank_candidates(fit, weight_simple=weight)
        assert ranking.best_names == ["sin"], weight


def test_domain_respected():
    x = torch.linspace(-1.0, 1.0, 300, dtype=torch.float64)
    noise = torch.randn(300, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    targets = [torch.sqrt(x + 1.2), torch.log(2 * x + 3), torch.sin(3 * x), noise]
    fit = fit_affine(x.expand(4, -1), torch.stack(targets), ["x", "sqrt", "log"])
    a, b = fit.params[..., 0], fit.params[..., 1]
    lowest = torch.minimum(a * x.min() + b, a * x.max() + b)
    for name, inside in (("sqrt", lowest[:, 1] >= 0), ("log", lowest[:, 2] > 0)):
        k = column(fit, name)
        assert bool(fit.valid[:, k].all()), name
        assert bool(inside.all()), (name, lowest)
    assert bool(torch.isfinite(fit.predict(x.expand(4, -1))).all())
    assert fit.r2[0, column(fit, "sqrt")].item() > 0.999
    assert fit.r2[1, column(fit, "log")].item() > 0.999


def test_pole_kept_outside_data():
    # The samples skip x = 0.3, so f(a * x + b) stays finite even with the pole of
    # 1/x or tan between two samples. Only the domain check keeps the pole outside.
    x = torch.linspace(-1.0, 1.0, 200, dtype=torch.float64)
    x = x[(x - 0.3).abs() > 0.004][None]
    y = 1 / (x - 0.3)
    fit = fit_affine(x, y, ["1/x", "tan", "1/x^3"])
    a, b = fit.params[0, :, 0], fit.params[0, :, 1]
    ends = torch.stack([a * x.min() + b, a * x.max() + b])
    reciprocal, tangent, cubic = (column(fit, name) for name in ("1/x", "tan", "1/x^3"))
    for k in (reciprocal, cubic):
        assert bool(fit.valid[0, k])
        assert bool((ends[:, k] > 0).all() or (ends[:, k] < 0).all()), ends[:, k]
    assert bool(fit.valid[0, tangent])
    assert bool((ends[:, tangent].abs() < math.pi / 2).all()), ends[:, tangent]
    assert fit.r2[0, reciprocal].item() < 0.9


def test_domain_unreachable_is_invalid():
    x = torch.linspace(-1.0, 1.0, 100)[None]
    # a * x + b with a >= 0.5 and |b| <= 0.4 always reaches below 0 on [-1, 1].
    fit = fit_affine(x, x + 1, ["x", "sqrt", "log"], a_range=(0.5, 2.0), b_range=(-0.4, 0.4))
    for name in ("sqrt", "log"):
        k = column(fit, name)
        assert not bool(fit.valid[0, k])
        assert fit.r2[0, k].item() == -math.inf
        assert bool(torch.isnan(fit.predict(x)[0, k]).all())
    assert bool(fit.valid[0, column(fit, "x")])
    assert bool(torch.isfinite(fit.params).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e30, 1e-30, 1.0])
def test_noisy_huge_values_finite(dtype, scale):
    generator = torch.Generator().manual_seed(7)
    x = torch.randn(3, 300, generator=generator).to(dtype)
    y = (torch.randn(3, 300, generator=generator) * scale).to(dtype)
    fit = fit_affine(x, y)
    assert bool(torch.isfinite(fit.params).all())
    assert not bool(torch.isnan(fit.r2).any())
    assert bool(torch.isfinite(fit.r2[fit.valid]).all())
    assert bool((fit.r2[~fit.valid] == -math.inf).all())
    assert bool(fit.valid[:, column(fit, "0")].all())
    assert bool(fit.valid[:, column(fit, "x")].all())


@settings(max_examples=25, deadline=None)
@given(
    data=st.lists(
        st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=40, max_size=40
    ),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_random_data_gives_finite_fit(data, dtype):
    values = torch.tensor(data, dtype=dtype).reshape(2, 2, 10)
    x, y = values[0], values[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SymbolicFitWarning)
        fit = fit_affine(x, y, ["x", "exp", "log", "1/x", "sin", "0"])
    assert bool(torch.isfinite(fit.params).all())
    assert not bool(torch.isnan(fit.r2).any())
    assert bool(((fit.r2 >= 0) & (fit.r2 <= 1))[fit.valid].all())
    assert bool(fit.valid[:, column(fit, "0")].all())


def test_huge_inputs_finite():
    x = torch.linspace(-1e15, 1e15, 200)[None]
    fit = fit_affine(x, (x / 1e15) ** 2)
    assert bool(torch.isfinite(fit.params).all())
    assert not bool(torch.isnan(fit.r2).any())
    assert fit.r2[0, column(fit, "x^2")].item() > 0.999


def test_nonfinite_candidate_rejected():
    # The function is inf for positive arguments, although its declared domain is
    # all reals, so only (a, b) with a * x + b <= 0 on [0, 1] may be used.
    blowup = SymbolicFunction(
        "blowup",
        lambda u: torch.where(u > 0, torch.inf, u),
        lambda u: sympy.Piecewise((u, u <= 0), (sympy.oo, True)),
        REALS,
        1,
        lambda u: u.clamp(max=0.0),
    )
    x = torch.linspace(0.0, 1.0, 50, dtype=torch.float64)[None]
    y = 2 * x + 1
    fit = fit_affine(x, y, [blowup, "0"])
    a, b = fit.params[0, 0, 0], fit.params[0, 0, 1]
    assert bool(fit.valid[0, 0])
    assert max(b.item(), (a + b).item()) <= 0
    assert fit.r2[0, 0].item() > 0.999
    assert bool(torch.isfinite(fit.predict(x)[0, 0]).all())

    with pytest.warns(SymbolicFitWarning, match="edges \\[0\\]"):
        unreachable = fit_affine(x, y, [blowup], a_range=(0.5, 2.0), b_range=(0.1, 1.0))
    assert not bool(unreachable.valid[0, 0])
    assert unreachable.r2[0, 0].item() == -math.inf
    assert bool(torch.isfinite(unreachable.params).all())


def test_exp_overflow_rejected():
    x = torch.linspace(0.0, 100.0, 300, dtype=torch.float64)[None]
    y = torch.exp(0.05 * x)
    fit = fit_affine(x, y, ["exp", "cosh", "sinh", "x^5"])
    assert bool(torch.isfinite(fit.params).all())
    assert bool(torch.isfinite(fit.predict(x)[fit.valid]).all())
    k = column(fit, "exp")
    assert fit.r2[0, k].item() > 0.999
    assert (fit.params[0, k, 0] * 100 + fit.params[0, k, 1]).item() < 709


@pytest.mark.parametrize("bound", [5.0, 1e6])
def test_coefficient_bound_enforced(bound):
    generator = torch.Generator().manual_seed(11)
    x = torch.linspace(0.0, 1.0, 200, dtype=torch.float64)[None]
    y = x + 0.01 * torch.randn(1, 200, generator=generator, dtype=torch.float64)
    names = ["exp", "log", "cosh", "gaussian", "tanh", "1/x"]
    fit = fit_affine(x, y, names, max_scaled_coefficient=bound)
    library = default_library()
    unit = spread(y)[0].item()
    for k, name in enumerate(fit.names):
        if not bool(fit.valid[0, k]):
            continue
        a, b, c, _ = fit.params[0, k].tolist()
        values = library[name].torch_fn(a * x + b)
        assert abs(c) <= bound * unit * (1 + 1e-9), name
        assert abs(c) * values.abs().max().item() <= bound * unit * (1 + 1e-9), name


@pytest.mark.parametrize("level", [3.5, 0.0, -1e20])
def test_constant_y(level):
    x = torch.rand(2, 100, generator=torch.Generator().manual_seed(5))
    y = torch.full((2, 100), level)
    fit = fit_affine(x, y)
    zero = column(fit, "0")
    assert fit.r2[:, zero].tolist() == [1.0, 1.0]
    assert bool(torch.isfinite(fit.params).all())
    assert not bool(torch.isnan(fit.r2).any())
    valid_params = fit.params[fit.valid]
    assert bool((valid_params[:, 2] == 0).all())
    torch.testing.assert_close(valid_params[:, 3], torch.full_like(valid_params[:, 3], level))
    others = fit.r2[:, [k for k in range(len(fit.names)) if k != zero]]
    assert bool((others[others.isfinite()] == 0).all())
    assert rank_candidates(fit).best_names == ["0", "0"]


def test_constant_x():
    x = torch.full((1, 50), 2.0)
    y = torch.linspace(0.0, 1.0, 50)[None]
    fit = fit_affine(x, y, ["x", "sin", "exp", "0"])
    assert bool(torch.isfinite(fit.params).all())
    assert not bool(torch.isnan(fit.r2).any())
    assert bool((fit.r2[fit.valid] == 0).all())


def test_batch_matches_single():
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(5, 300, generator=generator, dtype=torch.float64) * 2 - 1
    noise = torch.randn(300, generator=generator, dtype=torch.float64)
    y = torch.stack([torch.sin(3 * x[0]), torch.exp(x[1]), x[2] ** 2 + 0.1 * noise, 1 / (x[3] + 2), noise])
    names = ["x", "x^2", "sin", "exp", "1/x", "log", "tanh", "0"]
    together = fit_affine(x, y, names)
    together_prediction = together.predict(x)
    for row in range(5):
        alone = fit_affine(x[row : row + 1], y[row : row + 1], names)
        assert torch.equal(alone.valid[0], together.valid[row])
        torch.testing.assert_close(alone.r2[0], together.r2[row], rtol=0, atol=1e-9)
        valid = alone.valid[0]
        torch.testing.assert_close(
            alone.predict(x[row : row + 1])[0][valid], together_prediction[row][valid], rtol=1e-6, atol=1e-6
        )


def test_user_entry_ranks_first():
    symbol = sympy.Symbol("x")
    library = default_library()
    library.add(SymbolicFunction.from_sympy("x*exp(-x)", symbol * sympy.exp(-symbol), symbol))
    x = torch.linspace(0.0, 3.0, 500, dtype=torch.float64)[None]
    u = 1.5 * x + 0.5
    y = 2 * u * torch.exp(-u) + 0.3
    fit = fit_affine(x, y, library)
    assert fit.r2[0, column(fit, "x*exp(-x)")].item() > 0.9999
    assert rank_candidates(fit).best_names == ["x*exp(-x)"]


def test_identity_is_linear_regression():
    x = torch.linspace(-2.0, 3.0, 100, dtype=torch.float64)[None]
    fit = fit_affine(x, 4 * x - 1, ["x"])
    torch.testing.assert_close(fit.params[0, 0], torch.tensor([1.0, 0.0, 4.0, -1.0], dtype=torch.float64))
    assert fit.r2[0, 0].item() == pytest.approx(1.0, abs=1e-12)


def test_zero_function_fit():
    x = torch.linspace(-1.0, 1.0, 100)[None]
    y = torch.sin(x) + 2
    fit = fit_affine(x, y, ["0"])
    assert fit.r2[0, 0].item() == 0.0
    assert fit.params[0, 0, 2].item() == 0.0
    assert fit.params[0, 0, 3].item() == pytest.approx(y.mean().item(), rel=1e-6)


def test_parameters_within_ranges():
    x = torch.linspace(-1.0, 1.0, 200)[None]
    y = torch.sin(7 * x + 3)
    fit = fit_affine(x, y, ["sin", "exp", "tanh"], a_range=(-2.0, 2.0), b_range=(-1.0, 1.0))
    assert bool((fit.params[..., 0].abs() <= 2.0).all())
    assert bool((fit.params[..., 1].abs() <= 1.0).all())


def test_float32_output_dtype():
    x = torch.linspace(-1.0, 1.0, 100)[None]
    fit = fit_affine(x, torch.exp(x), ["exp", "x"])
    assert fit.params.dtype == torch.float32
    assert fit.r2.dtype == torch.float32
    assert fit.valid.dtype == torch.bool
    assert fit.names == ("exp", "x")


def test_invalid_inputs_raise():
    x = torch.zeros(2, 10)
    with pytest.raises(InvalidDataError, match="shape"):
        fit_affine(x, torch.zeros(2, 11))
    with pytest.raises(InvalidDataError, match="x\\[None\\]"):
        fit_affine(torch.zeros(10), torch.zeros(10))
    with pytest.raises(InvalidDataError, match="NaN"):
        fit_affine(x, torch.full((2, 10), math.nan))
    with pytest.raises(InvalidDataError, match="at least one"):
        fit_affine(torch.zeros(0, 10), torch.zeros(0, 10))
    with pytest.raises(InvalidParameterError, match="a_range"):
        fit_affine(x, x, ["sin"], a_range=(1.0, -1.0))
    with pytest.raises(InvalidParameterError, match="grid_number"):
        fit_affine(x, x, ["sin"], grid_number=1)
    with pytest.raises(InvalidParameterError, match="'sinc'"):
        fit_affine(x, x, ["sinc"])
    with pytest.raises(InvalidParameterError, match="library"):
        fit_affine(x, x, [])


def make_fit(r2_rows: list[list[float]], names: tuple[str, ...]) -> AffineFit:
    library = default_library()
    r2 = torch.tensor(r2_rows, dtype=torch.float64)
    params = torch.zeros(*r2.shape, 4, dtype=torch.float64)
    return AffineFit(tuple(library[name] for name in names), params, r2, torch.isfinite(r2))


@settings(max_examples=200, deadline=None)
@given(
    weight=st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.just(1 - 1e-15)),
    good_r2=st.floats(0.99, 1.0, exclude_min=True),
    other_r2=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
    good_complexity=st.integers(0, 1000),
    scale=st.floats(0.01, 100.0),
)
def test_zero_never_beats_good_fit(weight, good_r2, other_r2, good_complexity, scale):
    names = ("sin", "x^2", "exp", "0")
    fit = make_fit([[good_r2, min(other_r2[0], good_r2), min(other_r2[1], good_r2), 0.0]], names)
    complexity = [good_complexity, 2, 2, 0]
    ranking = rank_candidates(fit, complexity, weight_simple=weight, complexity_scale=scale)
    assert ranking.best_names[0] != "0"
    assert ranking.score[0, 0].item() < ranking.score[0, 3].item()


def test_rank_score_formula():
    fit = make_fit([[0.999, 0.9]], ("sin", "x"))
    ranking = rank_candidates(fit, {"sin": 2, "x": 1}, weight_simple=0.5, complexity_scale=3.0)
    floor = 1e-4
    bound = math.log10((1 + floor) / (0.01 + floor))
    expected_sin = math.log10(1 - 0.999 + floor) + 0.5 * bound * 2 / (2 + 3)
    expected_x = math.log10(1 - 0.9 + floor) + 0.5 * bound * 1 / (1 + 3)
    assert ranking.score[0, 0].item() == pytest.approx(expected_sin)
    assert ranking.score[0, 1].item() == pytest.approx(expected_x)
    assert ranking.order[0].tolist() == [0, 1]


def test_rank_prefers_simple_on_ties():
    fit = make_fit([[1.0, 1.0, 1.0]], ("cosh", "x^2", "gaussian"))
    assert rank_candidates(fit).best_names == ["x^2"]
    assert rank_candidates(fit, weight_simple=0.0).order[0].tolist() == [1, 0, 2]


def test_rank_threshold_and_invalid():
    fit = make_fit([[0.5, -math.inf, 0.95], [0.2, 0.3, 0.1]], ("sin", "log", "x"))
    ranking = rank_candidates(fit, r2_threshold=0.4)
    assert ranking.best_names == ["x", None]
    assert ranking.best.tolist() == [2, -1]
    assert ranking.score[0, 1].item() == math.inf
    assert bool(torch.isinf(ranking.score[1]).all())


def test_rank_accepts_library_and_sequence():
    fit = make_fit([[0.9, 0.8]], ("sin", "x"))
    library = default_library()
    by_library = rank_candidates(fit, library)
    by_sequence = rank_candidates(fit, [2, 1])
    by_default = rank_candidates(fit)
    assert torch.equal(by_library.score, by_sequence.score)
    assert torch.equal(by_library.score, by_default.score)


def test_rank_invalid_arguments():
    fit = make_fit([[0.9, 0.8]], ("sin", "x"))
    with pytest.raises(InvalidParameterError, match="weight_simple"):
        rank_candidates(fit, weight_simple=1.0)
    with pytest.raises(InvalidParameterError, match="complexity"):
        rank_candidates(fit, [1, 2, 3])
    with pytest.raises(InvalidParameterError, match="complexity"):
        rank_candidates(fit, {"sin": 2})
    with pytest.raises(InvalidParameterError, match="complexity"):
        rank_candidates(fit, [1, -2])


def test_no_warning_on_normal_fit():
    x = torch.linspace(-1.0, 1.0, 50)[None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_affine(x, torch.sin(x), ["sin", "0"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parabola_beats_cancelling_sine(dtype):
    # A sine far out on its slope, -c * sin(small * x + 3 pi / 2) + c, matches a parabola
    # to rounding. sin is listed first, so a tie would pick it.
    x = torch.linspace(-1, 1, 1000, dtype=dtype)[None]
    y = 0.3 * x**2 + 0.1
    fit = fit_affine(x, y, ["sin", "cos", "x^2", "cosh", "gaussian"])
    assert fit.names[int(rank_candidates(fit).best[0])] == "x^2"
    # max|c * f| is the largest value of 0.3 x^2.
    assert float(fit.cancellation[0, 2]) == pytest.approx(0.3 / float(spread(y)[0]), rel=1e-4)
    assert float(fit.cancellation[0, 0]) > 1e3
    assert fit.cancels()[0].tolist() == [True, True, False, True, True]


def test_cancellation_of_ordinary_fits():
    x = torch.linspace(-2, 2, 400, dtype=torch.float64)[None]
    fit = fit_affine(x, torch.sin(2 * x) + 0.05 * torch.cos(7 * x), ["sin", "x", "0"])
    assert 0.5 < float(fit.cancellation[0, 0]) < 2.0
    assert float(fit.cancellation[0, 2]) == 0.0
    assert not bool(fit.cancels().any())


def test_cancelling_fit_keeps_a_clearly_better_score():
    # Only a candidate that cancels fits this edge well, and the ranking must not fall back to 0.
    x = torch.linspace(-1, 1, 500, dtype=torch.float64)[None]
    fit = fit_affine(x, 0.3 * x**2, ["sin", "x", "0"])
    assert fit.cancels()[0].tolist() == [True, False, False]
    assert float(fit.r2[0, 0]) > 0.999
    ranking = rank_candidates(fit)
    assert fit.names[int(ranking.best[0])] == "sin"


def test_simplest_choice_against_the_score():
    from multkan.symbolic.edges import _simplest_choices

    fit = make_fit(
        [
            # x leaves 8 times the unexplained variance: the score takes arcsin, "simplest" x.
            [1 - 1e-4, 1 - 8e-4],
            # A sliver that fits the spline's wiggles (1 - r2 6e-8) against x (1.4e-5): both take x.
            [1 - 6e-8, 1 - 1.4e-5],
            # x leaves 1e-3 against an exact fit: both keep arcsin.
            [1 - 1e-12, 1 - 1e-3],
        ],
        ("arcsin", "x"),
    )
    ranking = rank_candidates(fit)
    assert ranking.best_names == ["arcsin", "x", "arcsin"]
    choices = _simplest_choices(fit, 0.0, 10.0, ranking.best)
    assert [fit.names[c] for c in choices] == ["x", "x", "arcsin"]
