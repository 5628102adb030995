"""Conserved quantities of a dynamical system, learned as KANs and read back as formulas.

A quantity ``H(x)`` is conserved along the flow ``dx/dt = f(x)`` when its
rate of change ``grad H . f`` is zero everywhere. The states ``x`` and
their time derivatives ``f`` may come from a simulation, finite
differences or a known vector field. :func:`find_conserved` trains a
MultKAN ``H`` whose gradient is perpendicular to the flow at every row,
snaps its edges to symbolic functions and returns tidy formulas, each
checked on the data.

The objective, ``mean((grad H . f)^2) / mean(|grad H|^2)`` with ``f`` of
unit length, is free of units: lengths are taken in units where every
component of the flow has an RMS of 1. Dividing by the mean squared gradient keeps a
constant ``H``, which is conserved but carries no information, from winning. Later
quantities add the same quotient for the gradients of earlier ones, weighted
by ``independence``, so ``H_2 = 2 H_1`` is no second law. For additive
networks and for sums of candidate terms the objective is a Rayleigh
quotient, minimised exactly by a generalised eigenvector.

:func:`conservation_residual` scores any quantity (a model, a callable on
tensors or a sympy expression) on data, and :func:`is_conserved` checks a
formula against a symbolic flow exactly.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import sympy
import torch
from tqdm.auto import tqdm

from .errors import InvalidDataError, MultKANWarning, SymbolicError, invalid_parameter, is_integer, user_stacklevel
from .lbfgs import FlatLBFGS
from .model import MultKAN
from .train import _FlatParameters, _snapshot

__all__ = ["ConservedQuantities", "ConservationWarning", "conservation_residual", "find_conserved", "is_conserved", "tidy_quantity"]

# Rows whose flow is shorter than this fraction of the median flow length
# are equilibria. Every quantity is conserved there, so they are left out.
EQUILIBRIUM_FRACTION = 1e-9
# Directions of the spline coefficients whose mean squared gradient is
# below this fraction of the largest are constants, left out of the eigenvector start.
METRIC_CUTOFF = 1e-10
# A flow component whose RMS is below this share of the largest counts as
# this share in the balanced units of the residual (see _unit_flow).
STILL_COMPONENT = 1e-6
# Training stops when a step changes the objective by less than this fraction.
CONVERGED_CHANGE = 1e-9
# Minimum number of rows with a non-zero flow.
MIN_ROWS = 10
# Denominators tried when snapping the numbers of a formula, and how far
# (relatively) a snapped number may lie from the fitted one. A snapped number
# is kept only when the formula's residual on the data stays within
# RESIDUAL_SLACK times that of the unsnapped formula (or below RESIDUAL_FLOOR).
SNAP_DENOMINATORS = range(1, 13)
SNAP_TOLERANCE = 3e-2
# A number within EXACT_TOLERANCE (relatively) of a fraction with a
# denominator up to EXACT_DENOMINATOR may also snap to that fraction.
EXACT_DENOMINATOR = 1000
EXACT_TOLERANCE = 1e-9
# Powers of each variable among the candidate terms of a formula's refit,
# and the smallest share of the largest term's gradient that a term keeps.
MAX_POWER = 4
MIN_TERM_SHARE = 1e-3
# Formulas with more operations than this are left as they are.
TIDY_MAX_OPERATIONS = 40
RESIDUAL_SLACK = 2.0
RESIDUAL_FLOOR = 1e-6
# The width of find_conserved that feeds every variable and every product of two into one spline each.
PAIRS = "pairs"
# Monomials of the state variables offered to a pairs formula's refit: up to
# the largest total degree (at most MAX_POWER, at least 2) with at most MAX_MONOMIALS of them.
MAX_MONOMIALS = 500
# A quantity whose residual on the test rows exceeds this is reported with a warning.
WARN_RESIDUAL = 1e-2
# When one formula's residual is at most RESIDUAL_FLOOR, the data are exact,
# and a formula whose residual exceeds this many times that one (and the floor) is reported.
EXACT_DATA_FACTOR = 1e3
# Two quantities whose unit gradients have a mean squared cosine above this
# are reported as dependent (one nearly a function of the other).
DEPENDENT_COSINE = 0.95
# A quantity whose spread over the states is below this share of its spread
# over the states with their columns shuffled is constant on the data.
LEVEL_SET_RATIO = 0.05


class ConservationWarning(MultKANWarning):
    """A learned quantity is not conserved to the expected accuracy."""


@dataclass
class ConservedQuantities:
    """Result of :func:`find_conserved`: networks, formulas and residuals of the learned quantities.

    Attributes
    ----------
    models : list of MultKAN
        The trained network of each quantity, with spline edges.
    symbolic_models : list of MultKAN or None
        Copies with every edge snapped to a library function (None with ``symbolic=False``).
    formulas : list of sympy.Expr or None
        One tidy formula per quantity (see :func:`tidy_quantity`), in the variables ``names``.
    residual : list of float
        Per quantity, the RMS of ``cos(angle(grad H, f))`` of the network on the test rows:
        0 for an exactly conserved quantity, about 0.7 for a random one.
    formula_residual : list of float or None
        The same for each formula, on all rows.
    names : list of str
        The state variables.
    history : dict
        ``objective``: per quantity, the training objective after each step,
        or one value, at the start, for networks with an exact start.
    """

    models: list[MultKAN]
    symbolic_models: list[MultKAN] | None
    formulas: list[sympy.Expr] | None
    residual: list[float]
    formula_residual: list[float] | None
    names: list[str]
    history: dict[str, list[list[float]]] = field(default_factory=dict)

    def __repr__(self) -> str:
        lines = [f"ConservedQuantities({len(self.residual)} in {', '.join(self.names)})"]
        for index, residual in enumerate(self.residual):
            formula = "" if self.formulas is None else f"  {self.formulas[index]}  (formula residual {self.formula_residual[index]:.1e})"
            lines.append(f"  H_{index}: network residual {residual:.1e}{formula}")
        return "\n".join(lines)


def _as_rows(values: Any, name: str) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
    else:
        try:
            tensor = torch.as_tensor(values)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InvalidDataError(f"invalid {name}: expected an array of shape (rows, n_state), received {type(values).__name__} ({error})") from error
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)):
        raise InvalidDataError(f"invalid {name}: expected real numbers, received dtype {tensor.dtype}")
    if tensor.ndim != 2:
        raise InvalidDataError(f"invalid {name}: expected an array of shape (rows, n_state), received shape {tuple(tensor.shape)}")
    tensor = tensor.to(torch.float64)
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        row, column = (int(v) for v in bad.nonzero()[0])
        raise InvalidDataError(f"invalid {name}: row {row}, column {column} is {float(tensor[row, column])}; remove rows with NaN or infinite values")
    return tensor


def _check_pair(x: Any, flow: Any) -> tuple[torch.Tensor, torch.Tensor]:
    x, flow = _as_rows(x, "x"), _as_rows(flow, "flow")
    if x.shape != flow.shape:
        raise InvalidDataError(f"invalid flow: expected the shape of x {tuple(x.shape)}, one time derivative per state variable, received {tuple(flow.shape)}")
    if x.shape[1] < 2:
        raise InvalidDataError(
            f"invalid x: expected at least 2 state variables, received {x.shape[1]}; in one dimension only a constant is conserved along a moving flow"
        )
    return x, flow


def _unit_flow(flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the flow of unit length in balanced units, the mask of rows that are not equilibria, and the gradient weights.

    The units make each component of the flow have an RMS of 1 over the
    moving rows: with ``c_s`` that RMS, the state ``x_s / c_s`` moves at
    ``f_s / c_s``. In those units the flow is ``f / |f / c|`` and a
    gradient's squared length is ``sum_s c_s**2 (dH/dx_s)**2``, so the
    returned weights are ``c**2``. Without this, a flow whose forces are 100
    times its velocities points almost along the momenta, and a function of
    the positions alone, such as ``x**4*y**4``, has a small residual while
    it is not conserved.
    """
    tiny = torch.finfo(flow.dtype).tiny
    length = flow.norm(dim=1)
    moving = length > EQUILIBRIUM_FRACTION * length.median().clamp_min(tiny)
    spread = flow[moving].square().mean(dim=0).sqrt() if bool(moving.any()) else torch.ones(flow.shape[1], dtype=flow.dtype)
    # A component that never moves gets a small weight instead of none.
    spread = spread.clamp_min(STILL_COMPONENT * float(spread.max()) + tiny)
    balanced = (flow / spread).norm(dim=1).clamp_min(tiny)
    return flow / balanced.unsqueeze(1), moving, spread.square()


