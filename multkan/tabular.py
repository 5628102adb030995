"""Numeric tables read from CSV and TSV files, the input of ``multkan discover data.csv --target y``.

A table file has a header row of column names and one row per sample. The
target column becomes ``y``, the input columns become ``X``. Every problem
found in the file raises :class:`~multkan.errors.InvalidDataError` with the
file name, the column and the line number in the file, where the header is
line 1.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .datasets import dataset_from_arrays
from .errors import InvalidDataError, MultKANWarning, invalid_parameter, user_stacklevel

__all__ = ["ConstantInputWarning", "Table", "read_table"]

DELIMITERS_BY_SUFFIX = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
SNIFFED_DELIMITERS = ",\t;"
DELIMITER_NAMES = {",": "comma", "\t": "tab", ";": "semicolon"}
SNIFF_CHARS = 64 * 1024
MAX_LISTED = 5
# Cells that spreadsheet and R exports write for a missing value. "nan" and
# "inf" are parsed as numbers and reported as non-finite instead.
MISSING_MARKERS = frozenset({"", "na", "n/a", "null", "none"})
# A number written with a decimal comma, such as "1,5" or "-0,25e3".
DECIMAL_COMMA = re.compile(r"[+-]?\d*,\d+(?:[eE][+-]?\d+)?")


class ConstantInputWarning(MultKANWarning):
    """An input column has the same value in every row, so it carries no information."""


@dataclass
class Table:
    """A numeric table read from a file by :func:`read_table`.

    Attributes
    ----------
    X : ndarray of shape (n_rows, n_inputs), float64
        Input columns, in the order of ``input_names``.
    y : ndarray of shape (n_rows,), float64
        Target column.
    input_names : list of str
    target_name : str
    path : Path
        File the table was read from.
    delimiter : str
        Field delimiter used to parse the file.
    """

    X: np.ndarray
    y: np.ndarray
    input_names: list[str]
    target_name: str
    path: Path
    delimiter: str = ","

    @property
    def n_rows(self) -> int:
        """Number of data rows."""
        return int(self.X.shape[0])

    def to_dataset(self, test_size: float | int = 0.2, seed: int = 0, *, dtype: torch.dtype | None = torch.float64) -> dict[str, torch.Tensor]:
        """Split the rows into a shuffled train and test dataset.

        Parameters
        ----------
        test_size : float in (0, 1) or int
            Fraction or number of rows held out for testing.
        seed : int
            Seed of the local shuffling generator.
        dtype : torch.dtype, optional
            Dtype of the tensors. The default, float64, keeps the precision of the numbers read.

        Returns
        -------
        dict
            ``train_input``, ``train_label`` (n_train, 1), ``test_input`` and
            ``test_label``, as built by :func:`multkan.datasets.dataset_from_arrays`.
        """
        return dataset_from_arrays(self.X, self.y, test_size=test_size, seed=seed, dtype=dtype)


def read_table(
    path: str | os.PathLike,
    target: str,
    inputs: str | Sequence[str] | None = None,
    *,
    min_rows: int = 10,
) -> Table:
    """Read a numeric table from a CSV or TSV file with a header row.

    The delimiter is a comma for ``.csv``, a tab for ``.tsv`` and ``.tab``,
    and otherwise detected with :class:`csv.Sniffer` among comma, tab and
    semicolon. A ``.csv``, ``.tsv`` or ``.tab`` file whose header line lacks
    the delimiter of its suffix but contains exactly one of the others is
    read with that one, so a semicolon-separated ``.csv`` file (the usual
    export where the decimal separator is a comma) is accepted. The file must be UTF-8 text (a byte order mark is allowed).
    Blank lines are skipped, and spaces around names and values are ignored.

    Parameters
    ----------
    path : str or path-like
    target : str
        Name of the target column.
    inputs : str or sequence of str, optional
        Names of the input columns, as a sequence or one comma-separated
        string (``"a,b,c"``). By default every column except the target.
        Columns that are not selected may hold any text.
    min_rows : int
        Smallest accepted number of data rows.

    Returns
    -------
    Table

    Raises
    ------
    InvalidDataError
        When the file is missing, empty, not UTF-8 or has no header. When
        the header is one column that contains more than one other
        delimiter, which then names the delimiters it found. When
        a requested column is unknown or its name appears twice. When a row
        has the wrong number of fields, or the file has fewer than
        ``min_rows`` data rows. When a selected column contains a non-numeric, missing (empty,
        ``NA``, ``null``) or non-finite (``nan``, ``inf``) value. Messages
        give line numbers in the file, counting the header as line 1.

    Warns
    -----
    ConstantInputWarning
        For each input column with the same value in every row. A constant
        target is accepted without a warning.

    Examples
    --------
    >>> table = read_table("data.csv", target="y", inputs="x1,x2")  # doctest: +SKIP
    >>> table.X.shape, table.input_names  # doctest: +SKIP
    ((200, 2), ['x1', 'x2'])
    """
    if not isinstance(min_rows, int) or isinstance(min_rows, bool) or min_rows < 1:
        raise invalid_parameter("min_rows", "an integer >= 1", min_rows)
    if not isinstance(target, str) or not target.strip():
        raise invalid_parameter("target", "a column name", target)
    target = target.strip()
    requested_inputs = None if inputs is None else _input_names(inputs)

    path = Path(path)
    text = _read_text(path)
    delimiter = _detect_delimiter(path, text)
    records = _split_records(path, text, delimiter)
    header_line, header = records[0]
    rows = records[1:]

    names = _column_names(path, header, header_line, delimiter)
    _check_one_column_header(path, names, header_line, delimiter)
    target_index, input_indices = _select_columns(path, names, target, requested_inputs)
    _check_field_counts(path, rows, len(names), delimiter)
    if len(rows) < min_rows:
        raise InvalidDataError(
            f"{path}: found {_count(len(rows), 'data row')}, but at least {min_rows} are needed (min_rows={min_rows}). "
            "Add rows or lower min_rows."
        )

    values = _parse_values(path, rows, names, [target_index, *input_indices])
    table = Table(
        X=values[:, 1:],
        y=values[:, 0],
        input_names=[names[i] for i in input_indices],
        target_name=target,
        path=path,
        delimiter=delimiter,
    )
    _warn_constant_inputs(table)
    return table


def _input_names(inputs: str | Sequence[str]) -> list[str]:
    if isinstance(inputs, str):
        names = [name.strip() for name in inputs.split(",")]
    elif isinstance(inputs, Sequence) and all(isinstance(name, str) for name in inputs):
        names = [name.strip() for name in inputs]
    else:
        raise invalid_parameter("inputs", "a sequence of column names or one comma-separated string", inputs)
    if not names or not all(names):
        raise invalid_parameter("inputs", "one or more non-empty column names", inputs)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise invalid_parameter("inputs", f"each column once, but {', '.join(map(repr, repeated))} is repeated", inputs)
    return names


def _read_text(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", newline="") as file:
            text = file.read()
    except FileNotFoundError:
        raise InvalidDataError(f"{path}: file not found. Check the path, or pass a CSV or TSV file.") from None
    except IsADirectoryError:
        raise InvalidDataError(f"{path}: is a directory, expected a CSV or TSV file.") from None
    except UnicodeDecodeError as error:
        raise InvalidDataError(
            f"{path}: not UTF-8 text (invalid byte at offset {error.start}). Save the table as UTF-8 CSV or TSV."
        ) from None
    except OSError as error:
        raise InvalidDataError(f"{path}: failed to read the file ({error.strerror}). Check that the file is readable.") from error
    if not text.strip():
        raise InvalidDataError(f"{path}: the file is empty. Expected a header row of column names and one row per sample.")
    return text


def _detect_delimiter(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in DELIMITERS_BY_SUFFIX:
        return _header_delimiter(text, DELIMITERS_BY_SUFFIX[suffix])
    try:
        return csv.Sniffer().sniff(text[:SNIFF_CHARS], delimiters=SNIFFED_DELIMITERS).delimiter
    except csv.Error:
        # The sniffer gives up on some small or single-column files. Fall
        # back to the delimiter that occurs most often in the first line, or a
        # comma when there is none.
        first_line = text.lstrip().splitlines()[0]
        counts = {delimiter: first_line.count(delimiter) for delimiter in SNIFFED_DELIMITERS}
        best = max(counts, key=counts.get)
        return best if counts[best] > 0 else ","


def _header_delimiter(text: str, expected: str) -> str:
    """Return ``expected``, or the one other delimiter in the header line when the header lacks ``expected``.

    The header line decides, not :class:`csv.Sniffer`, because in a
    semicolon-separated file with decimal commas the data rows contain
    commas too.
    """
    header = text.lstrip().splitlines()[0]
    if expected in header:
        return expected
    others = [delimiter for delimiter in SNIFFED_DELIMITERS if delimiter != expected and delimiter in header]
    return others[0] if len(others) == 1 else expected


def _split_records(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """Return ``(line, fields)`` for every non-blank record, where ``line`` is the record's first line in the file."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
    records = []
    first_line = 1
    try:
        for fields in reader:
            if fields and not (len(fields) == 1 and not fields[0].strip()):
                records.append((first_line, [field.strip() for field in fields]))
            first_line = reader.line_num + 1
    except csv.Error as error:
        raise InvalidDataError(f"{path}, line {reader.line_num}: failed to parse the line ({error}). Check that the file is a text table.") from None
    return records


