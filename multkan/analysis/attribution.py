"""Attribution scores of edges, nodes and inputs of a MultKAN.

Notation: compiled layer ``l`` maps the ``n_in`` node values of layer ``l``
to ``n_sub`` targets (plain sums, then the operands of each mult node), and
the targets to the ``n_out`` node values of layer ``l + 1``.

Edge magnitude
    ``E_ij = std_b phi_ij(x_i^(b))``, the population standard deviation
    (``correction=0``) over the rows ``b`` of ``x``. A standard deviation at
    the rounding level, ``E_ij <= 64 eps max_b |phi_ij|`` with ``eps`` the
    machine epsilon of the model's dtype, is set to 0, so an edge that is
    constant on ``x`` scores exactly 0 in float32 as in float64.

    The other common magnitude, ``mean_b |phi_ij|``, also counts a constant
    offset as importance. A constant offset carries no information about
    the inputs, and pruning folds it into a bias (see
    :func:`multkan.analysis.prune`), so the standard deviation is used.

Backward pass
    Output nodes get score 1. The score ``s_j`` of target ``j`` of layer
    ``l`` is the score of the node it feeds: a plain sum feeds itself, and
    every operand of a mult node receives the full score of that mult node.
    Then

    ``A_ij = E_ij / sum_i' E_i'j * s_j``   (0 when ``sum_i' E_i'j = 0``)

    and the score of node ``i`` of layer ``l`` is ``sum_j A_ij``. The
    scores of layer 0 are the input scores.

Node affines
    Node ``i`` passes on ``h_i = scale_i * u_i + bias_i``. Edge magnitudes
    are measured on the edge functions applied to ``h_i``, so ``scale_i``
    enters the scores through the outgoing edges of node ``i``. For example,
    a node with ``scale = 0`` passes on a constant, so its outgoing edges
    have ``E = 0`` and its score is 0. The scale of a target multiplies all
    of its incoming edges alike, so it cancels in the shares
    ``E_ij / sum_i' E_i'j``. The bias never changes a standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..errors import InvalidDataError, invalid_parameter

if TYPE_CHECKING:
    from ..model import MultKAN

__all__ = ["Attribution", "attribution", "feature_score", "edge_statistics"]

# Multiple of the machine epsilon, relative to max |phi_ij|, below which an
# edge's standard deviation counts as rounding noise.
ROUNDING_FACTOR = 64


@dataclass(frozen=True)
class Attribution:
    """Attribution scores of one model on one set of inputs.

    ``L`` is the number of compiled layers, so the network has ``L + 1``
    layers of nodes (inputs, hidden layers, outputs).

    Attributes
    ----------
    edge_magnitudes : list of tensor, one of shape (n_in, n_sub) per compiled layer
        ``E_ij``, the standard deviation of each edge's values over the rows.
    edge_scores : list of tensor, one of shape (n_in, n_sub) per compiled layer
        ``A_ij``. Zero, absent and dead edges score 0.
    subnode_scores : list of tensor, one of shape (n_sub,) per compiled layer
        Scores of the targets of ``edge_scores[l]``: plain sums, then mult
        operands, in compiled order.
    node_scores : list of tensor, one of shape (n_nodes,) per layer of nodes
        ``L + 1`` entries, from the inputs to the outputs. Within a layer,
        plain sums come first and mult nodes after them.
    input_scores : tensor of shape (n_inputs,)
        The same values as ``node_scores[0]``.
    """

    edge_magnitudes: list[torch.Tensor]
    edge_scores: list[torch.Tensor]
    subnode_scores: list[torch.Tensor]
    node_scores: list[torch.Tensor]
    input_scores: torch.Tensor


def _check_rows(model: MultKAN, x: torch.Tensor) -> torch.Tensor:
    """Validate ``x`` for statistics over rows and return it as (batch, n_inputs)."""
    from ..model import check_input

    values, _ = check_input(x, model.n_inputs, model.dtype)
    values = values.to(model.device)
    if values.shape[0] < 2:
        raise InvalidDataError(
            f"invalid x: edge scores (for attribution, pruning and network plots) take the standard deviation "
            f"over rows, so they need at least 2 rows, received {values.shape[0]}. Pass a sample of inputs, such as the training inputs."
        )
    if not bool(torch.isfinite(values).all()):
        n_bad = int((~torch.isfinite(values)).sum())
        raise InvalidDataError(f"invalid x: it has {n_bad} non-finite values. Remove or fix those rows first.")
    return values


@torch.no_grad()
def edge_statistics(model: MultKAN, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Return the standard deviation and the mean of every edge's values over the rows of ``x``.

    Parameters
    ----------
    model : MultKAN
    x : array of shape (batch, n_inputs), batch >= 2

    Returns
    -------
    magnitudes, means : lists of tensor, one of shape (n_in, n_sub) per compiled layer
    """
    values = _check_rows(model, x)
    magnitudes, means = [], []
    rounding = ROUNDING_FACTOR * torch.finfo(model.dtype).eps
    for record in model.activations(values):
        edges = record["edges"]
        magnitude = edges.std(dim=0, correction=0)
        # The mean of identical values is off by a few units in the last place, so
        # the standard deviation of a constant edge is tiny but not 0.
        noise = rounding * edges.abs().amax(dim=0)
        magnitudes.append(torch.where(magnitude <= noise, 0.0, magnitude))
        means.append(edges.mean(dim=0))
    return magnitudes, means


