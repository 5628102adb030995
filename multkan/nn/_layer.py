"""A compiled MultKAN layer: vectorised edge functions followed by node operations.

Symbols: ``batch`` samples, ``n_in`` nodes feeding the layer, ``n_sub`` edge
targets (plain sums, then mult operands), ``n_out`` nodes the layer passes on
(plain sums, then mult nodes), ``n_basis = G + k`` spline coefficients.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import nn

from ..errors import InvalidParameterError, is_integer
from ..splines import _cox_de_boor, _use_local, bspline_basis, extend_grid, knot_reciprocals, uniform_piece_coefficients

__all__ = ["MultKANLayer", "BASE_FUNCTIONS"]

BASE_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": nn.functional.silu,
    "identity": lambda x: x,
    "zero": torch.zeros_like,
}


def _silu_into(x: torch.Tensor, value: torch.Tensor, derivative: torch.Tensor | None) -> None:
    torch.ops.aten.silu.out(x, out=value)
    if derivative is not None:
        # silu'(x) = s (1 + x (1 - s)) with s = sigmoid(x), which equals silu(x) + s (1 - silu(x)).
        torch.addcmul(value, torch.sigmoid(x), 1 - value, out=derivative)


def _identity_into(x: torch.Tensor, value: torch.Tensor, derivative: torch.Tensor | None) -> None:
    value.copy_(x)
    if derivative is not None:
        derivative.fill_(1.0)


def _zero_into(x: torch.Tensor, value: torch.Tensor, derivative: torch.Tensor | None) -> None:
    value.zero_()
    if derivative is not None:
        derivative.zero_()


# Base functions of the fused layer: each writes b(x) and, when asked, b'(x)
# into the given views. A base function missing here takes the unfused path.
_BASE_INTO: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], None]] = {
    "silu": _silu_into,
    "identity": _identity_into,
    "zero": _zero_into,
}


def _fused_weights(coef: torch.Tensor, scale_sp: torch.Tensor, scale_base: torch.Tensor, spline_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the weight matrix (n_in * (n_basis + 1), n_sub) of the fused product and ``scale_sp * spline_mask``.

    Row ``i * (n_basis + 1) + m`` contains ``spline_mask_ij scale_sp,ij c_ijm``
    for ``m < n_basis`` and ``spline_mask_ij scale_base,ij`` for the last
    row of input ``i``, matching the feature layout of :func:`_fused_sums`.
    """
    spline_weight = scale_sp * spline_mask
    weights = torch.cat([(coef * spline_weight.unsqueeze(-1)).transpose(1, 2), (scale_base * spline_mask).unsqueeze(1)], dim=1)
    return weights.view(-1, coef.shape[1]), spline_weight


def _fused_sums(x, coef, scale_sp, scale_base, spline_mask, constants, k, base_fun, with_derivative):
    """Return the target sums of the spline and base terms, the features, their derivative and the weights.

    The features come from :func:`_fused_features` and the weights from
    :func:`_fused_weights`; one matrix product gives the sums.
    """
    features, derivative = _fused_features(x, coef.shape[-1], constants, k, base_fun, with_derivative)
    sums, weights, spline_weight = _fused_product(features, coef, scale_sp, scale_base, spline_mask)
    return sums, features, derivative, weights, spline_weight


def _fused_features(x, n_basis, constants, k, base_fun, with_derivative, out=None):
    """Return the features of the fused product and, with ``with_derivative``, their derivative (None otherwise).

    ``out``, a contiguous tensor of the features' shape, dtype and device,
    receives the features when given (reused memory avoids page faults on
    fresh allocations in training loops).

    The features of input ``i`` are ``B_0(x_i), ..., B_{n_basis-1}(x_i), b(x_i)``,
    stored input-major as (n_in, n_basis + 1, batch), so one matrix product
    with :func:`_fused_weights` gives the sums. The derivative of every
    feature with respect to ``x_i`` comes in the same layout, or for
    equally spaced knots as ``(index, slopes, base_slope)``, see
    :func:`_uniform_local_rows`.

    The batch is the last, contiguous dimension, so every slice of the
    recursion reads whole rows and each knot broadcasts as one value per
    row. On one thread of a 2-core AMD EPYC (torch 2.13, 5 inputs, G 5,
    1000 rows) this made the basis 3.5 times faster than the (batch, n_in,
    n_basis) layout. Equally spaced knots take :func:`_uniform_local_rows`.
    """
    batch, n_in = x.shape
    features = x.new_empty(n_in, n_basis + 1, batch) if out is None else out
    inputs = x.T.contiguous()
    if constants.uniform is not None:
        # The derivative is (index, slopes, base slope): the k + 1 non-zero
        # basis derivatives per point, which the backward pass gathers to.
        index, slopes = _uniform_local_rows(inputs, k, constants.uniform, features[:, :n_basis], with_derivative)
        base_slope = x.new_empty(n_in, batch) if with_derivative else None
        derivative = (index, slopes, base_slope) if with_derivative else None
    else:
        derivative = x.new_empty(n_in, n_basis + 1, batch) if with_derivative else None
        base_slope = None if derivative is None else derivative[:, n_basis]
        # dB_{m,k}/dx = k B_{m,k-1} / (t_{m+k} - t_m) - k B_{m+1,k-1} / (t_{m+k+1} - t_{m+1}).
        lower, _ = _cox_de_boor(inputs, constants.grid_columns, k, constants.reciprocal_columns, out=features[:, :n_basis], knot_dim=1)
        if derivative is not None and k == 0:
            derivative[:, :n_basis].zero_()
        elif derivative is not None:
            scaled = lower * constants.derivative_scale
            torch.sub(scaled[:, :-1], scaled[:, 1:], out=derivative[:, :n_basis])
    _BASE_INTO[base_fun](inputs, features[:, n_basis], base_slope)
    return features, derivative


