"""From data to a formula: the discovery pipeline behind ``multkan discover``.

The pipeline tries structure before splines and keeps every candidate
formula it finds, then reports the simplest one whose test error is within
a factor of the best:

1. Power law: when every input is positive and the target keeps one sign,
   ``log|y|`` is regressed on ``log x``. A near-perfect fit gives
   ``y = C * prod x_i^p_i`` with snapped exponents and constant.
2. Structure searches without a network (:mod:`multkan.structure`): a
   power law times a function of one monomial group,
   ``y = prod x_i^a_i * g(prod x_j^b_j)``, and a product of
   one-dimensional factors ``y = prod g_i(x_i)`` found by alternating
   least squares, and a product times a sum,
   ``y = prod_S g_i * (sum_R h_j + C + prod_Q q_k)``, each function named
   by a one-dimensional symbolic search.
3. Separable KANs: ``[n, 1]`` networks (a sum of one-dimensional
   functions) fitted to ``y`` (additive separability) and, for a one-signed
   target, to ``log|y|`` (multiplicative separability), snapped to
   symbolic functions.
4. MultKANs with a mult node of arity ``n`` and a small sum layer, trained
   with sparsity, pruned, refined, snapped and refitted.

Formulas are reported in the user's variables: nothing is standardised.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy
import torch
from tqdm.auto import tqdm

from .datasets import DATASET_KEYS, check_finite
from .errors import InvalidDataError, MultKANWarning, invalid_parameter
from .names import formula_names
from .structure import SearchTimeout, _check_deadline, _complexity, factored_sum, power_law_group, separable_product
from .symbolic.formula import _snap_constant, formula_error, simplify_constants, snap_formula_constants, snap_value

__all__ = ["Candidate", "DiscoveryResult", "discover", "equivalent"]

logger = logging.getLogger(__name__)

METHODS = ("power_law", "power_law_group", "separable_product", "factored_sum", "additive", "multiplicative", "mult_node")

# The power law is offered as a candidate when the RMS residual of its fit
# to log|y| is at most this (5% scatter): with noisy labels it is judged
# against the other candidates by test error, as they are.
POWER_LAW_SPREAD = 0.05

NETWORKLESS_METHODS = ("power_law", "power_law_group", "separable_product", "factored_sum")

STRUCTURE_SEARCHES = {"power_law_group": power_law_group, "separable_product": separable_product, "factored_sum": factored_sum}

DISCOVERY_LIBRARY = ("x", "x^2", "x^3", "1/x", "1/x^2", "sqrt", "1/sqrt(x)", "exp", "log", "sin", "cos", "tanh", "arcsin", "gaussian", "0")


@dataclass
class Candidate:
    """One formula found by one method.

    Attributes
    ----------
    method : str
    expression : sympy.Expr
    complexity : int
        Number of operations (``sympy.count_ops``) plus the number of symbols.
    train_rmse, test_rmse : float
    width : list or None
        Architecture of the network behind it, if any.
    """

    method: str
    expression: sympy.Expr
    complexity: int
    train_rmse: float
    test_rmse: float
    width: list | None = None
    model: Any = field(default=None, repr=False)
    input_scale: list[float] | None = None


@dataclass
class DiscoveryResult:
    """Outcome of :func:`discover`.

    Attributes
    ----------
    formula : sympy.Expr
        The chosen formula, in the user's variables.
    candidates : list of Candidate
        The Pareto set (complexity against test RMSE), simplest first.
    formula_test_rmse : float
    model_test_rmse : float or None
        Test RMSE of the best network before snapping, in the target's
        units. The network of ``log|y|`` (``multiplicative``) counts
        through ``sign * exp`` of its output.
    widths_tried : list
    seconds : float
    true_formula : sympy.Expr or None
    exact : bool or None
        SRBench's criterion: the difference with the true formula
        simplifies to a constant, or the ratio to a non-zero constant.
    strict : bool or None
        The difference simplifies to 0.
    model : MultKAN or None
        The network of ``network_method``. Its input and output names describe
        what it computes: ``log|y|`` for ``multiplicative``, and ``M /
        1e+30`` for an input that was divided by a power of ten (a
        column's or the target's largest magnitude outside [1e-3, 1e3]).
    network_method : str or None
        The method whose network ``model`` is: the chosen formula's, or
        else the one with the most accurate network.
    network_input_scale : list of float or None
        What each input column is divided by before it enters ``model``
        (1.0 for most columns), so ``model(x / torch.tensor(scale))``.
    skipped : dict of str to str
        Each method that gave no formula, with the reason.
    renamed : dict of str to str
        Each input name that is not a Python identifier, with the name that
        stands for it in the formulas (see :func:`multkan.names.formula_names`).
    """

    formula: sympy.Expr
    candidates: list[Candidate]
    formula_test_rmse: float
    model_test_rmse: float | None
    widths_tried: list
    seconds: float
    method: str
    variables: list[str]
    true_formula: sympy.Expr | None = None
    exact: bool | None = None
    strict: bool | None = None
    model: Any = field(default=None, repr=False)
    network_method: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    renamed: dict[str, str] = field(default_factory=dict)
    network_input_scale: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary."""
        return {
            "formula": str(self.formula),
            "formula_latex": sympy.latex(self.formula),
            # sympify(str(formula)) reads variables named E, I, S or N as sympy's
            # constants; sympify of this form restores the same expression.
            "formula_srepr": sympy.srepr(self.formula),
            "method": self.method,
            "variables": self.variables,
            "renamed": self.renamed,
            "formula_test_rmse": self.formula_test_rmse,
            "model_test_rmse": self.model_test_rmse,
            "widths_tried": self.widths_tried,
            "seconds": self.seconds,
            "true_formula": None if self.true_formula is None else str(self.true_formula),
            "exact": self.exact,
            "strict": self.strict,
            "network_method": self.network_method,
            "skipped": dict(self.skipped),
            "network_inputs": None if self.model is None else list(self.model.input_names),
            "network_output": None if self.model is None else self.model.output_names[0],
            "network_input_scale": self.network_input_scale,
            "candidates": [
                {"method": c.method, "formula": str(c.expression), "complexity": c.complexity, "train_rmse": c.train_rmse, "test_rmse": c.test_rmse, "width": c.width}
                for c in self.candidates
            ],
        }


