"""Figures of a network and of a training history, drawn with the matplotlib object API.

Nothing here imports ``matplotlib.pyplot``, so no window opens and no global
figure state changes. A file is written only when ``path`` is given.

Every drawn element of :func:`plot_network` carries a gid, so that code and
tests can find it in the figure:

``node:<kind>:<layer>:<index>``
    A node marker; ``kind`` is ``input``, ``sum``, ``mult`` or ``output``.
``operand:<layer>:<position>``
    A mult operand (the sum that one operand wire starts from).
``wire:<layer>:<mult>:<position>``
    The wire from an operand to its mult node.
``edge:<layer>:<source>:<target>``
    A function edge; ``layer`` indexes ``model.layers`` and ``target`` is a
    position among the layer's sums and mult operands.
``curve:<layer>:<source>:<target>``
    The inset axes with an edge's curve.
``label:<layer>:<source>:<target>``
    The function name of a symbolic edge.
``name:input:<index>``, ``name:output:<index>``
    Variable names.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .errors import invalid_parameter

__all__ = ["plot_network", "plot_history"]

SPLINE_COLOR = "black"
SYMBOLIC_COLOR = "tab:red"
WIRE_COLOR = "tab:blue"
# Name of the constant-zero function in multkan.symbolic.library.
ZERO_FUNCTION = "0"
# Largest side of a figure that plot_network creates, in inches.
MAX_FIGURE_INCHES = 30.0
# Characters per line of an input's name under the network.
INPUT_NAME_WIDTH = 8

# Layout in data units: neighbouring nodes are 1 apart.
_LAYER_GAP = 1.0
_LAYER_GAP_WITH_CURVES = 2.0
_MULT_GAP = 0.4
_OPERAND_GAP = 0.45
_INSET_WIDTH = 0.5
_INSET_HEIGHT = 0.6
_INSET_PITCH = 0.68
_MIN_ALPHA = 0.08
_CURVE_POINTS = 200
_INCHES_PER_UNIT = 0.9


@dataclass
class _LayerLayout:
    """Positions of one graph layer.

    ``sub_x`` contains the x of the targets of the incoming edges: plain sums,
    which sit on the node row at ``node_y``, then mult operands, which sit
    on the lower row at ``operand_y``.
    """

    node_x: np.ndarray
    node_y: float
    sub_x: np.ndarray
    operand_y: float
    n_sum: int
    operands: list[tuple[int, ...]]

    def sub_y(self, j: int) -> float:
        return self.node_y if j < self.n_sum else self.operand_y


def plot_network(
    model,
    x: Any = None,
    *,
    ax: Axes | None = None,
    path: str | os.PathLike | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    show_curves: bool = True,
    scale: float = 1.0,
    title: str | None = None,
) -> Figure:
    """Draw the network with inputs at the bottom and outputs at the top.

    Sum nodes are dots and mult nodes are circles marked "×", joined to
    their operands by wires. Each active function edge is a line: black for
    a spline, red and labelled with the function name for a symbolic edge.
    Zero edges are hidden, and so are edges fixed to the symbolic function
    ``"0"``: such an edge outputs the constant ``d`` of ``c * 0 + d``, so it
    carries nothing from its input although it stays in the graph until
    :meth:`MultKAN.prune`. With ``x``, an edge's opacity grows linearly with
    its attribution score on ``x`` (:func:`multkan.analysis.attribution`),
    from 0.08 to 1 for the highest score in its layer, and with
    ``show_curves`` a small inset shows each edge's function over the inputs
    it received.

    Parameters
    ----------
    model : MultKAN
    x : array of shape (batch, n_inputs), optional
        At least 2 finite rows, for opacities and curves.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; a new figure is made when omitted.
    path : str or os.PathLike, optional
        File to save the figure to (format from the suffix); nothing is
        written without it.
    input_names, output_names : sequence of str, optional
        Names under the inputs and over the outputs; ``model.input_names``
        and ``model.output_names`` by default.
    show_curves : bool
        Draw the edge curves when ``x`` is given.
    scale : float
        Size factor of the figure, markers and text. A figure that would
        exceed ``MAX_FIGURE_INCHES`` (30 inches) on a side is scaled down
        to that size.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        The figure that contains the drawing (the root figure of ``ax`` when given).
    """
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale > 0):
        raise invalid_parameter("scale", "a number > 0", scale)
    input_names = _check_names(input_names, model.input_names, "input_names")
    output_names = _check_names(output_names, model.output_names, "output_names")

    records = _edge_records(model, x)
    curves = show_curves and records is not None
    layouts, width = _layout(model, curves)

    if ax is None:
        size = _figure_size(layouts, width, scale)
        if max(size) > MAX_FIGURE_INCHES:
            # A [10, 20, 10, 1] network drew 123 x 74 inches, too large for image viewers. The text shrinks with the figure.
            scale *= MAX_FIGURE_INCHES / max(size)
            size = _figure_size(layouts, width, scale)
        figure = Figure(figsize=size)
        ax = figure.add_subplot()
    else:
        figure = _root_figure(ax)

    _draw_nodes(ax, layouts, scale)
    for position, layer in enumerate(model.layers):
        _draw_layer_edges(ax, position, layer, layouts, records, curves, width, scale)
    _draw_names(ax, layouts, input_names, output_names, scale)

    ax.set_xlim(-width / 2 - 0.2, width / 2 + 0.2)
    ax.set_ylim(layouts[0].node_y - 0.5, layouts[-1].node_y + 0.6)
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title, fontsize=12 * scale)
    if path is not None:
        figure.savefig(path, dpi=150, bbox_inches="tight")
    return figure


def _root_figure(ax: Axes) -> Figure:
    figure = ax.figure
    while not isinstance(figure, Figure):
        # A SubFigure, whose .figure is the root figure.
        figure = figure.figure
    return figure


def _check_names(names, default: list[str], parameter: str) -> list[str]:
    if names is None:
        return list(default)
    if isinstance(names, str) or not isinstance(names, Sequence) or len(names) != len(default):
        raise invalid_parameter(parameter, f"a sequence of {len(default)} strings", names)
    return [str(name) for name in names]


def _edge_records(model, x) -> list[dict[str, np.ndarray]] | None:
    """Return per layer the inputs (batch, n_in), edge values (batch, n_in, n_sub) and edge scores (n_in, n_sub) on ``x``.

    Returns None when ``x`` is None.
    """
    if x is None:
        return None
    from .analysis import attribution

    scores = attribution(model, x).edge_scores
    with torch.no_grad():
        activations = model.activations(x)
    return [
        {
            "inputs": record["inputs"].cpu().double().numpy(),
            "edges": record["edges"].cpu().double().numpy(),
            "scores": score.detach().cpu().double().numpy(),
        }
        for record, score in zip(activations, scores)
    ]


# Layout.


def _layout(model, curves: bool) -> tuple[list[_LayerLayout], float]:
    """Place every node; returns one layout per graph layer (inputs first) and the row width.

    Rows are spread to the width of the widest row, so that edges run
    mostly upwards instead of converging on a narrow row.
    """
    rows = [np.arange(model.n_inputs, dtype=float)]
    for layer in model.layers:
        rows.append(_subnode_positions(layer.n_sum, [tuple(group) for group in layer.operands], layer.n_sub))
    width = max(row.max() - row.min() + 1.0 for row in rows)
    if curves:
        width = max([width] + [_INSET_PITCH * int(_drawn(layer).sum()) for layer in model.layers])
    # Wide networks get taller layers, so that edges between far nodes stay steep.
    gap = max(_LAYER_GAP_WITH_CURVES if curves else _LAYER_GAP, width / 5)

    inputs = _spread(rows[0], width)
    layouts = [_LayerLayout(inputs, 0.0, inputs, 0.0, model.n_inputs, [])]
    for layer, row in zip(model.layers, rows[1:]):
        operands = [tuple(group) for group in layer.operands]
        sub_x = _spread(row, width)
        node_x = np.concatenate([sub_x[: layer.n_sum], [sub_x[list(group)].mean() for group in operands]])
        operand_y = layouts[-1].node_y + gap
        node_y = operand_y + (_MULT_GAP if operands else 0.0)
        layouts.append(_LayerLayout(node_x, node_y, sub_x, operand_y, layer.n_sum, operands))
    return layouts, width


def _subnode_positions(n_sum: int, operands: list[tuple[int, ...]], n_sub: int) -> np.ndarray:
    """Return x of every edge target: sums 1 apart, the operands of one mult node closer together."""
    positions = np.zeros(n_sub)
    cursor = 0.0
    for j in range(n_sum):
        positions[j] = cursor
        cursor += 1.0
    for group in operands:
        for k, j in enumerate(group):
            positions[j] = cursor + k * _OPERAND_GAP
        cursor += (len(group) - 1) * _OPERAND_GAP + 1.0
    return positions


def _spread(positions: np.ndarray, width: float, step: float = 1.0) -> np.ndarray:
    """Centre a row on 0 and stretch it to fill ``width``, leaving half a ``step`` free at each end."""
    if positions.size == 0:
        return positions
    extent = positions.max() - positions.min()
    stretch = max(1.0, width / (extent + step))
    return (positions - (positions.min() + positions.max()) / 2) * stretch


def _drawn(layer) -> np.ndarray:
    """Return the (n_in, n_sub) bool array of the edges to draw.

    These are spline and symbolic edges, except zero edges and symbolic
    edges fixed to ``"0"``, whose output does not depend on their input.
    """
    drawn = (layer.spline_mask.detach().cpu().numpy() > 0) | (layer.symbolic_mask.detach().cpu().numpy() > 0)
    for (source, target), name in layer.symbolic_names.items():
        if name == ZERO_FUNCTION:
            drawn[source, target] = False
    return drawn


def _figure_size(layouts: list[_LayerLayout], width: float, scale: float) -> tuple[float, float]:
    """Return a size in inches with about equal scales on both axes, so insets keep their shape."""
    height = layouts[-1].node_y - layouts[0].node_y + 1.1
    return max(3.0, _INCHES_PER_UNIT * (width + 0.4)) * scale, max(2.5, _INCHES_PER_UNIT * height) * scale


# Drawing.


def _draw_nodes(ax: Axes, layouts: list[_LayerLayout], scale: float) -> None:
    last = len(layouts) - 1
    for position, layout in enumerate(layouts):
        if position == 0:
            kind = "input"
        elif position == last:
            kind = "output"
        else:
            kind = "sum"
        for j in range(layout.n_sum):
            ax.plot(layout.node_x[j], layout.node_y, "o", color="black", markersize=7 * scale, zorder=3, gid=f"node:{kind}:{position}:{j}")
        for m, group in enumerate(layout.operands):
            index = layout.n_sum + m
            node = (layout.node_x[index], layout.node_y)
            for j in group:
                ax.plot(layout.sub_x[j], layout.operand_y, "o", color=WIRE_COLOR, markersize=4 * scale, zorder=3, gid=f"operand:{position}:{j}")
                ax.plot(
                    [layout.sub_x[j], node[0]], [layout.operand_y, node[1]], color=WIRE_COLOR,
                    linewidth=1.2 * scale, zorder=2, gid=f"wire:{position}:{m}:{j}",
                )
            ax.plot(
                *node, "o", markersize=15 * scale, markerfacecolor="white", markeredgecolor=WIRE_COLOR,
                markeredgewidth=1.5 * scale, zorder=4, gid=f"node:mult:{position}:{index}",
            )
            ax.text(*node, "×", ha="center", va="center", fontsize=11 * scale, color=WIRE_COLOR, zorder=5)


def _edge_alphas(scores: np.ndarray | None, active: np.ndarray) -> np.ndarray:
    """Return the opacity of every edge, from _MIN_ALPHA to 1 in proportion to its score over the layer's highest."""
    if scores is None:
        return np.ones(active.shape)
    scores = scores * active
    # A non-finite score gets full opacity, so that edge stays visible.
    scores = np.where(np.isfinite(scores), scores, np.inf)
    finite = scores[np.isfinite(scores)]
    highest = finite.max() if finite.size else 0.0
    if highest <= 0:
        # Every edge of the layer is constant on x or feeds nothing that varies.
        return np.full(active.shape, _MIN_ALPHA)
    return np.minimum(1.0, _MIN_ALPHA + (1.0 - _MIN_ALPHA) * scores / highest)


