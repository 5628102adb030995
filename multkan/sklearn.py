"""A scikit-learn regressor that trains a MultKAN, for use in pipelines, grid searches and cross-validation."""

from __future__ import annotations

import numbers
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .errors import InputScaleWarning, InvalidDataError, InvalidParameterError, SymbolicFitWarning, invalid_parameter, user_stacklevel
from .model import MultKAN
from .names import formula_names

__all__ = ["KANRegressor"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
PREDICT_CHUNK = 4096
SELECTIONS = ("score", "simplest")


# Formulas of at most this many operations get their constants refitted and snapped.
TIDY_MAX_OPERATIONS = 25
# fit warns when the symbolic model's R² on the training data is below this
# and below the spline network's.
WEAK_FORMULA_R2 = 0.99


def _r2(model: MultKAN, inputs: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the coefficient of determination of ``model`` on the rows, averaged over the outputs."""
    with torch.no_grad():
        residual = (model(inputs) - labels).square().sum(dim=0)
    total = (labels - labels.mean(dim=0)).square().sum(dim=0).clamp_min(torch.finfo(labels.dtype).tiny)
    return float((1 - residual / total).mean())


def _tidy_formula(formula: Any, model: MultKAN, inputs: torch.Tensor, labels: torch.Tensor) -> Any:
    """Return ``formula`` with its constants refitted on the training data and snapped where the fit allows.

    Products fitted by a mult node read back with float dust such as
    ``-15.82*x1*(-0.0632*x0 - 1.7e-18) + 1.1e-17``, which becomes ``x0*x1``.
    Longer formulas, and those with spline edges left, are returned as
    they are: refitting one of about 80 operations took 50 s.
    """
    import sympy

    from .symbolic.formula import simplify_constants

    if formula.atoms(sympy.core.function.AppliedUndef) or sympy.count_ops(formula) > TIDY_MAX_OPERATIONS:
        return formula
    symbols = [sympy.Symbol(name, real=True) for name in model.input_names]
    return simplify_constants(formula, symbols, inputs, labels)


class KANRegressor(RegressorMixin, BaseEstimator):
    """Kolmogorov-Arnold network regressor with sum and multiplication nodes.

    ``fit`` builds a :class:`~multkan.model.MultKAN`, trains it on all rows
    of ``X`` and ``y`` with :meth:`MultKAN.fit`, then optionally prunes it
    and snaps its edges to symbolic functions. Training is deterministic
    for a given ``seed``.

    Parameters
    ----------
    width : sequence, optional
        Layer sizes in pykan notation, e.g. ``[2, 5, 1]`` or ``[2, [0, 1], 1]``
        (one mult node). The first entry must equal the number of features
        and the last the number of targets. By default
        ``[n_features, 2 * n_features + 1, n_targets]``, chosen at fit.
    grid : int
        Grid intervals of every spline.
    k : int
        Spline order.
    mult_arity : int or sequence
        Arity of the mult nodes.
    steps : int
        Optimiser steps per training stage.
    lamb : float
        Weight of the sparsity regulariser in the first stage; 0 turns it off.
    update_grid : bool
        Move the spline grids to the training inputs during the first steps.
        With False the grids stay on [-1, 1], so scale the features to that
        range first (for example with ``MinMaxScaler(feature_range=(-1, 1))``).
    opt : {"LBFGS", "Adam", "SGD"}
        Optimiser.
    lr : float
        Learning rate.
    seed : int
        Seed of the initial parameters and of the batch sampler.
    symbolic : bool
        After training, snap every edge to its best library function with
        :meth:`MultKAN.auto_symbolic`, retrain the symbolic parameters for
        ``steps`` steps and store the formula in :attr:`formula_`. A
        :class:`~multkan.SymbolicFitWarning` reports a symbolic model whose
        training R² is below 0.99 and below the spline network's.
    prune : bool
        After training, remove weak nodes and edges with :meth:`MultKAN.prune`
        and retrain for ``steps`` steps without the regulariser.
    dtype : {"float64", "float32"}
        Floating-point precision of the network.
    lib : sequence of str, optional
        Names of the symbolic functions that ``symbolic=True`` tries; the
        model's whole library by default.
    selection : {"score", "simplest"}
        How ``symbolic=True`` picks each edge's function, passed to
        :func:`multkan.symbolic.auto_symbolic`. ``"score"`` takes the best
        ranking score. ``"simplest"`` takes the least complex function whose
        unexplained variance ``1 - r2`` is at most 10 times that of the best
        fit, which prefers ``x`` over a slightly better ``arcsin`` on a
        nearly straight edge.
    device : str or torch.device
        Where the network trains and predicts: ``"cpu"`` or an available
        accelerator such as ``"cuda"``. ``predict`` returns NumPy arrays
        either way.

    Attributes
    ----------
    model_ : MultKAN
        The trained network (pruned and snapped when requested).
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of str
        Feature names seen during fit; defined only when ``X`` has string
        column names.
    n_outputs_ : int
        Number of targets.
    history_ : dict
        Training history per stage: ``"fit"``, then ``"prune"`` and
        ``"symbolic"`` when those run. Each value is the dict returned by
        :meth:`MultKAN.fit`, with ``train_loss`` and ``test_loss`` (RMSE on
        the training rows, because all rows are used for training) and ``reg``.
    formula_ : sympy.Expr or list of sympy.Expr
        The fitted formula when ``symbolic=True``: one expression for 1-D
        ``y``, a list with one per target for 2-D ``y``. Variables are the
        feature names, or ``x0``, ``x1``, ... (column indices) without them.
        An edge that no library function fits stays an unknown function
        ``phi_l_i_j``. Formulas of up to 25 operations have their constants
        refitted on the training data and snapped to simple values where the
        fit stays as good (:func:`multkan.symbolic.simplify_constants`), so
        they can differ from :meth:`predict`, which uses the network, by
        about the fit's error. Reading ``formula_`` raises AttributeError when
        ``symbolic=False``, as for any attribute that fit did not compute.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).uniform(-1, 1, size=(200, 2))
    >>> model = KANRegressor(width=[2, [0, 1], 1], steps=20, update_grid=False).fit(X, X[:, 0] * X[:, 1])
    >>> model.predict(X[:3]).shape
    (3,)
    """

    def __init__(
        self,
        width=None,
        grid=5,
        k=3,
        mult_arity=2,
        steps=50,
        lamb=0.0,
        update_grid=True,
        opt="LBFGS",
        lr=1.0,
        seed=0,
        symbolic=False,
        prune=False,
        dtype="float64",
        lib=None,
        selection="score",
        device="cpu",
    ):
        self.width = width
        self.grid = grid
        self.k = k
        self.mult_arity = mult_arity
        self.steps = steps
        self.lamb = lamb
        self.update_grid = update_grid
        self.opt = opt
        self.lr = lr
        self.seed = seed
        self.symbolic = symbolic
        self.prune = prune
        self.dtype = dtype
        self.lib = lib
        self.selection = selection
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X, y):
        """Train a network on all rows of ``X`` and ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)

        Returns
        -------
        self
        """
        for name in ("symbolic", "prune", "update_grid"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise invalid_parameter(name, "True or False", getattr(self, name))
        if not isinstance(self.selection, str) or self.selection not in SELECTIONS:
            raise invalid_parameter("selection", " or ".join(map(repr, SELECTIONS)), self.selection)
        dtype = self._torch_dtype()
        seed = self._int_seed()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        targets = y.reshape(-1, 1) if y.ndim == 1 else y
        n_features = X.shape[1]
        if self.prune and X.shape[0] < 2:
            # Pruning scores nodes by their standard deviation over the samples.
            raise InvalidDataError(f"invalid X: prune=True needs at least 2 samples, received n_samples={X.shape[0]}. Add samples or set prune=False.")

        width = self._width(n_features, targets.shape[1])
        options = {"grid": self.grid, "k": self.k, "mult_arity": self.mult_arity, "seed": seed, "dtype": dtype, "device": self.device}
        # Built once without names so that a width that does not match X and y is reported as such.
        model = MultKAN(width, **options)
        if model.n_inputs != n_features or model.n_outputs != targets.shape[1]:
            raise InvalidParameterError(
                f"invalid width: expected {n_features} inputs and {targets.shape[1]} outputs to match X and y, "
                f"received {self.width!r} with {model.n_inputs} inputs and {model.n_outputs} outputs"
            )
        model = MultKAN(width, input_names=self._input_names(n_features), **options)

        # torch.tensor copies, so read-only and memory-mapped arrays are accepted without torch's warning.
        inputs = torch.tensor(X, dtype=dtype, device=model.device)
        labels = torch.tensor(targets, dtype=dtype, device=model.device)
        dataset = {"train_input": inputs, "train_label": labels, "test_input": inputs, "test_label": labels}
        training = {"steps": self.steps, "opt": self.opt, "lr": self.lr, "progress": False}

        history = {"fit": model.fit(dataset, lamb=self.lamb, update_grid=self.update_grid, **training)}
        formula = None
        with warnings.catch_warnings():
            # The first fit has warned about the scale of these inputs already.
            warnings.simplefilter("ignore", InputScaleWarning)
            if self.prune:
                model = model.prune()
                history["prune"] = model.fit(dataset, lamb=0.0, update_grid=self.update_grid, **training)
            if self.symbolic:
                # Weak single edges need no warning; the whole formula's fit is checked below.
                spline_r2 = _r2(model, inputs, labels)
                model.auto_symbolic(self.lib, selection=self.selection, warn_weak=False)
                history["symbolic"] = model.fit(dataset, lamb=0.0, update_grid=False, **training)
                symbolic_r2 = _r2(model, inputs, labels)
                if symbolic_r2 < min(WEAK_FORMULA_R2, spline_r2):
                    warnings.warn(
                        f"the symbolic formula fits the training data with R² = {symbolic_r2:.3g}, against {spline_r2:.3g} for the "
                        "spline network before snapping, so formula_ and predict are a poor model. Try more steps, "
                        "update_grid=False, selection='simplest' or another width",
                        SymbolicFitWarning,
                        stacklevel=user_stacklevel(),
                    )
                formulas = [_tidy_formula(f, model, inputs, labels[:, o]) for o, f in enumerate(model.symbolic_formula(numeric_edges="function"))]
                formula = formulas[0] if y.ndim == 1 else formulas

        self.model_ = model
        self.n_outputs_ = targets.shape[1]
        self.history_ = history
        self._formula = formula
        self._one_d_target = y.ndim == 1
        return self

    def predict(self, X):
        """Predict targets for ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of float64, shape (n_samples,) when fit received 1-D ``y``, else (n_samples, n_targets)
        """
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=np.float64)
        chunks = []
        with torch.no_grad():
            for start in range(0, X.shape[0], PREDICT_CHUNK):
                inputs = torch.tensor(X[start : start + PREDICT_CHUNK], dtype=self.model_.dtype, device=self.model_.device)
                chunks.append(self.model_(inputs).cpu().numpy())
        prediction = np.concatenate(chunks).astype(np.float64)
        return prediction[:, 0] if self._one_d_target else prediction

    def __getstate__(self) -> dict:
        # Symbolic edges hold library functions that pickle cannot store, so the
        # network is pickled as the bytes of its safetensors file (see multkan.io).
        state = dict(super().__getstate__())
        if isinstance(state.get("model_"), MultKAN):
            state["model_"] = _model_to_bytes(state["model_"])
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("model_"), bytes):
            state = dict(state, model_=_model_from_bytes(state["model_"]))
        super().__setstate__(state)

    @property
    def formula_(self) -> Any:
        """The fitted sympy formula, set by fit with ``symbolic=True``."""
        check_is_fitted(self)
        if self._formula is None:
            raise AttributeError("formula_ is set only by fit with symbolic=True. Use KANRegressor(symbolic=True) and fit again.")
        return self._formula

    def _torch_dtype(self) -> torch.dtype:
        if self.dtype in (torch.float32, torch.float64):
            return self.dtype
        if isinstance(self.dtype, str) and self.dtype in DTYPES:
            return DTYPES[self.dtype]
        raise invalid_parameter("dtype", "'float64' or 'float32'", self.dtype)

    def _int_seed(self) -> int:
        if isinstance(self.seed, numbers.Integral) and not isinstance(self.seed, (bool, np.bool_)):
            return int(self.seed)
        raise invalid_parameter("seed", "an int", self.seed)

    def _width(self, n_features: int, n_outputs: int) -> list:
        if self.width is None:
            return [n_features, 2 * n_features + 1, n_outputs]
        return self.width

    def _input_names(self, n_features: int) -> list[str]:
        # NOTE: the feature_names_in_ branch is not covered by the tests, because pandas is not a test dependency.
        names = getattr(self, "feature_names_in_", None)
        if names is not None and all(names) and len(set(names)) == len(names):
            return formula_names([str(name) for name in names], stacklevel=3)
        return [f"x{i}" for i in range(n_features)]



def _model_to_bytes(model: MultKAN) -> bytes:
    """Return the contents of the file that :meth:`MultKAN.save` writes for ``model``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        model.save(path)
        return path.read_bytes()


def _model_from_bytes(contents: bytes) -> MultKAN:
    """Rebuild a model from the bytes returned by :func:`_model_to_bytes`."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(contents)
        return MultKAN.load(path)
