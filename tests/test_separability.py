"""Separability and symmetry from second derivatives, on closed forms, compiled formulas and trained networks."""

import numpy as np
import pytest
import torch

from multkan import InvalidDataError, InvalidParameterError, MultKAN, MultKANWarning, create_dataset, kanpile
from multkan.analysis import separability

# Imported under the module name: pytest would collect a bare test_symmetry as a test.
detect_separability = separability.detect_separability
interaction_scores = separability.interaction_scores
symmetry = separability.test_symmetry


def _rows(n_var, n_rows=300, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n_rows, n_var, generator=generator, dtype=torch.float64) * 2 - 1


def test_product_and_sum_scores():
    x = _rows(2, n_rows=20_000)
    product = interaction_scores(lambda v: v[:, 0] * v[:, 1], x)
    # rms(d2f/dx0 dx1) = 1 and s0 * s1 = std(x0 * x1) for independent centred inputs.
    assert float(product[0, 1]) == pytest.approx(1.0, rel=0.03)
    assert float(product[1, 0]) == float(product[0, 1])
    assert float(product[0, 0]) == 0.0
    additive = interaction_scores(lambda v: torch.sin(3 * v[:, 0]) + v[:, 1] ** 3, x)
    assert float(additive.abs().max()) < 1e-12


@pytest.mark.parametrize(
    "function, mode, groups",
    [
        (lambda v: torch.sin(v[:, 0]) + v[:, 1] * v[:, 2], "add", ((0,), (1, 2))),
        (lambda v: v[:, 0] + v[:, 1] + v[:, 2] ** 2, "add", ((0,), (1,), (2,))),
        (lambda v: torch.exp(v[:, 0] * v[:, 1] * v[:, 2]), "add", ((0, 1, 2),)),
        (lambda v: torch.sin(v[:, 0]) * (v[:, 1] + 2) * torch.exp(v[:, 2]), "mul", ((0,), (1,), (2,))),
        (lambda v: torch.sin(v[:, 0]) * (v[:, 1] + 2) * torch.exp(v[:, 2]), "add", ((0, 1, 2),)),
        (lambda v: (v[:, 0] + v[:, 2] + 3) * torch.cos(v[:, 1]), "mul", ((0, 2), (1,))),
    ],
)
def test_groups_of_closed_forms(function, mode, groups):
    result = detect_separability(function, _rows(3), mode=mode)
    assert result.groups == groups
    assert result.separable == (len(groups) > 1)


@pytest.mark.parametrize(
    "function, group, expected",
    [
        # f(x0 + x1, x2): the group enters through one combination.
        (lambda v: torch.exp(0.5 * (v[:, 0] + v[:, 1])) * v[:, 2], [0, 1], True),
        (lambda v: torch.sqrt(v[:, 0] ** 2 + v[:, 1] ** 2 + 0.1) + torch.sin(v[:, 2]) * (v[:, 0] ** 2 + v[:, 1] ** 2), [0, 1], True),
        (lambda v: torch.exp(0.5 * (v[:, 0] * v[:, 2] + v[:, 1])) * v[:, 2], [0, 1], False),
        (lambda v: v[:, 0] * v[:, 2] + v[:, 1], [0, 1], False),
    ],
)
def test_general_symmetry_of_closed_forms(function, group, expected):
    symmetric, score = symmetry(function, _rows(3), group, mode="general")
    assert symmetric == expected
    assert (score < 1e-10) == expected


def test_add_and_mul_symmetry_of_a_group():
    x = _rows(3)
    assert symmetry(lambda v: v[:, 0] * v[:, 1] + torch.cos(v[:, 2]), x, [0, 1], mode="add") == (True, 0.0)
    assert not symmetry(lambda v: v[:, 0] * v[:, 1] + torch.cos(v[:, 2]), x, [0], mode="add")[0]
    assert symmetry(lambda v: (v[:, 0] + v[:, 1] + 2) * torch.exp(v[:, 2]), x, [2], mode="mul")[0]
    assert not symmetry(lambda v: v[:, 0] * v[:, 1] + v[:, 2], x, [2], mode="mul")[0]


