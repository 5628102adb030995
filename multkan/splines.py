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

import torch

from .errors import InvalidDataError, invalid_parameter

__all__ = [
    "bspline_basis",
    "bspline_basis_reference",
    "bspline_basis_uniform",
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


def bspline_basis(x: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
    """Evaluate all B-spline basis functions of order ``k`` on the knots ``grid``.

    Uses the Cox-de Boor recursion

    ``B_{m,0}(x) = 1 if t_m <= x < t_{m+1} else 0``,

    ``B_{m,p}(x) = (x - t_m) / (t_{m+p} - t_m) B_{m,p-1}(x)
    + (t_{m+p+1} - x) / (t_{m+p+1} - t_{m+1}) B_{m+1,p-1}(x)``,

    vectorised over samples, inputs and basis functions. The knots must be
    strictly increasing. Points outside ``[t_0, t_{G+2k})`` give all zeros.

    Parameters
    ----------
    x : tensor of shape (batch, n_in)
    grid : tensor of shape (n_in, G + 2k + 1)
    k : int

    Returns
    -------
    tensor of shape (batch, n_in, G + k)
    """
    _check_order(k)
    knots = grid.unsqueeze(0)
    values = x.unsqueeze(-1)
    basis = ((values >= knots[..., :-1]) & (values < knots[..., 1:])).to(x.dtype)

    for p in range(1, k + 1):
        left_den = knots[..., p:-1] - knots[..., : -(p + 1)]
        right_den = knots[..., p + 1 :] - knots[..., 1:-p]
        left = (values - knots[..., : -(p + 1)]) / left_den * basis[..., :-1]
        right = (knots[..., p + 1 :] - values) / right_den * basis[..., 1:]
        basis = left + right

    return basis


def bspline_basis_uniform(x: torch.Tensor, start: torch.Tensor, step: torch.Tensor, n_knots: int, k: int) -> torch.Tensor:
    """Evaluate the basis on equally spaced knots ``t_m = start + m * step``.

    The fast path of :func:`bspline_basis`: in the unit ``u = (x - start) /
    step`` the knots are the integers, so the recursion becomes
    ``B_{m,p}(u) = ((u - m) B_{m,p-1}(u) + (m + p + 1 - u) B_{m+1,p-1}(u)) / p``
    with no division by knot differences.

    Parameters
    ----------
    x : tensor of shape (batch, n_in)
    start, step : tensors of shape (n_in,)
        First knot and knot spacing of each input.
    n_knots : int
        ``G + 2k + 1``.
    k : int

    Returns
    -------
    tensor of shape (batch, n_in, n_knots - k - 1)
    """
    u = ((x - start) / step).unsqueeze(-1)
    index = torch.arange(n_knots, dtype=x.dtype, device=x.device)
    basis = ((u >= index[:-1]) & (u < index[1:])).to(x.dtype)

    for p in range(1, k + 1):
        shifted = u - index[: n_knots - p - 1]
        basis = (shifted * basis[..., :-1] + (p + 1 - shifted) * basis[..., 1:]) / p

    return basis


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


def fit_coefficients(
    x: torch.Tensor,
    y: torch.Tensor,
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
    y : tensor of shape (batch, n_in, n_out)
    grid : tensor of shape (n_in, G + 2k + 1)
    k : int
    ridge : float
        Relative Tikhonov weight.

    Returns
    -------
    tensor of shape (n_in, n_out, G + k)
        Always finite for finite input.
    """
    basis = bspline_basis(x.double(), grid.double(), k).permute(1, 0, 2)
    n_basis = basis.shape[-1]
    gram = basis.transpose(1, 2) @ basis
    scale = gram.diagonal(dim1=1, dim2=2).mean(dim=1)
    eye = torch.eye(n_basis, dtype=gram.dtype, device=gram.device)
    gram = gram + (ridge * scale + 1e-12)[:, None, None] * eye
    rhs = basis.transpose(1, 2) @ y.double().permute(1, 0, 2)
    solution = torch.linalg.solve(gram, rhs)
    return solution.permute(0, 2, 1).to(y.dtype).contiguous()