def _gradients(function: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``H(x)`` (rows, n_quantities) and the gradients (n_quantities, rows, n_state)."""
    rows = x.detach().clone().requires_grad_()
    values = function(rows)
    if values.ndim == 1:
        values = values.unsqueeze(1)
    if not values.requires_grad:
        # A function that does not depend on x (a constant) has zero gradient.
        return values, torch.zeros(values.shape[1], *rows.shape, dtype=rows.dtype)
    gradients = []
    last = values.shape[1] - 1
    for output in range(values.shape[1]):
        (gradient,) = torch.autograd.grad(
            values[:, output].sum(), rows, create_graph=create_graph, retain_graph=create_graph or output < last, allow_unused=True
        )
        gradients.append(torch.zeros_like(rows) if gradient is None else gradient)
    return values, torch.stack(gradients)


def _objective(
    model: MultKAN, x: torch.Tensor, unit_flow: torch.Tensor, earlier: list[torch.Tensor], independence: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Return the training objective of one quantity, with ``earlier`` the unit gradients of the quantities found before.

    ``mean((grad H . f)^2) / mean(|grad H|^2)`` with unit flow ``f`` and
    the gradient's squared length weighted by ``weights`` (see
    :func:`_unit_flow`; unweighted by default), plus
    ``independence`` times the same quotient for every earlier unit
    gradient. Dividing by the mean squared gradient, not row by row, makes
    the objective a Rayleigh quotient in the spline coefficients of an
    additive network (see :func:`_eigen_start`).
    """
    _, gradients = _gradients(model, x, create_graph=True)
    gradient = gradients[0]
    squares = gradient * gradient if weights is None else gradient * gradient * weights.to(gradient)
    scale = squares.sum(-1).mean().clamp_min(torch.finfo(x.dtype).tiny)
    along = ((gradient * unit_flow).sum(-1) ** 2).mean()
    for other in earlier if independence > 0 else ():
        along = along + independence * ((gradient * other).sum(-1) ** 2).mean()
    return along / scale


def _pairs_model(n_state: int, *, grid: int, k: int, seed: int, names: list[str], grid_range: tuple[float, float]) -> MultKAN:
    """Return ``[n_state, [n_state, n_pairs], 1]`` whose fixed first layer passes on every variable and every product of two.

    The first layer's edges are the identity ``x`` (symbolic, frozen) from
    variable ``i`` to sum node ``i`` and from variables ``a`` and ``b`` to the
    two operands of the mult node of pair ``(a, b)``; all other edges are
    off. The last layer contains one trainable spline per hidden node, so
    ``H = sum_i f_i(x_i) + sum_{a<b} g_ab(x_a x_b)``: an angular momentum
    ``x*p_y - y*p_x`` is linear in two of those products.
    """
    pairs = list(itertools.combinations(range(n_state), 2))
    model = MultKAN(
        [n_state, [n_state, len(pairs)], 1], grid=grid, k=k, seed=seed, dtype=torch.float64, input_names=names, grid_range=grid_range
    )
    layer = model.layers[0]
    active = {(i, i) for i in range(n_state)}
    for (a, b), (first, second) in zip(pairs, layer.operands):
        active |= {(a, first), (b, second)}
    for source in range(n_state):
        for target in range(layer.n_sub):
            if (source, target) in active:
                model.fix_symbolic((0, source, target), "x", fit_params=False)
            else:
                layer.set_zero(source, target)
    for parameter in layer.parameters():
        parameter.requires_grad_(False)
    return model


def _eigen_start(
    model: MultKAN,
    x: torch.Tensor,
    unit_flow: torch.Tensor,
    earlier: list[torch.Tensor],
    independence: float,
    rank: int = 0,
    weights: torch.Tensor | None = None,
) -> bool:
    """Set the last layer of a network to the best quantity for its fixed front; return whether it applied.

    It applies when the last layer has one output and no mult nodes and
    every layer before it is fixed: no spline edge and no trainable
    parameter (one-layer networks, and :func:`_pairs_model`). Then ``H =
    sum_h sum_m c_hm B_m(z_h)`` over the hidden values ``z`` and, with the
    gradients ``dz_h/dx`` of the front, the objective of :func:`_objective`
    is ``c^T A c / c^T M c``. ``A`` comes from the products of
    ``B_m'(z_h) grad z_h`` with the flow (and the earlier gradients), ``M``
    from their inner products. Its minimum is the eigenvector of the
    smallest eigenvalue of ``A c = lambda M c``, found exactly, so the
    training starts at the global optimum of the splines on this grid.
    ``rank`` picks the eigenvector of the ``rank``-th smallest eigenvalue
    instead. These are ``M``-orthogonal, so the first few span several
    independent quantities at once.
    """
    *front, last = model.layers
    if last.operands or model.n_outputs != 1:
        return False
    if any(bool(layer.spline_mask.any()) or any(parameter.requires_grad for parameter in layer.parameters()) for layer in front):
        return False
    rows = x.detach().clone().requires_grad_()
    with torch.enable_grad():
        hidden = rows
        for layer in front:
            hidden = layer(hidden)
        n_hidden = hidden.shape[1]
        if front:
            # hidden_slopes[r, h, s] = dz_h / dx_s at row r.
            hidden_slopes = torch.stack(
                [torch.autograd.grad(hidden[:, h].sum(), rows, retain_graph=h < n_hidden - 1)[0] for h in range(n_hidden)], dim=1
            )
        else:
            hidden_slopes = torch.eye(n_hidden, dtype=x.dtype).expand(x.shape[0], n_hidden, n_hidden)
        values = hidden.detach().clone().requires_grad_()
        basis = last.basis(values)
        n_basis = basis.shape[-1]
        # derivative[r, h, m] = dB_m(z_rh) / dz_rh: each basis value depends on its own input only.
        derivative = torch.stack(
            [torch.autograd.grad(basis[..., m].sum(), values, retain_graph=m < n_basis - 1)[0] for m in range(n_basis)], dim=-1
        ).detach()
    n_rows, n_state = x.shape
    # features[r, s, (h, m)] = dB_m(z_rh)/dz * dz_h/dx_s: the gradient of H is features @ c.
    features = torch.einsum("rhm,rhs->rshm", derivative, hidden_slopes.detach()).reshape(n_rows, n_state, n_hidden * n_basis)

    def products(direction: torch.Tensor) -> torch.Tensor:
        along_rows = torch.einsum("rsf,rs->rf", features, direction)
        return along_rows.T @ along_rows / n_rows

    along = products(unit_flow)
    for other in earlier if independence > 0 else ():
        along = along + independence * products(other)
    state_weights = torch.ones(n_state, dtype=features.dtype) if weights is None else weights.to(features)
    metric = torch.einsum("rsf,rsg,s->fg", features, features, state_weights) / n_rows
    # Functions with no gradient (the constants) span the null space of the
    # metric; the quotient is taken on the rest.
    scales, directions = torch.linalg.eigh(metric)
    keep = scales > METRIC_CUTOFF * scales.max()
    if not bool(keep.any()):
        return False
    whitening = directions[:, keep] / scales[keep].sqrt()
    _, vectors = torch.linalg.eigh(whitening.T @ along @ whitening)
    coefficients = (whitening @ vectors[:, min(rank, vectors.shape[1] - 1)]).reshape(n_hidden, n_basis)
    coefficients = coefficients / coefficients.abs().max()
    with torch.no_grad():
        last.coef.copy_(coefficients.unsqueeze(1).to(last.coef))
        last.scale_sp.fill_(1.0)
        last.scale_base.zero_()
    return True


def _train_one(
    model: MultKAN, x: torch.Tensor, unit_flow: torch.Tensor, earlier: list[torch.Tensor], independence: float, steps: int, bar, weights: torch.Tensor
) -> list[float]:
    """Train one quantity's network in place with L-BFGS; return the objective after each step."""
    parameters = _FlatParameters([parameter for parameter in model.parameters() if parameter.requires_grad])
    optimizer = FlatLBFGS(parameters.flat, lr=1.0, max_iter=20, history_size=10, tolerance_grad=1e-32, tolerance_change=1e-32)

    def closure() -> torch.Tensor:
        parameters.zero_grad()
        loss = _objective(model, x, unit_flow, earlier, independence, weights)
        loss.backward()
        return loss

    losses: list[float] = []
    last_finite = _snapshot(model)
    try:
        for step in range(steps):
            loss = float(optimizer.step(closure).detach())
            if not (math.isfinite(loss) and parameters.all_finite(torch.tensor(loss))):
                model.load_state_dict(last_finite)
                warnings.warn(
                    f"find_conserved stopped at step {step}: the objective was not finite; the parameters of the step before were restored",
                    ConservationWarning,
                    stacklevel=user_stacklevel(),
                )
                break
            last_finite = _snapshot(model)
            converged = bool(losses) and abs(losses[-1] - loss) <= CONVERGED_CHANGE * max(losses[-1], torch.finfo(x.dtype).tiny)
            losses.append(loss)
            bar.update(1)
            bar.set_postfix(objective=f"{loss:.2e}", refresh=False)
            if converged:
                bar.update(steps - 1 - step)
                break
    finally:
        parameters.release()
    return losses


def conservation_residual(quantity: Any, x: Any, flow: Any, *, names: Sequence[str] | None = None) -> torch.Tensor:
    """Return, per quantity, ``sqrt(mean((grad H . f)^2) / mean(|grad H|^2))`` with the flow ``f`` of unit length.

    Lengths are taken in balanced units, where each component of the flow
    has an RMS of 1 over the rows (see :func:`_unit_flow`), so the result
    does not change when one variable's unit changes. This is the relative
    rate of change of ``H`` along the flow: the RMS of the cosine between
    ``grad H`` and ``f``, with each row weighted by ``|grad H|^2``. Rows
    where the gradient is nearly zero (the bottom of a potential well)
    carry little weight, as their direction is mostly rounding. It is the square root of the objective of :func:`find_conserved`.

    Parameters
    ----------
    quantity : MultKAN, callable or sympy expression (or a list of expressions)
        A model or a callable maps a tensor (rows, n_state) to (rows,) or
        (rows, n_quantities). Expressions are in the variables ``names``.
    x, flow : arrays of shape (rows, n_state)
        States and their time derivatives. Equilibria (zero flow) are left out.
    names : sequence of str, optional
        The state variables of sympy expressions; ``x_1, x_2, ...`` by default.

    Returns
    -------
    tensor of shape (n_quantities,)
        0 for an exactly conserved quantity; a quantity whose gradient
        points in random directions scores about ``1/sqrt(n_state)``. NaN
        for a quantity whose gradient is zero on every row.
    """
    x, flow = _check_pair(x, flow)
    unit_flow, moving, weights = _unit_flow(flow)
    x, unit_flow = x[moving], unit_flow[moving]
    if isinstance(quantity, (str, sympy.Basic, list, tuple)):
        gradients = _formula_gradients(quantity, x, names)
    else:
        if isinstance(quantity, MultKAN):
            model = quantity
            if model.n_inputs != x.shape[1]:
                raise InvalidDataError(f"invalid x: the model has {model.n_inputs} inputs, received {x.shape[1]} state variables")
            x, unit_flow = x.to(model.dtype), unit_flow.to(model.dtype)
        elif not callable(quantity):
            raise invalid_parameter("quantity", "a MultKAN, a callable on tensors or a sympy expression", type(quantity).__name__)
        with torch.enable_grad():
            _, gradients = _gradients(quantity, x, create_graph=False)
    gradients = gradients.detach()
    along = ((gradients * unit_flow.to(gradients.dtype)).sum(-1) ** 2).mean(dim=1)
    scale = (gradients * gradients * weights.to(gradients)).sum(-1).mean(dim=1)
    return torch.where(scale > 0, along / scale.clamp_min(torch.finfo(gradients.dtype).tiny), torch.nan).sqrt()


def _symbols(names: Sequence[str] | None, n_state: int) -> list[sympy.Symbol]:
    names = [f"x_{index + 1}" for index in range(n_state)] if names is None else list(names)
    if len(names) != n_state or len(set(names)) != len(names) or not all(isinstance(name, str) and name.isidentifier() for name in names):
        raise invalid_parameter("names", f"{n_state} distinct identifiers (strings), one per state variable", names)
    return [sympy.Symbol(str(name), real=True) for name in names]


def _formula_gradients(expressions: Any, x: torch.Tensor, names: Sequence[str] | None) -> torch.Tensor:
    """Return the gradients (n_expressions, rows, n_state) of sympy expressions (or strings) at the rows ``x``."""
    expressions = list(expressions) if isinstance(expressions, (list, tuple)) else [expressions]
    symbols = _symbols(names, x.shape[1])
    columns = [x[:, index].numpy() for index in range(x.shape[1])]
    gradients = []
    for index, expression in enumerate(expressions):
        try:
            gradients.append(_formula_gradient(expression, symbols, columns, x.dtype))
        except (RecursionError, NameError, TypeError, OverflowError) as error:
            # A formula too deep for sympy or Python's compiler, or with a
            # function NumPy lacks. Printing a formula that deep would recurse too.
            reason = "it is nested too deeply" if isinstance(error, RecursionError) else f"{type(error).__name__}: {error}"
            raise SymbolicError(f"cannot evaluate the derivative of formula {index} with NumPy: {reason}") from None
    return torch.stack(gradients)


def _formula_gradient(expression: Any, symbols: list[sympy.Symbol], columns: list, dtype: torch.dtype) -> torch.Tensor:
    expression = _parse(expression, {symbol.name: symbol for symbol in symbols})
    unknown = sorted(str(free) for free in expression.free_symbols - set(symbols))
    if unknown:
        raise invalid_parameter("quantity", f"an expression in the variables {[s.name for s in symbols]}", f"an expression with {unknown}")
    rows = []
    for symbol in symbols:
        # The derivative of abs or sign contains DiracDelta terms, which are zero except on a set of measure zero.
        slope = sympy.diff(expression, symbol).replace(sympy.DiracDelta, lambda *arguments: sympy.S.Zero)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            values = torch.as_tensor(sympy.lambdify(symbols, slope, "numpy")(*columns), dtype=dtype)
        rows.append(values.expand(len(columns[0])) if values.ndim == 0 else values)
    return torch.stack(rows, dim=1)


def _parse(expression: Any, by_name: dict[str, sympy.Symbol]) -> sympy.Expr:
    """Return ``expression`` as sympy, with every symbol of a name in ``by_name`` replaced by that symbol.

    Strings are parsed with those names as symbols, so ``E``, ``I``, ``S``
    or ``N`` name variables, not sympy's constants and functions.
    """
    parsed = sympy.sympify(expression, locals=dict(by_name)) if isinstance(expression, str) else sympy.sympify(expression)
    return parsed.xreplace({free: by_name[free.name] for free in parsed.free_symbols if free.name in by_name})


# is_conserved evaluates the rate at this many random points before sympy's exact check.
RATE_CHECK_POINTS = 12


def is_conserved(quantity: Any, variables: Sequence[Any], flow: Sequence[Any]) -> bool:
    """Return whether ``d quantity / dt = sum_i (d quantity / d variables[i]) flow[i]`` is exactly 0.

    An exact check with sympy, for a formula and a known vector field,
    for example ``is_conserved(p**2/2 - cos(q), [q, p], [p, -sin(q)])``.
    Variables may be symbols or names, and symbols match by name whatever
    their assumptions (``real=True`` or none). The rate is expanded and
    then compared with 0 by :meth:`sympy.Expr.equals`, which also evaluates
    it at random points, instead of ``sympy.simplify``, which ran for more
    than 10 minutes on some formulas. Before that, the rate is evaluated at
    ``RATE_CHECK_POINTS`` random points (parameters of the flow included),
    and a rate clearly not 0 there returns False without expanding.
    """
    if len(variables) != len(flow):
        raise invalid_parameter("flow", f"{len(variables)} expressions, one per variable", len(flow))
    names = [variable.name if isinstance(variable, sympy.Symbol) else str(variable) for variable in variables]
    by_name = {name: sympy.Symbol(name, real=True) for name in names}
    quantity = _parse(quantity, by_name)
    terms = [sympy.diff(quantity, by_name[name]) * _parse(term, by_name) for name, term in zip(names, flow)]
    if _clearly_nonzero(terms, [by_name[name] for name in names]):
        return False
    rate = sympy.expand(sum(terms))
    return rate == 0 or rate.equals(0) is True


def _clearly_nonzero(terms: list[sympy.Expr], symbols: list[sympy.Symbol]) -> bool:
    """Return whether the sum of ``terms`` is far from 0 at some random point where every term is finite.

    Far means above ``1e-6`` times the largest term there. A rate that is
    not 0 is then rejected before ``sympy.expand``, which ran for more than
    100 s on the fifth power of a sum of cosines and sinh terms.
    """
    import numpy as np

    # Parameters of the flow (b and g in an SIR model) get random values like the variables.
    parameters = sorted(set().union(*(term.free_symbols for term in terms)) - set(symbols), key=lambda s: s.name)
    symbols = [*symbols, *parameters]
    function = sympy.lambdify(symbols, [*terms, sympy.Integer(0)], modules="numpy")
    generator = np.random.default_rng(0)
    for point in generator.uniform(0.1, 2.0, (RATE_CHECK_POINTS, len(symbols))) * generator.choice([-1.0, 1.0], (RATE_CHECK_POINTS, len(symbols))):
        with np.errstate(all="ignore"):
            try:
                values = np.array([complex(v) for v in function(*point)[:-1]])
            except (TypeError, ValueError, ZeroDivisionError, OverflowError):
                continue
        if not np.isfinite(values).all() or np.abs(values.imag).max(initial=0.0) > 0:
            continue
        total, largest = abs(values.real.sum()), np.abs(values.real).max(initial=0.0)
        if total > 1e-6 * largest and total > 1e-12:
            return True
    return False


def _snap_candidates(value: float) -> list[sympy.Expr]:
    """Return simple numbers within ``SNAP_TOLERANCE`` of ``value`` (relatively), simplest first.

    0 comes first for numbers below ``SNAP_TOLERANCE`` in size, then ``n/d``
    and ``n/d * pi`` by increasing ``d`` up to 12, and last a fraction with
    a denominator up to ``EXACT_DENOMINATOR`` that matches ``value`` to
    ``EXACT_TOLERANCE``.
    """
    candidates: list[sympy.Expr] = [sympy.Integer(0)] if abs(value) < SNAP_TOLERANCE else []
    for denominator in SNAP_DENOMINATORS:
        for factor, symbol in ((1.0, sympy.Integer(1)), (math.pi, sympy.pi)):
            numerator = round(value * denominator / factor)
            if numerator != 0 and math.gcd(numerator, denominator) == 1 and abs(numerator * factor / denominator - value) <= SNAP_TOLERANCE * abs(value):
                candidates.append(sympy.Rational(numerator, denominator) * symbol)
    # A ratio of physical constants, such as 1/(2*9.81) = 50/981, comes out of an exact refit to about 1e-15.
    exact = Fraction(value).limit_denominator(EXACT_DENOMINATOR)
    if exact != 0 and abs(float(exact) - value) <= EXACT_TOLERANCE * abs(value):
        candidates.append(sympy.Rational(exact.numerator, exact.denominator))
    return candidates


def _normalised(expression: sympy.Expr, symbols: Sequence[sympy.Symbol]) -> sympy.Expr:
    """Drop the constant of an expanded expression and divide it by its largest coefficient."""
    expression = sympy.expand(expression)
    terms = expression.as_coefficients_dict()
    variable_terms = {term: coefficient for term, coefficient in terms.items() if term.free_symbols & set(symbols)}
    if not variable_terms:
        return expression
    scale = max(variable_terms.values(), key=lambda value: abs(float(value)))
    return sympy.Add(*(term * (coefficient / scale) for term, coefficient in variable_terms.items()))


def tidy_quantity(expression: Any, x: Any, flow: Any, *, names: Sequence[str] | None = None) -> tuple[sympy.Expr, float]:
    """Return a simpler formula for a conserved quantity and its residual on the data.

    A conserved quantity stays conserved when a constant is added or when
    it is scaled. So the constant is dropped and the expression is scaled
    so that its largest coefficient is 1. Then each number, largest first,
    is replaced by the simplest of 0, ``n/d`` or ``n/d * pi`` (``d`` up to
    12, within ``SNAP_TOLERANCE``) that keeps the residual
    (:func:`conservation_residual`) within ``RESIDUAL_SLACK`` times that of
    the scaled expression, or below ``RESIDUAL_FLOOR``. Formulas of more than
    ``TIDY_MAX_OPERATIONS`` operations are returned as they are.
    """
    x, flow = _check_pair(x, flow)
    symbols = _symbols(names, x.shape[1])
    names = [symbol.name for symbol in symbols]
    expression = sympy.sympify(expression)
    expression = expression.subs({free: symbol for free in expression.free_symbols for symbol in symbols if free.name == symbol.name})
    if sympy.count_ops(expression) > TIDY_MAX_OPERATIONS:
        # Expanding a long formula makes it longer still, and each trial
        # differentiates and compiles it, so a long formula is left as it is.
        return expression, float(conservation_residual(expression, x, flow, names=names)[0])
    current = _normalised(expression, symbols)
    if sympy.count_ops(current) > 2 * TIDY_MAX_OPERATIONS:
        # Expanding powers of sums can multiply the terms.
        return expression, float(conservation_residual(expression, x, flow, names=names)[0])
    residual = float(conservation_residual(current, x, flow, names=names)[0])
    allowed = max(RESIDUAL_SLACK * residual, RESIDUAL_FLOOR)
    tried: set[sympy.Float] = set()
    while True:
        # Snapping one number can rewrite the expression (sin(q + 5*pi/2)
        # becomes cos(q)), so the numbers are listed again after each one.
        numbers = [atom for atom in current.atoms(sympy.Float) if atom not in tried]
        if not numbers:
            # The sign that makes the first printed term positive: p**2/2 - cos(q), not cos(q) - p**2/2.
            leading = current.as_ordered_terms()[0] if isinstance(current, sympy.Add) else current
            return (-current if leading.could_extract_minus_sign() else current), residual
        number = max(numbers, key=lambda atom: (abs(float(atom)), str(atom)))
        tried.add(number)
        for candidate in _snap_candidates(float(number)):
            trial = current.xreplace({number: candidate})
            if not trial.free_symbols & set(symbols):
                continue
            trial_residual = float(conservation_residual(trial, x, flow, names=names)[0])
            if trial_residual <= allowed:
                current, residual = trial, trial_residual
                break


def _monomials(symbols: list[sympy.Symbol]) -> set[sympy.Expr]:
    """Return the monomials in ``symbols`` of total degree 2 to ``d``.

    ``d`` is the largest degree up to ``MAX_POWER`` for which there are at
    most ``MAX_MONOMIALS`` monomials (4 for up to 8 variables, 3 for 9 to
    12), and at least 2.
    """
    for degree in range(MAX_POWER, 1, -1):
        if math.comb(len(symbols) + degree, degree) <= MAX_MONOMIALS or degree == 2:
            return {term for term in sympy.itermonomials(symbols, degree) if sympy.Poly(term, *symbols).total_degree() >= 2}
    return set()


def _candidate_terms(expression: sympy.Expr, symbols: list[sympy.Symbol], x: torch.Tensor, monomials: bool = False) -> list[sympy.Expr]:
    """Return the candidate terms of a formula's refit, each with a unit coefficient.

    These are the terms of ``expression`` (unless it has more than
    ``TIDY_MAX_OPERATIONS`` operations), also with their inner numbers
    snapped, powers 1 to ``MAX_POWER`` of every variable, logarithms of
    positive ones and, with ``monomials``, the products of variables from
    :func:`_monomials`.
    """
    terms = set(_monomials(symbols)) if monomials else set()
    own = _variable_terms(expression) if sympy.count_ops(expression) <= TIDY_MAX_OPERATIONS else {}
    for term in own:
        terms.add(term)
        # The same term with the numbers inside snapped: cos(0.9993*q) also offers cos(q).
        inner = {number: _snap_candidates(float(number)) for number in term.atoms(sympy.Float)}
        terms.add(term.xreplace({number: options[0] for number, options in inner.items() if options}))
    for index, symbol in enumerate(symbols):
        terms.update(symbol**power for power in range(1, MAX_POWER + 1))
        if bool((x[:, index] > 0).all()):
            terms.add(sympy.log(symbol))
    return sorted(terms, key=sympy.default_sort_key)


def _drop_small_terms(expression: sympy.Expr, residual: float, x: torch.Tensor, flow: torch.Tensor, names: list[str]) -> tuple[sympy.Expr, float]:
    """Return ``expression`` without its top-level terms whose gradient is below ``MIN_TERM_SHARE`` of the largest, and the residual.

    A snapped network carries terms of size 1e-13 next to the law (from
    edges whose splines are near zero). The terms are taken as they stand,
    without expanding. The shorter formula is returned when its residual
    stays within ``RESIDUAL_SLACK`` times ``residual`` (or below
    ``RESIDUAL_FLOOR``), else ``expression``.
    """
    terms = [term for term in sympy.Add.make_args(expression) if term.free_symbols]
    if len(terms) < 2:
        return expression, residual
    try:
        gradients = _formula_gradients(terms, x, names)
    except SymbolicError:
        return expression, residual
    sizes = gradients.square().sum(-1).mean(-1).sqrt()
    if not bool(torch.isfinite(sizes).all()):
        return expression, residual
    significant = [term for term, size in zip(terms, sizes) if size >= MIN_TERM_SHARE * sizes.max()]
    if len(significant) == len(terms):
        return expression, residual
    shorter = sympy.Add(*significant)
    shorter_residual = float(conservation_residual(shorter, x, flow, names=names)[0])
    if shorter_residual <= max(RESIDUAL_SLACK * residual, RESIDUAL_FLOOR):
        return shorter, shorter_residual
    return expression, residual


def _exclusion_vectors(formulas: list[sympy.Expr], terms: list[sympy.Expr]) -> list[torch.Tensor]:
    """Return the coefficient vectors over ``terms`` of the given formulas and their squares, where the terms express them."""
    position = {term: index for index, term in enumerate(terms)}
    vectors = []
    for formula in formulas:
        for power in (1, 2):
            parts = _variable_terms(formula**power)
            if parts and all(term in position for term in parts):
                vector = torch.zeros(len(terms), dtype=torch.float64)
                for term, coefficient in parts.items():
                    vector[position[term]] = float(coefficient)
                vectors.append(vector)
    return vectors


def _refit_terms(
    expression: sympy.Expr,
    residual: float,
    symbols: list[sympy.Symbol],
    x: torch.Tensor,
    flow: torch.Tensor,
    earlier: list[torch.Tensor],
    independence: float,
    monomials: bool = False,
    exclude: Sequence[sympy.Expr] = (),
) -> tuple[sympy.Expr, float]:
    """Return a sparse sum of candidate terms that is conserved better than ``expression``, or ``expression``.

    An edge snapped to one library function cannot express ``q**2/2 +
    q**4/4`` or ``x - log(x)``, and the ratio of two snapped coefficients is
    only as exact as the splines. For ``H = sum_k c_k t_k(x)`` over the
    terms of :func:`_candidate_terms`, the objective of :func:`_objective`
    is a Rayleigh quotient in ``c``, minimised exactly by a generalised
    eigenvector. Terms that contribute less than ``MIN_TERM_SHARE`` of the
    largest term are dropped. The others are then removed one at a time, the smallest
    contribution first, while the residual stays within ``RESIDUAL_SLACK``
    times the best one (or below ``RESIDUAL_FLOOR``). The result replaces
    ``expression`` when its tidied residual is below half of ``residual``,
    or no worse with fewer terms. ``earlier`` contains the unit gradients of
    earlier quantities at the rows ``x`` (where the flow is non-zero), weighted by ``independence``.
    With ``monomials`` (networks of :func:`_pairs_model`), products of
    variables are candidates too, and a formula too long for its own terms
    is refitted from the other candidates (it counts as having more terms
    than any refit). The coefficients are then kept
    ``M``-orthogonal to the formulas in ``exclude`` and their squares (where
    the candidates express them), so the refit does not return an earlier
    quantity or a function of one. ``M`` is the metric of the quotient.
    """
    long = sympy.count_ops(expression) > TIDY_MAX_OPERATIONS
    if not math.isfinite(residual) or residual <= RESIDUAL_FLOOR or (long and not monomials):
        return expression, residual
    terms = _candidate_terms(expression, symbols, x, monomials)
    unit_flow, moving, weights = _unit_flow(flow)
    rows = x[moving]
    unit_flow = unit_flow[moving]
    gradients = _formula_gradients(terms, rows, [symbol.name for symbol in symbols])
    if not bool(torch.isfinite(gradients).all()):
        return expression, residual
    n_rows = rows.shape[0]
    along_rows = torch.einsum("krn,rn->kr", gradients, unit_flow)
    along = along_rows @ along_rows.T / n_rows
    for other in earlier if independence > 0 else ():
        overlap = torch.einsum("krn,rn->kr", gradients, other.to(gradients))
        along = along + independence * overlap @ overlap.T / n_rows
    metric = torch.einsum("krn,jrn,n->kj", gradients, gradients, weights.to(gradients)) / n_rows
    excluded = _exclusion_vectors(list(exclude), terms) if monomials else []

    def solve(active: list[int]) -> tuple[torch.Tensor, float] | None:
        scales, directions = torch.linalg.eigh(metric[active][:, active])
        keep = scales > METRIC_CUTOFF * scales.max()
        if not bool(keep.any()):
            return None
        whitening = directions[:, keep] / scales[keep].sqrt()
        if excluded:
            # Restrict to the coefficients c with v^T M c = 0 for every excluded v.
            constraints = torch.stack([vector[active] for vector in excluded]).to(metric) @ metric[active][:, active] @ whitening
            _, singular, right = torch.linalg.svd(constraints)
            rank = int((singular > 1e-9 * singular.max().clamp_min(torch.finfo(metric.dtype).tiny)).sum()) if singular.numel() else 0
            if rank >= whitening.shape[1]:
                return None
            whitening = whitening @ right[rank:].T
        values, vectors = torch.linalg.eigh(whitening.T @ along[active][:, active] @ whitening)
        return whitening @ vectors[:, 0], math.sqrt(max(float(values[0]), 0.0))

    active = list(range(len(terms)))
    solved = solve(active)
    if solved is None:
        return expression, residual
    coefficients, best = solved
    # Terms far smaller than the largest fit the data's own errors (finite
    # differences, rounding), not the law, so they go first whatever the residual.
    while len(active) > 1:
        sizes = coefficients.abs() * metric.diagonal()[active].sqrt()
        large = [term for position, term in enumerate(active) if sizes[position] >= MIN_TERM_SHARE * sizes.max()]
        solved = solve(large) if len(large) < len(active) else None
        if solved is None:
            break
        active, (coefficients, best) = large, solved
    allowed = max(RESIDUAL_SLACK * best, RESIDUAL_FLOOR)
    while len(active) > 1:
        sizes = coefficients.abs() * metric.diagonal()[active].sqrt()
        trial = [term for position, term in enumerate(active) if position != int(sizes.argmin())]
        solved = solve(trial)
        if solved is None or solved[1] > allowed:
            break
        active, (coefficients, _) = trial, solved
    candidate = sympy.Add(*(sympy.Float(float(value)) * terms[term] for term, value in zip(active, coefficients)))
    tidy, tidy_residual = tidy_quantity(candidate, x, flow, names=[symbol.name for symbol in symbols])
    fewer = long or len(_variable_terms(tidy)) < len(_variable_terms(expression))
    if tidy_residual < 0.5 * residual or (fewer and tidy_residual <= residual):
        return tidy, tidy_residual
    return expression, residual


def _variable_terms(expression: sympy.Expr) -> dict[sympy.Expr, sympy.Expr]:
    return {term: coefficient for term, coefficient in sympy.expand(expression).as_coefficients_dict().items() if term.free_symbols}


def _combine(formulas: list[sympy.Expr], residuals: list[float], x: torch.Tensor, flow: torch.Tensor, names: list[str], powers: Sequence[int] = (1,)) -> None:
    """Shorten the formulas in place by subtracting multiples of one another.

    Any combination of conserved quantities is conserved, so a formula may
    mix others in: ``q1**2 + p1**2 + (q2**2 + p2**2/4)/100`` next to
    ``q2**2 + p2**2/4``. For every term that two formulas share, the second
    formula is scaled so that its term cancels the first formula's, and it
    is subtracted from the first. The tidied result replaces the first
    formula when it has fewer terms and its residual stays within
    ``RESIDUAL_SLACK`` times the larger of the two residuals. Each
    replacement removes a term, so the loop ends. With ``powers`` (1, 2),
    multiples of the squares of other formulas are subtracted too: the
    refit of a ``"pairs"`` network can return ``E + c L**2`` next to ``L``.
    """
    changed = True
    while changed:
        changed = False
        for first, second in ((a, b) for a in range(len(formulas)) for b in range(len(formulas)) if a != b):
            if not all(math.isfinite(residuals[i]) for i in (first, second)):
                continue
            terms = _variable_terms(formulas[first])
            allowed = max(RESIDUAL_SLACK * max(residuals[first], residuals[second]), RESIDUAL_FLOOR)
            for power in powers:
                other = formulas[second] ** power
                others = _variable_terms(other)
                for term in sorted(set(terms) & set(others), key=str):
                    candidate = sympy.expand(formulas[first] - terms[term] / others[term] * other)
                    if not candidate.free_symbols:
                        continue
                    tidy, residual = tidy_quantity(candidate, x, flow, names=names)
                    if len(_variable_terms(tidy)) < len(terms) and residual <= allowed:
                        formulas[first], residuals[first] = tidy, residual
                        changed = True
                        break
                if changed:
                    break
            if changed:
                break


def _level_set_ratio(model: MultKAN, x: torch.Tensor, generator: torch.Generator) -> float:
    """Return the quantity's spread over ``x`` divided by its spread over ``x`` with each column shuffled.

    The shuffled rows keep each variable's range but break the relations
    between them. Near 0 the states lie on one level set of the quantity,
    as the states of a single trajectory do for every quantity it conserves.
    """
    shuffled = torch.stack([column[torch.randperm(x.shape[0], generator=generator)] for column in x.T], dim=1)
    with torch.no_grad():
        on_data, off_data = model(x)[:, 0].std(), model(shuffled)[:, 0].std()
    return float(on_data / off_data) if off_data > 0 else math.nan


def _gradient_overlaps(quantities: list, x: torch.Tensor, names: list[str]) -> torch.Tensor:
    """Return the (n, n) mean over rows of the squared cosine between the gradients of every two quantities (models or formulas)."""
    directions = []
    for quantity in quantities:
        if isinstance(quantity, sympy.Basic):
            gradient = _formula_gradients([quantity], x, names)[0]
        else:
            with torch.enable_grad():
                gradient = _gradients(quantity, x, create_graph=False)[1][0].detach()
        directions.append(gradient / gradient.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny))
    stacked = torch.stack(directions)
    return torch.einsum("ars,brs->abr", stacked, stacked).square().mean(dim=-1)