def _draw_layer_edges(ax, position, layer, layouts, records, curves, width, scale) -> None:
    source, target = layouts[position], layouts[position + 1]
    drawn = _drawn(layer)
    record = None if records is None else records[position]
    alphas = _edge_alphas(None if record is None else record["scores"], drawn)

    # Insets are grouped by the end with more nodes, so each group sits next
    # to its node and only the lines to the other end fan out.
    edges = [(int(i), int(j)) for i, j in zip(*np.nonzero(drawn))]
    if layer.n_sub >= layer.n_in:
        edges.sort(key=lambda edge: (target.sub_x[edge[1]], source.node_x[edge[0]]))
    else:
        edges.sort(key=lambda edge: (source.node_x[edge[0]], target.sub_x[edge[1]]))
    inset_y = (source.node_y + target.operand_y) / 2
    inset_x = _spread(np.arange(len(edges), dtype=float) * _INSET_PITCH, width, _INSET_PITCH)

    for slot, (i, j) in enumerate(edges):
        name = layer.symbolic_names.get((i, j))
        color = SYMBOLIC_COLOR if name is not None else SPLINE_COLOR
        start, end = (source.node_x[i], source.node_y), (target.sub_x[j], target.sub_y(j))
        if curves:
            xs, ys = [start[0], inset_x[slot], end[0]], [start[1], inset_y, end[1]]
        else:
            xs, ys = [start[0], end[0]], [start[1], end[1]]
        ax.plot(xs, ys, color=color, alpha=float(alphas[i, j]), linewidth=1.2 * scale, zorder=1, gid=f"edge:{position}:{i}:{j}")

        if curves:
            inset = _draw_curve(ax, record, i, j, (inset_x[slot], inset_y), color, float(alphas[i, j]), scale)
            inset.set_gid(f"curve:{position}:{i}:{j}")
            if name is not None:
                label = inset.set_title(name, fontsize=7 * scale, color=SYMBOLIC_COLOR, pad=1.5)
                label.set_gid(f"label:{position}:{i}:{j}")
        elif name is not None:
            ax.text(
                (start[0] + end[0]) / 2, (start[1] + end[1]) / 2, name, ha="center", va="center",
                fontsize=8 * scale, color=SYMBOLIC_COLOR, zorder=5, gid=f"label:{position}:{i}:{j}",
                bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none"},
            )


