"""Training: datasets, argument checks, the non-finite guard and the accuracy targets."""

import math
import warnings

import pytest
import torch

from multkan import InvalidDataError, InvalidParameterError, MultKAN, MultKANWarning, NonFiniteLossWarning, create_dataset, dataset_from_arrays
from multkan.train import regularization


def _standard_function(x):
    return torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2)


def test_create_dataset_shapes_and_values():
    data = create_dataset(lambda x: x[:, 0] + 2 * x[:, 1], n_var=2, ranges=[[0, 1], [2, 3]], train_num=30, test_num=7, seed=1)
    assert data["train_input"].shape == (30, 2)
    assert data["test_label"].shape == (7, 1)
    assert (data["train_input"][:, 1] >= 2).all()
    assert (data["train_input"][:, 1] <= 3).all()
    expected = data["train_input"][:, 0] + 2 * data["train_input"][:, 1]
    assert torch.allclose(data["train_label"][:, 0], expected, atol=1e-6)


def test_create_dataset_seeded_and_global_rng_untouched():
    state = torch.get_rng_state()
    first = create_dataset(lambda x: x[:, 0], n_var=1, seed=5)
    second = create_dataset(lambda x: x[:, 0], n_var=1, seed=5)
    assert torch.equal(first["train_input"], second["train_input"])
    assert torch.equal(state, torch.get_rng_state())


def test_dataset_from_arrays_split():
    X = torch.arange(20.0).reshape(10, 2)
    data = dataset_from_arrays(X, X.sum(dim=1), test_size=0.3)
    assert data["train_input"].shape == (7, 2)
    assert data["test_label"].shape == (3, 1)
    assert torch.allclose(data["train_input"].sum(dim=1, keepdim=True), data["train_label"])


def test_nonfinite_labels_raise_before_training():
    A, n, E, R = 3.5e15, -0.41, 1.0, 8.314
    x = torch.linspace(-1, 1, 201, dtype=torch.float64)[:, None]
    y = A * x**n * torch.exp(-E / (R * x))
    data = {"train_input": x, "train_label": y, "test_input": x, "test_label": y}
    model = MultKAN([1, 5, 1], seed=0)
    before = model.layers[0].coef.clone()
    with pytest.raises(InvalidDataError, match=r"train_label has \d+ non-finite values .* in \d+ rows \(rows 0, 1"):
        model.fit(data, steps=1, progress=False)
    assert torch.equal(before, model.layers[0].coef)


def test_nonfinite_inputs_raise():
    x = torch.rand(20, 2)
    x[3, 1] = float("inf")
    data = {"train_input": x, "train_label": torch.rand(20, 1), "test_input": torch.rand(5, 2), "test_label": torch.rand(5, 1)}
    with pytest.raises(InvalidDataError, match=r"train_input has 1 non-finite values \(0 NaN, 1 inf\) in 1 rows \(rows 3\)"):
        MultKAN([2, 1]).fit(data, steps=1, progress=False)


def test_guard_restores_parameters_on_nan_loss():
    data = create_dataset(lambda x: x[:, 0], n_var=1, train_num=50, test_num=10)
    calls = {"n": 0}

    # Training evaluations (with gradients) turn NaN from the fourth on;
    # history evaluations stay finite.
    def loss_turning_nan(prediction, label):
        loss = torch.mean((prediction - label) ** 2)
        if not torch.is_grad_enabled():
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 3 else loss

    model = MultKAN([1, 2, 1], seed=0)
    with pytest.warns(NonFiniteLossWarning, match="stopped at step"):
        history = model.fit(data, opt="Adam", steps=10, lr=0.01, loss_fn=loss_turning_nan, update_grid=False, progress=False)
    assert history["stopped_at"] is not None
    assert all(math.isfinite(v) for v in history["train_loss"] + history["test_loss"] + history["reg"])
    for parameter in model.parameters():
        assert torch.isfinite(parameter).all()


