"""Structure searches that fit closed forms without training a network.

Many physical laws are a power law times a function of one dimensionless
group, ``y = C * prod_i x_i^a_i * g(prod_j x_j^b_j)`` (for example
``m / sqrt(1 - v^2/c^2)``), or a product of one-dimensional factors,
``y = C * prod_i g_i(x_i)`` (for example ``r * F * sin(theta)``). Both
structures are found here with linear least squares on Chebyshev bases,
and each one-dimensional factor is then turned into a formula by
:func:`fit_univariate`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import sympy
import torch

from .symbolic.formula import _parameterise, formula_error, simplify_constants, snap_formula_constants, snap_value

__all__ = ["factored_sum", "fit_univariate", "power_law_group", "separable_product"]

# One-dimensional library for the outer function f in c * f(a * G(u) + b) + d.
UNIVARIATE_LIBRARY = (
    "x", "x^2", "x^3", "1/x", "1/x^2", "sqrt", "1/sqrt(x)", "exp", "log", "sin", "cos", "tanh", "arcsin", "arccos", "gaussian",
)
# Outer functions f for the inner functions exp(k u), sin(k u) and cosh(k u), and the grid
# of scales k that a least-squares refit then adjusts.
_SCALED_INNER_LIBRARY = ("x", "1/x", "x^2", "1/x^2", "sqrt", "1/sqrt(x)", "log")
_INNER_SCALES = (0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 8.0)
# The linear least-squares fits of powers are cheap enough for a grid of k 7% apart.
_FINE_INNER_SCALES = tuple(float(v) for v in np.geomspace(0.05, 10.0, 80))
_SCREEN_ROWS = 600
_SEARCH_ROWS = 256
_CHEBYSHEV_DEGREE = 14


@dataclass(frozen=True)
class _Inner:
    """An inner function G of the normalised argument u, with its sympy form and cost."""

    name: str
    numeric: object
    symbolic: object
    complexity: int


def _inner_functions(u: np.ndarray, scales: Sequence[float] = _INNER_SCALES) -> list[_Inner]:
    positive = bool((u > 0).all())
    nonzero = bool((u != 0).all())
    inner = [_Inner("u", lambda v: v, lambda s: s, 0), _Inner("u^2", lambda v: v**2, lambda s: s**2, 1)]
    if positive:
        inner.append(_Inner("sqrt(u)", np.sqrt, sympy.sqrt, 1))
        inner.append(_Inner("log(u)", np.log, sympy.log, 2))
    if nonzero:
        inner.append(_Inner("1/u", lambda v: 1 / v, lambda s: 1 / s, 1))
    for k in scales:
        constant = sympy.Float(k)
        inner.append(_Inner(f"exp({k}u)", lambda v, k=k: np.exp(k * v), lambda s, c=constant: sympy.exp(c * s), 2))
        inner.append(_Inner(f"sin({k}u)", lambda v, k=k: np.sin(k * v), lambda s, c=constant: sympy.sin(c * s), 2))
        inner.append(_Inner(f"expm1({k}u)", lambda v, k=k: np.expm1(k * v), lambda s, c=constant: sympy.exp(c * s) - 1, 2))
        inner.append(_Inner(f"cosh({k}u)", lambda v, k=k: np.cosh(k * v), lambda s, c=constant: sympy.cosh(c * s), 2))
    return inner


def fit_univariate(
    z: np.ndarray, y: np.ndarray, symbol: sympy.Symbol, *, noise: float = 0.0, max_refits: int = 40, max_candidates: int = 4, deadline: float | None = None
) -> tuple[sympy.Expr, float] | None:
    """Fit a closed form ``y = g(z)`` of one variable and return it with its RMSE.

    The search covers ``u^p * (c * f(a * G(u) + b) + d)`` with ``u = z /
    median|z|`` and a power ``p`` in {0, +-1, +-2} (+-1/2 when ``z > 0``). The
    inner ``G`` is the identity, square, square root, log or reciprocal,
    with ``f`` from :data:`UNIVARIATE_LIBRARY`, or ``exp``, ``exp - 1``,
    ``sin`` or ``cosh`` of ``k u`` on a grid of ``k``, with ``f`` from the
    powers and ``log``. :func:`multkan.symbolic.fit_affine` scores all
    combinations, and a linear fit of ``(y / u^p)^(1/n)`` scores the powers
    ``f = x^n`` on a finer grid of ``k``. For each inner family, power and
    outer function, the best-scoring candidate (``max_refits`` of them, plus
    the simplest within the noise) gets every constant, ``k`` included,
    refitted by Levenberg-Marquardt. The lowest-RMSE and the simplest
    near-best ones are then snapped
    (:func:`multkan.symbolic.simplify_constants`), and the simplest result
    whose RMSE is within twice the best, or within ``noise`` (an RMSE that
    ``y`` itself may be off by), is returned. Returns None when ``z`` is
    constant or nothing is valid. With ``deadline`` (a
    ``time.perf_counter()`` value) it raises :class:`SearchTimeout` between
    refits once the deadline has passed.
    """
    z = np.asarray(z, dtype=float).reshape(-1)
    y = np.asarray(y, dtype=float).reshape(-1)
    largest = float(np.abs(z).max())
    if not largest > 0 or float(z.max() - z.min()) <= 1e-12 * largest:
        return None
    powers = [0, 1, -1, 2, -2] if bool((z != 0).all()) else [0, 1, 2]
    if bool((z > 0).all()):
        powers += [0.5, -0.5]
    scale = float(np.median(np.abs(z))) or largest
    u_symbol = symbol / sympy.Float(scale)
    floor = max(1e-9 * max(float(np.abs(y).max()), 1e-300), noise)

    # The search runs on a subsample spread evenly over the sorted z; only the final snapping
    # and the returned RMSE use every sample.
    order = np.argsort(z, kind="stable")
    sample = order[np.linspace(0, len(z) - 1, min(len(z), _SEARCH_ROWS)).astype(int)]
    z_search, y_search = z[sample], y[sample]
    u = z_search / scale
    inner = _inner_functions(u)
    fine = _inner_functions(u, _FINE_INNER_SCALES)
    scaled_powers = [p for p in powers if abs(p) <= 1]
    stages = [
        lambda: _score_rows(u, y_search, [g for g in inner if g.complexity < 2], powers, UNIVARIATE_LIBRARY, u_symbol)
        + _score_power_rows(u, y_search, [g for g in fine if g.complexity < 2], powers, u_symbol),
        lambda: _score_rows(u, y_search, [g for g in inner if g.complexity >= 2], scaled_powers, _SCALED_INNER_LIBRARY, u_symbol)
        + _score_power_rows(u, y_search, [g for g in fine if g.complexity >= 2], scaled_powers, u_symbol),
    ]
    # The scaled inner functions cost most, so they are searched only when the simpler
    # families leave an error above the noise.
    scored, refitted, result = [], {}, None
    for stage in stages:
        _check_deadline(deadline)
        scored += stage()
        if not scored:
            continue
        result = _choose_univariate(scored, refitted, symbol, (z_search, y_search), (z, y), noise, floor, max_refits, max_candidates, deadline)
        if result is not None and result[1] <= floor + 1e-9 * float(np.sqrt(np.mean(y**2))):
            break
    return result


def _choose_univariate(scored, refitted: dict, symbol, search, full, noise, floor, max_refits, max_candidates, deadline=None):
    """Refit the shortlist of ``scored`` on ``search`` data, snap the best on ``full`` data and pick one.

    ``refitted`` caches refits by candidate across calls.
    """
    z_search, y_search = search
    z, y = full
    # One candidate per inner family, outer function and power: the best-scoring ones and the
    # simplest ones whose score is within the noise. Each gets a least-squares refit of all its
    # constants (including k) before the ranking, because the grid's scores are approximate.
    by_fit = sorted(scored, key=lambda entry: entry[0])
    family_best = {}
    for entry in by_fit:
        family_best.setdefault((entry[2].name.split("(")[0], entry[3], entry[4].name, entry[6]), entry)
    families = list(family_best.values())
    tolerance = max(2.0 * families[0][0], noise / max(float(np.sqrt(np.mean(y**2))), 1e-300))
    simplest = sorted((entry for entry in families if entry[0] <= tolerance), key=lambda entry: (entry[1], entry[0]))
    shortlist = list({id(entry): entry for entry in families[:max_refits] + simplest[: max_refits // 2]}.values())
    for entry in shortlist:
        if id(entry) in refitted:
            continue
        _check_deadline(deadline)
        _, _, inner_function, power, function, params, u_symbol = entry
        prefactor = u_symbol ** sympy.nsimplify(power) if power != 0 else sympy.Integer(1)
        refitted[id(entry)] = []
        for outer in _outer_expressions(function, *params, inner_function.symbolic(u_symbol)):
            expression, rmse = _refit_constants(prefactor * outer, symbol, z_search, y_search)
            if math.isfinite(rmse):
                refitted[id(entry)].append((rmse, _complexity(expression), expression))
    candidates = [r for results in refitted.values() for r in results]
    if not candidates:
        return None
    best_rmse = min(r[0] for r in candidates)
    picks = sorted(candidates, key=lambda r: r[0])[:3]
    picks += sorted((r for r in candidates if r[0] <= 2.0 * best_rmse + floor), key=lambda r: (r[1], r[0]))[:max_candidates]

    x_column = torch.tensor(z[:, None])
    target = torch.tensor(y)
    results = []
    for _, _, expression in {id(r): r for r in picks}.values():
        _check_deadline(deadline)
        expression = simplify_constants(expression, [symbol], x_column, target)
        check = formula_error(expression, [symbol], x_column, target)
        if check.finite:
            results.append((check.rmse, _complexity(expression), expression))
    if not results:
        return None
    best_rmse = min(r[0] for r in results)
    rmse, _, expression = min((r for r in results if r[0] <= 2.0 * best_rmse + floor), key=lambda r: (r[1], r[0]))
    return expression, rmse


def _refit_constants(expression: sympy.Expr, symbol: sympy.Symbol, z: np.ndarray, y: np.ndarray) -> tuple[sympy.Expr, float]:
    """Refit every float of ``expression`` by Levenberg-Marquardt; return the refitted expression and its RMSE."""
    template, thetas, values = _parameterise(expression)
    if not thetas:
        check = formula_error(expression, [symbol], torch.tensor(z[:, None]), torch.tensor(y))
        return expression, check.rmse if check.finite else math.inf
    from scipy.optimize import least_squares

    function = sympy.lambdify([symbol, *thetas], template, modules="numpy")
    # An exact Jacobian saves the len(thetas) extra evaluations per step of finite differences.
    derivatives = sympy.lambdify([symbol, *thetas], [sympy.diff(template, theta) for theta in thetas], modules="numpy")

    def residual(parameters):
        with np.errstate(all="ignore"):
            result = np.broadcast_to(np.asarray(function(z, *parameters), dtype=float), y.shape) - y
        return np.where(np.isfinite(result), result, 1e6)

    def jacobian(parameters):
        with np.errstate(all="ignore"):
            columns = [np.broadcast_to(np.asarray(column, dtype=float), y.shape) for column in derivatives(z, *parameters)]
        matrix = np.stack(columns, axis=1)
        return np.where(np.isfinite(matrix), matrix, 0.0)

    start = np.array(values, dtype=float)
    try:
        # Trial parameters far from the solution can overflow inside scipy's own products.
        with np.errstate(all="ignore"):
            solution = least_squares(residual, start, jac=jacobian, method="lm", max_nfev=50 * (len(thetas) + 1)).x
    except (ValueError, np.linalg.LinAlgError):
        solution = start
    if not np.isfinite(solution).all():
        return expression, math.inf
    rmse = float(np.sqrt(np.mean(residual(solution) ** 2)))
    return template.xreplace({theta: sympy.Float(float(v)) for theta, v in zip(thetas, solution)}), rmse


def _power_cost(power: float) -> int:
    """Complexity of the factor ``u^p``: 0 for ``p = 0``, 1 for ``p = +-1``, 2 otherwise."""
    if power == 0:
        return 0
    return 1 if abs(power) == 1 else 2


def _build_rows(u, y, inner_functions, powers) -> tuple[list[tuple], np.ndarray, np.ndarray]:
    """Tabulate ``G(u)`` (scaled to a median magnitude of 1) and ``y / u^p`` for every inner G and power p."""
    rows, xs, ys = [], [], []
    with np.errstate(all="ignore"):
        for inner_function in inner_functions:
            values = inner_function.numeric(u)
            if not np.isfinite(values).all() or float(values.max() - values.min()) <= 1e-9 * max(1.0, float(np.abs(values).max())):
                continue
            for power in powers:
                target = y / u**power
                if np.isfinite(target).all():
                    # Inner values of typical magnitude 1 keep the affine coefficient a within the
                    # search range and well above the grid's resolution.
                    rows.append((inner_function, power, float(np.median(np.abs(values))) or float(np.abs(values).max())))
                    xs.append(values / rows[-1][2])
                    ys.append(target)
    return rows, np.array(xs), np.array(ys)


def _score_rows(u, y, inner_functions, powers, library, u_symbol) -> list[tuple]:
    """Score ``u^p * (c * f(a * G(u) + b) + d)`` for every inner G, power p and f in ``library``.

    Returns ``(error, complexity, G, p, f, (a, b, c, d, typical), u_symbol)`` for every
    valid combination, where ``error`` is the RMSE against ``y`` itself (not against
    ``y / u^p``, whose scale depends on ``p``) divided by the RMS of ``y``.
    """
    from .symbolic import fit_affine

    rows, xs, ys = _build_rows(u, y, inner_functions, powers)
    if not rows:
        return []
    inputs = torch.tensor(xs)
    fit = fit_affine(inputs, torch.tensor(ys), list(library))
    with torch.no_grad():
        prefactors = torch.tensor(np.array([u**power for _, power, _ in rows]))
        predictions = fit.predict(inputs) * prefactors[:, None, :]
        errors = (predictions - torch.tensor(y)).pow(2).mean(dim=-1).sqrt().numpy() / max(float(np.sqrt(np.mean(y**2))), 1e-300)
    scored = []
    for row, (inner_function, power, inner_scale) in enumerate(rows):
        power_cost = _power_cost(power)
        for column, function in enumerate(fit.functions):
            if bool(fit.valid[row, column]) and math.isfinite(errors[row, column]):
                a, b, c, d = (float(v) for v in fit.params[row, column])
                params = (a / inner_scale, b, c, d, inner_scale)
                complexity = inner_function.complexity + power_cost + function.complexity
                scored.append((float(errors[row, column]), complexity, inner_function, power, function, params, u_symbol))
    return scored


def _score_power_rows(u, y, inner_functions, powers, u_symbol) -> list[tuple]:
    """Score ``u^p * (a * G(u) + b)^n`` for the powers ``n`` by linear least squares.

    For a one-signed target ``t = y / u^p``, ``t^(1/n)`` is affine in ``G``,
    so ``a`` and ``b`` follow from a linear fit. This finds poles at the edge
    of the data, such as ``1 / (exp(k u) - 1)`` near ``u = 0``, that the
    grid search of :func:`multkan.symbolic.fit_affine` excludes with its
    domain margin. Entries have the layout of :func:`_score_rows`.
    """
    from .symbolic import default_library

    rows, xs, ys = _build_rows(u, y, inner_functions, powers)
    library = default_library()
    scale = max(float(np.sqrt(np.mean(y**2))), 1e-300)
    scored = []
    for row, (inner_function, power, inner_scale) in enumerate(rows):
        target = ys[row]
        if bool((target > 0).all()):
            sign = 1.0
        elif bool((target < 0).all()):
            sign = -1.0
        else:
            continue
        design = np.column_stack([xs[row], np.ones(len(target))])
        for name, n in _POWER_EXPONENTS.items():
            with np.errstate(all="ignore"):
                transformed = (sign * target) ** (1.0 / float(n))
                if not np.isfinite(transformed).all():
                    continue
                # Relative residuals: the target can span decades, and its small values matter as much.
                weight = 1.0 / np.maximum(np.abs(transformed), 1e-300)
                weighted = design * weight[:, None]
                if not np.isfinite(weighted).all():
                    # Inner values of 1e125 times weights of tiny targets overflow, and
                    # LAPACK prints errors on a non-finite matrix before it raises.
                    continue
                (a, b), *_ = np.linalg.lstsq(weighted, transformed * weight, rcond=None)
                base = a * xs[row] + b
                prediction = sign * np.abs(base) ** float(n) * u**power
                error = float(np.sqrt(np.mean((prediction - y) ** 2))) / scale
            if math.isfinite(error) and (float(n).is_integer() or bool((base > 0).all())):
                function = library[name]
                complexity = inner_function.complexity + _power_cost(power) + function.complexity
                scored.append((error, complexity, inner_function, power, function, (a / inner_scale, b, sign, 0.0, inner_scale), u_symbol))
    return scored


# Outer functions that are powers, as their exponent n in (a * G + b)^n.
_POWER_EXPONENTS = {"x^2": 2, "x^3": 3, "1/x": -1, "1/x^2": -2, "sqrt": sympy.Rational(1, 2), "1/sqrt(x)": sympy.Rational(-1, 2)}


def _outer_expressions(function, a: float, b: float, c: float, d: float, typical: float, argument: sympy.Expr) -> list[sympy.Expr]:
    """Build ``c * f(a * argument + b) + d`` with no redundant constant, in one or two forms.

    For powers, ``c * (a G + b)^n`` becomes ``c |b|^n * ((a/|b|) G + sign(b))^n``
    and, when ``|b|`` is below ``|a|`` times ``typical`` (a typical magnitude
    of ``G``), also ``c |a|^n * (sign(a) G + b/|a|)^n``: a refit that drives
    ``b`` to 0 can only reach it in the second form. For ``exp`` the offset
    moves into ``c``, for ``log`` into ``d``, and ``x`` gives ``(c a) G + (c b + d)``. The constant that
    drops out would otherwise trade off against the others, and no single
    constant could then be snapped to a simple value.
    """
    name = function.name
    if name in _POWER_EXPONENTS:
        n = _POWER_EXPONENTS[name]
        forms = []
        if b != 0:
            sign = 1 if b > 0 else -1
            forms.append(sympy.Float(c * abs(b) ** float(n)) * (sympy.Float(a / abs(b)) * argument + sign) ** n + sympy.Float(d))
        if a != 0 and abs(b) < abs(a) * typical:
            sign = 1 if a > 0 else -1
            forms.append(sympy.Float(c * abs(a) ** float(n)) * (sign * argument + sympy.Float(b / abs(a))) ** n + sympy.Float(d))
        if forms:
            return forms
    if name == "x":
        return [sympy.Float(c * a) * argument + sympy.Float(c * b + d)]
    if name == "exp":
        return [sympy.Float(c * math.exp(b)) * sympy.exp(sympy.Float(a) * argument) + sympy.Float(d)]
    if name == "log" and b != 0:
        sign = 1 if b > 0 else -1
        return [sympy.Float(c) * sympy.log(sympy.Float(a / abs(b)) * argument + sign) + sympy.Float(d + c * math.log(abs(b)))]
    return [sympy.Float(c) * function.sympy_fn(sympy.Float(a) * argument + sympy.Float(b)) + sympy.Float(d)]


def _complexity(expression: sympy.Expr) -> int:
    """Count the operations (``sympy.count_ops``) plus the distinct symbols of ``expression``."""
    return int(sympy.count_ops(expression)) + len(expression.free_symbols)


def _chebyshev_basis(values: np.ndarray, degree: int = _CHEBYSHEV_DEGREE) -> np.ndarray | None:
    low, high = float(values.min()), float(values.max())
    if not high - low > 1e-12 * max(1.0, abs(low), abs(high)):
        return None
    return np.polynomial.chebyshev.chebvander(2.0 * (values - low) / (high - low) - 1.0, degree)


class SearchTimeout(Exception):
    """Raised inside a structure search when its deadline has passed."""


def _check_deadline(deadline: float | None) -> None:
    """Raise SearchTimeout when ``deadline`` (a ``time.perf_counter()`` value) has passed."""
    if deadline is not None and time.perf_counter() >= deadline:
        raise SearchTimeout


def _groups(n_var: int, max_total: int = 6000, max_size: int | None = None, squared_size: int = 3) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Yield ``(indices, exponents)`` of monomial groups, smallest first.

    Groups of up to ``squared_size`` variables take exponents in {+-1, +-2},
    larger groups in {+-1}. Exponent vectors are primitive (gcd 1) and start with
    a positive exponent, because ``g(z)`` and ``g(z^-1)`` or ``g(z^2)``
    describe the same family.
    """
    count = 0
    for size in range(2, min(n_var, max_size or n_var) + 1):
        choices = (1, -1, 2, -2) if size <= squared_size else (1, -1)
        for indices in itertools.combinations(range(n_var), size):
            for exponents in itertools.product(choices, repeat=size):
                if exponents[0] < 0 or math.gcd(*exponents) != 1:
                    continue
                yield indices, exponents
                count += 1
                if count >= max_total:
                    return


