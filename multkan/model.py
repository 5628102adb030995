"""The user-facing MultKAN module."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import networkx as nx
import torch
from torch import nn

from .compile import CompileOptions, compile_graph, write_back
from .errors import GridWarning, InvalidDataError, InvalidParameterError, check_device, invalid_parameter, is_integer, user_stacklevel
from .graph import EdgeId, build_graph, graph_layers
from .nn._layer import BASE_FUNCTIONS, MultKANLayer
from .splines import extend_grid, fit_coefficients, grid_from_samples, uniform_grid

__all__ = ["MultKAN", "check_input"]


def check_input(x: Any, n_in: int, dtype: torch.dtype, *, name: str = "x") -> tuple[torch.Tensor, tuple[int, ...]]:
    """Validate model input and flatten it to (batch, n_in).

    The rule, as for ``torch.nn.Linear``: any leading dimensions are allowed
    and the last one must equal the number of inputs. Real inputs of any
    dtype (numpy arrays, integer tensors, float64) are converted to the
    model's dtype; complex inputs are rejected.

    Returns
    -------
    x : tensor of shape (batch, n_in)
    leading : tuple of int
        Leading dimensions, to restore on the output.
    """
    if type(x) is torch.Tensor and x.dtype == dtype and x.ndim == 2 and x.shape[1] == n_in:
        # The common case, checked first because the training loop calls it on every evaluation.
        return x, (x.shape[0],)
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as error:
            raise InvalidDataError(f"invalid {name}: expected an array of shape (batch, {n_in}), received {type(x).__name__} ({error})") from error
    if x.is_complex():
        raise InvalidDataError(f"invalid {name}: expected real numbers, received dtype {x.dtype}")
    if x.ndim == 0 or x.shape[-1] != n_in:
        raise InvalidDataError(
            f"invalid {name}: the model has {n_in} inputs, so the last dimension must be {n_in}, "
            f"received shape {tuple(x.shape)}. Pass an array of shape (batch, {n_in})."
        )
    leading = tuple(x.shape[:-1])
    return x.reshape(-1, n_in).to(dtype), leading


class MultKAN(nn.Module):
    """A Kolmogorov-Arnold network with sum and multiplication nodes.

    Parameters
    ----------
    width : sequence
        Layer sizes in pykan notation: ``[2, 5, 1]`` or ``[2, [0, 2], 1]``
        (a hidden layer of 0 sum nodes and 2 mult nodes).
    grid : int
        Grid intervals ``G`` of every spline.
    k : int
        Spline order.
    mult_arity : int or sequence
        Arity of the mult nodes: one int, or per layer an int or a list.
    grid_range : (float, float)
        Input range covered by the initial grids.
    grid_eps : float in [0, 1]
        Default mix of uniform (1) and quantile (0) knots for grid updates.
    base_fun : {"silu", "identity", "zero"}
        Base function ``b`` of the edges.
    noise_scale : float
        Scale of the random initial spline coefficients.
    scale_base_mu, scale_base_sigma : float
        Initial base weights are ``(mu + sigma U(-1, 1)) / sqrt(n_in)``.
    affine_trainable : bool
        Whether node scales and biases are trained.
    sp_trainable, sb_trainable : bool
        Whether the spline scales and the base scales of the edges are
        trained. ``False`` for both keeps what each edge contributes per
        unit of its spline, as in pykan's continual-learning example.
    input_names, output_names : sequence of str, optional
        Variable names used in formulas and plots.
    seed : int
        Seed of the local generator for initial parameters; the global RNG
        state is not touched.
    dtype : torch.dtype, optional
        Defaults to ``torch.get_default_dtype()``.
    device : str or torch.device, optional

    Examples
    --------
    >>> import torch
    >>> model = MultKAN(width=[2, 5, 1], grid=5, k=3, seed=0)
    >>> model(torch.zeros(4, 2)).shape
    torch.Size([4, 1])
    """

    def __init__(
        self,
        width: Sequence,
        grid: int = 3,
        k: int = 3,
        mult_arity: int | Sequence = 2,
        *,
        grid_range: Sequence[float] = (-1.0, 1.0),
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
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        graph = build_graph(width, mult_arity, input_names=input_names, output_names=output_names)
        options = _make_options(
            grid, k, grid_range, base_fun, noise_scale, scale_base_mu, scale_base_sigma, affine_trainable, sp_trainable, sb_trainable
        )
        super().__init__()
        self._setup(graph, options, grid_eps=grid_eps, seed=seed, dtype=dtype, device=device)

    @classmethod
    def from_graph(
        cls,
        graph: nx.DiGraph,
        *,
        grid: int = 3,
        k: int = 3,
        grid_range: Sequence[float] = (-1.0, 1.0),
        grid_eps: float = 0.02,
        base_fun: str = "silu",
        noise_scale: float = 0.3,
        scale_base_mu: float = 0.0,
        scale_base_sigma: float = 1.0,
        affine_trainable: bool = False,
        sp_trainable: bool = True,
        sb_trainable: bool = True,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        library=None,
    ) -> MultKAN:
        """Compile a graph IR into a model.

        Parameters the graph carries (coefficients, grids, symbolic edges,
        node affines) are used; the keyword arguments fill in the rest.
        """
        options = _make_options(
            grid, k, grid_range, base_fun, noise_scale, scale_base_mu, scale_base_sigma, affine_trainable, sp_trainable, sb_trainable
        )
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model._setup(copy.deepcopy(graph), options, grid_eps=grid_eps, seed=seed, dtype=dtype, device=device, library=library)
        return model

    def _setup(self, graph, options, *, grid_eps, seed, dtype, device, library=None) -> None:
        if not 0.0 <= grid_eps <= 1.0:
            raise invalid_parameter("grid_eps", "a number in [0, 1]", grid_eps)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise invalid_parameter("seed", "an int", seed)
        dtype = dtype or torch.get_default_dtype()
        if dtype not in (torch.float32, torch.float64):
            raise invalid_parameter("dtype", "torch.float32 or torch.float64", dtype)
        check_device(device)

        self.options = options
        self.train_input: torch.Tensor | None = None
        self.grid_eps = grid_eps
        self.seed = seed
        self._library = library
        self.graph = graph
        generator = torch.Generator().manual_seed(seed)
        layers = compile_graph(graph, options, generator=generator, dtype=dtype, resolve_symbolic=self._resolve_symbolic)
        self.layers = nn.ModuleList(layers)
        self.to(dtype=dtype, device=device)
        # Also runs when the model is a submodule of the module being loaded.
        self.register_load_state_dict_post_hook(_resolve_loaded_symbolic)

    # Structure.

    @property
    def library(self):
        """The symbolic function library used for symbolic edges."""
        if self._library is None:
            from .symbolic import default_library

            self._library = default_library()
        return self._library

    def _resolve_symbolic(self, name: str):
        return self.library[name].safe_torch_fn

    def __getstate__(self) -> dict:
        """Return a picklable state: symbolic functions are stored by name and re-resolved on load."""
        from .symbolic import default_library

        state = self.__dict__.copy()
        if self._library is not None:
            defaults = default_library()
            custom = [name for name in self._library if name not in defaults or self._library[name] is not defaults[name]]
            if custom:
                raise TypeError(
                    f"cannot pickle a MultKAN whose library has custom entries {custom}; "
                    "use model.save(path), which stores them as sympy expressions"
                )
            state["_library"] = None
        modules = dict(state["_modules"])
        layers = []
        for layer in modules["layers"]:
            stripped = copy.copy(layer)
            stripped.symbolic_functions = {}
            stripped._groups = None
            layers.append(stripped)
        modules["layers"] = nn.ModuleList(layers)
        state["_modules"] = modules
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for layer in self.layers:
            layer.symbolic_functions = {name: self._resolve_symbolic(name) for name in set(layer.symbolic_names.values())}

    @property
    def width(self) -> list:
        """Layer sizes in pykan notation, ``[n]`` or ``[n_sum, n_mult]`` per layer."""
        layers = graph_layers(self.graph)
        return [len(layer.nodes) if not layer.operands else [layer.n_sum, len(layer.operands)] for layer in layers]

    @property
    def mult_arity(self) -> list[list[int]]:
        """Arity of every mult node, one list per layer."""
        return [[len(o) for o in layer.operands] for layer in graph_layers(self.graph)]

    @property
    def n_inputs(self) -> int:
        return self.layers[0].n_in

    @property
    def n_outputs(self) -> int:
        return self.layers[-1].n_out

    @property
    def input_names(self) -> list[str]:
        return [self.graph.nodes[n]["name"] for n in graph_layers(self.graph)[0].nodes]

    @property
    def output_names(self) -> list[str]:
        return [self.graph.nodes[n]["name"] for n in graph_layers(self.graph)[-1].nodes]

    @property
    def grid_size(self) -> int:
        return self.options.grid_size

    @property
    def k(self) -> int:
        return self.options.k

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].coef.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].coef.device

    def to_graph(self) -> nx.DiGraph:
        """Return a copy of the graph IR holding the current parameters."""
        return write_back(self.graph, list(self.layers))

    def copy(self) -> MultKAN:
        """Return an independent deep copy."""
        return copy.deepcopy(self)

    def edge(self, edge: EdgeId | Sequence[int]) -> EdgeId:
        """Validate an edge address ``(layer, source, target)`` and return it as an :class:`EdgeId`."""
        if not isinstance(edge, Sequence) or len(edge) != 3 or not all(isinstance(v, int) for v in edge):
            raise invalid_parameter("edge", "a triple (layer, source, target) of ints", edge)
        layer, source, target = edge
        if not 0 <= layer < len(self.layers):
            raise invalid_parameter("edge layer", f"0 <= layer < {len(self.layers)}", layer)
        compiled = self.layers[layer]
        if not 0 <= source < compiled.n_in:
            raise invalid_parameter("edge source", f"0 <= source < {compiled.n_in} in layer {layer}", source)
        if not 0 <= target < compiled.n_sub:
            raise invalid_parameter("edge target", f"0 <= target < {compiled.n_sub} in layer {layer}", target)
        return EdgeId(layer, source, target)

    # Evaluation.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the network.

        Parameters
        ----------
        x : tensor of shape (*, n_inputs)

        Returns
        -------
        tensor of shape (*, n_outputs)
        """
        values, leading = check_input(x, self.n_inputs, self.dtype)
        for layer in self.layers:
            values = layer(values)
        # The fused layers return batch-last memory, a transposed view for several outputs.
        values = values.contiguous()
        return values if len(leading) == 1 else values.reshape(*leading, self.n_outputs)

    def activations(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Return per-layer statistics for regularisation, attribution and plots.

        An explicit call: the forward pass stores nothing.

        Returns
        -------
        list of dict, one per layer, with
            ``inputs`` (batch, n_in), ``edges`` (batch, n_in, n_sub) the value of
            every edge function, ``sums`` (batch, n_sub) and ``outputs``
            (batch, n_out).
        """
        values, _ = check_input(x, self.n_inputs, self.dtype)
        records = []
        for layer in self.layers:
            edges = layer.edge_values(values)
            sums = edges.sum(dim=1)
            outputs = layer.combine(sums)
            records.append({"inputs": values, "edges": edges, "sums": sums, "outputs": outputs})
            values = outputs
        return records

    def layer_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the input of every layer, each of shape (batch, n_in)."""
        values, _ = check_input(x, self.n_inputs, self.dtype)
        inputs = []
        for layer in self.layers:
            inputs.append(values)
            values = layer(values)
        return inputs

    # Grids.

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, *, grid_eps: float | None = None, margin: float = 0.0) -> MultKAN:
        """Move every grid to cover the layer inputs produced by ``x``, in place.

        Layer by layer, knots are placed with :func:`multkan.splines.grid_from_samples`
        and coefficients are refitted by least squares, so each spline keeps
        its shape on the samples. Returns the model.
        """
        grid_eps = self.grid_eps if grid_eps is None else grid_eps
        values, _ = check_input(x, self.n_inputs, self.dtype)
        last = len(self.layers) - 1
        for position, layer in enumerate(self.layers):
            new_grid = grid_from_samples(values, layer.grid_size, layer.k, grid_eps=grid_eps, margin=margin)
            layer.update_grid(values, new_grid, uniform=grid_eps == 1.0)
            if position < last:
                values = _forward_in_chunks(layer, values)
        return self

    @torch.no_grad()
    def refine(self, new_grid: int, x: torch.Tensor | None = None) -> MultKAN:
        """Return a copy on a grid of ``new_grid`` intervals carrying the learned functions.

        Without ``x``, when ``new_grid`` is a multiple of the current grid
        size every interval is split into equal parts, so the old knots are
        kept; otherwise the new grid is uniform over the old grid's range.
        With ``x`` the knots follow the layer inputs as in :meth:`update_grid`.
        Coefficients are fitted by least squares to the old splines on dense
        samples: of the layer inputs' range with ``x``, and of the old
        grid's range without it. Inputs beyond that range (a layer trained
        with ``update_grid=False``, or trained on after its last grid
        update, whose inputs left its grid) then get a different function.
        With ``x`` the new knots do not contain the old ones, so the old
        splines are matched only approximately. A :class:`GridWarning` is
        raised when the outputs on ``x`` (or, without it, on the stored
        training inputs :attr:`train_input`) change by more than
        ``REFINE_CHANGE`` (1e-3) of their standard deviation.
        """
        if not isinstance(new_grid, int) or isinstance(new_grid, bool) or new_grid < 1:
            raise invalid_parameter("new_grid", "an integer >= 1", new_grid)

        refined = self.copy()
        refined.options = _replace(self.options, grid_size=new_grid)
        inputs = None if x is None else self.layer_inputs(x)
        for position, layer in enumerate(refined.layers):
            k = layer.k
            if inputs is None and new_grid % layer.grid_size == 0:
                grid = _subdivide(layer.grid, k, new_grid // layer.grid_size)
                uniform = layer.uniform
            elif inputs is None:
                grid = uniform_grid(layer.grid[:, k], layer.grid[:, -k - 1], new_grid, k, dtype=layer.grid.dtype, device=layer.grid.device)
                uniform = True
            else:
                grid = grid_from_samples(inputs[position], new_grid, k, grid_eps=self.grid_eps)
                uniform = self.grid_eps == 1.0
            if inputs is None:
                low, high = layer.grid[:, k], layer.grid[:, -k - 1]
            else:
                low, high = inputs[position].amin(dim=0), inputs[position].amax(dim=0)
            fractions = torch.linspace(0, 1, 8 * (new_grid + k) + 1, dtype=layer.grid.dtype, device=layer.grid.device)
            samples = (low[:, None] + (high - low)[:, None] * fractions).T
            # Evenly spaced samples miss intervals of quantile grids that are narrower
            # than their spacing, and the ridge fit then sets the coefficients there to
            # zero. Samples inside every new interval, clamped to the sampled range,
            # constrain every coefficient of the new grid that lies in that range.
            per_interval = _interval_samples(grid, k, max(8, k + 1))
            samples = torch.cat([samples, torch.maximum(torch.minimum(per_interval, high), low)])
            old_values = layer.spline_edge_values(samples)
            layer.grid = grid
            layer.uniform = uniform
            layer.coef = nn.Parameter(fit_coefficients(samples, old_values, grid, k))
        if x is not None:
            _warn_refine_change(self, refined, x, from_x=True)
        elif self.train_input is not None:
            _warn_refine_change(self, refined, self.train_input, from_x=False)
        return refined

    # Training.

    def fit(self, dataset: dict, **options: Any):
        """Train the model in place; see :func:`multkan.train.fit` for the options.

        The training inputs are kept in :attr:`train_input` so that pruning,
        attribution and symbolic fitting can default to them.
        """
        from .train import fit

        return fit(self, dataset, **options)

    # Symbolic regression, implemented in multkan.symbolic.

    def suggest_symbolic(self, edge: EdgeId | Sequence[int] | int, *arguments: Any, **options: Any):
        """Rank library functions for one edge; see :func:`multkan.symbolic.suggest_symbolic`.

        Call it as ``suggest_symbolic(edge, lib=None, ...)`` or in pykan's form
        ``suggest_symbolic(l, i, j, lib=...)``.
        """
        from .symbolic.edges import suggest_symbolic

        if is_integer(edge):
            if len(arguments) != 2 or not all(is_integer(a) for a in arguments):
                raise invalid_parameter(
                    "suggest_symbolic arguments", "an edge such as (0, 1, 0) then lib, or pykan's l, i, j with lib as a keyword", (edge, *arguments)
                )
            edge, arguments = (edge, *arguments), ()
        if len(arguments) > 1:
            raise invalid_parameter("suggest_symbolic arguments", "(edge, lib) at most, other options as keywords", (edge, *arguments))
        lib = arguments[0] if arguments else options.pop("lib", None)
        return suggest_symbolic(self, edge, lib, **options)

    def fix_symbolic(self, edge: EdgeId | Sequence[int] | int, name: str | int, *arguments: Any, fit_params: bool = True, **options: Any):
        """Make one edge symbolic; see :func:`multkan.symbolic.fix_symbolic`. Returns the fit's r2 or None.

        pykan's form ``fix_symbolic(l, i, j, fun_name, fit_params_bool)`` is
        accepted too, with ``fit_params_bool`` also as a keyword.
        """
        from .symbolic.edges import fix_symbolic

        if isinstance(edge, int) and isinstance(name, int):
            if len(arguments) < 2 or not isinstance(arguments[1], str):
                raise invalid_parameter(
                    "fix_symbolic arguments", "(edge, name) such as ((0, 1, 0), 'sin'), or pykan's (l, i, j, fun_name)", (edge, name, *arguments)
                )
            edge, name, arguments = (edge, name, arguments[0]), arguments[1], arguments[2:]
        if len(arguments) > 1:
            raise invalid_parameter("fix_symbolic arguments", "(edge, name, fit_params) at most", (edge, name, *arguments))
        if arguments:
            fit_params = bool(arguments[0])
        if "fit_params_bool" in options:
            fit_params = bool(options.pop("fit_params_bool"))
        return fix_symbolic(self, edge, name, fit_params=fit_params, **options)

    def unfix_symbolic(self, edge: EdgeId | Sequence[int] | int, *indices: int) -> None:
        """Turn a symbolic edge back into its spline; pykan's ``unfix_symbolic(l, i, j)`` is accepted too."""
        from .symbolic.edges import unfix_symbolic

        if indices:
            if not isinstance(edge, int) or len(indices) != 2:
                raise invalid_parameter("unfix_symbolic arguments", "an edge (l, i, j), or pykan's l, i, j", (edge, *indices))
            edge = (edge, *indices)
        unfix_symbolic(self, edge)

    def auto_symbolic(self, lib=None, **options: Any):
        """Snap every spline edge to its best library function; see :func:`multkan.symbolic.auto_symbolic`."""
        from .symbolic.edges import auto_symbolic

        return auto_symbolic(self, lib, **options)

    def symbolic_formula(self, var_names: Sequence[str] | None = None, **options: Any):
        """Return one sympy expression per output; see :func:`multkan.symbolic.symbolic_formula`."""
        from .symbolic.formula import symbolic_formula

        return symbolic_formula(self, var_names, **options)

    def snap_constants(self, dataset: dict, **options: Any):
        """Snap symbolic parameters to simple constants; see :func:`multkan.symbolic.snap_constants`."""
        from .symbolic.formula import snap_constants

        return snap_constants(self, dataset, **options)

    # Attribution and pruning, implemented in multkan.analysis.

    def _default_inputs(self, x: torch.Tensor | None, purpose: str) -> torch.Tensor:
        if x is not None:
            return x
        if getattr(self, "train_input", None) is None:
            from .errors import InvalidDataError

            raise InvalidDataError(f"{purpose} needs inputs: pass x, or call fit() first so the training inputs are stored")
        return self.train_input.to(self.device)

    def attribution(self, x: torch.Tensor | None = None):
        """Return edge, node and input attribution scores; see :func:`multkan.analysis.attribution`."""
        from .analysis import attribution

        return attribution(self, self._default_inputs(x, "attribution"))

    def attribute(self, x: torch.Tensor | None = None):
        """pykan's name for :meth:`attribution`. Where pykan code reads ``model.feature_score`` afterwards, call ``model.feature_score()``."""
        return self.attribution(x)

    def feature_score(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """Return one importance score per input, shape (n_inputs,)."""
        from .analysis import feature_score

        return feature_score(self, self._default_inputs(x, "feature_score"))

    def prune(self, node_th: float = 1e-2, edge_th: float = 3e-2, x: torch.Tensor | None = None) -> MultKAN:
        """Return a pruned copy; see :func:`multkan.analysis.prune`. The model itself is unchanged."""
        from .analysis import prune

        from .analysis.pruning import _check_threshold

        # The thresholds first, so a bad value is named even when no data are at hand.
        _check_threshold("node_th", node_th)
        _check_threshold("edge_th", edge_th)
        return prune(self, self._default_inputs(x, "prune"), node_th=node_th, edge_th=edge_th)

    def prune_edge(self, edge: EdgeId | Sequence[int]) -> MultKAN:
        """Return a copy with the function edge ``(layer, source, target)`` removed."""
        from .analysis import prune_edge

        return prune_edge(self, self.edge(edge))

    def prune_node(self, node: str | Sequence[int]) -> MultKAN:
        """Return a copy without a hidden node, given by id or ``(layer, index)``."""
        from .analysis import prune_node

        return prune_node(self, node)

    def prune_input(
        self, inputs: int | str | Sequence[int | str] | None = None, *, threshold: float | None = None, x: torch.Tensor | None = None
    ) -> MultKAN:
        """Return a copy without some inputs: the given ones (indices or names), or the weak ones.

        With ``threshold`` instead of ``inputs``, an input is removed when its
        :meth:`feature_score` on ``x`` (the training inputs by default) is
        below ``threshold`` times the largest input's score. Unlike pykan's
        threshold, which is in the output's units, this one is relative.

        When ``x`` is given or the model has stored training inputs, each
        removed edge's mean over them is added to its target's bias (see
        :func:`multkan.analysis.prune_input`), so the outputs keep their level.
        """
        from .analysis import prune_input
        from .analysis.pruning import _check_threshold

        if x is None and getattr(self, "train_input", None) is not None:
            x = self.train_input.to(self.device)
        if (inputs is None) == (threshold is None):
            raise invalid_parameter("inputs and threshold", "exactly one of them", {"inputs": inputs, "threshold": threshold})
        if threshold is not None:
            _check_threshold("threshold", threshold)
            scores = self.feature_score(self._default_inputs(x, "prune_input(threshold=...)"))
            inputs = [i for i, score in enumerate(scores.tolist()) if score < threshold * float(scores.max())]
            if not inputs:
                return self.copy()
            if len(inputs) == self.n_inputs:
                raise invalid_parameter("threshold", f"a value that keeps at least one input (scores {scores.tolist()})", threshold)
        return prune_input(self, inputs, x)

    # Files and figures.

    def save(self, path) -> None:
        """Save structure and parameters to one safetensors file (no pickle); see :func:`multkan.io.save`."""
        from .io import save

        save(self, path)

    @classmethod
    def load(cls, path, *, device: str | torch.device | None = None) -> MultKAN:
        """Load a model written by :meth:`save`."""
        from .io import load

        return load(path, device=device)

    def plot(self, x: torch.Tensor | None = None, **options: Any):
        """Draw the network and return a matplotlib Figure; see :func:`multkan.plot.plot_network`."""
        import inspect

        from .plot import plot_network

        parameters = inspect.signature(plot_network).parameters
        accepted = [name for name, p in parameters.items() if name not in ("model", "x") and p.kind == p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(accepted))
        if unknown and accepted:
            # pykan's beta, in_vars, folder and sample have no counterpart here.
            raise invalid_parameter("plot options", f"keywords among {accepted}", unknown)
        return plot_network(self, x if x is not None else getattr(self, "train_input", None), **options)


# refine warns when the refined model's outputs on x (or the stored training
# inputs) move by more than this share of the outputs' spread.
REFINE_CHANGE = 1e-3


def _warn_refine_change(model: MultKAN, refined: MultKAN, inputs: torch.Tensor, *, from_x: bool) -> None:
    """Warn when ``refined`` computes other outputs than ``model`` on ``inputs`` (the refine call's ``x`` when ``from_x``, else the stored training inputs)."""
    inputs = inputs.to(model.device, model.dtype)
    with torch.no_grad():
        before, after = model(inputs), refined(inputs)
        spread = before.std(dim=0).clamp_min(torch.finfo(before.dtype).tiny) if before.shape[0] > 1 else before.abs().clamp_min(1.0)[0]
        change = float(((after - before).abs() / spread).max()) if before.numel() else 0.0
        if not change > REFINE_CHANGE:
            return
        outside = []
        for position, values in enumerate(model.layer_inputs(inputs)):
            grid, k = model.layers[position].grid, model.layers[position].k
            low, high = values.amin(dim=0), values.amax(dim=0)
            if bool(((low < grid[:, k]) | (high > grid[:, -k - 1])).any()):
                outside.append(f"layer {position} (inputs in [{float(low.min()):.3g}, {float(high.max()):.3g}], grid [{float(grid[:, k].min()):.3g}, {float(grid[:, -k - 1].max()):.3g}])")
    where = "; inputs leave the grid in " + ", ".join(outside) if outside else ""
    if from_x:
        advice = (
            "The new knots follow x and do not contain the old ones, so the old splines are matched only approximately. "
            "Train the refined model again (fit) to recover the fit"
        )
    else:
        advice = (
            "Without x the new grid keeps the old grid's range, and the splines beyond it are lost. "
            "Pass the inputs, model.refine(new_grid, x), to place the new grid on them, then train the refined model again"
        )
    rows = "x" if from_x else "the training inputs"
    warnings.warn(
        f"refine changed the outputs on {rows} by up to {change:.2g} of their standard deviation{where}. {advice}",
        GridWarning,
        stacklevel=user_stacklevel(),
    )


def _subdivide(grid: torch.Tensor, k: int, factor: int) -> torch.Tensor:
    """Split every interior interval of ``grid`` into ``factor`` equal parts."""
    interior = grid[:, k : grid.shape[1] - k]
    fractions = torch.arange(factor, dtype=grid.dtype, device=grid.device) / factor
    starts, widths = interior[:, :-1, None], interior.diff(dim=1)[:, :, None]
    split = (starts + widths * fractions).reshape(grid.shape[0], -1)
    return extend_grid(torch.cat([split, interior[:, -1:]], dim=1), k)


def _interval_samples(grid: torch.Tensor, k: int, per_interval: int) -> torch.Tensor:
    """Return ``per_interval`` evenly spaced points in every interior interval of ``grid``, shape (n, n_in)."""
    interior = grid[:, k : grid.shape[1] - k]
    fractions = torch.arange(per_interval, dtype=grid.dtype, device=grid.device) / per_interval
    starts, widths = interior[:, :-1, None], interior.diff(dim=1)[:, :, None]
    points = (starts + widths * fractions).reshape(grid.shape[0], -1)
    return torch.cat([points, interior[:, -1:]], dim=1).T


def _make_options(
    grid, k, grid_range, base_fun, noise_scale, scale_base_mu, scale_base_sigma, affine_trainable, sp_trainable=True, sb_trainable=True
) -> CompileOptions:
    if not isinstance(grid, int) or isinstance(grid, bool) or grid < 1:
        raise invalid_parameter("grid", "an integer >= 1", grid)
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise invalid_parameter("k", "an integer >= 0", k)
    grid_range = tuple(float(v) for v in grid_range)
    if len(grid_range) != 2 or not grid_range[0] < grid_range[1]:
        raise invalid_parameter("grid_range", "a pair (low, high) with low < high", grid_range)
    if base_fun not in BASE_FUNCTIONS:
        raise invalid_parameter("base_fun", f"one of {sorted(BASE_FUNCTIONS)}", base_fun)
    return CompileOptions(
        grid_size=grid,
        k=k,
        grid_range=grid_range,
        base_fun=base_fun,
        noise_scale=noise_scale,
        scale_base_mu=scale_base_mu,
        scale_base_sigma=scale_base_sigma,
        affine_trainable=bool(affine_trainable),
        sp_trainable=bool(sp_trainable),
        sb_trainable=bool(sb_trainable),
    )


def _replace(options: CompileOptions, **changes) -> CompileOptions:
    from dataclasses import replace

    return replace(options, **changes)


def _resolve_loaded_symbolic(model: MultKAN, incompatible_keys) -> None:
    """After ``load_state_dict``, look up the function of every symbolic edge in the model's library.

    The state contains each edge's function by name (see
    :meth:`MultKANLayer.get_extra_state`). Raises
    :class:`~multkan.errors.InvalidParameterError` when a name is not in
    the library or the symbolic edges disagree with ``symbolic_mask``.
    """
    if incompatible_keys.missing_keys:
        # torch raises "Missing key(s)" with strict=True; without it, the caller accepted a partial state.
        return
    for position, layer in enumerate(model.layers):
        if getattr(layer, "_load_failed", False):
            # A size mismatch in this layer, which torch reports once the hooks have run.
            continue
        unknown = sorted({name for name in layer.symbolic_names.values() if name not in model.library})
        if unknown:
            raise InvalidParameterError(
                f"invalid state_dict: layer {position} has symbolic edges with functions {unknown} that are not in "
                "model.library; add them with model.library.add(...) and load the state again"
            )
        masked = {tuple(index) for index in torch.nonzero(layer.symbolic_mask).tolist()}
        if masked != set(layer.symbolic_names):
            raise InvalidParameterError(
                f"invalid state_dict: in layer {position} the symbolic edges {sorted(layer.symbolic_names)} "
                f"differ from those of the symbolic_mask tensor {sorted(masked)}"
            )
        layer.symbolic_functions = {name: model._resolve_symbolic(name) for name in set(layer.symbolic_names.values())}


# Bytes of basis values one chunk of a grid update's forward pass may hold.
GRID_UPDATE_BYTES = 32 * 2**20


def _forward_in_chunks(layer: MultKANLayer, values: torch.Tensor) -> torch.Tensor:
    """Return ``layer(values)``, computed on chunks of rows whose basis takes about GRID_UPDATE_BYTES.

    After a grid update the knots are unequally spaced, so the basis takes
    the dense recursion over all knots. On a [400, 16] layer with grid 15
    and k 5, the 4096 rows of a grid update took 450 MiB in one pass.
    """
    per_row = layer.n_in * layer.grid.shape[-1] * values.element_size() * 3
    rows = max(1, GRID_UPDATE_BYTES // per_row)
    if values.shape[0] <= rows:
        return layer(values)
    return torch.cat([layer(values[start : start + rows]) for start in range(0, values.shape[0], rows)])