def equivalent(found: sympy.Expr, truth: sympy.Expr, *, positive: bool = True) -> tuple[bool, bool]:
    """Return ``(exact, strict)`` following SRBench's ground-truth criterion.

    ``exact``: ``truth - found`` simplifies to a constant, or ``truth /
    found`` to a non-zero constant. ``strict``: the difference is 0. With
    ``positive``, a failed check is repeated with every variable taken as
    positive, so ``sqrt(a)*sqrt(b)`` matches ``sqrt(a*b)``; use it only when
    every variable's range is positive, as for the Feynman equations.
    """
    exact, strict = _compare(found, truth)
    if exact or not positive:
        return exact, strict
    substitution = {symbol: sympy.Symbol(symbol.name, positive=True) for symbol in found.free_symbols | truth.free_symbols}
    return _compare(found.xreplace(substitution), truth.xreplace(substitution))


def _equivalent_positional(found, truth, positive):
    return equivalent(found, truth, positive=positive)


def _compare(found: sympy.Expr, truth: sympy.Expr) -> tuple[bool, bool]:
    try:
        difference = sympy.simplify(truth - found)
        if difference == 0:
            return True, True
        if not difference.free_symbols:
            return True, False
        ratio = sympy.simplify(truth / found)
        if not ratio.free_symbols and ratio != 0:
            return True, False
    except (TypeError, ValueError, RecursionError, ZeroDivisionError) as error:
        logger.warning("sympy could not compare %s with %s: %s", found, truth, error)
    return False, False


# Data.