def _draw_curve(ax, record, i, j, centre, color, alpha, scale) -> Axes:
    """Add an inset at ``centre`` (data units) with phi_ij against its observed inputs."""
    bounds = [centre[0] - _INSET_WIDTH / 2, centre[1] - _INSET_HEIGHT / 2, _INSET_WIDTH, _INSET_HEIGHT]
    inset = ax.inset_axes(bounds, transform=ax.transData, zorder=4)
    order = np.argsort(record["inputs"][:, i], kind="stable")
    if order.size > _CURVE_POINTS:
        order = order[np.linspace(0, order.size - 1, _CURVE_POINTS).round().astype(int)]
    inset.plot(record["inputs"][order, i], record["edges"][order, i, j], color=color, alpha=max(alpha, 0.3), linewidth=1.3 * scale)
    inset.set_xticks([])
    inset.set_yticks([])
    for spine in inset.spines.values():
        spine.set_edgecolor(color)
        spine.set_alpha(alpha)
        spine.set_linewidth(0.8 * scale)
    return inset


def _draw_names(ax: Axes, layouts: list[_LayerLayout], input_names, output_names, scale) -> None:
    first, last = layouts[0], layouts[-1]
    for index, name in enumerate(input_names):
        # Inputs sit one unit apart, so a long name with spaces ("M / 1e+31") goes on several lines.
        label = textwrap.fill(name, INPUT_NAME_WIDTH, break_long_words=False)
        ax.text(first.node_x[index], first.node_y - 0.15, label, ha="center", va="top", fontsize=10 * scale, gid=f"name:input:{index}")
    for index, name in enumerate(output_names):
        ax.text(last.node_x[index], last.node_y + 0.15, name, ha="center", va="bottom", fontsize=10 * scale, gid=f"name:output:{index}")


