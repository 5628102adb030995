"""Library of univariate symbolic functions that KAN edges are snapped to.

Each entry pairs an elementwise torch function with the sympy expression of the
same function, its real domain, a complexity used when ranking candidates, and a
"safe" torch function that stays finite near singularities during training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property

import numpy as np
import sympy
import torch
from sympy.calculus.util import continuous_domain
from sympy.printing.codeprinter import PrintMethodNotImplementedError

from multkan.errors import SymbolicError, invalid_parameter

__all__ = [
    "SAFE_EPS",
    "Domain",
    "REALS",
    "SymbolicFunction",
    "SymbolicLibrary",
    "default_library",
]

SAFE_EPS = 1e-4
"""Distance that the safe torch functions keep from a singularity or an open domain end.

For example the safe ``1/x`` evaluates ``1/(sign(x) * max(|x|, SAFE_EPS))`` with
``sign(0) = 1``, and the safe ``log`` evaluates ``log(max(x, SAFE_EPS))``.
"""

# Largest argument of the safe exp, sinh and cosh: exp(80) = 5.5e34 and its
# derivative stay below the float32 maximum of 3.4e38.
_SAFE_EXP_MAX = 80.0

# The safe power x^k clamps |x| to _SAFE_POWER_MAX ** (1/k), so that x^k and its
# derivative k * x^(k-1) stay below 1e31, which float32 represents.
_SAFE_POWER_MAX = 1e30

# Half width of the interval in which the probe for NaN values of a new entry runs.
_PROBE_HALF_WIDTH = 10.0


@dataclass(frozen=True)
class Domain:
    """Interval of the real line, optionally with one point removed.

    The set is ``{u : low < u < high}`` with ``<`` replaced by ``<=`` at a closed end,
    minus the point ``excluded`` when that is not None. Infinite ends are always open.
    This covers the domains of the usual elementary functions, for example
    ``(0, inf)`` for log, ``[-1, 1]`` for arcsin and ``R \\ {0}`` for 1/x.

    Parameters
    ----------
    low, high : float
        Ends of the interval, ``low < high``. Use ``-math.inf`` and ``math.inf`` for
        unbounded sides.
    low_open, high_open : bool
        Whether the end itself is left out. Ignored (set to True) for infinite ends.
    excluded : float or None
        A point strictly inside ``(low, high)`` that is left out, such as 0 for 1/x.
    """

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = True
    high_open: bool = True
    excluded: float | None = None

    def __post_init__(self) -> None:
        low, high = float(self.low), float(self.high)
        if math.isnan(low) or math.isnan(high) or not low < high:
            raise invalid_parameter("domain ends", "low < high", (self.low, self.high))
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)
        object.__setattr__(self, "low_open", bool(self.low_open) or math.isinf(low))
        object.__setattr__(self, "high_open", bool(self.high_open) or math.isinf(high))
        if self.excluded is not None:
            excluded = float(self.excluded)
            if not low < excluded < high:
                raise invalid_parameter(
                    "domain excluded point", f"a value strictly between {low} and {high}", self.excluded
                )
            object.__setattr__(self, "excluded", excluded)

    @classmethod
    def from_sympy_set(cls, real_set: sympy.Set) -> Domain:
        """Convert a sympy subset of the reals to a :class:`Domain`.

        Accepted forms are ``Reals``, an ``Interval``, the union of two intervals
        that meet at one open point (``Union(Interval.open(-oo, p), Interval.open(p, oo))``)
        and an interval minus one point (``Complement(Interval, {p})``).

        Raises
        ------
        SymbolicError
            When the set has another form, for example a periodic set of poles.
        """
        if real_set == sympy.S.Reals:
            return cls()
        if isinstance(real_set, sympy.Interval):
            return cls(
                float(real_set.start), float(real_set.end), bool(real_set.left_open), bool(real_set.right_open)
            )
        if isinstance(real_set, sympy.Union) and len(real_set.args) == 2:
            left, right = sorted(real_set.args, key=lambda part: part.inf)
            if (
                isinstance(left, sympy.Interval)
                and isinstance(right, sympy.Interval)
                and left.end == right.start
                and left.right_open
                and right.left_open
            ):
                return cls(
                    float(left.start), float(right.end), bool(left.left_open), bool(right.right_open), float(left.end)
                )
        if isinstance(real_set, sympy.Complement):
            base, removed = real_set.args
            if isinstance(removed, sympy.FiniteSet) and len(removed) == 1:
                outer = cls.from_sympy_set(base)
                if outer.excluded is None:
                    point = float(next(iter(removed)))
                    if point == outer.low:
                        return cls(outer.low, outer.high, True, outer.high_open)
                    if point == outer.high:
                        return cls(outer.low, outer.high, outer.low_open, True)
                    if outer.low < point < outer.high:
                        return cls(outer.low, outer.high, outer.low_open, outer.high_open, point)
        raise SymbolicError(
            f"cannot represent the real set {real_set} as an interval with at most one point removed. "
            "Pass domain=Domain(low, high, low_open, high_open, excluded) explicitly"
        )

    def to_sympy_set(self) -> sympy.Set:
        """Return the domain as a sympy set, for printing and comparison."""
        interval = sympy.Interval(
            sympy.nsimplify(self.low) if math.isfinite(self.low) else -sympy.oo,
            sympy.nsimplify(self.high) if math.isfinite(self.high) else sympy.oo,
            self.low_open,
            self.high_open,
        )
        if self.excluded is None:
            return interval
        return sympy.Complement(interval, sympy.FiniteSet(sympy.nsimplify(self.excluded)))

    def contains(self, values: torch.Tensor) -> torch.Tensor:
        """Return a boolean tensor, True where ``values`` lie in the domain.

        Parameters
        ----------
        values : Tensor, any shape

        Returns
        -------
        Tensor of bool, same shape as ``values``
        """
        inside = (values > self.low) if self.low_open else (values >= self.low)
        inside = inside & ((values < self.high) if self.high_open else (values <= self.high))
        if self.excluded is not None:
            inside = inside & (values != self.excluded)
        return inside

    def contains_range(self, lower: torch.Tensor, upper: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
        """Return True where the whole closed interval ``[lower, upper]`` lies in the domain.

        An open end or the excluded point ``e`` must also keep a relative distance:
        ``dist([lower, upper], e) >= margin * max(|lower - e|, |upper - e|)``.
        A closed end only has to be inside. With ``margin = 0`` this is plain
        containment.

        Parameters
        ----------
        lower, upper : Tensor, broadcastable shapes
            Ends of the intervals, ``lower <= upper``. NaN ends give False.
        margin : float
            Relative distance in ``[0, 1)`` kept from open ends and the excluded point.

        Returns
        -------
        Tensor of bool, the broadcast shape of ``lower`` and ``upper``
        """
        ok = torch.isfinite(lower) & torch.isfinite(upper)
        if math.isfinite(self.low):
            if self.low_open:
                ok = ok & (lower - self.low > 0) & (lower - self.low >= margin * (upper - self.low))
            else:
                ok = ok & (lower >= self.low)
        if math.isfinite(self.high):
            if self.high_open:
                ok = ok & (self.high - upper > 0) & (self.high - upper >= margin * (self.high - lower))
            else:
                ok = ok & (upper <= self.high)
        if self.excluded is not None:
            point = self.excluded
            above = (lower - point > 0) & (lower - point >= margin * (upper - point))
            below = (point - upper > 0) & (point - upper >= margin * (point - lower))
            ok = ok & (above | below)
        return ok

    def clamp_inside(self, values: torch.Tensor, eps: float = SAFE_EPS) -> torch.Tensor:
        """Move ``values`` into the domain, at least ``eps`` away from open ends and the excluded point.

        Values already that far inside are returned unchanged. A value within ``eps``
        of the excluded point moves to ``excluded + eps`` on its own side, and to the
        upper side when it equals the point.
        """
        low = self.low + eps if self.low_open else self.low
        high = self.high - eps if self.high_open else self.high
        if low > high:
            # The interval is narrower than 2 * eps, so use its midpoint.
            low = high = 0.5 * (self.low + self.high)
        out = values
        if math.isfinite(low):
            out = out.clamp(min=low)
        if math.isfinite(high):
            out = out.clamp(max=high)
        if self.excluded is not None:
            offset = out - self.excluded
            side = torch.where(offset >= 0, 1.0, -1.0).to(out.dtype)
            out = torch.where(offset.abs() < eps, self.excluded + side * eps, out)
        return out


REALS = Domain()
"""The whole real line."""


@dataclass(frozen=True)
class SymbolicFunction:
    """One univariate function of the symbolic library.

    An edge snapped to this entry computes ``c * f(a * x + b) + d``.

    Parameters
    ----------
    name : str
        Key of the entry in a :class:`SymbolicLibrary`.
    torch_fn : callable
        Elementwise ``f`` on tensors, ``(any shape) -> (same shape)``. It may return
        NaN or inf outside ``domain``.
    sympy_fn : callable
        ``f`` on sympy expressions, ``sympy.Expr -> sympy.Expr``. The fitting reads it
        to detect constant, identity, even and odd functions, so it must describe
        the same ``f`` as ``torch_fn``.
    domain : Domain
        Real arguments where ``f`` is real and finite.
    complexity : int
        Cost of the entry in candidate ranking, 0 for constants, small integers otherwise.
    safe_torch_fn : callable or None
        Variant of ``torch_fn`` that is finite for every finite input, used while
        training near singularities. None derives one that clamps the input into
        ``domain`` with :meth:`Domain.clamp_inside` and replaces non-finite outputs
        by ``+-sqrt(finfo.max)``. The derived variant does not guarantee finite gradients.
    """

    name: str
    torch_fn: Callable[[torch.Tensor], torch.Tensor]
    sympy_fn: Callable[[sympy.Expr], sympy.Expr]
    domain: Domain
    complexity: int
    safe_torch_fn: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise invalid_parameter("symbolic function name", "a non-empty string", self.name)
        for attribute in ("torch_fn", "sympy_fn"):
            if not callable(getattr(self, attribute)):
                raise invalid_parameter(f"{attribute} of {self.name!r}", "a callable", getattr(self, attribute))
        if not isinstance(self.domain, Domain):
            raise invalid_parameter(f"domain of {self.name!r}", "a multkan.symbolic.Domain", self.domain)
        if isinstance(self.complexity, bool) or not isinstance(self.complexity, int) or self.complexity < 0:
            raise invalid_parameter(f"complexity of {self.name!r}", "an integer >= 0", self.complexity)
        if self.safe_torch_fn is None:
            object.__setattr__(self, "safe_torch_fn", _clamped_to_domain(self.torch_fn, self.domain))
        elif not callable(self.safe_torch_fn):
            raise invalid_parameter(f"safe_torch_fn of {self.name!r}", "a callable or None", self.safe_torch_fn)

    @classmethod
    def from_sympy(
        cls,
        name: str,
        expr: sympy.Expr | str,
        symbol: sympy.Symbol,
        complexity: int | None = None,
        *,
        domain: Domain | sympy.Set | None = None,
        safe_torch_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> SymbolicFunction:
        """Build an entry from a sympy expression in one symbol.

        The torch function comes from ``sympy.lambdify(symbol, expr, modules="torch")``.
        The torch printer of sympy 1.14 has no torch name for ``sec``, ``cot`` and some
        other functions. For such an ``expr`` the entry evaluates ``expr`` with numpy on
        the CPU and takes the backward pass from ``sympy.diff(expr, symbol)``, so
        autograd still works to first order.

        Parameters
        ----------
        name : str
            Key of the new entry.
        expr : sympy.Expr or str
            Expression of ``f``. Strings go through ``sympy.sympify``.
        symbol : sympy.Symbol
            The only free symbol allowed in ``expr``.
        complexity : int or None
            None uses ``sympy.count_ops(expr) + 1``, or 0 when ``expr`` is constant.
        domain : Domain, sympy.Set or None
            None derives the domain with
            ``sympy.calculus.util.continuous_domain(expr, symbol, sympy.S.Reals)``.
        safe_torch_fn : callable or None
            See :class:`SymbolicFunction`.

        Raises
        ------
        InvalidParameterError
            When ``expr`` has a free symbol other than ``symbol``.
        SymbolicError
            When the domain cannot be derived or represented, or when the torch
            function returns NaN at a point of the derived domain in ``[-10, 10]``.
            Pass ``domain=`` explicitly in both cases. An explicit domain is not
            probed.
        """
        if not isinstance(symbol, sympy.Symbol):
            raise invalid_parameter("symbol", "a sympy.Symbol", symbol)
        expr = sympy.sympify(expr, locals={symbol.name: symbol})
        extra = expr.free_symbols - {symbol}
        if extra:
            raise invalid_parameter(
                f"expression of {name!r}",
                f"an expression in {symbol} only",
                f"{expr} with free symbols {sorted(map(str, extra))}",
            )
        if complexity is None:
            complexity = 0 if not expr.free_symbols else int(sympy.count_ops(expr)) + 1

        torch_fn = _lambdify_torch(expr, symbol)
        if domain is None:
            try:
                real_set = continuous_domain(expr, symbol, sympy.S.Reals)
            except NotImplementedError as error:
                raise SymbolicError(
                    f"sympy cannot derive the real domain of {expr}. "
                    "Pass domain=Domain(low, high, low_open, high_open, excluded) explicitly"
                ) from error
            domain = Domain.from_sympy_set(real_set)
            _check_no_nan_in_domain(name, expr, torch_fn, domain)
        elif isinstance(domain, sympy.Set):
            domain = Domain.from_sympy_set(domain)

        def sympy_fn(argument: sympy.Expr) -> sympy.Expr:
            return expr.xreplace({symbol: argument})

        return cls(name, torch_fn, sympy_fn, domain, complexity, safe_torch_fn)

    def expression(self, symbol: sympy.Symbol | None = None) -> sympy.Expr:
        """Return ``f(symbol)`` as a sympy expression, with a real symbol ``x`` by default."""
        return sympy.sympify(self.sympy_fn(sympy.Symbol("x", real=True) if symbol is None else symbol))

    @cached_property
    def is_constant(self) -> bool:
        """Whether ``f`` does not depend on its argument, like the ``0`` entry."""
        return not self.expression().free_symbols

    @cached_property
    def parity(self) -> int:
        """1 if ``f`` is even, -1 if odd, 0 otherwise or when the domain is not symmetric about 0.

        The test is structural: ``f(-u)`` as sympy evaluates it must equal ``f(u)`` or
        ``-f(u)`` after ``sympy.expand``. A parity that sympy does not see gives 0.
        """
        domain = self.domain
        symmetric = (
            domain.low == -domain.high
            and domain.low_open == domain.high_open
            and domain.excluded in (None, 0.0)
        )
        if not symmetric:
            return 0
        symbol = sympy.Symbol("u", real=True)
        expr = self.expression(symbol)
        mirrored = expr.xreplace({symbol: -symbol})
        if sympy.expand(mirrored - expr) == 0:
            return 1
        if sympy.expand(mirrored + expr) == 0:
            return -1
        return 0

    @cached_property
    def is_identity(self) -> bool:
        """Whether ``f(u) = u``, so that an affine fit is a linear regression."""
        symbol = sympy.Symbol("u", real=True)
        return sympy.expand(self.expression(symbol) - symbol) == 0


def _lambdify_torch(expr: sympy.Expr, symbol: sympy.Symbol) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return an elementwise torch function of ``expr``, falling back to numpy with a sympy derivative."""
    probe = torch.tensor([0.25, 0.5, 1.5], dtype=torch.float64)
    try:
        compiled = sympy.lambdify(symbol, expr, modules="torch")
        compiled(probe)
    except (PrintMethodNotImplementedError, NameError, TypeError, AttributeError, RuntimeError):
        compiled = None

    if compiled is not None:

        def torch_fn(values: torch.Tensor) -> torch.Tensor:
            result = compiled(values)
            if not isinstance(result, torch.Tensor):
                # A constant expression lambdifies to a Python number.
                return torch.full_like(values, float(result))
            return result

        return torch_fn

    value_fn = sympy.lambdify(symbol, expr, modules="numpy")
    derivative_fn = sympy.lambdify(symbol, sympy.diff(expr, symbol), modules="numpy")

    def numpy_torch_fn(values: torch.Tensor) -> torch.Tensor:
        return _NumpyFunction.apply(values, value_fn, derivative_fn)

    return numpy_torch_fn