def _column_names(path: Path, header: list[str], line: int, delimiter: str) -> list[str]:
    if all(_is_number(field) for field in header):
        raise InvalidDataError(
            f"{path}, line {line}: expected a header row of column names, received numbers only ({_preview(header)}). "
            f"Add a first line with one name per column, separated by {DELIMITER_NAMES.get(delimiter, repr(delimiter))}s."
        )
    for position, name in enumerate(header, start=1):
        if not name:
            raise InvalidDataError(f"{path}, line {line}: column {position} of the header has an empty name. Give every column a name.")
    return header


def _select_columns(path: Path, names: list[str], target: str, inputs: list[str] | None) -> tuple[int, list[int]]:
    target_index = _column_index(path, names, target, "target")
    if inputs is None:
        inputs = [name for position, name in enumerate(names) if position != target_index]
        if not inputs:
            raise InvalidDataError(f"{path}: the table has only the target column {target!r}. Add input columns.")
    elif target in inputs:
        raise InvalidDataError(f"{path}: the target column {target!r} is also listed in inputs. Remove it from inputs.")
    return target_index, [_column_index(path, names, name, "input") for name in inputs]


def _column_index(path: Path, names: list[str], name: str, role: str) -> int:
    positions = [position for position, column in enumerate(names) if column == name]
    if len(positions) > 1:
        numbers = " and ".join(str(position + 1) for position in positions)
        raise InvalidDataError(f"{path}: {role} column {name!r} appears more than once in the header (columns {numbers}). Rename all but one.")
    if positions:
        return positions[0]

    message = f"{path}: {role} column {name!r} not found. The columns are {', '.join(map(repr, names))}."
    matches = _close_matches(name, names)
    if matches:
        message += f" Did you mean {' or '.join(map(repr, matches))}?"
    raise InvalidDataError(message)