def power_law_group(x: torch.Tensor, y: torch.Tensor, symbols: Sequence[sympy.Symbol], *, deadline: float | None = None) -> sympy.Expr | None:
    """Fit ``y = prod_i x_i^a_i * g(z)`` with ``z`` a monomial group of the inputs.

    Needs positive inputs and a one-signed target. Every candidate group
    ``z = prod_j x_j^b_j`` is scored by the least-squares fit of ``log|y|``
    on ``log x_i`` (all inputs except the group's first variable, whose
    power is then part of ``g``) plus a Chebyshev basis in ``log z``. The
    best group's exponents ``a_i`` are snapped to multiples of 1/2 or 1/3,
    ``g`` is fitted by :func:`fit_univariate`, and the constants of the
    whole formula are refitted and snapped. Returns None when the inputs
    or target do not qualify, when a plain power law already fits (a
    simpler method finds it) or when no group fits.
    With ``deadline`` (a ``time.perf_counter()`` value) it raises
    :class:`SearchTimeout` once the deadline has passed.
    """
    x = np.asarray(torch.as_tensor(x, dtype=torch.float64))
    y = np.asarray(torch.as_tensor(y, dtype=torch.float64)).reshape(-1)
    n_var = x.shape[1]
    if n_var < 2 or not bool((x > 0).all()) or not (bool((y > 0).all()) or bool((y < 0).all())):
        return None
    rows = np.linspace(0, len(y) - 1, min(len(y), _SCREEN_ROWS)).astype(int)
    logs = np.log(x[rows])
    target = np.log(np.abs(y[rows]))
    spread = float(target.std()) or 1.0

    plain = np.column_stack([logs, np.ones(len(rows))])
    if _relative_residual(plain, target, spread) < 1e-6:
        return None
    scored = []
    for indices, exponents in _groups(n_var):
        _check_deadline(deadline)
        log_group = logs[:, list(indices)] @ np.array(exponents, dtype=float)
        basis = _chebyshev_basis(log_group)
        if basis is None:
            continue
        others = [i for i in range(n_var) if i != indices[0]]
        residual = _relative_residual(np.column_stack([logs[:, others], basis]), target, spread)
        scored.append((residual, len(indices), sum(abs(e) for e in exponents), indices, exponents))
    if not scored:
        return None
    best = min(s[0] for s in scored)
    if not best < 1e-3:
        return None
    # Among groups that fit about as well, the one with fewer variables and smaller exponents.
    _, _, _, indices, exponents = min((s for s in scored if s[0] <= 3.0 * best + 1e-9), key=lambda s: (s[1], s[2], s[0]))
    return _formula_with_group(x, y, symbols, indices, exponents, deadline)


