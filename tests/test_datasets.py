"""create_dataset on functions that are undefined on part of the sampled range."""

import re

import pytest
import torch

from multkan import InvalidDataError, InvalidParameterError, create_dataset


def _log_first(x):
    # NaN where x_0 < 0, -inf where x_0 == 0.
    return torch.log(x[:, 0])


def _reference(train_num=200, test_num=50, seed=0):
    """Return the dataset that create_dataset samples with the identity, so its inputs equal any other f's inputs."""
    return create_dataset(lambda x: x, n_var=2, train_num=train_num, test_num=test_num, seed=seed, dtype=torch.float64)


def test_nonfinite_labels_raise_with_count_and_example():
    reference = _reference()
    bad = reference["train_input"][:, 0] <= 0
    first = reference["train_input"][int(bad.nonzero()[0, 0])]

    with pytest.raises(InvalidDataError) as caught:
        create_dataset(_log_first, n_var=2, train_num=200, test_num=50, seed=0)
    message = str(caught.value)
    assert f"non-finite labels for {int(bad.sum())} of 200 train rows" in message
    assert f"({int((reference['train_input'][:, 0] < 0).sum())} NaN, " in message
    assert "f(x) = [nan] at x = [" in message
    example = [float(value) for value in re.search(r"at x = \[([^\]]*)\]", message).group(1).split(", ")]
    assert example == pytest.approx(first.tolist(), rel=1e-5)
    assert example[0] < 0
    assert "nonfinite='drop'" in message


def test_infinite_labels_counted_apart_from_nan():
    with pytest.raises(InvalidDataError, match=r"for 10 of 10 train rows \(0 NaN, 10 infinite\), for example f\(x\) = \[inf\]"):
        create_dataset(lambda x: 1.0 / torch.zeros(x.shape[0]), n_var=1, train_num=10, test_num=5)


def test_nonfinite_test_rows_named():
    def nan_on_test_rows(x):
        labels = x[:, 0].clone()
        if x.shape[0] == 7:
            labels[3] = float("nan")
        return labels

    with pytest.raises(InvalidDataError, match="non-finite labels for 1 of 7 test rows"):
        create_dataset(nan_on_test_rows, n_var=1, train_num=20, test_num=7)


def test_drop_removes_nonfinite_rows():
    reference = _reference()
    data = create_dataset(_log_first, n_var=2, train_num=200, test_num=50, seed=0, nonfinite="drop", dtype=torch.float64)
    for part in ("train", "test"):
        keep = reference[f"{part}_input"][:, 0] > 0
        assert data[f"{part}_input"].shape == (int(keep.sum()), 2)
        assert torch.equal(data[f"{part}_input"], reference[f"{part}_input"][keep])
        assert torch.equal(data[f"{part}_label"], torch.log(reference[f"{part}_input"][keep, :1]))
        assert bool(torch.isfinite(data[f"{part}_label"]).all())
    assert 0 < data["train_input"].shape[0] < 200


def test_drop_before_normalisation():
    data = create_dataset(_log_first, n_var=2, train_num=200, test_num=50, seed=0, nonfinite="drop", normalize_label=True, dtype=torch.float64)
    assert bool(torch.isfinite(data["label_mean"]).all())
    assert bool(torch.isfinite(data["label_std"]).all())
    assert float(data["train_label"].mean()) == pytest.approx(0.0, abs=1e-12)


def test_drop_keeps_finite_dataset_unchanged():
    dropped = create_dataset(lambda x: x[:, 0] * x[:, 1], n_var=2, train_num=30, test_num=10, nonfinite="drop")
    default = create_dataset(lambda x: x[:, 0] * x[:, 1], n_var=2, train_num=30, test_num=10)
    for key, value in default.items():
        assert torch.equal(dropped[key], value)


def test_drop_leaving_no_rows_raises():
    with pytest.raises(InvalidDataError, match="nonfinite='drop' leaves no train rows"):
        create_dataset(lambda x: torch.log(x[:, 0] - 5), n_var=1, train_num=20, test_num=5, nonfinite="drop")


@pytest.mark.parametrize("value", ["ignore", None, True])
def test_invalid_nonfinite_option(value):
    with pytest.raises(InvalidParameterError, match="invalid nonfinite: expected 'raise' or 'drop'"):
        create_dataset(lambda x: x[:, 0], n_var=1, train_num=5, test_num=5, nonfinite=value)


def test_broadcast_labels_raise_with_the_cause():
    # x[:, [0]] + x[:, 1] is (n, 1) + (n,), which torch broadcasts to (n, n).
    with pytest.raises(InvalidDataError, match=r"shape \(1000, 1000\), one column per row, because f combined an \(n,\) and an \(n, 1\)"):
        create_dataset(lambda x: x[:, [0]] + x[:, 1], n_var=2)


def test_row_count_outputs_kept():
    # A function with truly n outputs is kept, odd as it is.
    data = create_dataset(lambda x: x[:, :1].expand(-1, 4) * torch.arange(4), n_var=1, train_num=4, test_num=4)
    assert data["train_label"].shape == (4, 4)


def test_non_numeric_arrays_name_the_argument():
    import numpy as np

    from multkan import InvalidDataError, dataset_from_arrays

    with pytest.raises(InvalidDataError, match=r"invalid X: expected numbers only \(could not convert string to float"):
        dataset_from_arrays(np.array([["a", "1"], ["2", "3"]]), [1.0, 2.0])
    with pytest.raises(InvalidDataError, match="invalid y: expected numbers only"):
        dataset_from_arrays([[1.0], [2.0]], ["low", "high"])


def test_integer_labels_stay_class_indices():
    import numpy as np

    from multkan import dataset_from_arrays

    x = np.arange(20.0).reshape(10, 2)
    classes = dataset_from_arrays(x, np.arange(10) % 3, test_size=2)
    assert classes["train_label"].dtype == torch.int64
    assert classes["train_label"].shape == (8,)
    floats = dataset_from_arrays(x, (np.arange(10) % 3).astype(float), test_size=2)
    assert floats["train_label"].shape == (8, 1)
    assert floats["train_label"].is_floating_point()
