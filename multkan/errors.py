"""Exceptions and warning categories raised by multkan.

Every error that multkan raises on purpose derives from :class:`MultKANError`.
Input errors also derive from the matching built-in class (``ValueError``,
``TypeError``), so ``except ValueError`` keeps working in user code.
"""

from __future__ import annotations

import numbers
from typing import Any


class MultKANError(Exception):
    """Base class of the errors that multkan raises on purpose."""


class InvalidParameterError(MultKANError, ValueError):
    """A parameter has a value outside the allowed set."""


class InvalidDataError(MultKANError, ValueError):
    """Input data has the wrong shape, dtype or non-finite entries."""


class GraphError(MultKANError, ValueError):
    """A graph IR breaks a structural rule (cycles, layering, arity, kinds)."""


class SymbolicError(MultKANError, ValueError):
    """A symbolic operation cannot be carried out on the model as it is."""


class CheckpointError(MultKANError, ValueError):
    """A saved model or report is missing, truncated or tampered with."""


class MultKANWarning(UserWarning):
    """Base class of the warnings that multkan emits."""


class NonFiniteLossWarning(MultKANWarning):
    """Training met a non-finite loss or gradient and restored earlier parameters."""


class InputScaleWarning(MultKANWarning):
    """Training inputs lie far outside the unit scale that spline grids and base functions suit."""


class SymbolicFitWarning(MultKANWarning):
    """An edge could not be fitted well by any symbolic candidate."""


class GridWarning(MultKANWarning):
    """A change of the spline grids changed the model's outputs on its training inputs."""


def invalid_parameter(name: str, allowed: str, received: Any) -> InvalidParameterError:
    """Build an :class:`InvalidParameterError` that names the parameter, the rule and the value.

    Examples
    --------
    >>> raise invalid_parameter("grid", "an integer >= 1", 0)
    Traceback (most recent call last):
    ...
    multkan.errors.InvalidParameterError: invalid grid: expected an integer >= 1, received 0
    """
    return InvalidParameterError(f"invalid {name}: expected {allowed}, received {received!r}")


def check_device(device: Any) -> None:
    """Raise :class:`InvalidParameterError` when ``device`` is not a device this torch build can use.

    torch raises an AssertionError ("Torch not compiled with CUDA
    enabled") for such a device. This error names the parameter and the devices that work.
    """
    if device is None:
        return
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError, TypeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        raise InvalidParameterError(
            f"invalid device: expected one of {available} on this machine (a name torch accepts, such as 'cpu' or 'cuda:0'), "
            f"received {device!r}. torch reported: {reason}"
        ) from None


def user_stacklevel() -> int:
    """Return the ``stacklevel`` for ``warnings.warn`` that points at the first caller outside multkan.

    Call it in the argument list of ``warnings.warn``. A warning raised
    inside ``train.fit`` then names the user's ``model.fit(...)`` line
    whether the call came through the method or the function. Frames of
    ``contextlib`` wrappers between multkan's own frames are skipped too.
    """
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame = sys._getframe(1)
    level = 1
    while frame is not None and (frame.f_code.co_filename.startswith(package) or os.path.basename(frame.f_code.co_filename) in _WRAPPER_FILES):
        frame = frame.f_back
        level += 1
    return level


# Files of decorators (torch.no_grad, contextmanager) whose frames sit between multkan's own.
_WRAPPER_FILES = ("contextlib.py", "_contextlib.py")


def is_integer(value: object) -> bool:
    """Return whether ``value`` is an integer (Python or NumPy), excluding bool, for parameter checks."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
