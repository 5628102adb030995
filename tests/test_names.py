"""Variable names in formulas: identifiers kept, others renamed with a warning."""

import subprocess
import sys

import pytest
import sympy
import torch

from multkan import MultKANWarning
from multkan.discover import discover
from multkan.names import formula_names


def test_identifiers_kept_without_warning():
    assert formula_names(["m", "v_1", "E", "x2"]) == ["m", "v_1", "E", "x2"]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        (["v-1", "m"], ["v_1", "m"]),
        (["2x", "y z"], ["x_2x", "y_z"]),
        (["lambda", "a"], ["x_lambda", "a"]),
        (["v-1", "v_1"], ["v_1_2", "v_1"]),
        (["", "a"], ["x", "a"]),
        (["m [kg]", "v [m/s]"], ["m_kg", "v_m_s"]),
        (["(a)", "a"], ["a_2", "a"]),
    ],
)
def test_other_names_renamed(names, expected):
    with pytest.warns(MultKANWarning, match="renamed in formulas") as record:
        assert formula_names(names) == expected
    assert repr(names[0]) in str(record[0].message)


def test_renamed_units_print_as_subscripts_in_latex():
    with pytest.warns(MultKANWarning):
        m, v = (sympy.Symbol(name) for name in formula_names(["m [kg]", "v [m/s]"]))
    assert sympy.latex(m * v**2 / 2) == r"\frac{m_{kg} v_{m s}^{2}}{2}"


def test_discover_formula_uses_renamed_column():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(300, 2, generator=generator, dtype=torch.float64) + 0.5
    y = x[:, :1] * x[:, 1:]
    data = {"train_input": x[:200], "train_label": y[:200], "test_input": x[200:], "test_label": y[200:]}
    with pytest.warns(MultKANWarning, match="'v-1' -> v_1"):
        result = discover(data, ["m", "v-1"], methods=["power_law"], progress=False)
    m, v_1 = sympy.symbols("m v_1", real=True)
    assert sympy.simplify(result.formula - m * v_1) == 0
    assert result.renamed == {"v-1": "v_1"}
    assert result.to_dict()["renamed"] == {"v-1": "v_1"}



def test_cli_prints_warning_without_source_line(tmp_path):
    rows = torch.rand(60, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    lines = ["m,v-1,y"] + [f"{a},{b},{a * b}" for a, b in rows.tolist()]
    path = tmp_path / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    command = [sys.executable, "-m", "multkan.cli", "discover", str(path), "--target", "y", "--quiet", "--methods", "power_law", "--out", str(tmp_path / "out")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert completed.returncode == 0, completed.stderr
    assert "m*v_1" in completed.stdout
    assert "warning (MultKANWarning): variable names" in completed.stderr
    assert "cli.py:" not in completed.stderr


def test_report_formula_reads_back_with_constant_names():
    # Variables named E and I: plain sympify of the printed formula would read Euler's
    # number and the imaginary unit, while the srepr form restores the formula.
    generator = torch.Generator().manual_seed(3)
    x = torch.rand(300, 2, generator=generator, dtype=torch.float64) + 0.5
    y = x[:, :1] * x[:, 1:] ** 2
    data = {"train_input": x[:200], "train_label": y[:200], "test_input": x[200:], "test_label": y[200:]}
    result = discover(data, ["E", "I"], methods=["power_law"], progress=False)
    summary = result.to_dict()
    assert sympy.sympify(summary["formula_srepr"]) == result.formula
    energy, current = sympy.symbols("E I", real=True)
    assert sympy.simplify(result.formula - energy * current**2) == 0
