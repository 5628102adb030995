"""Batched training of many models: agreement with single models, per-model results, bad input."""

import math

import pytest
import torch

from multkan import InvalidDataError, InvalidParameterError, MultKAN, NonFiniteLossWarning, create_dataset
from multkan.batch import BatchedMultKAN, BatchFitResult
from multkan.train import fit


def _standard_function(x):
    return torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2)


def _dataset(dtype=torch.float64, train_num=120, test_num=60):
    return create_dataset(_standard_function, n_var=2, train_num=train_num, test_num=test_num, seed=0, dtype=dtype)


def _max_difference(first: MultKAN, second: MultKAN) -> float:
    states = first.state_dict(), second.state_dict()
    assert states[0].keys() == states[1].keys()
    return max(float((states[0][key] - states[1][key]).abs().max()) for key in states[0])


def _points(n=50, seed=1, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 2, generator=generator, dtype=torch.float64) * 2.4 - 1.2).to(dtype)


# Initialisation and extraction.


def test_initial_models_equal_seeded_multkan():
    ranges = [(-1.0, 1.0), (-2.0, 0.5), (0.0, 3.0)]
    batch = BatchedMultKAN([2, 3, 1], seeds=[4, 7, 4], grid=5, grid_range=ranges, dtype=torch.float64)
    for index, (seed, low_high) in enumerate(zip([4, 7, 4], ranges)):
        single = MultKAN([2, 3, 1], grid=5, seed=seed, grid_range=low_high, dtype=torch.float64)
        extracted = batch.model(index)
        assert _max_difference(extracted, single) == 0.0
        assert extracted.seed == seed
        assert extracted.options.grid_range == low_high


@pytest.mark.parametrize("width", [[2, 5, 1], [2, [2, 1], 1], [2, [0, 2], 2]])
def test_forward_equals_extracted_models(width):
    batch = BatchedMultKAN(width, seeds=range(4), grid=5)
    x = _points(dtype=torch.float32)
    output = batch(x)
    assert output.shape == (4, 50, batch.n_outputs)
    for index in range(4):
        expected = batch.model(index)(x)
        assert torch.allclose(output[index], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5])
def test_spline_orders_match_single_training(k):
    """Orders below 2 take their own branch of the basis recursion."""
    data = _dataset()
    batch = BatchedMultKAN([2, 2, 1], seeds=[0, 1], grid=4, k=k, dtype=torch.float64)
    x = _points()
    for index in range(2):
        assert torch.allclose(batch(x)[index], batch.model(index)(x), rtol=1e-12, atol=1e-12)
    batch.fit(data, steps=6, lr=2e-2, stop_grid_update_step=4, grid_update_num=2, progress=False)
    for index in range(2):
        single = MultKAN([2, 2, 1], grid=4, k=k, seed=index, dtype=torch.float64)
        fit(single, data, opt="Adam", steps=6, lr=2e-2, stop_grid_update_step=4, grid_update_num=2, seed=0, progress=False)
        assert _max_difference(batch.model(index), single) < 1e-10


def test_input_gradient_passes_gradcheck():
    batch = BatchedMultKAN([2, [1, 1], 1], seeds=[0, 1], grid=4, dtype=torch.float64)
    x = _points(n=6).requires_grad_()
    assert torch.autograd.gradcheck(batch, (x,))


def test_forward_accepts_one_slice_per_model():
    batch = BatchedMultKAN([2, [1, 1], 1], seeds=[0, 1, 2], grid=4, dtype=torch.float64)
    per_model = torch.stack([_points(seed=seed) for seed in range(3)])
    output = batch(per_model)
    for index in range(3):
        expected = batch.model(index)(per_model[index])
        assert torch.allclose(output[index], expected, rtol=1e-12, atol=1e-12)


def test_trained_forward_equals_extracted():
    data = _dataset(dtype=torch.float32)
    batch = BatchedMultKAN([2, [2, 1], 1], seeds=range(3), grid=5)
    batch.fit(data, steps=15, lr=[1e-2, 2e-2, 5e-3], progress=False)
    x = data["test_input"]
    output = batch(x)
    for index in range(3):
        assert torch.allclose(output[index], batch.model(index)(x), rtol=1e-5, atol=1e-5)


