"""Datasets: sampled from a function, built from arrays, and validated.

A dataset is a dict with ``train_input`` (n_train, n_var), ``train_label``
(n_train, n_out), ``test_input`` and ``test_label``, all torch tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .errors import InvalidDataError, invalid_parameter

__all__ = ["create_dataset", "dataset_from_arrays", "check_finite", "DATASET_KEYS"]

DATASET_KEYS = ("train_input", "train_label", "test_input", "test_label")
NONFINITE_OPTIONS = ("raise", "drop")


def _numeric_array(values: Any, name: str) -> torch.Tensor:
    """Return ``values`` as a float64 tensor, or raise InvalidDataError naming ``name`` and the first value that is not a number."""
    try:
        return torch.as_tensor(np.asarray(values, dtype=float), dtype=torch.float64)
    except (TypeError, ValueError) as error:
        raise InvalidDataError(f"invalid {name}: expected numbers only ({error}). Convert or drop the non-numeric columns first.") from None


def _ranges(ranges: Any, n_var: int) -> np.ndarray:
    array = np.asarray(ranges, dtype=float)
    if array.shape == (2,):
        array = np.tile(array, (n_var, 1))
    if array.shape != (n_var, 2) or not np.all(array[:, 0] < array[:, 1]):
        raise invalid_parameter("ranges", f"[low, high] or {n_var} pairs [low, high] with low < high", ranges)
    return array


def create_dataset(
    f: Callable[[torch.Tensor], torch.Tensor],
    n_var: int = 2,
    ranges: Sequence = (-1.0, 1.0),
    train_num: int = 1000,
    test_num: int = 1000,
    *,
    normalize_input: bool = False,
    normalize_label: bool = False,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    nonfinite: str = "raise",
) -> dict[str, torch.Tensor]:
    """Sample inputs uniformly in ``ranges`` and label them with ``f``.

    Parameters
    ----------
    f : callable
        Maps a tensor of shape (n, n_var) to labels of shape (n,) or
        (n, n_out).
    n_var : int
        Number of input variables.
    ranges : [low, high] or sequence of n_var pairs
        Sampling interval of each variable.
    train_num, test_num : int
        Number of training and test samples.
    normalize_input, normalize_label : bool
        Standardise with the training mean and standard deviation. The
        statistics are returned under ``input_mean``, ``input_std``,
        ``label_mean`` and ``label_std`` so results can be mapped back.
    seed : int
        Seed of a local generator; the global RNG state is not touched.
    nonfinite : {"raise", "drop"}
        What to do with rows whose label is NaN or infinite, as where ``f``
        is undefined on part of ``ranges`` (``log`` of a negative number).
        ``"raise"`` raises :class:`~multkan.errors.InvalidDataError`;
        ``"drop"`` removes those rows, so the training and test sets can be
        smaller than ``train_num`` and ``test_num``. Rows are dropped before
        normalisation.

    Returns
    -------
    dict
        ``train_input`` (train_num, n_var), ``train_label`` (train_num, n_out),
        ``test_input``, ``test_label``.

    Raises
    ------
    InvalidDataError
        When ``f`` returns labels of the wrong shape. When a label is not
        finite and ``nonfinite="raise"``, or when ``nonfinite="drop"``
        leaves no training or no test row. The message gives the number of
        rows and an input where ``f`` is not finite.

    Examples
    --------
    >>> data = create_dataset(lambda x: x[:, 0] * x[:, 1], n_var=2, train_num=10, test_num=5)
    >>> data["train_input"].shape, data["train_label"].shape
    (torch.Size([10, 2]), torch.Size([10, 1]))
    """
    if not isinstance(n_var, int) or n_var < 1:
        raise invalid_parameter("n_var", "an integer >= 1", n_var)
    for name, value in (("train_num", train_num), ("test_num", test_num)):
        if not isinstance(value, int) or value < 1:
            raise invalid_parameter(name, "an integer >= 1", value)
    if nonfinite not in NONFINITE_OPTIONS:
        raise invalid_parameter("nonfinite", " or ".join(map(repr, NONFINITE_OPTIONS)), nonfinite)
    bounds = torch.as_tensor(_ranges(ranges, n_var), dtype=torch.float64)
    dtype = dtype or torch.get_default_dtype()

    generator = torch.Generator().manual_seed(seed)
    width = bounds[:, 1] - bounds[:, 0]
    train_input = bounds[:, 0] + width * torch.rand(train_num, n_var, generator=generator, dtype=torch.float64)
    test_input = bounds[:, 0] + width * torch.rand(test_num, n_var, generator=generator, dtype=torch.float64)
    train_input, train_label = _finite_rows(train_input, _labels(f, train_input), "train", nonfinite)
    test_input, test_label = _finite_rows(test_input, _labels(f, test_input), "test", nonfinite)

    data = {"train_input": train_input, "train_label": train_label, "test_input": test_input, "test_label": test_label}
    if normalize_input:
        _standardise(data, "input")
    if normalize_label:
        _standardise(data, "label")
    return {key: value.to(dtype=dtype, device=device) for key, value in data.items()}


def _labels(f: Callable, x: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(f(x), dtype=torch.float64)
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2 or labels.shape[0] != x.shape[0]:
        raise InvalidDataError(f"invalid labels from f: expected shape ({x.shape[0]},) or ({x.shape[0]}, n_out), received {tuple(labels.shape)}")
    if x.shape[0] > 1 and labels.shape[1] == x.shape[0] and _broadcast(f, x):
        raise InvalidDataError(
            f"invalid labels from f: shape {tuple(labels.shape)}, one column per row, because f combined an (n,) and "
            "an (n, 1) tensor, such as x[:, 0] + x[:, [1]]. Index columns the same way: x[:, 0] + x[:, 1], or x[:, [0]] + x[:, [1]]"
        )
    return labels


def _broadcast(f: Callable, x: torch.Tensor) -> bool:
    """Return whether ``f`` on ``x`` without its last row gives one column fewer, the sign of an (n,) + (n, 1) broadcast."""
    shorter = torch.as_tensor(f(x[:-1]))
    return shorter.ndim == 2 and shorter.shape == (x.shape[0] - 1, x.shape[0] - 1)


def _finite_rows(x: torch.Tensor, labels: torch.Tensor, part: str, nonfinite: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``x`` and ``labels`` without the rows whose label is not finite, or raise when ``nonfinite="raise"``."""
    bad = ~torch.isfinite(labels).all(dim=1)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return x, labels
    first = int(bad.nonzero()[0, 0])
    example = ", ".join(f"{value:.6g}" for value in x[first].tolist())
    values = ", ".join(f"{value:g}" for value in labels[first].tolist())
    n_nan = int(torch.isnan(labels).any(dim=1).sum())
    found = (
        f"f returned non-finite labels for {n_bad} of {x.shape[0]} {part} rows ({n_nan} NaN, {n_bad - n_nan} infinite), "
        f"for example f(x) = [{values}] at x = [{example}]"
    )
    if nonfinite == "raise":
        raise InvalidDataError(f"{found}. Narrow ranges to where f is finite, or pass nonfinite='drop' to drop these rows.")
    if n_bad == x.shape[0]:
        raise InvalidDataError(f"{found}, so nonfinite='drop' leaves no {part} rows. Choose ranges where f is finite.")
    keep = ~bad
    return x[keep], labels[keep]