def _check_one_column_header(path: Path, header: list[str], line: int, delimiter: str) -> None:
    """Raise when the header is one column that contains other delimiters, so the file was split on the wrong one."""
    if len(header) != 1:
        return
    found = [DELIMITER_NAMES[other] for other in SNIFFED_DELIMITERS if other != delimiter and other in header[0]]
    if not found:
        return
    raise InvalidDataError(
        f"{path}, line {line}: the header {header[0]!r} was read as one column with {DELIMITER_NAMES.get(delimiter, repr(delimiter))}s "
        f"as delimiter, but it contains {' and '.join(f'{name}s' for name in found)}, so the delimiter looks like "
        f"{' or '.join(f'a {name}' for name in found)}. Save the file with one kind of delimiter, "
        "such as commas in a .csv file or tabs in a .tsv file."
    )


def _close_matches(name: str, names: list[str]) -> list[str]:
    same_case_insensitive = [column for column in names if column.lower() == name.lower()]
    similar = difflib.get_close_matches(name.lower(), [column.lower() for column in names], n=3, cutoff=0.6)
    matches = same_case_insensitive + [column for column in names if column.lower() in similar]
    return list(dict.fromkeys(matches))[:3]


def _check_field_counts(path: Path, rows: list[tuple[int, list[str]]], expected: int, delimiter: str) -> None:
    ragged = [(line, len(fields)) for line, fields in rows if len(fields) != expected]
    if not ragged:
        return
    listed = "; ".join(f"line {line}: received {count}" for line, count in ragged[:MAX_LISTED])
    delimiter_name = DELIMITER_NAMES.get(delimiter, repr(delimiter))
    raise InvalidDataError(
        f"{path}: {_count(len(ragged), 'row')} with the wrong number of fields, expected {expected} like the header "
        f"({listed}{'; ...' if len(ragged) > MAX_LISTED else ''}). Look for a missing or extra {delimiter_name}, "
        f"or quote values that contain a {delimiter_name}."
    )