def test_extracted_model_is_independent():
    data = _dataset()
    batch = BatchedMultKAN([2, 3, 1], seeds=[0, 1], grid=5, dtype=torch.float64)
    batch.fit(data, steps=3, progress=False)
    before = batch(data["test_input"]).clone()
    extracted = batch.model(1)
    assert torch.equal(extracted.train_input, data["train_input"])
    with torch.no_grad():
        extracted.layers[0].coef.add_(1.0)
    assert torch.equal(batch(data["test_input"]), before)


def test_extracted_model_saves_and_prunes(tmp_path):
    data = _dataset()
    batch = BatchedMultKAN([2, 3, 1], seeds=[0, 1], grid=5, dtype=torch.float64)
    batch.fit(data, steps=5, progress=False)
    extracted = batch.model(0)
    path = tmp_path / "model.safetensors"
    extracted.save(path)
    loaded = MultKAN.load(path)
    x = data["test_input"]
    assert torch.allclose(loaded(x), batch(x)[0], rtol=1e-12, atol=1e-12)
    pruned = extracted.prune(node_th=0.0, edge_th=0.0)
    assert torch.allclose(pruned(x), extracted(x), rtol=1e-10, atol=1e-10)


def test_unstack_returns_every_model():
    batch = BatchedMultKAN([2, 2, 1], seeds=[3, 5, 8], grid=3)
    models = batch.unstack()
    assert [model.seed for model in models] == [3, 5, 8]
    x = _points(dtype=torch.float32)
    output = batch(x)
    for index, model in enumerate(models):
        assert torch.allclose(model(x), output[index], rtol=1e-5, atol=1e-6)


def test_from_models_keeps_parameters_and_masks():
    models = [MultKAN([2, [1, 1], 1], grid=4, seed=seed, dtype=torch.float64) for seed in range(3)]
    models[1].layers[0].set_zero(0, 1)
    batch = BatchedMultKAN.from_models(models)
    x = _points()
    output = batch(x)
    for index, model in enumerate(models):
        assert torch.allclose(output[index], model(x), rtol=1e-12, atol=1e-12)
    assert float(batch.layers[0].spline_mask[1, 0, 1]) == 0.0
    assert _max_difference(batch.model(1), models[1]) == 0.0


# Training against single models (the oracle).


def test_fit_equals_single_adam_fits():
    """Grid updates, mult nodes, per-model lr and lamb: each model as if trained alone."""
    data = _dataset()
    seeds, lrs, lambs = [0, 1, 2], [1e-2, 3e-2, 1e-2], [0.0, 0.0, 1e-2]
    batch = BatchedMultKAN([2, [2, 1], 1], seeds=seeds, grid=5, dtype=torch.float64)
    result = batch.fit(data, steps=25, lr=lrs, lamb=lambs, stop_grid_update_step=20, grid_update_num=4, log=5, seed=3, progress=False)
    for index in range(3):
        single = MultKAN([2, [2, 1], 1], grid=5, seed=seeds[index], dtype=torch.float64)
        history = fit(
            single, data, opt="Adam", steps=25, lr=lrs[index], lamb=lambs[index],
            stop_grid_update_step=20, grid_update_num=4, log=5, seed=3, progress=False,
        )
        assert _max_difference(batch.model(index), single) < 1e-9
        assert result.train_loss[:, index].tolist() == pytest.approx(history["train_loss"], rel=1e-9)
        assert result.test_loss[:, index].tolist() == pytest.approx(history["test_loss"], rel=1e-9)
        assert result.reg[:, index].tolist() == pytest.approx(history["reg"], rel=1e-9, abs=1e-12)