def test_compiled_formula_separates_exactly():
    # The kanpiler's symbolic edges are differentiated twice through the model.
    model = kanpile("sin(x) + y*z", dtype=torch.float64)
    result = detect_separability(model, _rows(3))
    assert result.groups == ((0,), (1, 2))
    assert float(result.scores[0, 1]) < 1e-10
    assert float(result.scores[0, 2]) < 1e-10
    assert float(result.scores[1, 2]) > 0.3


def test_trained_network_separates_additive_target():
    data = create_dataset(lambda v: torch.sin(v[:, [0]]) + v[:, [1]] * v[:, [2]], n_var=3, seed=0)
    model = MultKAN([3, 5, 1], grid=5, seed=0)
    model.fit(data, steps=50, progress=False)
    # The training inputs are the default rows.
    result = detect_separability(model)
    assert result.groups == ((0,), (1, 2))
    assert float(result.scores[0, 1]) < 0.05
    assert float(result.scores[1, 2]) > 0.3


def test_output_of_two_output_model():
    model = kanpile("x + y", dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match="invalid output"):
        detect_separability(model, _rows(2), output=1)
    two = MultKAN([2, 2], seed=0)
    with pytest.raises(InvalidParameterError, match="invalid output: expected an output index in \\[0, 2\\)"):
        detect_separability(two, _rows(2))
    assert detect_separability(two, _rows(2), output=1).scores.shape == (2, 2)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x: detect_separability(lambda v: v[:, 0], x, mode="div"), InvalidParameterError, "invalid mode"),
        (lambda x: detect_separability(lambda v: v[:, 0], x, threshold=-1), InvalidParameterError, "invalid threshold"),
        (lambda x: symmetry(lambda v: v[:, 0], x, [0, 1, 2]), InvalidParameterError, "invalid group"),
        (lambda x: symmetry(lambda v: v[:, 0], x, [5]), InvalidParameterError, "invalid group"),
        (lambda x: symmetry(lambda v: v[:, 0], x, [0], mode="sub"), InvalidParameterError, "invalid mode"),
        (lambda x: detect_separability(lambda v: v, x), InvalidDataError, "invalid function output"),
        (lambda x: detect_separability(lambda v: v[:, 0], None), InvalidDataError, "needs sample rows"),
        (lambda x: detect_separability(lambda v: v[:, 0], x[:1]), InvalidDataError, "at least 2 rows"),
        (lambda x: detect_separability(lambda v: v[:, 0], x.masked_fill(x > 0.9, float("nan"))), InvalidDataError, "NaN"),
        (lambda x: detect_separability(MultKAN([2, 1]), None), InvalidDataError, "needs inputs"),
    ],
)
def test_invalid_arguments_raise(call, error, message):
    with pytest.raises(error, match=message):
        call(_rows(3))


def test_linear_function_has_no_interactions():
    # The gradient is constant, so autograd has no graph for the second derivatives.
    scores = interaction_scores(lambda v: 2 * v[:, 0] - v[:, 1], _rows(2))
    assert float(scores.abs().max()) == 0.0


def test_constant_function_is_fully_separable():
    result = detect_separability(lambda v: torch.ones(v.shape[0], dtype=v.dtype), _rows(3))
    assert result.groups == ((0,), (1,), (2,))
    assert float(result.scores.abs().max()) == 0.0


def test_function_outside_torch_raises():
    def through_numpy(v):
        values = v.detach().numpy()
        return torch.tensor(np.sin(values[:, 0]) * values[:, 1])

    with pytest.raises(InvalidDataError, match="do not depend on x through torch operations"):
        detect_separability(through_numpy, _rows(2))