def _relative_residual(design: np.ndarray, target: np.ndarray, spread: float) -> float:
    solution, *_ = np.linalg.lstsq(design, target, rcond=None)
    return float(np.sqrt(np.mean((design @ solution - target) ** 2))) / spread


def _formula_with_group(x, y, symbols, indices, exponents, deadline=None) -> sympy.Expr | None:
    n_var = x.shape[1]
    logs = np.log(x)
    log_group = logs[:, list(indices)] @ np.array(exponents, dtype=float)
    others = [i for i in range(n_var) if i != indices[0]]
    design = np.column_stack([logs[:, others], _chebyshev_basis(log_group)])
    solution, *_ = np.linalg.lstsq(design, np.log(np.abs(y)), rcond=None)

    powers = {}
    for position, i in enumerate(others):
        value = float(solution[position])
        snapped = snap_value(value, tolerance=2e-2, max_denominator=3)
        if snapped is None:
            return None
        powers[i] = sympy.nsimplify(snapped)
    prefactor_values = np.exp(sum(float(p) * logs[:, i] for i, p in powers.items())) if powers else np.ones(len(y))
    group_symbol = sympy.Symbol("_z", positive=True)
    fitted = fit_univariate(np.exp(log_group), y / prefactor_values, group_symbol, deadline=deadline)
    if fitted is None:
        return None
    group = sympy.Mul(*(symbols[i] ** e for i, e in zip(indices, exponents)))
    prefactor = sympy.Mul(*(symbols[i] ** p for i, p in powers.items()))
    return _refit_and_snap(prefactor * fitted[0].xreplace({group_symbol: group}), symbols, x, y)