def test_guard_restores_verified_parameters_exactly():
    data = create_dataset(lambda x: x[:, 0], n_var=1, train_num=50, test_num=10, seed=0)
    calls = {"n": 0}
    states = []

    # Training evaluation 4 (the first of step 3, with Adam one per step) is NaN.
    def loss_turning_nan(prediction, label):
        loss = torch.mean((prediction - label) ** 2)
        if not torch.is_grad_enabled():
            return loss
        calls["n"] += 1
        states.append({name: value.detach().clone() for name, value in model.state_dict().items()})
        return loss * float("nan") if calls["n"] == 4 else loss

    model = MultKAN([1, 2, 1], seed=0)
    with pytest.warns(NonFiniteLossWarning, match=r"stopped at step 3: .* the start of step 2 were restored\. Lower lr or lamb\.$"):
        history = model.fit(data, opt="Adam", steps=10, lr=0.01, loss_fn=loss_turning_nan, update_grid=False, progress=False)
    assert history["stopped_at"] == 3
    # Steps 0 and 1 are logged. Step 2's record needs the loss at the start of step 3, which is NaN.
    assert len(history["train_loss"]) == 2
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, states[2][name], rtol=0, atol=0, msg=name)


def test_guard_stops_on_non_finite_predictions():
    # Adam with a huge rate gives finite parameters whose predictions overflow.
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(200, 30, generator=generator) * 2 - 1
    y = x[:, :3].sum(dim=1, keepdim=True)
    data = {"train_input": x, "train_label": y, "test_input": x[:50], "test_label": y[:50]}
    model = MultKAN([30, 5, 1], seed=0)
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    with pytest.warns(NonFiniteLossWarning, match=r"stopped at step 0: .*Lower lr or lamb\.$"):
        history = model.fit(data, opt="Adam", lr=1e20, steps=5, progress=False)
    assert history["stopped_at"] == 0
    assert history["train_loss"] == []
    assert history["test_loss"] == []
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    # Step 0 began with a grid update, so its start differs from the initial state only in grid and coefficients.
    assert torch.equal(model.layers[0].scale_base, initial["layers.0.scale_base"])


def test_default_log_is_one_epoch_with_minibatches():
    data = create_dataset(lambda x: x[:, 0] * x[:, 1], n_var=2, train_num=100, test_num=20, seed=0)
    full = MultKAN([2, 2, 1], seed=0).fit(data, opt="Adam", steps=10, lr=0.01, progress=False)
    assert len(full["train_loss"]) == 10
    # ceil(100 / 30) = 4: steps 0, 4 and 8, and the last step.
    mini = MultKAN([2, 2, 1], seed=0).fit(data, opt="Adam", steps=10, lr=0.01, batch=30, progress=False)
    assert len(mini["train_loss"]) == 4
    every = MultKAN([2, 2, 1], seed=0).fit(data, opt="Adam", steps=10, lr=0.01, batch=30, log=1, progress=False)
    assert len(every["train_loss"]) == 10
    assert every["train_loss"][8] == pytest.approx(mini["train_loss"][2], rel=1e-6)