def _prepare(dataset: dict, var_names: Sequence[str] | None) -> tuple[dict[str, torch.Tensor], list[sympy.Symbol]]:
    missing = [key for key in DATASET_KEYS if key not in dataset]
    if missing:
        raise InvalidDataError(f"invalid dataset: missing keys {missing}")
    data = {key: torch.as_tensor(dataset[key], dtype=torch.float64) for key in DATASET_KEYS}
    for part in ("train", "test"):
        if data[f"{part}_label"].ndim == 1:
            data[f"{part}_label"] = data[f"{part}_label"][:, None]
        if data[f"{part}_label"].shape[1] != 1:
            raise InvalidDataError(f"invalid {part}_label: discover fits one target, received shape {tuple(data[f'{part}_label'].shape)}")
    check_finite(data)
    n_var = data["train_input"].shape[1]
    names = [f"x_{i + 1}" for i in range(n_var)] if var_names is None else list(var_names)
    if len(names) != n_var:
        raise invalid_parameter("var_names", f"{n_var} names, one per input column", names)
    return data, [sympy.Symbol(name, real=True) for name in formula_names(names, stacklevel=3)]


def _evaluate(expression, symbols, data) -> tuple[float, float]:
    train = formula_error(expression, symbols, data["train_input"], data["train_label"])
    test = formula_error(expression, symbols, data["test_input"], data["test_label"])
    return train.rmse, test.rmse


# Methods.

def _power_law(data, symbols) -> sympy.Expr | str:
    """Fit ``C * prod x_i^p_i``; return the formula, or the reason none fits."""
    x, y = data["train_input"], data["train_label"][:, 0]
    if not bool((x > 0).all()):
        return "needs positive inputs"
    if not (bool((y > 0).all()) or bool((y < 0).all())):
        return "needs a target of one sign"
    sign = 1 if float(y[0]) > 0 else -1
    # A constant input gets exponent 0: its log column would only duplicate the intercept.
    varying = [i for i in range(x.shape[1]) if float(x[:, i].max() - x[:, i].min()) > 0]
    design = torch.cat([torch.log(x[:, varying]), torch.ones_like(y)[:, None]], dim=1)
    solution = torch.linalg.lstsq(design, torch.log(sign * y)[:, None]).solution[:, 0]
    residual = design @ solution - torch.log(sign * y)
    spread = float(residual.square().mean().sqrt())
    if spread > POWER_LAW_SPREAD:
        return f"no power law fits (RMS residual of log|y| {spread:.2g}, above {POWER_LAW_SPREAD:g})"

    exponents = [sympy.Integer(0)] * x.shape[1]
    for i, value in zip(varying, solution[:-1].tolist()):
        if abs(value) < 1e-3:
            continue
        snapped = snap_value(value, tolerance=2e-2, max_denominator=3)
        if snapped is None or snapped == 0:
            return f"the exponent {value:.4g} of {symbols[i]} is not a simple fraction"
        exponents[i] = sympy.nsimplify(snapped)
    monomial = sympy.Mul(*(s**e for s, e in zip(symbols, exponents)))
    numeric = sympy.lambdify(symbols, monomial, modules="numpy")(*[x[:, i].numpy() for i in range(x.shape[1])])
    ratios = sign * y.numpy() / np.asarray(numeric, dtype=float)
    constant = float(np.median(ratios))
    snapped = _snap_constant(constant, _constant_tolerance(ratios))
    return sign * (snapped if snapped is not None else sympy.Float(constant)) * monomial


def _constant_tolerance(ratios: np.ndarray) -> float:
    """Return the relative distance within which a power law's constant may be replaced by a simple value.

    Three standard errors of the median of ``ratios`` (``y`` over the
    monomial), from their median absolute deviation, bounded to
    ``[1e-6, 1e-3]``. On exact data the constant is known to rounding, so
    44/7, which lies 4e-4 from 2*pi, is not taken for it. With 1% noise on
    500 rows the data cannot distinguish 9.8 from 9.80665.
    """
    logs = np.log(ratios)
    deviation = 1.4826 * float(np.median(np.abs(logs - np.median(logs))))
    standard_error = 1.2533 * deviation / math.sqrt(len(ratios))
    return min(1e-3, max(1e-6, 3 * standard_error))


def _active_edges(model) -> int:
    return int(sum(float(layer.spline_mask.sum() + layer.symbolic_mask.sum()) for layer in model.layers))


