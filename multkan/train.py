"""Training: optimisers, the sparsity regulariser, grid updates and history."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from tqdm.auto import tqdm

from .datasets import DATASET_KEYS, check_finite
from .errors import InvalidDataError, NonFiniteLossWarning, invalid_parameter
from .model import check_input

if TYPE_CHECKING:
    from .model import MultKAN

__all__ = ["fit", "regularization", "prepare_dataset"]

logger = logging.getLogger(__name__)

EVAL_CHUNK = 4096
GRID_SAMPLES = 4096


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
    output, so nothing is stored on the model.

    Returns
    -------
    output : tensor of shape (batch, n_outputs)
    reg : scalar tensor
    """
    values = x
    reg = torch.zeros((), dtype=x.dtype, device=x.device)
    for layer in model.layers:
        edges = layer.edge_values(values)
        magnitude = edges.std(dim=0) / (values.std(dim=0) + 0.1)[:, None]
        total = magnitude.sum()
        p = magnitude / (total + 1e-12)
        entropy = -(p * torch.log(p + 1e-12)).sum()
        reg = reg + lamb_l1 * total + lamb_entropy * entropy
        if lamb_coef:
            reg = reg + lamb_coef * layer.coef.abs().mean()
        if lamb_coefdiff:
            reg = reg + lamb_coefdiff * layer.coef.diff(dim=-1).abs().mean()
        values = layer.combine(edges.sum(dim=1))
    return values, reg