def test_fit_equals_single_fits_with_minibatches():
    data = _dataset()
    batch = BatchedMultKAN([2, 3, 1], seeds=[5, 6], grid=4, dtype=torch.float64)
    batch.fit(data, steps=12, lr=2e-2, batch=32, seed=11, update_grid=False, progress=False)
    for index, seed in enumerate([5, 6]):
        single = MultKAN([2, 3, 1], grid=4, seed=seed, dtype=torch.float64)
        fit(single, data, opt="Adam", steps=12, lr=2e-2, batch=32, seed=11, update_grid=False, progress=False)
        assert _max_difference(batch.model(index), single) < 1e-10


def test_fit_float32_close_to_single_fits():
    data = _dataset(dtype=torch.float32)
    batch = BatchedMultKAN([2, 3, 1], seeds=[0, 1], grid=5)
    batch.fit(data, steps=20, lr=1e-2, progress=False)
    for index in range(2):
        single = MultKAN([2, 3, 1], grid=5, seed=index)
        fit(single, data, opt="Adam", steps=20, lr=1e-2, seed=0, progress=False)
        assert _max_difference(batch.model(index), single) < 1e-4


def test_sgd_equals_torch_sgd_loop():
    data = _dataset()
    lrs = [0.05, 0.2]
    batch = BatchedMultKAN([2, 2, 1], seeds=[0, 1], grid=3, dtype=torch.float64)
    batch.fit(data, opt="SGD", steps=10, lr=lrs, update_grid=False, progress=False)
    for index, lr in enumerate(lrs):
        single = MultKAN([2, 2, 1], grid=3, seed=index, dtype=torch.float64)
        optimizer = torch.optim.SGD([p for p in single.parameters() if p.requires_grad], lr=lr)
        for _ in range(10):
            optimizer.zero_grad()
            loss = torch.mean((single(data["train_input"]) - data["train_label"]) ** 2)
            loss.backward()
            optimizer.step()
        assert _max_difference(batch.model(index), single) < 1e-12


def test_fit_cross_entropy_equals_single_fits():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(80, 2, generator=generator, dtype=torch.float64) * 2 - 1
    labels = (x[:, 0] * x[:, 1] > 0).long()
    data = {"train_input": x[:60], "train_label": labels[:60], "test_input": x[60:], "test_label": labels[60:]}
    batch = BatchedMultKAN([2, 3, 2], seeds=[0, 1], grid=3, dtype=torch.float64)
    result = batch.fit(data, steps=8, lr=1e-2, loss_fn="cross_entropy", progress=False)
    assert result.loss_kind == "cross_entropy"
    for index in range(2):
        single = MultKAN([2, 3, 2], grid=3, seed=index, dtype=torch.float64)
        history = fit(single, data, opt="Adam", steps=8, lr=1e-2, loss_fn="cross_entropy", seed=0, progress=False)
        assert _max_difference(batch.model(index), single) < 1e-10
        assert float(result.final_test_loss[index]) == pytest.approx(history["test_loss"][-1], rel=1e-9)


def test_update_grid_equals_single_update():
    batch = BatchedMultKAN([2, [1, 1], 1], seeds=[0, 1], grid=5, dtype=torch.float64)
    x = _points(n=200, seed=4)
    expected = [batch.model(index).update_grid(x, grid_eps=0.5) for index in range(2)]
    batch.update_grid(x, grid_eps=0.5)
    for index in range(2):
        assert _max_difference(batch.model(index), expected[index]) < 1e-10


def test_non_finite_model_is_frozen_others_train():
    data = _dataset()
    batch = BatchedMultKAN([2, 2, 1], seeds=[0, 1], grid=3, dtype=torch.float64)
    with pytest.warns(NonFiniteLossWarning, match=r"models \[1\] stopped at step"):
        result = batch.fit(data, opt="SGD", steps=6, lr=[0.05, 1e250], update_grid=False, progress=False)
    assert result.stopped_at[0] is None
    assert result.stopped_at[1] is not None
    frozen = batch.model(1)
    assert all(bool(torch.isfinite(value).all()) for value in frozen.state_dict().values())

    alone = BatchedMultKAN([2, 2, 1], seeds=[0], grid=3, dtype=torch.float64)
    alone.fit(data, opt="SGD", steps=6, lr=0.05, update_grid=False, progress=False)
    assert _max_difference(batch.model(0), alone.model(0)) < 1e-12
    assert result.best_index == 0


