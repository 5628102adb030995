"""Read a formula back from a model, snap its constants, and check it on data."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import networkx as nx
import sympy
import torch

from ..errors import SymbolicError, SymbolicFitWarning, invalid_parameter, user_stacklevel
from ..graph import edge_id_of

if TYPE_CHECKING:
    from ..model import MultKAN

__all__ = [
    "FormulaCheck",
    "SnapResult",
    "formula_error",
    "simplify_constants",
    "snap_constants",
    "snap_formula_constants",
    "snap_value",
    "symbolic_formula",
]

# simplify_constants tries this many simple values near a constant (the
# simplest first, see _snap_candidates) before it leaves the constant free.
SNAP_TRIALS = 2
# Levenberg-Marquardt evaluations per free parameter (plus one) in each of
# those trial refits; the first fit of all constants gets 200.
TRIAL_EVALUATIONS = 50


def _symbols(model: MultKAN, var_names: Sequence[str | sympy.Symbol] | None) -> list[sympy.Symbol]:
    names = model.input_names if var_names is None else list(var_names)
    if len(names) != model.n_inputs:
        raise invalid_parameter("var_names", f"{model.n_inputs} names, one per input", names)
    return [name if isinstance(name, sympy.Symbol) else sympy.Symbol(name, real=True) for name in names]


def symbolic_formula(
    model: MultKAN,
    var_names: Sequence[str | sympy.Symbol] | None = None,
    *,
    numeric_edges: str = "raise",
    simplify: bool = False,
) -> list[sympy.Expr]:
    """Build one sympy expression per output by walking the graph IR.

    Every function edge contributes ``c * f(a * x + b) + d`` (symbolic) or 0
    (zero); sums add their edges, mult nodes multiply their operands, and
    node affines apply ``scale * v + bias``, so the expression equals the
    forward pass up to floating-point rounding, for any arity.

    Parameters
    ----------
    var_names : sequence of str or Symbol, optional
        Input variables; the model's ``input_names`` by default. Names
        become symbols with ``real=True``, which sympy treats as other
        symbols than plain ``sympy.Symbol("x_1")``: compare a formula with
        ``sympy.symbols("x_1 x_2", real=True)``, or pass your own symbols here.
    numeric_edges : {"raise", "function"}
        What to do with edges that are still splines: raise a
        :class:`SymbolicError` listing them, or keep each as an unknown
        function ``phi_l_i_j(x)``.
    simplify : bool
        Run ``sympy.simplify`` on each output.
    """
    if numeric_edges not in ("raise", "function"):
        raise invalid_parameter("numeric_edges", "'raise' or 'function'", numeric_edges)

    graph = model.to_graph()
    symbols = _symbols(model, var_names)
    value: dict[str, sympy.Expr] = {}
    numeric: list[tuple[int, int, int]] = []
    for node in nx.topological_sort(graph):
        data = graph.nodes[node]
        if data["kind"] == "input":
            value[node] = symbols[data["index"]]
            continue
        if data["kind"] == "mult":
            product = sympy.Mul(*(value[operand] for operand in graph.predecessors(node)))
            value[node] = _affine(product, data)
            continue

        terms = []
        for source in graph.predecessors(node):
            term = _edge_expression(model, graph, source, node, value[source], numeric)
            if term is not None:
                terms.append(term)
        total = sympy.Add(*terms)
        value[node] = total if "operand_of" in data else _affine(total, data)

    if numeric and numeric_edges == "raise":
        raise SymbolicError(
            f"{len(numeric)} edges are still splines, so the model has no closed form: {numeric[:10]}"
            f"{' ...' if len(numeric) > 10 else ''}. Run auto_symbolic() or fix_symbolic() on them first, "
            "or pass numeric_edges='function' to keep them as unknown functions."
        )

    outputs = sorted((d["index"], n) for n, d in graph.nodes(data=True) if d["kind"] == "output")
    expressions = [value[node] for _, node in outputs]
    if simplify:
        expressions = [sympy.simplify(e) for e in expressions]
    return expressions


def _affine(expression: sympy.Expr, data: dict) -> sympy.Expr:
    scale, bias = data.get("scale", 1.0), data.get("bias", 0.0)
    if scale != 1.0:
        expression = sympy.Float(scale) * expression
    if bias != 0.0:
        expression = expression + sympy.Float(bias)
    return expression


def _number(value: float) -> sympy.Expr:
    """Return an exact sympy number for integers and a Float otherwise."""
    if float(value).is_integer() and abs(value) < 1e15:
        return sympy.Integer(int(value))
    return sympy.Float(value)


def _edge_expression(model, graph, source, target, argument, numeric):
    function = graph.edges[source, target]["function"]
    if function["type"] == "zero":
        return None
    if function["type"] == "spline":
        edge = edge_id_of(graph, source, target)
        numeric.append(tuple(edge))
        return sympy.Function(f"phi_{edge.layer}_{edge.source}_{edge.target}")(argument)

    entry = model.library[function["name"]]
    a, b, c, d = (_number(v) for v in function["params"])
    if entry.is_constant:
        return c * entry.sympy_fn(argument) + d
    return c * entry.sympy_fn(a * argument + b) + d


@dataclass(frozen=True)
class FormulaCheck:
    """Agreement of a formula with data.

    Attributes
    ----------
    rmse : float
    r2 : float
    finite : bool
        Whether the formula is real and finite on every row.
    """

    rmse: float
    r2: float
    finite: bool


def formula_error(expression: sympy.Expr, symbols: Sequence[sympy.Symbol], x: torch.Tensor, y: torch.Tensor) -> FormulaCheck:
    """Evaluate ``expression`` on ``x`` (n, n_var) in float64 and compare it with ``y`` (n,) or (n, 1)."""
    x = torch.as_tensor(x, dtype=torch.float64).cpu()
    y = torch.as_tensor(y, dtype=torch.float64).cpu().reshape(-1)
    if expression.has(sympy.zoo, sympy.nan, sympy.oo, -sympy.oo):
        # A refit with constants near 1e30 can leave zoo in a formula, which lambdify cannot print (KeyError).
        return FormulaCheck(rmse=math.inf, r2=-math.inf, finite=False)
    function = sympy.lambdify(list(symbols), expression, modules="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        import numpy as np

        with np.errstate(all="ignore"):
            raw = function(*[x[:, i].numpy() for i in range(x.shape[1])])
    prediction = torch.as_tensor(np.broadcast_to(np.asarray(raw), (x.shape[0],)).copy())
    if prediction.is_complex():
        finite = bool((prediction.imag.abs() < 1e-9).all()) and bool(torch.isfinite(prediction.real).all())
        prediction = prediction.real
    else:
        prediction = prediction.to(torch.float64)
        finite = bool(torch.isfinite(prediction).all())
    if not finite:
        return FormulaCheck(rmse=math.inf, r2=-math.inf, finite=False)
    residual = prediction - y
    rmse = float(residual.pow(2).mean().sqrt())
    variance = float((y - y.mean()).pow(2).sum())
    if variance > 0:
        r2 = 1.0 - float(residual.pow(2).sum()) / variance
    elif rmse == 0:
        r2 = 1.0
    else:
        r2 = -math.inf
    return FormulaCheck(rmse=rmse, r2=r2, finite=True)


def snap_value(value: float, tolerance: float = 1e-2, max_denominator: int = 4) -> float | None:
    """Return a simple constant near ``value``, or None.

    Candidates, simplest first: integers, rationals ``p/q`` with ``q <=
    max_denominator``, and ``p/q * pi``. A candidate ``s`` is accepted when
    ``|value - s| <= tolerance * max(1, |s|)``.
    """
    if not math.isfinite(value):
        return None
    candidates = [float(round(value))]
    fraction = Fraction(value).limit_denominator(max_denominator)
    candidates.append(float(fraction))
    pi_fraction = Fraction(value / math.pi).limit_denominator(max_denominator)
    candidates.append(float(pi_fraction) * math.pi)
    for candidate in candidates:
        if abs(value - candidate) <= tolerance * max(1.0, abs(candidate)):
            return candidate
    return None


@dataclass(frozen=True)
class SnapResult:
    """Outcome of :func:`snap_constants`.

    Attributes
    ----------
    kept : list of (str, float, float)
        ``(where, old, new)`` for each snap that was kept.
    rejected : list of (str, float, float)
        Snaps undone because the loss grew.
    loss_before, loss_after : float
        Training MSE before and after snapping.
    """

    kept: list
    rejected: list
    loss_before: float
    loss_after: float


# snap_constants warns when the model's training RMSE exceeds this fraction of the labels' standard deviation.
POOR_FIT_RMSE = 1e-2


def snap_constants(
    model: MultKAN,
    dataset: dict,
    *,
    tolerance: float = 1e-2,
    max_denominator: int = 4,
    refit_steps: int = 20,
    loss_slack: float = 1e-3,
    loss_floor: float | None = None,
) -> SnapResult:
    """Snap the parameters of symbolic edges to simple constants, refitting the rest.

    Every ``a``, ``b`` and ``c`` of a symbolic edge close to a simple constant
    (see :func:`snap_value`) is set to it and frozen, then the other
    symbolic parameters are refitted with L-BFGS. A snap is kept only when
    the training loss after refitting is at most ``(1 + loss_slack)`` times
    the loss before plus ``loss_floor`` times the label variance, a level
    below which differences are rounding and refit noise (by default
    ``1e-6`` for float32 models and ``1e-10`` for float64); otherwise the
    parameters are restored. Additive constants ``d`` are left to the refit, because
    only their sum per node appears in the formula.
    """
    from ..train import prepare_dataset

    data = prepare_dataset(model, dataset, "mse")
    frozen = [torch.zeros_like(layer.symbolic_affine, dtype=torch.bool) for layer in model.layers]
    loss_before = _training_loss(model, data)
    relative = math.sqrt(loss_before / max(float(data["train_label"].var()), 1e-300))
    if relative > POOR_FIT_RMSE:
        warnings.warn(
            f"snap_constants: the symbolic model fits the training labels only to an RMSE of {relative:.2g} times their "
            "standard deviation, so snapped constants such as pi or 1/2 carry no physical meaning; "
            "improve the fit (more steps, another width or library) before snapping",
            SymbolicFitWarning,
            stacklevel=user_stacklevel(),
        )
    if loss_floor is None:
        loss_floor = 1e-6 if model.dtype == torch.float32 else 1e-10
    floor = loss_floor * float(data["train_label"].var()) + 1e-30
    current = loss_before
    kept, rejected = [], []
    for position, layer in enumerate(model.layers):
        for (i, j), name in sorted(layer.symbolic_names.items()):
            if model.library[name].is_constant:
                continue
            for slot, label in ((0, "a"), (1, "b"), (2, "c")):
                old = float(layer.symbolic_affine[i, j, slot].detach())
                new = snap_value(old, tolerance, max_denominator)
                if new is None or new == old:
                    continue
                saved = [lay.symbolic_affine.detach().clone() for lay in model.layers]
                with torch.no_grad():
                    layer.symbolic_affine[i, j, slot] = new
                frozen[position][i, j, slot] = True
                loss = _refit_symbolic(model, data, frozen, refit_steps)
                where = f"edge {(position, i, j)} {name} {label}"
                if loss <= current * (1 + loss_slack) + floor:
                    kept.append((where, old, new))
                    current = loss
                else:
                    frozen[position][i, j, slot] = False
                    with torch.no_grad():
                        for lay, values in zip(model.layers, saved):
                            lay.symbolic_affine.copy_(values)
                    rejected.append((where, old, new))
    _sync_graph_params(model)
    return SnapResult(kept, rejected, loss_before, current)


def _training_loss(model: MultKAN, data: dict) -> float:
    with torch.no_grad():
        return float(torch.mean((model(data["train_input"]) - data["train_label"]) ** 2))


def _refit_symbolic(model: MultKAN, data: dict, frozen: list[torch.Tensor], steps: int) -> float:
    """Fit the free symbolic parameters by L-BFGS and return the training MSE."""
    parameters = [layer.symbolic_affine for layer in model.layers]
    masks = [(~mask).to(layer.symbolic_affine.dtype) for layer, mask in zip(model.layers, frozen)]
    snapshot = [p.detach().clone() for p in parameters]
    optimizer = torch.optim.LBFGS(parameters, lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")
    inputs, labels = data["train_input"], data["train_label"]

    def closure():
        optimizer.zero_grad()
        loss = torch.mean((model(inputs) - labels) ** 2)
        loss.backward()
        for parameter, mask in zip(parameters, masks):
            parameter.grad.mul_(mask)
        return loss

    optimizer.step(closure)
    loss = _training_loss(model, data)
    if not math.isfinite(loss):
        with torch.no_grad():
            for parameter, values in zip(parameters, snapshot):
                parameter.copy_(values)
        loss = _training_loss(model, data)
    return loss


def _sync_graph_params(model: MultKAN) -> None:
    """Copy the symbolic parameters of the layers onto the graph's edge attributes."""
    from ..graph import graph_layers

    structure = graph_layers(model.graph)
    for position, layer in enumerate(model.layers):
        for (i, j), name in layer.symbolic_names.items():
            source = structure[position].nodes[i]
            target = structure[position + 1].subnodes[j]
            params = layer.symbolic_affine[i, j].detach().tolist()
            model.graph.edges[source, target]["function"] = {"type": "symbolic", "name": name, "params": params}