def scores_from_magnitudes(model: MultKAN, magnitudes: Sequence[torch.Tensor], output: int | None = None) -> Attribution:
    """Run the backward pass of the module docstring on precomputed edge magnitudes."""
    n_layers = len(model.layers)
    reference = magnitudes[-1]
    output_scores = torch.ones(model.n_outputs, dtype=reference.dtype, device=reference.device)
    if output is not None:
        output_scores = torch.zeros_like(output_scores)
        output_scores[output] = 1.0

    node_scores: list[torch.Tensor] = [output_scores]
    edge_scores: list[torch.Tensor] = []
    subnode_scores: list[torch.Tensor] = []
    for position in range(n_layers - 1, -1, -1):
        layer = model.layers[position]
        targets = _target_scores(node_scores[0], layer.n_sum, layer.operands, layer.n_sub)
        magnitude = magnitudes[position]
        totals = magnitude.sum(dim=0)
        # A target whose incoming edges are all constant on x passes no score upstream.
        shares = torch.where(totals > 0, magnitude / torch.where(totals > 0, totals, 1.0), 0.0)
        scores = shares * targets
        edge_scores.insert(0, scores)
        subnode_scores.insert(0, targets)
        node_scores.insert(0, scores.sum(dim=1))

    return Attribution(
        edge_magnitudes=list(magnitudes),
        edge_scores=edge_scores,
        subnode_scores=subnode_scores,
        node_scores=node_scores,
        input_scores=node_scores[0],
    )


def _target_scores(node_scores: torch.Tensor, n_sum: int, operands: Sequence[Sequence[int]], n_sub: int) -> torch.Tensor:
    """Spread node scores (n_out,) over the targets (n_sub,): each mult operand gets its mult node's score."""
    targets = torch.zeros(n_sub, dtype=node_scores.dtype, device=node_scores.device)
    targets[:n_sum] = node_scores[:n_sum]
    for mult, positions in enumerate(operands):
        targets[list(positions)] = node_scores[n_sum + mult]
    return targets


def attribution(model: MultKAN, x: torch.Tensor, *, output: int | None = None) -> Attribution:
    """Compute edge, node and input attribution scores on the inputs ``x``.

    Parameters
    ----------
    model : MultKAN
    x : array of shape (batch, n_inputs)
        At least 2 finite rows; scores are statistics over them.
    output : int, optional
        Score only this output (score 1, the others 0). By default every
        output has score 1, so the scores are the sum of the per-output
        scores (the backward pass is linear in the output scores).

    Returns
    -------
    Attribution

    Notes
    -----
    The definition (standard deviation magnitudes, score shares, mult
    operands and node affines) is written out in the docstring of
    :mod:`multkan.analysis.attribution`.
    """
    if output is not None and (not isinstance(output, int) or isinstance(output, bool) or not 0 <= output < model.n_outputs):
        raise invalid_parameter("output", f"None or an output index in [0, {model.n_outputs - 1}]", output)
    magnitudes, _ = edge_statistics(model, x)
    return scores_from_magnitudes(model, magnitudes, output)


def feature_score(model: MultKAN, x: torch.Tensor) -> torch.Tensor:
    """Return the attribution score of every input on ``x``, shape (n_inputs,).

    Equal to ``attribution(model, x).input_scores``.
    """
    return attribution(model, x).input_scores