def _fit_kan(width, mult_arity, data, target, *, seed, lamb, steps, prune, progress, deadline=None, names=None):
    """Train, optionally prune, refine and retrain a network; raise SearchTimeout between stages after ``deadline``.

    ``names`` is ``(input_names, output_names)`` of the network. Raises
    ValueError when a training stage ends without a finite test loss.
    """
    from .model import MultKAN

    inputs = data["train_input"]
    low = inputs.min(dim=0).values
    high = inputs.max(dim=0).values
    input_names, output_names = names if names is not None else (None, None)
    model = MultKAN(
        width, grid=5, k=3, mult_arity=mult_arity, seed=seed, dtype=torch.float64, grid_range=(float(low.min()), float(high.max())),
        input_names=input_names, output_names=output_names,
    )
    dataset = {"train_input": inputs, "train_label": target[0], "test_input": data["test_input"], "test_label": target[1]}

    def train(**options):
        history = model.fit(dataset, steps=steps, progress=progress, **options)
        if not history["test_loss"] or not math.isfinite(history["test_loss"][-1]):
            raise ValueError("training gave no finite loss on this data")
        return history

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MultKANWarning)
        train(lamb=lamb, update_grid=True)
        for _ in range(3 if prune else 0):
            _check_deadline(deadline)
            pruned = model.prune(node_th=1e-2, edge_th=3e-2)
            changed = _active_edges(pruned) != _active_edges(model)
            model = pruned
            if not changed:
                break
            train(lamb=lamb, update_grid=True)
        if prune:
            _check_deadline(deadline)
            train(update_grid=True)
        _check_deadline(deadline)
        model = model.refine(10)
        history = train(update_grid=False)
    return model, dataset, history["test_loss"][-1]


def _power_of_ten(values: torch.Tensor) -> float:
    """Return 1, or the power of ten nearest the largest |value| when that lies outside [1e-3, 1e3]."""
    largest = float(values.abs().max())
    if largest == 0 or 1e-3 <= largest <= 1e3:
        return 1.0
    return 10.0 ** round(math.log10(largest))


def _scaled_for_network(data: dict) -> tuple[dict, list[float], float]:
    """Return ``data`` with inputs and labels divided by powers of ten, the input scales and the label scale.

    Only columns whose largest magnitude lies outside [1e-3, 1e3] are
    divided, so that the network's grids and L-BFGS see numbers near 1: a
    sun-planet force (masses near 1e30, distances near 1e11) gave an
    infinite loss on the raw values. A formula ``f`` found on the scaled
    data is ``label_scale * f(x_1 / s_1, ...)`` in the user's units.
    """
    input_scales = [_power_of_ten(torch.cat([data["train_input"][:, i], data["test_input"][:, i]])) for i in range(data["train_input"].shape[1])]
    label_scale = _power_of_ten(data["train_label"])
    divisor = torch.tensor(input_scales, dtype=data["train_input"].dtype)
    scaled = {
        "train_input": data["train_input"] / divisor, "test_input": data["test_input"] / divisor,
        "train_label": data["train_label"] / label_scale, "test_label": data["test_label"] / label_scale,
    }
    return scaled, input_scales, label_scale


def _scaled_name(name: str, scale: float) -> str:
    return name if scale == 1.0 else f"{name} / {scale:g}"


LIBRARY_TIERS = (("x", "0"), ("x", "x^2", "1/x", "sqrt", "0"), DISCOVERY_LIBRARY)


def _symbolic_from_kan(model, dataset, symbols, *, steps, progress, reference_rmse, deadline=None):
    """Snap the network with the smallest library tier that keeps the test RMSE near the network's.

    Tiers go from linear edges only to the whole discovery library. A tier
    is accepted when the refitted symbolic model's test RMSE is at most
    three times ``reference_rmse`` (the spline network's) plus ``1e-8``
    times the label scale. The last tier is always accepted.
    """
    scale = float(dataset["train_label"].abs().max())
    for position, tier in enumerate(LIBRARY_TIERS):
        _check_deadline(deadline)
        candidate = model.copy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MultKANWarning)
            # discover scores each formula on test data itself, so weak edges need no warning here.
            candidate.auto_symbolic(list(tier), selection="simplest", warn_weak=False)
            history = candidate.fit(dataset, steps=steps, update_grid=False, progress=progress)
            last = position == len(LIBRARY_TIERS) - 1
            if not last and not history["test_loss"][-1] <= 3 * reference_rmse + 1e-8 * scale:
                continue
            candidate.snap_constants(dataset)
        expression = candidate.symbolic_formula([str(s) for s in symbols])[0]
        return sympy.sympify(expression).xreplace({sympy.Symbol(str(s), real=True): s for s in symbols})


