"""The kanpiler: compile a sympy expression into a MultKAN whose edges are symbolic.

Every function application ``f(k*g + b)`` becomes one symbolic edge
``c*f(a*x + b) + d`` from the node computing ``g``. Every sum becomes a sum
node and every product of two or more non-constant factors a mult node.
An integer power beyond the library's (``x**7``) becomes a mult node of two
powers (``x**3 * x**4``), split again until each is in the library.
Values needed further up are carried by identity edges through
intermediate sum nodes, so the graph stays layered. The compiled network
computes the expression exactly (up to floating-point rounding) and can be
trained further as an initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import networkx as nx
import sympy
import torch

from .errors import InvalidParameterError

__all__ = ["kanpile"]

FUNCTION_NAMES = {
    sympy.sin: "sin",
    sympy.cos: "cos",
    sympy.tan: "tan",
    sympy.exp: "exp",
    sympy.log: "log",
    sympy.tanh: "tanh",
    sympy.sinh: "sinh",
    sympy.cosh: "cosh",
    sympy.asin: "arcsin",
    sympy.acos: "arccos",
    sympy.atan: "arctan",
    sympy.atanh: "arctanh",
    sympy.Abs: "abs",
    sympy.sign: "sgn",
}

POWER_NAMES = {
    sympy.Integer(2): "x^2",
    sympy.Integer(3): "x^3",
    sympy.Integer(4): "x^4",
    sympy.Integer(5): "x^5",
    sympy.Integer(-1): "1/x",
    sympy.Integer(-2): "1/x^2",
    sympy.Integer(-3): "1/x^3",
    sympy.Integer(-4): "1/x^4",
    sympy.Integer(-5): "1/x^5",
    sympy.Rational(1, 2): "sqrt",
    sympy.Rational(3, 2): "x^1.5",
    sympy.Rational(-1, 2): "1/sqrt(x)",
}


class _Builder:
    """Collects nodes per layer and edges while the expression is walked."""

    def __init__(self, variables: Sequence[sympy.Symbol]) -> None:
        self.graph = nx.DiGraph(format="multkan-graph", version=1)
        self.level: dict[str, int] = {}
        self.sums: dict[int, list[str]] = {}
        self.mults: dict[int, list[tuple[str, list[str]]]] = {}
        self.carried: dict[tuple[str, int], str] = {}
        self.cache: dict[sympy.Expr, str] = {}
        self.counter = 0
        for index, variable in enumerate(variables):
            node = f"L0:input{index}"
            self.graph.add_node(node, kind="input", layer=0, index=index, name=str(variable))
            self.level[node] = 0
            self.cache[variable] = node

    def _new_sum(self, level: int, operand_of: str | None = None) -> str:
        self.counter += 1
        node = f"L{level}:k{self.counter}"
        attributes = {"kind": "sum", "layer": level, "name": node}
        if operand_of is None:
            attributes.update(scale=1.0, bias=0.0)
            self.sums.setdefault(level, []).append(node)
        else:
            attributes["operand_of"] = operand_of
        self.graph.add_node(node, **attributes)
        self.level[node] = level
        return node

    def carry(self, node: str, level: int) -> str:
        """Return a node at ``level`` holding the value of ``node``, adding identity edges as needed."""
        current = node
        while self.level[current] < level:
            next_level = self.level[current] + 1
            key = (node, next_level)
            if key not in self.carried:
                relay = self._new_sum(next_level)
                self._edge(current, relay, "x", (1.0, 0.0, 1.0, 0.0))
                self.carried[key] = relay
            current = self.carried[key]
        return current

    def _edge(self, source: str, target: str, name: str, params) -> None:
        if self.graph.has_edge(source, target):
            raise RuntimeError(f"duplicate edge {source} -> {target}")
        self.graph.add_edge(
            source,
            target,
            kind="function",
            layer=self.level[source],
            function={"type": "symbolic", "name": name, "params": [float(p) for p in params]},
        )

    def edge_into(self, target_level: int, target: str, term: sympy.Expr, scale: float = 1.0, shift: float = 0.0) -> None:
        """Add the edge ``scale * term + shift`` into ``target``, where ``term`` is a function of one node."""
        name, inner, a, b = _as_function(term)
        source = self.carry(self.node(inner), target_level - 1)
        self._edge(source, target, name, (a, b, scale, shift))

    def node(self, expression: sympy.Expr) -> str:
        """Return the node computing ``expression``, building it on first use."""
        if expression in self.cache:
            return self.cache[expression]
        if expression.is_Add:
            node = self._sum(expression)
        elif expression.is_Mul and len(_factors(expression)[1]) >= 2:
            node = self._product(*_factors(expression))
        elif _is_split_power(expression):
            # x**n outside the library: a mult node of two powers whose exponents add up to n.
            first = expression.exp // 2 if expression.exp > 0 else -((-expression.exp) // 2)
            base = expression.base
            node = self._product(sympy.Integer(1), [base**first, base ** (expression.exp - first)])
        else:
            # f(a*g + b), or c*f(a*g + b) for a constant c (pi*x, -sin(x)): one edge.
            coefficient, term = _split_coefficient(expression) if expression.is_Mul else (sympy.Integer(1), expression)
            name, inner, a, b = _as_function(term)
            level = self.level[self.node(inner)] + 1
            node = self._new_sum(level)
            source = self.carry(self.node(inner), level - 1)
            self._edge(source, node, name, (a, b, float(coefficient), 0.0))
        self.cache[expression] = node
        return node

    def _sum(self, expression: sympy.Expr) -> str:
        constant, rest = _split_constant(expression)
        terms = sympy.Add.make_args(rest)
        parts = []
        seen: set[str] = set()
        for term in terms:
            coefficient, inner = _split_coefficient(term)
            source = self.node(_as_function(inner)[1])
            if source in seen:
                # Two terms from one node would need two edges between the same
                # pair of nodes, so this term gets a node of its own first.
                parts.append((coefficient, self.node(inner), "x"))
            else:
                seen.add(source)
                parts.append((coefficient, inner, None))
        level = max(self._part_level(inner, via) for _, inner, via in parts)
        node = self._new_sum(level)
        for position, (coefficient, inner, via) in enumerate(parts):
            shift = float(constant) if position == 0 else 0.0
            if via is None:
                self.edge_into(level, node, inner, float(coefficient), shift)
            else:
                self._edge(self.carry(inner, level - 1), node, "x", (1.0, 0.0, float(coefficient), shift))
        return node

    def _part_level(self, inner, via) -> int:
        return self._term_level(inner) if via is None else self.level[inner] + 1

    def _term_level(self, term: sympy.Expr) -> int:
        """Level of a node that receives ``term`` as one edge."""
        _, inner, _, _ = _as_function(term)
        return self.level[self.node(inner)] + 1

    def _product(self, coefficient: sympy.Expr, factors: list[sympy.Expr]) -> str:
        level = max(self._term_level(factor) for factor in factors)
        self.counter += 1
        mult = f"L{level}:m{self.counter}"
        self.graph.add_node(mult, kind="mult", layer=level, name=mult, arity=len(factors), scale=float(coefficient), bias=0.0)
        self.level[mult] = level
        operands = []
        for factor in factors:
            operand = self._new_sum(level, operand_of=mult)
            self.graph.add_edge(operand, mult, kind="wire")
            self.edge_into(level, operand, factor)
            operands.append(operand)
        self.mults.setdefault(level, []).append((mult, operands))
        return mult

    def finish(self, root: str, output_name: str) -> nx.DiGraph:
        top = max(self.level.values()) + 1
        output = f"L{top}:output0"
        self.graph.add_node(output, kind="output", layer=top, index=0, sub_index=0, name=output_name, scale=1.0, bias=0.0)
        self.level[output] = top
        self._edge(self.carry(root, top - 1), output, "x", (1.0, 0.0, 1.0, 0.0))
        for level in range(1, top):
            sums = self.sums.get(level, [])
            mults = self.mults.get(level, [])
            for position, node in enumerate(sums):
                self.graph.nodes[node].update(index=position, sub_index=position)
            sub_index = len(sums)
            for position, (mult, operands) in enumerate(mults):
                self.graph.nodes[mult]["index"] = len(sums) + position
                for operand in operands:
                    self.graph.nodes[operand]["sub_index"] = sub_index
                    sub_index += 1
            if not sums and not mults:
                raise RuntimeError(f"layer {level} is empty")
        return self.graph


def _split_coefficient(term: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr]:
    """Split a product into its constant factor (numbers, pi, ...) and the rest."""
    coefficient, rest = term.as_independent(*term.free_symbols, as_Add=False)
    return coefficient, rest


def _split_constant(expression: sympy.Expr) -> tuple[sympy.Expr, sympy.Expr]:
    """Split a sum into its constant term and the rest."""
    return expression.as_independent(*expression.free_symbols, as_Add=True)


def _factors(expression: sympy.Expr) -> tuple[sympy.Expr, list[sympy.Expr]]:
    coefficient, rest = _split_coefficient(expression)
    return coefficient, list(sympy.Mul.make_args(rest))


def _is_split_power(term: sympy.Expr) -> bool:
    """Return whether ``term`` is an integer power beyond the library's, compiled as a product of two powers."""
    return bool(term.is_Pow and term.exp.is_Integer and term.exp not in POWER_NAMES and abs(term.exp) > 1)