def test_strong_regularisation_wide_model_stays_finite():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(300, 300, generator=generator) * 2 - 1
    y = x[:, :3].sum(dim=1, keepdim=True)
    data = {"train_input": x[:250], "train_label": y[:250], "test_input": x[250:], "test_label": y[250:]}
    model = MultKAN([300, 10, 1], seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteLossWarning)
        history = model.fit(data, steps=3, lamb=0.1, progress=False)
    assert all(math.isfinite(v) for v in history["train_loss"] + history["reg"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    if history["stopped_at"] is not None:
        assert any(f"step {history['stopped_at']}" in str(w.message) for w in caught)


def test_constant_input_column():
    generator = torch.Generator().manual_seed(0)
    x1 = torch.rand(400, 1, generator=generator) * 2 - 1
    x = torch.cat([torch.full_like(x1, 0.5), x1], dim=1)
    y = torch.sin(math.pi * x1)
    data = {"train_input": x[:300], "train_label": y[:300], "test_input": x[300:], "test_label": y[300:]}
    model = MultKAN([2, 3, 1], grid=5, seed=0)
    history = model.fit(data, steps=20, progress=False)
    assert all(math.isfinite(v) for v in history["train_loss"])
    for layer in model.layers:
        assert (layer.grid.diff(dim=1) > 0).all()
    assert history["test_loss"][-1] < 0.05

    report = model.auto_symbolic(warn_weak=False)
    from_constant_input = [r for r in report if r.edge.layer == 0 and r.edge.source == 0]
    assert len(from_constant_input) == 3
    for record in from_constant_input:
        assert record.name == "0"
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_classification_fit_then_refine_finite():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(300, 9, generator=generator) * 2 - 1
    labels = (x[:, 0] * x[:, 1] > 0).long()
    data = {"train_input": x[:200], "train_label": labels[:200], "test_input": x[200:], "test_label": labels[200:]}
    model = MultKAN([9, 10, 2], grid=3, seed=0)
    first = model.fit(data, steps=5, loss_fn="cross_entropy", lamb=0.01, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MultKANWarning)
        pruned = model.prune()
    second = pruned.fit(data, steps=5, loss_fn="cross_entropy", update_grid=True, progress=False)
    with warnings.catch_warnings():
        # The hidden inputs left the grid after its last update, which refine reports.
        warnings.simplefilter("ignore", MultKANWarning)
        refined = pruned.refine(6)
    third = refined.fit(data, steps=5, loss_fn="cross_entropy", progress=False)
    for history in (first, second, third):
        assert all(math.isfinite(v) for v in history["train_loss"] + history["test_loss"])


def test_rank_deficient_grid_update_is_finite():
    x = torch.tensor([[-1.0], [0.0], [1.0]]).repeat(30, 1)
    data = {"train_input": x, "train_label": x**2, "test_input": x[:5], "test_label": x[:5] ** 2}
    model = MultKAN([1, 3, 1], grid=10, seed=0)
    history = model.fit(data, steps=3, progress=False)
    assert all(math.isfinite(v) for v in history["train_loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    tiny = MultKAN([1, 1], grid=10, seed=0)
    tiny.update_grid(torch.tensor([[0.2], [0.4]]))
    assert torch.isfinite(tiny.layers[0].coef).all()


def test_predictions_outside_grid_finite_and_continuous():
    data = create_dataset(lambda x: torch.sin(2 * x[:, 0]), n_var=1, train_num=200, test_num=50)
    model = MultKAN([1, 1], grid=5, seed=0)
    model.fit(data, steps=10, progress=False)
    high = float(model.layers[0].grid[0, -4])
    with torch.no_grad():
        values = model(torch.tensor([[high - 1e-6], [high + 1e-6], [5.0]]))
    assert torch.isfinite(values).all()
    assert abs(float(values[0] - values[1])) < 1e-4


def test_one_dimensional_labels_reshaped():
    x = torch.rand(100, 2)
    y = x[:, 0] + x[:, 1]
    data = {"train_input": x, "train_label": y, "test_input": x, "test_label": y}
    model = MultKAN([2, 1], seed=0)
    history = model.fit(data, steps=5, progress=False)
    assert history["train_loss"][-1] < 0.05


def test_mismatched_label_shape_raises():
    x = torch.rand(100, 2)
    data = {"train_input": x, "train_label": torch.rand(100, 3), "test_input": x, "test_label": torch.rand(100, 3)}
    with pytest.raises(InvalidDataError, match=r"expected shape \(100, 1\)"):
        MultKAN([2, 1]).fit(data, steps=1, progress=False)


def test_cross_entropy_needs_two_outputs():
    x = torch.rand(20, 6)
    labels = torch.randint(0, 2, (20,), generator=torch.Generator().manual_seed(0))
    data = {"train_input": x, "train_label": labels, "test_input": x, "test_label": labels}
    with pytest.raises(InvalidParameterError, match="at least 2 outputs"):
        MultKAN([6, 5, 1]).fit(data, loss_fn="cross_entropy", steps=1, progress=False)


def test_cross_entropy_needs_integer_labels():
    x = torch.rand(20, 6)
    data = {"train_input": x, "train_label": torch.rand(20, 2), "test_input": x, "test_label": torch.rand(20, 2)}
    with pytest.raises(InvalidDataError, match="1-D integer class labels"):
        MultKAN([6, 5, 2]).fit(data, loss_fn="cross_entropy", steps=1, progress=False)


@pytest.mark.parametrize("steps", [1, 2, 100])
@pytest.mark.parametrize("lamb", [0.0, 0.01])
def test_short_and_batched_runs(steps, lamb):
    data = create_dataset(lambda x: x[:, 0] * x[:, 1], n_var=2, train_num=64, test_num=8)
    model = MultKAN([2, 2, 1], seed=0)
    history = model.fit(
        data, opt="Adam", steps=steps, lamb=lamb, batch=16, lr=0.01, grid_update_num=10, stop_grid_update_step=5, progress=False
    )
    # One record per epoch of 64 / 16 = 4 steps (steps 0, 4, 8, ...), and the last step.
    assert len(history["train_loss"]) == len({*range(0, steps, 4), steps - 1})
    assert all(math.isfinite(v) for v in history["train_loss"] + history["test_loss"])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"opt": "RMSprop"}, "opt"),
        ({"steps": 0}, "steps"),
        ({"batch": 0}, "batch"),
        ({"lr": -1.0}, "lr"),
        ({"grid_update_num": 0}, "grid_update_num"),
        ({"loss_fn": "hinge"}, "loss_fn"),
        ({"log": 0}, "log"),
        ({"max_iter": 0}, "max_iter"),
        ({"steps": True}, "steps"),
        ({"update_grid": "yes"}, "update_grid"),
        ({"start_grid_update_step": 10, "stop_grid_update_step": 5}, "start_grid_update_step"),
        ({"start_grid_update_step": 5, "stop_grid_update_step": 5}, "start_grid_update_step"),
    ],
)
def test_invalid_fit_arguments_raise(kwargs, name):
    data = create_dataset(lambda x: x[:, 0], n_var=1, train_num=10, test_num=5)
    model = MultKAN([1, 1])
    with pytest.raises(InvalidParameterError, match=f"invalid {name}"):
        model.fit(data, progress=False, **kwargs)
    # A rejected call leaves the model as it was.
    assert model.train_input is None