# Per-model results.


def test_result_shapes_and_best_index():
    data = _dataset()
    batch = BatchedMultKAN([2, 3, 1], seeds=[0, 0, 0], grid=5, dtype=torch.float64)
    result = batch.fit(data, steps=20, lr=torch.tensor([1e-4, 3e-2, 1e-3]), log=5, progress=False)
    assert isinstance(result, BatchFitResult)
    assert result.steps == [0, 5, 10, 15, 19]
    assert result.train_loss.shape == (5, 3)
    assert result.test_loss.shape == (5, 3)
    assert result.best_index == int(result.final_test_loss.argmin())
    # From one start, the largest learning rate gets furthest in 20 steps.
    assert result.best_index == 1
    rmse = torch.sqrt(torch.mean((batch(data["test_input"]) - data["test_label"]) ** 2, dim=(1, 2)))
    assert torch.allclose(result.final_test_loss, rmse, rtol=1e-12)


def test_summary_lists_every_model():
    data = _dataset()
    batch = BatchedMultKAN([2, 2, 1], seeds=[4, 9], grid=3, dtype=torch.float64)
    result = batch.fit(data, steps=2, lr=[1e-2, 2e-2], progress=False)
    lines = result.summary().splitlines()
    assert lines[0].startswith("| model | seed | lr | lamb | train RMSE | test RMSE |")
    assert len(lines) == 4
    assert lines[2].split("|")[2].strip() == "4"
    assert lines[3].split("|")[3].strip() == "0.02"
    assert "(best)" in lines[2 + result.best_index]


# Bad input.


def test_empty_seeds_rejected():
    with pytest.raises(InvalidParameterError, match=r"invalid seeds: expected a non-empty sequence of ints, one per model, received \[\]"):
        BatchedMultKAN([2, 2, 1], seeds=[])


def test_non_int_seeds_rejected():
    with pytest.raises(InvalidParameterError, match=r"invalid seeds: .* received \[0, 1\.5\]"):
        BatchedMultKAN([2, 2, 1], seeds=[0, 1.5])


def test_grid_range_count_rejected():
    with pytest.raises(InvalidParameterError, match=r"invalid grid_range: expected a pair \(low, high\) or 3 such pairs"):
        BatchedMultKAN([2, 2, 1], seeds=[0, 1, 2], grid_range=[(-1, 1), (-2, 2)])


def test_lr_length_rejected():
    batch = BatchedMultKAN([2, 2, 1], seeds=[0, 1, 2])
    with pytest.raises(InvalidParameterError, match=r"invalid lr: expected a positive finite number, or 3 of them, one per model, received \[0\.1, 0\.2\]"):
        batch.fit(_dataset(dtype=torch.float32), steps=1, lr=[0.1, 0.2], progress=False)


def test_negative_lamb_rejected():
    batch = BatchedMultKAN([2, 2, 1], seeds=[0, 1])
    with pytest.raises(InvalidParameterError, match=r"invalid lamb: expected a finite, >= 0 number, or 2 of them"):
        batch.fit(_dataset(dtype=torch.float32), steps=1, lamb=[0.0, -1.0], progress=False)


def test_lbfgs_rejected_with_reason():
    batch = BatchedMultKAN([2, 2, 1], seeds=[0, 1])
    with pytest.raises(InvalidParameterError, match=r"invalid opt: expected 'Adam' or 'SGD' \(L-BFGS couples the models.*received 'LBFGS'"):
        batch.fit(_dataset(dtype=torch.float32), opt="LBFGS", steps=1, progress=False)


def test_custom_loss_rejected():
    batch = BatchedMultKAN([2, 2, 1], seeds=[0])
    with pytest.raises(InvalidParameterError, match=r"invalid loss_fn: expected 'mse' or 'cross_entropy'"):
        batch.fit(_dataset(dtype=torch.float32), steps=1, loss_fn=lambda p, y: p.sum(), progress=False)