def _as_function(term: sympy.Expr) -> tuple[str, sympy.Expr, float, float]:
    """Split ``term`` into ``(library name, inner expression, a, b)`` with ``term = f(a*inner + b)``.

    Terms that need a node of their own (sums, products, large integer
    powers) come back as the identity of themselves.
    """
    if term.is_Symbol or term.is_Add or (term.is_Mul and len(_factors(term)[1]) >= 2) or _is_split_power(term):
        return "x", term, 1.0, 0.0
    if term.is_Pow and term.exp in POWER_NAMES:
        name, argument = POWER_NAMES[term.exp], term.base
    elif term.func in FUNCTION_NAMES and len(term.args) == 1:
        name, argument = FUNCTION_NAMES[term.func], term.args[0]
    elif term.is_Pow and term.base == sympy.E:
        name, argument = "exp", term.exp
    else:
        raise InvalidParameterError(
            f"the kanpiler cannot compile {term}: supported are sums, products, numeric powers in "
            f"{sorted(str(p) for p in POWER_NAMES)} and the functions {sorted(FUNCTION_NAMES.values())}"
        )
    offset, rest = _split_constant(argument)
    scale, inner = _split_coefficient(rest)
    if not inner.free_symbols:
        raise InvalidParameterError(f"the kanpiler cannot compile the constant subexpression {term}")
    return name, inner, float(scale), float(offset)