def _run_bounded(function, arguments: tuple, seconds: float, default):
    """Run ``function(*arguments)`` in a forked process and return ``default`` after ``seconds``.

    sympy's ``simplify`` can run for minutes on expressions with many
    floating-point constants, and a thread cannot be stopped, so the work
    goes to a child process that is terminated when time is up.
    """
    import multiprocessing

    context = multiprocessing.get_context("fork")
    queue = context.Queue(maxsize=1)

    def target():
        try:
            queue.put(function(*arguments))
        except Exception as error:  # noqa: BLE001 - any sympy failure means "no result"
            queue.put(error)

    process = context.Process(target=target, daemon=True)
    process.start()
    try:
        result = queue.get(timeout=seconds)
    except Exception:  # noqa: BLE001 - queue.Empty on timeout
        result = default
    process.join(timeout=1)
    if process.is_alive():
        process.kill()
        process.join()
    return default if isinstance(result, Exception) else result


def _clean(expression: sympy.Expr, seconds: float = 10.0) -> sympy.Expr:
    expression = snap_formula_constants(expression)
    return _run_bounded(sympy.simplify, (expression,), seconds, expression)


def discover(
    dataset: dict,
    var_names: Sequence[str] | None = None,
    *,
    target_name: str = "y",
    true_formula: sympy.Expr | str | None = None,
    seed: int = 0,
    steps: int = 50,
    methods: Sequence[str] = METHODS,
    tolerance: float = 2.0,
    stop_rmse: float | None = None,
    stop_needs_network: bool = False,
    time_limit: float | None = None,
    progress: bool = True,
) -> DiscoveryResult:
    """Search for a closed-form formula ``y = f(x)`` that fits ``dataset``.

    Parameters
    ----------
    dataset : dict
        ``train_input`` (n, n_var), ``train_label`` (n,) or (n, 1),
        ``test_input``, ``test_label``.
    var_names : sequence of str, optional
        Names of the input columns, used in the formula.
    target_name : str
        Name of the target, used in the networks' output names (see
        ``DiscoveryResult.model``).
    true_formula : sympy expression or str, optional
        When known, the result reports whether the formula was recovered.
    seed : int
        Seed of every model.
    steps : int
        L-BFGS steps per training phase.
    methods : sequence of str
        Any of ``"power_law"``, ``"power_law_group"``,
        ``"separable_product"``, ``"factored_sum"``, ``"additive"``,
        ``"multiplicative"``, ``"mult_node"``, run in the given order.
    tolerance : float
        A simpler candidate is chosen when its test RMSE is at most
        ``tolerance`` times the best one (plus ``1e-10`` times the label
        scale).
    stop_rmse : float, optional
        Skip the remaining methods once a candidate's test RMSE is at most
        ``stop_rmse`` times the largest label magnitude.
    stop_needs_network : bool
        With ``stop_rmse``, keep going until some method has also trained a
        network, so that the result has one to plot and save.
    time_limit : float, optional
        Seconds after which no further method starts and the running one
        stops; those methods are listed in ``skipped``. A structure search
        stops between candidates, a network method between its training
        stages, so a run can take longer by one stage.
        When no method has found a formula by then, discover raises
        InvalidDataError as for a run where every method failed.
    progress : bool
        Show progress bars.

    Returns
    -------
    DiscoveryResult
    """
    if isinstance(methods, str):
        methods = (methods,)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise invalid_parameter("methods", f"a non-empty subset of {list(METHODS)}", list(methods))
    if not isinstance(steps, int) or steps < 1:
        raise invalid_parameter("steps", "an integer >= 1", steps)
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0):
        raise invalid_parameter("time_limit", "a number of seconds > 0, or None for no limit", time_limit)
    if not isinstance(target_name, str) or not target_name:
        raise invalid_parameter("target_name", "a non-empty string", target_name)
    if not isinstance(dataset, dict):
        raise invalid_parameter("dataset", "a dict with train_input, train_label, test_input and test_label (see create_dataset or dataset_from_arrays)", type(dataset).__name__)
    start = time.perf_counter()
    deadline = None if time_limit is None else start + time_limit
    data, symbols = _prepare(dataset, var_names)
    n_var = len(symbols)
    candidates: list[Candidate] = []
    widths_tried: list = []
    model_rmse: float | None = None
    y_train, y_test = data["train_label"], data["test_label"]
    one_signed = bool((y_train > 0).all()) or bool((y_train < 0).all())

    skipped: dict[str, str] = {}
    if "multiplicative" in methods and not one_signed:
        skipped["multiplicative"] = "needs a target of one sign"
    stages = [m for m in methods if m not in skipped]
    bar = tqdm(total=len(stages), desc="discover", disable=not progress)
    scale = float(y_train.abs().max())
    position = -1
    while position + 1 < len(stages):
        position += 1
        fitting = [c for c in candidates if stop_rmse is not None and c.test_rmse <= stop_rmse * scale]
        if fitting and stop_needs_network and not any(c.model is not None for c in candidates):
            # Only a network is missing: train first the one whose structure matches the formula.
            stages[position:] = _network_order(fitting[0].expression, stages[position:])
        method = stages[position]
        bar.set_postfix_str(method)
        try:
            if deadline is not None and time.perf_counter() >= deadline:
                skipped[method] = f"not run: the time limit of {time_limit:g} s was reached"
                continue
            if stop_rmse is not None and method in NETWORKLESS_METHODS and any(c.test_rmse <= stop_rmse * scale for c in candidates):
                # Only the network is still missing, and this method trains none.
                skipped[method] = "not run: an earlier formula already fits to stop_rmse"
                continue
            try:
                candidate = _run_method(method, data, symbols, seed=seed, steps=steps, widths_tried=widths_tried, deadline=deadline, target_name=target_name)
            except SearchTimeout:
                skipped[method] = f"stopped: the time limit of {time_limit:g} s was reached"
                continue
            except (ArithmeticError, ValueError, RuntimeError, KeyError, TypeError) as error:
                # sympy reports formulas it cannot handle through KeyError and TypeError too.
                logger.warning("method %s failed: %s", method, error)
                skipped[method] = f"failed: {error}"
                continue
            if isinstance(candidate, str):
                skipped[method] = candidate
                continue
            if candidate.model is not None:
                rmse = candidate.model[1]
                model_rmse = rmse if model_rmse is None else min(model_rmse, rmse)
                candidate.model = candidate.model[0]
            candidates.append(candidate)
            accurate = [c for c in candidates if stop_rmse is not None and c.test_rmse <= stop_rmse * scale]
            if accurate and (not stop_needs_network or any(c.model is not None for c in candidates)):
                # The bar ends full, with the methods left out counted as done, and keeps its total.
                bar.update(len(stages) - position - 1)
                bar.set_postfix_str(f"{method}: fits to stop_rmse, {len(stages) - position - 1} methods not needed")
                break
        finally:
            bar.update(1)
    bar.close()
    # In the order the methods were given, whenever each was ruled out.
    skipped = {method: skipped[method] for method in methods if method in skipped}

    if not candidates:
        reasons = "; ".join(f"{method}: {reason}" for method, reason in skipped.items())
        if deadline is not None and time.perf_counter() >= deadline:
            raise InvalidDataError(f"discover found no formula within the time limit of {time_limit:g} s ({reasons}). Raise time_limit.")
        raise InvalidDataError(f"discover found no formula: every method failed on this data ({reasons}). Check the data or give more samples.")
    chosen, pareto = _choose(candidates, tolerance, float(y_train.abs().max()))
    network_candidate = _network_of(chosen, candidates)
    result = DiscoveryResult(
        formula=chosen.expression,
        candidates=pareto,
        formula_test_rmse=chosen.test_rmse,
        model_test_rmse=model_rmse,
        widths_tried=widths_tried,
        seconds=time.perf_counter() - start,
        method=chosen.method,
        variables=[str(s) for s in symbols],
        renamed={str(name): s.name for name, s in zip(var_names or [], symbols) if str(name) != s.name},
        model=None if network_candidate is None else network_candidate.model,
        network_method=None if network_candidate is None else network_candidate.method,
        network_input_scale=None if network_candidate is None else network_candidate.input_scale,
        skipped=skipped,
    )
    if true_formula is not None:
        truth = sympy.sympify(true_formula, locals={str(s): s for s in symbols}) if isinstance(true_formula, str) else true_formula
        truth = truth.xreplace({sympy.Symbol(str(s)): s for s in symbols})
        result.true_formula = truth
        positive = bool((data["train_input"] > 0).all())
        result.exact, result.strict = _run_bounded(_equivalent_positional, (chosen.expression, truth, positive), 30.0, (False, False))
    return result