def _check_options(n_state: int, n_quantities: Any, width: Any, steps: Any, k: Any, test_fraction: Any, independence: Any) -> list | str:
    if not is_integer(n_quantities) or not 1 <= n_quantities < n_state:
        raise invalid_parameter("n_quantities", f"an integer from 1 to {n_state - 1} (fewer than the {n_state} state variables)", n_quantities)
    if isinstance(width, str):
        if width != PAIRS:
            raise invalid_parameter("width", f"{PAIRS!r} or a list from {n_state} inputs (the state variables) to 1 output", width)
        return width
    width = [n_state, 1] if width is None else list(width)
    if len(width) < 2 or width[0] != n_state or width[-1] != 1:
        raise invalid_parameter("width", f"{PAIRS!r} or a list from {n_state} inputs (the state variables) to 1 output (one quantity)", width)
    if not is_integer(steps) or steps < 1:
        raise invalid_parameter("steps", "an integer >= 1", steps)
    if not is_integer(k) or k < 1:
        raise invalid_parameter("k", "an integer >= 1 (splines of degree 0 have no gradient)", k)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0.0 <= test_fraction < 0.9:
        raise invalid_parameter("test_fraction", "a number in [0, 0.9)", test_fraction)
    if isinstance(independence, bool) or not isinstance(independence, (int, float)) or not independence >= 0:
        raise invalid_parameter("independence", "a number >= 0", independence)
    return width