def separable_product(
    x: torch.Tensor, y: torch.Tensor, symbols: Sequence[sympy.Symbol], *, sweeps: int = 40, deadline: float | None = None
) -> sympy.Expr | None:
    """Fit ``y = prod_k g_k(t_k)`` by alternating least squares, then name each factor.

    The features ``t_k`` are first the inputs themselves. When that product
    does not fit, every monomial group ``z`` of two or three inputs (as in
    :func:`power_law_group`) replaces its first input, so
    ``U * (1 - cos(k * d))`` or ``n * T * log(V2 / V1)`` are found too.
    Each factor is a Chebyshev series of degree 14 in its feature, and each
    sweep refits one factor at a time with the others fixed, a linear
    least-squares problem. Unlike a fit of ``log|y|``, this works when ``y``
    changes sign or touches 0, as in ``r * F * sin(theta)``. When the
    relative RMSE of the product is below ``1e-4``, every non-constant
    factor goes to :func:`fit_univariate` and the constants of the product
    are refitted and snapped. Returns None otherwise. With ``deadline`` (a
    ``time.perf_counter()`` value) it raises :class:`SearchTimeout` once the
    deadline has passed.
    """
    x = np.asarray(torch.as_tensor(x, dtype=torch.float64))
    y = np.asarray(torch.as_tensor(y, dtype=torch.float64)).reshape(-1)
    n_var = x.shape[1]
    if n_var < 2 or not float(np.sqrt(np.mean(y**2))) > 0:
        return None
    features = [(x[:, i], symbols[i]) for i in range(n_var)]
    fitted = _alternating_product([values for values, _ in features], y, sweeps)
    if fitted is None and bool((x != 0).all()):
        fitted, features = _product_with_group(x, y, symbols, sweeps, deadline)
    if fitted is None:
        return None

    amplitude, factors = fitted
    expression = sympy.Float(amplitude)
    for (values, feature), factor in zip(features, factors):
        if factor is None or float(factor.std()) <= 1e-6 * float(np.abs(factor).max()):
            continue
        placeholder = sympy.Symbol("_t", real=True)
        # The factors are known to the product's relative RMSE of at most 1e-4.
        named = fit_univariate(values, factor, placeholder, noise=1e-4 * float(np.sqrt(np.mean(factor**2))), deadline=deadline)
        if named is None:
            return None
        expression = expression * named[0].xreplace({placeholder: feature})
    return _refit_and_snap(_normalise_scale(expression), symbols, x, y)


