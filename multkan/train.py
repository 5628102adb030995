"""Training: optimisers, the sparsity regulariser, grid updates and history."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from tqdm.auto import tqdm

from .datasets import DATASET_KEYS, check_finite
from .errors import InputScaleWarning, InvalidDataError, NonFiniteLossWarning, invalid_parameter, is_integer, user_stacklevel
from .model import check_input
from .lbfgs import FlatLBFGS
from .nn._direct import DirectObjective

if TYPE_CHECKING:
    from .model import MultKAN

__all__ = ["fit", "regularization", "prepare_dataset"]

logger = logging.getLogger(__name__)

EVAL_CHUNK = 4096
# Bytes of layer features and basis temporaries one chunk of logged-loss
# evaluation may take, unless the training batch already takes more.
EVAL_BYTES = 32 * 2**20
GRID_SAMPLES = 4096
# fit warns when a training input reaches beyond this size (see _warn_input_scale).
INPUT_SCALE_LIMIT = 10.0
# fit warns that a model with mult nodes may stall beyond this input
# magnitude. NOTE: chosen from x*y on [-1, 1], [-2, 2] and [-3, 3] with a
# [2, [0, 1], 1] network (3 seeds each), not a general bound.
MULT_INPUT_LIMIT = 1.5


def regularization(
    model: MultKAN,
    x: torch.Tensor,
    *,
    lamb_l1: float = 1.0,
    lamb_entropy: float = 2.0,
    lamb_coef: float = 0.0,
    lamb_coefdiff: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the model output on ``x`` and the sparsity regulariser.

    For each layer with edge magnitudes ``m_ij = std_b(phi_ij(x_b)) /
    (std_b(x_{b,i}) + 0.1)``, the spread of an edge's output relative to the
    spread of its input (a constant offset costs nothing):

    ``R = sum_layers (lamb_l1 sum_ij m_ij + lamb_entropy S(p))``, with
    ``p = m / sum(m)`` and ``S(p) = -sum_ij p_ij log p_ij``, plus
    ``lamb_coef * mean|c|`` and ``lamb_coefdiff * mean|c_{m+1} - c_m|`` summed
    over layers, as in the KAN papers (L1 of edge activations plus
    entropy). The magnitudes are computed from the same pass that gives the
    output, so nothing is stored on the model. Layers on the fused path get
    them from the scatter matrices of their features
    (:meth:`MultKANLayer.target_sums_and_edge_std`), the others from the
    (batch, n_in, n_sub) tensor of edge values.

    Returns
    -------
    output : tensor of shape (batch, n_outputs)
    reg : scalar tensor
    """
    values = x
    reg = torch.zeros((), dtype=x.dtype, device=x.device)
    for layer in model.layers:
        fused = layer.target_sums_and_edge_std(values)
        if fused is None:
            edges = layer.edge_values(values)
            sums, edge_std = edges.sum(dim=1), edges.std(dim=0)
        else:
            sums, edge_std = fused
        magnitude = edge_std / (values.std(dim=0) + 0.1)[:, None]
        total = magnitude.sum()
        p = magnitude / (total + 1e-12)
        entropy = -(p * torch.log(p + 1e-12)).sum()
        reg = reg + lamb_l1 * total + lamb_entropy * entropy
        if lamb_coef:
            reg = reg + lamb_coef * layer.coef.abs().mean()
        if lamb_coefdiff:
            reg = reg + lamb_coefdiff * layer.coef.diff(dim=-1).abs().mean()
        values = layer.combine(sums)
    return values, reg


def _loss_function(loss_fn: str | Callable | None, n_outputs: int) -> tuple[Callable, str]:
    if loss_fn is None or loss_fn == "mse":
        # One autograd node instead of three for mean((prediction - label) ** 2), with the same value.
        return torch.nn.functional.mse_loss, "mse"
    if loss_fn == "cross_entropy":
        if n_outputs < 2:
            raise invalid_parameter("loss_fn", "a model with at least 2 outputs (one logit per class) for cross_entropy", f"a model with {n_outputs} output")
        return torch.nn.functional.cross_entropy, "cross_entropy"
    if callable(loss_fn):
        return loss_fn, "custom"
    raise invalid_parameter("loss_fn", "'mse', 'cross_entropy' or a callable (prediction, label) -> scalar", loss_fn)