def _standardise(data: dict[str, torch.Tensor], part: str) -> None:
    mean = data[f"train_{part}"].mean(dim=0, keepdim=True)
    std = data[f"train_{part}"].std(dim=0, keepdim=True).clamp_min(1e-12)
    data[f"train_{part}"] = (data[f"train_{part}"] - mean) / std
    data[f"test_{part}"] = (data[f"test_{part}"] - mean) / std
    data[f"{part}_mean"] = mean
    data[f"{part}_std"] = std


def dataset_from_arrays(
    X: Any,
    y: Any,
    *,
    test_size: float | int = 0.2,
    seed: int = 0,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Split arrays into a shuffled train and test dataset.

    Parameters
    ----------
    X : array of shape (n_samples, n_var)
    y : array of shape (n_samples,) or (n_samples, n_out)
        A 1-D array of integers (class labels) stays 1-D and int64, the
        form ``fit(loss_fn="cross_entropy")`` and pykan-style accuracy
        functions (``model(x).argmax(1) == labels``) expect. Other labels
        become floats of shape (n_samples, n_out).
    test_size : float in (0, 1) or int
        Fraction or number of samples held out for testing.
    seed : int
        Seed of the local shuffling generator.
    """
    dtype = dtype or torch.get_default_dtype()
    classes = _is_integer_vector(y)
    X = _numeric_array(X, "X")
    y = _numeric_array(y, "y")
    if X.ndim != 2:
        raise InvalidDataError(f"invalid X: expected shape (n_samples, n_var), received {tuple(X.shape)}")
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != X.shape[0]:
        raise InvalidDataError(f"invalid y: expected {X.shape[0]} rows like X, received shape {tuple(y.shape)}")
    n_samples = X.shape[0]
    n_test = int(round(test_size * n_samples)) if isinstance(test_size, float) else int(test_size)
    if not 1 <= n_test < n_samples:
        raise invalid_parameter("test_size", f"a fraction or count leaving 1 to {n_samples - 1} test samples", test_size)
    check_finite({"X": X, "y": y})

    order = torch.randperm(n_samples, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    label_dtype = torch.int64 if classes else dtype
    labels = y[:, 0] if classes else y
    return {
        "train_input": X[train].to(dtype),
        "train_label": labels[train].to(label_dtype),
        "test_input": X[test].to(dtype),
        "test_label": labels[test].to(label_dtype),
    }


def _is_integer_vector(values: Any) -> bool:
    """Return whether ``values`` is a 1-D array of an integer dtype (not bool)."""
    if isinstance(values, torch.Tensor):
        return values.ndim == 1 and not values.is_floating_point() and not values.is_complex() and values.dtype != torch.bool
    array = np.asarray(values) if isinstance(values, (np.ndarray, list, tuple)) else None
    return array is not None and array.ndim == 1 and array.dtype.kind in "iu"


def check_finite(arrays: dict[str, torch.Tensor]) -> None:
    """Raise :class:`InvalidDataError` naming how many entries of each array are not finite, and where."""
    problems = []
    for name, array in arrays.items():
        if not array.is_floating_point():
            continue
        bad = ~torch.isfinite(array)
        if bool(bad.any()):
            rows = bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten().tolist() if array.ndim else [0]
            n_nan = int(torch.isnan(array).sum())
            shown = ", ".join(str(r) for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
            problems.append(
                f"{name} has {int(bad.sum())} non-finite values ({n_nan} NaN, {int(bad.sum()) - n_nan} inf) in {len(rows)} rows (rows {shown})"
            )
    if problems:
        raise InvalidDataError("invalid data: " + "; ".join(problems) + ". Remove or fix these rows before training.")