class _NumpyFunction(torch.autograd.Function):
    """Evaluate a numpy function on a tensor, with a numpy derivative for the backward pass."""

    @staticmethod
    def forward(ctx, values, value_fn, derivative_fn):  # type: ignore[override]
        ctx.save_for_backward(values)
        ctx.derivative_fn = derivative_fn
        return _apply_numpy(value_fn, values)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        (values,) = ctx.saved_tensors
        return grad_output * _apply_numpy(ctx.derivative_fn, values), None, None


def _apply_numpy(numpy_fn: Callable, values: torch.Tensor) -> torch.Tensor:
    array = values.detach().cpu().numpy()
    with np.errstate(all="ignore"):
        result = np.broadcast_to(np.asarray(numpy_fn(array), dtype=array.dtype), array.shape)
    return torch.from_numpy(np.array(result)).to(values.device)


def _check_no_nan_in_domain(name: str, expr: sympy.Expr, torch_fn: Callable, domain: Domain) -> None:
    """Raise SymbolicError when ``torch_fn`` is NaN at a point of ``domain`` in [-10, 10].

    sympy treats ``x**(1/3)`` as the principal complex root, so its continuous
    domain is all reals although the real function is NaN for negative x.
    """
    probe = torch.linspace(-_PROBE_HALF_WIDTH, _PROBE_HALF_WIDTH, 4001, dtype=torch.float64)
    probe = probe[domain.contains(probe)]
    if probe.numel() == 0:
        return
    with torch.no_grad():
        values = torch_fn(probe)
    nan_points = probe[torch.isnan(values)]
    if nan_points.numel() > 0:
        raise SymbolicError(
            f"the torch function of {name!r} = {expr} is NaN at x = {nan_points[0].item():.4g}, "
            f"which lies in the derived domain {domain.to_sympy_set()}. Pass the real domain as domain=Domain(...)"
        )