def _refit_and_snap(expression: sympy.Expr, symbols, x: np.ndarray, y: np.ndarray) -> sympy.Expr:
    """Refit and snap the constants on all rows, then snap floats that are within 1e-4 of a simple value."""
    return snap_formula_constants(simplify_constants(expression, list(symbols), torch.tensor(x), torch.tensor(y)))


def _normalise_scale(expression: sympy.Expr) -> sympy.Expr:
    """Move the scale of every sum in a product into the product's one numeric coefficient.

    In ``c * (a + b*x) * (d*y + e)`` only ``c*a*d`` and the ratios ``b/a``
    and ``e/d`` are determined by data. Each sum is divided by the float
    coefficient of its largest term, so the refit in
    :func:`multkan.symbolic.simplify_constants` has no free direction and
    each constant can be snapped on its own.
    """
    coefficient, factors = expression.as_coeff_mul()
    normalised = []
    for factor in factors:
        if factor.is_Add:
            scales = [term.as_coeff_Mul()[0] for term in factor.args]
            floats = [value for value in scales if isinstance(value, sympy.Float) and value != 0]
            if floats:
                divisor = max(floats, key=lambda value: abs(float(value)))
                coefficient = coefficient * divisor
                factor = sympy.Add(*(term / divisor for term in factor.args))
        normalised.append(factor)
    return coefficient * sympy.Mul(*normalised)


