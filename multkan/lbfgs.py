"""L-BFGS on one flat CPU parameter vector, with its vector algebra in NumPy.

:func:`multkan.fit` trains with L-BFGS by default, as pykan does: up to
``max_iter`` iterations per step, a history of the last ``history_size``
curvature pairs and a line search for the strong Wolfe conditions. The
direction comes from the two-loop recursion over the stored pairs. The
line search brackets a step and then zooms in, and each trial step
minimises the cubic that matches the values and slopes at two points.
Step sizes, safeguards and stopping tests follow ``torch.optim.LBFGS``
(torch 2.13) with ``line_search_fn="strong_wolfe"``, and
``tests/test_lbfgs.py`` checks that both evaluate the same points.

For the small models of this library, with a few hundred parameters,
torch's implementation spent about a quarter of a fit on its own tensor
operations (50 steps of a [2, 5, 1] model on 1000 rows, one thread). Here the parameters and their gradient are NumPy views of the
flat tensors of the fit, each vector operation is a NumPy call on a short
array, and every scalar is a Python float. The iterates match torch's up
to rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["FlatLBFGS"]

# Sufficient decrease and curvature constants of the strong Wolfe conditions.
WOLFE_DECREASE = 1e-4
WOLFE_CURVATURE = 0.9
# At most this many objective evaluations in one line search.
LINE_SEARCH_EVALS = 25
# The line search stops when the bracket, times the largest component of the
# direction, is narrower than this.
LINE_SEARCH_TOLERANCE = 1e-9
# A curvature pair enters the history only when y . s exceeds this.
CURVATURE_MIN = 1e-10


def _cubic_minimiser(t1: float, f1: float, g1: float, t2: float, f2: float, g2: float, low: float, high: float) -> float:
    """Return the minimiser of the cubic with values ``f`` and slopes ``g`` at ``t1`` and ``t2``, clipped to [low, high].

    Without a real minimiser, the middle of [low, high].
    """
    d1 = g1 + g2 - 3.0 * (f1 - f2) / (t1 - t2)
    discriminant = d1 * d1 - g1 * g2
    if not discriminant >= 0.0:
        return (low + high) / 2.0
    d2 = discriminant**0.5
    if t1 > t2:
        t1, f1, g1, t2, f2, g2 = t2, f2, g2, t1, f1, g1
    # A zero denominator divides as IEEE floats do, as in torch's tensor
    # arithmetic: an infinite step is clipped, and NaN stays NaN.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = float(np.float64(g2 + d2 - d1) / np.float64(g2 - g1 + 2.0 * d2))
    point = t2 - (t2 - t1) * ratio
    return min(max(point, low), high)


class FlatLBFGS:
    """L-BFGS with the strong Wolfe line search for one flat CPU tensor that requires a gradient.

    Parameters
    ----------
    flat : tensor
        The parameters, one contiguous CPU tensor with ``flat.grad`` set;
        both are used through NumPy views, so they must keep their memory.
    lr : float
        Initial trial step of the line search (after the first iteration).
    max_iter : int
        Iterations per :meth:`step`.
    max_eval : int, optional
        Objective evaluations per step; ``max_iter * 5 // 4`` by default.
    history_size : int
        Curvature pairs kept.
    tolerance_grad, tolerance_change : float
        A step ends when the largest gradient component, or the change of
        the loss or of the parameters, falls to these.

    The closure passed to :meth:`step` evaluates the loss at the current
    parameters, writes the gradient into ``flat.grad`` and returns the loss.
    """

    def __init__(
        self,
        flat: torch.Tensor,
        *,
        lr: float = 1.0,
        max_iter: int = 20,
        max_eval: int | None = None,
        history_size: int = 10,
        tolerance_grad: float = 1e-7,
        tolerance_change: float = 1e-9,
    ) -> None:
        if flat.device.type != "cpu" or flat.grad is None or not flat.is_contiguous():
            raise ValueError(
                f"invalid flat: expected one contiguous CPU tensor with .grad set, received a tensor on {flat.device} "
                f"(contiguous: {flat.is_contiguous()}, grad set: {flat.grad is not None}); use torch.optim.LBFGS otherwise"
            )
        self.flat = flat
        self.x = flat.detach().numpy()
        self.gradient = flat.grad.numpy()
        self.lr = float(lr)
        self.max_iter = max_iter
        self.max_eval = max_eval if max_eval is not None else max_iter * 5 // 4
        self.history_size = history_size
        self.tolerance_grad = tolerance_grad
        self.tolerance_change = tolerance_change
        self.reset()

    def reset(self) -> None:
        """Forget the curvature history, as after a change of the objective (a grid update)."""
        self.iterations = 0
        self.steps: list[np.ndarray] = []
        self.changes: list[np.ndarray] = []
        self.inverse_curvatures: list[float] = []
        self.scaling = 1.0
        self.direction: np.ndarray | None = None
        self.step_length = 0.0
        self.previous_gradient: np.ndarray | None = None

    def _evaluate(self, closure: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, float, np.ndarray]:
        with torch.enable_grad():
            loss = closure()
        return loss, float(loss.detach()), self.gradient.copy()

    def _direction(self, gradient: np.ndarray) -> np.ndarray:
        """Return ``-H g`` by the two-loop recursion over the stored pairs."""
        q = -gradient
        alphas = []
        for s, y, rho in zip(reversed(self.steps), reversed(self.changes), reversed(self.inverse_curvatures)):
            alpha = float(s @ q) * rho
            q -= alpha * y
            alphas.append(alpha)
        r = q * self.scaling
        for s, y, rho, alpha in zip(self.steps, self.changes, self.inverse_curvatures, reversed(alphas)):
            beta = float(y @ r) * rho
            r += (alpha - beta) * s
        return r

    def _update_history(self, gradient: np.ndarray) -> None:
        change = gradient - self.previous_gradient
        step = self.direction * self.step_length
        curvature = float(change @ step)
        if curvature > CURVATURE_MIN:
            if len(self.steps) == self.history_size:
                del self.steps[0], self.changes[0], self.inverse_curvatures[0]
            self.steps.append(step)
            self.changes.append(change)
            self.inverse_curvatures.append(1.0 / curvature)
            self.scaling = curvature / float(change @ change)

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run up to ``max_iter`` iterations; return the loss at the parameters before the step.

        Products that overflow (gradients near 1e200) give inf or NaN
        without a numpy warning, and the caller's check of the loss detects them.
        """
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._step(closure)

    def _step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        first_loss, loss, gradient = self._evaluate(closure)
        evaluations = 1
        if float(np.abs(gradient).max()) <= self.tolerance_grad:
            return first_loss
        for iteration in range(1, self.max_iter + 1):
            self.iterations += 1
            if self.iterations == 1:
                direction = -gradient
                self.steps, self.changes, self.inverse_curvatures, self.scaling = [], [], [], 1.0
            else:
                self._update_history(gradient)
                direction = self._direction(gradient)
            self.previous_gradient = gradient
            previous_loss = loss
            if self.iterations == 1:
                trial = min(1.0, 1.0 / float(np.abs(gradient).sum())) * self.lr
            else:
                trial = self.lr
            self.direction, self.step_length = direction, trial
            slope = float(gradient @ direction)
            if slope > -self.tolerance_change:
                break
            loss, gradient, self.step_length, used = self._line_search(closure, direction, trial, loss, gradient, slope)
            evaluations += used
            if iteration == self.max_iter or evaluations >= self.max_eval:
                break
            if float(np.abs(gradient).max()) <= self.tolerance_grad:
                break
            if float(np.abs(direction).max()) * abs(self.step_length) <= self.tolerance_change:
                break
            if abs(loss - previous_loss) < self.tolerance_change:
                break
        return first_loss

    def _line_search(self, closure, direction, trial, loss, gradient, slope):
        """Find a step along ``direction`` that meets the strong Wolfe conditions; leave the parameters there.

        Returns the loss and gradient at the step, the step and the number
        of evaluations. After 25 evaluations the best point of the bracket
        is taken.
        """
        start = self.x.copy()
        largest = float(np.abs(direction).max())

        def at(t: float) -> tuple[float, np.ndarray, float]:
            np.add(start, t * direction, out=self.x)
            _, value, grad = self._evaluate(closure)
            return value, grad, float(grad @ direction)

        sufficient = WOLFE_DECREASE * slope
        curvature = -WOLFE_CURVATURE * slope
        t_new = trial
        f_new, g_new, s_new = at(t_new)
        evaluations = 1
        t_old, f_old, g_old, s_old = 0.0, loss, gradient, slope
        # Bracketing: grow the step until an interval that contains a Wolfe point is known.
        bracket = None
        done = False
        tries = 0
        while tries < LINE_SEARCH_EVALS:
            if f_new > loss + sufficient * t_new or (tries > 1 and f_new >= f_old):
                bracket = [[t_old, f_old, g_old, s_old], [t_new, f_new, g_new, s_new]]
                break
            if abs(s_new) <= curvature:
                bracket = [[t_new, f_new, g_new, s_new]]
                done = True
                break
            if s_new >= 0:
                bracket = [[t_old, f_old, g_old, s_old], [t_new, f_new, g_new, s_new]]
                break
            low, high = t_new + 0.01 * (t_new - t_old), t_new * 10.0
            t_next = _cubic_minimiser(t_old, f_old, s_old, t_new, f_new, s_new, low, high)
            t_old, f_old, g_old, s_old = t_new, f_new, g_new, s_new
            t_new = t_next
            f_new, g_new, s_new = at(t_new)
            evaluations += 1
            tries += 1
        if tries == LINE_SEARCH_EVALS:
            bracket = [[0.0, loss, gradient, slope], [t_new, f_new, g_new, s_new]]

        # Zoom: shrink the bracket; `lo` is the end with the lower loss.
        lo, hi = (0, 1) if bracket[0][1] <= bracket[-1][1] else (1, 0)
        stalled = False
        while not done and tries < LINE_SEARCH_EVALS:
            left, right = bracket[0][0], bracket[1][0]
            if abs(right - left) * largest < LINE_SEARCH_TOLERANCE:
                break
            low, high = min(left, right), max(left, right)
            t = _cubic_minimiser(*bracket[0][:2], bracket[0][3], *bracket[1][:2], bracket[1][3], low, high)
            # Keep trial steps at least a tenth of the bracket away from its ends.
            margin = 0.1 * (high - low)
            if min(high - t, t - low) < margin:
                if stalled or t >= high or t <= low:
                    t = high - margin if abs(t - high) < abs(t - low) else low + margin
                    stalled = False
                else:
                    stalled = True
            else:
                stalled = False
            f_t, g_t, s_t = at(t)
            evaluations += 1
            tries += 1
            if f_t > loss + sufficient * t or f_t >= bracket[lo][1]:
                bracket[hi] = [t, f_t, g_t, s_t]
                lo, hi = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
            else:
                if abs(s_t) <= curvature:
                    done = True
                elif s_t * (bracket[hi][0] - bracket[lo][0]) >= 0:
                    bracket[hi] = bracket[lo]
                bracket[lo] = [t, f_t, g_t, s_t]
        t, f_best, g_best, _ = bracket[lo]
        np.add(start, t * direction, out=self.x)
        return f_best, g_best, t, evaluations
