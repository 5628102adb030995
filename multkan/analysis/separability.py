"""Modular structure from second derivatives: separability and symmetries of a fitted function.

A function ``f`` of inputs ``x_1 .. x_n`` is

- additively separable into groups ``A`` and ``B`` (``f = g(x_A) + h(x_B)``)
  exactly when ``d2f / dx_i dx_j = 0`` for every ``i`` in ``A`` and ``j`` in ``B``;
- multiplicatively separable (``f = g(x_A) * h(x_B)``) exactly when
  ``f * d2f/dx_i dx_j - df/dx_i * df/dx_j = 0`` there, the numerator of the
  mixed derivative of ``log |f|``, which stays finite where ``f`` is 0;
- a function of one combination of a group ``G`` and the rest
  (``f = F(g(x_G), x_rest)``, the general form) exactly when the ratio
  ``(df/dx_i) / (df/dx_j)`` for ``i, j`` in ``G`` does not depend on any
  ``x_k`` outside ``G``, that is ``d2f/dx_i dx_k * df/dx_j - df/dx_i *
  d2f/dx_j dx_k = 0``.

Each condition is scored on sample rows by a dimensionless root mean
square, comparable across inputs and units: 0 for an exact separation,
about 1 for an interaction as strong as in ``x_i * x_j``.
The finest additive (or multiplicative) decomposition is the set of
connected components of the graph whose edges are the pairs scoring above
a threshold (:func:`detect_separability`). :func:`test_symmetry` tests
one group against the rest, in any of the three forms.

The derivatives come from autograd (double backward), so ``function`` is
a :class:`~multkan.model.MultKAN` or any differentiable torch callable.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import networkx as nx
import torch

from ..errors import InvalidDataError, MultKANWarning, invalid_parameter, is_integer, user_stacklevel

__all__ = ["ModularTree", "SeparabilityResult", "detect_separability", "interaction_scores", "modular_tree", "test_symmetry"]

MODES = ("add", "mul")
SYMMETRY_MODES = ("add", "mul", "general")
# The additive score's reference is at least this share of std(f).
ADD_REFERENCE_FLOOR = 1e-2
# An input whose effect, rms(df/dx_i) * s_i, is at most this share of
# std(f) is inactive: it scores 0 with every other input and stays out of
# trees. The unused input of a [4, 5, 1] network trained on exp(x0) + x1*x2
# had 0.0014, and without this rule it scored 0.16 with x0. x1 in
# 100*sin(x0) + x1*x2 has 0.0056.
INACTIVE_EFFECT = 3e-3
# detect_separability warns when a pair scores within this factor of the
# threshold, where another sample of rows can flip the grouping.
NEAR_THRESHOLD = 1.25
# modular_tree scores every subset of the inputs, 2**n of them.
TREE_MAX_INPUTS = 12


@dataclass(frozen=True)
class SeparabilityResult:
    """The pairwise interaction scores of a function and the groups they separate it into.

    ``scores`` is the symmetric (n_in, n_in) matrix of :func:`interaction_scores`,
    with 0 on the diagonal. ``groups`` is the finest partition of the inputs
    with no pair across two groups scoring above ``threshold``. Each group is
    a sorted tuple, and the groups are ordered by their first input.
    ``inactive`` lists the inputs whose effect on ``f`` is below
    ``INACTIVE_EFFECT`` (0.3%) of its standard deviation; each is a group of its own.
    """

    mode: str
    scores: torch.Tensor
    threshold: float
    groups: tuple[tuple[int, ...], ...]
    inactive: tuple[int, ...] = ()

    @property
    def separable(self) -> bool:
        """Whether the inputs split into at least two groups."""
        return len(self.groups) > 1


def _as_function(function, output: int | None) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.dtype | None, int | None]:
    """Return a callable from (batch, n_in) rows to (batch,) values, the dtype to evaluate in and the input count if known."""
    from ..model import MultKAN

    if isinstance(function, MultKAN):
        n_outputs = function.n_outputs
        if output is None:
            if n_outputs != 1:
                raise invalid_parameter("output", f"an output index in [0, {n_outputs}) for a model with {n_outputs} outputs", output)
            output = 0
        if not is_integer(output) or not 0 <= output < n_outputs:
            raise invalid_parameter("output", f"an output index in [0, {n_outputs})", output)
        output = int(output)
        return (lambda rows: function(rows)[:, output]), function.dtype, function.n_inputs
    if not callable(function):
        raise invalid_parameter("function", "a MultKAN or a callable from (batch, n_in) tensors to (batch,) or (batch, 1) values", function)

    def values(rows: torch.Tensor) -> torch.Tensor:
        result = function(rows)
        if result.dim() == 2 and result.shape[1] == 1:
            result = result[:, 0]
        if result.shape != (rows.shape[0],):
            raise InvalidDataError(
                f"invalid function output: expected shape ({rows.shape[0]},) or ({rows.shape[0]}, 1) "
                f"for {rows.shape[0]} rows, received {tuple(result.shape)}; pick one output first"
            )
        return result

    return values, None, None


def _rows(x, dtype: torch.dtype | None, n_in: int | None) -> torch.Tensor:
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if dtype is not None:
        x = x.to(dtype)
    if x.dim() != 2 or (n_in is not None and x.shape[1] != n_in) or x.shape[0] < 2:
        expected = f"(n_rows, {n_in})" if n_in is not None else "(n_rows, n_in)"
        raise InvalidDataError(f"invalid x: expected shape {expected} with at least 2 rows, received {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise InvalidDataError("invalid x: it contains NaN or infinite values")
    return x.detach()


def _derivatives(values: Callable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``f`` (batch,), the gradient (batch, n) and the Hessian (batch, n, n) of every row."""
    rows = x.clone().requires_grad_(True)
    not_differentiable = (
        "invalid function: its values do not depend on x through torch operations, so they cannot be "
        "differentiated; compute them with torch functions of the given tensor (not numpy)"
    )
    with torch.enable_grad():
        try:
            f = torch.as_tensor(values(rows))
        except RuntimeError as error:
            # Tensor.numpy() on the tensor that carries the gradient raises this.
            if "numpy()" not in str(error):
                raise
            raise InvalidDataError(not_differentiable) from error
        if not f.requires_grad:
            if bool((f == f[0]).all()):
                # A constant: every derivative is 0.
                zeros = torch.zeros_like(rows)
                return f.detach().to(rows.dtype), zeros, zeros[:, :, None].expand(-1, -1, rows.shape[1]).clone()
            raise InvalidDataError(not_differentiable)
        (gradient,) = torch.autograd.grad(f.sum(), rows, create_graph=True, allow_unused=True)
        if gradient is None:
            gradient = torch.zeros_like(rows)
        columns = []
        for i in range(rows.shape[1]):
            column = None
            if gradient.requires_grad:
                (column,) = torch.autograd.grad(gradient[:, i].sum(), rows, retain_graph=True, allow_unused=True)
            columns.append(torch.zeros_like(rows) if column is None else column)
    hessian = torch.stack(columns, dim=1)
    return f.detach(), gradient.detach(), hessian.detach()