def test_grid_steps_ignored_without_updates():
    data = create_dataset(lambda x: x[:, 0], n_var=1, train_num=10, test_num=5)
    history = MultKAN([1, 1]).fit(data, steps=2, update_grid=False, start_grid_update_step=10, stop_grid_update_step=5, progress=False)
    assert len(history["train_loss"]) == 2


def test_regularisation_closed_form_for_single_edge():
    model = MultKAN([1, 1], seed=0, dtype=torch.float64)
    x = torch.linspace(-1, 1, 11, dtype=torch.float64)[:, None]
    _, reg = regularization(model, x, lamb_l1=1.0, lamb_entropy=2.0)
    edge = model.activations(x)[0]["edges"][:, 0, 0].detach()
    magnitude = edge.std() / (x[:, 0].std() + 0.1)
    assert float(reg.detach()) == pytest.approx(float(magnitude), rel=1e-9)


def test_regularisation_ignores_constant_offset():
    model = MultKAN([1, 1], seed=0, dtype=torch.float64)
    model.fix_symbolic((0, 0, 0), "x", fit_params=False)
    x = torch.linspace(-1, 1, 11, dtype=torch.float64)[:, None]
    _, before = regularization(model, x)
    with torch.no_grad():
        model.layers[0].symbolic_affine[0, 0, 3] = 5.0
    _, after = regularization(model, x)
    assert float(after.detach()) == pytest.approx(float(before.detach()), rel=1e-12)


