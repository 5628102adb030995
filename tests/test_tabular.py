"""Reading CSV and TSV tables: delimiters, column selection and the message for each bad file."""

import warnings

import numpy as np
import pytest
import torch

from multkan import InvalidDataError, InvalidParameterError, MultKANWarning
from multkan.tabular import ConstantInputWarning, Table, read_table


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _rows(n=12, delimiter=","):
    """Return a header and ``n`` rows of x1, x2, label, y = x1 * x2, with a text column."""
    lines = [delimiter.join(["x1", "x2", "label", "y"])]
    for i in range(n):
        x1, x2 = 0.1 * i, 1.0 + 0.5 * (i % 3)
        lines.append(delimiter.join([f"{x1:.3f}", f"{x2:.3f}", f"sample{i}", f"{x1 * x2:.6f}"]))
    return "\n".join(lines) + "\n"


def _numeric_rows(n=12, delimiter=","):
    """Return a header and ``n`` rows of a, b, y with y = a + b."""
    lines = [delimiter.join(["a", "b", "y"])]
    for i in range(n):
        lines.append(delimiter.join([str(i), str(2 * i % 5), str(i + 2 * i % 5)]))
    return "\n".join(lines) + "\n"


# Happy paths.


def test_csv_default_inputs(tmp_path):
    path = _write(tmp_path, "data.csv", _numeric_rows())
    table = read_table(path, target="y")
    assert isinstance(table, Table)
    assert table.input_names == ["a", "b"]
    assert table.target_name == "y"
    assert table.path == path
    assert table.delimiter == ","
    assert table.X.shape == (12, 2)
    assert table.X.dtype == np.float64
    assert table.y.shape == (12,)
    assert np.array_equal(table.y, table.X.sum(axis=1))


def test_csv_with_inputs(tmp_path):
    path = _write(tmp_path, "data.csv", _rows())
    table = read_table(path, target="y", inputs=["x2", "x1"])
    assert table.input_names == ["x2", "x1"]
    assert table.X.shape == (12, 2)
    assert np.allclose(table.y, table.X[:, 0] * table.X[:, 1], atol=1e-5)


def test_inputs_as_comma_string(tmp_path):
    path = _write(tmp_path, "data.csv", _rows())
    table = read_table(path, target="y", inputs=" x1 , x2 ")
    assert table.input_names == ["x1", "x2"]


def test_tsv_default_inputs(tmp_path):
    path = _write(tmp_path, "data.tsv", _numeric_rows(delimiter="\t"))
    table = read_table(path, target="y")
    assert table.delimiter == "\t"
    assert table.input_names == ["a", "b"]
    assert np.array_equal(table.y, table.X.sum(axis=1))


def test_tsv_with_inputs(tmp_path):
    path = _write(tmp_path, "data.tab", _rows(delimiter="\t"))
    table = read_table(path, target="y", inputs=["x1", "x2"])
    assert table.delimiter == "\t"
    assert table.X.shape == (12, 2)


@pytest.mark.parametrize("delimiter", [",", "\t", ";"])
def test_sniffed_delimiter(tmp_path, delimiter):
    path = _write(tmp_path, "data.txt", _numeric_rows(delimiter=delimiter))
    table = read_table(path, target="y")
    assert table.delimiter == delimiter
    assert table.input_names == ["a", "b"]


def test_bom_blank_lines_spaces_and_quotes(tmp_path):
    text = '\ufeff a , "b" ,y\r\n' + "".join(f' {i} , "{i + 1}" , {2 * i + 1} \r\n\r\n' for i in range(10))
    path = _write(tmp_path, "data.csv", text)
    table = read_table(path, target="y")
    assert table.input_names == ["a", "b"]
    assert table.n_rows == 10
    assert np.array_equal(table.y, table.X.sum(axis=1))