def _loss_function(loss_fn: str | Callable | None, n_outputs: int) -> tuple[Callable, str]:
    if loss_fn is None or loss_fn == "mse":
        return (lambda prediction, label: torch.mean((prediction - label) ** 2)), "mse"
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
    (n, n_outputs). Cross-entropy labels must be 1-D integer class indices.
    Every value must be finite.
    """
    if not isinstance(dataset, dict):
        raise invalid_parameter("dataset", f"a dict with keys {DATASET_KEYS}", type(dataset).__name__)
    missing = [key for key in DATASET_KEYS if key not in dataset]
    if missing:
        raise InvalidDataError(f"invalid dataset: missing keys {missing}; expected {list(DATASET_KEYS)}")

    prepared = {}
    for part in ("train", "test"):
        inputs, _ = check_input(dataset[f"{part}_input"], model.n_inputs, model.dtype, name=f"{part}_input")
        if inputs.ndim != 2 or tuple(dataset[f"{part}_input"].shape[:-1]) != (inputs.shape[0],):
            raise InvalidDataError(f"invalid {part}_input: expected shape (n, {model.n_inputs}), received {tuple(dataset[f'{part}_input'].shape)}")
        labels = torch.as_tensor(dataset[f"{part}_label"])
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
                f"invalid {name}: expected shape ({n_rows}, {model.n_outputs}) for a model with {model.n_outputs} outputs, "
                f"received {tuple(labels.shape)}"
            )
    return labels.to(model.dtype) if labels.is_floating_point() or loss_kind == "mse" else labels


def _check_options(opt, steps, lr, batch, n_train, update_grid, grid_update_num, start_grid_update_step, stop_grid_update_step, log):
    if opt not in ("LBFGS", "Adam"):
        raise invalid_parameter("opt", "'LBFGS' or 'Adam'", opt)
    if not isinstance(steps, int) or steps < 1:
        raise invalid_parameter("steps", "an integer >= 1", steps)
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise invalid_parameter("lr", "a positive finite number", lr)
    if not isinstance(batch, int) or not (batch == -1 or batch >= 1):
        raise invalid_parameter("batch", "-1 (full batch) or an integer >= 1", batch)
    if not isinstance(log, int) or log < 1:
        raise invalid_parameter("log", "an integer >= 1", log)
    if update_grid:
        if not isinstance(grid_update_num, int) or grid_update_num < 1:
            raise invalid_parameter("grid_update_num", "an integer >= 1 when update_grid is True", grid_update_num)
        if not isinstance(stop_grid_update_step, int) or not isinstance(start_grid_update_step, int):
            raise invalid_parameter("stop_grid_update_step", "an int", stop_grid_update_step)


def _snapshot(model: MultKAN) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _all_finite(model: MultKAN, loss: torch.Tensor) -> bool:
    if not bool(torch.isfinite(loss).all()):
        return False
    for parameter in model.parameters():
        if not bool(torch.isfinite(parameter).all()):
            return False
        if parameter.grad is not None and not bool(torch.isfinite(parameter.grad).all()):
            return False
    return True


@torch.no_grad()
def _evaluate(model: MultKAN, inputs: torch.Tensor, labels: torch.Tensor, loss: Callable) -> float:
    """Mean loss over ``inputs`` in chunks, so memory does not grow with the rows."""
    total, rows = 0.0, inputs.shape[0]
    for start in range(0, rows, EVAL_CHUNK):
        chunk = slice(start, start + EVAL_CHUNK)
        prediction = model(inputs[chunk])
        total += float(loss(prediction, labels[chunk])) * prediction.shape[0]
    return total / rows


def fit(
    model: MultKAN,
    dataset: dict,
    opt: str = "LBFGS",
    steps: int = 100,
    log: int = 1,
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
) -> dict[str, Any]:
    """Train ``model`` in place on ``dataset``.

    Parameters
    ----------
    model : MultKAN
    dataset : dict
        ``train_input`` (n, n_inputs), ``train_label`` (n, n_outputs) or
        (n,), ``test_input``, ``test_label``.
    opt : {"LBFGS", "Adam"}
        L-BFGS runs up to ``max_iter`` iterations with a strong Wolfe line
        search per step; Adam takes one step per step.
    steps : int
        Number of optimiser steps.
    log : int
        Steps between history records and progress-bar updates.
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

    Returns
    -------
    dict
        ``train_loss`` and ``test_loss`` (RMSE for the default MSE loss,
        the loss value otherwise) and ``reg``, one entry per logged step;
        ``stopped_at`` is the step where training stopped early (a
        non-finite loss or gradient, or an interrupt), else None.

    Notes
    -----
    When a loss, parameter or gradient stops being finite, the parameters
    of the last finite step are restored, a :class:`NonFiniteLossWarning`
    names the step, and training stops. Ctrl-C (``KeyboardInterrupt``) also
    stops training: the parameters of the logged step with the lowest
    training loss are restored (the parameters from before training when no
    step was logged yet), the interrupted step gets no history entry, and a
    warning is logged to the ``multkan.train`` logger instead of raising.
    """
    loss, loss_kind = _loss_function(loss_fn, model.n_outputs)
    data = prepare_dataset(model, dataset, loss_kind)
    model.train_input = data["train_input"]
    n_train = data["train_input"].shape[0]
    _check_options(opt, steps, lr, batch, n_train, update_grid, grid_update_num, start_grid_update_step, stop_grid_update_step, log)
    batch_size = n_train if batch == -1 or batch > n_train else batch
    generator = torch.Generator().manual_seed(model.seed if seed is None else seed)
    grid_every = max(1, stop_grid_update_step // grid_update_num) if update_grid else 0
    grid_rows = _grid_rows(data["train_input"], generator)

    parameters = [p for p in model.parameters() if p.requires_grad]
    if opt == "Adam":
        optimizer = torch.optim.Adam(parameters, lr=lr)
    else:
        optimizer = torch.optim.LBFGS(
            parameters, lr=lr, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe",
            tolerance_grad=1e-32, tolerance_change=1e-32,
        )

    def objective(inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if lamb > 0:
            prediction, reg = regularization(
                model, inputs, lamb_l1=lamb_l1, lamb_entropy=lamb_entropy, lamb_coef=lamb_coef, lamb_coefdiff=lamb_coefdiff
            )
        else:
            prediction, reg = model(inputs), torch.zeros((), dtype=inputs.dtype, device=inputs.device)
        return loss(prediction, labels), reg

    history: dict[str, Any] = {"train_loss": [], "test_loss": [], "reg": [], "stopped_at": None}
    last_finite = _snapshot(model)
    # The logged step with the lowest training loss, restored on Ctrl-C. Its
    # state shares the tensors of last_finite, which are never modified.
    last_uniform = _uniform_flags(model)
    best = _BestStep(None, math.inf, last_finite, last_uniform)
    n_logged = 0
    current_step = 0
    bar = tqdm(range(steps), desc="fit", disable=not progress, dynamic_ncols=True)
    try:
        for step in bar:
            current_step = step
            if update_grid and start_grid_update_step <= step < stop_grid_update_step and step % grid_every == 0:
                model.update_grid(grid_rows, grid_eps=grid_eps)
                if opt == "LBFGS":
                    optimizer.state.clear()

            if batch_size == n_train:
                inputs, labels = data["train_input"], data["train_label"]
            else:
                rows = torch.randperm(n_train, generator=generator)[:batch_size].to(model.device)
                inputs, labels = data["train_input"][rows], data["train_label"][rows]

            def closure() -> torch.Tensor:
                optimizer.zero_grad()
                objective_loss, reg = objective(inputs, labels)
                total = objective_loss + lamb * reg
                total.backward()
                return total

            total = optimizer.step(closure)
            if not _all_finite(model, total.detach()):
                model.load_state_dict(last_finite)
                for layer, uniform in zip(model.layers, last_uniform):
                    layer.uniform = uniform
                history["stopped_at"] = step
                warnings.warn(
                    f"training stopped at step {step}: the loss, a parameter or a gradient was not finite; "
                    f"parameters from step {step - 1} were restored. Lower lr or lamb, or use opt='Adam'.",
                    NonFiniteLossWarning,
                    stacklevel=2,
                )
                break
            last_finite = _snapshot(model)
            last_uniform = _uniform_flags(model)

            if step % log == 0 or step == steps - 1:
                _record(model, data, loss, loss_kind, lamb, objective, history, bar)
                train_loss = history["train_loss"][-1]
                if train_loss < best.train_loss:
                    best = _BestStep(step, train_loss, last_finite, _uniform_flags(model))
                n_logged += 1
            current_step = step + 1
    except KeyboardInterrupt:
        _restore_best(model, history, best, n_logged, current_step)
    finally:
        bar.close()
    return history


class _BestStep(NamedTuple):
    """The logged step with the lowest training loss; ``step`` is None before any step is logged."""

    step: int | None
    train_loss: float
    state: dict[str, torch.Tensor]
    uniform: list[bool]


def _uniform_flags(model: MultKAN) -> list[bool]:
    """Return the knot layout flag of every layer, which grid updates change but the state_dict lacks."""
    return [layer.uniform for layer in model.layers]


def _restore_best(model: MultKAN, history: dict[str, Any], best: _BestStep, n_logged: int, step: int) -> None:
    """Handle Ctrl-C during ``step``: restore the best logged parameters and drop a partial history entry.

    An interrupt inside :func:`_record` can leave the history lists of
    unequal length, so every list is cut to the ``n_logged`` complete entries.
    """
    for key in ("train_loss", "test_loss", "reg"):
        del history[key][n_logged:]
    model.load_state_dict(best.state)
    for layer, uniform in zip(model.layers, best.uniform):
        layer.uniform = uniform
    history["stopped_at"] = step
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


def _record(model, data, loss, loss_kind, lamb, objective, history, bar) -> None:
    train = _evaluate(model, data["train_input"], data["train_label"], loss)
    test = _evaluate(model, data["test_input"], data["test_label"], loss)
    if loss_kind == "mse":
        train, test = math.sqrt(train), math.sqrt(test)
    reg = 0.0
    if lamb > 0:
        with torch.no_grad():
            rows = data["train_input"][:EVAL_CHUNK]
            reg = float(objective(rows, data["train_label"][:EVAL_CHUNK])[1])
    history["train_loss"].append(train)
    history["test_loss"].append(test)
    history["reg"].append(reg)
    bar.set_postfix(train=f"{train:.2e}", test=f"{test:.2e}", reg=f"{reg:.2e}", refresh=False)