def _alternating_product(features: list[np.ndarray], y: np.ndarray, sweeps: int, tolerance: float = 1e-4) -> tuple[float, list] | None:
    """Fit ``y = A * prod_k g_k(features[k])`` and return ``(A, [g_k values or None])``.

    Factors are normalised to an RMS of 1, and a constant feature gets None.
    Returns None unless the relative RMSE is below ``tolerance``.
    """
    scale = float(np.sqrt(np.mean(y**2)))
    bases = [_chebyshev_basis(values, 14) for values in features]
    active = [k for k, basis in enumerate(bases) if basis is not None]
    if not active:
        return None
    factors = {k: np.ones(len(y)) for k in active}
    error = math.inf
    for _ in range(sweeps):
        for k in active:
            others = np.prod([factors[j] for j in active if j != k], axis=0) if len(active) > 1 else np.ones(len(y))
            coefficients, *_ = np.linalg.lstsq(bases[k] * others[:, None], y, rcond=None)
            values = bases[k] @ coefficients
            norm = float(np.sqrt(np.mean(values**2)))
            if not norm > 0:
                return None
            factors[k] = values / norm
        product = np.prod([factors[k] for k in active], axis=0)
        amplitude = float(product @ y) / float(product @ product)
        error = float(np.sqrt(np.mean((amplitude * product - y) ** 2))) / scale
        if error < 1e-2 * tolerance:
            break
    if not error < tolerance:
        return None
    return amplitude, [factors.get(k) for k in range(len(features))]