def test_dataset_input_columns_rejected():
    batch = BatchedMultKAN([2, 2, 1], seeds=[0, 1])
    data = _dataset(dtype=torch.float32)
    data["train_input"] = torch.zeros(120, 3)
    with pytest.raises(InvalidDataError, match=r"invalid train_input: the model has 2 inputs.*received shape \(120, 3\)"):
        batch.fit(data, steps=1, progress=False)


def test_dataset_label_rows_rejected():
    batch = BatchedMultKAN([2, 2, 1], seeds=[0, 1])
    data = _dataset(dtype=torch.float32)
    data["test_label"] = data["test_label"][:10]
    with pytest.raises(InvalidDataError, match=r"invalid test_label: expected 60 rows like the inputs, received shape \(10, 1\)"):
        batch.fit(data, steps=1, progress=False)


def test_forward_wrong_model_count_rejected():
    batch = BatchedMultKAN([2, 2, 1], seeds=[0, 1])
    with pytest.raises(InvalidDataError, match=r"invalid x: expected shape \(batch, 2\) for all models or \(2, batch, 2\).*received \(3, 5, 2\)"):
        batch(torch.zeros(3, 5, 2))


def test_model_index_out_of_range_rejected():
    batch = BatchedMultKAN([2, 2, 1], seeds=[0, 1])
    with pytest.raises(InvalidParameterError, match=r"invalid index: expected an integer in \[-2, 1\], received 2"):
        batch.model(2)


def test_from_models_width_mismatch_rejected():
    models = [MultKAN([2, 2, 1], seed=0), MultKAN([2, 3, 1], seed=1)]
    with pytest.raises(InvalidParameterError, match=r"invalid models\[1\] width: expected \[2, 2, 1\] as in models\[0\], received \[2, 3, 1\]"):
        BatchedMultKAN.from_models(models)


def test_from_models_symbolic_rejected():
    model = MultKAN([2, 2, 1], seed=0)
    model.fix_symbolic((0, 0, 0), "sin", fit_params=False)
    with pytest.raises(InvalidParameterError, match=r"invalid models\[0\] layer 0: expected no symbolic edges.*received \[\(\(0, 0\), 'sin'\)\]"):
        BatchedMultKAN.from_models([model])


def test_from_models_empty_rejected():
    with pytest.raises(InvalidParameterError, match=r"invalid models: expected a non-empty sequence of MultKAN, received \[\]"):
        BatchedMultKAN.from_models([])


def test_negative_index_counts_from_the_end():
    batch = BatchedMultKAN([2, 3, 1], seeds=[4, 5, 6])
    assert batch.model(-1).seed == 6
    assert batch.model(-3).seed == 4
    with pytest.raises(InvalidParameterError, match=r"an integer in \[-3, 2\]"):
        batch.model(-4)


def test_save_and_load_round_trip(tmp_path):
    from multkan import CheckpointError

    data = create_dataset(lambda x: x[:, [0]] * x[:, [1]], n_var=2, train_num=100, test_num=20, seed=0)
    batch = BatchedMultKAN([2, [1, 1], 1], seeds=[0, 1, 2], grid=5, dtype=torch.float64)
    batch.fit(data, steps=5, progress=False)
    path = tmp_path / "batch.safetensors"
    batch.save(path)
    loaded = BatchedMultKAN.load(path)
    assert loaded.seeds == batch.seeds
    assert torch.equal(loaded(data["test_input"]), batch(data["test_input"]))
    for index in range(3):
        for (name, original), restored in zip(batch.model(index).state_dict().items(), loaded.model(index).state_dict().values()):
            assert torch.equal(original, restored), name
    # A single model's file and a batch file are not mixed up.
    batch.model(0).save(tmp_path / "one.safetensors")
    with pytest.raises(CheckpointError, match="not a multkan batch file"):
        BatchedMultKAN.load(tmp_path / "one.safetensors")
    with pytest.raises(CheckpointError, match="not a multkan model file"):
        MultKAN.load(path)
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 1
    (tmp_path / "damaged.safetensors").write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        BatchedMultKAN.load(tmp_path / "damaged.safetensors")