_SNAP_BASES = (
    (sympy.Integer(1), 1.0), (sympy.pi, math.pi), (1 / sympy.pi, 1 / math.pi), (sympy.pi**2, math.pi**2),
    (1 / sympy.pi**2, 1 / math.pi**2), (sympy.sqrt(2 * sympy.pi), math.sqrt(2 * math.pi)),
    (1 / sympy.sqrt(2 * sympy.pi), 1 / math.sqrt(2 * math.pi)), (sympy.sqrt(2), math.sqrt(2)), (1 / sympy.sqrt(2), 1 / math.sqrt(2)),
)


def _snap_candidates(value: float, tolerance: float) -> list[sympy.Expr]:
    """Return every ``r * base`` within ``tolerance`` (relative) of ``value``, simplest first.

    ``base`` is 1, pi, 1/pi, pi^2, 1/pi^2, sqrt(2 pi), 1/sqrt(2 pi), sqrt(2)
    or 1/sqrt(2), and ``r = p/q`` a rational with ``q <= 12`` and ``|p| <= 60``
    (``|p| <= 12`` with an irrational base). The cost of a candidate is
    ``|p| + q``, plus 2 for an irrational base, so 2*pi (cost 5) comes
    before 44/7 (cost 51), which lies 4e-4 from it. Ties go to the smaller error.
    """
    if value == 0 or not math.isfinite(value):
        return []
    found = []
    for symbolic, numeric in _SNAP_BASES:
        ratio = sympy.Rational(value / numeric).limit_denominator(12)
        plain = numeric == 1.0
        simple = ratio != 0 and (abs(ratio.p) <= 60 if plain else abs(ratio.p) <= 12)
        error = abs(float(ratio) * numeric - value)
        if simple and error <= tolerance * abs(value):
            found.append((abs(ratio.p) + ratio.q + (0 if plain else 2), error, ratio * symbolic))
    return [expression for _, _, expression in sorted(found, key=lambda item: item[:2])]