def _clamped_to_domain(torch_fn: Callable, domain: Domain) -> Callable[[torch.Tensor], torch.Tensor]:
    def safe_fn(values: torch.Tensor) -> torch.Tensor:
        result = torch_fn(domain.clamp_inside(values))
        bound = math.sqrt(torch.finfo(result.dtype).max)
        return torch.nan_to_num(result, nan=0.0, posinf=bound, neginf=-bound)

    return safe_fn


class SymbolicLibrary(Mapping[str, SymbolicFunction]):
    """Ordered mapping from names to :class:`SymbolicFunction` entries, with aliases.

    Lookup accepts an entry's name or an alias (``library["sign"]`` returns the
    ``sgn`` entry of the default library). Iteration yields the entry names in the
    order they were added. Unknown names raise :class:`InvalidParameterError`,
    which lists the allowed names.

    Parameters
    ----------
    entries : iterable of SymbolicFunction
    aliases : mapping of str to str, optional
        Alternative spellings, each mapped to the name of an entry.
    """

    def __init__(self, entries: Iterable[SymbolicFunction] = (), aliases: Mapping[str, str] | None = None) -> None:
        self._entries: dict[str, SymbolicFunction] = {}
        self._aliases: dict[str, str] = {}
        for entry in entries:
            self.add(entry)
        for alias, target in (aliases or {}).items():
            self.add_alias(alias, target)

    def resolve(self, name: str) -> str:
        """Return the entry name that ``name`` or its alias refers to.

        Raises
        ------
        InvalidParameterError
            When ``name`` is neither an entry name nor an alias.
        """
        if isinstance(name, str):
            if name in self._entries:
                return name
            if name in self._aliases:
                return self._aliases[name]
        allowed = "one of " + ", ".join(repr(known) for known in self._entries)
        if self._aliases:
            allowed += " (or an alias: " + ", ".join(repr(alias) for alias in self._aliases) + ")"
        raise invalid_parameter("symbolic function name", allowed, name)

    def __getitem__(self, name: str) -> SymbolicFunction:
        return self._entries[self.resolve(name)]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._aliases)

    def get(self, name: str, default: SymbolicFunction | None = None) -> SymbolicFunction | None:
        """Return the entry for ``name`` or its alias, or ``default`` when it is unknown."""
        return self[name] if name in self else default

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"SymbolicLibrary([{', '.join(repr(name) for name in self._entries)}])"

    @property
    def aliases(self) -> dict[str, str]:
        """Copy of the alias table, alias -> entry name."""
        return dict(self._aliases)

    def add(self, entry: SymbolicFunction, *, replace: bool = False) -> None:
        """Add ``entry`` under ``entry.name``, in place.

        Raises
        ------
        InvalidParameterError
            When ``entry`` is not a SymbolicFunction, when the name is an alias, or
            when the name is taken and ``replace`` is False.
        """
        if not isinstance(entry, SymbolicFunction):
            raise invalid_parameter("library entry", "a SymbolicFunction", entry)
        if entry.name in self._aliases:
            raise invalid_parameter(
                "symbolic function name",
                f"a name that is not an alias (it is an alias of {self._aliases[entry.name]!r})",
                entry.name,
            )
        if entry.name in self._entries and not replace:
            raise invalid_parameter(
                "symbolic function name", "a name not yet in the library (or pass replace=True)", entry.name
            )
        self._entries[entry.name] = entry

    def add_alias(self, alias: str, name: str) -> None:
        """Make ``alias`` refer to the entry ``name``, in place.

        Raises
        ------
        InvalidParameterError
            When ``name`` is unknown or ``alias`` is already an entry name.
        """
        target = self.resolve(name)
        if not isinstance(alias, str) or not alias or alias in self._entries:
            raise invalid_parameter("alias", "a non-empty string that is not an entry name", alias)
        self._aliases[alias] = target

    def subset(self, names: Iterable[str]) -> SymbolicLibrary:
        """Return a new library with the entries ``names``, in the given order.

        Aliases are resolved and repeated names kept once. Aliases that point to a
        kept entry carry over.

        Raises
        ------
        InvalidParameterError
            When a name is unknown.
        """
        if isinstance(names, str):
            names = [names]
        resolved: dict[str, None] = {}
        for name in names:
            resolved[self.resolve(name)] = None
        aliases = {alias: target for alias, target in self._aliases.items() if target in resolved}
        return SymbolicLibrary((self._entries[name] for name in resolved), aliases)

    def complexities(self) -> dict[str, int]:
        """Return the complexity of each entry, by name in library order."""
        return {name: entry.complexity for name, entry in self._entries.items()}