def _fused_product(features, coef, scale_sp, scale_base, spline_mask):
    """Return the sums (batch, n_sub) of the fused features, the weights and ``scale_sp * spline_mask``."""
    weights, spline_weight = _fused_weights(coef, scale_sp, scale_base, spline_mask)
    # (n_sub, batch) then transposed. With the batch last in both factors the
    # product took 143 us against 684 us for features.T @ weights ([10, 10]
    # G10, 3000 rows, one thread of a 2-core AMD EPYC), and the next layer's
    # x.T is then contiguous.
    sums = (weights.T @ features.view(weights.shape[0], features.shape[-1])).T
    return sums, weights, spline_weight


def _uniform_local_rows(inputs, k, uniform, values, with_derivative):
    """Write the basis on equally spaced knots into ``values``; return the rows written and, if asked, the slopes.

    For ``s = (x - t_0) / h`` and ``mu = floor(s)``, the ``k + 1`` functions
    that can be non-zero are ``B_{mu-k}, ..., B_mu``, polynomials in ``u = s
    - mu`` given by :func:`multkan.splines.uniform_piece_coefficients`, so
    each point costs one small matrix product instead of the recursion over
    all knots. Functions whose index lies outside ``[0, n_basis)`` are
    zeroed, which also zeroes every function at points outside ``[t_0,
    t_{n_knots-1})``.

    ``inputs`` is (n_in, batch) and ``values`` a view of shape (n_in,
    n_basis, batch). Returns the row index of each of the ``k + 1`` values,
    shape (n_in, k + 1, batch), and with ``with_derivative`` the matching
    ``dB/dx`` (zero for functions that do not exist), else None.
    """
    offset, inverse_step, pieces, ranks, last = uniform
    n_basis = values.shape[1]
    scaled = torch.addcmul(offset, inputs, inverse_step)
    start = scaled.floor()
    u = scaled - start
    # NaN inputs take the interval past the last knot, where no function
    # exists, and reach the sums as NaN * 0 = NaN.
    start = start.nan_to_num_(nan=last).clamp_(-1.0, last)
    interval = start.long()
    powers = [torch.ones_like(u), u]
    for _ in range(k - 1):
        powers.append(powers[-1] * u)
    # (n_in, 2k + 2, batch): the k + 1 values, then their derivatives in u.
    # With the batch last, this product took 56 us against 221 us for
    # (n_in * batch, k) @ (k, 2k + 2) on 10 inputs and 3000 rows (one thread
    # of a 2-core AMD EPYC). Its slices also keep the layout of ``values``.
    local = torch.bmm(pieces.expand(inputs.shape[0], -1, -1), torch.stack(powers, dim=1))
    position = interval.unsqueeze(1) + ranks
    if _all_functions_exist(start, k, n_basis):
        # Every point lies in [t_k, t_{n_basis}), the usual case for inputs
        # inside the grid range, so no function needs zeroing. On one thread
        # of a 2-core AMD EPYC (10 inputs, G 10, 3000 rows) the mask took
        # 123 us of a 0.5 ms basis evaluation.
        values.zero_().scatter_(1, position, local[:, : k + 1])
        if not with_derivative:
            return position, None
        return position, local[:, k + 1 :] * inverse_step.unsqueeze(-1)
    exists = ((position >= 0) & (position < n_basis)).to(values.dtype)
    # Clamped indices of missing functions may meet a real one, so the zeroed values are added, not written.
    index = position.clamp_(0, n_basis - 1)
    values.zero_().scatter_add_(1, index, local[:, : k + 1] * exists)
    if not with_derivative:
        return index, None
    # dB/dx = (dB/du) / h, with h per input.
    return index, local[:, k + 1 :] * (exists * inverse_step.unsqueeze(-1))


def _all_functions_exist(interval: torch.Tensor, k: int, n_basis: int) -> bool:
    """Return whether every point's ``k + 1`` functions ``B_{mu-k} .. B_mu`` have indices in ``[0, n_basis)``.

    ``interval`` contains the interval indices ``mu`` as floating-point numbers.

    Checked on the CPU only, where reading the result costs no device synchronisation.
    """
    if interval.device.type != "cpu" or interval.numel() == 0:
        return False
    low, high = torch.aminmax(interval)
    return int(low) >= k and int(high) <= n_basis - 1


# Equally spaced grids take the local evaluation when n_in * batch * n_knots
# reaches this many values. NOTE: chosen from one run of a forward plus
# backward pass (k = 3) on one thread of a 2-core AMD EPYC, 10% quantile:
# local against dense 0.41 / 0.34 ms at 24,000 values, 0.61 / 0.52 ms at
# 85,000, 0.91 / 0.98 ms at 170,000, 2.2 / 3.1 ms at 510,000 and
# 4.7 / 7.2 ms at 786,000. The crossover on other CPUs is unmeasured.
UNIFORM_LOCAL_MIN = 120_000


