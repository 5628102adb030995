"""Registry of the Feynman symbolic-regression equations.

The registry ships the 100 main and 20 bonus equations of the AI Feynman
benchmark (S.-M. Udrescu and M. Tegmark, 2020, "AI Feynman: a
physics-inspired method for symbolic regression", Science Advances), the
same tables that SRBench uses for its ground-truth Feynman track. The
records live in ``multkan/data/feynman.json``, which
``scripts/build_feynman_registry.py`` generates from the public tables and
which records in each record's ``notes`` every change made to the tables.

Examples
--------
>>> from multkan.feynman import get_equation, list_equations
>>> len(list_equations("main")), len(list_equations("bonus"))
(100, 20)
>>> eq = get_equation("I.6.20a")
>>> eq.id, eq.output, eq.n_var
('I.6.2a', 'f', 1)
>>> data = eq.sample(n_train=8, n_test=4, seed=1)
>>> data["train_input"].shape, data["train_label"].shape
(torch.Size([8, 1]), torch.Size([8, 1]))
"""

from __future__ import annotations

import difflib
import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sympy
import torch
from sympy.core.function import AppliedUndef
from sympy.parsing.sympy_parser import parse_expr, standard_transformations

from .errors import InvalidDataError, InvalidParameterError, invalid_parameter

__all__ = ["FeynmanEquation", "get_equation", "list_equations"]

REGISTRY_PATH = Path(__file__).resolve().parent / "data" / "feynman.json"
FORMAT_VERSION = 1
SETS = ("main", "bonus")

# Names a formula may use besides its variables. The parser resolves only these
# names and the variables, so a variable such as `gamma`, `beta`, `E`, `I` or `S`
# stays a symbol and an undeclared one is rejected, never read as the sympy
# function or constant of the same name.
FORMULA_NAMESPACE: dict[str, Any] = {
    "exp": sympy.exp,
    "log": sympy.log,
    "sqrt": sympy.sqrt,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "asin": sympy.asin,
    "acos": sympy.acos,
    "atan": sympy.atan,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "tanh": sympy.tanh,
    "pi": sympy.pi,
}

# Constructors that the sympy parser's transformations insert for numbers and names.
_PARSER_NAMESPACE: dict[str, Any] = {
    "Integer": sympy.Integer,
    "Float": sympy.Float,
    "Rational": sympy.Rational,
    "Symbol": sympy.Symbol,
    "Function": sympy.Function,
}


def parse_formula(formula: str, names: Sequence[str]) -> tuple[tuple[sympy.Symbol, ...], sympy.Expr]:
    """Parse a formula string into real sympy symbols and a sympy expression.

    Each name in `names` becomes ``sympy.Symbol(name, real=True)``. The formula
    may use these symbols, integer and decimal literals, ``pi`` and the
    functions in :data:`FORMULA_NAMESPACE`.

    Parameters
    ----------
    formula : str
        Expression in sympy syntax, for example ``"q1*q2/(4*pi*epsilon*r**2)"``.
    names : sequence of str
        Variable names, in the order the symbols are returned.

    Returns
    -------
    symbols : tuple of sympy.Symbol
        One real symbol per name, in the order of `names`.
    expr : sympy.Expr
        The parsed expression.

    Raises
    ------
    InvalidParameterError
        If the formula does not parse, or uses a name that is neither a
        variable nor an allowed function or constant.
    """
    names = list(names)
    reserved = sorted(set(names) & set(FORMULA_NAMESPACE))
    if reserved:
        raise invalid_parameter("variable names", f"names other than the formula functions and constants {sorted(FORMULA_NAMESPACE)}", reserved)
    if len(set(names)) != len(names):
        raise invalid_parameter("variable names", "distinct names", names)

    symbols = tuple(sympy.Symbol(name, real=True) for name in names)
    local_dict = dict(zip(names, symbols))
    global_dict = {**_PARSER_NAMESPACE, **FORMULA_NAMESPACE}
    try:
        expr = parse_expr(formula, local_dict=local_dict, global_dict=global_dict, transformations=standard_transformations)
    except (SyntaxError, TypeError, ValueError) as error:
        raise InvalidParameterError(f"invalid formula {formula!r}: sympy cannot parse it ({error}). Write it in sympy syntax.") from error
    if not isinstance(expr, sympy.Expr):
        raise InvalidParameterError(f"invalid formula {formula!r}: it parses to {type(expr).__name__}, not to an expression")

    unknown_functions = sorted(str(call.func) for call in expr.atoms(AppliedUndef))
    if unknown_functions:
        raise InvalidParameterError(
            f"invalid formula {formula!r}: unknown functions {unknown_functions}. Allowed functions are {sorted(FORMULA_NAMESPACE)}."
        )
    unknown_names = sorted(str(symbol) for symbol in expr.free_symbols - set(symbols))
    if unknown_names:
        raise InvalidParameterError(f"invalid formula {formula!r}: names {unknown_names} are not among the variables {names}. Declare them as variables.")
    return symbols, expr


