"""Compile the graph IR into torch layers, and write trained layers back to it.

Edge parameters travel on the graph as plain lists and floats: a function
edge may carry ``coef`` (G + k floats), ``scale_base`` and ``scale_sp``; a
node of layers 0 .. L-1 may carry ``grid`` (the knots of its outgoing edges,
G + 2k + 1 floats) and ``grid_uniform``. Missing values are initialised
from the seeded generator, so a freshly built graph compiles to a randomly
initialised network.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import networkx as nx
import torch

from .errors import GraphError
from .graph import graph_layers, validate_graph
from .nn._layer import BASE_FUNCTIONS, MultKANLayer, default_grid

__all__ = ["CompileOptions", "compile_graph", "write_back"]


@dataclass(frozen=True)
class CompileOptions:
    """Settings used where the graph carries no parameters.

    Attributes
    ----------
    grid_size, k : int
        Grid intervals and spline order.
    grid_range : (float, float)
        Data range covered by fresh grids.
    base_fun : str
        Name of the base function b(x).
    noise_scale : float
        Standard deviation of fresh spline coefficients, divided by G.
    scale_base_mu, scale_base_sigma : float
        Fresh ``w_b`` is ``(mu + sigma * U(-1, 1)) / sqrt(n_in)``.
    scale_sp : float
        Fresh ``w_s`` is ``scale_sp / sqrt(n_in)``.
    affine_trainable : bool
        Whether node scales and biases are trained.
    sp_trainable, sb_trainable : bool
        Whether the spline scales ``w_s`` and the base scales ``w_b`` are
        trained (pykan's ``sp_trainable`` and ``sb_trainable``).
    """

    grid_size: int = 3
    k: int = 3
    grid_range: tuple[float, float] = (-1.0, 1.0)
    base_fun: str = "silu"
    noise_scale: float = 0.3
    scale_base_mu: float = 0.0
    scale_base_sigma: float = 1.0
    scale_sp: float = 1.0
    affine_trainable: bool = False
    sp_trainable: bool = True
    sb_trainable: bool = True


def compile_graph(
    graph: nx.DiGraph,
    options: CompileOptions,
    *,
    generator: torch.Generator,
    dtype: torch.dtype,
    resolve_symbolic=None,
) -> list[MultKANLayer]:
    """Build one :class:`MultKANLayer` per layer of ``graph``.

    Parameters
    ----------
    graph : networkx.DiGraph
        A valid MultKAN IR.
    options : CompileOptions
    generator : torch.Generator
        CPU generator for fresh parameters; the global RNG is not used.
    dtype : torch.dtype
    resolve_symbolic : callable, optional
        Maps a symbolic function name to its torch function. Needed when the
        graph has symbolic edges.

    Returns
    -------
    list of MultKANLayer
        On the CPU; move them with ``.to``.
    """
    validate_graph(graph)
    if options.base_fun not in BASE_FUNCTIONS:
        raise GraphError(f"invalid base_fun {options.base_fun!r}: expected one of {sorted(BASE_FUNCTIONS)}")

    layers = graph_layers(graph)
    compiled = []
    for position in range(1, len(layers)):
        compiled.append(
            _compile_layer(graph, layers[position - 1], layers[position], options, generator, dtype, resolve_symbolic)
        )
    return compiled


def _fresh_parameters(n_in, n_sub, options, generator, dtype):
    n_basis = options.grid_size + options.k
    noise = torch.randn(n_in, n_sub, n_basis, generator=generator, dtype=torch.float64)
    coef = noise * options.noise_scale / options.grid_size
    uniform = torch.rand(n_in, n_sub, generator=generator, dtype=torch.float64) * 2 - 1
    scale_base = (options.scale_base_mu + options.scale_base_sigma * uniform) / math.sqrt(n_in)
    scale_sp = torch.full((n_in, n_sub), options.scale_sp / math.sqrt(n_in), dtype=torch.float64)
    return coef.to(dtype), scale_base.to(dtype), scale_sp.to(dtype)


def _compile_layer(graph, source_layer, target_layer, options, generator, dtype, resolve_symbolic):
    n_in, n_sub = len(source_layer.nodes), len(target_layer.subnodes)
    coef, scale_base, scale_sp = _fresh_parameters(n_in, n_sub, options, generator, dtype)
    spline_mask = torch.zeros(n_in, n_sub, dtype=dtype)
    symbolic = []

    grid = default_grid(n_in, options.grid_size, options.k, options.grid_range, dtype, "cpu").clone()
    uniform = True
    for i, node in enumerate(source_layer.nodes):
        knots = graph.nodes[node].get("grid")
        if knots is not None:
            if len(knots) != grid.shape[1]:
                raise GraphError(f"invalid grid on node {node!r}: expected {grid.shape[1]} knots, received {len(knots)}")
            grid[i] = torch.tensor(knots, dtype=dtype)
            uniform = uniform and bool(graph.nodes[node].get("grid_uniform", False))

    target_position = {node: j for j, node in enumerate(target_layer.subnodes)}
    for i, source in enumerate(source_layer.nodes):
        for target in graph.successors(source):
            data = graph.edges[source, target]
            if data.get("kind") != "function":
                continue
            j = target_position[target]
            if "coef" in data:
                if len(data["coef"]) != coef.shape[2]:
                    raise GraphError(f"invalid coef on edge {source!r} -> {target!r}: expected {coef.shape[2]} values, received {len(data['coef'])}")
                coef[i, j] = torch.tensor(data["coef"], dtype=dtype)
            if "scale_base" in data:
                scale_base[i, j] = data["scale_base"]
            if "scale_sp" in data:
                scale_sp[i, j] = data["scale_sp"]
            function = data["function"]
            if function["type"] == "spline":
                spline_mask[i, j] = 1.0
            elif function["type"] == "symbolic":
                symbolic.append((i, j, function))

    layer = MultKANLayer(
        grid,
        options.k,
        target_layer.n_sum,
        target_layer.operands,
        coef,
        scale_base,
        scale_sp,
        spline_mask,
        base_fun=options.base_fun,
        uniform=uniform,
        affine_trainable=options.affine_trainable,
        sp_trainable=options.sp_trainable,
        sb_trainable=options.sb_trainable,
    )
    for i, j, function in symbolic:
        if resolve_symbolic is None:
            raise GraphError("the graph has symbolic edges: pass resolve_symbolic to compile it")
        layer.set_symbolic(i, j, function["name"], resolve_symbolic(function["name"]), function.get("params", (1.0, 0.0, 1.0, 0.0)))

    with torch.no_grad():
        for position, node in enumerate(target_layer.nodes):
            layer.node_scale[position] = graph.nodes[node].get("scale", 1.0)
            layer.node_bias[position] = graph.nodes[node].get("bias", 0.0)
    return layer


def write_back(graph: nx.DiGraph, layers: list[MultKANLayer]) -> nx.DiGraph:
    """Return a copy of ``graph`` holding the current parameters of ``layers``.

    Edges switched off in the layers (neither spline nor symbolic) become
    ``{"type": "zero"}`` edges.
    """
    graph = copy.deepcopy(graph)
    structure = graph_layers(graph)
    for position, layer in enumerate(layers):
        source_layer, target_layer = structure[position], structure[position + 1]
        coef = layer.coef.detach().cpu().tolist()
        scale_base = layer.scale_base.detach().cpu().tolist()
        scale_sp = layer.scale_sp.detach().cpu().tolist()
        spline_mask = layer.spline_mask.cpu().tolist()
        affine = layer.symbolic_affine.detach().cpu().tolist()
        grid = layer.grid.cpu().tolist()

        for i, node in enumerate(source_layer.nodes):
            graph.nodes[node]["grid"] = grid[i]
            graph.nodes[node]["grid_uniform"] = bool(layer.uniform)
        for i, source in enumerate(source_layer.nodes):
            for j, target in enumerate(target_layer.subnodes):
                if not graph.has_edge(source, target):
                    continue
                data = graph.edges[source, target]
                data["coef"] = coef[i][j]
                data["scale_base"] = scale_base[i][j]
                data["scale_sp"] = scale_sp[i][j]
                if (i, j) in layer.symbolic_names:
                    data["function"] = {"type": "symbolic", "name": layer.symbolic_names[(i, j)], "params": affine[i][j]}
                elif spline_mask[i][j]:
                    data["function"] = {"type": "spline"}
                else:
                    data["function"] = {"type": "zero"}
        for position_out, node in enumerate(target_layer.nodes):
            graph.nodes[node]["scale"] = float(layer.node_scale[position_out].detach())
            graph.nodes[node]["bias"] = float(layer.node_bias[position_out].detach())
    return graph