class _FusedSplineLayer(torch.autograd.Function):
    """The spline and base terms of a layer as one autograd node.

    The forward pass evaluates the basis, the base function and, when ``x``
    requires a gradient, their derivatives, then takes one matrix product.
    The backward pass is two matrix products and a few elementwise
    operations. With ``create_graph=True`` the backward pass recomputes the
    sums with differentiable operations, so higher derivatives are exact.
    """

    @staticmethod
    def forward(ctx, x, coef, scale_sp, scale_base, spline_mask, constants, k, base_fun):
        sums, _ = _fused_forward_saving(ctx, x, coef, scale_sp, scale_base, spline_mask, constants, k, base_fun)
        return sums

    @staticmethod
    def backward(ctx, grad_sums):
        x, coef, scale_sp, scale_base, spline_mask, features, derivative, weights, spline_weight = _fused_saved(ctx)
        needs = ctx.needs_input_grad[:4]
        nothing = (None,) * 4
        if torch.is_grad_enabled():
            grads = _differentiable_grads(x, coef, scale_sp, scale_base, spline_mask, ctx.constants.grid_columns, ctx.k, ctx.base_fun, needs, grad_sums)
            return (*grads, *nothing)

        grads = _fused_backward(grad_sums, needs, coef, scale_sp, spline_mask, features, derivative, weights, spline_weight)
        return (*grads, *nothing)


def _fused_forward_saving(ctx, x, coef, scale_sp, scale_base, spline_mask, constants, k, base_fun):
    """Run :func:`_fused_sums` for an autograd node and save what its backward pass needs; return the sums and features."""
    sums, features, derivative, weights, spline_weight = _fused_sums(
        x, coef, scale_sp, scale_base, spline_mask, constants, k, base_fun, ctx.needs_input_grad[0]
    )
    ctx.k = k
    ctx.base_fun = base_fun
    ctx.constants = constants
    ctx.local = isinstance(derivative, tuple)
    slopes = derivative if ctx.local else (derivative, None, None)
    ctx.save_for_backward(x, coef, scale_sp, scale_base, spline_mask, features, *slopes, weights, spline_weight)
    return sums, features


def _fused_saved(ctx):
    """Return what :func:`_fused_forward_saving` saved, the derivative in the form :func:`_fused_backward` takes."""
    x, coef, scale_sp, scale_base, spline_mask, features, derivative, slopes, base_slope, weights, spline_weight = ctx.saved_tensors
    if ctx.local:
        derivative = (derivative, slopes, base_slope)
    return x, coef, scale_sp, scale_base, spline_mask, features, derivative, weights, spline_weight


def _fused_backward(grad_sums, needs, coef, scale_sp, spline_mask, features, derivative, weights, spline_weight, feature_grad=None):
    """Return the gradients of :func:`_fused_sums` with respect to ``x``, ``coef``, ``scale_sp`` and ``scale_base``.

    ``needs`` contains four flags, and a gradient that is not needed is None.
    ``derivative`` is what :func:`_fused_features` returned: a tensor of
    the feature layout, or ``(index, slopes, base_slope)`` for equally
    spaced knots. ``feature_grad``, in the feature layout, is a gradient
    that reaches the features by another way than the sums. Two matrix
    products and a few elementwise operations.
    """
    grad_x = grad_coef = grad_scale_sp = grad_scale_base = None
    # (n_sub, batch), contiguous when the gradient comes from a fused layer or the loss.
    grad_rows = grad_sums.T
    if needs[0]:
        grad_features = (weights @ grad_rows).view(features.shape)
        if feature_grad is not None:
            grad_features = grad_features + feature_grad
        if isinstance(derivative, tuple):
            # The row index of the k + 1 slopes of each point.
            index, slopes, base_slope = derivative
            grad_x = torch.addcmul((grad_features.gather(1, index) * slopes).sum(1), grad_features[:, -1], base_slope).T
        else:
            grad_x = (grad_features * derivative).sum(1).T
    if needs[1] or needs[2] or needs[3]:
        n_in, n_sub, n_basis = coef.shape
        # Shape (n_sub, n_in, n_basis + 1): the transpose of the weight gradient.
        grad_weights = (grad_rows @ features.view(n_in * (n_basis + 1), features.shape[-1]).T).view(n_sub, n_in, n_basis + 1)
        # Gradient with respect to coef * spline_weight, shape (n_in, n_sub, n_basis).
        grad_spline = grad_weights[:, :, :n_basis].transpose(0, 1)
        if needs[1]:
            grad_coef = grad_spline * spline_weight.unsqueeze(-1)
        if needs[2]:
            grad_scale_sp = (grad_spline * coef).sum(-1) * spline_mask
        if needs[3]:
            grad_scale_base = grad_weights[:, :, n_basis].T * spline_mask
    return grad_x, grad_coef, grad_scale_sp, grad_scale_base