def _network_order(formula: sympy.Expr, remaining: list[str]) -> list[str]:
    """Return ``remaining`` with the network methods that match ``formula``'s top level first.

    A product or power (``a*b**2``) moves ``multiplicative`` (a network of
    ``log|y|``) and ``mult_node`` to the front, a sum moves ``additive``.
    Both groups keep their given order, as do the other methods. So the
    network saved next to a formula found without one has the formula's
    structure. On ``a*b**2`` with targets up to 125, an additive network
    reaches only a test RMSE of 8.1.
    """
    _, term = formula.as_independent(*formula.free_symbols, as_Add=True)
    _, core = term.as_independent(*term.free_symbols, as_Add=False)
    if core.is_Mul or core.is_Pow:
        matching = {"multiplicative", "mult_node"}
    elif core.is_Add:
        matching = {"additive"}
    else:
        return remaining
    return [method for method in remaining if method in matching] + [method for method in remaining if method not in matching]


def _run_method(method, data, symbols, *, seed, steps, widths_tried, deadline=None, target_name="y") -> Candidate | str:
    """Run one method; return its candidate, or the reason it found none."""
    n_var = len(symbols)
    if method == "power_law":
        expression = _power_law(data, symbols)
        if isinstance(expression, str):
            return expression
        train, test = _evaluate(expression, symbols, data)
        return Candidate("power_law", expression, _complexity(expression), train, test)

    if method in STRUCTURE_SEARCHES:
        expression = STRUCTURE_SEARCHES[method](data["train_input"], data["train_label"], symbols, deadline=deadline)
        if expression is None:
            return "no formula of this structure fits" if method != "power_law_group" else "no formula of this structure, other than a plain power law, fits"
        expression = _clean(expression)
        train, test = _evaluate(expression, symbols, data)
        if not math.isfinite(test):
            return "the formula is not finite on the test rows"
        return Candidate(method, expression, _complexity(expression), train, test)

    # transform: the sign of y when the network fits log|y|, else None.
    if method == "additive":
        width, arity, transform = [n_var, 1], 2, None
    elif method == "multiplicative":
        width, arity = [n_var, 1], 2
        transform = 1.0 if float(data["train_label"][0, 0]) > 0 else -1.0
    else:
        if n_var < 2:
            return "needs at least two inputs"
        width, arity, transform = [n_var, [0, 1], 1], n_var, None

    widths_tried.append({"method": method, "width": width, "mult_arity": arity})
    sparse = method == "mult_node"
    scaled, input_scales, label_scale = _scaled_for_network(data)
    if transform is not None:
        target = (torch.log(transform * scaled["train_label"]), torch.log(transform * scaled["test_label"]))
    else:
        target = (scaled["train_label"], scaled["test_label"])
    output_name = _scaled_name(target_name, label_scale)
    names = (
        [_scaled_name(str(symbol), scale) for symbol, scale in zip(symbols, input_scales)],
        [f"log|{output_name}|" if transform is not None else output_name],
    )
    model, dataset, rmse = _fit_kan(
        width, arity, scaled, target, seed=seed, lamb=0.01 if sparse else 0.0, steps=steps, prune=sparse, progress=False, deadline=deadline, names=names
    )
    if transform is not None:
        expression = transform * _product_of_factors(model, scaled, symbols)
        # The network predicts log|y|: its RMSE in the target's units is that of sign * exp(output).
        with torch.no_grad():
            prediction = transform * torch.exp(model(scaled["test_input"].to(model.dtype)).to(torch.float64))
        rmse = float(torch.sqrt(torch.mean((prediction - scaled["test_label"].to(torch.float64)) ** 2)))
    else:
        expression = _symbolic_from_kan(model, dataset, symbols, steps=steps, progress=False, reference_rmse=rmse, deadline=deadline)
    # Back to the user's units; the network's RMSE too.
    expression = label_scale * expression.xreplace({symbol: symbol / scale for symbol, scale in zip(symbols, input_scales) if scale != 1.0})
    rmse *= label_scale
    # simplify_constants refits and snaps the constants with an error check,
    # so one sympy simplification afterwards is enough.
    expression = _clean(simplify_constants(expression, symbols, data["train_input"], data["train_label"]))
    train, test = _evaluate(expression, symbols, data)
    if not math.isfinite(test):
        return "the snapped formula is not finite on the test rows"
    return Candidate(method, expression, _complexity(expression), train, test, width, (model, rmse), input_scales)