@dataclass(frozen=True)
class FeynmanEquation:
    """One equation of the Feynman registry.

    Parameters
    ----------
    id : str
        Identifier in the public table, such as ``"I.6.2a"`` or ``"test_1"``.
    aliases : tuple of str
        Other identifiers that :func:`get_equation` accepts, such as the
        equation number ``"I.6.20a"`` or ``"bonus_1"``.
    set : {"main", "bonus"}
        Table the equation comes from.
    output : str
        Name of the output quantity.
    formula : str
        Right-hand side in sympy syntax.
    variables : tuple of (name, low, high)
        Input variables in column order, each sampled uniformly in
        ``[low, high]``.
    name : str or None
        Name that the bonus table gives, such as ``"Compton Scattering"``.
    number : int or None
        Row number in the public table.
    valid : bool
        False when the formula is not real and finite over its ranges. Such
        records stay out of :func:`list_equations` by default and
        :meth:`sample` rejects them.
    notes : tuple of str
        Each change made to the public table row, and why.
    """

    id: str
    aliases: tuple[str, ...]
    set: str
    output: str
    formula: str
    variables: tuple[tuple[str, float, float], ...]
    name: str | None = None
    number: int | None = None
    valid: bool = True
    notes: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.set not in SETS:
            raise invalid_parameter("set", f"one of {SETS}", self.set)
        if not self.variables:
            raise invalid_parameter("variables", "at least one (name, low, high) entry", self.variables)
        for variable in self.variables:
            if len(variable) != 3:
                raise invalid_parameter("variables", "(name, low, high) entries", variable)
            name, low, high = variable
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise invalid_parameter(f"range of {name}", "finite bounds with low < high", (low, high))

    @property
    def n_var(self) -> int:
        """Number of input variables."""
        return len(self.variables)

    @property
    def variable_names(self) -> tuple[str, ...]:
        """Variable names in column order."""
        return tuple(name for name, _, _ in self.variables)

    @functools.cached_property
    def _parsed(self) -> tuple[tuple[sympy.Symbol, ...], sympy.Expr]:
        return parse_formula(self.formula, self.variable_names)

    @property
    def symbols(self) -> tuple[sympy.Symbol, ...]:
        """Real sympy symbols of the variables, in column order."""
        return self._parsed[0]

    @property
    def expr(self) -> sympy.Expr:
        """Formula as a sympy expression of :attr:`symbols`, parsed once and cached."""
        return self._parsed[1]

    @functools.cached_property
    def _numpy_function(self) -> Callable[..., Any]:
        return sympy.lambdify(self.symbols, self.expr, modules="numpy", dummify=True)

    def _evaluate_array(self, x: np.ndarray) -> np.ndarray:
        values = self._numpy_function(*(x[:, column] for column in range(self.n_var)))
        return np.array(np.broadcast_to(np.asarray(values, dtype=np.float64), (x.shape[0],)))

    def evaluate(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the formula in float64 on a batch of inputs.

        Parameters
        ----------
        x : torch.Tensor or array_like of shape (N, n_var)
            Inputs, one column per variable in the order of :attr:`variables`.

        Returns
        -------
        torch.Tensor of shape (N,)
            Formula values as float64, on the device of `x`. Outside the
            variable ranges a value can be NaN or inf, and numpy then warns.

        Raises
        ------
        InvalidDataError
            If `x` does not have shape (N, n_var).
        """
        tensor = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
        if tensor.ndim != 2 or tensor.shape[1] != self.n_var:
            raise InvalidDataError(
                f"invalid input for {self.id}: expected shape (N, {self.n_var}) with columns {list(self.variable_names)}, "
                f"received {tuple(tensor.shape)}"
            )
        array = tensor.detach().to(device="cpu", dtype=torch.float64).numpy()
        return torch.from_numpy(self._evaluate_array(array)).to(tensor.device)

    def sample(
        self,
        n_train: int = 1000,
        n_test: int = 1000,
        *,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        noise: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Sample a training and a test set with inputs uniform in the variable ranges.

        Inputs are drawn and labels computed in float64, then both are cast
        to `dtype`. The training set, the test set and the noise come from
        three independent streams of ``numpy.random.SeedSequence(seed)``, so
        the test set does not depend on `n_train`. The global torch and numpy
        random states are not used.

        Parameters
        ----------
        n_train, n_test : int
            Number of training and test samples, each at least 1.
        seed : int
            Non-negative seed of the local generators.
        dtype : torch.dtype
            Floating-point dtype of the returned tensors.
        noise : float
            Relative label noise. Gaussian noise with standard deviation
            ``noise`` times the root mean square of the noise-free training
            labels is added to the training labels. Test labels stay
            noise-free, so test error measures how well the law is recovered.

        Returns
        -------
        dict of torch.Tensor
            ``train_input`` (n_train, n_var), ``train_label`` (n_train, 1),
            ``test_input`` (n_test, n_var), ``test_label`` (n_test, 1).

        Raises
        ------
        InvalidParameterError
            If an argument is out of range, or the equation is marked invalid.
        InvalidDataError
            If a label is not finite.
        """
        for argument, value in (("n_train", n_train), ("n_test", n_test)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise invalid_parameter(argument, "an integer >= 1", value)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise invalid_parameter("seed", "an integer >= 0", seed)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise invalid_parameter("dtype", "a floating-point torch dtype such as torch.float32", dtype)
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
            raise invalid_parameter("noise", "a finite number >= 0", noise)
        if not self.valid:
            reasons = "; ".join(self.notes) or "no reason recorded"
            raise InvalidParameterError(f"cannot sample {self.id}: the equation is marked invalid ({reasons})")

        train_stream, test_stream, noise_stream = (np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(3))
        low = np.array([low for _, low, _ in self.variables], dtype=np.float64)
        high = np.array([high for _, _, high in self.variables], dtype=np.float64)
        train_input = train_stream.uniform(low, high, size=(n_train, self.n_var))
        test_input = test_stream.uniform(low, high, size=(n_test, self.n_var))
        train_label = self._checked_labels(train_input, "train_label")
        test_label = self._checked_labels(test_input, "test_label")

        if noise > 0:
            scale = noise * float(np.sqrt(np.mean(train_label**2)))
            train_label = train_label + noise_stream.normal(0.0, scale, size=n_train)

        arrays = {
            "train_input": train_input,
            "train_label": train_label[:, None],
            "test_input": test_input,
            "test_label": test_label[:, None],
        }
        return {key: torch.from_numpy(array).to(dtype) for key, array in arrays.items()}

    def _checked_labels(self, x: np.ndarray, part: str) -> np.ndarray:
        labels = self._evaluate_array(x)
        bad_rows = np.flatnonzero(~np.isfinite(labels))
        if bad_rows.size:
            example = dict(zip(self.variable_names, x[bad_rows[0]].tolist()))
            raise InvalidDataError(
                f"invalid {part} for {self.id}: {bad_rows.size} labels are not finite, for example at {example}. "
                "The formula or a variable range in multkan/data/feynman.json needs fixing."
            )
        return labels

    def __str__(self) -> str:
        return f"{self.id}: {self.output} = {self.formula}"


def _equation_from_record(record: dict[str, Any]) -> FeynmanEquation:
    return FeynmanEquation(
        id=record["id"],
        aliases=tuple(record["aliases"]),
        set=record["set"],
        output=record["output"],
        formula=record["formula"],
        variables=tuple((item["name"], float(item["low"]), float(item["high"])) for item in record["variables"]),
        name=record.get("name"),
        number=record.get("number"),
        valid=bool(record.get("valid", True)),
        notes=tuple(record.get("notes", ())),
    )


@functools.lru_cache(maxsize=1)
def _registry() -> tuple[dict[str, FeynmanEquation], dict[str, str]]:
    """Load the registry once: equations by id, and each lower-cased id or alias mapped to its id."""
    with REGISTRY_PATH.open(encoding="utf-8") as handle:
        document = json.load(handle)
    if document.get("format_version") != FORMAT_VERSION:
        raise InvalidDataError(
            f"invalid registry {REGISTRY_PATH}: expected format_version {FORMAT_VERSION}, "
            f"received {document.get('format_version')!r}. Regenerate it with scripts/build_feynman_registry.py."
        )

    equations: dict[str, FeynmanEquation] = {}
    keys: dict[str, str] = {}
    for record in document["equations"]:
        equation = _equation_from_record(record)
        for key in (equation.id, *equation.aliases):
            folded = key.lower()
            if folded in keys:
                raise InvalidDataError(f"invalid registry {REGISTRY_PATH}: id or alias {key!r} appears twice")
            keys[folded] = equation.id
        equations[equation.id] = equation
    return equations, keys


def list_equations(set: str | None = None, *, include_invalid: bool = False) -> list[str]:
    """List equation ids in table order.

    Parameters
    ----------
    set : {"main", "bonus"} or None
        Table to list; None lists both, main first.
    include_invalid : bool
        Also list equations marked invalid (formula not real and finite over
        the listed ranges).

    Returns
    -------
    list of str
        Table ids, which :func:`get_equation` accepts.
    """
    if set is not None and set not in SETS:
        raise invalid_parameter("set", "'main', 'bonus' or None", set)
    equations, _ = _registry()
    return [
        equation.id
        for equation in equations.values()
        if (set is None or equation.set == set) and (include_invalid or equation.valid)
    ]


def get_equation(id: str) -> FeynmanEquation:
    """Return the equation with a given id or alias, ignoring case.

    Parameters
    ----------
    id : str
        Table id (``"I.6.2a"``, ``"test_9"``), equation number where the
        table shortens it (``"I.6.20a"``), or ``"bonus_9"`` for ``"test_9"``.

    Returns
    -------
    FeynmanEquation

    Raises
    ------
    InvalidParameterError
        If no equation has that id or alias. The message lists close matches.
    """
    if not isinstance(id, str):
        raise invalid_parameter("equation id", "a string such as 'I.6.2a' or 'test_1'", id)
    equations, keys = _registry()
    folded = id.strip().lower()
    if folded in keys:
        return equations[keys[folded]]

    spellings = {key.lower(): key for equation in equations.values() for key in (equation.id, *equation.aliases)}
    matches = difflib.get_close_matches(folded, list(spellings), n=5, cutoff=0.6)
    if matches:
        hint = "Close matches: " + ", ".join(repr(spellings[match]) for match in matches)
    else:
        hint = "There is no close match"
    raise InvalidParameterError(f"unknown Feynman equation id {id!r}. {hint}. Call list_equations() for all ids.")