def _snap_constant(value: float, tolerance: float = 1e-4) -> sympy.Expr | None:
    """Return the simplest ``r * pi^k`` or ``r * sqrt(2 pi)^k`` within ``tolerance`` of ``value`` (see :func:`_snap_candidates`)."""
    candidates = _snap_candidates(value, tolerance)
    return candidates[0] if candidates else None


# A term of a sum whose numeric coefficient is below this fraction of the
# largest coefficient in the same sum is dropped by snap_formula_constants.
NEGLIGIBLE_TERM = 1e-7


def snap_formula_constants(expression: sympy.Expr, tolerance: float = 1e-4) -> sympy.Expr:
    """Replace floats in ``expression`` by simple exact constants where they are within ``tolerance`` (relative).

    A term of a sum whose float coefficient is below ``1e-7`` times the
    largest coefficient of that sum is dropped first (``3.14159*x +
    1e-9`` becomes ``pi*x``). A small constant that is not such a term
    stays: ``6.674e-11*M*m/R**2`` keeps its constant.
    """
    expression = _drop_negligible_terms(expression)
    replacements = {}
    for number in expression.atoms(sympy.Float):
        snapped = _snap_constant(float(number), tolerance)
        if snapped is not None:
            replacements[number] = snapped
    return expression.xreplace(replacements)