def prepare_dataset(model: MultKAN, dataset: dict, loss_kind: str) -> dict[str, torch.Tensor]:
    """Validate a dataset against the model and return tensors in its dtype and device.

    Inputs must have ``n_inputs`` columns. Regression labels of shape (n,)
    are reshaped to (n, 1) for one-output models and must otherwise be
    (n, n_outputs). Cross-entropy labels must be 1-D integer class
    indices, or one column of whole numbers (as dataset_from_arrays stores
    them).
    Every value must be finite.
    """
    if not isinstance(dataset, dict):
        raise invalid_parameter("dataset", f"a dict with keys {DATASET_KEYS}", type(dataset).__name__)
    missing = [key for key in DATASET_KEYS if key not in dataset]
    if missing:
        raise InvalidDataError(f"invalid dataset: missing keys {missing}; expected {list(DATASET_KEYS)}")

    prepared = {}
    for part in ("train", "test"):
        inputs, leading = check_input(dataset[f"{part}_input"], model.n_inputs, model.dtype, name=f"{part}_input")
        if len(leading) != 1:
            raise InvalidDataError(f"invalid {part}_input: expected shape (n, {model.n_inputs}), received {(*leading, model.n_inputs)}")
        try:
            labels = torch.as_tensor(dataset[f"{part}_label"])
        except (TypeError, ValueError, RuntimeError) as error:
            raise InvalidDataError(f"invalid {part}_label: expected an array of numbers, received {type(dataset[f'{part}_label']).__name__} ({error})") from error
        labels = _check_labels(labels, inputs.shape[0], model, loss_kind, f"{part}_label")
        if inputs.shape[0] == 0:
            raise InvalidDataError(f"invalid {part}_input: expected at least one row, received 0")
        prepared[f"{part}_input"] = inputs.to(model.device)
        prepared[f"{part}_label"] = labels.to(model.device)
    check_finite(prepared)
    return prepared


def _check_labels(labels: torch.Tensor, n_rows: int, model: MultKAN, loss_kind: str, name: str) -> torch.Tensor:
    if labels.shape[:1] != (n_rows,):
        raise InvalidDataError(f"invalid {name}: expected {n_rows} rows like the inputs, received shape {tuple(labels.shape)}")
    if loss_kind == "cross_entropy":
        if labels.ndim == 2 and labels.shape[1] == 1 and labels.is_floating_point() and bool((labels == labels.round()).all()):
            # Whole numbers in one column, as dataset_from_arrays stores integer class labels.
            labels = labels[:, 0].long()
        if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
            raise InvalidDataError(
                f"invalid {name}: cross_entropy needs 1-D integer class labels of shape ({n_rows},), "
                f"received shape {tuple(labels.shape)} and dtype {labels.dtype}"
            )
        if bool((labels < 0).any()) or bool((labels >= model.n_outputs).any()):
            raise InvalidDataError(f"invalid {name}: class labels must lie in [0, {model.n_outputs - 1}] for {model.n_outputs} outputs")
        return labels.long()
    if loss_kind == "mse":
        if labels.ndim == 1 and model.n_outputs == 1:
            labels = labels[:, None]
        if labels.ndim != 2 or labels.shape[1] != model.n_outputs:
            raise InvalidDataError(
                f"invalid {name}: expected shape ({n_rows}, {model.n_outputs}) for a model with {model.n_outputs} output{'s' if model.n_outputs != 1 else ''}, "
                f"received {tuple(labels.shape)}"
            )
    return labels.to(model.dtype) if labels.is_floating_point() or loss_kind == "mse" else labels


