"""A slow, obvious evaluator of a MultKAN graph, used as the oracle for the compiled module.

It walks the graph IR in topological order with plain Python floats: every
edge is evaluated on its own from the textbook B-spline recursion.
"""

import math

import networkx as nx

from multkan.splines import bspline_basis_reference


def _silu(x):
    # x / (1 + e^-x), written with e^x for negative x so that neither form overflows.
    if x >= 0:
        return x / (1.0 + math.exp(-x))
    return x * math.exp(x) / (1.0 + math.exp(x))


def evaluate_graph(graph, point, k, symbolic=None):
    """Return the output values of ``graph`` (written back from a model) at one input point."""
    symbolic = symbolic or {}
    value = {}
    inputs = sorted((d["index"], n) for n, d in graph.nodes(data=True) if d["kind"] == "input")
    for (_, node), x in zip(inputs, point):
        value[node] = float(x)

    for node in nx.topological_sort(graph):
        data = graph.nodes[node]
        if data["kind"] == "input":
            continue
        if data["kind"] == "mult":
            product = 1.0
            for operand in graph.predecessors(node):
                product *= value[operand]
            value[node] = data["scale"] * product + data["bias"]
            continue
        total = 0.0
        for source in graph.predecessors(node):
            edge = graph.edges[source, node]
            x = value[source]
            function = edge["function"]
            if function["type"] == "spline":
                basis = bspline_basis_reference(x, graph.nodes[source]["grid"], k)
                spline = sum(c * b for c, b in zip(edge["coef"], basis))
                total += edge["scale_base"] * _silu(x) + edge["scale_sp"] * spline
            elif function["type"] == "symbolic":
                a, b, c, d = function["params"]
                total += c * symbolic[function["name"]](a * x + b) + d
        if "operand_of" in data:
            value[node] = total
        else:
            value[node] = data["scale"] * total + data["bias"]

    outputs = sorted((d["index"], n) for n, d in graph.nodes(data=True) if d["kind"] == "output")
    return [value[n] for _, n in outputs]
