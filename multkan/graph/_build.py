"""Build the graph IR from the pykan width notation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import networkx as nx

from ..errors import GraphError, invalid_parameter

__all__ = ["EdgeId", "LayerSpec", "build_graph", "parse_width", "node_id"]


class EdgeId(NamedTuple):
    """Address of a function edge: the source node index in layer ``layer`` and
    the target sum index (the position among the sums of layer ``layer + 1``,
    mult operands included)."""

    layer: int
    source: int
    target: int


@dataclass(frozen=True)
class LayerSpec:
    """Sizes of one layer of nodes in a layered MultKAN.

    Attributes
    ----------
    n_sum : int
        Plain sum nodes; for the input layer, the number of inputs.
    arities : tuple of int
        Arity of each mult node, in order.
    """

    n_sum: int
    arities: tuple[int, ...] = ()

    @property
    def n_mult(self) -> int:
        return len(self.arities)

    @property
    def n_nodes(self) -> int:
        """Values the layer passes on: sums first, then mult nodes."""
        return self.n_sum + self.n_mult

    @property
    def n_subnodes(self) -> int:
        """Targets of function edges: plain sums first, then every mult operand."""
        return self.n_sum + sum(self.arities)


def node_id(layer: int, kind: str, index: int, operand: int | None = None) -> str:
    """Return the id of a node, such as ``"L1:mult0"`` or ``"L1:mult0.operand1"``."""
    base = f"L{layer}:{kind}{index}"
    return base if operand is None else f"{base}.operand{operand}"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_width(width: Sequence, mult_arity: int | Sequence = 2) -> list[LayerSpec]:
    """Turn the pykan width notation into one :class:`LayerSpec` per layer.

    Parameters
    ----------
    width : sequence
        Entries are either an int ``n`` (n sum nodes) or a pair ``[n, m]``
        (n sum nodes and m mult nodes). The first entry is the number of
        inputs and the last the number of outputs, both plain ints or
        ``[n, 0]``.
    mult_arity : int or sequence
        One arity for every mult node, or one entry per layer, each an int or
        a list of arities for that layer's mult nodes (pykan's spelling: a
        list with one entry per layer of ``width``).

    Returns
    -------
    list of LayerSpec
    """
    if isinstance(width, (str, bytes)) or not isinstance(width, Sequence) or len(width) < 2:
        raise invalid_parameter("width", "a sequence of at least 2 layers such as [2, 5, 1] or [2, [0, 2], 1]", width)

    counts = []
    for position, entry in enumerate(width):
        if _is_int(entry):
            n_sum, n_mult = entry, 0
        elif isinstance(entry, Sequence) and len(entry) == 2 and all(_is_int(v) for v in entry):
            n_sum, n_mult = entry
        else:
            raise invalid_parameter(f"width[{position}]", "an int or a pair [n_sum, n_mult] of ints", entry)
        if n_sum < 0 or n_mult < 0 or n_sum + n_mult == 0:
            raise invalid_parameter(f"width[{position}]", "non-negative counts with at least one node", entry)
        counts.append((n_sum, n_mult))

    for position in (0, len(counts) - 1):
        if counts[position][1] != 0:
            raise invalid_parameter(f"width[{position}]", "no mult nodes in the input or output layer", width[position])

    specs = []
    for layer, (n_sum, n_mult) in enumerate(counts):
        arities = _layer_arities(mult_arity, layer, n_mult, len(counts))
        specs.append(LayerSpec(n_sum=n_sum, arities=arities))
    return specs


def _layer_arities(mult_arity: int | Sequence, layer: int, n_mult: int, n_layers: int) -> tuple[int, ...]:
    if _is_int(mult_arity):
        arities = (mult_arity,) * n_mult
    elif isinstance(mult_arity, Sequence) and len(mult_arity) == n_layers:
        entry = mult_arity[layer]
        if _is_int(entry):
            arities = (entry,) * n_mult
        elif isinstance(entry, Sequence) and all(_is_int(a) for a in entry):
            arities = tuple(entry)
        else:
            raise invalid_parameter(f"mult_arity[{layer}]", "an int or a list of ints", entry)
    else:
        raise invalid_parameter(
            "mult_arity",
            f"an int, or a list with one entry per layer ({n_layers} here) of ints or lists of ints",
            mult_arity,
        )

    if len(arities) != n_mult:
        raise invalid_parameter(f"mult_arity[{layer}]", f"{n_mult} arities, one per mult node", list(arities))
    for arity in arities:
        if arity < 2:
            raise GraphError(f"invalid mult_arity in layer {layer}: a mult node needs arity >= 2, received {arity}")
    return arities


def build_graph(
    width: Sequence,
    mult_arity: int | Sequence = 2,
    *,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> nx.DiGraph:
    """Build a fully connected MultKAN graph with spline edges.

    Parameters
    ----------
    width, mult_arity
        See :func:`parse_width`.
    input_names, output_names : sequence of str, optional
        Variable names; ``x_1, x_2, ...`` and ``y_1, ...`` by default.

    Returns
    -------
    networkx.DiGraph
        Nodes carry ``kind`` (input, sum, mult, output), ``layer``, ``index``
        (position among the values the layer passes on), ``sub_index``
        (position among the targets of function edges, for sums and
        outputs), ``name``, ``arity`` (mult), ``operand_of`` (operand sums)
        and the node affine ``scale`` and ``bias``. Function edges carry
        ``kind="function"``, ``layer`` and ``function`` (``{"type":
        "spline"}`` here). Wires join operand sums to their mult node and
        carry ``kind="wire"``.
    """
    specs = parse_width(width, mult_arity)
    n_in, n_out = specs[0].n_sum, specs[-1].n_sum
    input_names = _check_names("input_names", input_names, n_in, "x_")
    output_names = _check_names("output_names", output_names, n_out, "y_")

    graph = nx.DiGraph(format="multkan-graph", version=1)
    last = len(specs) - 1
    layer_nodes: list[list[str]] = []
    layer_subnodes: list[list[str]] = []
    for layer, spec in enumerate(specs):
        nodes, subnodes = _add_layer_nodes(graph, layer, spec, last, input_names, output_names)
        layer_nodes.append(nodes)
        layer_subnodes.append(subnodes)

    for layer in range(last):
        for source in layer_nodes[layer]:
            for target in layer_subnodes[layer + 1]:
                graph.add_edge(source, target, kind="function", layer=layer, function={"type": "spline"})
    return graph


def _check_names(parameter: str, names: Sequence[str] | None, count: int, prefix: str) -> list[str]:
    if names is None:
        return [f"{prefix}{i + 1}" for i in range(count)]
    names = list(names)
    if len(names) != count or not all(isinstance(n, str) and n for n in names):
        raise invalid_parameter(parameter, f"{count} non-empty strings", names)
    if len(set(names)) != len(names):
        raise GraphError(f"invalid {parameter}: names must be unique, received {names}")
    return names


def _add_layer_nodes(graph, layer, spec, last, input_names, output_names):
    nodes: list[str] = []
    subnodes: list[str] = []
    if layer == 0:
        for i in range(spec.n_sum):
            nid = node_id(0, "input", i)
            graph.add_node(nid, kind="input", layer=0, index=i, name=input_names[i])
            nodes.append(nid)
        return nodes, subnodes

    kind = "output" if layer == last else "sum"
    for i in range(spec.n_sum):
        nid = node_id(layer, kind, i)
        name = output_names[i] if kind == "output" else nid
        graph.add_node(nid, kind=kind, layer=layer, index=i, sub_index=i, name=name, scale=1.0, bias=0.0)
        nodes.append(nid)
        subnodes.append(nid)

    sub_index = spec.n_sum
    for m, arity in enumerate(spec.arities):
        mult = node_id(layer, "mult", m)
        graph.add_node(mult, kind="mult", layer=layer, index=spec.n_sum + m, name=mult, arity=arity, scale=1.0, bias=0.0)
        nodes.append(mult)
        for a in range(arity):
            operand = node_id(layer, "mult", m, a)
            graph.add_node(operand, kind="sum", layer=layer, sub_index=sub_index, name=operand, operand_of=mult)
            graph.add_edge(operand, mult, kind="wire")
            subnodes.append(operand)
            sub_index += 1
    return nodes, subnodes