def _drop_negligible_terms(expression: sympy.Expr) -> sympy.Expr:
    """Remove, in every sum of ``expression``, the terms with a float coefficient below ``NEGLIGIBLE_TERM`` times the largest."""
    if not expression.args:
        return expression
    arguments = [_drop_negligible_terms(argument) for argument in expression.args]
    if not expression.is_Add:
        return expression.func(*arguments)
    coefficients = [term.as_coeff_Mul()[0] for term in arguments]
    largest = max(abs(float(c)) for c in coefficients)
    remaining = [
        term for term, coefficient in zip(arguments, coefficients)
        if not (isinstance(coefficient, sympy.Float) and abs(float(coefficient)) < NEGLIGIBLE_TERM * largest)
    ]
    return sympy.Add(*remaining)


def _parameterise(expression: sympy.Expr) -> tuple[sympy.Expr, list[sympy.Symbol], list[float]]:
    """Replace every float of ``expression`` by a parameter symbol ``theta_i``."""
    floats = sorted(expression.atoms(sympy.Float), key=lambda f: abs(float(f)))
    thetas = [sympy.Symbol(f"theta_{i}") for i in range(len(floats))]
    return expression.xreplace(dict(zip(floats, thetas))), thetas, [float(f) for f in floats]


def _fit_parameters(function, x_columns, y, values, free, derivatives=None, evaluations_per_parameter=200):
    """Least-squares fit of the free parameters; returns (values, rmse).

    ``derivatives``, when given, returns the derivative of the prediction
    with respect to every parameter (the same arguments as ``function``).
    With 17 parameters, finite differences took 17 evaluations per
    Jacobian and most of a 67 s ``simplify_constants`` run.
    """
    import numpy as np
    from scipy.optimize import least_squares

    values = np.array(values, dtype=float)
    free_index = [i for i, is_free in enumerate(free) if is_free]

    def residual(theta_free):
        full = values.copy()
        full[free_index] = theta_free
        with np.errstate(all="ignore"):
            prediction = np.asarray(function(*x_columns, *full), dtype=float)
        result = np.broadcast_to(prediction, y.shape) - y
        return np.where(np.isfinite(result), result, 1e6)

    def jacobian(theta_free):
        full = values.copy()
        full[free_index] = theta_free
        with np.errstate(all="ignore"):
            columns = derivatives(*x_columns, *full)
            matrix = np.stack([np.broadcast_to(np.asarray(columns[i], dtype=float), y.shape) for i in free_index], axis=1)
        return np.where(np.isfinite(matrix), matrix, 0.0)

    if free_index:
        try:
            # Trial parameters far from the solution can overflow inside scipy's own products.
            with np.errstate(all="ignore"):
                solution = least_squares(
                    residual, values[free_index], jac=jacobian if derivatives is not None else "2-point", method="lm",
                    max_nfev=evaluations_per_parameter * (len(free_index) + 1),
                )
            values[free_index] = solution.x
        except (ValueError, np.linalg.LinAlgError):
            pass
    rmse = float(np.sqrt(np.mean(residual(values[free_index]) ** 2)))
    return values, rmse