def default_log(n_train: int, batch_size: int) -> int:
    """Return the default steps between history records: 1 for full batches, one epoch for mini-batches."""
    return -(-n_train // batch_size)


def _check_options(
    opt, steps, lr, batch, n_train, update_grid, grid_update_num, start_grid_update_step, stop_grid_update_step, log, lamb, max_iter
):
    if opt not in ("LBFGS", "Adam", "SGD"):
        raise invalid_parameter("opt", "'LBFGS', 'Adam' or 'SGD'", opt)
    if not is_integer(steps) or steps < 1:
        raise invalid_parameter("steps", "an integer >= 1", steps)
    if not is_integer(max_iter) or max_iter < 1:
        raise invalid_parameter("max_iter", "an integer >= 1 (L-BFGS iterations per step)", max_iter)
    if not isinstance(update_grid, bool):
        raise invalid_parameter("update_grid", "True or False", update_grid)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise invalid_parameter("lr", "a positive finite number", lr)
    if not is_integer(batch) or not (batch == -1 or batch >= 1):
        raise invalid_parameter("batch", "-1 (full batch) or an integer >= 1", batch)
    if log is not None and (not isinstance(log, int) or isinstance(log, bool) or log < 1):
        raise invalid_parameter("log", "an integer >= 1 or None", log)
    if isinstance(lamb, bool) or not (isinstance(lamb, (int, float)) and lamb >= 0 and math.isfinite(lamb)):
        raise invalid_parameter("lamb", "a finite number >= 0 (0 turns the regulariser off)", lamb)
    if update_grid:
        if not is_integer(grid_update_num) or grid_update_num < 1:
            raise invalid_parameter("grid_update_num", "an integer >= 1 when update_grid is True", grid_update_num)
        if not is_integer(stop_grid_update_step):
            raise invalid_parameter("stop_grid_update_step", "an int", stop_grid_update_step)
        if not is_integer(start_grid_update_step) or start_grid_update_step >= stop_grid_update_step:
            raise invalid_parameter(
                "start_grid_update_step",
                f"an int below stop_grid_update_step ({stop_grid_update_step}) when update_grid is True; pass update_grid=False for no updates",
                start_grid_update_step,
            )


def _check_metrics(metrics) -> tuple:
    """Return ``metrics`` as a tuple of callables with distinct names that are not history keys."""
    if metrics is None:
        return ()
    if callable(metrics) or not isinstance(metrics, Sequence):
        raise invalid_parameter("metrics", "a list of functions without arguments, such as [train_acc, test_acc]", metrics)
    names = []
    for metric in metrics:
        name = getattr(metric, "__name__", None)
        if not callable(metric) or not name:
            raise invalid_parameter("metrics", "functions with a __name__ (def or a named function)", metric)
        if name in names or name in ("train_loss", "test_loss", "reg", "stopped_at"):
            raise invalid_parameter("metrics", "functions with distinct names other than train_loss, test_loss, reg and stopped_at", name)
        names.append(name)
    return tuple(metrics)


def _warn_mult_scale(model: MultKAN, inputs: torch.Tensor) -> None:
    """Warn when a model with mult nodes gets training inputs beyond ``MULT_INPUT_LIMIT`` in size."""
    if not any(layer.operands for layer in model.layers) or inputs.numel() == 0:
        return
    largest = float(inputs.detach().abs().max())
    if largest <= MULT_INPUT_LIMIT:
        return
    warnings.warn(
        f"this model has mult nodes, and its training inputs reach |x| = {largest:.3g}. Products of splines train poorly "
        f"beyond |x| = {MULT_INPUT_LIMIT:g}: a [2, [0, 1], 1] network fitted x*y on [-1, 1] to a test RMSE of 3e-4 to 1e-2 "
        "of the labels' standard deviation, but stalled at 0.4 to 0.6 of it on [-2, 2] (and, for some seeds, on 9*x*y over "
        "[-1, 1]). Divide each input by its "
        "largest magnitude, and large labels by their standard deviation, then undo the scaling in the formula "
        "(discover does this by powers of ten).",
        InputScaleWarning,
        stacklevel=user_stacklevel(),
    )


def _warn_input_scale(model: MultKAN, inputs: torch.Tensor) -> None:
    """Warn when a training input column reaches beyond ``INPUT_SCALE_LIMIT`` in size."""
    if inputs.numel() == 0 or model.layers[0].base_fun == "zero":
        return
    largest = inputs.detach().abs().amax(dim=0)
    wide = [int(i) for i in (largest > INPUT_SCALE_LIMIT).nonzero().flatten()]
    if not wide:
        return
    columns = ", ".join(f"{model.input_names[i]} ({float(largest[i]):.3g})" for i in wide[:5]) + (", ..." if len(wide) > 5 else "")
    warnings.warn(
        f"training inputs reach beyond |x| = {INPUT_SCALE_LIMIT:g} in {len(wide)} column(s): {columns}. "
        f"The base function {model.layers[0].base_fun!r} is nearly linear there and fits lose accuracy "
        "(on sin(3 a) + b**2 the test RMSE grew 50-fold from inputs in [1, 2] to inputs in [100, 200]). "
        "Standardise the inputs first, (x - mean) / std; for KANRegressor, put a StandardScaler before it in a Pipeline.",
        InputScaleWarning,
        stacklevel=user_stacklevel(),
    )


def _snapshot(model: MultKAN) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def evaluation_rows(model: MultKAN, batch_size: int) -> int:
    """Return the rows per chunk of a logged-loss evaluation.

    A row costs about twice its features in the widest layer (the features
    and the basis temporaries). Chunks take EVAL_BYTES, or the training
    batch where that is larger, and at most EVAL_CHUNK rows. So logging the
    loss on all rows of a wide model (C20: [400, 16, 2], grid 15, k 5, 105
    KiB per row) needs little more memory than a training step.
    """
    itemsize = torch.empty((), dtype=model.dtype).element_size()
    per_row = max(layer.n_in * (layer.coef.shape[-1] + 2 * layer.k + 3) for layer in model.layers) * itemsize * 2
    return max(1, min(EVAL_CHUNK, max(batch_size, EVAL_BYTES // per_row)))


@torch.no_grad()
def _evaluate(
    model: MultKAN, inputs: torch.Tensor, labels: torch.Tensor, loss: Callable, direct: DirectObjective | None = None, chunk_rows: int = EVAL_CHUNK
) -> float:
    """Mean loss over ``inputs`` in chunks of ``chunk_rows``, so memory does not grow with the rows.

    With ``direct``, at most ``chunk_rows`` rows are evaluated by
    :meth:`DirectObjective.predict`, which keeps their first-layer features
    for the next evaluation.
    """
    rows = inputs.shape[0]
    if direct is not None and rows <= chunk_rows:
        prediction = direct.predict(inputs)
        if prediction is not None:
            return float(loss(prediction, labels))
    total = 0.0
    for start in range(0, rows, chunk_rows):
        chunk = slice(start, start + chunk_rows)
        prediction = model(inputs[chunk])
        total += float(loss(prediction, labels[chunk])) * prediction.shape[0]
    return total / rows


def fit(
    model: MultKAN,
    dataset: dict,
    opt: str = "LBFGS",
    steps: int = 100,
    log: int | None = None,
    lamb: float = 0.0,
    lamb_l1: float = 1.0,
    lamb_entropy: float = 2.0,
    lamb_coef: float = 0.0,
    lamb_coefdiff: float = 0.0,
    update_grid: bool = True,
    grid_update_num: int = 10,
    loss_fn: str | Callable | None = None,
    lr: float = 1.0,
    start_grid_update_step: int = -1,
    stop_grid_update_step: int = 50,
    batch: int = -1,
    *,
    grid_eps: float | None = None,
    max_iter: int = 20,
    progress: bool = True,
    seed: int | None = None,
    metrics: Sequence[Callable[[], float]] | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``dataset``.

    Parameters
    ----------
    model : MultKAN
    dataset : dict
        ``train_input`` (n, n_inputs), ``train_label`` (n, n_outputs) or
        (n,), ``test_input``, ``test_label``.
    opt : {"LBFGS", "Adam", "SGD"}
        L-BFGS runs up to ``max_iter`` iterations with a strong Wolfe line
        search per step. Adam and plain gradient descent (SGD) take one
        update per step; give SGD a smaller ``lr`` than the default 1.0.
    steps : int
        Number of optimiser steps.
    log : int, optional
        Steps between history records and progress-bar updates. Each
        record evaluates the loss on all training and test rows. The
        default is every step for full-batch training and once per epoch
        (``ceil(n_train / batch)`` steps) with mini-batches, where a record
        on all rows costs more than a step.
    lamb : float
        Weight of the sparsity regulariser (see :func:`regularization`);
        0 turns it off.
    lamb_l1, lamb_entropy, lamb_coef, lamb_coefdiff : float
        Weights inside the regulariser.
    update_grid : bool
        Move the grids to the training inputs during the first steps.
    grid_update_num : int
        Number of grid updates between ``start_grid_update_step`` and
        ``stop_grid_update_step``: updates happen at steps that are multiples
        of ``max(1, stop_grid_update_step // grid_update_num)``.
    loss_fn : {"mse", "cross_entropy"} or callable, optional
        MSE by default. Cross-entropy needs at least two outputs and 1-D
        integer labels.
    lr : float
        Learning rate.
    batch : int
        Training rows per step; -1 uses all rows. Rows are drawn without
        replacement from a local generator.
    grid_eps : float, optional
        Knot placement for grid updates; the model's ``grid_eps`` by default.
    max_iter : int
        L-BFGS iterations per step.
    progress : bool
        Show a progress bar.
    seed : int, optional
        Seed of the batch sampler; the model's seed by default.
    metrics : sequence of callables, optional
        Functions without arguments, as in pykan, called under
        ``torch.no_grad()`` whenever the test loss is recorded, when the
        model has that step's parameters. Each value goes into the
        history under the function's ``__name__``, for example a test
        accuracy.

    Returns
    -------
    dict
        ``train_loss`` and ``test_loss`` (RMSE for the default MSE loss,
        the loss value otherwise) and ``reg``, one entry per logged step,
        each at the parameters after that step, and one list per metric;
        ``stopped_at`` is the step
        where training stopped early (a non-finite loss or gradient, or an
        interrupt), else None.

    Notes
    -----
    When a loss, a logged loss, a parameter or a gradient stops being
    finite, training stops: the parameters at the start of the last step
    whose objective was finite are restored, the history keeps only finite
    entries, and a :class:`NonFiniteLossWarning` names the step. Ctrl-C (``KeyboardInterrupt``) also
    stops training: the parameters of the logged step with the lowest
    training loss are restored (the parameters from before training when no
    step was logged yet), the interrupted step gets no history entry, and a
    warning is logged to the ``multkan.train`` logger instead of raising.

    With full-batch training on at most 4096 rows, the next step evaluates
    the objective on all training rows at the logged parameters before it
    updates them, so the logged training loss and regulariser are taken
    from that evaluation instead of a second forward pass. The last step
    and steps followed by a grid update are evaluated separately.
    """
    if model.device.type == "meta":
        raise invalid_parameter(
            "model",
            "a model with values; a meta model has only shapes, so create it on a real device "
            "or call model.to_empty(device='cpu') and load its parameters first",
            f"a model on the {model.device} device",
        )
    loss, loss_kind = _loss_function(loss_fn, model.n_outputs)
    data = prepare_dataset(model, dataset, loss_kind)
    n_train = data["train_input"].shape[0]
    _check_options(
        opt, steps, lr, batch, n_train, update_grid, grid_update_num, start_grid_update_step, stop_grid_update_step, log, lamb, max_iter
    )
    # Adam's first step is lr / (1 - 0.9), which torch converts to the parameters' dtype.
    adam_limit = torch.finfo(model.dtype).max / 10
    if opt == "Adam" and lr >= adam_limit:
        raise invalid_parameter("lr", f"a positive number below {adam_limit:.3g} for Adam on {model.dtype} parameters", lr)
    _warn_input_scale(model, data["train_input"])
    if loss_kind == "mse":
        _warn_mult_scale(model, data["train_input"])
    model.train_input = data["train_input"]
    batch_size = n_train if batch == -1 or batch > n_train else batch
    log = default_log(n_train, batch_size) if log is None else log
    generator = torch.Generator().manual_seed(model.seed if seed is None else seed)
    grid_every = max(1, stop_grid_update_step // grid_update_num) if update_grid else 0
    grid_rows = _grid_rows(data["train_input"], generator)

    checked_metrics = _check_metrics(metrics)
    parameters = _FlatParameters([p for p in model.parameters() if p.requires_grad])
    try:
        return _train(
            model, data, parameters, loss, loss_kind, opt, steps, log, lamb, lr, max_iter, batch_size, generator,
            update_grid, grid_every, start_grid_update_step, stop_grid_update_step, grid_rows, grid_eps, progress,
            dict(lamb_l1=lamb_l1, lamb_entropy=lamb_entropy, lamb_coef=lamb_coef, lamb_coefdiff=lamb_coefdiff), checked_metrics,
        )
    finally:
        parameters.release()


def _train(
    model, data, parameters, loss, loss_kind, opt, steps, log, lamb, lr, max_iter, batch_size, generator,
    update_grid, grid_every, start_grid_update_step, stop_grid_update_step, grid_rows, grid_eps, progress, reg_weights, metrics=(),
) -> dict[str, Any]:
    """Run the training loop of :func:`fit` on validated arguments."""
    n_train = data["train_input"].shape[0]
    if opt == "Adam":
        optimizer = torch.optim.Adam(parameters.optimized, lr=lr)
    elif opt == "SGD":
        optimizer = torch.optim.SGD(parameters.optimized, lr=lr)
    elif parameters.flat is not None and parameters.flat.device.type == "cpu":
        # The same iterates as torch's L-BFGS with less overhead per evaluation.
        optimizer = FlatLBFGS(parameters.flat, lr=lr, max_iter=max_iter, history_size=10, tolerance_grad=1e-32, tolerance_change=1e-32)
    else:
        optimizer = torch.optim.LBFGS(
            parameters.optimized, lr=lr, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe",
            tolerance_grad=1e-32, tolerance_change=1e-32,
        )
    no_reg = torch.zeros((), dtype=model.dtype, device=model.device)

    def objective(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if lamb > 0:
            prediction, reg = regularization(model, inputs, **reg_weights)
        else:
            prediction, reg = model(inputs), no_reg
        return loss(prediction, labels), reg

    # The mean squared error and its gradient without autograd, where the
    # layers allow it (see multkan.nn._direct).
    direct = DirectObjective(model) if DirectObjective.supports(model, loss_kind, lamb) else None
    history = _History(model, data, loss, loss_kind, lamb, objective, direct, evaluation_rows(model, batch_size), metrics)
    # A full-batch step evaluates the objective on all training rows at the
    # parameters of the previous step before it changes them. So the
    # training loss and regulariser of a logged step are taken from the
    # next step instead of a second forward pass. This is limited to at most
    # EVAL_CHUNK rows, where _evaluate also takes one pass, so the logged
    # value is the same whichever pass computed it.
    reuse_next = batch_size == n_train and n_train <= EVAL_CHUNK
    current_step = 0
    bar = tqdm(range(steps), desc="fit", disable=not progress, dynamic_ncols=True)
    history.bar = bar
    try:
        for step in bar:
            current_step = step
            if update_grid and start_grid_update_step <= step < stop_grid_update_step and step % grid_every == 0:
                # The grid update changes the model's function, so the next
                # objective is no longer that of the pending step.
                if not history.complete_pending():
                    history.stop_non_finite(step, opt)
                    break
                model.update_grid(grid_rows, grid_eps=grid_eps)
                if isinstance(optimizer, FlatLBFGS):
                    optimizer.reset()
                elif opt == "LBFGS":
                    optimizer.state.clear()

            if batch_size == n_train:
                inputs, labels = data["train_input"], data["train_label"]
            else:
                rows = torch.randperm(n_train, generator=generator)[:batch_size].to(model.device)
                inputs, labels = data["train_input"][rows], data["train_label"][rows]

            first_evaluation: list[torch.Tensor] = []

            def closure() -> torch.Tensor:
                parameters.zero_grad()
                objective_loss = direct(inputs, labels) if direct is not None else None
                if objective_loss is None:
                    objective_loss, reg = objective(inputs, labels)
                    total = objective_loss + lamb * reg if lamb > 0 else objective_loss
                    total.backward()
                else:
                    total, reg = objective_loss, no_reg
                if not first_evaluation:
                    first_evaluation.extend((objective_loss.detach(), reg.detach()))
                    # The parameters at the start of a step are the ones to go
                    # back to once the objective at them is known to be finite.
                    if bool(torch.isfinite(total.detach())):
                        history.verify(step)
                return total

            total = optimizer.step(closure)
            if not bool(torch.isfinite(total.detach())):
                # The previous step led to a non-finite objective, so its pending record is dropped.
                history.drop_pending()
                history.stop_non_finite(step, opt)
                break
            if not history.complete_pending(*first_evaluation) or not parameters.all_finite(total.detach()):
                history.stop_non_finite(step, opt)
                break

            if (step % log == 0 or step == steps - 1) and not history.record(step, defer=reuse_next and step < steps - 1):
                history.stop_non_finite(step, opt)
                break
            current_step = step + 1
    except KeyboardInterrupt:
        history.interrupted(current_step)
    finally:
        bar.close()
    return history.result()


class _FlatParameters:
    """The trainable parameters of a model as views of one flat tensor, their gradients as views of another.

    The optimiser then updates one tensor: torch's L-BFGS gathers, adds and
    copies parameters one tensor at a time, eight times per evaluation for a
    two-layer model, and Adam's update becomes one fused operation. Both
    algorithms act elementwise on the concatenated vector, so the iterates
    are those of the per-parameter optimisers. Backward passes accumulate
    into the gradient views in place, so gradients are zeroed in place,
    never set to None. :meth:`release` gives every parameter its own memory
    again. Parameters of mixed dtypes or devices are left as they are.
    """

    def __init__(self, parameters: list[torch.nn.Parameter]) -> None:
        self.parameters = parameters
        self.flat: torch.Tensor | None = None
        if not parameters or len({(p.dtype, p.device) for p in parameters}) > 1:
            self.optimized = parameters
            return
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in parameters])
        grad = torch.zeros_like(flat)
        offset = 0
        for parameter in parameters:
            size = parameter.numel()
            parameter.data = flat[offset : offset + size].view_as(parameter)
            parameter.grad = grad[offset : offset + size].view_as(parameter)
            offset += size
        self.flat = flat.requires_grad_()
        self.flat.grad = grad
        self.optimized = [self.flat]

    def zero_grad(self) -> None:
        if self.flat is None:
            for parameter in self.parameters:
                parameter.grad = None
        else:
            self.flat.grad.zero_()

    def all_finite(self, loss: torch.Tensor) -> bool:
        """Return whether the loss, every parameter and every gradient are finite."""
        tensors = [loss, *self.optimized, *(p.grad for p in self.optimized if p.grad is not None)]
        return all(bool(torch.isfinite(tensor).all()) for tensor in tensors)

    def release(self) -> None:
        """Copy every parameter and gradient out of the flat tensors."""
        if self.flat is None:
            return
        for parameter in self.parameters:
            parameter.data = parameter.data.clone()
            if parameter.grad is not None:
                parameter.grad = parameter.grad.clone()
        self.flat = None


class _PendingRecord(NamedTuple):
    """A logged step whose training loss and regulariser the next step's objective supplies."""

    step: int
    test: float
    state: dict[str, torch.Tensor]
    uniform: list[bool]
    metrics: tuple[float, ...] = ()


class _History:
    """The logged losses of a fit, the last finite parameters and the best logged step."""

    def __init__(self, model, data, loss, loss_kind, lamb, objective, direct=None, eval_rows=EVAL_CHUNK, metrics=()) -> None:
        self.model = model
        self.metrics = metrics
        self.direct = direct
        self.eval_rows = eval_rows
        self.data = data
        self.loss = loss
        self.loss_kind = loss_kind
        self.lamb = lamb
        self.objective = objective
        self.bar = None
        self.entries: dict[str, list[float]] = {"train_loss": [], "test_loss": [], "reg": [], **{m.__name__: [] for m in metrics}}
        self.stopped_at: int | None = None
        self.pending: _PendingRecord | None = None
        # The parameters at the start of the last step whose first objective
        # was finite (None: before training), restored when training stops
        # on a non-finite value.
        self.verified_step: int | None = None
        self.verified = _snapshot(model)
        self.verified_uniform = _uniform_flags(model)
        # The logged step with the lowest training loss, restored on Ctrl-C.
        # Its state shares the tensors of a snapshot, which are never modified.
        self.best = _BestStep(None, math.inf, self.verified, self.verified_uniform)

    def verify(self, step: int) -> None:
        """Keep the current parameters, at the start of ``step``, as the ones to restore."""
        self.verified_step = step
        self.verified = _snapshot(self.model)
        self.verified_uniform = _uniform_flags(self.model)

    def stop_non_finite(self, step: int, opt: str) -> None:
        """Restore the verified parameters after a non-finite value in ``step`` and warn."""
        self.model.load_state_dict(self.verified)
        for layer, uniform in zip(self.model.layers, self.verified_uniform):
            layer.uniform = uniform
        self.stopped_at = step
        restored = "the parameters from before training were" if self.verified_step is None else (
            f"the parameters from the start of step {self.verified_step} were"
        )
        advice = "Lower lr or lamb." if opt != "LBFGS" else "Lower lr or lamb, or use opt='Adam'."
        warnings.warn(
            f"training stopped at step {step}: the loss, a logged loss, a parameter or a gradient was not finite; "
            f"{restored} restored. {advice}",
            NonFiniteLossWarning,
            stacklevel=user_stacklevel(),
        )

    def drop_pending(self) -> None:
        self.pending = None

    def _scale(self, value: float) -> float:
        return math.sqrt(value) if self.loss_kind == "mse" else value

    def record(self, step: int, *, defer: bool) -> bool:
        """Log the step that just finished, or keep it pending until the next step's objective.

        With ``defer`` the next step must evaluate the objective on all
        training rows, at most ``eval_rows`` of them, before it changes the
        parameters. Returns False, and logs nothing, when a loss is not finite.
        """
        test = self._scale(_evaluate(self.model, self.data["test_input"], self.data["test_label"], self.loss, self.direct, self.eval_rows))
        if not math.isfinite(test):
            return False
        with torch.no_grad():
            # Here the model has the step's parameters, as for the test loss.
            values = tuple(float(metric()) for metric in self.metrics)
        pending = _PendingRecord(step, test, _snapshot(self.model), _uniform_flags(self.model), values)
        if defer:
            self.pending = pending
            return True
        train = _evaluate(self.model, self.data["train_input"], self.data["train_label"], self.loss, self.direct, self.eval_rows)
        reg = self._reg()
        if not (math.isfinite(train) and math.isfinite(reg)):
            return False
        self._append(pending, self._scale(train), reg)
        return True

    def _reg(self) -> float:
        """Return the regulariser on the first ``eval_rows`` training rows, 0 when lamb is 0."""
        if self.lamb <= 0:
            return 0.0
        rows = self.eval_rows
        with torch.no_grad():
            return float(self.objective(self.data["train_input"][:rows], self.data["train_label"][:rows])[1])

    def complete_pending(self, objective_loss: torch.Tensor | None = None, reg: torch.Tensor | None = None) -> bool:
        """Log the pending step with the objective the model evaluated at its parameters.

        Without ``objective_loss`` the model must hold the pending step's
        parameters, and the losses are evaluated here. Returns False, and
        drops the pending step, when its loss is not finite.
        """
        pending, self.pending = self.pending, None
        if pending is None:
            return True
        if objective_loss is None:
            train = _evaluate(self.model, self.data["train_input"], self.data["train_label"], self.loss, self.direct, self.eval_rows)
            reg_value = self._reg()
        else:
            train = float(objective_loss)
            reg_value = float(reg) if self.lamb > 0 else 0.0
        if not (math.isfinite(train) and math.isfinite(reg_value)):
            return False
        self._append(pending, self._scale(train), reg_value)
        return True

    def _append(self, record: _PendingRecord, train: float, reg: float) -> None:
        self.entries["train_loss"].append(train)
        self.entries["test_loss"].append(record.test)
        self.entries["reg"].append(reg)
        for metric, value in zip(self.metrics, record.metrics):
            self.entries[metric.__name__].append(value)
        if train < self.best.train_loss:
            self.best = _BestStep(record.step, train, record.state, record.uniform)
        if self.bar is not None:
            self.bar.set_postfix(train=f"{train:.2e}", test=f"{record.test:.2e}", reg=f"{reg:.2e}", refresh=False)

    def interrupted(self, step: int) -> None:
        """Handle Ctrl-C during ``step``: log a pending step, then restore the best logged parameters.

        An interrupt inside :meth:`_append` can leave the lists of unequal
        length, so every list is cut to the complete entries.
        """
        complete = min(len(values) for values in self.entries.values())
        for values in self.entries.values():
            del values[complete:]
        if self.pending is not None:
            self.model.load_state_dict(self.pending.state)
            for layer, uniform in zip(self.model.layers, self.pending.uniform):
                layer.uniform = uniform
            self.complete_pending()
        _restore_best(self.model, self.best, step)
        self.stopped_at = step

    def result(self) -> dict[str, Any]:
        return {**self.entries, "stopped_at": self.stopped_at}


class _BestStep(NamedTuple):
    """The logged step with the lowest training loss; ``step`` is None before any step is logged."""

    step: int | None
    train_loss: float
    state: dict[str, torch.Tensor]
    uniform: list[bool]


def _uniform_flags(model: MultKAN) -> list[bool]:
    """Return the knot layout flag of every layer, which grid updates change but the state_dict lacks."""
    return [layer.uniform for layer in model.layers]


def _restore_best(model: MultKAN, best: _BestStep, step: int) -> None:
    """Restore the parameters of the best logged step after Ctrl-C during ``step``, and log a warning."""
    model.load_state_dict(best.state)
    for layer, uniform in zip(model.layers, best.uniform):
        layer.uniform = uniform
    if best.step is None:
        logger.warning("training interrupted at step %d before any step was logged; restored the parameters from before training", step)
    else:
        logger.warning(
            "training interrupted at step %d; restored the parameters of step %d, the logged step with the lowest training loss (%.3e)",
            step, best.step, best.train_loss,
        )


def _grid_rows(train_input: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Return at most ``GRID_SAMPLES`` training rows for grid updates."""
    if train_input.shape[0] <= GRID_SAMPLES:
        return train_input
    rows = torch.randperm(train_input.shape[0], generator=generator)[:GRID_SAMPLES].to(train_input.device)
    return train_input[rows]