def test_numpy_call_on_input_raises():
    # Tensor.numpy() without detach() fails inside the function.
    with pytest.raises(InvalidDataError, match="do not depend on x through torch operations"):
        detect_separability(lambda v: torch.tensor(v.numpy().sum(1)), _rows(2))


def test_numpy_indices_accepted():
    x = _rows(3)
    assert symmetry(lambda v: v[:, 0] * v[:, 1] + v[:, 2], x, np.array([0, 1]))[0]
    two = MultKAN([3, 2], seed=0)
    assert detect_separability(two, x, output=np.int64(1)).scores.shape == (3, 3)


modular_tree = separability.modular_tree


@pytest.mark.parametrize(
    "function, expression",
    [
        (lambda v: torch.sin(v[:, 0] + v[:, 1]) * v[:, 2] + v[:, 3], "[[x0, x1], x2], x3"),
        (lambda v: torch.sqrt((v[:, 0] - v[:, 1]) ** 2 + (v[:, 2] - v[:, 3]) ** 2), "[x0, x1], [x2, x3]"),
        (lambda v: torch.exp(v[:, 0] * v[:, 3]) + v[:, 1] * v[:, 2], "[x0, x3], [x1, x2]"),
        # Every group of a product is a module; ties go to the lowest inputs, and crossing groups are left out.
        (lambda v: v[:, 0] * v[:, 1] * v[:, 2] * v[:, 3], "[x0, x1], [x2, x3]"),
        # No group enters through one combination.
        (lambda v: torch.sin(v[:, 0] * v[:, 1] + v[:, 2]) * v[:, 1] + v[:, 0] * v[:, 2], "x0, x1, x2"),
    ],
)
def test_modular_tree_of_closed_forms(function, expression):
    x = _rows(4 if "x3" in expression else 3) + 1.5
    tree = modular_tree(function, x)
    assert tree.as_expression() == expression
    # Kept groups never cross.
    for a in tree.modules:
        for b in tree.modules:
            assert not (set(a) & set(b)) or set(a) <= set(b) or set(b) <= set(a)


def test_modular_tree_of_kanpiled_formula():
    model = kanpile("sin(a + b)*c + d", dtype=torch.float64)
    tree = modular_tree(model, _rows(4) + 1.5)
    assert tree.modules == ((0, 1), (0, 1, 2))
    assert tree.as_expression(["a", "b", "c", "d"]) == "[[a, b], c], d"
    assert tree.children((0, 1, 2)) == [(0, 1), (2,)]
    assert set(tree.scores) == {(0, 1), (0, 1, 2)}


def test_modular_tree_rejects_many_inputs():
    with pytest.raises(InvalidParameterError, match="at most 12 inputs"):
        modular_tree(lambda v: v.sum(dim=1), _rows(13))


def test_plot_tree_nodes_and_edges(tmp_path):
    from multkan.plot import plot_tree

    tree = modular_tree(lambda v: torch.sin(v[:, 0] + v[:, 1]) * v[:, 2] + v[:, 3], _rows(4) + 1.5)
    path = tmp_path / "tree.png"
    figure = plot_tree(tree, ["a", "b", "c", "d"], path=path)
    gids = [line.get_gid() for line in figure.axes[0].lines]
    # 4 inputs, 2 modules and the root; edges: 2 + 2 + 2.
    assert sum(gid.startswith("tree:node:") for gid in gids) == 7
    assert sum(gid.startswith("tree:edge:") for gid in gids) == 6
    assert path.stat().st_size > 0
    labels = {text.get_text() for text in figure.axes[0].texts}
    assert {"a", "b", "c", "d", "g(a, b)", "g(a, b, c)", "f"} <= labels
    with pytest.raises(InvalidParameterError, match="invalid names"):
        plot_tree(tree, ["a"])