def test_constant_target_accepted(tmp_path):
    text = "a,y\n" + "".join(f"{i},5\n" for i in range(10))
    path = _write(tmp_path, "data.csv", text)
    table = read_table(path, target="y")
    assert np.all(table.y == 5.0)


def test_to_dataset_split(tmp_path):
    path = _write(tmp_path, "data.csv", _numeric_rows(n=20))
    data = read_table(path, target="y").to_dataset(test_size=0.25, seed=1)
    assert data["train_input"].shape == (15, 2)
    assert data["test_input"].shape == (5, 2)
    assert data["train_label"].shape == (15, 1)
    assert data["train_input"].dtype == torch.float64
    assert torch.equal(data["train_input"].sum(dim=1, keepdim=True), data["train_label"])


# Bad files: each message names the file, and the column and line where there is one.


def _error(path, target="y", **options):
    with pytest.raises(InvalidDataError) as info:
        read_table(path, target, **options)
    message = str(info.value)
    assert str(path) in message
    return message


def test_missing_file(tmp_path):
    message = _error(tmp_path / "absent.csv")
    assert "not found" in message


def test_directory_rejected(tmp_path):
    message = _error(tmp_path)
    assert "directory" in message


def test_empty_file(tmp_path):
    message = _error(_write(tmp_path, "data.csv", ""))
    assert "empty" in message


def test_whitespace_only_file(tmp_path):
    message = _error(_write(tmp_path, "data.csv", " \n\n  \n"))
    assert "empty" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"a,y\n\xff\xfe,1\n")
    message = _error(path)
    assert "UTF-8" in message


def test_no_header(tmp_path):
    text = "".join(f"{i},{i + 1},{2 * i}\n" for i in range(12))
    message = _error(_write(tmp_path, "data.csv", text))
    assert "line 1" in message
    assert "header" in message


def test_empty_column_name(tmp_path):
    message = _error(_write(tmp_path, "data.csv", "a,,y\n" + "1,2,3\n" * 10))
    assert "line 1" in message
    assert "column 2" in message


def test_unknown_target_suggests(tmp_path):
    path = _write(tmp_path, "data.csv", _rows())
    message = _error(path, target="Y")
    assert "'Y' not found" in message
    assert "'x1', 'x2', 'label', 'y'" in message
    assert "Did you mean 'y'?" in message


def test_unknown_target_close_match(tmp_path):
    path = _write(tmp_path, "data.csv", "energy,mass,velocity\n" + "1,2,3\n" * 10)
    message = _error(path, target="enrgy")
    assert "Did you mean 'energy'?" in message


def test_unknown_input(tmp_path):
    path = _write(tmp_path, "data.csv", _rows())
    message = _error(path, inputs=["x1", "x3"])
    assert "input column 'x3' not found" in message
    assert "'x1', 'x2', 'label', 'y'" in message


def test_target_in_inputs(tmp_path):
    path = _write(tmp_path, "data.csv", _rows())
    message = _error(path, inputs=["x1", "y"])
    assert "'y'" in message
    assert "also listed in inputs" in message


def test_only_target_column(tmp_path):
    path = _write(tmp_path, "data.csv", "y\n" + "1\n" * 12)
    message = _error(path)
    assert "only the target column 'y'" in message


def test_duplicate_column(tmp_path):
    path = _write(tmp_path, "data.csv", "a,b,a,y\n" + "1,2,3,4\n" * 10)
    message = _error(path)
    assert "'a' appears more than once" in message
    assert "columns 1 and 3" in message


def test_duplicate_unused_column_ignored(tmp_path):
    path = _write(tmp_path, "data.csv", "a,note,note,y\n" + "1,x,z,4\n2,x,z,5\n" * 5)
    table = read_table(path, target="y", inputs="a")
    assert table.input_names == ["a"]


def test_non_numeric_value(tmp_path):
    lines = _numeric_rows().splitlines()
    lines[5] = "4,abc,7"
    message = _error(_write(tmp_path, "data.csv", "\n".join(lines)))
    assert "1 non-numeric value" in message
    assert "line 6, column 'b': 'abc'" in message