def find_conserved(
    x: Any,
    flow: Any,
    *,
    n_quantities: int = 1,
    width: Sequence | None = None,
    grid: int = 5,
    k: int = 3,
    steps: int = 30,
    independence: float = 1.0,
    names: Sequence[str] | None = None,
    symbolic: bool = True,
    lib: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> ConservedQuantities:
    """Learn ``n_quantities`` independent functions of the state that the flow keeps constant.

    The quantities are learned one after another, each by its own network.
    An additive network (the default width) and the ``"pairs"`` network
    start at the eigenvector of the next smallest eigenvalue of the exact
    quotient (see :func:`_eigen_start`). These are independent, and
    formulas that mix several quantities are separated by subtracting one
    another. For other
    widths, the objective from the second quantity on also contains the
    squared cosine between the new gradient and each earlier one, weighted
    by ``independence``, so a new quantity is not a function of the
    earlier ones.

    Parameters
    ----------
    x : array of shape (rows, n_state)
        States, for example points along simulated trajectories or samples of the phase space.
    flow : array of shape (rows, n_state)
        ``dx/dt`` at each state. Only its direction matters. Rows where it is
        zero (equilibria) are left out.
    n_quantities : int
        How many quantities to learn, fewer than ``n_state``.
    width : list or "pairs", optional
        The network of one quantity, from ``n_state`` inputs to 1 output,
        with mult nodes as in :class:`MultKAN`. By default ``[n_state, 1]``:
        a sum of functions of one variable each, as the energy ``p**2/(2m) +
        V(q)`` is. ``"pairs"`` adds one function of every product of two
        variables, ``sum_i f_i(x_i) + sum_{a<b} g_ab(x_a x_b)``, which contains
        an angular momentum ``x*p_y - y*p_x``. Both start at the exact
        optimum of their splines. Other widths start at random and often
        stall on a formula that is a function of several quantities.
    grid, k : int
        Spline intervals and degree.
    steps : int
        L-BFGS steps per quantity (up to 20 iterations each) for widths
        that start at random. The default and ``"pairs"`` widths start at
        the optimum of their splines and are not trained further. The grids
        are placed on the data once, before training: a grid update refits
        the splines' values, not their slopes, which this objective depends on.
    independence : float
        Weight of the independence term (widths other than the default).
    names : sequence of str, optional
        Names of the state variables in the formulas; ``x_1, x_2, ...`` by default.
    symbolic : bool
        Snap the trained edges to library functions and return tidy formulas
        (:func:`tidy_quantity`).
    lib : sequence of str, optional
        Library functions for the snapping; the full library by default.
    test_fraction : float
        Share of the rows held out to report ``residual``; 0 reports it on the training rows.
    seed : int
        Seed of the networks and of the split.
    progress : bool
        Show a progress bar.

    Returns
    -------
    ConservedQuantities

    Warns
    -----
    ConservationWarning
        When a quantity's residual on the test rows is above ``WARN_RESIDUAL``
        (1e-2), unless its formula's residual is at most that, and when a
        formula's residual is above it, or the formula is a constant. Also
        when the states lie on one level set of a quantity (its spread over
        the states is below ``LEVEL_SET_RATIO`` of its spread over the
        states with their columns shuffled), as on a single trajectory:
        every function constant along the trajectory then fits the data,
        and several trajectories with different values are needed. It also
        warns when a later quantity's gradient is nearly parallel to an
        earlier one's (mean squared cosine above ``DEPENDENT_COSINE``,
        0.95), and when one formula is exact (residual at most
        ``RESIDUAL_FLOOR``, 1e-6) while another is more than
        ``EXACT_DATA_FACTOR`` (1e3) times worse and above the floor, because
        exact data would confirm a true law to that level.

    Examples
    --------
    A pendulum, ``dq/dt = p`` and ``dp/dt = -sin(q)``:

    >>> import torch
    >>> from multkan.conserved import find_conserved
    >>> q, p = torch.rand(2, 1000, dtype=torch.float64) * 4 - 2
    >>> found = find_conserved(torch.stack([q, p], 1), torch.stack([p, -torch.sin(q)], 1), names=["q", "p"], progress=False)
    >>> found.formulas
    [p**2/2 - cos(q)]
    """
    x, flow = _check_pair(x, flow)
    n_state = x.shape[1]
    width = _check_options(n_state, n_quantities, width, steps, k, test_fraction, independence)
    symbols = _symbols(names, n_state)
    names = [symbol.name for symbol in symbols]
    unit_flow, moving, weights = _unit_flow(flow)
    x, flow, unit_flow = x[moving], flow[moving], unit_flow[moving]
    if x.shape[0] < MIN_ROWS:
        raise InvalidDataError(f"invalid flow: expected at least {MIN_ROWS} rows where the flow is not zero, received {x.shape[0]}")

    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(x.shape[0], generator=generator)
    n_test = min(int(round(test_fraction * x.shape[0])), x.shape[0] - MIN_ROWS)
    test, train = order[:n_test], order[n_test:]
    if n_test == 0:
        test = train
    x_train, flow_train = x[train], unit_flow[train]
    low, high = x_train.min(dim=0).values, x_train.max(dim=0).values

    models: list[MultKAN] = []
    earlier: list[torch.Tensor] = []
    history: dict[str, list[list[float]]] = {"objective": []}
    residual: list[float] = []
    with tqdm(total=steps * n_quantities, desc="find_conserved", disable=not progress, dynamic_ncols=True) as bar:
        for index in range(n_quantities):
            grid_range = (float(low.min()), float(high.max()))
            if width == PAIRS:
                model = _pairs_model(n_state, grid=grid, k=k, seed=seed + index, names=names, grid_range=grid_range)
            else:
                model = MultKAN(width, grid=grid, k=k, seed=seed + index, dtype=torch.float64, input_names=names, grid_range=grid_range)
            model.update_grid(x_train)
            # A network with an exact start takes the index-th eigenvector without the
            # penalty: the penalty cannot keep a new quantity pointwise perpendicular to a
            # mix of earlier ones, while the eigenvectors are independent, and _combine
            # separates their mixes afterwards.
            exact_start = _eigen_start(model, x_train, flow_train, [], independence, rank=index, weights=weights)
            if exact_start:
                # The eigenvector is the optimum of the splines on this grid. L-BFGS from
                # there changed no formula in the tests and took 3/4 of the run time.
                with torch.enable_grad():
                    start = float(_objective(model, x_train, flow_train, [], independence, weights).detach())
                history["objective"].append([start])
                bar.update(steps)
            else:
                history["objective"].append(_train_one(model, x_train, flow_train, earlier, independence, steps, bar, weights))
            models.append(model)
            with torch.enable_grad():
                _, gradients = _gradients(model, x_train, create_graph=False)
            earlier.append(gradients[0] / gradients[0].norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny))
            residual.append(float(conservation_residual(model, x[test], flow[test])[0]))

    symbolic_models = formulas = formula_residual = None
    if symbolic:
        symbolic_models, formulas, formula_residual = [], [], []
        for index, model in enumerate(models):
            snapped = model.copy()
            snapped.auto_symbolic(lib, x=x_train, warn_weak=False)
            raw = snapped.symbolic_formula(symbols)[0]
            try:
                tidy, value = tidy_quantity(raw, x, flow, names=names)
                if width == PAIRS:
                    tidy, value = _drop_small_terms(tidy, value, x, flow, names)
                    tidy, value = tidy_quantity(tidy, x, flow, names=names)
                    refit, _ = _refit_terms(tidy, value, symbols, x[train], flow[train], [], independence, monomials=True, exclude=formulas[:index])
                else:
                    refit, _ = _refit_terms(tidy, value, symbols, x[train], flow[train], earlier[:index], independence)
                if refit is not tidy:
                    tidy, value = refit, float(conservation_residual(refit, x, flow, names=names)[0])
            except SymbolicError:
                tidy, value = raw, math.nan
            symbolic_models.append(snapped)
            formulas.append(tidy)
            formula_residual.append(value)
        _combine(formulas, formula_residual, x, flow, names, powers=(1, 2) if width == PAIRS else (1,))
    if n_quantities > 1:
        try:
            usable = formulas is not None and all(math.isfinite(value) for value in formula_residual)
            overlaps = _gradient_overlaps(formulas if usable else models, x, names)
        except SymbolicError:
            overlaps = _gradient_overlaps(models, x, names)
        for later in range(1, n_quantities):
            earlier_index = int(overlaps[later, :later].argmax())
            if float(overlaps[later, earlier_index]) > DEPENDENT_COSINE:
                warnings.warn(
                    f"quantity {later} is nearly a function of quantity {earlier_index}: the mean squared cosine of their gradients "
                    f"is {float(overlaps[later, earlier_index]):.3f} (1 for dependent, 0 for perpendicular). The width may express fewer "
                    "independent quantities than n_quantities; try a smaller n_quantities or another width",
                    ConservationWarning,
                    stacklevel=user_stacklevel(),
                )
    for index, model in enumerate(models):
        ratio = _level_set_ratio(model, x, generator)
        if ratio < LEVEL_SET_RATIO:
            warnings.warn(
                f"the states lie on one level set of quantity {index}: its spread over them is {ratio:.1e} of its spread over "
                "the same variables' ranges, so the data fix it only up to any function that is constant on them. "
                "This happens with a single trajectory; pass states from several trajectories with different values of the quantity",
                ConservationWarning,
                stacklevel=user_stacklevel(),
            )
    finite = [value for value in formula_residual or [] if math.isfinite(value)]
    best_formula = min(finite) if finite else math.inf
    for index, value in enumerate(residual):
        formula_value = formula_residual[index] if formula_residual is not None else math.nan
        constant = formulas is not None and not formulas[index].free_symbols
        if value > WARN_RESIDUAL and not formula_value <= WARN_RESIDUAL:
            # A formula conserved better than its network (a sum of terms refitted exactly) settles the question.
            warnings.warn(
                f"quantity {index} is conserved only to a residual of {value:.1e} on the test rows (0 is exact, about 0.7 is random); "
                "the flow may be noisy (finite differences of trajectories), or the quantity needs another width: "
                "width='pairs' for products of variables or a hidden layer. For a network trained from a random start, "
                "more steps or a larger grid can help",
                ConservationWarning,
                stacklevel=user_stacklevel(),
            )
        elif formulas is not None and (constant or not formula_value <= WARN_RESIDUAL):
            problem = "is a constant" if constant else f"is conserved only to a residual of {formula_value:.1e}"
            warnings.warn(
                f"the formula of quantity {index}, {str(formulas[index])[:80]}, {problem}, against {value:.1e} for its network; "
                f"no library function, or sum of powers and logarithms, matched the network's edges. Use found.models[{index}] "
                "or a larger lib",
                ConservationWarning,
                stacklevel=user_stacklevel(),
            )
        elif formulas is not None and best_formula <= RESIDUAL_FLOOR and formula_value > max(RESIDUAL_FLOOR, EXACT_DATA_FACTOR * best_formula):
            warnings.warn(
                f"the formula of quantity {index}, {str(formulas[index])[:80]}, is conserved only to a residual of {formula_value:.1e}, "
                f"while another formula reaches {best_formula:.1e}. The data are exact enough to confirm a law to that level, so this "
                "one is probably not conserved: the width may express fewer independent quantities than n_quantities",
                ConservationWarning,
                stacklevel=user_stacklevel(),
            )
    return ConservedQuantities(models, symbolic_models, formulas, residual, formula_residual, names, history)