def _product_of_factors(model, data, symbols) -> sympy.Expr:
    """Turn a ``[n, 1]`` network fitted to ``log|y|`` into ``C * prod_i g_i(x_i)``.

    Each edge ``phi_i`` of the network gives a factor ``g_i = exp(phi_i -
    mean(phi_i))``. The factor itself, not ``phi_i``, is snapped to a
    library function, so ``sin(theta)`` or ``1/x`` factors are found even
    though ``log(sin(theta))`` is in no library. ``C`` starts at
    ``exp(sum_i mean(phi_i))`` and is refitted with the other constants.
    """
    from .symbolic import fit_affine, rank_candidates
    from .symbolic.edges import _simplest_choices

    inputs = data["train_input"].to(model.dtype)
    with torch.no_grad():
        edges = model.activations(inputs)[0]["edges"][:, :, 0].to(torch.float64)
        offset = float(model.layers[0].node_bias[0]) + float(edges.mean(dim=0).sum())
    factors = torch.exp(edges - edges.mean(dim=0)).T.contiguous()
    library = [name for name in DISCOVERY_LIBRARY if name != "0"]
    fit = fit_affine(inputs.T.to(torch.float64).contiguous(), factors, library)
    choices = _simplest_choices(fit, 0.0, 10.0, rank_candidates(fit).best)

    expression = sympy.Float(math.exp(offset))
    for i, choice in enumerate(choices):
        if choice < 0:
            raise ValueError(f"no library function fits the factor of {symbols[i]}")
        function = fit.functions[choice]
        a, b, c, d = (float(v) for v in fit.params[i, choice])
        term = function.sympy_fn(sympy.Float(a) * symbols[i] + sympy.Float(b))
        expression = expression * (sympy.Float(c) * term + sympy.Float(d))
    return expression


def _network_of(chosen: Candidate, candidates: list[Candidate]) -> Candidate | None:
    """Return the chosen candidate when it has a network, else the candidate with the most accurate network, else None."""
    if chosen.model is not None:
        return chosen
    with_model = [c for c in candidates if c.model is not None]
    if not with_model:
        return None
    return min(with_model, key=lambda c: c.test_rmse)


def _choose(candidates: list[Candidate], tolerance: float, scale: float) -> tuple[Candidate, list[Candidate]]:
    ordered = sorted(candidates, key=lambda c: (c.complexity, c.test_rmse))
    pareto, best_error = [], math.inf
    for candidate in ordered:
        if candidate.test_rmse < best_error:
            pareto.append(candidate)
            best_error = candidate.test_rmse
    floor = 1e-10 * max(scale, 1e-300)
    chosen = next(c for c in pareto if c.test_rmse <= tolerance * best_error + floor)
    return chosen, pareto