# Safe variants. Each is finite, with a finite gradient, for every finite input in
# float32 and float64.


def _safe_reciprocal_power(power: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def safe_fn(values: torch.Tensor) -> torch.Tensor:
        sign = torch.where(values >= 0, 1.0, -1.0).to(values.dtype)
        return (sign * values.abs().clamp(min=SAFE_EPS)) ** (-power)

    return safe_fn


def _safe_power(power: float) -> Callable[[torch.Tensor], torch.Tensor]:
    bound = _SAFE_POWER_MAX ** (1.0 / power)

    def safe_fn(values: torch.Tensor) -> torch.Tensor:
        return values.clamp(-bound, bound) ** power

    return safe_fn


def _safe_sqrt(values: torch.Tensor) -> torch.Tensor:
    # Linear on [0, SAFE_EPS], where sqrt has an unbounded slope, and 0 below 0. The
    # pieces meet at SAFE_EPS, so the result is continuous.
    outer = torch.sqrt(values.clamp(SAFE_EPS, _SAFE_POWER_MAX))
    inner = values.clamp(0.0, SAFE_EPS) / math.sqrt(SAFE_EPS)
    return torch.where(values >= SAFE_EPS, outer, inner)


def _safe_power_1_5(values: torch.Tensor) -> torch.Tensor:
    return values.clamp(0.0, _SAFE_POWER_MAX ** (1.0 / 1.5)) ** 1.5


def _safe_rsqrt(values: torch.Tensor) -> torch.Tensor:
    return torch.rsqrt(values.clamp(min=SAFE_EPS))


def _cube_root(values: torch.Tensor) -> torch.Tensor:
    return torch.sign(values) * values.abs() ** (1.0 / 3.0)


def _safe_cube_root(values: torch.Tensor) -> torch.Tensor:
    # Linear inside |x| < SAFE_EPS, where the cube root has an unbounded slope. The
    # two pieces meet at |x| = SAFE_EPS, so the result is continuous.
    outer = torch.sign(values) * values.abs().clamp(min=SAFE_EPS) ** (1.0 / 3.0)
    inner = values * SAFE_EPS ** (-2.0 / 3.0)
    return torch.where(values.abs() < SAFE_EPS, inner, outer)


def _safe_log(values: torch.Tensor) -> torch.Tensor:
    return torch.log(values.clamp(min=SAFE_EPS))


def _safe_exp(values: torch.Tensor) -> torch.Tensor:
    return torch.exp(values.clamp(max=_SAFE_EXP_MAX))


def _safe_sinh(values: torch.Tensor) -> torch.Tensor:
    return torch.sinh(values.clamp(-_SAFE_EXP_MAX, _SAFE_EXP_MAX))


def _safe_cosh(values: torch.Tensor) -> torch.Tensor:
    return torch.cosh(values.clamp(-_SAFE_EXP_MAX, _SAFE_EXP_MAX))


def _safe_tan(values: torch.Tensor) -> torch.Tensor:
    # sin / cos with |cos| kept >= SAFE_EPS, so |tan| <= 1 / SAFE_EPS near the poles.
    cosine = torch.cos(values)
    sign = torch.where(cosine >= 0, 1.0, -1.0).to(values.dtype)
    return torch.sin(values) / (sign * cosine.abs().clamp(min=SAFE_EPS))


def _safe_unit_interval(torch_fn: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    """Clamp to [-1 + SAFE_EPS, 1 - SAFE_EPS], where arcsin, arccos and arctanh have finite slopes."""

    def safe_fn(values: torch.Tensor) -> torch.Tensor:
        return torch_fn(values.clamp(-1.0 + SAFE_EPS, 1.0 - SAFE_EPS))

    return safe_fn


def _safe_gaussian(values: torch.Tensor) -> torch.Tensor:
    # exp(-1e12) is 0 in float64, so the clamp changes no value and keeps x^2 finite.
    return torch.exp(-values.clamp(-1e6, 1e6) ** 2)


def _zero(values: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(values)


def _identity(values: torch.Tensor) -> torch.Tensor:
    return values


def _power_entry(power: int, complexity: int) -> SymbolicFunction:
    return SymbolicFunction(
        f"x^{power}",
        lambda values: values**power,
        lambda argument: argument**power,
        REALS,
        complexity,
        _safe_power(power),
    )


def _reciprocal_power_entry(power: int, complexity: int) -> SymbolicFunction:
    name = "1/x" if power == 1 else f"1/x^{power}"
    return SymbolicFunction(
        name,
        lambda values: 1.0 / values**power,
        lambda argument: argument ** (-power),
        Domain(excluded=0.0),
        complexity,
        _safe_reciprocal_power(power),
    )


@cache
def _default_entries() -> tuple[SymbolicFunction, ...]:
    # Built once: the entries are immutable, so every default library shares them.
    return (
        SymbolicFunction("x", _identity, lambda argument: argument, REALS, 1, _identity),
        _power_entry(2, 2),
        _power_entry(3, 3),
        _power_entry(4, 3),
        _power_entry(5, 3),
        _reciprocal_power_entry(1, 2),
        _reciprocal_power_entry(2, 2),
        _reciprocal_power_entry(3, 3),
        _reciprocal_power_entry(4, 4),
        _reciprocal_power_entry(5, 5),
        SymbolicFunction(
            "sqrt", torch.sqrt, sympy.sqrt, Domain(0.0, math.inf, low_open=False), 2, _safe_sqrt
        ),
        SymbolicFunction(
            "x^1.5",
            lambda values: values**1.5,
            lambda argument: argument ** sympy.Rational(3, 2),
            Domain(0.0, math.inf, low_open=False),
            4,
            _safe_power_1_5,
        ),
        SymbolicFunction(
            "1/sqrt(x)",
            torch.rsqrt,
            lambda argument: 1 / sympy.sqrt(argument),
            Domain(0.0, math.inf),
            4,
            _safe_rsqrt,
        ),
        SymbolicFunction(
            "x^(1/3)",
            _cube_root,
            lambda argument: sympy.sign(argument) * sympy.Abs(argument) ** sympy.Rational(1, 3),
            REALS,
            3,
            _safe_cube_root,
        ),
        SymbolicFunction("exp", torch.exp, sympy.exp, REALS, 2, _safe_exp),
        SymbolicFunction("log", torch.log, sympy.log, Domain(0.0, math.inf), 2, _safe_log),
        SymbolicFunction("abs", torch.abs, sympy.Abs, REALS, 3, torch.abs),
        SymbolicFunction("sin", torch.sin, sympy.sin, REALS, 2, torch.sin),
        SymbolicFunction("cos", torch.cos, sympy.cos, REALS, 2, torch.cos),
        SymbolicFunction("tan", torch.tan, sympy.tan, Domain(-math.pi / 2, math.pi / 2), 3, _safe_tan),
        SymbolicFunction("tanh", torch.tanh, sympy.tanh, REALS, 3, torch.tanh),
        SymbolicFunction("sinh", torch.sinh, sympy.sinh, REALS, 3, _safe_sinh),
        SymbolicFunction("cosh", torch.cosh, sympy.cosh, REALS, 3, _safe_cosh),
        SymbolicFunction("sgn", torch.sign, sympy.sign, REALS, 3, torch.sign),
        SymbolicFunction(
            "arcsin", torch.asin, sympy.asin, Domain(-1.0, 1.0, False, False), 4, _safe_unit_interval(torch.asin)
        ),
        SymbolicFunction(
            "arccos", torch.acos, sympy.acos, Domain(-1.0, 1.0, False, False), 4, _safe_unit_interval(torch.acos)
        ),
        SymbolicFunction("arctan", torch.atan, sympy.atan, REALS, 4, torch.atan),
        SymbolicFunction("arctanh", torch.atanh, sympy.atanh, Domain(-1.0, 1.0), 4, _safe_unit_interval(torch.atanh)),
        SymbolicFunction(
            "gaussian",
            lambda values: torch.exp(-(values**2)),
            lambda argument: sympy.exp(-(argument**2)),
            REALS,
            3,
            _safe_gaussian,
        ),
        SymbolicFunction("0", _zero, lambda argument: sympy.S.Zero, REALS, 0, _zero),
    )


_DEFAULT_ALIASES = {
    "x^1": "x",
    "x^0.5": "sqrt",
    "1/x^0.5": "1/sqrt(x)",
    "cbrt": "x^(1/3)",
    "ln": "log",
    "sign": "sgn",
    "asin": "arcsin",
    "acos": "arccos",
    "atan": "arctan",
    "atanh": "arctanh",
    "gauss": "gaussian",
    "zero": "0",
}


def default_library() -> SymbolicLibrary:
    """Return a new library with the standard entries.

    Names, in order: ``x, x^2, x^3, x^4, x^5, 1/x, 1/x^2, 1/x^3, 1/x^4, 1/x^5, sqrt,
    x^1.5, 1/sqrt(x), x^(1/3), exp, log, abs, sin, cos, tan, tanh, sinh, cosh, sgn,
    arcsin, arccos, arctan, arctanh, gaussian, 0``. ``x^(1/3)`` is the real cube root
    ``sign(x) * |x|^(1/3)``. ``gaussian`` is ``exp(-x^2)``. ``tan`` has the domain
    ``(-pi/2, pi/2)``, one period between two poles: because ``tan(u) = tan(u - k*pi)``,
    a fit on another branch equals one on this branch with ``b`` shifted by ``k*pi``.

    Aliases: ``x^1`` -> ``x``, ``x^0.5`` -> ``sqrt``, ``1/x^0.5`` -> ``1/sqrt(x)``,
    ``cbrt`` -> ``x^(1/3)``, ``ln`` -> ``log``, ``sign`` -> ``sgn``, ``asin``,
    ``acos``, ``atan``, ``atanh`` -> the ``arc`` names, ``gauss`` -> ``gaussian``,
    ``zero`` -> ``0``.

    The returned library is a fresh object, so ``add`` on it changes no other library.
    """
    return SymbolicLibrary(_default_entries(), _DEFAULT_ALIASES)