def test_same_seed_same_training():
    data = create_dataset(lambda x: x[:, 0] ** 2, n_var=1, train_num=50, test_num=10)
    first, second = MultKAN([1, 2, 1], seed=3), MultKAN([1, 2, 1], seed=3)
    first.fit(data, steps=3, batch=20, progress=False)
    second.fit(data, steps=3, batch=20, progress=False)
    for a, b in zip(first.parameters(), second.parameters()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_standard_example_reaches_target_rmse():
    data = create_dataset(_standard_function, n_var=2, train_num=1000, test_num=1000, seed=0)
    model = MultKAN([2, 5, 1], grid=5, k=3, seed=0)
    model.fit(data, steps=50, progress=False)
    refined = model.refine(10)
    history = refined.fit(data, steps=50, progress=False)
    assert history["test_loss"][-1] < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_product_reaches_target_rmse(seed):
    data = create_dataset(lambda x: x[:, 0] * x[:, 1], n_var=2, train_num=1000, test_num=1000, seed=0)
    model = MultKAN([2, [0, 1], 1], grid=5, seed=seed)
    # Grid updates at a random start can shrink the output grid to the
    # initial, tiny product range, so this fit keeps the initial grids.
    history = model.fit(data, steps=50, update_grid=False, progress=False)
    assert history["test_loss"][-1] < 1e-3


def test_adam_rejects_lr_beyond_dtype():
    data = create_dataset(lambda x: x[:, 0], n_var=1, train_num=20, test_num=5, seed=0)
    with pytest.raises(InvalidParameterError, match=r"invalid lr: expected a positive number below 3\.4e\+37 for Adam on torch\.float32"):
        MultKAN([1, 1], seed=0).fit(data, opt="Adam", lr=1e38, steps=1, progress=False)


def test_evaluation_rows_follow_width():
    from multkan.train import EVAL_BYTES, EVAL_CHUNK, evaluation_rows

    assert evaluation_rows(MultKAN([2, 5, 1], grid=5, k=3), 1000) == EVAL_CHUNK
    wide = MultKAN([400, 16, 2], grid=15, k=5)
    # 400 inputs * (20 + 2 * 5 + 3) values * 4 bytes * 2 per row.
    per_row = 400 * 33 * 4 * 2
    assert evaluation_rows(wide, 128) == EVAL_BYTES // per_row
    # A training batch larger than the budget sets the chunk, up to EVAL_CHUNK.
    assert evaluation_rows(wide, 1000) == 1000
    assert evaluation_rows(wide, 10_000) == EVAL_CHUNK


def test_logged_losses_the_same_in_chunks(monkeypatch):
    import multkan.train

    data = create_dataset(lambda x: x[:, [0]] * x[:, [1]], n_var=2, train_num=300, test_num=200, seed=0)
    histories = []
    for budget in (multkan.train.EVAL_BYTES, 1):
        # A budget of one byte gives chunks of one training batch (64 rows).
        monkeypatch.setattr(multkan.train, "EVAL_BYTES", budget)
        model = MultKAN([2, 3, 1], grid=5, k=3, seed=0, dtype=torch.float64)
        histories.append(model.fit(data, opt="Adam", steps=10, batch=64, lr=0.01, log=5, progress=False))
    for key in ("train_loss", "test_loss"):
        assert histories[0][key] == pytest.approx(histories[1][key], rel=1e-12)


def test_fit_rejects_a_meta_model():
    data = create_dataset(lambda x: x[:, 0], n_var=1, train_num=10, test_num=5)
    with pytest.raises(InvalidParameterError, match="invalid model: .*to_empty"):
        MultKAN([1, 1], device="meta").fit(data, progress=False)


def test_large_inputs_warn_with_the_columns():
    from multkan import InputScaleWarning

    generator = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, generator=generator, dtype=torch.float64) + 1
    x[:, 1] *= 200.0
    data = {"train_input": x, "train_label": x[:, :1], "test_input": x, "test_label": x[:, :1]}
    model = MultKAN([3, 1], input_names=["a", "b", "c"], dtype=torch.float64)
    with pytest.warns(InputScaleWarning, match=r"beyond \|x\| = 10 in 1 column\(s\): b \(\d+\)\. .*Standardise the inputs"):
        model.fit(data, steps=1, progress=False)
    # Inputs up to 10 in size, and a zero base function, give no warning.
    small = {key: (value / value.abs().amax(dim=0) * 10 if key.endswith("input") else value) for key, value in data.items()}
    MultKAN([3, 1], dtype=torch.float64).fit(small, steps=1, progress=False)
    MultKAN([3, 1], base_fun="zero", dtype=torch.float64).fit(data, steps=1, progress=False)


@pytest.mark.parametrize(
    ("ranges", "factor", "warned"),
    [((-1, 1), 1.0, False), ((-2, 2), 1.0, True), ((-1, 1), 9.0, False), ((0.5, 1.4), 1.0, False)],
)
def test_mult_nodes_warn_about_scale(ranges, factor, warned):
    from multkan import InputScaleWarning

    data = create_dataset(lambda x: factor * x[:, [0]] * x[:, [1]], n_var=2, ranges=ranges, train_num=50, test_num=10, seed=0)
    model = MultKAN([2, [0, 1], 1], grid=3, seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data, steps=1, progress=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, InputScaleWarning)]
    assert bool(messages) == warned
    if warned:
        assert "this model has mult nodes" in messages[0]