def _differentiable_grads(x, coef, scale_sp, scale_base, spline_mask, grid, k, base_fun, needs, grad_sums, grad_scatter=None):
    """Return the four input gradients of :class:`_FusedSplineLayer` as differentiable tensors (None where not needed).

    ``grid`` is in the column layout of the fused layer, (n_in, n_knots, 1).
    With ``grad_scatter``, the gradients of :class:`_FusedSplineLayerWithScatter`.
    """
    inputs = (x, coef, scale_sp, scale_base)
    requested = [tensor for tensor, need in zip(inputs, needs) if need]
    with torch.enable_grad():
        sums = _unfused_sums(x, coef, scale_sp, scale_base, spline_mask, grid.squeeze(-1), k, base_fun)
        outputs, grad_outputs = [sums], [grad_sums]
        if grad_scatter is not None:
            basis = bspline_basis(x, grid.squeeze(-1), k)
            features = torch.cat([basis, BASE_FUNCTIONS[base_fun](x).unsqueeze(-1)], dim=-1).permute(1, 2, 0)
            outputs.append(_scatter_matrices(features))
            grad_outputs.append(grad_scatter)
        grads = iter(torch.autograd.grad(outputs, requested, grad_outputs, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs)


def _scatter_matrices(features: torch.Tensor) -> torch.Tensor:
    """Return ``S_i = sum_b (F_ib - mean_b F_ib)(F_ib - mean_b F_ib)^T`` for features (n_in, M, batch), shape (n_in, M, M)."""
    centred = features - features.mean(dim=-1, keepdim=True)
    return torch.bmm(centred, centred.transpose(1, 2))


class _FusedSplineLayerWithScatter(torch.autograd.Function):
    """:class:`_FusedSplineLayer` that also returns the scatter matrix of every input's features.

    Edge ``(i, j)`` computes ``phi_ij = w_ij . F_i`` from the features
    ``F_i`` of its input, so the sum over the batch of its squared
    deviations from the mean is ``w_ij^T S_i w_ij``, with ``S_i`` from
    :func:`_scatter_matrices`. The regulariser gets the spread of every edge
    from these (M, M) matrices, without the (batch, n_in, n_sub) tensor of
    edge values. ``S_i`` depends on ``x`` only, and its gradient reaches
    ``x`` through the features: ``dL/dF_ib = (G_i + G_i^T)(F_ib - mean_b
    F_ib)`` for ``G = dL/dS``.
    """

    @staticmethod
    def forward(ctx, x, coef, scale_sp, scale_base, spline_mask, constants, k, base_fun):
        sums, features = _fused_forward_saving(ctx, x, coef, scale_sp, scale_base, spline_mask, constants, k, base_fun)
        return sums, _scatter_matrices(features)

    @staticmethod
    def backward(ctx, grad_sums, grad_scatter):
        x, coef, scale_sp, scale_base, spline_mask, features, derivative, weights, spline_weight = _fused_saved(ctx)
        needs = ctx.needs_input_grad[:4]
        nothing = (None,) * 4
        if torch.is_grad_enabled():
            grads = _differentiable_grads(
                x, coef, scale_sp, scale_base, spline_mask, ctx.constants.grid_columns, ctx.k, ctx.base_fun, needs, grad_sums, grad_scatter
            )
            return (*grads, *nothing)

        feature_grad = None
        if needs[0]:
            centred = features - features.mean(dim=-1, keepdim=True)
            feature_grad = torch.bmm(grad_scatter + grad_scatter.transpose(1, 2), centred)
        grads = _fused_backward(grad_sums, needs, coef, scale_sp, spline_mask, features, derivative, weights, spline_weight, feature_grad)
        return (*grads, *nothing)


def _unfused_sums(x, coef, scale_sp, scale_base, spline_mask, grid, k, base_fun):
    """Return the same sums as :func:`_fused_sums` from differentiable torch operations."""
    spline_weight = (coef * (scale_sp * spline_mask).unsqueeze(-1)).permute(0, 2, 1).reshape(-1, coef.shape[1])
    basis = bspline_basis(x, grid, k).flatten(1)
    return torch.addmm(BASE_FUNCTIONS[base_fun](x) @ (scale_base * spline_mask), basis, spline_weight)


def _mult_nodes(sums, node_scale, node_bias, operand_index, n_sum, padded):
    """Return ``node_bias + node_scale * [sums[:, :n_sum], products]``, the nodes and the gathered operands.

    ``operand_index`` (n_mult, max_arity) points into the columns of
    ``sums``. With ``padded`` (mult nodes of different arities) the padding
    points one past the last column, at a column of ones.
    """
    if padded:
        sums = torch.cat([sums, torch.ones_like(sums[:, :1])], dim=1)
    operands = sums[:, operand_index]
    products = operands.prod(dim=-1)
    nodes = torch.cat([sums[:, :n_sum], products], dim=1) if n_sum else products
    return torch.addcmul(node_bias, nodes, node_scale), nodes, operands


def _mult_backward(grad_output, needs, sums_shape, node_scale, operand_index, n_sum, padded, nodes, operands):
    """Return the gradients of :func:`_mult_nodes` with respect to the sums, ``node_scale`` and ``node_bias``.

    ``needs`` contains three flags, and a gradient that is not needed is None.
    ``nodes`` and ``operands`` are what :func:`_mult_nodes` returned.
    """
    grad_sums = grad_scale = grad_bias = None
    if needs[0]:
        grad_nodes = grad_output * node_scale
        batch, n_sub = sums_shape
        arity = operands.shape[-1]
        if arity == 2:
            others = operands.flip(-1)
        else:
            others = torch.empty_like(operands)
            for position in range(arity):
                rest = [operands[..., other] for other in range(arity) if other != position]
                others[..., position] = torch.stack(rest, dim=-1).prod(dim=-1) if rest else 1.0
        # An extra column receives the share of padding operands and is dropped.
        grad_sums = grad_output.new_zeros(batch, n_sub + padded)
        if n_sum:
            grad_sums[:, :n_sum] = grad_nodes[:, :n_sum]
        contributions = (others * grad_nodes[:, n_sum:, None]).reshape(batch, others.shape[1] * others.shape[2])
        grad_sums = grad_sums.index_add_(1, operand_index.reshape(-1), contributions)[:, :n_sub]
    if needs[1]:
        grad_scale = (grad_output * nodes).sum(dim=0)
    if needs[2]:
        grad_bias = grad_output.sum(dim=0)
    return grad_sums, grad_scale, grad_bias


class _MultNodes(torch.autograd.Function):
    """The node operations of a layer with mult nodes as one autograd node.

    The gradient of a product with respect to one operand is the product of
    the others, formed by a loop over the arity (2 for most models), so zero
    operands need no special case. With ``create_graph=True`` the backward
    pass recomputes the nodes with differentiable operations.
    """

    @staticmethod
    def forward(ctx, sums, node_scale, node_bias, operand_index, n_sum, padded):
        output, nodes, operands = _mult_nodes(sums, node_scale, node_bias, operand_index, n_sum, padded)
        ctx.n_sum = n_sum
        ctx.padded = padded
        ctx.save_for_backward(sums, node_scale, node_bias, operand_index, nodes, operands)
        return output

    @staticmethod
    def backward(ctx, grad_output):
        sums, node_scale, node_bias, operand_index, nodes, operands = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        n_sum = ctx.n_sum
        if torch.is_grad_enabled():
            inputs = (sums, node_scale, node_bias)
            requested = [tensor for tensor, need in zip(inputs, needs) if need]
            with torch.enable_grad():
                output = _mult_nodes(sums, node_scale, node_bias, operand_index, n_sum, ctx.padded)[0]
                grads = iter(torch.autograd.grad(output, requested, grad_output, create_graph=True, allow_unused=True))
            return (*(next(grads) if need else None for need in needs), None, None, None)

        grads = _mult_backward(grad_output, needs, sums.shape, node_scale, operand_index, n_sum, ctx.padded, nodes, operands)
        return (*grads, None, None, None)


class _SplineConstants(NamedTuple):
    """Functions of a layer's grid that every forward pass needs.

    ``reciprocals`` is :func:`multkan.splines.knot_reciprocals` of the grid.
    The fused layer uses the knots, the reciprocals and ``k / (t_{m+k} -
    t_m)`` as columns of shape (n_in, length, 1); the last is None for k = 0.
    ``uniform`` is None unless the knots of every input are equally spaced
    (to 16 units of rounding) and ``k >= 1``. Then it contains, for
    :func:`_uniform_local_rows`, ``-t_0 / h`` and ``1 / h`` per input, the
    polynomial pieces with their derivatives in ``u`` as a (2k + 2, k + 1)
    matrix of the coefficients of ``u^0 .. u^k``, the offsets ``-k .. 0``
    and the largest interval index.
    """

    reciprocals: list[torch.Tensor]
    grid_columns: torch.Tensor
    reciprocal_columns: list[torch.Tensor]
    derivative_scale: torch.Tensor | None
    uniform: tuple | None

    @property
    def dense(self) -> _SplineConstants:
        """The same constants without the local evaluation of equally spaced knots."""
        return self._replace(uniform=None)

    @classmethod
    def of(cls, grid: torch.Tensor, k: int) -> _SplineConstants:
        reciprocals = knot_reciprocals(grid, k)
        columns = [r.unsqueeze(-1) for r in reciprocals]
        return cls(reciprocals, grid.unsqueeze(-1), columns, k * columns[-1] if k > 0 else None, _uniform_constants(grid, k))


def _uniform_constants(grid: torch.Tensor, k: int) -> tuple | None:
    """Return the constants of :func:`_uniform_local_rows`, or None when the knots are not equally spaced."""
    if k < 1 or grid.requires_grad or grid.device.type == "meta":
        # A grid on the meta device has no values to compare; it takes the dense path.
        return None
    n_knots = grid.shape[-1]
    step = (grid[:, -1:] - grid[:, :1]) / (n_knots - 1)
    tolerance = 16 * torch.finfo(grid.dtype).eps * grid.abs().amax(dim=1, keepdim=True)
    if not bool(((grid.diff(dim=1) - step).abs() <= tolerance).all()):
        return None
    inverse_step = 1.0 / step
    table = torch.tensor(uniform_piece_coefficients(k), dtype=torch.float64)
    slopes = torch.zeros_like(table)
    slopes[:-1] = table[1:] * torch.arange(1, k + 1, dtype=torch.float64)[:, None]
    pieces = torch.cat([table, slopes], dim=1).to(grid)
    ranks = torch.arange(-k, 1, device=grid.device)[None, :, None]
    return (-grid[:, :1] * inverse_step, inverse_step, pieces.T.contiguous(), ranks, float(n_knots - 1))


class MultKANLayer(nn.Module):
    """Edges from ``n_in`` nodes to ``n_sub`` sums, then sums and mult nodes.

    Each edge ``(i, j)`` computes

    ``phi_ij(x) = spline_mask_ij (w_b,ij b(x) + w_s,ij sum_m c_ijm B_m(x))
    + symbolic_mask_ij (c f(a x + b) + d)``

    and sum ``j`` receives ``u_j = sum_i phi_ij(x_i)``. The layer passes on
    ``h = scale * [u_0 .. u_{n_sum-1}, prod(operands of mult 0), ...] + bias``.

    Parameters
    ----------
    grid : tensor of shape (n_in, G + 2k + 1)
        Knots of each input.
    k : int
        Spline order.
    n_sum : int
        Plain sums; the first ``n_sum`` targets.
    operands : sequence of sequence of int
        For each mult node, the target positions of its operands.
    coef : tensor of shape (n_in, n_sub, G + k)
    scale_base, scale_sp : tensors of shape (n_in, n_sub)
    spline_mask : tensor of shape (n_in, n_sub)
        1 for spline edges, 0 for symbolic, zero or absent edges.
    base_fun : str
        Name in :data:`BASE_FUNCTIONS`.

    Attributes
    ----------
    symbolic_mask : buffer of shape (n_in, n_sub)
    symbolic_affine : parameter of shape (n_in, n_sub, 4)
        ``(a, b, c, d)`` of each symbolic edge.
    node_scale, node_bias : parameters of shape (n_out,)
    """

    def __init__(
        self,
        grid: torch.Tensor,
        k: int,
        n_sum: int,
        operands: Sequence[Sequence[int]],
        coef: torch.Tensor,
        scale_base: torch.Tensor,
        scale_sp: torch.Tensor,
        spline_mask: torch.Tensor,
        *,
        base_fun: str = "silu",
        uniform: bool = False,
        affine_trainable: bool = False,
        sp_trainable: bool = True,
        sb_trainable: bool = True,
    ) -> None:
        super().__init__()
        n_in, n_sub, _ = coef.shape
        self.k = k
        self.n_sum = n_sum
        self.base_fun = base_fun
        self.uniform = uniform
        self.operands = [tuple(o) for o in operands]

        self.register_buffer("grid", grid.clone())
        self.coef = nn.Parameter(coef.clone())
        self.scale_base = nn.Parameter(scale_base.clone(), requires_grad=sb_trainable)
        self.scale_sp = nn.Parameter(scale_sp.clone(), requires_grad=sp_trainable)
        self.register_buffer("spline_mask", spline_mask.clone())
        self.register_buffer("symbolic_mask", torch.zeros_like(spline_mask))
        self.symbolic_affine = nn.Parameter(torch.zeros(n_in, n_sub, 4, dtype=coef.dtype, device=coef.device))
        self.symbolic_names: dict[tuple[int, int], str] = {}
        self.symbolic_functions: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}

        n_out = n_sum + len(self.operands)
        self.node_scale = nn.Parameter(torch.ones(n_out, dtype=coef.dtype, device=coef.device), requires_grad=affine_trainable)
        self.node_bias = nn.Parameter(torch.zeros(n_out, dtype=coef.dtype, device=coef.device), requires_grad=affine_trainable)
        self.register_buffer("operand_index", self._operand_index(n_sub), persistent=False)
        self._groups: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._reciprocal_cache: tuple[torch.Tensor, int, _SplineConstants] | None = None

    def _operand_index(self, n_sub: int) -> torch.Tensor:
        """Gather index of shape (n_mult, max_arity); padding points at a column of ones."""
        width = max((len(o) for o in self.operands), default=0)
        index = torch.full((len(self.operands), width), n_sub, dtype=torch.long)
        for m, positions in enumerate(self.operands):
            index[m, : len(positions)] = torch.tensor(positions, dtype=torch.long)
        return index

    @property
    def n_in(self) -> int:
        return self.coef.shape[0]

    @property
    def n_sub(self) -> int:
        return self.coef.shape[1]

    @property
    def n_out(self) -> int:
        return self.n_sum + len(self.operands)

    @property
    def grid_size(self) -> int:
        return self.coef.shape[2] - self.k

    # Basis and edge values.

    def knot_reciprocals(self) -> list[torch.Tensor]:
        """Return :func:`multkan.splines.knot_reciprocals` of the grid, cached until the grid changes.

        The cache is keyed on the grid tensor object and its version counter,
        so assigning a new grid, ``.to()``, ``load_state_dict`` and in-place
        edits all invalidate it.
        """
        return self._spline_constants().reciprocals

    def _spline_constants(self) -> _SplineConstants:
        """Return the knot reciprocals and the constants of the fused layer, cached until the grid changes."""
        grid = self.grid
        if grid.requires_grad or grid.is_inference():
            # Inference tensors have no version counter, and a grid that
            # requires a gradient must not be cut from the graph.
            return _SplineConstants.of(grid, self.k)
        cache = self._reciprocal_cache
        if cache is None or cache[0] is not grid or cache[1] != grid._version:
            with torch.no_grad():
                cache = (grid, grid._version, _SplineConstants.of(grid, self.k))
            self._reciprocal_cache = cache
        return cache[2]

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        """Return the B-spline basis of every input, shape (batch, n_in, n_basis).

        Uniform grids take the general path too: with the knot spans cached
        it forms ``x - t_m`` in one operation, where
        :func:`multkan.splines.bspline_basis_uniform` rescales ``x`` first.
        """
        return bspline_basis(x, self.grid, self.k, reciprocals=self.knot_reciprocals())

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        return BASE_FUNCTIONS[self.base_fun](x)

    def spline_edge_values(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``sum_m c_ijm B_m(x_i)`` for every edge, shape (batch, n_in, n_sub), unmasked."""
        return torch.einsum("bim,ijm->bij", self.basis(x), self.coef)

    def symbolic_groups(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Return the (source, target) index tensors of the symbolic edges of each function."""
        device = self.symbolic_affine.device
        if self._groups is None or any(s.device != device for s, _ in self._groups.values()):
            grouped: dict[str, list[tuple[int, int]]] = {}
            for edge, name in sorted(self.symbolic_names.items()):
                grouped.setdefault(name, []).append(edge)
            self._groups = {
                name: (
                    torch.tensor([i for i, _ in edges], dtype=torch.long, device=device),
                    torch.tensor([j for _, j in edges], dtype=torch.long, device=device),
                )
                for name, edges in grouped.items()
            }
        return self._groups

    def set_symbolic(
        self,
        source: int,
        target: int,
        name: str | None,
        function: Callable[[torch.Tensor], torch.Tensor] | None = None,
        affine: Sequence[float] | None = None,
    ) -> None:
        """Make edge ``(source, target)`` symbolic with ``function``, or spline again when ``name`` is None."""
        with torch.no_grad():
            if name is None:
                self.symbolic_names.pop((source, target), None)
                self.symbolic_mask[source, target] = 0.0
                self.spline_mask[source, target] = 1.0
            else:
                self.symbolic_names[(source, target)] = name
                if function is not None:
                    self.symbolic_functions[name] = function
                self.symbolic_mask[source, target] = 1.0
                self.spline_mask[source, target] = 0.0
                if affine is not None:
                    self.symbolic_affine[source, target] = torch.as_tensor(affine, dtype=self.symbolic_affine.dtype)
        self._groups = None

    def get_extra_state(self) -> torch.Tensor:
        """Return the layer state that no tensor contains, for ``state_dict``.

        That is a JSON object with ``symbolic_names``, a list of ``[source,
        target, name]`` for every symbolic edge, and ``uniform``, the knot
        layout flag. It is stored as its UTF-8 bytes in a CPU ``uint8``
        tensor, so every value of ``state_dict()`` stays a tensor (code that
        clones, compares or moves all entries keeps working). The functions
        themselves are not stored: the model looks their names up in its
        library when the state is loaded.
        """
        state = {
            "symbolic_names": [[source, target, name] for (source, target), name in sorted(self.symbolic_names.items())],
            "uniform": bool(self.uniform),
        }
        return torch.frombuffer(bytearray(json.dumps(state, sort_keys=True).encode()), dtype=torch.uint8).clone()

    def set_extra_state(self, state: torch.Tensor) -> None:
        """Restore what :meth:`get_extra_state` returned.

        A function already known to the layer under the same name is kept;
        the model's load hook resolves the others from its library.
        """
        try:
            if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
                raise ValueError("not a 1-D uint8 tensor")
            decoded = json.loads(bytes(state.cpu().tolist()).decode())
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidParameterError(
                f"invalid layer state: expected the uint8 tensor of get_extra_state ({error}), received {state!r}"
            ) from error
        if not isinstance(decoded, dict) or set(decoded) != {"symbolic_names", "uniform"} or not isinstance(decoded["uniform"], bool):
            raise InvalidParameterError(
                "invalid layer state: expected a JSON object with 'symbolic_names' (a list of [source, target, name]) "
                f"and 'uniform' (a bool), received {decoded!r}"
            )
        names: dict[tuple[int, int], str] = {}
        for entry in decoded["symbolic_names"]:
            valid = isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], str)
            valid = valid and all(is_integer(v) for v in entry[:2])
            if not valid or not (0 <= entry[0] < self.n_in and 0 <= entry[1] < self.n_sub):
                raise InvalidParameterError(
                    f"invalid layer state: symbolic edge {entry!r} is not [source, target, name] with "
                    f"0 <= source < {self.n_in} and 0 <= target < {self.n_sub}"
                )
            names[(entry[0], entry[1])] = entry[2]
        self.symbolic_names = names
        self.symbolic_functions = {name: function for name, function in self.symbolic_functions.items() if name in names.values()}
        self.uniform = decoded["uniform"]
        self._groups = None

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # When a tensor of this layer fails to load (a size mismatch), torch reports it after the
        # model's load hook, so the hook must not check this layer's half-loaded state first.
        errors_before = len(error_msgs)
        before = (self.symbolic_names, self.symbolic_functions, self.uniform)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        self._load_failed = len(error_msgs) > errors_before
        if self._load_failed:
            # Keep the edge names that match the tensors left in place.
            self.symbolic_names, self.symbolic_functions, self.uniform = before
            self._groups = None

    def set_zero(self, source: int, target: int) -> None:
        """Switch edge ``(source, target)`` off."""
        with torch.no_grad():
            self.symbolic_names.pop((source, target), None)
            self.symbolic_mask[source, target] = 0.0
            self.spline_mask[source, target] = 0.0
        self._groups = None

    def symbolic_edge_values(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Return ``(source, target, values)`` per function, values of shape (batch, n_edges_f)."""
        results = []
        for name, (source, target) in self.symbolic_groups().items():
            a, b, c, d = self.symbolic_affine[source, target].unbind(-1)
            values = c * self.symbolic_functions[name](a * x[:, source] + b) + d
            results.append((source, target, values))
        return results

    def edge_values(self, x: torch.Tensor) -> torch.Tensor:
        """Return every edge's output ``phi_ij(x_i)``, shape (batch, n_in, n_sub).

        Used by the regulariser, attribution scores and plots; the forward
        pass contracts the same terms without building this tensor.
        """
        # One batched product per input: the base value is one more basis
        # column, and the masks and scales are folded into the weights, so
        # the (batch, n_in, n_sub) tensor is written once instead of by five
        # elementwise passes.
        features = torch.cat([self.basis(x), self._base(x).unsqueeze(-1)], dim=-1).transpose(0, 1)
        weights = torch.cat([self.coef * self.scale_sp.unsqueeze(-1), self.scale_base.unsqueeze(-1)], dim=-1)
        weights = weights * self.spline_mask.unsqueeze(-1)
        values = torch.bmm(features, weights.transpose(1, 2)).transpose(0, 1)
        for source, target, symbolic in self.symbolic_edge_values(x):
            values = values.index_put((torch.arange(x.shape[0], device=x.device)[:, None], source, target), symbolic, accumulate=True)
        return values

    # Node operations.

    def combine(self, sums: torch.Tensor) -> torch.Tensor:
        """Turn target sums (batch, n_sub) into node values (batch, n_out).

        Layers with mult nodes take one autograd node (:class:`_MultNodes`).
        """
        if not self.operands:
            return torch.addcmul(self.node_bias, sums, self.node_scale)
        arguments = (sums, self.node_scale, self.node_bias, self.operand_index, self.n_sum, len({len(o) for o in self.operands}) > 1)
        if torch.is_grad_enabled() and (sums.requires_grad or self.node_scale.requires_grad or self.node_bias.requires_grad):
            return _MultNodes.apply(*arguments)
        return _mult_nodes(*arguments)[0]

    def target_sums(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``u_j = sum_i phi_ij(x_i)`` for every target, shape (batch, n_sub).

        The spline and base terms take one fused autograd node
        (:class:`_FusedSplineLayer`), see :meth:`_fused_constants`. Three
        cases use plain differentiable operations instead: unequally spaced
        grids with at least ``multkan.splines.LOCAL_BASIS_MIN`` basis
        functions, a grid that requires a gradient and a base function
        without a fused form.
        """
        coef, scale_sp, scale_base, grid = self.coef, self.scale_sp, self.scale_base, self.grid
        constants = self._fused_constants(x) if self.base_fun in _BASE_INTO and not grid.requires_grad else None
        if constants is not None:
            arguments = (x, coef, scale_sp, scale_base, self.spline_mask, constants, self.k, self.base_fun)
            if torch.is_grad_enabled() and (x.requires_grad or coef.requires_grad or scale_sp.requires_grad or scale_base.requires_grad):
                sums = _FusedSplineLayer.apply(*arguments)
            else:
                sums = _fused_sums(*arguments, False)[0]
        else:
            sums = _unfused_sums(x, coef, scale_sp, scale_base, self.spline_mask, grid, self.k, self.base_fun)
        for _, target, values in self.symbolic_edge_values(x):
            sums = sums.index_add(1, target, values)
        return sums

    def target_sums_and_edge_std(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Return the target sums (batch, n_sub) and every edge's standard deviation over the batch (n_in, n_sub).

        The standard deviation is the sample one (divisor ``batch - 1``),
        computed from the scatter matrices of the features (see
        :class:`_FusedSplineLayerWithScatter`) instead of the edge values.
        Returns None where the fused layer does not apply, where an edge is
        symbolic, and for fewer than two rows.
        """
        if x.shape[0] < 2 or self.base_fun not in _BASE_INTO or self.grid.requires_grad or bool(self.symbolic_mask.any()):
            return None
        constants = self._fused_constants(x)
        if constants is None:
            return None
        sums, scatter = _FusedSplineLayerWithScatter.apply(x, self.coef, self.scale_sp, self.scale_base, self.spline_mask, constants, self.k, self.base_fun)
        mask = self.spline_mask.unsqueeze(-1)
        # (n_in, n_sub, n_basis + 1): the weight of every feature on every edge.
        weights = torch.cat([self.coef * self.scale_sp.unsqueeze(-1), self.scale_base.unsqueeze(-1)], dim=-1) * mask
        squares = (torch.bmm(weights, scatter) * weights).sum(dim=-1)
        # The square root has an infinite slope at 0 (masked edges), where
        # the gradient is taken as 0, as torch.std's is.
        positive = squares > 0
        std = torch.where(positive, (squares.clamp_min(torch.finfo(squares.dtype).tiny) / (x.shape[0] - 1)).sqrt(), 0.0)
        return sums, std

    def _fused_constants(self, x: torch.Tensor) -> _SplineConstants | None:
        """Return the constants for the fused layer on ``x``, or None where the unfused operations are used.

        Equally spaced knots are evaluated piece by piece for large inputs
        and for grids with at least ``LOCAL_BASIS_MIN`` basis functions.
        Other grids with that many basis functions keep the unfused local basis.
        """
        constants = self._spline_constants()
        large_grid = _use_local(self.grid, self.k)
        if constants.uniform is not None and (large_grid or x.shape[0] * constants.grid_columns.numel() >= UNIFORM_LOCAL_MIN):
            return constants
        if large_grid:
            return None
        return constants.dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map node values (batch, n_in) to node values (batch, n_out)."""
        return self.combine(self.target_sums(x))

    # Grids.

    def update_grid(self, x: torch.Tensor, new_grid: torch.Tensor, *, uniform: bool) -> None:
        """Move the knots to ``new_grid`` and refit coefficients so each spline keeps its shape on ``x``."""
        from ..splines import fit_coefficients

        with torch.no_grad():
            # The old splines' values are computed chunk by chunk inside the
            # fit, on the old grid, so (batch, n_in, n_sub) values never exist at once.
            coef = fit_coefficients(x, lambda rows: self.spline_edge_values(x[rows]), new_grid.to(self.grid), self.k)
            self.grid = new_grid.to(self.grid)
            self.uniform = uniform
            self.coef.copy_(coef)

    def extra_repr(self) -> str:
        return f"n_in={self.n_in}, n_sub={self.n_sub}, n_out={self.n_out}, grid={self.grid_size}, k={self.k}"


def default_grid(n_in: int, grid_size: int, k: int, grid_range: tuple[float, float], dtype, device) -> torch.Tensor:
    """Return uniform knots over ``grid_range`` for ``n_in`` inputs, shape (n_in, G + 2k + 1)."""
    low, high = grid_range
    fractions = torch.linspace(0, 1, grid_size + 1, dtype=dtype, device=device)
    interior = (low + (high - low) * fractions).expand(n_in, -1)
    return extend_grid(interior, k)
