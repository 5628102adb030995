"""Train many independent MultKAN models of one architecture as one batched computation.

A :class:`BatchedMultKAN` stacks ``M`` models: every parameter and grid gets
a leading model dimension (``coef`` has shape (M, n_in, n_sub, G + k), the
scales (M, n_in, n_sub), the grids (M, n_in, G + 2k + 1)). One forward pass
evaluates the B-spline basis of all models in a single call, with the
``M * n_in`` knot vectors treated as the inputs of one wide layer, and
contracts it with batched matrix products. The loss of each model is its own
mean over rows, and the sum of the ``M`` losses is differentiated once. The
models share no parameter, so that gradient is, for every model, the gradient
of its own loss.

Adam and plain gradient descent act on every element separately, so their
update of model ``i`` depends only on model ``i``'s gradients, and a batched
run gives the same parameters as training each model alone (up to rounding).
L-BFGS is not offered: its line search and curvature history are computed
from the whole parameter vector, so in a batch one model's step length would
depend on the others.
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from tqdm.auto import tqdm

from .errors import InvalidDataError, NonFiniteLossWarning, invalid_parameter, user_stacklevel
from .model import MultKAN, check_input
from .nn._layer import BASE_FUNCTIONS, MultKANLayer
from .splines import fit_coefficients, grid_from_samples
from .train import EVAL_CHUNK, _grid_rows, default_log, prepare_dataset

__all__ = ["BatchedMultKAN", "BatchFitResult"]

OPTIMIZERS = ("Adam", "SGD")
LOSSES = ("mse", "cross_entropy")


def _knot_major_bases(x: torch.Tensor, knots: torch.Tensor, k: int, reciprocals: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Run the Cox-de Boor recursion with the basis index as the second dimension.

    With ``w_{m,p} = (x - t_m) / (t_{m+p} - t_m)`` the recursion reads
    ``B_{m,p} = w_{m,p} B_{m,p-1} + (1 - w_{m+1,p}) B_{m+1,p-1}``. Order 1 is
    the hat ``max(0, min(w_{m,1}, 1 - w_{m+1,1}))``, which needs strictly
    increasing knots.

    Parameters
    ----------
    x : tensor of shape (M, n_in, batch)
    knots : tensor of shape (M, n_knots, n_in, 1)
    reciprocals : k tensors
        Entry ``p - 1`` has shape (M, n_knots - p, n_in, 1) and contains ``1 / (t_{m+p} - t_m)``.

    Returns
    -------
    lower : tensor of shape (M, n_knots - k, n_in, batch), or None for k = 0
        The basis of order ``k - 1``, for the derivative.
    basis : tensor of shape (M, n_knots - k - 1, n_in, batch)
    """
    # The operations below run in place or into reused buffers wherever the
    # values are not needed again, because a fresh tensor of this size costs
    # more than the arithmetic. A clamp of 1.6 million floats took 0.47 ms
    # into a new tensor and 0.08 ms in place (1 thread, the 2-core machine of
    # benchmarks/README.md). Repeating x and subtracting in place is about
    # 3 times faster than broadcasting x over the knots.
    n_knots = knots.shape[1]
    shift = x.unsqueeze(1).repeat(1, n_knots, 1, 1).sub_(knots)
    lower = None
    if k <= 1:
        # x >= t_m minus x >= t_{m+1} is the indicator of [t_m, t_{m+1}).
        step = (shift >= 0).to(x.dtype)
        indicator = step[:, :-1] - step[:, 1:]
        if k == 0:
            return None, indicator
        lower = indicator
    weight = shift[:, : n_knots - 1] * reciprocals[0]
    basis = 1 - weight[:, 1:]
    torch.minimum(basis, weight[:, :-1], out=basis).clamp_min_(0)
    for p in range(2, k + 1):
        weighted = torch.mul(shift[:, : n_knots - p], reciprocals[p - 1], out=weight[:, : n_knots - p]).mul_(basis)
        lower = basis
        basis = (basis[:, 1:] - weighted[:, 1:]).add_(weighted[:, :-1])
    return lower, basis


class _KnotMajorBasis(torch.autograd.Function):
    """The basis of :func:`_knot_major_bases` as one autograd node with a first derivative in ``x``.

    ``dB_{m,k}/dx = k B_{m,k-1} / (t_{m+k} - t_m) - k B_{m+1,k-1} / (t_{m+k+1} - t_{m+1})``,
    so the backward pass needs only the basis of order ``k - 1``. No gradient
    flows to the knots, and the backward pass is not differentiable again.
    """

    @staticmethod
    def forward(ctx, x, knots, k, *reciprocals):
        lower, basis = _knot_major_bases(x, knots, k, reciprocals)
        ctx.k = k
        ctx.n_reciprocals = len(reciprocals)
        if ctx.needs_input_grad[0] and k > 0:
            ctx.save_for_backward(lower, reciprocals[-1])
        return basis

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_basis):
        nothing = (None,) * (2 + ctx.n_reciprocals)
        if not ctx.needs_input_grad[0]:
            return (None, *nothing)
        if ctx.k == 0:
            return (grad_basis.new_zeros(grad_basis.shape[0], *grad_basis.shape[2:]), *nothing)
        lower, last_reciprocal = ctx.saved_tensors
        scaled = lower * (ctx.k * last_reciprocal)
        grad_x = (scaled[:, :-1] - scaled[:, 1:]).mul_(grad_basis).sum(dim=1)
        return (grad_x, *nothing)