def test_sum_nodes_do_not_warn_about_mult_scale():
    data = create_dataset(lambda x: x[:, [0]] + x[:, [1]], n_var=2, ranges=(-2, 2), train_num=50, test_num=10, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MultKAN([2, 3, 1], grid=3, seed=0).fit(data, steps=1, progress=False)


def test_dataset_of_python_lists_is_accepted():
    data = create_dataset(lambda x: x[:, [0]], n_var=2, train_num=20, test_num=20, seed=0)
    history = MultKAN([2, 1], seed=0).fit({key: value.tolist() for key, value in data.items()}, steps=1, progress=False)
    assert len(history["train_loss"]) == 1
    with pytest.raises(InvalidDataError, match="invalid train_label: expected an array of numbers"):
        MultKAN([2, 1], seed=0).fit({**data, "train_label": [object()] * 20}, steps=1, progress=False)


def test_classes_from_dataset_from_arrays_train_and_score():
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (200, 2))
    classes = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0).astype(int)
    data = dataset_from_arrays(x, classes, seed=0)
    assert data["train_label"].dtype == torch.int64
    assert data["train_label"].ndim == 1
    model = MultKAN([2, 3], seed=0)

    def test_acc():
        # pykan's usual metric: it broadcasts to (n, n) when labels are (n, 1).
        return float((torch.argmax(model(data["test_input"]), dim=1) == data["test_label"]).float().mean())

    history = model.fit(data, steps=10, loss_fn="cross_entropy", progress=False, metrics=[test_acc])
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["test_acc"][-1] > 0.8


def test_cross_entropy_takes_a_column_of_whole_numbers():
    data = create_dataset(lambda x: (x[:, [0]] > 0).to(x.dtype), n_var=2, train_num=60, test_num=20, seed=0)
    assert data["train_label"].shape[1:] == (1,)
    history = MultKAN([2, 2], seed=0).fit(data, steps=3, loss_fn="cross_entropy", progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
    with pytest.raises(InvalidDataError, match="cross_entropy needs 1-D integer class labels"):
        MultKAN([2, 2], seed=0).fit({**data, "train_label": data["train_label"] + 0.5}, steps=1, loss_fn="cross_entropy", progress=False)


def test_fit_warning_points_at_the_callers_line():
    data = create_dataset(lambda x: x[:, [0]] * x[:, [1]], n_var=2, ranges=(-3, 3), train_num=50, test_num=10, seed=0)
    model = MultKAN([2, [0, 1], 1], grid=3, seed=0)
    with pytest.warns(MultKANWarning) as record:
        model.fit(data, steps=1, progress=False)
    assert {w.filename for w in record} == {__file__}


def test_metrics_are_recorded_with_the_losses():
    data = create_dataset(lambda x: x[:, [0]] * 2, n_var=1, train_num=50, test_num=20, seed=0)
    model = MultKAN([1, 1], grid=3, seed=0)

    def test_rmse():
        return float(torch.sqrt(torch.mean((model(data["test_input"]) - data["test_label"]) ** 2)))

    calls = []

    def grad_enabled():
        calls.append(torch.is_grad_enabled())
        return 0.0

    history = model.fit(data, steps=4, progress=False, metrics=[test_rmse, grad_enabled])
    assert len(history["test_rmse"]) == len(history["test_loss"]) == 4
    # Each metric is computed at the parameters of the step it is recorded with.
    for metric, loss in zip(history["test_rmse"], history["test_loss"]):
        assert metric == pytest.approx(loss, rel=1e-5)
    assert calls and not any(calls)


@pytest.mark.parametrize("metrics", [lambda: 0.0, [1.0], [math.sqrt, math.sqrt]])
def test_bad_metrics_are_named(metrics):
    data = create_dataset(lambda x: x[:, [0]], n_var=1, train_num=20, test_num=10, seed=0)
    with pytest.raises(InvalidParameterError, match="invalid metrics"):
        MultKAN([1, 1], seed=0).fit(data, steps=1, progress=False, metrics=metrics)


def test_sgd_takes_plain_gradient_steps():
    # One SGD step with lr moves every trained parameter by -lr times its gradient.
    data = create_dataset(lambda x: x[:, [0]] * 2, n_var=1, train_num=40, test_num=10, seed=0)
    model = MultKAN([1, 1], grid=3, seed=0)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    loss = torch.mean((model(data["train_input"]) - data["train_label"]) ** 2)
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = {name: torch.zeros_like(p) if g is None else g for (name, p), g in zip(before.items(), torch.autograd.grad(loss, trained, allow_unused=True))}
    model.fit(data, opt="SGD", lr=0.1, steps=1, update_grid=False, progress=False)
    for name, parameter in model.named_parameters():
        if name in before:
            assert torch.allclose(parameter.detach(), before[name] - 0.1 * grads[name], atol=1e-6), name
    history = MultKAN([1, 1], grid=3, seed=0).fit(data, opt="SGD", lr=0.1, steps=30, update_grid=False, progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