def _parse_values(path: Path, rows: list[tuple[int, list[str]]], names: list[str], columns: list[int]) -> np.ndarray:
    """Parse the selected columns into an array of shape (n_rows, len(columns)), raising on any invalid cell."""
    values = np.empty((len(rows), len(columns)), dtype=np.float64)
    non_numeric: list[str] = []
    decimal_commas: list[str] = []
    missing: list[str] = []
    for row, (line, fields) in enumerate(rows):
        for position, column in enumerate(columns):
            cell = fields[column]
            where = f"line {line}, column {names[column]!r}"
            if cell.lower() in MISSING_MARKERS:
                missing.append(f"{where}: {'empty' if not cell else repr(cell)}")
                continue
            try:
                value = float(cell)
            except ValueError:
                non_numeric.append(f"{where}: {cell!r}")
                if DECIMAL_COMMA.fullmatch(cell):
                    decimal_commas.append(cell)
                continue
            if not math.isfinite(value):
                missing.append(f"{where}: {cell!r}")
            values[row, position] = value

    if non_numeric:
        hint = "Fix these cells, or leave a text column out of inputs."
        if decimal_commas:
            hint = f"Values such as {decimal_commas[0]!r} use a decimal comma: write them with a decimal point, as in {decimal_commas[0].replace(',', '.')!r}."
        raise InvalidDataError(
            f"{path}: {_count(len(non_numeric), 'non-numeric value')} in the selected columns ({_listing(non_numeric)}). {hint}"
        )
    if missing:
        raise InvalidDataError(
            f"{path}: {_count(len(missing), 'missing or non-finite value')} in the selected columns ({_listing(missing)}). "
            "Fill in these cells or remove their rows."
        )
    return values


def _warn_constant_inputs(table: Table) -> None:
    for position, name in enumerate(table.input_names):
        column = table.X[:, position]
        if np.all(column == column[0]):
            warnings.warn(
                f"{table.path}: input column {name!r} has the same value {column[0]:g} in all {table.n_rows} rows, "
                "so it carries no information. Leave it out of inputs.",
                ConstantInputWarning,
                stacklevel=user_stacklevel(),
            )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _listing(problems: list[str]) -> str:
    first_problems = "; ".join(problems[:MAX_LISTED])
    return first_problems + ("; ..." if len(problems) > MAX_LISTED else "")


def _preview(fields: list[str]) -> str:
    first_fields = ", ".join(fields[:MAX_LISTED])
    return first_fields + (", ..." if len(fields) > MAX_LISTED else "")