# Training history.


def plot_history(history: Mapping[str, Sequence[float]], *, ax: Axes | None = None, path: str | os.PathLike | None = None) -> Figure:
    """Plot the train and test loss of a :meth:`MultKAN.fit` history, and the regulariser when it is not zero.

    The y axis is logarithmic when the losses have a positive value.

    Parameters
    ----------
    history : mapping
        ``train_loss`` and optionally ``test_loss`` and ``reg``, one value per
        logged step.
    ax : matplotlib.axes.Axes, optional
    path : str or os.PathLike, optional
        File to save the figure to; nothing is written without it.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not isinstance(history, Mapping) or "train_loss" not in history:
        raise invalid_parameter("history", "the dict returned by MultKAN.fit, with a 'train_loss' list", history)
    if ax is None:
        figure = Figure(figsize=(5.0, 3.5))
        ax = figure.add_subplot()
    else:
        figure = _root_figure(ax)

    series = {"train_loss": "train", "test_loss": "test", "reg": "regulariser"}
    plotted = []
    for key, label in series.items():
        values = np.asarray(history.get(key) or [], dtype=float)
        if values.size == 0 or (key == "reg" and not np.any(values[np.isfinite(values)] != 0)):
            continue
        ax.plot(np.arange(values.size), values, label=label, gid=f"history:{key}")
        plotted.append(values)

    values = np.concatenate(plotted) if plotted else np.zeros(0)
    if np.any(np.isfinite(values) & (values > 0)):
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("logged step")
    ax.set_ylabel("loss")
    if plotted:
        ax.legend()
    if path is not None:
        figure.savefig(path, dpi=150, bbox_inches="tight")
    return figure


def plot_tree(
    tree,
    names: Sequence[str] | None = None,
    *,
    ax: Axes | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Draw a :class:`~multkan.analysis.separability.ModularTree`: the inputs at the bottom, each module above its parts.

    Every module is a node joined to the modules and inputs it contains
    directly, and the root at the top joins all of them. Nodes are labelled
    with the input names they cover when that is short.

    Parameters
    ----------
    tree : ModularTree
        From :func:`multkan.analysis.modular_tree`.
    names : sequence of str, optional
        Input names; ``x0``, ``x1``, ... by default.
    ax : matplotlib.axes.Axes, optional
    path : str or os.PathLike, optional
        File to save the figure to; nothing is written without it.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from .analysis.separability import ModularTree

    if not isinstance(tree, ModularTree):
        raise invalid_parameter("tree", "a ModularTree from multkan.analysis.modular_tree", type(tree).__name__)
    names = list(names) if names is not None else [f"x{i}" for i in range(tree.n_inputs)]
    if len(names) != tree.n_inputs:
        raise invalid_parameter("names", f"{tree.n_inputs} input names", names)
    if ax is None:
        figure = Figure(figsize=(max(3.0, 0.9 * tree.n_inputs + 1.0), 3.5))
        ax = figure.add_subplot()
    else:
        figure = _root_figure(ax)

    root = tuple(range(tree.n_inputs))
    # Leaves left to right in the order a depth-first walk meets them, so no two lines cross.
    order: list[int] = []
    heights: dict[tuple[int, ...], int] = {}

    def walk(group: tuple[int, ...]) -> int:
        if len(group) == 1:
            order.append(group[0])
            heights[group] = 0
            return 0
        heights[group] = 1 + max(walk(part) for part in tree.children(group))
        return heights[group]

    walk(root)
    position = {leaf: float(index) for index, leaf in enumerate(order)}

    def centre(group: tuple[int, ...]) -> float:
        return float(np.mean([position[i] for i in group]))

    for group, height in heights.items():
        if len(group) > 1:
            for part in tree.children(group):
                ax.plot([centre(group), centre(part)], [height, heights[part]], color="0.4", linewidth=1.2, gid=f"tree:edge:{group}:{part}")
    for group, height in heights.items():
        is_leaf = len(group) == 1
        if is_leaf:
            label = names[group[0]]
        elif group == root:
            label = "f"
        else:
            label = "g(" + ", ".join(names[i] for i in group) + ")"
        ax.plot([centre(group)], [height], marker="o", markersize=7, color="tab:blue" if is_leaf else "tab:orange", gid=f"tree:node:{group}")
        ax.annotate(label, (centre(group), height), textcoords="offset points", xytext=(0, -14 if is_leaf else 8), ha="center", fontsize=9)
    ax.set_ylim(-0.6, heights[root] + 0.6)
    ax.set_xlim(-0.6, tree.n_inputs - 0.4)
    ax.set_axis_off()
    ax.set_title(f"modules (general symmetry score <= {tree.threshold:g})", fontsize=10)
    if path is not None:
        figure.savefig(path, dpi=150, bbox_inches="tight")
    return figure
