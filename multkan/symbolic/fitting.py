"""Vectorised fitting of ``y = c * f(a * x + b) + d`` for many edges and library functions.

For fixed ``(a, b)`` the best ``c`` and ``d`` follow in closed form from linear least
squares on ``z = f(a * x + b)``::

    c = cov(z, y) / var(z),    d = mean(y) - c * mean(z),
    r2 = cov(z, y)^2 / (var(z) * var(y)),

so the coefficient of determination of the fit is the squared correlation of ``z``
and ``y``. :func:`fit_affine` searches ``(a, b)`` on a coarse grid, zooms in around
its best local maxima and polishes them with Levenberg-Marquardt steps, for every
edge at once. :func:`rank_candidates` turns the fits into a ranking that trades
accuracy against complexity.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from multkan.errors import InvalidDataError, SymbolicFitWarning, invalid_parameter, user_stacklevel
from multkan.symbolic.library import Domain, SymbolicFunction, SymbolicLibrary, default_library

__all__ = ["AffineFit", "CandidateRanking", "fit_affine", "rank_candidates"]

# y counts as constant when max|y - mean(y)| <= _CONSTANT_Y_TOLERANCE * |mean(y)|,
# which leaves room for the rounding of the float64 mean.
_CONSTANT_Y_TOLERANCE = 64 * torch.finfo(torch.float64).eps

# z = f(a * x + b) counts as constant when std(z) <= _FLAT_Z_TOLERANCE * max|z|.
_FLAT_Z_TOLERANCE = 1e-12

# Largest number of function values evaluated at once, 32 MiB in float64.
_BLOCK_ELEMENTS = 1 << 22

# Added to 1 - r2 before candidates are compared. An estimate: a trained
# spline is about 1% of its spread (1 - r2 near 1e-4) from the function it
# approximates, so smaller differences do not favour a more complex function.
# Without it, tan(0.21 x) beats x on the edges of x * y (1 - r2 6e-8 against 1.4e-5).
UNEXPLAINED_FLOOR = 1e-4

# 1 - r2 at most this counts as an exact fit.
_EXACT_FIT = 1e-12

# The complexity penalty B * k / (k + scale) stays below this bound B, the
# difference in score between r2 = 0 and r2 = 0.99. See rank_candidates for why.
_PENALTY_BOUND = math.log10((1.0 + UNEXPLAINED_FLOOR) / (0.01 + UNEXPLAINED_FLOOR))

# A fit whose term c * f(a * x + b) reaches more than this many times the spread of
# y uses a sliver of f and a constant d that cancels most of it, such as
# -103 * sin(0.08 * x - 5 pi / 2) - 103 for 0.025 * (3.7 * x)**2. Such fits can match
# the r2 of the simple function, so rankings prefer a fit that does not cancel when
# its score is within CANCELLATION_TIE decades. Ordinary fits give ratios near 1:
# 1.5 for a parabola on [-1, 1] and below 2 for a sine (tests/test_symbolic_fitting.py).
CANCELLATION_LIMIT = 20.0
CANCELLATION_TIE = 0.3



@dataclass(frozen=True)
class AffineFit:
    """Result of :func:`fit_affine`.

    Attributes
    ----------
    functions : tuple of SymbolicFunction
        The candidates, ``n_funcs`` of them, in the order of the last axis of ``r2``.
    params : Tensor, shape (n_edges, n_funcs, 4)
        ``(a, b, c, d)`` of ``y ~ c * f(a * x + b) + d``, all finite. For an invalid
        candidate they are a placeholder ``(a, b, 0, mean(y))``.
    r2 : Tensor, shape (n_edges, n_funcs)
        Coefficient of determination on all samples, in ``[0, 1]`` for valid
        candidates and ``-inf`` for invalid ones.
    valid : Tensor of bool, shape (n_edges, n_funcs)
        False when no ``(a, b)`` in the search ranges keeps ``a * x + b`` in the
        domain of ``f`` with finite, bounded coefficients.
    cancellation : Tensor, shape (n_edges, n_funcs), or None
        ``max|c * f(a * x + b)| / max|y - mean(y)|`` on the samples, 0 for
        invalid candidates and constant ``y``. A large value means that ``d``
        cancels a large constant part of ``c * f``, as in ``-146 * sin(0.07 * x
        + 3 pi / 2) - 146`` for ``0.3 * x**2``. None when the fit was built
        without it.
    """

    functions: tuple[SymbolicFunction, ...]
    params: torch.Tensor
    r2: torch.Tensor
    valid: torch.Tensor
    cancellation: torch.Tensor | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the candidates, in the order of the last axis of ``r2``."""
        return tuple(function.name for function in self.functions)

    def cancels(self) -> torch.Tensor:
        """Return which candidates cancel large terms, ``cancellation > CANCELLATION_LIMIT``, (n_edges, n_funcs).

        All False when the fit has no ``cancellation``.
        """
        if self.cancellation is None:
            return torch.zeros_like(self.valid)
        return self.cancellation > CANCELLATION_LIMIT

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate ``c * f(a * x + b) + d`` for every edge and candidate.

        Parameters
        ----------
        x : Tensor, shape (n_edges, n_samples)

        Returns
        -------
        Tensor, shape (n_edges, n_funcs, n_samples)
            In the dtype of ``params``. NaN for invalid candidates.
        """
        x = torch.as_tensor(x, dtype=self.params.dtype, device=self.params.device)
        if x.ndim != 2 or x.shape[0] != self.params.shape[0]:
            raise invalid_parameter("x", f"a tensor of shape ({self.params.shape[0]}, n_samples)", tuple(x.shape))
        a, b, c, d = (self.params[..., index, None] for index in range(4))
        columns = [function.torch_fn(a[:, k] * x + b[:, k]) for k, function in enumerate(self.functions)]
        prediction = c * torch.stack(columns, dim=1) + d
        return torch.where(self.valid[..., None], prediction, torch.nan)


@dataclass(frozen=True)
class CandidateRanking:
    """Result of :func:`rank_candidates`.

    Attributes
    ----------
    names : tuple of str
        Candidate names, ``n_funcs`` of them.
    score : Tensor, shape (n_edges, n_funcs)
        Lower is better. ``+inf`` for candidates that are invalid or below ``r2_threshold``.
    order : Tensor of int64, shape (n_edges, n_funcs)
        Candidate indices per edge, best first. Ties go to the lower complexity,
        then to the earlier candidate.
    best : Tensor of int64, shape (n_edges,)
        Index of the best candidate per edge, or -1 when no candidate is eligible.
    """

    names: tuple[str, ...]
    score: torch.Tensor
    order: torch.Tensor
    best: torch.Tensor

    @property
    def best_names(self) -> list[str | None]:
        """Name of the best candidate per edge, None where no candidate is eligible."""
        return [self.names[index] if index >= 0 else None for index in self.best.tolist()]


@dataclass(frozen=True)
class _Samples:
    """Samples of all edges in float64, with y in units of its spread and centred on its own mean."""

    x: torch.Tensor  # (n_edges, n_samples)
    y: torch.Tensor  # (n_edges, n_samples), centred on its own mean
    y_mean: torch.Tensor  # (n_edges,), mean of the scaled y before centring


@dataclass(frozen=True)
class _SearchSettings:
    a_range: tuple[float, float]
    b_range: tuple[float, float]
    grid_number: int
    zoom_number: int
    zoom_steps: int
    polish_steps: int
    n_starts: int
    domain_margin: float
    max_scaled_coefficient: float


@dataclass
class _Candidate:
    """Points ``(a, b)`` with their closed-form ``c``, ``d`` and r2, in units of the scaled y.

    All fields have the same shape, (n_funcs, n_edges) or (n_funcs, n_edges, n_points).
    ``r2`` is ``-inf`` and ``c``, ``d`` are 0 where ``ok`` is False.
    """

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    d: torch.Tensor
    r2: torch.Tensor
    ok: torch.Tensor

    def fields(self) -> tuple[torch.Tensor, ...]:
        return self.a, self.b, self.c, self.d, self.r2, self.ok

    def update(self, other: _Candidate, mask: torch.Tensor) -> None:
        """Take the fields of ``other`` where ``mask`` is True, in place."""
        self.a, self.b, self.c, self.d, self.r2, self.ok = (
            torch.where(mask, new, old) for new, old in zip(other.fields(), self.fields())
        )

    def take(self, index: torch.Tensor) -> _Candidate:
        """Pick one point per row along the last axis, ``index: (..., 1)``."""
        return _Candidate(*(field.gather(-1, index).squeeze(-1) for field in self.fields()))


@dataclass(frozen=True)
class _DomainTable:
    """Domains of several functions as tensors of shape (n_funcs, 1, 1), for batched checks."""

    low: torch.Tensor
    high: torch.Tensor
    low_open: torch.Tensor
    high_open: torch.Tensor
    excluded: torch.Tensor
    has_excluded: torch.Tensor

    @classmethod
    def build(cls, domains: Sequence[Domain], device: torch.device) -> _DomainTable:
        def column(values, dtype=torch.float64):
            return torch.tensor(values, dtype=dtype, device=device).reshape(-1, 1, 1)

        return cls(
            column([domain.low for domain in domains]),
            column([domain.high for domain in domains]),
            column([domain.low_open for domain in domains], torch.bool),
            column([domain.high_open for domain in domains], torch.bool),
            column([0.0 if domain.excluded is None else domain.excluded for domain in domains]),
            column([domain.excluded is not None for domain in domains], torch.bool),
        )

    def __getitem__(self, rows: slice | torch.Tensor) -> _DomainTable:
        return _DomainTable(
            self.low[rows], self.high[rows], self.low_open[rows], self.high_open[rows], self.excluded[rows],
            self.has_excluded[rows],
        )

    def contains_range(self, lower: torch.Tensor, upper: torch.Tensor, margin: float) -> torch.Tensor:
        """Batched :meth:`Domain.contains_range` for ``lower, upper: (n_funcs, n_edges, n_points)``."""
        ok = torch.isfinite(lower) & torch.isfinite(upper)

        above_low = torch.where(
            self.low_open,
            (lower - self.low > 0) & (lower - self.low >= margin * (upper - self.low)),
            lower >= self.low,
        )
        ok = ok & (torch.isinf(self.low) | above_low)

        below_high = torch.where(
            self.high_open,
            (self.high - upper > 0) & (self.high - upper >= margin * (self.high - lower)),
            upper <= self.high,
        )
        ok = ok & (torch.isinf(self.high) | below_high)

        above = (lower - self.excluded > 0) & (lower - self.excluded >= margin * (upper - self.excluded))
        below = (self.excluded - upper > 0) & (self.excluded - upper >= margin * (self.excluded - lower))
        return ok & (self.has_excluded.logical_not() | above | below)


def fit_affine(
    x: torch.Tensor,
    y: torch.Tensor,
    library: SymbolicLibrary | Iterable[str | SymbolicFunction] | None = None,
    *,
    a_range: tuple[float, float] = (-10.0, 10.0),
    b_range: tuple[float, float] = (-10.0, 10.0),
    grid_number: int = 21,
    zoom_number: int = 7,
    zoom_steps: int = 1,
    polish_steps: int = 16,
    n_starts: int = 3,
    search_samples: int = 128,
    domain_margin: float = 1e-3,
    max_scaled_coefficient: float = 1e6,
) -> AffineFit:
    """Fit ``y ~ c * f(a * x + b) + d`` for every edge and every library function.

    Each row of ``x`` and ``y`` is one regression problem, for example the inputs of
    an edge and its spline outputs. For every candidate ``f`` the search runs on all
    edges at once:

    1. A coarse ``grid_number x grid_number`` grid over ``a_range x b_range``, scored
       on ``search_samples`` samples per edge at evenly spaced ranks of ``x`` (these
       include min(x) and max(x)). Its ``n_starts`` best local maxima are the starts.
    2. For each start, ``zoom_steps`` finer ``zoom_number x zoom_number`` grids, each
       centred on the best point so far and spanning one step of the previous grid
       on each side.
    3. For each start, ``polish_steps`` Levenberg-Marquardt steps on the search
       samples, in ``(a, b)`` with ``c`` and ``d`` eliminated (variable projection).
       A step is kept only where it raises r2 and keeps the point allowed.
    4. The start with the highest r2 on all samples wins. If no start that was
       allowed on the search samples is allowed on all samples, the best coarse
       grid point scored on all samples is used.

    For each ``(a, b)``, ``c`` and ``d`` come from least squares in closed form, and
    r2 is the squared correlation of ``f(a * x + b)`` and ``y``. ``f = x`` is a
    linear regression and a constant ``f`` (such as ``0``) fits ``c = 0,
    d = mean(y)``, so neither runs the search.

    A point ``(a, b)`` is allowed for an edge only if:

    * ``[a * min(x) + b, a * max(x) + b]`` lies in the domain of ``f``, at a relative
      distance of ``domain_margin`` from open ends and the excluded point (see
      :meth:`Domain.contains_range`),
    * ``f(a * x + b)`` is finite on the samples,
    * with ``s = max|y - mean(y)|``, both ``|c| / s`` and ``|c| * max|f(a * x + b)| / s``
      are at most ``max_scaled_coefficient``. This rejects fits where ``c * f`` has a
      large constant part that ``d`` cancels. It also bounds ``|d - mean(y)| / s``
      by ``1 + max_scaled_coefficient``. Steps 1 to 3 use half of the bound, so that
      a point allowed on the search samples almost always passes on all samples.

    ``a`` stays in ``a_range`` and ``b`` in ``b_range``.

    Parameters
    ----------
    x, y : Tensor, shape (n_edges, n_samples)
        Finite samples, float32 or float64. Other dtypes are converted to the
        default dtype.
    library : SymbolicLibrary, iterable of str or SymbolicFunction, or None
        Candidates. Names are looked up in :func:`default_library`. None uses the
        whole default library.
    a_range, b_range : tuple of float
        Search ranges ``(low, high)`` of ``a`` and ``b``.
    grid_number : int
        Points per axis of the coarse grid, at least 2.
    zoom_number : int
        Points per axis of each zoom grid, at least 2.
    zoom_steps : int
        Number of zoom grids, at least 0.
    polish_steps : int
        Number of Levenberg-Marquardt steps, at least 0.
    n_starts : int
        Number of coarse-grid local maxima that are zoomed and polished, at least 1.
    search_samples : int
        Samples per edge used by the search, zoom and polish, at least 2. The
        returned parameters ``c``, ``d`` and r2 use all samples.
    domain_margin : float
        Relative distance kept from open domain ends, in ``[0, 1)``.
    max_scaled_coefficient : float
        Bound on ``c`` and ``c * f`` in units of the spread of ``y``, see above.

    Returns
    -------
    AffineFit
        ``params: (n_edges, n_funcs, 4)``, ``r2`` and ``valid: (n_edges, n_funcs)``, in
        the dtype of ``x``.

    Raises
    ------
    InvalidDataError
        When ``x`` and ``y`` differ in shape, are not 2-D, are empty or contain NaN
        or inf.
    InvalidParameterError
        When a setting is out of range or a library name is unknown.

    Warns
    -----
    SymbolicFitWarning
        When an edge has no valid candidate.

    Notes
    -----
    When ``y`` is constant (``max|y - mean(y)| <= 64 * eps * |mean(y)|`` in float64)
    every valid candidate gets ``c = 0`` and ``d = mean(y)``. Constant functions
    then get r2 = 1 and non-constant functions r2 = 0, because ``f`` explains no
    variance beyond the constant.

    NOTE: the search is local after step 1, so an optimum whose basin contains no
    coarse grid point can be missed. For ``sgn`` r2 is piecewise constant in
    ``(a, b)``, so its jump lands only where a grid or zoom point puts it, which can
    be a sample or more away from the best place.
    """
    x, y = _check_samples(x, y)
    functions = _resolve_functions(library)
    settings = _check_settings(
        a_range, b_range, grid_number, zoom_number, zoom_steps, polish_steps, n_starts, search_samples,
        domain_margin, max_scaled_coefficient,
    )
    out_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.get_default_dtype()

    x64 = x.detach().to(torch.float64)
    y64 = y.detach().to(torch.float64)
    n_edges, n_samples = x64.shape

    # Divide by max|y| first, so that the mean of values near the float64 maximum
    # cannot overflow. Then y = y_unit * (y_scale * y_scaled + y_center).
    y_max = y64.abs().amax(dim=1)
    y_unit = torch.where(y_max > 0, y_max, 1.0)
    y64 = y64 / y_unit[:, None]
    y_center = y64.mean(dim=1)
    y_spread = (y64 - y_center[:, None]).abs().amax(dim=1)
    constant_y = y_spread <= _CONSTANT_Y_TOLERANCE * y_center.abs()
    y_scale = torch.where(constant_y, torch.ones_like(y_spread), y_spread)
    y_scaled = torch.where(constant_y[:, None], 0.0, (y64 - y_center[:, None]) / y_scale[:, None])
    full = _centred_samples(x64, y_scaled)
    search = _search_subset(x64, y_scaled, search_samples) if n_samples > search_samples else full
    x_min, x_max = x64.amin(dim=1), x64.amax(dim=1)

    fixed_points = _fixed_points(settings, x_min, x_max)
    fixed = [k for k, function in enumerate(functions) if function.is_constant or function.is_identity]
    searched = [k for k in range(len(functions)) if k not in set(fixed)]
    parts: list[tuple[list[int], _Candidate]] = []
    if fixed:
        group = [functions[k] for k in fixed]
        table = _DomainTable.build([function.domain for function in group], x64.device)
        parts.append((fixed, _fit_fixed(group, table, fixed_points, full, x_min, x_max, settings)))
    if searched:
        group = [functions[k] for k in searched]
        table = _DomainTable.build([function.domain for function in group], x64.device)
        parts.append((searched, _fit_searched(group, table, search, full, x_min, x_max, settings)))

    # Put the rows back in library order. Each field becomes (n_edges, n_funcs).
    position = torch.tensor([k for indices, _ in parts for k in indices], device=x64.device)
    inverse = torch.argsort(position)
    a, b, c, d, r2, valid = (
        torch.cat([getattr(result, name) for _, result in parts], dim=0)[inverse].T
        for name in ("a", "b", "c", "d", "r2", "ok")
    )

    constant_function = torch.tensor([function.is_constant for function in functions], device=x64.device)
    r2 = torch.where(constant_y[:, None] & constant_function[None, :], 1.0, r2)

    # Undo the scaling of y. The products may overflow, which marks the candidate invalid.
    c = c * y_scale[:, None] * y_unit[:, None]
    d = (d * y_scale[:, None] + y_center[:, None]) * y_unit[:, None]
    params = torch.stack([a, b, c, d], dim=-1).to(out_dtype)
    valid = valid & torch.isfinite(params).all(dim=-1)

    placeholder = torch.stack(
        [
            fixed_points[0][:, :1].expand(n_edges, len(functions)),
            fixed_points[1][:, :1].expand(n_edges, len(functions)),
            torch.zeros(n_edges, len(functions), dtype=torch.float64, device=x64.device),
            (y_center * y_unit)[:, None].expand(n_edges, len(functions)),
        ],
        dim=-1,
    ).to(out_dtype)
    params = torch.where(valid[..., None], params, placeholder)
    r2 = torch.where(valid, r2.clamp(0.0, 1.0), -math.inf).to(out_dtype)
    cancellation = _cancellation(functions, params.to(torch.float64), valid & ~constant_y[:, None], x64, y_spread * y_unit)

    no_candidate = valid.logical_not().all(dim=1)
    if bool(no_candidate.any()):
        edges = no_candidate.nonzero().flatten().tolist()
        warnings.warn(
            f"no symbolic candidate is valid for edges {edges}. Add '0' or 'x' to the library, "
            "or widen a_range and b_range",
            SymbolicFitWarning,
            stacklevel=user_stacklevel(),
        )
    return AffineFit(tuple(functions), params, r2, valid, cancellation.to(out_dtype))


def _cancellation(functions, params, valid, x, spread) -> torch.Tensor:
    """Return ``max|c * f(a * x + b)| / spread`` per edge and candidate, 0 where not ``valid``.

    ``params`` is (n_edges, n_funcs, 4), ``x`` (n_edges, n_samples) and
    ``spread`` (n_edges,) the largest deviation of ``y`` from its mean.
    One function at a time, so memory stays at one (n_edges, n_samples) tensor.
    """
    columns = []
    for k, function in enumerate(functions):
        a, b, c = (params[:, k, index, None] for index in range(3))
        amplitude = (c * function.torch_fn(a * x + b)).abs().amax(dim=1)
        columns.append(amplitude)
    ratio = torch.stack(columns, dim=1) / torch.where(spread > 0, spread, 1.0)[:, None]
    return torch.where(valid & torch.isfinite(ratio), ratio, 0.0)


def rank_candidates(
    fit: AffineFit,
    complexity: Mapping[str, int | SymbolicFunction] | Sequence[int] | torch.Tensor | None = None,
    weight_simple: float = 0.8,
    r2_threshold: float = 0.0,
    *,
    complexity_scale: float = 3.0,
) -> CandidateRanking:
    """Rank the candidates of each edge by accuracy and simplicity.

    The score of a candidate with coefficient of determination ``r2`` and
    complexity ``k``, lower is better, is::

        score = log10(1 - r2 + F) + weight_simple * B * k / (k + complexity_scale)

    with ``F = UNEXPLAINED_FLOOR`` (1e-4) and ``B = log10((1 + F) / (0.01 +
    F))``, about 2. The first term counts the decades of unexplained
    variance down to ``F``. A trained spline is only about 1% of an edge's
    spread (in RMSE) from the function it approximates, so a better fit
    below that level does not favour a more complex function. The
    complexity penalty grows with ``k`` but stays below ``B``, the score
    difference between ``r2 = 0`` and ``r2 = 0.99``. Candidates that are
    invalid or have ``r2 < r2_threshold`` get ``+inf``.

    Guarantee for fits from :func:`fit_affine`: on an edge where a non-constant
    candidate has ``r2 > 0.99``, no constant candidate such as ``0`` ranks first,
    for every ``weight_simple`` in ``[0, 1)``. Such an r2 means that ``y`` is not
    constant, because on a constant ``y`` non-constant candidates get r2 = 0. So the
    constant candidates have r2 = 0 and a score of at least ``log10(1 + F)``, while
    the good candidate scores below ``log10(0.01 + F) + B * weight_simple``, which is
    less.

    A candidate that cancels large terms (:meth:`AffineFit.cancels`) does not rank
    first when a non-constant candidate that does not cancel scores at most
    ``CANCELLATION_TIE`` higher; that candidate moves to the front instead. The
    guarantee above still holds, because the candidate moved is never constant.

    Parameters
    ----------
    fit : AffineFit
    complexity : mapping, sequence, Tensor or None
        Complexity per candidate: a mapping from name to int or to SymbolicFunction
        (a SymbolicLibrary works), or ``n_funcs`` numbers in the order of
        ``fit.names``. None uses the complexities of ``fit.functions``.
    weight_simple : float
        Weight of the complexity penalty, in ``[0, 1)``. 0 ranks by r2 alone.
    r2_threshold : float
        Candidates with a lower r2 are not eligible.
    complexity_scale : float
        Complexity at which the penalty reaches half its bound, > 0.

    Returns
    -------
    CandidateRanking
        ``score`` and ``order: (n_edges, n_funcs)``, ``best: (n_edges,)``.
    """
    if not 0.0 <= float(weight_simple) < 1.0:
        raise invalid_parameter("weight_simple", "a number in [0, 1)", weight_simple)
    if math.isnan(float(r2_threshold)):
        raise invalid_parameter("r2_threshold", "a number", r2_threshold)
    if not float(complexity_scale) > 0.0:
        raise invalid_parameter("complexity_scale", "a number > 0", complexity_scale)

    values = _complexity_values(fit, complexity)
    r2 = fit.r2.detach().to(torch.float64)
    # Unexplained variance within rounding of 0 counts as exactly 0, so exact fits tie.
    unexplained = torch.where(1.0 - r2 > _EXACT_FIT, 1.0 - r2, 0.0) + UNEXPLAINED_FLOOR
    penalty = _PENALTY_BOUND * values / (values + float(complexity_scale))
    score = torch.log10(unexplained) + float(weight_simple) * penalty[None, :]
    eligible = fit.valid & (r2 >= float(r2_threshold))
    score = torch.where(eligible, score, math.inf)

    # Stable sorts: by complexity first, then by score, so ties in score keep the
    # lower complexity and then the library order.
    by_complexity = torch.sort(values, stable=True).indices
    order_in_score = torch.sort(score[:, by_complexity], dim=1, stable=True).indices
    order = by_complexity[order_in_score]
    order = _prefer_not_cancelling(fit, score, order)
    first = order[:, 0]
    has_candidate = torch.isfinite(score.gather(1, first[:, None]).squeeze(1))
    best = torch.where(has_candidate, first, -1)
    return CandidateRanking(fit.names, score, order, best)


def _prefer_not_cancelling(fit: AffineFit, score: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Move the best non-constant candidate that does not cancel to the front where the first one cancels and it scores within CANCELLATION_TIE."""
    cancels = fit.cancels()
    constant = torch.tensor([function.is_constant for function in fit.functions], device=score.device)
    order = order.clone()
    for row in range(order.shape[0]):
        first = int(order[row, 0])
        if not bool(cancels[row, first]) or not math.isfinite(float(score[row, first])):
            continue
        limit = float(score[row, first]) + CANCELLATION_TIE
        for position in range(1, order.shape[1]):
            candidate = int(order[row, position])
            if float(score[row, candidate]) > limit:
                break
            if not bool(cancels[row, candidate]) and not bool(constant[candidate]):
                order[row] = torch.cat([order[row, position : position + 1], order[row, :position], order[row, position + 1 :]])
                break
    return order


