"""B-spline bases, knot grids and coefficient fitting as pure functions.

Symbols used in the shapes below:

- ``batch``: number of samples,
- ``n_in``: number of input nodes of a layer (one knot vector per input),
- ``n_out``: number of target nodes of a layer,
- ``G``: number of grid intervals, ``k``: spline order (degree),
- ``n_basis = G + k``: basis functions per input,
- ``n_knots = G + 2k + 1``: knots per input.

A knot vector covers the data range ``[t_k, t_{G+k}]`` with ``G`` intervals
and extends ``k`` intervals past each end so that every point of the data
range is covered by ``k + 1`` basis functions. Outside the extended knots
``[t_0, t_{G+2k}]`` every basis function is zero; between the data range and
the extended end the spline decays smoothly (it is ``C^{k-1}`` everywhere), so
a spline edge is finite and continuous everywhere and equals zero far away
from the data. The base branch of an edge (SiLU by default) carries on
outside the grid.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .errors import InvalidDataError, invalid_parameter

__all__ = [
    "bspline_basis",
    "bspline_basis_reference",
    "bspline_basis_uniform",
    "uniform_piece_coefficients",
    "knot_reciprocals",
    "uniform_reciprocals",
    "uniform_grid",
    "grid_from_samples",
    "extend_grid",
    "fit_coefficients",
    "spline_values",
]


def _check_order(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise invalid_parameter("k", "an integer >= 0", k)


def _check_grid_size(grid_size: int) -> None:
    if not isinstance(grid_size, int) or isinstance(grid_size, bool) or grid_size < 1:
        raise invalid_parameter("grid", "an integer >= 1", grid_size)


def extend_grid(interior: torch.Tensor, k: int) -> torch.Tensor:
    """Pad interior knots with ``k`` knots on each side at the end spacing.

    Parameters
    ----------
    interior : tensor of shape (n_in, G + 1)
        Strictly increasing knots from the first to the last data point.
    k : int
        Spline order.

    Returns
    -------
    tensor of shape (n_in, G + 2k + 1)
        The padded knots. The step of the padding is ``(t_G - t_0) / G`` of
        the interior knots, the mean interval width.
    """
    grid_size = interior.shape[-1] - 1
    step = (interior[:, -1:] - interior[:, :1]) / grid_size
    offsets = torch.arange(1, k + 1, dtype=interior.dtype, device=interior.device)
    left = interior[:, :1] - step * offsets.flip(0)
    right = interior[:, -1:] + step * offsets
    return torch.cat([left, interior, right], dim=1)


def uniform_grid(
    low: torch.Tensor | float,
    high: torch.Tensor | float,
    grid_size: int,
    k: int,
    *,
    n_in: int = 1,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Return equally spaced knots over ``[low, high]``, padded by ``k`` on each side.

    Parameters
    ----------
    low, high : float or tensor of shape (n_in,)
        Ends of the data range for each input.
    grid_size : int
        Number of intervals ``G`` between ``low`` and ``high``.
    k : int
        Spline order.
    n_in : int
        Number of inputs when ``low`` and ``high`` are scalars.

    Returns
    -------
    tensor of shape (n_in, G + 2k + 1)
    """
    _check_grid_size(grid_size)
    _check_order(k)
    dtype = dtype or torch.get_default_dtype()
    low = torch.as_tensor(low, dtype=dtype, device=device).reshape(-1)
    high = torch.as_tensor(high, dtype=dtype, device=device).reshape(-1)
    if low.numel() == 1 and n_in > 1:
        low = low.expand(n_in)
        high = high.expand(n_in)
    if bool((high <= low).any()):
        raise invalid_parameter("grid range", "low < high for every input", (low.tolist(), high.tolist()))

    fractions = torch.linspace(0, 1, grid_size + 1, dtype=dtype, device=device)
    interior = low[:, None] + (high - low)[:, None] * fractions
    return extend_grid(interior, k)


