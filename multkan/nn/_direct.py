"""The mean squared error of a whole network and its gradient, without autograd.

Training evaluates the same network on the same rows many times: L-BFGS
takes about 24 evaluations per step. Autograd records a graph on every
forward pass, calls back into Python for every custom node and adds each
gradient into its parameter one tensor at a time. For the small networks
people fit with KANs that bookkeeping costs as much as the arithmetic.
:class:`DirectObjective` runs the same fused forward pass under
``torch.no_grad()``, keeps what the backward pass needs, and applies the
backward formulas of the fused layer and the mult nodes
(:func:`_fused_backward`, :func:`_mult_backward`) itself, writing each
gradient into ``parameter.grad`` once.

The features of the first layer depend only on the inputs and the grid,
not on any parameter, so they are kept between evaluations while the
inputs and the grid are unchanged (full-batch training). The feature
tensors of the later layers are written into the same memory at every
evaluation of the same shape. A fresh allocation of a few MiB costs a page
fault per 4 KiB whenever the C library has returned the memory to the
system.
"""

from __future__ import annotations

import torch

from ._layer import _BASE_INTO, _fused_backward, _fused_features, _fused_product, _mult_backward, _mult_nodes

__all__ = ["DirectObjective"]

# First-layer features are kept for this many input tensors: the training
# and the test rows of a fit.
CACHED_INPUTS = 2
# Feature tensors kept per layer for reuse: training and test rows, with and
# without the backward pass's records.
BUFFERS_PER_LAYER = 4


class DirectObjective:
    """Mean squared error of ``model`` on given rows, with the gradient written to every trainable parameter.

    Use :meth:`supports` first: the direct path covers spline layers with
    a fused base function, sum and mult nodes, and no symbolic edges. A
    call returns None, and writes nothing, when a layer's grid needs the
    unfused evaluation at that batch size; the caller then uses autograd.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.layers = list(model.layers)
        self.padded = [len({len(o) for o in layer.operands}) > 1 for layer in self.layers]
        # (inputs, version, grid constants, dense, features) by id(inputs).
        self._first: dict[int, tuple] = {}
        # Feature tensors of the later layers, reused between evaluations by
        # (layer, whether the backward pass keeps them, shape, dtype, device).
        self._buffers: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def supports(model: torch.nn.Module, loss_kind: str, lamb: float) -> bool:
        """Return whether the direct path computes the objective of a fit with these settings."""
        if loss_kind != "mse" or lamb > 0:
            return False
        return all(
            layer.base_fun in _BASE_INTO and not layer.grid.requires_grad and not bool(layer.symbolic_mask.any())
            for layer in model.layers
        )

    def _first_features(self, layer, inputs: torch.Tensor, constants) -> torch.Tensor:
        """Return the first layer's features, reused while the inputs, their contents and the grid are the same."""
        if inputs.is_inference() or layer.grid.is_inference():
            return _fused_features(inputs, layer.coef.shape[-1], constants, layer.k, layer.base_fun, False)[0]
        spline_constants, dense = layer._spline_constants(), constants.uniform is None
        cached = self._first.get(id(inputs))
        if not (
            cached is not None and cached[0] is inputs and cached[1] == inputs._version
            and cached[2] is spline_constants and cached[3] == dense
        ):
            features = _fused_features(inputs, layer.coef.shape[-1], constants, layer.k, layer.base_fun, False)[0]
            if len(self._first) >= CACHED_INPUTS and id(inputs) not in self._first:
                del self._first[next(iter(self._first))]
            self._first[id(inputs)] = cached = (inputs, inputs._version, spline_constants, dense, features)
        return cached[4]

    def _forward(self, inputs: torch.Tensor, keep: bool) -> tuple[torch.Tensor | None, list]:
        """Return the network's outputs and, with ``keep``, what the backward pass needs per layer.

        The outputs are None when a layer takes the unfused path for these inputs.
        """
        values = inputs
        records = []
        for position, layer in enumerate(self.layers):
            constants = layer._fused_constants(values)
            if constants is None:
                return None, records
            if position == 0:
                features, derivative = self._first_features(layer, values, constants), None
            else:
                n_basis = layer.coef.shape[-1]
                shape = (values.shape[1], n_basis + 1, values.shape[0])
                key = (position, keep, shape, values.dtype, values.device)
                buffer = self._buffers.get(key)
                if buffer is None:
                    if len(self._buffers) >= BUFFERS_PER_LAYER * len(self.layers):
                        # Many batch shapes (mini-batches of varying size, chunked evaluation): start over.
                        self._buffers.clear()
                    buffer = self._buffers[key] = values.new_empty(shape)
                features, derivative = _fused_features(values, n_basis, constants, layer.k, layer.base_fun, keep, out=buffer)
            sums, weights, spline_weight = _fused_product(features, layer.coef, layer.scale_sp, layer.scale_base, layer.spline_mask)
            if layer.operands:
                values, nodes, operands = _mult_nodes(sums, layer.node_scale, layer.node_bias, layer.operand_index, layer.n_sum, self.padded[position])
            else:
                values, nodes, operands = torch.addcmul(layer.node_bias, sums, layer.node_scale), sums, None
            if keep:
                records.append((features, derivative, weights, spline_weight, sums.shape, nodes, operands))
        return values, records

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """Return the model's outputs on ``inputs`` (batch, n_inputs), or None when a layer takes the unfused path."""
        values, _ = self._forward(inputs, keep=False)
        return values

    @torch.no_grad()
    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Return the mean squared error and set ``.grad`` of every parameter that requires one.

        Returns None, with no gradient written, when a layer takes the
        unfused path for these inputs.
        """
        values, records = self._forward(inputs, keep=True)
        if values is None:
            return None
        loss = torch.nn.functional.mse_loss(values, labels)
        grad = (values - labels).mul_(2.0 / labels.numel())
        for position in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[position]
            features, derivative, weights, spline_weight, sums_shape, nodes, operands = records[position]
            needs_node = (True, layer.node_scale.requires_grad, layer.node_bias.requires_grad)
            if operands is not None:
                grad_sums, grad_scale, grad_bias = _mult_backward(
                    grad, needs_node, sums_shape, layer.node_scale, layer.operand_index, layer.n_sum, self.padded[position], nodes, operands
                )
            else:
                grad_sums = grad * layer.node_scale
                grad_scale = (grad * nodes).sum(dim=0) if needs_node[1] else None
                grad_bias = grad.sum(dim=0) if needs_node[2] else None
            needs = (position > 0, layer.coef.requires_grad, layer.scale_sp.requires_grad, layer.scale_base.requires_grad)
            grad, grad_coef, grad_scale_sp, grad_scale_base = _fused_backward(
                grad_sums, needs, layer.coef, layer.scale_sp, layer.spline_mask, features, derivative, weights, spline_weight
            )
            for parameter, value in (
                (layer.coef, grad_coef), (layer.scale_sp, grad_scale_sp), (layer.scale_base, grad_scale_base),
                (layer.node_scale, grad_scale), (layer.node_bias, grad_bias),
            ):
                if value is not None:
                    _store_grad(parameter, value)
        return loss


def _store_grad(parameter: torch.Tensor, value: torch.Tensor) -> None:
    """Write ``value`` into ``parameter.grad`` in place (it may be a view of a flat gradient)."""
    if parameter.grad is None:
        parameter.grad = value.detach().clone()
    else:
        parameter.grad.copy_(value)
