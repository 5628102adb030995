"""multkan.nn._direct.DirectObjective: the loss and gradient of fit without autograd, against autograd."""

import pytest
import torch

from multkan import MultKAN
from multkan.nn._direct import DirectObjective
from multkan.nn._layer import UNIFORM_LOCAL_MIN


def _data(n_rows, n_inputs, n_outputs, seed=0):
    generator = torch.Generator().manual_seed(seed)
    # Points beyond the extended knots (|x| > 1.6) check the zero basis there.
    x = torch.rand(n_rows, n_inputs, generator=generator, dtype=torch.float64) * 3.6 - 1.8
    y = torch.randn(n_rows, n_outputs, generator=generator, dtype=torch.float64)
    return x, y


def _perturb(model, seed=1):
    """Move every parameter off its initial value, so no gradient term is zero by symmetry."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def _autograd(model, x, y):
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    return float(loss.detach()), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _direct(model, x, y, objective=None):
    model.zero_grad(set_to_none=True)
    loss = (objective or DirectObjective(model))(x, y)
    assert loss is not None
    return float(loss), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _assert_same(model, x, y, objective=None, zero=()):
    expected_loss, expected = _autograd(model, x, y)
    loss, grads = _direct(model, x, y, objective)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad and "symbolic" not in name}
    assert trainable <= set(grads)
    for name in trainable:
        torch.testing.assert_close(grads[name], expected[name], rtol=1e-10, atol=1e-13, msg=name)
        assert (float(grads[name].abs().max()) > 0) != (name in zero), name


@pytest.mark.parametrize(
    ("width", "options"),
    [
        ([2, 5, 1], dict(grid=5, k=3)),
        ([3, 4, 2], dict(grid=4, k=2, base_fun="identity")),
        ([2, 3, 1], dict(grid=3, k=1)),
        ([3, 4, 3, 2], dict(grid=5, k=3, affine_trainable=True)),
        ([2, [0, 1], 1], dict(grid=5, k=3)),
        ([3, [1, 2], 2], dict(grid=3, k=3, mult_arity=3, affine_trainable=True)),
        ([3, [1, 2], 2], dict(grid=3, k=3, mult_arity=[2, [2, 3], 2], affine_trainable=True)),
    ],
)
def test_gradient_matches_autograd(width, options):
    model = MultKAN(width, dtype=torch.float64, seed=0, **options)
    _perturb(model)
    n_inputs = width[0]
    n_outputs = width[-1] if isinstance(width[-1], int) else width[-1][0]
    x, y = _data(60, n_inputs, n_outputs)
    _assert_same(model, x, y)


def test_zero_base_and_masked_edges():
    model = MultKAN([3, 4, 1], grid=5, k=3, base_fun="zero", dtype=torch.float64, seed=0)
    _perturb(model)
    with torch.no_grad():
        model.layers[0].spline_mask[1, 2] = 0.0
    x, y = _data(50, 3, 1)
    _assert_same(model, x, y, zero=("layers.0.scale_base", "layers.1.scale_base"))
    model.zero_grad(set_to_none=True)
    DirectObjective(model)(x, y)
    assert float(model.layers[0].coef.grad[1, 2].abs().max()) == 0.0
    assert float(model.layers[0].scale_base.grad.abs().max()) == 0.0


def test_gradient_matches_after_grid_update():
    model = MultKAN([2, 5, 1], grid=5, k=3, dtype=torch.float64, seed=0)
    _perturb(model)
    x, y = _data(80, 2, 1)
    objective = DirectObjective(model)
    _assert_same(model, x, y, objective)
    # Unequally spaced knots take the dense recursion, and the cached first-layer features must be dropped.
    model.update_grid(x, grid_eps=0.1)
    assert model.layers[0]._spline_constants().uniform is None
    _assert_same(model, x, y, objective)


def test_local_evaluation_for_large_batches():
    model = MultKAN([2, 3, 1], grid=5, k=3, dtype=torch.float64, seed=0)
    _perturb(model)
    layer = model.layers[1]
    n_rows = UNIFORM_LOCAL_MIN // layer._spline_constants().grid_columns.numel() + 1
    x, y = _data(n_rows, 2, 1)
    assert layer._fused_constants(torch.zeros(n_rows, 3, dtype=torch.float64)).uniform is not None
    _assert_same(model, x, y)


def test_first_layer_features_follow_the_inputs():
    model = MultKAN([2, 3, 1], grid=5, k=3, dtype=torch.float64, seed=0)
    _perturb(model)
    x, y = _data(40, 2, 1)
    objective = DirectObjective(model)
    first = float(objective(x, y))
    assert float(objective(x, y)) == first
    with torch.no_grad():
        x.mul_(0.5)
    _assert_same(model, x, y, objective)
    assert float(objective(x, y)) != first
    other, _ = _data(40, 2, 1, seed=5)
    _assert_same(model, other, y, objective)


def test_supports():
    model = MultKAN([2, 3, 1], seed=0)
    assert DirectObjective.supports(model, "mse", 0.0)
    assert not DirectObjective.supports(model, "mse", 0.01)
    assert not DirectObjective.supports(model, "cross_entropy", 0.0)
    assert not DirectObjective.supports(model, "custom", 0.0)
    model.fix_symbolic(0, 0, 0, "sin", fit_params_bool=False)
    assert not DirectObjective.supports(model, "mse", 0.0)


def test_unfused_grid_returns_none():
    model = MultKAN([2, 3, 1], grid=25, k=3, dtype=torch.float64, seed=0)
    model.update_grid(torch.rand(500, 2, dtype=torch.float64) ** 3, grid_eps=0.0)
    x, y = _data(10, 2, 1)
    model.zero_grad(set_to_none=True)
    assert DirectObjective(model)(x, y) is None
    assert all(p.grad is None for p in model.parameters())


def test_fit_uses_direct_gradient_and_matches_autograd_fit():
    x, y = _data(200, 2, 1)
    data = {"train_input": x, "train_label": torch.sin(x[:, :1]) * x[:, 1:], "test_input": x[:50], "test_label": torch.sin(x[:50, :1]) * x[:50, 1:]}
    direct = MultKAN([2, 3, 1], grid=5, k=3, dtype=torch.float64, seed=0)
    reference = MultKAN([2, 3, 1], grid=5, k=3, dtype=torch.float64, seed=0)
    calls = []
    original = DirectObjective.__call__

    def counting(self, inputs, labels):
        calls.append(1)
        return original(self, inputs, labels)

    DirectObjective.__call__ = counting
    try:
        direct.fit(data, opt="Adam", steps=5, lr=0.01, progress=False)
    finally:
        DirectObjective.__call__ = original
    assert len(calls) == 5
    # lamb > 0 takes autograd; with lamb tiny the result must be the same to the regulariser's share.
    reference.fit(data, opt="Adam", steps=5, lr=0.01, lamb=1e-300, progress=False)
    for (name, a), b in zip(direct.state_dict().items(), reference.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


def test_predict_matches_forward():
    model = MultKAN([3, [2, 1], 2], grid=5, k=3, dtype=torch.float64, seed=0)
    _perturb(model)
    objective = DirectObjective(model)
    x, _ = _data(30, 3, 2)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(objective.predict(x), expected, rtol=1e-12, atol=1e-14)
    # A second call takes the kept first-layer features.
    torch.testing.assert_close(objective.predict(x), expected, rtol=1e-12, atol=1e-14)


def test_first_layer_cache_keeps_two_inputs():
    model = MultKAN([2, 3, 1], grid=5, k=3, dtype=torch.float64, seed=0)
    objective = DirectObjective(model)
    inputs = [_data(20, 2, 1, seed=seed)[0] for seed in range(3)]
    for x in inputs:
        objective.predict(x)
    assert len(objective._first) == 2
    assert {entry[0] is inputs[0] for entry in objective._first.values()} == {False}
    with torch.no_grad():
        expected = model(inputs[0])
    torch.testing.assert_close(objective.predict(inputs[0]), expected, rtol=1e-12, atol=1e-14)


def test_logged_losses_match_forward():
    x, y = _data(100, 2, 1)
    data = {"train_input": x, "train_label": y, "test_input": x[:40].clone(), "test_label": y[:40].clone()}
    model = MultKAN([2, 3, 1], grid=5, k=3, dtype=torch.float64, seed=0)
    history = model.fit(data, opt="LBFGS", steps=2, progress=False)
    with torch.no_grad():
        test = torch.sqrt(torch.mean((model(data["test_input"]) - data["test_label"]) ** 2))
        train = torch.sqrt(torch.mean((model(x) - y) ** 2))
    assert history["test_loss"][-1] == pytest.approx(float(test), rel=1e-12)
    assert history["train_loss"][-1] == pytest.approx(float(train), rel=1e-12)


def test_reused_feature_memory_separate():
    model = MultKAN([2, 4, 3, 1], grid=5, k=3, dtype=torch.float64, seed=0)
    _perturb(model)
    objective = DirectObjective(model)
    (x, y), (other, other_y) = _data(50, 2, 1), _data(50, 2, 1, seed=3)
    with torch.no_grad():
        expected = model(other)
    first = objective.predict(other)
    for inputs, labels in ((x, y), (other, other_y), (x, y)):
        _assert_same(model, inputs, labels, objective)
        # Rows of the same shape without the backward pass's records, between two evaluations.
        torch.testing.assert_close(objective.predict(other), expected, rtol=1e-12, atol=1e-14)
    # A returned prediction does not share the reused memory.
    torch.testing.assert_close(first, expected, rtol=1e-12, atol=1e-14)
    assert 0 < len(objective._buffers) <= 4
    for n_rows in range(3, 40):
        objective.predict(_data(n_rows, 2, 1)[0])
    assert len(objective._buffers) <= 4 * len(model.layers)