def _rms(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    return values.pow(2).mean(dim=dim).sqrt()


def _inactive(f: torch.Tensor, gradient: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Return which inputs have an effect ``rms(df/dx_i) * s_i`` of at most ``INACTIVE_EFFECT`` times ``std(f)``."""
    return _rms(gradient) * spread <= INACTIVE_EFFECT * f.std()


def _pair_scores(mode: str, f: torch.Tensor, gradient: torch.Tensor, hessian: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Return the (n, n) scores of ``mode`` from the derivatives, with ``spread`` the inputs' standard deviations."""
    if mode == "add":
        # The reference is the geometric mean of the two inputs' own effects,
        # rms(df/dx_i) s_i, so a larger term of other inputs does not hide
        # the pair. ADD_REFERENCE_FLOOR of std(f) keeps an input with almost
        # no effect from turning the noise of a trained network into a score.
        effect = _rms(gradient) * spread
        reference = torch.maximum(torch.sqrt(effect[:, None] * effect[None, :]), ADD_REFERENCE_FLOOR * f.std())
        scores = _rms(hessian) * spread[:, None] * spread[None, :]
        scores = torch.where(reference > 0, scores / torch.where(reference > 0, reference, 1.0), 0.0)
    else:
        scores = _relative(f[:, None, None] * hessian, gradient[:, :, None] * gradient[:, None, :])
    scores = (scores + scores.T) / 2
    scores.fill_diagonal_(0.0)
    inactive = _inactive(f, gradient, spread)
    return scores.masked_fill(inactive[:, None] | inactive[None, :], 0.0)


def _relative(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Return ``rms(first - second) / (rms(first) + rms(second))`` over the rows, 0 where both are 0."""
    size = _rms(first) + _rms(second)
    return torch.where(size > 0, _rms(first - second) / torch.where(size > 0, size, 1.0), 0.0)


def _general_scores(gradient: torch.Tensor, hessian: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Return ``scores[i, j, k]``, how much ``(df/dx_i) / (df/dx_j)`` depends on ``x_k``, shape (n, n, n).

    The score is ``rms(A - B) / (rms(A) + rms(B) + rms(f_i) * rms(f_j) / s_k)``
    for ``A = f_ik f_j`` and ``B = f_i f_jk``. The last term is the size
    both would have if ``x_k`` mattered as much as the inputs themselves. It
    keeps the score small where ``x_k`` does not reach the pair at all
    (``A`` and ``B`` are then 0 up to the noise of a trained network's
    second derivatives), instead of a ratio of two noises.
    """
    first = hessian[:, :, None, :] * gradient[:, None, :, None]
    second = gradient[:, :, None, None] * hessian[:, None, :, :]
    size = _rms(gradient)
    typical = size[:, None, None] * size[None, :, None] / torch.where(spread > 0, spread, 1.0)[None, None, :]
    denominator = _rms(first) + _rms(second) + typical
    return torch.where(denominator > 0, _rms(first - second) / torch.where(denominator > 0, denominator, 1.0), 0.0)


def _check_mode(mode, allowed) -> str:
    if mode not in allowed:
        raise invalid_parameter("mode", " or ".join(repr(m) for m in allowed), mode)
    return mode


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or threshold < 0:
        raise invalid_parameter("threshold", "a finite number >= 0", threshold)
    return float(threshold)


def _model_rows(function, x):
    from ..model import MultKAN

    if x is None and isinstance(function, MultKAN):
        return function._default_inputs(None, "detect_separability")
    if x is None:
        raise InvalidDataError("invalid x: a function other than a MultKAN needs sample rows x")
    return x


def interaction_scores(function, x: torch.Tensor | None = None, *, mode: str = "add", output: int | None = None) -> torch.Tensor:
    """Return the symmetric (n_in, n_in) matrix of pairwise interaction scores, 0 on the diagonal.

    Parameters
    ----------
    function : MultKAN or callable
        A model (one of its outputs) or a differentiable function from
        (batch, n_in) rows to (batch,) or (batch, 1) values.
    x : tensor of shape (n_rows, n_in), optional
        Rows to evaluate the derivatives at; a model's training inputs by default.
    mode : {"add", "mul"}
        ``"add"``: ``rms(d2f/dx_i dx_j) * s_i * s_j / r_ij``, with ``s``
        the inputs' standard deviations over the rows and ``r_ij`` the
        geometric mean of ``rms(df/dx_i) * s_i`` and ``rms(df/dx_j) *
        s_j`` (at least ``ADD_REFERENCE_FLOOR`` times ``std(f)``). ``x_i *
        x_j`` scores 1 on uniform inputs as long as its effect is above 1% of
        ``std(f)``: next to ``c * sin(x_0)`` it scored 1.0 for c up to 30,
        0.63 for c = 100 and 0.06 for c = 1000. ``"mul"``: ``rms(A - B) /
        (rms(A) + rms(B))`` for ``A = f * d2f/dx_i dx_j`` and ``B = df/dx_i
        * df/dx_j``, between 0 and 1 (``x_i * x_j + 1`` scores 0.72). 0
        means separable for that pair, in both modes. An input whose effect
        is below ``INACTIVE_EFFECT`` (0.3%) of ``std(f)`` scores 0 with all others.

        The additive score measures the interaction against the inputs'
        effects over these rows, so it depends on where the rows lie: ``x_i
        * x_j`` scores 1 on [-1, 1], 0.19 on [1, 2] and 0.027 on [10, 11],
        where the product varies almost additively. Score products of
        positive inputs with ``"mul"``.
    output : int, optional
        The model output to score; needed for models with several outputs.
    """
    mode = _check_mode(mode, MODES)
    values, dtype, n_in = _as_function(function, output)
    rows = _rows(_model_rows(function, x), dtype, n_in)
    f, gradient, hessian = _derivatives(values, rows)
    return _pair_scores(mode, f, gradient, hessian, rows.std(dim=0))


def detect_separability(
    function, x: torch.Tensor | None = None, *, mode: str = "add", threshold: float = 0.1, output: int | None = None
) -> SeparabilityResult:
    """Split the inputs into the finest groups with ``f = sum`` (``mode="add"``) or ``prod`` (``"mul"``) of group functions.

    Two inputs land in the same group when their score from
    :func:`interaction_scores` exceeds ``threshold``, directly or through a
    chain of such pairs. A trained network is never exactly separable:
    its cross derivatives are small, not 0. Networks of ``[3, 5, 1]``
    trained for 100 steps on ``sin(pi x0) + x1 x2``, ``exp(x0) + x1**2 +
    x2`` and ``x0 x1 + cos(2 x2)`` (two seeds each, test RMSE 1e-4 to 3e-4
    of the target's range) scored 0.002 to 0.047 on separable pairs and
    1.0 on the products. Hence the default ``threshold`` of 0.1. The result contains the
    scores, so the margin can be checked.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(200, 3, dtype=torch.float64) * 2 - 1
    >>> detect_separability(lambda v: torch.sin(v[:, 0]) + v[:, 1] * v[:, 2], x).groups
    ((0,), (1, 2))
    """
    threshold = _check_threshold(threshold)
    mode = _check_mode(mode, MODES)
    values, dtype, n_in = _as_function(function, output)
    rows = _rows(_model_rows(function, x), dtype, n_in)
    f, gradient, hessian = _derivatives(values, rows)
    spread = rows.std(dim=0)
    scores = _pair_scores(mode, f, gradient, hessian, spread)
    graph = nx.Graph()
    graph.add_nodes_from(range(scores.shape[0]))
    strong = (scores > threshold).nonzero().tolist()
    graph.add_edges_from((i, j) for i, j in strong if i < j)
    groups = sorted((tuple(sorted(component)) for component in nx.connected_components(graph)), key=lambda group: group[0])
    inactive = tuple(int(i) for i in _inactive(f, gradient, spread).nonzero().flatten())
    _warn_near_threshold(scores, threshold)
    if mode == "add" and len(groups) > 1:
        _warn_both_separable(scores, _pair_scores("mul", f, gradient, hessian, spread), threshold, inactive)
    return SeparabilityResult(mode, scores, threshold, tuple(groups), inactive)


def _warn_near_threshold(scores: torch.Tensor, threshold: float) -> None:
    """Warn about pairs scoring within ``NEAR_THRESHOLD`` of ``threshold``, whose grouping another sample can flip."""
    if threshold <= 0:
        return
    near = ((scores > threshold / NEAR_THRESHOLD) & (scores < threshold * NEAR_THRESHOLD)).triu(diagonal=1).nonzero().tolist()
    if near:
        pairs = ", ".join(f"({i}, {j}): {float(scores[i, j]):.3g}" for i, j in near[:6])
        warnings.warn(
            f"pairs score close to threshold={threshold:g}, so another sample of rows can group them differently: {pairs}. "
            "Use more rows, or a threshold away from these scores.",
            MultKANWarning,
            stacklevel=user_stacklevel(),
        )


def _warn_both_separable(add_scores: torch.Tensor, mul_scores: torch.Tensor, threshold: float, inactive: tuple[int, ...]) -> None:
    """Warn about active pairs that score as separable both additively and multiplicatively, which no true interaction does."""
    both = ((add_scores <= threshold) & (mul_scores <= threshold)).triu(diagonal=1)
    for i in inactive:
        both[i, :] = False
        both[:, i] = False
    pairs = both.nonzero().tolist()
    if pairs:
        listed = ", ".join(f"({i}, {j})" for i, j in pairs[:6])
        warnings.warn(
            f"inputs {listed} score as separable both additively and multiplicatively, as only a function nearly linear in "
            "them over these rows does: a product of inputs far from 0 varies almost additively (x0*x1 on [10, 11] scores "
            "0.027). For products of positive inputs use mode='mul'.",
            MultKANWarning,
            stacklevel=user_stacklevel(),
        )


def test_symmetry(
    function,
    x: torch.Tensor | None = None,
    group: Sequence[int] = (),
    *,
    mode: str = "add",
    threshold: float = 0.1,
    output: int | None = None,
) -> tuple[bool, float]:
    """Test whether the inputs in ``group`` enter ``f`` only through one function of them.

    ``mode="add"``: ``f = g(x_group) + h(x_rest)``; ``"mul"``: ``f =
    g(x_group) * h(x_rest)``; ``"general"``: ``f = F(g(x_group), x_rest)``,
    such as ``f(x + y, z)`` for the group ``(x, y)``. Returns whether the
    largest score across the group's boundary is at most ``threshold``,
    and that score. ``"add"`` and ``"mul"`` take the pair scores of
    :func:`interaction_scores`. For ``"general"`` the score of inputs ``i,
    j`` in the group and ``k`` outside is ``rms(A - B) / (rms(A) + rms(B) +
    rms(f_i) rms(f_j) / s_k)`` for ``A = f_ik f_j`` and ``B = f_i f_jk``,
    with ``f_i`` the first and ``f_ik`` the second derivatives and ``s_k``
    the spread of ``x_k``. So a group of one input is always
    general-symmetric.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(200, 3, dtype=torch.float64) * 2 - 1
    >>> test_symmetry(lambda v: torch.exp(v[:, 0] + v[:, 1]) * v[:, 2], x, [0, 1], mode="general")[0]
    True
    """
    mode = _check_mode(mode, SYMMETRY_MODES)
    threshold = _check_threshold(threshold)
    values, dtype, n_in = _as_function(function, output)
    rows = _rows(_model_rows(function, x), dtype, n_in)
    n = rows.shape[1]
    try:
        indices = list(group)
    except TypeError:
        indices = None
    valid = indices is not None and all(is_integer(i) for i in indices)
    members = sorted({int(i) for i in indices}) if valid else None
    if not members or any(not 0 <= i < n for i in members) or len(members) == n or len(members) != len(indices):
        raise invalid_parameter("group", f"a non-empty proper subset of the input indices 0 .. {n - 1}, each index once", group)
    rest = [k for k in range(n) if k not in members]

    f, gradient, hessian = _derivatives(values, rows)
    spread = rows.std(dim=0)
    if mode in MODES:
        scores = _pair_scores(mode, f, gradient, hessian, spread)
        score = float(scores[members][:, rest].max())
        return score <= threshold, score

    if len(members) < 2:
        return True, 0.0
    triple = _general_scores(gradient, hessian, spread)
    score = float(triple[members][:, members][:, :, rest].max())
    return score <= threshold, score


@dataclass(frozen=True)
class ModularTree:
    """The nested modules of a function: groups of inputs that enter it through one combination.

    ``modules`` lists every group ``G`` kept, smallest first, each a sorted
    tuple, with ``f = F(g(x_G), x_rest)``. No two of them cross: two groups
    are disjoint or one contains the other, so together with the single
    inputs and the root (all inputs) they form a tree. ``scores`` gives
    each kept group's score from :func:`test_symmetry` (``"general"``).
    """

    n_inputs: int
    threshold: float
    modules: tuple[tuple[int, ...], ...]
    scores: dict[tuple[int, ...], float]

    def children(self, group: Sequence[int]) -> list[tuple[int, ...]]:
        """Return the largest kept modules and single inputs inside ``group``, ordered by their first input."""
        group = tuple(sorted(group))
        inside = [module for module in self.modules if set(module) < set(group)]
        maximal = [module for module in inside if not any(set(module) < set(other) for other in inside)]
        covered = {i for module in maximal for i in module}
        parts = maximal + [(i,) for i in group if i not in covered]
        return sorted(parts, key=lambda part: part[0])

    def as_expression(self, names: Sequence[str] | None = None) -> str:
        """Return the tree as nested brackets, such as ``[[x0, x1], x2], x3``."""
        names = list(names) if names is not None else [f"x{i}" for i in range(self.n_inputs)]

        def text(group: tuple[int, ...]) -> str:
            if len(group) == 1:
                return names[group[0]]
            return "[" + ", ".join(text(part) for part in self.children(group)) + "]"

        return ", ".join(text(part) for part in self.children(tuple(range(self.n_inputs))))


def modular_tree(function, x: torch.Tensor | None = None, *, threshold: float = 0.1, output: int | None = None) -> ModularTree:
    """Find the nested groups of inputs that enter ``f`` through one combination each (KAN 2.0's tree).

    Every subset of two or more inputs, short of all of them, is scored as
    in :func:`test_symmetry` with ``mode="general"``, from one computation
    of the derivatives. Groups scoring at most ``threshold`` are kept from
    the smallest up, skipping any that crosses a group already kept, so
    the result is a tree. Costs ``2**n_in`` subset scores, so at most
    TREE_MAX_INPUTS (12) inputs are accepted.

    Where groups tie, the tree is one of several valid ones: for the
    symmetric ``x0 + x1 + x2 + x3`` every pair scores 0, and the tree is
    ``[x0, x1], [x2, x3]`` only because ties are broken by the order of
    the inputs. The result contains the scores of the kept groups only, so
    it does not mark such ties; :func:`test_symmetry` scores any other group.
    Inputs with an effect below ``INACTIVE_EFFECT`` (0.3%) of ``std(f)`` join
    no module and appear at the top level.

    Examples
    --------
    >>> import torch
    >>> x = torch.rand(200, 4, dtype=torch.float64) + 0.5
    >>> tree = modular_tree(lambda v: torch.sin(v[:, 0] + v[:, 1]) * v[:, 2] + v[:, 3], x)
    >>> tree.as_expression()
    '[[x0, x1], x2], x3'
    """
    threshold = _check_threshold(threshold)
    values, dtype, n_in = _as_function(function, output)
    rows = _rows(_model_rows(function, x), dtype, n_in)
    n = rows.shape[1]
    if n > TREE_MAX_INPUTS:
        raise invalid_parameter("x", f"rows of at most {TREE_MAX_INPUTS} inputs (modular_tree scores all 2**n_in groups)", f"{n} inputs")
    f, gradient, hessian = _derivatives(values, rows)
    spread = rows.std(dim=0)
    # triple[i, j, k]: the general score of the pair (i, j) against k, as in test_symmetry.
    triple = _general_scores(gradient, hessian, spread)
    # Inactive inputs tie with every group at score 0, so they stay out of the modules.
    active = [i for i, off in enumerate(_inactive(f, gradient, spread).tolist()) if not off]
    scores: dict[tuple[int, ...], float] = {}
    for size in range(2, min(len(active), n - 1) + 1):
        for group in itertools.combinations(active, size):
            rest = [k for k in range(n) if k not in group]
            block = triple[list(group)][:, list(group)][:, :, rest]
            scores[group] = float(block.max())
    modules: list[tuple[int, ...]] = []
    # Rounded, so that groups whose scores differ only by rounding keep the order of their inputs.
    for group in sorted(scores, key=lambda g: (len(g), round(scores[g], 9), g)):
        if scores[group] > threshold:
            continue
        members = set(group)
        if any(members & set(other) and not set(other) <= members for other in modules):
            continue
        modules.append(group)
    return ModularTree(n, threshold, tuple(modules), {group: scores[group] for group in modules})