def _check_samples(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.as_tensor(x)
    y = torch.as_tensor(y, device=x.device)
    if x.shape != y.shape or x.ndim != 2:
        raise InvalidDataError(
            f"x and y must both have shape (n_edges, n_samples), received {tuple(x.shape)} and {tuple(y.shape)}. "
            "Add a leading axis with x[None] for a single edge"
        )
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidDataError(
            f"x and y must contain at least one edge and one sample, received shape {tuple(x.shape)}"
        )
    for name, values in (("x", x), ("y", y)):
        if values.is_complex() or values.dtype == torch.bool:
            raise InvalidDataError(f"{name} must be real numbers, received dtype {values.dtype}")
        if values.is_floating_point() and not bool(torch.isfinite(values).all()):
            bad = (~torch.isfinite(values)).nonzero()[0].tolist()
            raise InvalidDataError(f"{name} contains NaN or inf, first at index {bad}. Remove or clip those samples")
    return x, y


def _check_settings(
    a_range, b_range, grid_number, zoom_number, zoom_steps, polish_steps, n_starts, search_samples, domain_margin,
    max_scaled_coefficient,
) -> _SearchSettings:
    ranges = {}
    for name, bounds in (("a_range", a_range), ("b_range", b_range)):
        try:
            low, high = (float(bound) for bound in bounds)
        except (TypeError, ValueError) as error:
            raise invalid_parameter(name, "a pair (low, high) of finite numbers", bounds) from error
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise invalid_parameter(name, "a pair (low, high) of finite numbers with low < high", bounds)
        ranges[name] = (low, high)
    for name, value, minimum in (
        ("grid_number", grid_number, 2),
        ("zoom_number", zoom_number, 2),
        ("zoom_steps", zoom_steps, 0),
        ("polish_steps", polish_steps, 0),
        ("n_starts", n_starts, 1),
        ("search_samples", search_samples, 2),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise invalid_parameter(name, f"an integer >= {minimum}", value)
    if not 0.0 <= float(domain_margin) < 1.0:
        raise invalid_parameter("domain_margin", "a number in [0, 1)", domain_margin)
    if not float(max_scaled_coefficient) > 0.0 or math.isinf(float(max_scaled_coefficient)):
        raise invalid_parameter("max_scaled_coefficient", "a finite number > 0", max_scaled_coefficient)
    return _SearchSettings(
        ranges["a_range"], ranges["b_range"], grid_number, zoom_number, zoom_steps, polish_steps, n_starts,
        float(domain_margin), float(max_scaled_coefficient),
    )


def _resolve_functions(
    library: SymbolicLibrary | Iterable[str | SymbolicFunction] | SymbolicFunction | None,
) -> list[SymbolicFunction]:
    if library is None:
        return list(default_library().values())
    if isinstance(library, SymbolicLibrary):
        functions = list(library.values())
    elif isinstance(library, SymbolicFunction):
        functions = [library]
    elif isinstance(library, str):
        functions = [default_library()[library]]
    else:
        defaults = default_library()
        functions = []
        for item in library:
            if isinstance(item, SymbolicFunction):
                functions.append(item)
            else:
                functions.append(defaults[item])
    if not functions:
        raise invalid_parameter("library", "at least one symbolic function", library)
    return functions


def _complexity_values(fit: AffineFit, complexity) -> torch.Tensor:
    """Return the complexity of each candidate of ``fit`` as a float64 tensor of shape (n_funcs,)."""
    if complexity is None:
        values = [function.complexity for function in fit.functions]
    elif isinstance(complexity, Mapping):
        values = []
        for name in fit.names:
            if name not in complexity:
                raise invalid_parameter(
                    "complexity", f"a mapping with an entry for every candidate ({', '.join(fit.names)})", name
                )
            entry = complexity[name]
            values.append(entry.complexity if isinstance(entry, SymbolicFunction) else entry)
    else:
        values = torch.as_tensor(complexity).flatten().tolist()
        if len(values) != len(fit.names):
            raise invalid_parameter("complexity", f"{len(fit.names)} values, one per candidate", len(values))
    tensor = torch.tensor([float(value) for value in values], dtype=torch.float64, device=fit.r2.device)
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise invalid_parameter("complexity", "finite numbers >= 0", values)
    return tensor


def _centred_samples(x: torch.Tensor, y: torch.Tensor) -> _Samples:
    y_mean = y.mean(dim=1)
    return _Samples(x, y - y_mean[:, None], y_mean)


def _search_subset(x: torch.Tensor, y: torch.Tensor, count: int) -> _Samples:
    """Pick ``count`` samples per edge at evenly spaced ranks of x, including min(x) and max(x)."""
    order = torch.argsort(x, dim=1)
    ranks = torch.linspace(0, x.shape[1] - 1, count, device=x.device).round().long()
    picked = order[:, ranks]
    return _centred_samples(x.gather(1, picked), y.gather(1, picked))


def _fixed_points(
    settings: _SearchSettings, x_min: torch.Tensor, x_max: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(a, b)`` of shape (n_edges, 2) for the identity and constant functions.

    The first point is ``(1, 0)`` where the ranges allow, so that ``f = x`` reads as
    ``c * x + d``. The second centres ``a * x + b`` on the data, which keeps
    ``max|a * x + b|`` small when x lies far from 0.
    """
    a_low, a_high = settings.a_range
    a_value = min(max(1.0, a_low), a_high)
    if a_value == 0.0:
        a_value = a_low if abs(a_low) > abs(a_high) else a_high
    b_low, b_high = settings.b_range
    b_plain = min(max(0.0, b_low), b_high)
    b_centred = (-a_value * 0.5 * (x_min + x_max)).clamp(b_low, b_high)
    a = torch.full((x_min.shape[0], 2), a_value, dtype=torch.float64, device=x_min.device)
    b = torch.stack([torch.full_like(b_centred, b_plain), b_centred], dim=1)
    return a, b


def _fit_fixed(functions, table, fixed_points, samples, x_min, x_max, settings) -> _Candidate:
    """Fit functions that need no search, at the first valid point of ``fixed_points``."""
    a, b = (points.expand(len(functions), -1, -1) for points in fixed_points)
    scores = _evaluate_points(functions, table, a, b, samples, x_min, x_max, settings)
    use_second = scores.ok[..., 1] & scores.ok[..., 0].logical_not()
    return scores.take(use_second.long()[..., None])


def _evaluate_points(
    functions: Sequence[SymbolicFunction],
    table: _DomainTable,
    a: torch.Tensor,
    b: torch.Tensor,
    samples: _Samples,
    x_min: torch.Tensor,
    x_max: torch.Tensor,
    settings: _SearchSettings,
) -> _Candidate:
    """Fit ``c`` and ``d`` in closed form at each point ``(a, b)``, for every function and edge.

    Parameters
    ----------
    a, b : Tensor, shape (n_funcs, n_edges, n_points)

    Returns
    -------
    _Candidate with fields of shape (n_funcs, n_edges, n_points)

    Notes
    -----
    The work runs in blocks of at most ``_BLOCK_ELEMENTS`` values of ``f``, split
    over functions first and then over edges, to bound the memory use.
    """
    rows = []
    for f_rows, edge_slices in _blocks(a.shape[0], a.shape[1], a.shape[2] * samples.x.shape[1]):
        blocks = [
            _evaluate_block(
                functions[f_rows], table[f_rows], a[f_rows, e_rows], b[f_rows, e_rows], _edge_rows(samples, e_rows),
                x_min[e_rows], x_max[e_rows], settings,
            )
            for e_rows in edge_slices
        ]
        rows.append(_concatenate(blocks, dim=1))
    return _concatenate(rows, dim=0)


def _blocks(n_funcs: int, n_edges: int, per_item: int) -> list[tuple[slice, list[slice]]]:
    """Split (function, edge) pairs into blocks of at most ``_BLOCK_ELEMENTS`` elements.

    ``per_item`` is the number of elements per function and edge. Returns the
    function slices, each with its edge slices.
    """
    edges_per_block = max(1, min(n_edges, _BLOCK_ELEMENTS // max(per_item, 1)))
    funcs_per_block = max(1, _BLOCK_ELEMENTS // (max(per_item, 1) * edges_per_block))
    edge_slices = [slice(start, start + edges_per_block) for start in range(0, n_edges, edges_per_block)]
    return [(slice(start, start + funcs_per_block), edge_slices) for start in range(0, n_funcs, funcs_per_block)]


def _edge_rows(samples: _Samples, rows: slice) -> _Samples:
    return _Samples(samples.x[rows], samples.y[rows], samples.y_mean[rows])


def _concatenate(candidates: list[_Candidate], dim: int) -> _Candidate:
    if len(candidates) == 1:
        return candidates[0]
    return _Candidate(*(torch.cat(parts, dim=dim) for parts in zip(*(item.fields() for item in candidates))))


def _evaluate_block(functions, table, a, b, samples, x_min, x_max, settings) -> _Candidate:
    ends_low = a * x_min[:, None] + b
    ends_high = a * x_max[:, None] + b
    allowed = table.contains_range(
        torch.minimum(ends_low, ends_high), torch.maximum(ends_low, ends_high), settings.domain_margin
    )

    # The coarse grid passes the same (a, b) for every function as a stride-0 view,
    # so the arguments are built once.
    shared = a.stride(0) == 0 and b.stride(0) == 0
    statistics = []
    for k, function in enumerate(functions):
        if k == 0 or not shared:
            arguments = torch.baddbmm(b[k, ..., None], a[k, ..., None], samples.x[:, None, :])
        with torch.no_grad():
            values = function.torch_fn(arguments).to(torch.float64)
        # Overwrite only a dense tensor that shares no memory with the arguments.
        own = values.is_contiguous() and values.untyped_storage().data_ptr() != arguments.untyped_storage().data_ptr()
        statistics.append(_moments(values, samples.y[:, None, :], overwrite=own))
    moments = tuple(torch.stack(column) for column in zip(*statistics))
    sum_yy = (samples.y * samples.y).sum(dim=-1)[None, :, None]
    return _closed_form(a, b, moments, allowed, samples.y_mean[None, :, None], sum_yy, samples.x.shape[1], settings)


def _closed_form(a, b, moments, allowed, y_mean, sum_yy, n_samples, settings) -> _Candidate:
    """Compute ``c``, ``d`` and r2 from the moments of ``z = f(a * x + b)``, and mark the allowed points.

    ``moments`` is the output of :func:`_moments`. ``y_mean`` and ``sum_yy`` broadcast
    against ``a``.
    """
    mean_z, sum_zz, sum_zy, max_abs_z = moments
    finite = torch.isfinite(sum_zz) & torch.isfinite(sum_zy) & torch.isfinite(max_abs_z)
    flat = sum_zz <= (_FLAT_Z_TOLERANCE * max_abs_z) ** 2 * n_samples
    usable = finite & flat.logical_not()
    safe_zz = torch.where(usable, sum_zz, 1.0)
    c = torch.where(usable, sum_zy / safe_zz, 0.0)
    # r2 = sum_zy^2 / (sum_zz * sum_yy), written as c * sum_zy / sum_yy so that no
    # intermediate overflows for large z.
    has_variance = sum_yy > 0
    r2 = torch.where(usable & has_variance, c * sum_zy / torch.where(has_variance, sum_yy, 1.0), 0.0)
    d = y_mean - c * torch.where(finite, mean_z, 0.0)

    limit = settings.max_scaled_coefficient
    ok = allowed & finite & torch.isfinite(r2) & (c.abs() <= limit) & (c.abs() * max_abs_z <= limit)
    return _Candidate(
        a, b, torch.where(ok, c, 0.0), torch.where(ok, d, 0.0), torch.where(ok, r2.clamp(0.0, 1.0), -math.inf), ok
    )


def _moments(values: torch.Tensor, y: torch.Tensor, overwrite: bool = False) -> tuple[torch.Tensor, ...]:
    """Return mean(z), sum((z - mean)^2), sum(z * y) and max|z| over the last axis.

    ``values: (..., n_samples)`` and the centred ``y`` broadcast against each other.
    Because ``y`` is centred, ``sum(z * y)`` equals the sum with the centred ``z``.
    With ``overwrite``, ``values`` is used as scratch space, which saves two large
    temporary tensors.
    """
    mean = values.mean(dim=-1)
    sum_products = torch.linalg.vecdot(values, y)
    max_abs = torch.maximum(values.amax(dim=-1), values.amin(dim=-1).neg())
    centred = values.sub_(mean[..., None]) if overwrite else values - mean[..., None]
    sum_squares = torch.linalg.vecdot(centred, centred)
    return mean, sum_squares, sum_products, max_abs


def _select_best(candidate: _Candidate) -> _Candidate:
    """Keep the point with the highest r2 along the last axis. Ties go to the first point."""
    return candidate.take(candidate.r2.argmax(dim=-1, keepdim=True))


def _grid_axis(low: float, high: float, count: int, device: torch.device) -> torch.Tensor:
    axis = torch.linspace(low, high, count, dtype=torch.float64, device=device)
    if low == -high:
        # Make the axis exactly antisymmetric, so that mirrored points exist.
        axis = 0.5 * (axis - axis.flip(0))
    return axis


def _coarse_scores(
    functions, table, samples, x_min, x_max, settings
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Score the coarse grid and return r2 of shape (n_funcs, n_edges, n, n) with the a and b axes.

    For an even or odd ``f`` with a symmetric domain, ``(a, b)`` and ``(-a, -b)``
    give the same r2, because the sign of an odd ``f`` goes into ``c``. On a grid
    that is symmetric about the origin such functions are scored only on the half
    with ``a > 0``, or ``a = 0`` and ``b >= 0``, and the other half is mirrored.
    """
    n_edges = samples.x.shape[0]
    size = settings.grid_number
    device = samples.x.device
    a_axis = _grid_axis(*settings.a_range, size, device)
    b_axis = _grid_axis(*settings.b_range, size, device)
    a_grid, b_grid = (grid.flatten() for grid in torch.meshgrid(a_axis, b_axis, indexing="ij"))
    half = ((a_grid > 0) | ((a_grid == 0) & (b_grid >= 0))).nonzero().flatten()
    whole = torch.arange(size * size, device=device)

    r2 = torch.full((len(functions), n_edges, size * size), -math.inf, dtype=torch.float64, device=device)
    mirrored = [k for k, function in enumerate(functions) if _is_mirrored(function, settings)]
    others = [k for k in range(len(functions)) if k not in set(mirrored)]
    for indices, points in ((mirrored, half), (others, whole)):
        if not indices:
            continue
        rows = torch.tensor(indices, device=device)
        a = a_grid[points].reshape(1, 1, -1).expand(len(indices), n_edges, -1)
        b = b_grid[points].reshape(1, 1, -1).expand(len(indices), n_edges, -1)
        scores = _evaluate_points([functions[k] for k in indices], table[rows], a, b, samples, x_min, x_max, settings)
        block = r2[rows]
        block[..., points] = scores.r2
        if points is half:
            # The flat index of (-a, -b) is size * size - 1 - index on the antisymmetric axes.
            block[..., size * size - 1 - points] = scores.r2
        r2[rows] = block
    return r2.reshape(len(functions), n_edges, size, size), a_axis, b_axis


def _is_mirrored(function: SymbolicFunction, settings: _SearchSettings) -> bool:
    symmetric_grid = settings.a_range[0] == -settings.a_range[1] and settings.b_range[0] == -settings.b_range[1]
    return symmetric_grid and function.parity != 0


def _coarse_starts(functions, r2, a_axis, b_axis, settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``a, b: (n_funcs, n_edges, n_starts)`` at the best local maxima of the coarse r2 grid.

    A local maximum is a finite r2 that no grid neighbour, diagonals included,
    exceeds. Of a mirrored pair only the point in the scored half counts. Rows with
    fewer local maxima fill up with the best other grid points.
    """
    n_funcs, n_edges, size, _ = r2.shape
    pooled = torch.nn.functional.max_pool2d(r2.reshape(-1, 1, size, size), 3, stride=1, padding=1)
    is_peak = (r2 == pooled.reshape(r2.shape)) & torch.isfinite(r2)
    a_grid, b_grid = torch.meshgrid(a_axis, b_axis, indexing="ij")
    in_half = (a_grid > 0) | ((a_grid == 0) & (b_grid >= 0))
    mirrored = torch.tensor([_is_mirrored(function, settings) for function in functions], device=r2.device)
    is_peak = is_peak & (in_half | mirrored.logical_not()[:, None, None, None])
    # Non-peaks rank after every peak (r2 - 2 < 0 <= r2) but still by r2, so rows
    # with fewer than n_starts peaks fill up with good points, not disallowed ones.
    peaks = torch.where(is_peak, r2, r2 - 2.0).reshape(n_funcs, n_edges, -1)
    count = min(settings.n_starts, size * size)
    index = torch.topk(peaks, count, dim=-1).indices
    return a_grid.flatten()[index], b_grid.flatten()[index]


def _zoom(functions, table, best: _Candidate, samples, x_min, x_max, settings) -> _Candidate:
    """Refine each start of ``best`` (fields (n_funcs, n_edges, n_starts)) on ``zoom_steps`` zoom grids.

    Each zoom grid is centred on the best point so far and spans one step of the
    previous grid on each side.
    """
    n_funcs, n_edges, n_starts = best.a.shape
    a_low, a_high = settings.a_range
    b_low, b_high = settings.b_range
    size = settings.zoom_number
    a_half = (a_high - a_low) / (settings.grid_number - 1)
    b_half = (b_high - b_low) / (settings.grid_number - 1)
    offsets = torch.linspace(-1.0, 1.0, size, dtype=torch.float64, device=best.a.device)
    for _ in range(settings.zoom_steps):
        a_axis = (best.a[..., None] + a_half * offsets).clamp(a_low, a_high)
        b_axis = (best.b[..., None] + b_half * offsets).clamp(b_low, b_high)
        a = a_axis[..., :, None].expand(-1, -1, -1, -1, size).reshape(n_funcs, n_edges, -1)
        b = b_axis[..., None, :].expand(-1, -1, -1, size, -1).reshape(n_funcs, n_edges, -1)
        scores = _evaluate_points(functions, table, a, b, samples, x_min, x_max, settings)
        per_start = _Candidate(*(field.reshape(n_funcs, n_edges, n_starts, -1) for field in scores.fields()))
        zoomed = _select_best(per_start)
        best.update(zoomed, zoomed.r2 > best.r2)
        a_half *= 2.0 / (size - 1)
        b_half *= 2.0 / (size - 1)
    return best


def _fit_searched(functions, table, search, full, x_min, x_max, settings) -> _Candidate:
    """Fit functions by grid search, zoom and polish, and return fields of shape (n_funcs, n_edges).

    The ``n_starts`` best local maxima of the coarse grid are zoomed and polished
    separately on the search samples. The polished points and the starts are then
    scored on all samples, and the highest r2 wins. The search uses half of
    ``max_scaled_coefficient``, so that a point allowed on the search samples is
    almost always allowed on all samples too.
    """
    n_funcs, n_edges = len(functions), search.x.shape[0]
    strict = replace(settings, max_scaled_coefficient=0.5 * settings.max_scaled_coefficient)
    r2_grid, a_axis, b_axis = _coarse_scores(functions, table, search, x_min, x_max, strict)
    a_start, b_start = _coarse_starts(functions, r2_grid, a_axis, b_axis, strict)
    found = _evaluate_points(functions, table, a_start, b_start, search, x_min, x_max, strict)
    found = _zoom(functions, table, found, search, x_min, x_max, strict)
    if settings.polish_steps > 0:
        rows = []
        per_item = 8 * found.a.shape[-1] * search.x.shape[1]
        for f_rows, edge_slices in _blocks(n_funcs, n_edges, per_item):
            blocks = [
                _polish(
                    functions[f_rows], table[f_rows], _Candidate(*(field[f_rows, e_rows] for field in found.fields())),
                    _edge_rows(search, e_rows), x_min[e_rows], x_max[e_rows], strict,
                )
                for e_rows in edge_slices
            ]
            rows.append(_concatenate(blocks, dim=1))
        found = _concatenate(rows, dim=0)

    a = torch.cat([found.a, a_start], dim=-1)
    b = torch.cat([found.b, b_start], dim=-1)
    best = _select_best(_evaluate_points(functions, table, a, b, full, x_min, x_max, settings))
    lost = best.ok.logical_not() & found.ok.any(dim=-1)
    for k in lost.any(dim=1).nonzero().flatten().tolist():
        # No point that was allowed on the search samples is allowed on all
        # samples, so take the best point of the coarse grid scored on all samples.
        rows = slice(k, k + 1)
        grid, _, _ = _coarse_scores(functions[rows], table[rows], full, x_min, x_max, settings)
        index = grid.reshape(1, n_edges, -1).argmax(dim=-1, keepdim=True)
        a_grid, b_grid = (points.flatten() for points in torch.meshgrid(a_axis, b_axis, indexing="ij"))
        fallback = _select_best(
            _evaluate_points(functions[rows], table[rows], a_grid[index], b_grid[index], full, x_min, x_max, settings)
        )
        fields = [field.clone() for field in best.fields()]
        for field, replacement in zip(fields, fallback.fields()):
            field[k] = torch.where(lost[k], replacement[0], field[k])
        best = _Candidate(*fields)
    return best


def _polish(functions, table, best: _Candidate, samples: _Samples, x_min, x_max, settings) -> _Candidate:
    """Refine ``(a, b)`` by Levenberg-Marquardt steps on the variable projection of the residual.

    For fixed ``(a, b)`` the optimal ``c`` and ``d`` make the residual
    ``r = c * f(a * x + b) + d - y`` orthogonal to ``1`` and ``z = f(a * x + b)``.
    With ``u = a * x + b`` and ``P`` the projection onto the complement of
    ``span{1, z}``, the Jacobian of ``r`` in ``(a, b)`` is approximated by
    ``J = P [c f'(u) x, c f'(u)]`` (Kaufman's variant of variable projection). Each
    step solves ``(J^T J + damping * diag(J^T J)) delta = -J^T r``, and the new
    ``(a, b)`` get ``c`` and ``d`` in closed form. A step is kept where it raises r2
    and the new point is allowed. The damping shrinks tenfold after a kept step
    and grows tenfold after a rejected one, separately per function, edge and start.
    """
    _, values, slopes = _evaluate_with_slopes(functions, table, best.a, best.b, samples, x_min, x_max, settings)
    a_low, a_high = settings.a_range
    b_low, b_high = settings.b_range
    x = samples.x[None, :, None, :]
    y = (samples.y + samples.y_mean[:, None])[None, :, None, :]
    damping = torch.full_like(best.a, 1e-3)
    for _ in range(settings.polish_steps):
        if slopes is None or not bool(best.ok.any()):
            break
        c = best.c[..., None]
        centred = values - values.mean(dim=-1, keepdim=True)
        norm_z = (centred * centred).sum(dim=-1, keepdim=True)
        norm_z = torch.where(norm_z > 0, norm_z, 1.0)

        def project(column: torch.Tensor) -> torch.Tensor:
            column = column - column.mean(dim=-1, keepdim=True)
            return column - (column * centred).sum(dim=-1, keepdim=True) / norm_z * centred

        column_a = project(c * slopes * x)
        column_b = project(c * slopes)
        residual = c * values + best.d[..., None] - y
        h_aa = (column_a * column_a).sum(dim=-1)
        h_ab = (column_a * column_b).sum(dim=-1)
        h_bb = (column_b * column_b).sum(dim=-1)
        g_a = (column_a * residual).sum(dim=-1)
        g_b = (column_b * residual).sum(dim=-1)
        floor = 1e-12 * torch.maximum(h_aa, h_bb) + 1e-300
        h_aa = h_aa * (1.0 + damping) + floor
        h_bb = h_bb * (1.0 + damping) + floor
        determinant = h_aa * h_bb - h_ab * h_ab
        step_a = -(h_bb * g_a - h_ab * g_b) / determinant
        step_b = -(h_aa * g_b - h_ab * g_a) / determinant
        solved = torch.isfinite(step_a) & torch.isfinite(step_b) & (determinant > 0)

        a_new = (best.a + torch.where(solved, step_a, 0.0)).clamp(a_low, a_high)
        b_new = (best.b + torch.where(solved, step_b, 0.0)).clamp(b_low, b_high)
        trial, trial_values, trial_slopes = _evaluate_with_slopes(
            functions, table, a_new, b_new, samples, x_min, x_max, settings
        )
        if trial_slopes is None:
            break
        accept = solved & best.ok & trial.ok & (trial.r2 > best.r2)
        best.update(trial, accept)
        values = torch.where(accept[..., None], trial_values, values)
        slopes = torch.where(accept[..., None], trial_slopes, slopes)
        damping = torch.where(accept, damping * 0.1, damping * 10.0).clamp(1e-12, 1e12)
    return best


def _evaluate_with_slopes(functions, table, a, b, samples, x_min, x_max, settings):
    """Fit ``c`` and ``d`` at the points ``a, b: (n_funcs, n_edges, n_points)``.

    Returns the candidate, ``f(a * x + b)`` and ``f'(a * x + b)``, the last two of
    shape (n_funcs, n_edges, n_points, n_samples). The slopes are None when autograd
    cannot differentiate a function.
    """
    arguments = a[..., None] * samples.x[None, :, None, :] + b[..., None]
    values, slopes = _values_and_slopes(functions, arguments)
    ends_low = a * x_min[:, None] + b
    ends_high = a * x_max[:, None] + b
    allowed = table.contains_range(
        torch.minimum(ends_low, ends_high), torch.maximum(ends_low, ends_high), settings.domain_margin
    )
    moments = _moments(values, samples.y[None, :, None, :])
    sum_yy = (samples.y * samples.y).sum(dim=-1)[None, :, None]
    candidate = _closed_form(
        a, b, moments, allowed, samples.y_mean[None, :, None], sum_yy, samples.x.shape[1], settings
    )
    return candidate, values, slopes


def _values_and_slopes(functions, arguments: torch.Tensor):
    """Return ``f(u)`` and ``f'(u)`` for ``arguments: (n_funcs, ...)``, one function per row.

    The slopes are None when autograd fails on one of the functions.
    """
    leaf = arguments.detach().requires_grad_(True)
    try:
        with torch.enable_grad():
            values = torch.stack([function.torch_fn(leaf[k]) for k, function in enumerate(functions)])
            if values.requires_grad:
                (slopes,) = torch.autograd.grad(values.sum(), leaf)
                return values.detach().to(torch.float64), slopes.to(torch.float64)
    except RuntimeError:
        # A user torch function that autograd cannot differentiate keeps the grid result.
        pass
    with torch.no_grad():
        values = torch.stack([function.torch_fn(arguments[k]) for k, function in enumerate(functions)])
    return values.to(torch.float64), None