def _product_with_group(x, y, symbols, sweeps, deadline=None) -> tuple[tuple[float, list] | None, list]:
    """Try every group of two or three inputs as one feature of the product; keep the best fit."""
    n_var = x.shape[1]
    rows = np.linspace(0, len(y) - 1, min(len(y), _SCREEN_ROWS)).astype(int)
    best = None
    for indices, exponents in _groups(n_var, max_total=800, max_size=3, squared_size=2):
        _check_deadline(deadline)
        group = np.prod([x[rows, i] ** e for i, e in zip(indices, exponents)], axis=0)
        screen = [x[rows, i] for i in range(n_var) if i != indices[0]] + [group]
        result = _alternating_product(screen, y[rows], 15, tolerance=1e-3)
        if result is None:
            continue
        product = np.prod([f for f in result[1] if f is not None], axis=0)
        error = float(np.sqrt(np.mean((result[0] * product - y[rows]) ** 2)))
        if best is None or error < best[0]:
            best = (error, indices, exponents)
    if best is None:
        return None, []
    _, indices, exponents = best
    group = np.prod([x[:, i] ** e for i, e in zip(indices, exponents)], axis=0)
    monomial = sympy.Mul(*(symbols[i] ** e for i, e in zip(indices, exponents)))
    features = [(x[:, i], symbols[i]) for i in range(n_var) if i != indices[0]] + [(group, monomial)]
    return _alternating_product([values for values, _ in features], y, sweeps), features


def factored_sum(
    x: torch.Tensor,
    y: torch.Tensor,
    symbols: Sequence[sympy.Symbol],
    *,
    sweeps: int = 300,
    max_partitions: int = 800,
    deadline: float | None = None,
) -> sympy.Expr | None:
    """Fit ``y = prod_{i in S} g_i(x_i) * (sum_{j in R} h_j(x_j) + C + prod_{k in Q} q_k(x_k))``.

    This covers a power law or product times a sum, such as ``q * (E + B *
    v * sin(theta))``, ``m * (u^2 + v^2 + w^2) / 2`` or ``n * (1 + p * E *
    cos(theta) / (k * T))``. The inputs are assigned to the prefactor
    ``S``, the additive terms ``R`` and the inner product ``Q`` in every way,
    up to ``max_partitions`` assignments with the fewest prefactor and
    product inputs first. Each assignment is scored on a subsample by 15
    sweeps of alternating least squares, where each block is linear in its
    Chebyshev coefficients. The three best
    get ``sweeps`` sweeps on all rows, and the first with a relative RMSE
    below ``1e-4`` has every non-constant function
    named by :func:`fit_univariate`, and the constants of the formula are
    refitted and snapped. Returns None when no assignment fits.
    With ``deadline`` (a ``time.perf_counter()`` value) it raises
    :class:`SearchTimeout` once the deadline has passed.
    """
    x = np.asarray(torch.as_tensor(x, dtype=torch.float64))
    y = np.asarray(torch.as_tensor(y, dtype=torch.float64)).reshape(-1)
    n_var = x.shape[1]
    if n_var < 2 or not float(np.sqrt(np.mean(y**2))) > 0:
        return None
    # Alternating least squares converges slowly when a constant can move between the sum and
    # the inner product, so a short run ranks the assignments and only the best get long runs.
    rows = np.linspace(0, len(y) - 1, min(len(y), _SCREEN_ROWS)).astype(int)
    screened = []
    for partition in _partitions(n_var, max_partitions):
        _check_deadline(deadline)
        fitted = _fit_factored_sum(x[rows], y[rows], partition, 15, tolerance=math.inf)
        if fitted is not None:
            screened.append((fitted[0], partition))
    fitted = None
    for _, partition in sorted(screened, key=lambda entry: entry[0])[:3]:
        _check_deadline(deadline)
        fitted = _fit_factored_sum(x, y, partition, sweeps, tolerance=1e-4)
        if fitted is not None:
            break
    if fitted is None:
        return None

    _, prefactor, additive, constant, product = fitted
    placeholder = sympy.Symbol("_t", real=True)

    def name(index: int, values: np.ndarray) -> sympy.Expr | None:
        if float(values.std()) <= 1e-6 * max(float(np.abs(values).max()), 1e-300):
            return sympy.Float(float(values.mean()))
        named = fit_univariate(x[:, index], values, placeholder, noise=1e-4 * max(float(np.sqrt(np.mean(values**2))), 1e-300), deadline=deadline)
        return None if named is None else named[0].xreplace({placeholder: symbols[index]})

    terms = [name(i, values) for i, values in prefactor.items()]
    inner_terms = [name(j, values) for j, values in additive.items()]
    product_terms = [name(k, values) for k, values in product.items()]
    if any(term is None for term in terms + inner_terms + product_terms):
        return None
    inner = sympy.Add(*inner_terms, sympy.Float(constant))
    if product_terms:
        inner = inner + sympy.Mul(*product_terms)
    return _refit_and_snap(_normalise_scale(sympy.Mul(*terms) * inner), symbols, x, y)