def simplify_constants(expression: sympy.Expr, symbols, x: torch.Tensor, y: torch.Tensor, *, slack: float = 1.5) -> sympy.Expr:
    """Refit the float constants of a formula on data, then snap them to simple values.

    Every float becomes a parameter, fitted by Levenberg-Marquardt least
    squares on ``x`` (n, n_var) and ``y`` (n,) or (n, 1). Then, smallest
    first, each parameter is set to 0, to 1 of its sign or to the nearest
    simple constant (a small integer, a simple rational, a rational multiple
    of pi, see :func:`snap_formula_constants`), the other parameters are refitted, and
    the change is kept when the RMSE stays below ``slack`` times the
    refitted RMSE plus ``1e-6`` times the label scale. Formulas whose RMSE
    exceeds ``1e-3`` times the label standard deviation are returned
    unchanged, because their constants carry no reliable meaning.
    """
    import numpy as np

    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1).cpu().numpy()
    x = torch.as_tensor(x, dtype=torch.float64).cpu().numpy()
    symbols = list(symbols)
    if x.ndim != 2 or len(symbols) != x.shape[1]:
        raise invalid_parameter("symbols", f"{x.shape[-1]} symbols, one per column of x", symbols)
    template, thetas, values = _parameterise(expression)
    if not thetas:
        return expression
    function = sympy.lambdify(list(symbols) + thetas, template, modules="numpy")
    derivatives = sympy.lambdify(list(symbols) + thetas, [sympy.diff(template, theta) for theta in thetas], modules="numpy")
    columns = [x[:, i] for i in range(x.shape[1])]
    free = [True] * len(thetas)
    values, baseline = _fit_parameters(function, columns, y, values, free, derivatives)
    scale = float(np.abs(y).max())
    if not baseline <= 1e-3 * float(y.std()) + 1e-12:
        return expression

    limit = slack * baseline + 1e-6 * scale
    for index in range(len(thetas)):
        # Trying 1 before the nearest simple value sets a factor that another
        # constant absorbs to 1, not to sqrt(2) / pi next to a 2.22144 that cancels it.
        value = float(values[index])
        options = [0.0, math.copysign(1.0, value)]
        for snapped in _snap_candidates(value, 1e-2)[:SNAP_TRIALS]:
            if float(snapped) not in options:
                options.append(float(snapped))
        for option in options:
            trial_values = values.copy()
            trial_values[index] = option
            trial_free = list(free)
            trial_free[index] = False
            # A trial starts next to the fitted solution, so fewer evaluations suffice.
            fitted, error = _fit_parameters(function, columns, y, trial_values, trial_free, derivatives, TRIAL_EVALUATIONS)
            if error <= limit:
                values, free = fitted, trial_free
                break

    replacements = {}
    for theta, value, is_free in zip(thetas, values, free):
        if is_free:
            replacements[theta] = sympy.Float(value)
        else:
            exact = sympy.Integer(0) if value == 0 else _snap_constant(value, 1e-12)
            replacements[theta] = exact if exact is not None else sympy.Float(value)
    expression = template.xreplace(replacements)
    # sympy merges a free constant with the snapped ones next to it, which can
    # leave 1.00000000205749 * x_1 * x_2. Floats that close to a simple value are snapped.
    merged = {}
    for number in expression.atoms(sympy.Float):
        exact = _snap_constant(float(number), 1e-8)
        if exact is not None:
            merged[number] = exact
    return expression.xreplace(merged)