def _separate_close_knots(knots: torch.Tensor, min_gap: torch.Tensor) -> torch.Tensor:
    """Widen intervals narrower than ``min_gap`` and keep both ends fixed.

    Repeated sample values make quantile knots coincide, and a zero-width
    interval divides by zero in the basis recursion. Intervals are clamped to
    ``min_gap`` and rescaled so the first and last knot stay where they were.
    """
    gaps = knots.diff(dim=1)
    if bool((gaps >= min_gap).all()):
        return knots

    gaps = gaps.clamp_min(min_gap)
    span = knots[:, -1:] - knots[:, :1]
    scaled = gaps * span / gaps.sum(dim=1, keepdim=True)
    return torch.cat([knots[:, :1], knots[:, :1] + scaled.cumsum(dim=1)], dim=1)


def grid_from_samples(
    x: torch.Tensor,
    grid_size: int,
    k: int,
    *,
    grid_eps: float = 0.02,
    margin: float = 0.0,
    min_width: float = 1e-2,
) -> torch.Tensor:
    """Place knots for each input column from samples.

    The ``G + 1`` interior knots are ``grid_eps * uniform + (1 - grid_eps) *
    adaptive``, where ``uniform`` splits ``[min(x), max(x)]`` into ``G`` equal
    intervals and ``adaptive`` puts the knots at the sample quantiles
    ``0, 1/G, ..., 1`` (the sorted sample at index ``round(i (n - 1) / G)``).
    So ``grid_eps = 1`` gives equally spaced knots, ``grid_eps = 0`` gives
    knots at sample quantiles, and values in between mix the two linearly.
    Then ``k`` knots are added on each side at the mean interval width, so the
    result has ``G + 2k + 1`` knots per input.

    Degenerate columns are handled rather than hidden: a column whose range
    is narrower than ``min_width`` (a constant input, say) is widened
    symmetrically to ``min_width``, and quantile knots that coincide because
    of repeated values are moved apart to at least ``1e-3`` of the mean
    interval width, so the knots are always strictly increasing.

    Parameters
    ----------
    x : tensor of shape (batch, n_in)
        Samples of each input.
    grid_size : int
        Number of intervals ``G``.
    k : int
        Spline order.
    grid_eps : float in [0, 1]
        Weight of the uniform knots.
    margin : float
        Fraction of the sample range added on both ends before placing knots.
    min_width : float
        Smallest data range covered by the interior knots.

    Returns
    -------
    tensor of shape (n_in, G + 2k + 1)
    """
    _check_grid_size(grid_size)
    _check_order(k)
    if not 0.0 <= grid_eps <= 1.0:
        raise invalid_parameter("grid_eps", "a number in [0, 1]", grid_eps)
    if x.ndim != 2 or x.shape[0] < 1:
        raise InvalidDataError(f"invalid samples: expected shape (batch, n_in) with batch >= 1, received {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise InvalidDataError("invalid samples: grid placement needs finite samples, received NaN or inf")

    samples = x.detach().T.sort(dim=1).values
    n_samples = samples.shape[1]
    low, high = samples[:, :1], samples[:, -1:]
    extra = margin * (high - low)
    low, high = low - extra, high + extra
    narrow = (high - low) < min_width
    centre = (low + high) / 2
    low = torch.where(narrow, centre - min_width / 2, low)
    high = torch.where(narrow, centre + min_width / 2, high)

    fractions = torch.linspace(0, 1, grid_size + 1, dtype=x.dtype, device=x.device)
    uniform = low + (high - low) * fractions
    positions = torch.round(fractions * (n_samples - 1)).long()
    adaptive = samples[:, positions]
    adaptive[:, :1] = low
    adaptive[:, -1:] = high
    interior = grid_eps * uniform + (1.0 - grid_eps) * adaptive

    min_gap = 1e-3 * (high - low) / grid_size
    interior = _separate_close_knots(interior, min_gap)
    return extend_grid(interior, k)


def knot_reciprocals(grid: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Return the reciprocal knot spans the basis recursion divides by.

    Parameters
    ----------
    grid : tensor of shape (n_in, n_knots)
        Strictly increasing knots.
    k : int

    Returns
    -------
    list of k tensors
        Entry ``p - 1`` has shape (n_in, n_knots - p) and contains
        ``1 / (t_{m+p} - t_m)``, the reciprocal of the span of order ``p``.
    """
    return [1.0 / (grid[..., p:] - grid[..., :-p]) for p in range(1, k + 1)]


def _cox_de_boor(
    x: torch.Tensor,
    grid: torch.Tensor,
    k: int,
    reciprocals: list[torch.Tensor],
    out: torch.Tensor | None = None,
    knot_dim: int = -1,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run the recursion and return the bases of order ``k - 1`` (None for k = 0) and ``k``.

    With ``w_{m,p} = (x - t_m) / (t_{m+p} - t_m)`` the recursion reads
    ``B_{m,p} = w_{m,p} B_{m,p-1} + (1 - w_{m+1,p}) B_{m+1,p-1}``, so each
    order costs two products, a difference and a sum on the full basis
    tensor. ``x - t_m`` is formed once for all orders. The knots must be
    strictly increasing, which the closed form of order 1 relies on.

    When ``out`` is given, a tensor (or strided view) of the basis shape,
    the order ``k`` basis is written into it and ``out`` is returned as the
    second value.

    ``knot_dim`` is -1 for ``x`` of shape (batch, n_in), ``grid`` of shape
    (n_in, n_knots) and bases of shape (batch, n_in, n_basis). With
    ``knot_dim=1``, ``x`` is (n_in, batch), ``grid`` and the reciprocals
    are columns (n_in, length, 1) and the bases are (n_in, n_basis, batch).
    """
    if knot_dim == -1:
        shift = x.unsqueeze(-1) - grid
    else:
        shift = x.unsqueeze(1) - grid
    n_knots = grid.shape[knot_dim]

    def head(tensor: torch.Tensor, length: int) -> torch.Tensor:
        return tensor.narrow(knot_dim, 0, length)

    def tail(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.narrow(knot_dim, 1, tensor.shape[knot_dim] - 1)

    if k >= 2:
        # Order 1 in closed form: the hat B_{m,1} = max(0, min(w_{m,1}, 1 - w_{m+1,1})).
        weight = head(shift, n_knots - 1) * reciprocals[0]
        basis = torch.minimum(head(weight, n_knots - 2), 1 - tail(weight)).clamp_min(0)
        first = 2
    else:
        # x >= t_m minus x >= t_{m+1} is the indicator of [t_m, t_{m+1}) for increasing knots.
        step = (shift >= 0).to(x.dtype)
        basis = head(step, n_knots - 1) - tail(step)
        first = 1
    lower = None
    for p in range(first, k + 1):
        weight = head(shift, n_knots - p) * reciprocals[p - 1]
        weighted = weight * basis
        lower = basis
        rest = tail(basis - weighted)
        if p == k and out is not None:
            basis = torch.add(head(weighted, n_knots - p - 1), rest, out=out)
        else:
            basis = head(weighted, n_knots - p - 1) + rest
    if out is not None and basis is not out:
        # k = 0: the loop did not run.
        basis = out.copy_(basis)
    return lower, basis


def uniform_piece_coefficients(k: int) -> list[list[float]]:
    """Return the polynomial pieces of the uniform B-spline of order ``k``.

    On equally spaced knots, for ``t_mu <= x < t_{mu+1}`` and ``u = (x -
    t_mu) / h`` in [0, 1), the non-zero basis functions are
    ``B_{mu-k+r}(x) = sum_j C[j][r] u^j`` for ``r = 0, ..., k``. The table
    comes from the Cox-de Boor recursion on polynomials in ``u``: with
    ``N_0 = [1]``, ``N_p[r] = (u + p - r) / p N_{p-1}[r-1] + (r + 1 - u) / p
    N_{p-1}[r]``, terms with an index outside ``0 .. p-1`` being zero.
    Exact rational arithmetic, rounded to float once at the end.
    """
    from fractions import Fraction

    def add(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
        size = max(len(a), len(b))
        padded_a = a + [Fraction(0)] * (size - len(a))
        padded_b = b + [Fraction(0)] * (size - len(b))
        return [left + right for left, right in zip(padded_a, padded_b)]

    def times_linear(poly: list[Fraction], constant: Fraction, slope: Fraction) -> list[Fraction]:
        # poly * (constant + slope * u)
        return add([constant * c for c in poly], [Fraction(0)] + [slope * c for c in poly])

    pieces = [[Fraction(1)]]
    for p in range(1, k + 1):
        new = []
        for r in range(p + 1):
            term: list[Fraction] = [Fraction(0)]
            if r - 1 >= 0:
                term = add(term, times_linear(pieces[r - 1], Fraction(p - r, p), Fraction(1, p)))
            if r <= p - 1:
                term = add(term, times_linear(pieces[r], Fraction(r + 1, p), Fraction(-1, p)))
            new.append(term)
        pieces = new
    return [[float(pieces[r][j]) if j < len(pieces[r]) else 0.0 for r in range(k + 1)] for j in range(k + 1)]


class _BSplineBasis(torch.autograd.Function):
    """The basis as one autograd node, with the derivative from the B-spline derivative formula.

    ``dB_{m,k}/dx = k B_{m,k-1} / (t_{m+k} - t_m) - k B_{m+1,k-1} / (t_{m+k+1} - t_{m+1})``,
    so the backward pass needs only the order ``k - 1`` basis, not the
    intermediates of every order. No gradient flows to the knots.
    """

    @staticmethod
    def forward(ctx, x, grid, k, *reciprocals):
        lower, basis = _cox_de_boor(x, grid, k, list(reciprocals))
        ctx.k = k
        ctx.n_reciprocals = len(reciprocals)
        if ctx.needs_input_grad[0] and k > 0:
            ctx.save_for_backward(x, grid, lower, *reciprocals)
        return basis

    @staticmethod
    def backward(ctx, grad_basis):
        nothing = (None,) * (2 + ctx.n_reciprocals)
        if not ctx.needs_input_grad[0]:
            return (None, *nothing)
        k = ctx.k
        if k == 0:
            return (torch.zeros(grad_basis.shape[:-1], dtype=grad_basis.dtype, device=grad_basis.device), *nothing)

        x, grid, lower, *reciprocals = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: rebuild the lower basis as a differentiable
            # function of x, so second and higher derivatives are exact.
            lower = _BSplineBasis.apply(x, grid, k - 1, *knot_reciprocals(grid, k - 1))
        scaled = lower * (k * reciprocals[-1])
        derivative = scaled[..., :-1] - scaled[..., 1:]
        grad_x = torch.linalg.vecdot(grad_basis, derivative)
        return (grad_x, *nothing)


# Grids with at least this many basis functions per input (G + k) use the
# local evaluation. benchmarks/basis_crossover.py on a 2-core AMD EPYC
# (torch 2.13, one thread) measured it 15-37% slower at 13 to 18 basis
# functions, between 15% slower and 17% faster at 20 to 23, and 6-63% faster
# at 30 to 33. It also allocates less than the dense recursion.
LOCAL_BASIS_MIN = 20


def _local_bases(x: torch.Tensor, grid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Evaluate only the ``k + 1`` basis functions that can be non-zero at each point.

    For ``t_mu <= x < t_{mu+1}`` these are ``B_{mu-k}, ..., B_mu``. The
    recursion of :func:`_cox_de_boor` runs on a window of ``2k + 2`` knots
    around ``t_mu``, so each order costs ``O(k)`` instead of ``O(G + k)``
    per point. The knots are padded by ``k + 1`` on each side, so the window
    always exists. Values of basis functions that do not exist on the real
    knots (index below 0 or above ``G + k - 1``) are dropped by the caller.

    Returns
    -------
    values : tensor of shape (batch, n_in, k + 1)
        ``B_{mu-k,k}(x), ..., B_{mu,k}(x)``; zero outside ``[t_0, t_{G+2k})``.
    index : tensor of shape (batch, n_in, k + 1)
        ``mu - k, ..., mu``, the basis indices of ``values``.
    lower : tensor of shape (batch, n_in, k + 2)
        ``0, B_{mu-k+1,k-1}, ..., B_{mu,k-1}, 0`` for the derivative.
    spans : tensor of shape (batch, n_in, k + 2)
        ``t_{m+k} - t_m`` for ``m = mu - k, ..., mu + 1``.
    """
    n_in = x.shape[1]
    grid = grid.expand(n_in, -1)
    n_knots = grid.shape[1]
    mu = torch.searchsorted(grid.contiguous(), x.T.contiguous(), right=True).T - 1
    inside = (mu >= 0) & (mu < n_knots - 1)
    mu = mu.clamp(0, n_knots - 2)

    offsets = torch.arange(1, k + 2, dtype=grid.dtype, device=grid.device)
    left = grid[:, :1] - (grid[:, 1:2] - grid[:, :1]) * offsets.flip(0)
    right = grid[:, -1:] + (grid[:, -1:] - grid[:, -2:-1]) * offsets
    padded = torch.cat([left, grid, right], dim=1)
    # Window t_{mu-k} .. t_{mu+k+1}; knot m sits at column m + k + 1 of padded,
    # so the window starts at column mu + 1. Indexing the unfolded view needs
    # one int64 index per point, not one per window entry.
    windows = padded.unfold(1, 2 * k + 2, 1)
    knots = windows[torch.arange(n_in, device=x.device), mu + 1]
    shift = x.unsqueeze(-1) - knots

    basis = inside.to(x.dtype).unsqueeze(-1)
    lower = spans = None
    for p in range(1, k + 1):
        # w_{m,p} for m = mu - p .. mu + 1, with B_{mu-p,p-1} = B_{mu+1,p-1} = 0.
        spans = knots[..., k : k + p + 2] - knots[..., k - p : k + 2]
        weight = shift[..., k - p : k + 2] / spans
        lower = torch.nn.functional.pad(basis, (1, 1))
        weighted = weight * lower
        basis = weighted[..., :-1] + (lower - weighted)[..., 1:]
    index = mu.unsqueeze(-1) + torch.arange(-k, 1, device=x.device)
    return basis, index, lower, spans


def _scatter_local(values: torch.Tensor, index: torch.Tensor, n_basis: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Place local values into a dense (batch, n_in, n_basis) tensor.

    Returns the dense tensor, the clamped index and the mask of indices that
    exist, both reused by the backward pass.
    """
    valid = (index >= 0) & (index < n_basis)
    clamped = index.clamp(0, n_basis - 1)
    dense = torch.zeros(*values.shape[:-1], n_basis, dtype=values.dtype, device=values.device)
    return dense.scatter_add_(-1, clamped, values * valid), clamped, valid


class _LocalBSplineBasis(torch.autograd.Function):
    """The local evaluation as one autograd node; the backward pass touches only the ``k + 1`` non-zero entries."""

    @staticmethod
    def forward(ctx, x, grid, k):
        n_basis = grid.shape[-1] - k - 1
        values, index, lower, spans = _local_bases(x, grid, k)
        dense, clamped, valid = _scatter_local(values, index, n_basis)
        ctx.k = k
        if ctx.needs_input_grad[0] and k > 0:
            ctx.save_for_backward(x, grid, clamped, valid, lower, spans)
        return dense

    @staticmethod
    def backward(ctx, grad_basis):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        k = ctx.k
        if k == 0:
            return torch.zeros(grad_basis.shape[:-1], dtype=grad_basis.dtype, device=grad_basis.device), None, None

        x, grid, clamped, valid, lower, spans = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: the dense path rebuilds the lower basis as a
            # differentiable function of x.
            lower_dense = bspline_basis(x, grid.expand(x.shape[1], -1), k - 1)
            scaled = lower_dense * (k * knot_reciprocals(grid, k)[-1])
            return torch.linalg.vecdot(grad_basis, scaled[..., :-1] - scaled[..., 1:]), None, None

        scaled = lower * (k / spans)
        derivative = (scaled[..., :-1] - scaled[..., 1:]) * valid
        grad_local = torch.gather(grad_basis, -1, clamped)
        return torch.linalg.vecdot(grad_local, derivative), None, None


def _use_local(grid: torch.Tensor, k: int) -> bool:
    return grid.shape[-1] - k - 1 >= LOCAL_BASIS_MIN


def bspline_basis(x: torch.Tensor, grid: torch.Tensor, k: int, *, reciprocals: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Evaluate all B-spline basis functions of order ``k`` on the knots ``grid``.

    Uses the Cox-de Boor recursion

    ``B_{m,0}(x) = 1 if t_m <= x < t_{m+1} else 0``,

    ``B_{m,p}(x) = (x - t_m) / (t_{m+p} - t_m) B_{m,p-1}(x)
    + (t_{m+p+1} - x) / (t_{m+p+1} - t_{m+1}) B_{m+1,p-1}(x)``,

    vectorised over samples, inputs and basis functions. The knots must be
    strictly increasing. Points outside ``[t_0, t_{G+2k})`` give all zeros.

    When ``x`` requires a gradient the basis is one autograd node whose
    backward pass uses the derivative formula (see :class:`_BSplineBasis`);
    higher derivatives work too. When ``grid`` requires a gradient the plain
    recursion is differentiated instead.

    Parameters
    ----------
    x : tensor of shape (batch, n_in)
    grid : tensor of shape (n_in, G + 2k + 1)
        A grid of shape (1, G + 2k + 1) is shared by all inputs.
    k : int
    reciprocals : list of tensors, optional
        ``knot_reciprocals(grid, k)``, for callers that cache it per grid.

    Returns
    -------
    tensor of shape (batch, n_in, G + k)
    """
    _check_order(k)
    if grid.requires_grad:
        return _cox_de_boor(x, grid, k, knot_reciprocals(grid, k))[1]
    if _use_local(grid, k):
        if torch.is_grad_enabled() and x.requires_grad:
            return _LocalBSplineBasis.apply(x, grid, k)
        values, index, _, _ = _local_bases(x, grid, k)
        return _scatter_local(values, index, grid.shape[-1] - k - 1)[0]
    if reciprocals is None:
        reciprocals = knot_reciprocals(grid, k)
    if torch.is_grad_enabled() and x.requires_grad:
        return _BSplineBasis.apply(x, grid, k, *reciprocals)
    return _cox_de_boor(x, grid, k, reciprocals)[1]


def uniform_reciprocals(n_knots: int, k: int, *, dtype: torch.dtype, device: torch.device | str | None = None) -> list[torch.Tensor]:
    """Return :func:`knot_reciprocals` of the integer knots ``0, 1, ..., n_knots - 1``."""
    return [torch.full((1, n_knots - p), 1.0 / p, dtype=dtype, device=device) for p in range(1, k + 1)]


def bspline_basis_uniform(
    x: torch.Tensor,
    start: torch.Tensor,
    step: torch.Tensor,
    n_knots: int,
    k: int,
    *,
    reciprocals: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """Evaluate the basis on equally spaced knots ``t_m = start + m * step``.

    The fast path of :func:`bspline_basis`: in the unit ``u = (x - start) /
    step`` the knots are the integers ``0, 1, ..., n_knots - 1`` shared by all
    inputs, so no knot spans are computed per input.

    Parameters
    ----------
    x : tensor of shape (batch, n_in)
    start, step : tensors of shape (n_in,)
        First knot and knot spacing of each input.
    n_knots : int
        ``G + 2k + 1``.
    k : int
    reciprocals : list of tensors, optional
        ``uniform_reciprocals(n_knots, k, ...)``, for callers that cache it.

    Returns
    -------
    tensor of shape (batch, n_in, n_knots - k - 1)
    """
    _check_order(k)
    u = (x - start) / step
    knots = torch.arange(n_knots, dtype=x.dtype, device=x.device).unsqueeze(0)
    if reciprocals is None:
        reciprocals = uniform_reciprocals(n_knots, k, dtype=x.dtype, device=x.device)
    return bspline_basis(u, knots, k, reciprocals=reciprocals)


def bspline_basis_reference(x: float, knots: list[float], k: int) -> list[float]:
    """Evaluate the B-spline basis at one point by the textbook recursion.

    A slow scalar oracle for tests: plain Python floats, one basis function
    at a time, ``0/0`` taken as 0.
    """

    def basis_function(m: int, p: int) -> float:
        if p == 0:
            return 1.0 if knots[m] <= x < knots[m + 1] else 0.0
        total = 0.0
        if knots[m + p] != knots[m]:
            total += (x - knots[m]) / (knots[m + p] - knots[m]) * basis_function(m, p - 1)
        if knots[m + p + 1] != knots[m + 1]:
            total += (knots[m + p + 1] - x) / (knots[m + p + 1] - knots[m + 1]) * basis_function(m + 1, p - 1)
        return total

    n_basis = len(knots) - k - 1
    return [basis_function(m, k) for m in range(n_basis)]


def spline_values(x: torch.Tensor, grid: torch.Tensor, coef: torch.Tensor, k: int) -> torch.Tensor:
    """Evaluate every edge spline ``sum_m coef[i, j, m] B_m(x_i)``.

    Parameters
    ----------
    x : tensor of shape (batch, n_in)
    grid : tensor of shape (n_in, G + 2k + 1)
    coef : tensor of shape (n_in, n_out, G + k)

    Returns
    -------
    tensor of shape (batch, n_in, n_out)
    """
    basis = bspline_basis(x, grid, k)
    return torch.einsum("bim,ijm->bij", basis, coef)


# Basis values per chunk of samples in fit_coefficients (32 MiB in float64).
FIT_CHUNK_ELEMENTS = 2**22


def fit_coefficients(
    x: torch.Tensor,
    y: torch.Tensor | Callable[[slice], torch.Tensor],
    grid: torch.Tensor,
    k: int,
    *,
    ridge: float = 1e-10,
) -> torch.Tensor:
    """Fit spline coefficients to samples by ridge-regularised least squares.

    For each input ``i`` solves ``(A_i^T A_i + lambda I) C_i = A_i^T Y_i`` with
    ``A_i = B(x_i)`` the basis matrix of shape (batch, G + k) and ``Y_i`` the
    targets of all edges leaving input ``i``. ``lambda = ridge * trace(A_i^T
    A_i) / (G + k) + 1e-12``, solved in float64 whatever the input dtype, so the system is well posed when samples are
    fewer than coefficients or repeat (rank-deficient basis matrices). The
    coefficients of basis functions no sample touches then shrink to zero
    instead of growing without bound.

    Parameters
    ----------
    x : tensor of shape (batch, n_in)
    y : tensor of shape (batch, n_in, n_out), or a function of a row slice
        returning the targets of those rows. The normal equations are sums
        over rows, taken in chunks. A function computes each chunk's targets
        when it is needed, so the targets of all rows never exist at once.
    grid : tensor of shape (n_in, G + 2k + 1)
    k : int
    ridge : float
        Relative Tikhonov weight.

    Returns
    -------
    tensor of shape (n_in, n_out, G + k)
        In the dtype of the targets. Always finite for finite input.
    """
    targets = y if callable(y) else (lambda rows: y[rows])
    grid = grid.double()
    n_in, n_basis = grid.shape[0], grid.shape[-1] - k - 1
    gram = torch.zeros(n_in, n_basis, n_basis, dtype=torch.float64, device=x.device)
    rhs = None
    # The normal equations are sums over samples, so they are accumulated in
    # chunks of about FIT_CHUNK_ELEMENTS basis values: memory stays bounded
    # whatever the number of samples.
    rows = max(1, FIT_CHUNK_ELEMENTS // max(1, n_in * n_basis))
    # One pass at least, so no samples give zero coefficients of the right shape.
    for start in range(0, max(x.shape[0], 1), rows):
        chunk = slice(start, start + rows)
        values = targets(chunk)
        basis = bspline_basis(x[chunk].double(), grid, k).permute(1, 0, 2)
        gram += basis.transpose(1, 2) @ basis
        product = basis.transpose(1, 2) @ values.double().permute(1, 0, 2)
        rhs = product if rhs is None else rhs + product
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1)
    eye = torch.eye(n_basis, dtype=gram.dtype, device=gram.device)
    gram = gram + (ridge * scale + 1e-12)[:, None, None] * eye
    solution = torch.linalg.solve(gram, rhs)
    return solution.permute(0, 2, 1).to(values.dtype).contiguous()