def _partitions(n_var: int, limit: int) -> list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """Assignments ``(S, R, Q)`` of the inputs, fewest prefactor and product inputs first.

    ``Q`` is empty or has at least two inputs (one input would be an
    additive term), and a partition with an empty ``R`` and ``Q`` is a plain
    product, which :func:`separable_product` covers. Assignments of equal
    ``|S| + |Q|`` come in the lexicographic order of their labels (0 for
    ``S``, 1 for ``R``, 2 for ``Q``). Only the cost levels up to the
    ``limit``-th assignment are built, never all ``3**n_var`` of them.
    """
    found: list[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = []
    for cost in range(n_var + 1):
        level = []
        for outside in itertools.combinations(range(n_var), cost):
            additive = tuple(i for i in range(n_var) if i not in outside)
            for size in (0, *range(2, cost + 1)):
                for product in itertools.combinations(outside, size):
                    if not (additive or product):
                        continue
                    prefactor = tuple(i for i in outside if i not in product)
                    # Label 0 for the prefactor, 1 for the additive terms, 2 for the inner product.
                    labels = [1] * n_var
                    for i in prefactor:
                        labels[i] = 0
                    for i in product:
                        labels[i] = 2
                    labels = tuple(labels)
                    level.append((labels, (prefactor, additive, product)))
        level.sort(key=lambda entry: entry[0])
        found.extend(partition for _, partition in level[: limit - len(found)])
        if len(found) >= limit:
            break
    return found


def _fit_factored_sum(x, y, partition, sweeps, tolerance):
    """Alternating least squares for :func:`factored_sum` with a fixed assignment.

    Returns ``(relative RMSE, prefactor values, additive values, constant,
    product values)``, each set of values a dict from input index to the
    function's values on the rows, or None when the RMSE is above
    ``tolerance``.
    """
    prefactor_inputs, additive_inputs, product_inputs = partition
    count = len(y)
    scale = float(np.sqrt(np.mean(y**2)))
    bases = {i: _chebyshev_basis(x[:, i], 14) for i in range(x.shape[1])}
    if any(basis is None for basis in bases.values()):
        return None
    prefactor = {i: np.ones(count) for i in prefactor_inputs}
    product = {k: bases[k][:, 1].copy() for k in product_inputs}
    additive = {j: np.zeros(count) for j in additive_inputs}
    constant = 0.0
    error = math.inf

    def total(values: dict, skip: int | None = None) -> np.ndarray:
        return np.prod([v for key, v in values.items() if key != skip], axis=0) if len(values) > (skip is not None) else np.ones(count)

    for _ in range(sweeps):
        # The sum block: additive terms and the constant, linear given the rest.
        outer = total(prefactor)
        inner_product = total(product) if product else np.zeros(count)
        columns = [outer[:, None] * bases[j][:, 1:] for j in additive_inputs] + [outer[:, None]]
        design = np.concatenate(columns, axis=1)
        solution, *_ = np.linalg.lstsq(design, y - outer * inner_product, rcond=None)
        position = 0
        for j in additive_inputs:
            width = bases[j].shape[1] - 1
            additive[j] = bases[j][:, 1:] @ solution[position : position + width]
            position += width
        constant = float(solution[-1])
        additive_sum = sum(additive.values(), np.zeros(count)) + constant

        # Each factor of the inner product, linear given the rest.
        for k in product_inputs:
            target = y - outer * additive_sum
            coefficients, *_ = np.linalg.lstsq(bases[k] * (outer * total(product, k))[:, None], target, rcond=None)
            product[k] = bases[k] @ coefficients
        inner = additive_sum + (total(product) if product else 0.0)

        # Each prefactor factor, normalised to an RMS of 1 with its scale moved into the sum.
        for i in prefactor_inputs:
            coefficients, *_ = np.linalg.lstsq(bases[i] * (inner * total(prefactor, i))[:, None], y, rcond=None)
            values = bases[i] @ coefficients
            norm = float(np.sqrt(np.mean(values**2)))
            if not norm > 0:
                return None
            prefactor[i] = values / norm
            inner = inner * norm
            additive = {j: v * norm for j, v in additive.items()}
            constant *= norm
            if product:
                first = product_inputs[0]
                product[first] = product[first] * norm

        prediction = total(prefactor) * inner
        error = float(np.sqrt(np.mean((prediction - y) ** 2))) / scale
        if error < 1e-2 * min(tolerance, 1e-3):
            break
    if not error < tolerance:
        return None
    return error, prefactor, additive, constant, product
