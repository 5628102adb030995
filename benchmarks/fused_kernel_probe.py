"""Measure what compiled kernels would save in an L-BFGS evaluation of case a.

Case a of bench_vs_pykan.py ([2, 5, 1], grid 5, k 3, 1000 rows) spends its
time in about 60 small ATen operations per evaluation. This script times,
on one torch thread and on the same model (grids moved to the data, so the
knots are unequally spaced):

1. ``torch direct``: one evaluation of ``multkan.nn._direct.DirectObjective``
   (loss and gradient), the path ``fit`` takes.
2. ``numba scalar``: the same loss and gradient from two numba kernels per
   layer that loop over rows and inputs and evaluate the k + 1 non-zero
   basis functions of each point by de Boor's recursion.
3. ``torch layer 2 forward`` against ``numba layer 2 forward``: the second
   layer's dense basis and product, written in numba as loops over the
   batch, which LLVM vectorises.

numba is not a dependency of multkan. Install it into the environment
that runs this script (``pip install numba``); its kernels compile on the
first call, which is not timed.

Usage, from the repository root::

    python benchmarks/fused_kernel_probe.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

try:
    from numba import njit
except ImportError:
    sys.exit("fused_kernel_probe.py needs numba: pip install numba")

from multkan import MultKAN  # noqa: E402 - the checkout goes on sys.path first
from multkan.nn._direct import DirectObjective  # noqa: E402
from multkan.nn._layer import _fused_features, _fused_product, _fused_weights  # noqa: E402

K = 3
ROWS = 1000
CALLS = 2000


@njit(cache=False, nogil=True)
def scalar_forward(x, knots, coef, scale_sp, scale_base, mask, sums, interval, values, slopes, base, base_slope, weights):
    """Write the sums of a silu-base spline layer and keep what the backward kernel needs."""
    batch, n_in = x.shape
    n_sub, n_basis = coef.shape[1], coef.shape[2]
    n_knots = knots.shape[1]
    for i in range(n_in):
        for j in range(n_sub):
            spline_weight = scale_sp[i, j] * mask[i, j]
            for m in range(n_basis):
                weights[i, m, j] = coef[i, j, m] * spline_weight
            weights[i, n_basis, j] = scale_base[i, j] * mask[i, j]
    triangle = np.empty(K + 2, x.dtype)
    left = np.empty(K + 1, x.dtype)
    right = np.empty(K + 1, x.dtype)
    for r in range(batch):
        for j in range(n_sub):
            sums[r, j] = 0.0
        for i in range(n_in):
            point = x[r, i]
            sigmoid = 1.0 / (1.0 + np.exp(-point))
            base[r, i] = point * sigmoid
            base_slope[r, i] = sigmoid * (1.0 + point * (1.0 - sigmoid))
            for p in range(K + 1):
                values[r, i, p] = 0.0
                slopes[r, i, p] = 0.0
            interval[r, i] = K
            if point >= knots[i, 0] and point < knots[i, n_knots - 1]:
                low, high = 0, n_knots - 1
                while high - low > 1:
                    middle = (low + high) >> 1
                    if knots[i, middle] <= point:
                        low = middle
                    else:
                        high = middle
                interval[r, i] = low
                triangle[0] = 1.0
                for level in range(1, K + 1):
                    left[level] = point - knots[i, max(low + 1 - level, 0)]
                    right[level] = knots[i, min(low + level, n_knots - 1)] - point
                    saved = 0.0
                    for q in range(level):
                        span = right[q + 1] + left[level - q]
                        term = triangle[q] / span if span != 0.0 else 0.0
                        if level == K:
                            slopes[r, i, q] -= K * term
                            slopes[r, i, q + 1] += K * term
                        triangle[q] = saved + right[q + 1] * term
                        saved = left[level - q] * term
                    triangle[level] = saved
                for p in range(K + 1):
                    m = low - K + p
                    if 0 <= m < n_basis:
                        values[r, i, p] = triangle[p]
                    else:
                        slopes[r, i, p] = 0.0
            first = interval[r, i] - K
            for p in range(K + 1):
                if values[r, i, p] != 0.0:
                    for j in range(n_sub):
                        sums[r, j] += values[r, i, p] * weights[i, first + p, j]
            for j in range(n_sub):
                sums[r, j] += base[r, i] * weights[i, n_basis, j]


@njit(cache=False, nogil=True)
def scalar_backward(grad_sums, coef, scale_sp, mask, interval, values, slopes, base, base_slope, weights, grad_x, grad_weights, grad_coef, grad_scale_sp, grad_scale_base):
    """Write the gradients of the layer's parameters and inputs from the gradient of its sums."""
    batch, n_in = interval.shape
    n_sub, n_basis = coef.shape[1], coef.shape[2]
    grad_weights[:] = 0.0
    for r in range(batch):
        for i in range(n_in):
            first = interval[r, i] - K
            total = 0.0
            for p in range(K + 1):
                if values[r, i, p] != 0.0 or slopes[r, i, p] != 0.0:
                    for j in range(n_sub):
                        grad_weights[i, first + p, j] += values[r, i, p] * grad_sums[r, j]
                        total += slopes[r, i, p] * weights[i, first + p, j] * grad_sums[r, j]
            for j in range(n_sub):
                grad_weights[i, n_basis, j] += base[r, i] * grad_sums[r, j]
                total += base_slope[r, i] * weights[i, n_basis, j] * grad_sums[r, j]
            grad_x[r, i] = total
    for i in range(n_in):
        for j in range(n_sub):
            spline_weight = scale_sp[i, j] * mask[i, j]
            total = 0.0
            for m in range(n_basis):
                grad_coef[i, j, m] = grad_weights[i, m, j] * spline_weight
                total += grad_weights[i, m, j] * coef[i, j, m]
            grad_scale_sp[i, j] = total * mask[i, j]
            grad_scale_base[i, j] = grad_weights[i, n_basis, j] * mask[i, j]