def test_text_column_default_inputs(tmp_path):
    message = _error(_write(tmp_path, "data.csv", _rows()))
    assert "12 non-numeric values" in message
    assert "line 2, column 'label': 'sample0'" in message
    assert "; ..." in message


def test_missing_value(tmp_path):
    lines = _numeric_rows().splitlines()
    lines[3] = "2,,4"
    lines[8] = "7,NA,9"
    message = _error(_write(tmp_path, "data.csv", "\n".join(lines)))
    assert "2 missing or non-finite values" in message
    assert "line 4, column 'b': empty" in message
    assert "line 9, column 'b': 'NA'" in message


@pytest.mark.parametrize("cell", ["nan", "inf", "-Infinity"])
def test_non_finite_value(tmp_path, cell):
    lines = _numeric_rows().splitlines()
    lines[10] = f"9,1,{cell}"
    message = _error(_write(tmp_path, "data.csv", "\n".join(lines)))
    assert "1 missing or non-finite value" in message
    assert f"line 11, column 'y': {cell!r}" in message


def test_many_missing_values_listed_first(tmp_path):
    text = "a,y\n" + "".join(f"{i},\n" for i in range(12))
    message = _error(_write(tmp_path, "data.csv", text))
    assert "12 missing or non-finite values" in message
    assert "line 2, column 'y': empty" in message
    assert "line 6, column 'y'" in message
    assert "line 7, column 'y'" not in message


def test_ragged_row(tmp_path):
    lines = _numeric_rows().splitlines()
    lines[4] = "3,1,4,1"
    lines[7] = "6,2"
    message = _error(_write(tmp_path, "data.csv", "\n".join(lines)))
    assert "2 rows with the wrong number of fields, expected 3" in message
    assert "line 5: received 4" in message
    assert "line 8: received 2" in message


def test_ragged_row_after_quoted_newline(tmp_path):
    text = 'note,a,y\n"two\nlines",1,2\n' + "x,1,2\n" * 10 + "x,1\n"
    message = _error(_write(tmp_path, "data.csv", text), inputs="a")
    assert "line 14: received 2" in message


def test_too_few_rows(tmp_path):
    message = _error(_write(tmp_path, "data.csv", _numeric_rows(n=4)))
    assert "found 4 data rows" in message
    assert "at least 10" in message


def test_header_only(tmp_path):
    message = _error(_write(tmp_path, "data.csv", "a,b,y\n"))
    assert "found 0 data rows" in message


def test_min_rows_option(tmp_path):
    table = read_table(_write(tmp_path, "data.csv", _numeric_rows(n=4)), target="y", min_rows=3)
    assert table.n_rows == 4


@pytest.mark.parametrize("min_rows", [0, 2.5, True])
def test_invalid_min_rows(tmp_path, min_rows):
    path = _write(tmp_path, "data.csv", _numeric_rows())
    with pytest.raises(InvalidParameterError, match="min_rows"):
        read_table(path, target="y", min_rows=min_rows)


@pytest.mark.parametrize("inputs", [[], "a,,b", ["a", "a"], [1, 2]])
def test_invalid_inputs(tmp_path, inputs):
    path = _write(tmp_path, "data.csv", _numeric_rows())
    with pytest.raises(InvalidParameterError, match="inputs"):
        read_table(path, target="y", inputs=inputs)


def test_constant_input_warns(tmp_path):
    text = "a,c,y\n" + "".join(f"{i},3.5,{i}\n" for i in range(10))
    path = _write(tmp_path, "data.csv", text)
    with pytest.warns(ConstantInputWarning) as record:
        table = read_table(path, target="y")
    assert len(record) == 1
    message = str(record[0].message)
    assert str(path) in message
    assert "input column 'c'" in message
    assert "3.5" in message
    assert issubclass(ConstantInputWarning, MultKANWarning)
    assert table.input_names == ["a", "c"]