def _rational_exponents(expression: sympy.Expr) -> sympy.Expr:
    """Return ``expression`` with float exponents that equal a fraction of denominator at most 12 written as that fraction.

    ``sympify("x**0.5")`` keeps the exponent as the float 0.5, which the
    library's power functions (keyed by rational exponents) do not match.
    """

    def rational(power: sympy.Pow) -> sympy.Expr:
        fraction = Fraction(float(power.exp)).limit_denominator(12)
        if abs(float(fraction) - float(power.exp)) > 1e-12 * max(1.0, abs(float(power.exp))):
            return power
        return sympy.Pow(power.base, sympy.Rational(fraction.numerator, fraction.denominator))

    return expression.replace(lambda node: isinstance(node, sympy.Pow) and isinstance(node.exp, sympy.Float), rational)


def kanpile(
    expression: sympy.Expr | str,
    variables: Sequence[sympy.Symbol | str] | None = None,
    *,
    output_name: str | None = None,
    grid: int = 5,
    k: int = 3,
    grid_range: tuple[float, float] = (-1.0, 1.0),
    seed: int = 0,
    dtype: torch.dtype | None = None,
):
    """Compile ``expression`` into a :class:`~multkan.model.MultKAN` that computes it.

    Parameters
    ----------
    expression : sympy expression or str
    variables : sequence of Symbol or str, optional
        Input order; the sorted free symbols by default.
    output_name : str, optional
        Name of the output node; ``"y"``, or ``"f"`` when an input is named ``y``.
    grid, k, grid_range, seed, dtype
        Passed to the model for its (unused until unfixed) spline edges.

    Returns
    -------
    MultKAN
        Every edge is symbolic. ``model.symbolic_formula()`` gives back an
        expression that is numerically equal to ``expression``: constants
        become floats (``pi`` as 3.14159...) and the symbols are real.

    Examples
    --------
    >>> import sympy, torch
    >>> a = sympy.Symbol("a")
    >>> model = kanpile(sympy.sin(5 * a) + sympy.cos(3 * a), [a], dtype=torch.float64)
    >>> x = torch.tensor([[0.3]], dtype=torch.float64)
    >>> round(float(model(x)), 6) == round(float(torch.sin(5 * x) + torch.cos(3 * x)), 6)
    True
    """
    from .model import MultKAN

    try:
        expression = sympy.sympify(expression)
    except (sympy.SympifyError, TypeError) as error:
        raise InvalidParameterError(f"invalid expression: cannot read {expression!r} as a formula ({error})") from error
    if not isinstance(expression, sympy.Expr) or expression.has(sympy.I, sympy.zoo, sympy.nan, sympy.oo):
        raise InvalidParameterError(
            f"invalid expression: expected one real sympy expression, such as 'x*sin(y)', received {expression!r}"
        )
    expression = _rational_exponents(expression)
    if variables is None:
        # One variable per name: x and x with assumptions are the same input.
        variables = sorted({symbol.name for symbol in expression.free_symbols})
    # Symbols are matched by name: Symbol("x", real=True) and Symbol("x") are different
    # objects to sympy, but the same variable to a reader.
    symbols = []
    for variable in variables:
        if isinstance(variable, str):
            variable = sympy.Symbol(variable)
        elif isinstance(variable, sympy.Symbol):
            variable = sympy.Symbol(variable.name)
        symbols.append(variable)
    by_name = {symbol.name: symbol for symbol in symbols if isinstance(symbol, sympy.Symbol)}
    expression = expression.xreplace({symbol: by_name[symbol.name] for symbol in expression.free_symbols if symbol.name in by_name})
    missing = expression.free_symbols - set(symbols)
    if missing:
        raise InvalidParameterError(f"invalid variables: the expression also uses {sorted(map(str, missing))}")
    if not symbols:
        raise InvalidParameterError("invalid expression: it has no variables to compile")

    if output_name is None:
        names = {symbol.name for symbol in symbols}
        output_name = next(name for name in ("y", "f", "output") if name not in names)
    builder = _Builder(symbols)
    try:
        root = builder.node(expression)
        graph = builder.finish(root, output_name)
    except RuntimeError as error:
        raise InvalidParameterError(f"the kanpiler cannot lay out {expression}: {error}") from error
    return MultKAN.from_graph(graph, grid=grid, k=k, grid_range=grid_range, seed=seed, dtype=dtype)