@njit(cache=False, fastmath=True, nogil=True)
def vector_forward(inputs, knots, reciprocal_1, reciprocal_2, reciprocal_3, weights, features, sums):
    """Write the dense cubic basis and silu of (n_in, batch) inputs into ``features`` and their product into ``sums``."""
    n_in, batch = inputs.shape
    n_knots = knots.shape[1]
    n_basis = n_knots - K - 1
    shift = np.empty((n_knots, batch), inputs.dtype)
    order_1 = np.empty((n_knots - 1, batch), inputs.dtype)
    order_2 = np.empty((n_knots - 2, batch), inputs.dtype)
    sums[:] = 0.0
    for i in range(n_in):
        for m in range(n_knots):
            for r in range(batch):
                shift[m, r] = inputs[i, r] - knots[i, m]
        for m in range(n_knots - 2):
            for r in range(batch):
                hat = min(shift[m, r] * reciprocal_1[i, m], 1.0 - shift[m + 1, r] * reciprocal_1[i, m + 1])
                order_1[m, r] = hat if hat > 0.0 else 0.0
        for m in range(n_knots - 3):
            for r in range(batch):
                order_2[m, r] = shift[m, r] * reciprocal_2[i, m] * order_1[m, r] + (1.0 - shift[m + 1, r] * reciprocal_2[i, m + 1]) * order_1[m + 1, r]
        for m in range(n_basis):
            for r in range(batch):
                features[i, m, r] = shift[m, r] * reciprocal_3[i, m] * order_2[m, r] + (1.0 - shift[m + 1, r] * reciprocal_3[i, m + 1]) * order_2[m + 1, r]
        for r in range(batch):
            features[i, n_basis, r] = inputs[i, r] / (1.0 + np.exp(-inputs[i, r]))
        for m in range(n_basis + 1):
            for j in range(sums.shape[0]):
                weight = weights[i * (n_basis + 1) + m, j]
                for r in range(batch):
                    sums[j, r] += weight * features[i, m, r]