def test_varying_inputs_do_not_warn(tmp_path):
    path = _write(tmp_path, "data.csv", _numeric_rows())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_table(path, target="y")


# Files whose delimiter differs from their suffix.


@pytest.mark.parametrize(("name", "delimiter"), [("data.csv", ";"), ("data.csv", "\t"), ("data.tsv", ","), ("data.tsv", ";"), ("data.tab", ";")])
def test_header_delimiter_overrides_suffix(tmp_path, name, delimiter):
    path = _write(tmp_path, name, _numeric_rows(delimiter=delimiter))
    table = read_table(path, target="y")
    assert table.delimiter == delimiter
    assert table.input_names == ["a", "b"]
    assert table.X.shape == (12, 2)
    assert np.array_equal(table.y, table.X.sum(axis=1))


def test_semicolon_csv_with_quoted_names(tmp_path):
    text = '"a";"b";"y"\n' + "".join(f"{i};{i + 1};{2 * i + 1}\n" for i in range(10))
    table = read_table(_write(tmp_path, "data.csv", text), target="y")
    assert table.delimiter == ";"
    assert table.input_names == ["a", "b"]
    assert np.array_equal(table.y, table.X.sum(axis=1))


def test_suffix_delimiter_kept_when_in_header(tmp_path):
    # The header contains a comma, so a semicolon inside a name does not switch the delimiter.
    text = "a;1,b,y\n" + "".join(f"{i},{i + 1},{2 * i + 1}\n" for i in range(10))
    table = read_table(_write(tmp_path, "data.csv", text), target="y")
    assert table.delimiter == ","
    assert table.input_names == ["a;1", "b"]


def test_one_column_header_names_delimiters(tmp_path):
    text = "a;b\ty\n" + "".join(f"{i};{i}\t{i}\n" for i in range(12))
    path = _write(tmp_path, "data.csv", text)
    with pytest.raises(InvalidDataError) as caught:
        read_table(path, target="y")
    message = str(caught.value)
    assert message.startswith(f"{path}, line 1: the header 'a;b\\ty' was read as one column with commas as delimiter")
    assert "it contains tabs and semicolons, so the delimiter looks like a tab or a semicolon" in message
    assert "Save the file with one kind of delimiter" in message


def test_one_column_without_other_delimiter(tmp_path):
    path = _write(tmp_path, "data.csv", "y\n" + "".join(f"{i}\n" for i in range(12)))
    with pytest.raises(InvalidDataError, match="has only the target column 'y'"):
        read_table(path, target="y")


def test_decimal_comma_hint(tmp_path):
    text = "a;b;y\n" + "".join(f"{i},5;{i};{i}\n" for i in range(12))
    with pytest.raises(InvalidDataError) as caught:
        read_table(_write(tmp_path, "data.csv", text), target="y")
    message = str(caught.value)
    assert "12 non-numeric values" in message
    assert "line 2, column 'a': '0,5'" in message
    assert "Values such as '0,5' use a decimal comma: write them with a decimal point, as in '0.5'." in message
    assert "leave a text column out" not in message


@pytest.mark.parametrize("cell", ["1,5", "-0,25", ",5", "2,5e3"])
def test_decimal_comma_forms(tmp_path, cell):
    text = "a;y\n" + "".join(f"{cell if i == 0 else i};{i}\n" for i in range(12))
    with pytest.raises(InvalidDataError, match="use a decimal comma"):
        read_table(_write(tmp_path, "data.csv", text), target="y")


def test_text_cell_gets_no_decimal_comma_hint(tmp_path):
    text = "a;y\n" + "".join(f"{'red,blue' if i == 0 else i};{i}\n" for i in range(12))
    with pytest.raises(InvalidDataError, match="leave a text column out of inputs"):
        read_table(_write(tmp_path, "data.csv", text), target="y")