class _BatchedLayer(nn.Module):
    """One MultKAN layer of ``M`` models with a leading model dimension on every parameter.

    Symbols: ``M`` models, ``batch`` rows, ``n_in`` inputs, ``n_sub`` edge
    targets, ``n_out`` nodes passed on, ``n_basis = G + k``. The layer computes
    for each model what :class:`multkan.nn._layer.MultKANLayer` computes for
    one, without symbolic edges.

    Node values are laid out as (M, nodes, batch), and the basis as (M,
    n_basis, n_in, batch). The recursion then slices the basis index, the
    second dimension, so each of its operations works on contiguous blocks of
    ``n_in * batch`` values. With the basis index last, as in
    :func:`multkan.splines.bspline_basis`, each block would hold only
    ``n_basis`` values: on 32 models [2, 5, 1] with 1000 rows, a product of
    two such slices took 1.8 ms against 0.5 ms in this layout (1 thread, the
    2-core AMD EPYC of ``benchmarks/README.md``).
    """

    def __init__(self, layers: Sequence[MultKANLayer]) -> None:
        super().__init__()
        first = layers[0]
        self.k = first.k
        self.n_sum = first.n_sum
        self.base_fun = first.base_fun
        self.uniform = first.uniform
        self.register_buffer("operand_index", first.operand_index.clone(), persistent=False)
        self.register_buffer("grid", torch.stack([layer.grid.detach() for layer in layers]))
        self.register_buffer("spline_mask", torch.stack([layer.spline_mask for layer in layers]))
        self.coef = nn.Parameter(torch.stack([layer.coef.detach() for layer in layers]))
        self.scale_base = nn.Parameter(torch.stack([layer.scale_base.detach() for layer in layers]), requires_grad=first.scale_base.requires_grad)
        self.scale_sp = nn.Parameter(torch.stack([layer.scale_sp.detach() for layer in layers]), requires_grad=first.scale_sp.requires_grad)
        affine_trainable = first.node_scale.requires_grad
        self.node_scale = nn.Parameter(torch.stack([layer.node_scale.detach() for layer in layers]), requires_grad=affine_trainable)
        self.node_bias = nn.Parameter(torch.stack([layer.node_bias.detach() for layer in layers]), requires_grad=affine_trainable)
        self._knot_cache: tuple[torch.Tensor, int, torch.Tensor, list[torch.Tensor]] | None = None

    @property
    def n_models(self) -> int:
        return self.coef.shape[0]

    @property
    def n_in(self) -> int:
        return self.coef.shape[1]

    @property
    def n_sub(self) -> int:
        return self.coef.shape[2]

    @property
    def n_basis(self) -> int:
        return self.coef.shape[3]

    def _knots(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Return the knots as (M, n_knots, n_in, 1) and their reciprocal spans, cached per grid tensor and version."""
        grid = self.grid
        cache = self._knot_cache
        if cache is None or cache[0] is not grid or cache[1] != grid._version:
            with torch.no_grad():
                knots = grid.transpose(1, 2).unsqueeze(-1).contiguous()
                reciprocals = [1.0 / (knots[:, p:] - knots[:, :-p]) for p in range(1, self.k + 1)]
            cache = (grid, grid._version, knots, reciprocals)
            self._knot_cache = cache
        return cache[2], cache[3]

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        """Return the basis of every model and input, shape (M, n_basis, n_in, batch), from ``x`` of shape (M, n_in, batch)."""
        knots, reciprocals = self._knots()
        if torch.is_grad_enabled() and x.requires_grad:
            return _KnotMajorBasis.apply(x, knots, self.k, *reciprocals)
        return _knot_major_bases(x, knots, self.k, reciprocals)[1]

    def _base(self, x: torch.Tensor) -> torch.Tensor:
        return BASE_FUNCTIONS[self.base_fun](x)

    def target_sums(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``u_j = sum_i phi_ij(x_i)`` of every model, shape (M, n_sub, batch)."""
        n_models, _, rows = x.shape
        weights = (self.scale_sp * self.spline_mask).unsqueeze(-1) * self.coef
        # Column m * n_in + i of the weights meets row m * n_in + i of the flattened basis.
        spline_weight = weights.permute(0, 2, 3, 1).reshape(n_models, self.n_sub, -1)
        basis = self.basis(x).reshape(n_models, -1, rows)
        base = torch.bmm((self.scale_base * self.spline_mask).transpose(1, 2), self._base(x))
        return torch.baddbmm(base, spline_weight, basis)

    def spline_edge_values(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``sum_m c_ijm B_m(x_i)`` of every edge, unmasked and unscaled, shape (M, n_in, n_sub, batch)."""
        return torch.einsum("zmib,zijm->zijb", self.basis(x), self.coef)

    def edge_values(self, x: torch.Tensor) -> torch.Tensor:
        """Return every edge's output ``phi_ij(x_i)``, shape (M, n_in, n_sub, batch), for the regulariser."""
        features = torch.cat([self.basis(x), self._base(x).unsqueeze(1)], dim=1)
        weights = torch.cat([self.coef * self.scale_sp.unsqueeze(-1), self.scale_base.unsqueeze(-1)], dim=-1)
        weights = weights * self.spline_mask.unsqueeze(-1)
        return torch.einsum("zfib,zijf->zijb", features, weights)

    def combine(self, sums: torch.Tensor) -> torch.Tensor:
        """Turn target sums (M, n_sub, batch) into node values (M, n_out, batch)."""
        if self.operand_index.shape[0] > 0:
            padded = torch.cat([sums, torch.ones_like(sums[:, :1])], dim=1)
            products = padded[:, self.operand_index].prod(dim=2)
            nodes = torch.cat([sums[:, : self.n_sum], products], dim=1)
        else:
            nodes = sums
        return torch.addcmul(self.node_bias.unsqueeze(-1), nodes, self.node_scale.unsqueeze(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map node values (M, n_in, batch) to node values (M, n_out, batch)."""
        return self.combine(self.target_sums(x))

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, *, grid_eps: float, active: torch.Tensor) -> None:
        """Move the knots of the ``active`` models to their layer inputs ``x`` (M, n_in, batch) and refit their coefficients.

        As :meth:`multkan.MultKAN.update_grid` does for one model: knots from
        :func:`multkan.splines.grid_from_samples`, coefficients by least
        squares so each spline keeps its shape on ``x``. The ``M * n_in`` knot
        vectors are placed and fitted as the inputs of one wide layer.
        """
        n_models, n_in, rows = x.shape
        old_values = self.spline_edge_values(x).permute(3, 0, 1, 2).reshape(rows, n_models * n_in, self.n_sub)
        flat = x.permute(2, 0, 1).reshape(rows, n_models * n_in)
        new_grid = grid_from_samples(flat, self.n_basis - self.k, self.k, grid_eps=grid_eps)
        new_coef = fit_coefficients(flat, old_values, new_grid, self.k)

        keep = ~active.view(-1, 1, 1)
        new_grid = torch.where(keep, self.grid, new_grid.reshape(self.grid.shape).to(self.grid))
        new_coef = torch.where(keep.unsqueeze(-1), self.coef, new_coef.reshape(self.coef.shape))
        self.grid = new_grid
        self.coef.copy_(new_coef)
        self.uniform = grid_eps == 1.0

    def extra_repr(self) -> str:
        return f"n_models={self.n_models}, n_in={self.n_in}, n_sub={self.n_sub}, grid={self.n_basis - self.k}, k={self.k}"


@dataclass
class BatchFitResult:
    """Per-model training history of :meth:`BatchedMultKAN.fit`.

    Attributes
    ----------
    steps : list of int
        The logged steps; row ``r`` of the loss tensors belongs to ``steps[r]``.
    train_loss, test_loss : tensor of shape (n_logged, M)
        RMSE for the default MSE loss, the mean cross-entropy otherwise, on
        all training and test rows.
    reg : tensor of shape (n_logged, M)
        The sparsity regulariser of each model on up to 4096 training rows;
        0 for models trained with ``lamb = 0``.
    stopped_at : list of (int or None)
        For each model, the step where a non-finite loss, gradient or
        parameter froze it at its parameters from before that step, else None.
    seeds : list of int
    lr, lamb : tensor of shape (M,)
        The settings each model was trained with.
    """

    steps: list[int]
    train_loss: torch.Tensor
    test_loss: torch.Tensor
    reg: torch.Tensor
    stopped_at: list[int | None]
    seeds: list[int]
    lr: torch.Tensor
    lamb: torch.Tensor
    loss_kind: str = field(default="mse")

    @property
    def final_train_loss(self) -> torch.Tensor:
        """Training loss of every model at the last logged step, shape (M,)."""
        return self.train_loss[-1]

    @property
    def final_test_loss(self) -> torch.Tensor:
        """Test loss of every model at the last logged step, shape (M,)."""
        return self.test_loss[-1]

    @property
    def best_index(self) -> int:
        """Index of the model with the lowest final test loss; NaN counts as the highest."""
        return int(torch.nan_to_num(self.final_test_loss, nan=math.inf).argmin())

    def summary(self) -> str:
        """Return a Markdown table of every model's seed, lr, lamb and final losses, best model marked."""
        name = "RMSE" if self.loss_kind == "mse" else "loss"
        lines = [
            f"| model | seed | lr | lamb | train {name} | test {name} | stopped at |",
            "|---|---|---|---|---|---|---|",
        ]
        best = self.best_index
        for index, seed in enumerate(self.seeds):
            marker = " (best)" if index == best else ""
            stopped = "" if self.stopped_at[index] is None else str(self.stopped_at[index])
            lines.append(
                f"| {index}{marker} | {seed} | {float(self.lr[index]):.3g} | {float(self.lamb[index]):.3g} "
                f"| {float(self.final_train_loss[index]):.4e} | {float(self.final_test_loss[index]):.4e} | {stopped} |"
            )
        return "\n".join(lines)


class BatchedMultKAN(nn.Module):
    """``M`` independent MultKAN models of one architecture, evaluated and trained together.

    Model ``i`` is initialised exactly as ``MultKAN(width, ..., seed=seeds[i],
    grid_range=grid_range[i])``, and :meth:`model` returns it as an ordinary
    :class:`multkan.MultKAN`. Sum and mult nodes are supported; symbolic
    edges are not (see :meth:`from_models`). The forward pass has a first
    derivative in the input but no second one, unlike :class:`multkan.MultKAN`.

    Parameters
    ----------
    width : sequence
        Layer sizes as for :class:`multkan.MultKAN`, e.g. ``[2, 5, 1]`` or
        ``[2, [0, 2], 1]``.
    seeds : sequence of int
        One seed per model; the number of seeds is the number of models ``M``.
        Seeds may repeat, for example to compare learning rates from one start.
    grid, k, mult_arity, grid_eps, base_fun, noise_scale, scale_base_mu, scale_base_sigma, affine_trainable, sp_trainable, sb_trainable, input_names, output_names, dtype, device
        As for :class:`multkan.MultKAN`, shared by all models.
    grid_range : (low, high) or sequence of M pairs
        Input range of the initial grids, one pair for all models or one per model.

    Examples
    --------
    >>> import torch
    >>> batch = BatchedMultKAN([2, 5, 1], seeds=range(4), grid=5)
    >>> batch(torch.zeros(10, 2)).shape
    torch.Size([4, 10, 1])
    """

    def __init__(
        self,
        width: Sequence,
        *,
        seeds: Sequence[int],
        grid: int = 3,
        k: int = 3,
        mult_arity: int | Sequence = 2,
        grid_range: Sequence = (-1.0, 1.0),
        grid_eps: float = 0.02,
        base_fun: str = "silu",
        noise_scale: float = 0.3,
        scale_base_mu: float = 0.0,
        scale_base_sigma: float = 1.0,
        affine_trainable: bool = False,
        sp_trainable: bool = True,
        sb_trainable: bool = True,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        seeds = _check_seeds(seeds)
        ranges = _grid_ranges(grid_range, len(seeds))
        models = [
            MultKAN(
                width, grid, k, mult_arity, grid_range=low_high, grid_eps=grid_eps, base_fun=base_fun,
                noise_scale=noise_scale, scale_base_mu=scale_base_mu, scale_base_sigma=scale_base_sigma,
                affine_trainable=affine_trainable, sp_trainable=sp_trainable, sb_trainable=sb_trainable,
                input_names=input_names, output_names=output_names,
                seed=seed, dtype=dtype, device=device,
            )
            for seed, low_high in zip(seeds, ranges)
        ]
        super().__init__()
        self._stack(models)

    @classmethod
    def from_models(cls, models: Sequence[MultKAN]) -> BatchedMultKAN:
        """Stack existing models, for example ones loaded from files or refined, into a batch.

        The models must share width, mult arities, grid size, spline order,
        base function, ``grid_eps``, ``affine_trainable``, ``sp_trainable``,
        ``sb_trainable``, dtype, device and
        edge set, and have no symbolic edges. Edges switched off (spline mask
        0) are kept off. Variable names are taken from the first model. The
        models themselves are not changed.
        """
        if isinstance(models, MultKAN) or not isinstance(models, Sequence) or len(models) == 0:
            raise invalid_parameter("models", "a non-empty sequence of MultKAN", models)
        _check_compatible(models)
        batch = cls.__new__(cls)
        nn.Module.__init__(batch)
        batch._stack(list(models))
        return batch

    def _stack(self, models: list[MultKAN]) -> None:
        template = models[0].copy()
        template.train_input = None
        # The template carries structure, names and options for model(i). It is
        # kept outside the module tree, so .to() and parameters() skip it.
        object.__setattr__(self, "_template", template)
        self.seeds = [model.seed for model in models]
        self.grid_ranges = [tuple(model.options.grid_range) for model in models]
        self.grid_eps = models[0].grid_eps
        self.train_input: torch.Tensor | None = None
        self.layers = nn.ModuleList(
            _BatchedLayer([model.layers[position] for model in models]) for position in range(len(template.layers))
        )

    # Structure.

    @property
    def n_models(self) -> int:
        return self.layers[0].n_models

    @property
    def n_inputs(self) -> int:
        return self.layers[0].n_in

    @property
    def n_outputs(self) -> int:
        return self._template.n_outputs

    @property
    def width(self) -> list:
        return self._template.width

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].coef.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].coef.device

    def extra_repr(self) -> str:
        return f"n_models={self.n_models}, width={self.width}"

    # Evaluation.

    def _stacked_input(self, x: Any, name: str = "x") -> torch.Tensor:
        """Validate ``x`` of shape (batch, n_in), shared by all models, or (M, batch, n_in); return it as (M, n_in, batch)."""
        if isinstance(x, torch.Tensor) and x.ndim == 3:
            if x.shape[0] != self.n_models or x.shape[2] != self.n_inputs:
                raise InvalidDataError(
                    f"invalid {name}: expected shape (batch, {self.n_inputs}) for all models or "
                    f"({self.n_models}, batch, {self.n_inputs}) with one slice per model, received {tuple(x.shape)}"
                )
            if x.is_complex():
                raise InvalidDataError(f"invalid {name}: expected real numbers, received dtype {x.dtype}")
            return x.to(dtype=self.dtype, device=self.device).transpose(1, 2)
        values, leading = check_input(x, self.n_inputs, self.dtype, name=name)
        if len(leading) != 1:
            raise InvalidDataError(
                f"invalid {name}: expected shape (batch, {self.n_inputs}) or ({self.n_models}, batch, {self.n_inputs}), "
                f"received {tuple(torch.as_tensor(x).shape)}"
            )
        return self._shared_rows(values.to(self.device))

    def _shared_rows(self, x: torch.Tensor) -> torch.Tensor:
        """Return validated rows (batch, n_in) as the input (M, n_in, batch) of every model, without copying."""
        return x.T.unsqueeze(0).expand(self.n_models, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate every model.

        Parameters
        ----------
        x : tensor of shape (batch, n_inputs) or (M, batch, n_inputs)
            One input for all models, or one slice per model.

        Returns
        -------
        tensor of shape (M, batch, n_outputs)
            Slice ``i`` equals ``self.model(i)(x)`` (or ``self.model(i)(x[i])``) up to rounding.
        """
        return self._run(self._stacked_input(x))

    def _run(self, values: torch.Tensor) -> torch.Tensor:
        """Evaluate every model on validated input (M, n_in, batch); return (M, batch, n_out)."""
        for layer in self.layers:
            values = layer(values)
        return values.transpose(1, 2)

    def _forward_with_regularizer(self, x: torch.Tensor, lamb_l1: float, lamb_entropy: float, lamb_coef: float, lamb_coefdiff: float):
        """Return the output (M, batch, n_out) and each model's regulariser (M,), as :func:`multkan.train.regularization` defines it.

        ``x`` has shape (M, n_in, batch).
        """
        values = x
        reg = torch.zeros(self.n_models, dtype=x.dtype, device=x.device)
        for layer in self.layers:
            edges = layer.edge_values(values)
            magnitude = edges.std(dim=-1) / (values.std(dim=-1) + 0.1).unsqueeze(-1)
            total = magnitude.sum(dim=(1, 2))
            p = magnitude / (total + 1e-12)[:, None, None]
            entropy = -(p * torch.log(p + 1e-12)).sum(dim=(1, 2))
            reg = reg + lamb_l1 * total + lamb_entropy * entropy
            if lamb_coef:
                reg = reg + lamb_coef * layer.coef.abs().mean(dim=(1, 2, 3))
            if lamb_coefdiff:
                reg = reg + lamb_coefdiff * layer.coef.diff(dim=-1).abs().mean(dim=(1, 2, 3))
            values = layer.combine(edges.sum(dim=1))
        return values.transpose(1, 2), reg

    # Files.

    def save(self, path) -> None:
        """Save every model to one safetensors file; see :func:`multkan.io.save_batch`."""
        from .io import save_batch

        save_batch(self, path)

    @classmethod
    def load(cls, path, *, device: str | torch.device | None = None) -> BatchedMultKAN:
        """Read a batch written by :meth:`save`; see :func:`multkan.io.load_batch`."""
        from .io import load_batch

        return load_batch(path, device=device)

    # Models one by one.

    def model(self, index: int) -> MultKAN:
        """Return model ``index`` (negative counts from the end) as an independent :class:`multkan.MultKAN` with copies of its parameters.

        The result has the model's seed and initial grid range, the batch's
        training inputs (so ``prune`` and ``auto_symbolic`` can default to
        them), and no link to the batch: changing one leaves the other as it is.
        """
        try:
            index = operator.index(index)
        except TypeError:
            raise invalid_parameter("index", f"an integer in [-{self.n_models}, {self.n_models - 1}]", index) from None
        if not -self.n_models <= index < self.n_models:
            raise invalid_parameter("index", f"an integer in [-{self.n_models}, {self.n_models - 1}]", index)
        # Negative indices count from the end, as for a list.
        index %= self.n_models

        extracted = self._template.copy()
        extracted.seed = self.seeds[index]
        extracted.options = replace(extracted.options, grid_range=self.grid_ranges[index])
        with torch.no_grad():
            for single, batched in zip(extracted.layers, self.layers):
                single.grid = batched.grid[index].clone()
                single.uniform = batched.uniform
                single.spline_mask = batched.spline_mask[index].clone()
                for name in ("coef", "scale_base", "scale_sp", "node_scale", "node_bias"):
                    parameter = getattr(batched, name)
                    setattr(single, name, nn.Parameter(parameter[index].detach().clone(), requires_grad=parameter.requires_grad))
        extracted.to(device=self.device)
        extracted.train_input = self.train_input
        return extracted

    def unstack(self) -> list[MultKAN]:
        """Return every model as an independent :class:`multkan.MultKAN`, in order."""
        return [self.model(index) for index in range(self.n_models)]

    # Grids and training.

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, *, grid_eps: float | None = None) -> BatchedMultKAN:
        """Move every model's grids to its layer inputs produced by ``x``, in place, and return the batch.

        Model ``i`` ends as ``self.model(i).update_grid(x, grid_eps=grid_eps)``
        would leave it, up to rounding.
        """
        grid_eps = self.grid_eps if grid_eps is None else grid_eps
        if not 0.0 <= grid_eps <= 1.0:
            raise invalid_parameter("grid_eps", "a number in [0, 1]", grid_eps)
        active = torch.ones(self.n_models, dtype=torch.bool, device=self.device)
        self._update_grid(self._stacked_input(x), grid_eps, active)
        return self

    def _update_grid(self, values: torch.Tensor, grid_eps: float, active: torch.Tensor) -> None:
        for layer in self.layers:
            layer.update_grid(values, grid_eps=grid_eps, active=active)
            values = layer(values)

    def fit(
        self,
        dataset: dict,
        *,
        opt: str = "Adam",
        steps: int = 100,
        lr: float | Sequence[float] | torch.Tensor = 1e-2,
        lamb: float | Sequence[float] | torch.Tensor = 0.0,
        lamb_l1: float = 1.0,
        lamb_entropy: float = 2.0,
        lamb_coef: float = 0.0,
        lamb_coefdiff: float = 0.0,
        update_grid: bool = True,
        grid_update_num: int = 10,
        start_grid_update_step: int = -1,
        stop_grid_update_step: int = 50,
        grid_eps: float | None = None,
        batch: int = -1,
        log: int | None = None,
        loss_fn: str | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        seed: int = 0,
        progress: bool = True,
    ) -> BatchFitResult:
        """Train all models in place on one dataset, each on its own loss.

        Model ``i`` ends with the parameters that ``multkan.fit(self.model(i),
        dataset, opt="Adam", lr=lr[i], lamb=lamb[i], seed=seed, ...)`` with the
        same remaining settings gives, up to rounding. In float64 the two
        agree to about 1e-9 (``tests/test_batch.py``). In float32, Adam and
        the grid updates can amplify rounding differences over many steps.
        The options mean what they mean for :func:`multkan.fit`, except the
        ones below.

        Parameters
        ----------
        opt : {"Adam", "SGD"}
            Adam as ``torch.optim.Adam`` (no weight decay, no amsgrad), or
            plain gradient descent ``p -= lr * grad``. L-BFGS is not offered
            (see the module docstring).
        lr, lamb : float, or sequence or tensor of M floats
            One value for all models or one per model. ``lr > 0``, ``lamb >= 0``.
        loss_fn : {"mse", "cross_entropy"}, optional
            MSE by default. Custom callables are not accepted, because the
            loss must be reduced per model.
        batch : int
            Training rows per step, -1 for all. All models see the same rows,
            drawn from a generator seeded with ``seed``.
        betas, eps : Adam's moment decay rates and denominator term.
        seed : int
            Seed of the row sampler, shared by all models.
        progress : bool
            Show a progress bar with the lowest training loss in the batch.

        Returns
        -------
        BatchFitResult

        Notes
        -----
        A model whose loss, gradient or updated parameters are not finite is
        frozen at its parameters from before that step. Its step is stored in
        ``stopped_at`` and a :class:`NonFiniteLossWarning` names it, while the
        other models train on.
        """
        n_models = self.n_models
        loss_kind = _check_loss(loss_fn, self.n_outputs)
        _check_fit_options(opt, steps, batch, log, update_grid, grid_update_num, start_grid_update_step, stop_grid_update_step, betas, eps)
        grid_eps = self.grid_eps if grid_eps is None else grid_eps
        if not 0.0 <= grid_eps <= 1.0:
            raise invalid_parameter("grid_eps", "a number in [0, 1]", grid_eps)
        lr_per_model = _per_model("lr", lr, n_models, self.dtype, self.device, positive=True)
        lamb_per_model = _per_model("lamb", lamb, n_models, self.dtype, self.device, positive=False)
        data = prepare_dataset(self, dataset, loss_kind)
        self.train_input = data["train_input"]

        n_train = data["train_input"].shape[0]
        batch_size = n_train if batch == -1 or batch > n_train else batch
        log = default_log(n_train, batch_size) if log is None else log
        # Rows are drawn from the generator in the order multkan.fit uses, so a
        # single-model fit with the same seed trains on the same rows.
        generator = torch.Generator().manual_seed(seed)
        grid_every = max(1, stop_grid_update_step // grid_update_num) if update_grid else 0
        grid_rows = _grid_rows(data["train_input"], generator)
        use_reg = bool((lamb_per_model > 0).any())
        regularizer_weights = (lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff)

        def objective(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            stacked = self._shared_rows(inputs)
            if use_reg:
                prediction, reg = self._forward_with_regularizer(stacked, *regularizer_weights)
            else:
                prediction, reg = self._run(stacked), torch.zeros(n_models, dtype=inputs.dtype, device=inputs.device)
            return _per_model_loss(prediction, labels, loss_kind), reg

        optimizer = _PerModelOptimizer(
            [p for p in self.parameters() if p.requires_grad], lr_per_model, opt=opt, betas=betas, eps=eps
        )
        active = torch.ones(n_models, dtype=torch.bool, device=self.device)
        stopped_at: list[int | None] = [None] * n_models
        records: dict[str, list] = {"steps": [], "train": [], "test": [], "reg": []}

        bar = tqdm(range(steps), desc="fit batch", disable=not progress, dynamic_ncols=True)
        try:
            for step in bar:
                if update_grid and start_grid_update_step <= step < stop_grid_update_step and step % grid_every == 0:
                    with torch.no_grad():
                        self._update_grid(self._shared_rows(grid_rows), grid_eps, active)

                if batch_size == n_train:
                    inputs, labels = data["train_input"], data["train_label"]
                else:
                    rows = torch.randperm(n_train, generator=generator)[:batch_size].to(self.device)
                    inputs, labels = data["train_input"][rows], data["train_label"][rows]

                optimizer.zero_grad()
                losses, reg = objective(inputs, labels)
                (losses + lamb_per_model * reg).sum().backward()
                finite = torch.isfinite(losses + lamb_per_model * reg.detach()) & optimizer.gradients_finite()
                committed = optimizer.step(active & finite)
                newly_stopped = active & ~committed
                if bool(newly_stopped.any()):
                    _stop_models(newly_stopped, step, stopped_at)
                    active &= committed

                if step % log == 0 or step == steps - 1:
                    self._record(data, loss_kind, lamb_per_model, regularizer_weights, records, step)
                    bar.set_postfix(best_train=f"{float(records['train'][-1].nan_to_num(math.inf).min()):.2e}", refresh=False)
        finally:
            bar.close()

        return BatchFitResult(
            steps=records["steps"],
            # Step 0 is always logged, so no list is empty.
            train_loss=torch.stack(records["train"]),
            test_loss=torch.stack(records["test"]),
            reg=torch.stack(records["reg"]),
            stopped_at=stopped_at,
            seeds=list(self.seeds),
            lr=lr_per_model.detach().cpu(),
            lamb=lamb_per_model.detach().cpu(),
            loss_kind=loss_kind,
        )

    @torch.no_grad()
    def _evaluate(self, inputs: torch.Tensor, labels: torch.Tensor, loss_kind: str) -> torch.Tensor:
        """Return every model's mean loss over all rows, shape (M,), evaluated in chunks of rows."""
        total = torch.zeros(self.n_models, dtype=torch.float64, device=self.device)
        for start in range(0, inputs.shape[0], EVAL_CHUNK):
            chunk = slice(start, start + EVAL_CHUNK)
            prediction = self._run(self._shared_rows(inputs[chunk]))
            total += _per_model_loss(prediction, labels[chunk], loss_kind).double() * prediction.shape[1]
        return total / inputs.shape[0]

    def _record(self, data, loss_kind, lamb_per_model, regularizer_weights, records, step) -> None:
        train = self._evaluate(data["train_input"], data["train_label"], loss_kind)
        test = self._evaluate(data["test_input"], data["test_label"], loss_kind)
        if loss_kind == "mse":
            train, test = train.sqrt(), test.sqrt()
        reg = torch.zeros(self.n_models, dtype=torch.float64, device=self.device)
        if bool((lamb_per_model > 0).any()):
            with torch.no_grad():
                rows = self._shared_rows(data["train_input"][:EVAL_CHUNK])
                reg = self._forward_with_regularizer(rows, *regularizer_weights)[1].double()
                # As multkan.fit records, a model trained without the regulariser reports 0.
                reg = torch.where(lamb_per_model > 0, reg, 0.0)
        records["steps"].append(step)
        records["train"].append(train.cpu())
        records["test"].append(test.cpu())
        records["reg"].append(reg.cpu())


class _PerModelOptimizer:
    """Adam or gradient descent on stacked parameters, with a learning rate per model.

    The Adam update is the one of ``torch.optim.Adam`` without weight decay:
    ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g^2``,
    ``p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``. It is
    elementwise, so slice ``i`` of every parameter moves by model ``i``'s
    gradients alone.
    """

    def __init__(self, parameters: list[nn.Parameter], lr: torch.Tensor, *, opt: str, betas: tuple[float, float], eps: float) -> None:
        self.parameters = parameters
        self.lr = lr
        self.opt = opt
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.count = 0
        self.first_moments = [torch.zeros_like(p) for p in parameters]
        self.second_moments = [torch.zeros_like(p) for p in parameters]

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    def gradients_finite(self) -> torch.Tensor:
        """Return, per model, whether every gradient entry is finite, shape (M,)."""
        finite = torch.ones(self.lr.shape[0], dtype=torch.bool, device=self.lr.device)
        for parameter in self.parameters:
            if parameter.grad is not None:
                finite &= torch.isfinite(parameter.grad).flatten(1).all(dim=1)
        return finite

    @torch.no_grad()
    def step(self, allowed: torch.Tensor) -> torch.Tensor:
        """Update the models in ``allowed`` (bool, shape (M,)) whose new parameters are all finite.

        Returns the bool mask of the models that were updated. The others keep
        their parameters exactly. Their moment estimates are updated anyway and
        are meaningless after that. This is harmless because the caller never
        allows a rejected model again.
        """
        self.count += 1
        candidates = []
        committed = allowed.clone()
        for position, parameter in enumerate(self.parameters):
            grad = parameter.grad if parameter.grad is not None else torch.zeros_like(parameter)
            lr = self.lr.view(-1, *([1] * (parameter.ndim - 1)))
            if self.opt == "Adam":
                first, second = self.first_moments[position], self.second_moments[position]
                first.lerp_(grad, 1 - self.beta1)
                second.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
                correction1 = 1 - self.beta1**self.count
                correction2_sqrt = (1 - self.beta2**self.count) ** 0.5
                denominator = (second.sqrt() / correction2_sqrt).add_(self.eps)
                candidate = parameter - (lr / correction1) * (first / denominator)
            else:
                candidate = parameter - lr * grad
            committed &= torch.isfinite(candidate).flatten(1).all(dim=1)
            candidates.append(candidate)

        every_model = bool(committed.all())
        for parameter, candidate in zip(self.parameters, candidates):
            if every_model:
                parameter.copy_(candidate)
            else:
                parameter.copy_(torch.where(committed.view(-1, *([1] * (parameter.ndim - 1))), candidate, parameter))
        return committed


def _stop_models(newly_stopped: torch.Tensor, step: int, stopped_at: list[int | None]) -> None:
    indices = newly_stopped.nonzero().flatten().tolist()
    for index in indices:
        stopped_at[index] = step
    warnings.warn(
        f"models {indices} stopped at step {step}: the loss, a gradient or an updated parameter was not finite; "
        "they keep their parameters from before this step and the other models train on. Lower lr or lamb for them.",
        NonFiniteLossWarning,
        stacklevel=user_stacklevel(),
    )


def _per_model_loss(prediction: torch.Tensor, labels: torch.Tensor, loss_kind: str) -> torch.Tensor:
    """Return each model's mean loss, shape (M,), from predictions (M, batch, n_out) and shared labels."""
    if loss_kind == "mse":
        return ((prediction - labels) ** 2).mean(dim=(1, 2))
    n_models, rows, n_classes = prediction.shape
    losses = nn.functional.cross_entropy(prediction.reshape(-1, n_classes), labels.repeat(n_models), reduction="none")
    return losses.reshape(n_models, rows).mean(dim=1)


def _check_seeds(seeds: Any) -> list[int]:
    try:
        values = list(seeds)
    except TypeError:
        raise invalid_parameter("seeds", "a non-empty sequence of ints, one per model", seeds) from None
    if not values or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in values):
        raise invalid_parameter("seeds", "a non-empty sequence of ints, one per model", seeds)
    return values


def _grid_ranges(grid_range: Any, n_models: int) -> list[tuple[float, float]]:
    """Return one (low, high) pair per model from one pair or ``n_models`` pairs."""
    allowed = f"a pair (low, high) or {n_models} such pairs, one per model"
    try:
        values = [tuple(float(v) for v in pair) for pair in grid_range] if _is_pair_list(grid_range) else [tuple(float(v) for v in grid_range)] * n_models
    except (TypeError, ValueError):
        raise invalid_parameter("grid_range", allowed, grid_range) from None
    if len(values) != n_models or any(len(pair) != 2 or not pair[0] < pair[1] for pair in values):
        raise invalid_parameter("grid_range", allowed + " with low < high", grid_range)
    return values


def _is_pair_list(grid_range: Any) -> bool:
    return isinstance(grid_range, Sequence) and len(grid_range) > 0 and isinstance(grid_range[0], (Sequence, torch.Tensor))


def _per_model(name: str, value: Any, n_models: int, dtype: torch.dtype, device: torch.device, *, positive: bool) -> torch.Tensor:
    """Return a hyperparameter as a tensor of shape (M,) from one number or M numbers."""
    rule = "positive finite" if positive else "finite, >= 0"
    allowed = f"a {rule} number, or {n_models} of them, one per model"
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise invalid_parameter(name, allowed, value) from None
    if tensor.ndim == 0:
        tensor = tensor.expand(n_models)
    if tensor.shape != (n_models,) or not bool(torch.isfinite(tensor).all()):
        raise invalid_parameter(name, allowed, value)
    if bool((tensor <= 0).any()) if positive else bool((tensor < 0).any()):
        raise invalid_parameter(name, allowed, value)
    return tensor.to(dtype=dtype, device=device).clone()


def _check_loss(loss_fn: Any, n_outputs: int) -> str:
    loss_kind = "mse" if loss_fn is None else loss_fn
    if loss_kind not in LOSSES:
        raise invalid_parameter("loss_fn", "'mse' or 'cross_entropy' (custom callables are not supported in a batch)", loss_fn)
    if loss_kind == "cross_entropy" and n_outputs < 2:
        raise invalid_parameter("loss_fn", "a model with at least 2 outputs (one logit per class) for cross_entropy", f"a model with {n_outputs} output")
    return loss_kind


def _check_fit_options(opt, steps, batch, log, update_grid, grid_update_num, start_grid_update_step, stop_grid_update_step, betas, eps) -> None:
    if opt not in OPTIMIZERS:
        allowed = "'Adam' or 'SGD' (L-BFGS couples the models through its line search, so it is not offered in a batch)"
        raise invalid_parameter("opt", allowed, opt)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise invalid_parameter("steps", "an integer >= 1", steps)
    if not isinstance(batch, int) or isinstance(batch, bool) or not (batch == -1 or batch >= 1):
        raise invalid_parameter("batch", "-1 (full batch) or an integer >= 1", batch)
    if log is not None and (not isinstance(log, int) or isinstance(log, bool) or log < 1):
        raise invalid_parameter("log", "an integer >= 1 or None", log)
    if update_grid:
        if not isinstance(grid_update_num, int) or grid_update_num < 1:
            raise invalid_parameter("grid_update_num", "an integer >= 1 when update_grid is True", grid_update_num)
        if not isinstance(start_grid_update_step, int) or not isinstance(stop_grid_update_step, int):
            raise invalid_parameter("start_grid_update_step and stop_grid_update_step", "ints", (start_grid_update_step, stop_grid_update_step))
    if len(betas) != 2 or not all(0.0 <= beta < 1.0 for beta in betas):
        raise invalid_parameter("betas", "a pair of numbers in [0, 1)", betas)
    if not eps > 0:
        raise invalid_parameter("eps", "a positive number", eps)


def _check_compatible(models: Sequence[MultKAN]) -> None:
    """Raise unless every model can share the first model's batched layers."""
    first = models[0]
    for index, model in enumerate(models):
        if not isinstance(model, MultKAN):
            raise invalid_parameter(f"models[{index}]", "a MultKAN", type(model).__name__)
        for position, layer in enumerate(model.layers):
            if layer.symbolic_names:
                raise invalid_parameter(
                    f"models[{index}] layer {position}",
                    "no symbolic edges (a batch trains spline edges only; unfix_symbolic turns them back)",
                    sorted(layer.symbolic_names.items()),
                )
        if index == 0:
            continue
        checks = {
            "width": (model.width, first.width),
            "mult_arity": (model.mult_arity, first.mult_arity),
            "grid": (model.grid_size, first.grid_size),
            "k": (model.k, first.k),
            "base_fun": (model.options.base_fun, first.options.base_fun),
            "affine_trainable": (model.options.affine_trainable, first.options.affine_trainable),
            "sp_trainable": (model.options.sp_trainable, first.options.sp_trainable),
            "sb_trainable": (model.options.sb_trainable, first.options.sb_trainable),
            "grid_eps": (model.grid_eps, first.grid_eps),
            "dtype": (model.dtype, first.dtype),
            "device": (model.device, first.device),
            "edges": (sorted(model.graph.edges), sorted(first.graph.edges)),
        }
        for name, (value, expected) in checks.items():
            if value != expected:
                raise invalid_parameter(f"models[{index}] {name}", f"{expected!r} as in models[0]", value)
        for position, (layer, first_layer) in enumerate(zip(model.layers, first.layers)):
            if layer.grid.shape != first_layer.grid.shape:
                raise invalid_parameter(f"models[{index}] layer {position} grid shape", f"{tuple(first_layer.grid.shape)} as in models[0]", tuple(layer.grid.shape))