def per_call_us(function, calls=CALLS):
    for _ in range(50):
        function()
    start = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(ROWS, 2, generator=generator) * 2 - 1
    y = torch.exp(torch.sin(torch.pi * x[:, :1]) + x[:, 1:] ** 2)
    model = MultKAN([2, 5, 1], grid=5, k=K, seed=0)
    model.update_grid(x)
    layers = list(model.layers)

    direct = DirectObjective(model)
    torch_direct = per_call_us(lambda: direct(x, y))

    arrays = []
    for layer in layers:
        n_in, n_sub, n_basis = layer.coef.shape
        arrays.append(dict(
            knots=layer.grid.detach().numpy(), coef=layer.coef.detach().numpy(), scale_sp=layer.scale_sp.detach().numpy(),
            scale_base=layer.scale_base.detach().numpy(), mask=layer.spline_mask.detach().numpy(),
            node_scale=layer.node_scale.detach().numpy(), node_bias=layer.node_bias.detach().numpy(),
            sums=np.empty((ROWS, n_sub), np.float32), interval=np.empty((ROWS, n_in), np.int64),
            values=np.empty((ROWS, n_in, K + 1), np.float32), slopes=np.empty((ROWS, n_in, K + 1), np.float32),
            base=np.empty((ROWS, n_in), np.float32), base_slope=np.empty((ROWS, n_in), np.float32),
            weights=np.empty((n_in, n_basis + 1, n_sub), np.float32), grad_x=np.empty((ROWS, n_in), np.float32),
            grad_weights=np.empty((n_in, n_basis + 1, n_sub), np.float32), grad_coef=np.empty((n_in, n_sub, n_basis), np.float32),
            grad_scale_sp=np.empty((n_in, n_sub), np.float32), grad_scale_base=np.empty((n_in, n_sub), np.float32),
        ))
    inputs, labels = x.numpy(), y.numpy()

    def numba_scalar() -> float:
        values = inputs
        outputs = []
        for a in arrays:
            scalar_forward(values, a["knots"], a["coef"], a["scale_sp"], a["scale_base"], a["mask"], a["sums"], a["interval"], a["values"], a["slopes"], a["base"], a["base_slope"], a["weights"])
            values = a["node_bias"] + a["node_scale"] * a["sums"]
            outputs.append(values)
        grad = (values - labels) * (2.0 / labels.size)
        for a in reversed(arrays):
            grad_sums = np.ascontiguousarray(grad * a["node_scale"])
            scalar_backward(grad_sums, a["coef"], a["scale_sp"], a["mask"], a["interval"], a["values"], a["slopes"], a["base"], a["base_slope"], a["weights"], a["grad_x"], a["grad_weights"], a["grad_coef"], a["grad_scale_sp"], a["grad_scale_base"])
            grad = a["grad_x"]
        return float(((outputs[-1] - labels) ** 2).mean())

    for parameter in model.parameters():
        parameter.grad = None
    torch.nn.functional.mse_loss(model(x), y).backward()
    numba_scalar()
    difference = max(float(np.abs(layer.coef.grad.numpy() - a["grad_coef"]).max()) for layer, a in zip(layers, arrays))
    numba_scalar_us = per_call_us(numba_scalar)

    second = layers[1]
    hidden = model.layers[0](x).detach()
    constants = second._spline_constants().dense
    torch_layer = per_call_us(lambda: _fused_product(_fused_features(hidden, second.coef.shape[-1], constants, K, "silu", True)[0], second.coef, second.scale_sp, second.scale_base, second.spline_mask))
    reciprocals = [r.numpy() for r in constants.reciprocals]
    weights = _fused_weights(second.coef, second.scale_sp, second.scale_base, second.spline_mask)[0].detach().numpy().copy()
    features = np.empty((second.n_in, second.coef.shape[-1] + 1, ROWS), np.float32)
    sums = np.empty((second.coef.shape[1], ROWS), np.float32)
    columns = hidden.T.contiguous().numpy()
    vector_forward(columns, second.grid.numpy(), *reciprocals, weights, features, sums)
    reference = _fused_product(_fused_features(hidden, second.coef.shape[-1], constants, K, "silu", False)[0], second.coef, second.scale_sp, second.scale_base, second.spline_mask)[0]
    layer_difference = float(np.abs(sums.T - reference.detach().numpy()).max())
    numba_layer = per_call_us(lambda: vector_forward(columns, second.grid.numpy(), *reciprocals, weights, features, sums))

    print(f"torch {torch.__version__}, one thread, [2, 5, 1] grid 5 k {K}, {ROWS} rows, grids on the data")
    print("| measurement | time per call |")
    print("|---|---|")
    print(f"| torch direct: loss and gradient | {torch_direct:.0f} us |")
    print(f"| numba scalar kernels: loss and gradient | {numba_scalar_us:.0f} us (largest coef gradient difference {difference:.1e}) |")
    print(f"| torch: layer 2 basis (with derivative) and product | {torch_layer:.0f} us |")
    print(f"| numba vectorised: layer 2 basis (no derivative) and product | {numba_layer:.0f} us (largest difference {layer_difference:.1e}) |")


if __name__ == "__main__":
    main()