def test_modular_tree_of_a_trained_network():
    # Pairs that x3 does not reach have both terms near 0, and the typical-size term keeps their score small.
    data = create_dataset(lambda v: torch.sin(v[:, [0]] + v[:, [1]]) * v[:, [2]] + v[:, [3]], n_var=4, seed=0)
    model = MultKAN([4, 6, 1], grid=5, seed=0)
    model.fit(data, steps=100, progress=False)
    tree = modular_tree(model)
    assert tree.as_expression() == "[[x0, x1], x2], x3"
    assert max(tree.scores.values()) < 0.05


def test_general_symmetry_of_trained_networks():
    scores = {}
    for name, target in (
        ("symmetric", lambda v: torch.exp(0.5 * (v[:, [0]] + v[:, [1]])) * v[:, [2]]),
        ("not", lambda v: torch.exp(0.5 * (v[:, [0]] * v[:, [2]] + v[:, [1]])) * v[:, [2]]),
    ):
        model = MultKAN([3, 5, 1], grid=5, seed=0)
        model.fit(create_dataset(target, n_var=3, seed=0), steps=100, progress=False)
        scores[name] = symmetry(model, None, [0, 1], mode="general")
    assert scores["symmetric"][0]
    assert not scores["not"][0]
    assert scores["not"][1] > 5 * scores["symmetric"][1]


@pytest.mark.parametrize("size", [1.0, 10.0, 100.0])
def test_add_score_ignores_other_terms(size):
    # A large term of other inputs must not hide the x1*x2 interaction.
    x = _rows(3)
    result = detect_separability(lambda v: size * torch.sin(v[:, 0]) + v[:, 1] * v[:, 2], x)
    assert result.groups == ((0,), (1, 2))
    assert float(result.scores[0, 1]) == 0.0
    if size <= 10.0:
        assert abs(float(result.scores[1, 2]) - 1.0) < 0.05
    else:
        # The pair's effect is below 1% of std(f), where the reference's floor lowers the score.
        assert float(result.scores[1, 2]) > 0.5


def test_product_far_from_zero_warns_in_add_mode():
    x = torch.rand(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) + 10
    with pytest.warns(MultKANWarning, match=r"inputs \(0, 1\) score as separable both additively and multiplicatively"):
        result = detect_separability(lambda v: v[:, 0] * v[:, 1], x)
    assert float(result.scores[0, 1]) == pytest.approx(0.027, abs=0.005)
    assert detect_separability(lambda v: v[:, 0] * v[:, 1], x, mode="mul").groups == ((0,), (1,))


def test_unused_input_is_inactive_and_alone():
    x = torch.rand(300, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    function = lambda v: torch.sin(v[:, 0] + v[:, 1]) * v[:, 2] + v[:, 3]  # noqa: E731
    assert separability.modular_tree(function, x).as_expression() == "[[[x0, x1], x2], x3], x4"
    result = detect_separability(function, x)
    assert result.inactive == (4,)
    assert result.groups == ((0, 1, 2), (3,), (4,))


def test_unused_input_of_trained_network_is_alone():
    data = create_dataset(lambda x: torch.exp(x[:, [0]]) + x[:, [1]] * x[:, [2]], n_var=4, seed=0)
    net = MultKAN([4, 5, 1], grid=5, seed=0)
    net.fit(data, steps=100, progress=False)
    result = detect_separability(net)
    assert result.groups == ((0,), (1, 2), (3,))
    assert result.inactive == (3,)


def test_scores_near_threshold_warn():
    x = torch.rand(300, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    score = float(interaction_scores(lambda v: torch.sin(v[:, 0] + 0.1 * v[:, 0] * v[:, 1]) + v[:, 1], x)[0, 1])
    with pytest.warns(MultKANWarning, match="pairs score close to threshold"):
        detect_separability(lambda v: torch.sin(v[:, 0] + 0.1 * v[:, 0] * v[:, 1]) + v[:, 1], x, threshold=score * 1.1)


def test_symmetry_rejects_repeated_index():
    x = torch.rand(50, 3, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match="each index once"):
        symmetry(lambda v: v.sum(dim=1), x, [1, 1])
