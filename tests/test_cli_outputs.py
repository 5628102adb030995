"""The report folder of ``multkan discover``: stale files, permissions, the network figure and CLI messages."""

import json
import os
import stat

import pytest
import sympy
import torch

import multkan.plot
from multkan import InvalidParameterError, MultKAN
from multkan.cli import _write_outputs, main
from multkan.discover import Candidate, DiscoveryResult
from multkan.feynman import get_equation


def _result(method="additive", network_method="additive", chosen_has_network=True):
    """Return a DiscoveryResult for the formula a*b whose network comes from ``network_method``.

    With ``network_method=None`` the network belongs to no listed candidate,
    like a network that discover kept from a candidate off the Pareto front.
    """
    a, b = sympy.symbols("a b")
    model = MultKAN([2, 3, 1], seed=0, input_names=["a", "b"], output_names=["y"])
    chosen = Candidate(method, a * b, 3, 0.0, 0.0, [2, 1], model if chosen_has_network else None)
    candidates = [chosen]
    if network_method is not None and network_method != method:
        candidates.append(Candidate(network_method, a * b + 0.001, 5, 0.0, 1e-3, [2, 1], model))
    return DiscoveryResult(
        formula=a * b, candidates=candidates, formula_test_rmse=0.0, model_test_rmse=1e-3, widths_tried=[],
        seconds=0.0, method=method, variables=["a", "b"], model=model,
    )


def _dataset():
    generator = torch.Generator().manual_seed(0)
    inputs = torch.rand(20, 2, generator=generator, dtype=torch.float64) + 1.0
    return {"train_input": inputs, "train_label": inputs.prod(dim=1, keepdim=True)}


@pytest.fixture
def drawn_figures(monkeypatch):
    """Collect every figure that plot_network returns."""
    figures = []
    original = multkan.plot.plot_network

    def recording_plot_network(*arguments, **options):
        figure = original(*arguments, **options)
        figures.append(figure)
        return figure

    monkeypatch.setattr(multkan.plot, "plot_network", recording_plot_network)
    return figures


def _names(figure, kind):
    ax = figure.axes[0]
    return [text.get_text() for text in ax.texts if (text.get_gid() or "").startswith(f"name:{kind}:")]


# Stale files and permissions.


def test_rerun_removes_stale_outputs(tmp_path):
    folder = tmp_path / "run"
    report, written, removed = _write_outputs(folder, _result(), _dataset())
    assert written == ["network.png", "model.safetensors", "report.json"]
    assert removed == []
    assert report["files"] == {"written": written, "removed": []}
    (folder / "notes.txt").write_text("kept\n")

    no_network = _result(method="power_law", network_method=None, chosen_has_network=False)
    no_network.model = None
    report, written, removed = _write_outputs(folder, no_network, _dataset())
    assert written == ["report.json"]
    assert removed == ["network.png", "model.safetensors"]
    assert sorted(os.listdir(folder)) == ["notes.txt", "report.json"]
    saved = json.loads((folder / "report.json").read_text())
    assert saved["files"] == {"written": ["report.json"], "removed": ["network.png", "model.safetensors"]}
    assert saved["network_method"] is None
    assert saved == report


def test_rerun_with_network_replaces_files(tmp_path):
    folder = tmp_path / "run"
    _write_outputs(folder, _result(), _dataset())
    first_model = (folder / "model.safetensors").read_bytes()
    result = _result()
    result.model = MultKAN([2, 4, 1], seed=1)
    result.candidates[0].model = result.model
    _, written, removed = _write_outputs(folder, result, _dataset())
    assert removed == []
    assert sorted(os.listdir(folder)) == ["model.safetensors", "network.png", "report.json"]
    assert (folder / "model.safetensors").read_bytes() != first_model
    assert MultKAN.load(folder / "model.safetensors").width == [2, 4, 1]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_output_modes_follow_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        _write_outputs(tmp_path / "run", _result(), _dataset())
    finally:
        os.umask(previous)
    for name in ("report.json", "network.png", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o666 & ~umask, name


def test_discover_reports_removed_files(tmp_path, capsys):
    folder = tmp_path / "I.12.1"
    folder.mkdir()
    (folder / "network.png").write_bytes(b"old figure")
    (folder / "model.safetensors").write_bytes(b"old model")
    (folder / "notes.txt").write_text("kept\n")

    status = main(["discover", "--feynman", "I.12.1", "--methods", "power_law", "--out", str(tmp_path), "--quiet"])
    output = capsys.readouterr().out
    assert status == 0
    assert "removed network.png, model.safetensors of an earlier run" in output
    assert sorted(os.listdir(folder)) == ["notes.txt", "report.json"]

    status = main(["discover", "--feynman", "I.12.1", "--methods", "power_law", "--out", str(tmp_path), "--quiet", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["files"] == {"written": ["report.json"], "removed": []}
    assert report["formula"] == "Nn*mu"


# The network figure.


def test_network_figure_uses_variable_names(tmp_path, drawn_figures):
    _write_outputs(tmp_path, _result(), _dataset())
    (figure,) = drawn_figures
    assert _names(figure, "input") == ["a", "b"]
    assert _names(figure, "output") == ["y"]
    assert figure.axes[0].get_title() == "additive network, which gives the formula a*b"


def test_network_title_names_other_method(tmp_path, drawn_figures):
    result = _result(method="power_law", network_method="additive", chosen_has_network=False)
    report, _, _ = _write_outputs(tmp_path, result, _dataset())
    (figure,) = drawn_figures
    assert figure.axes[0].get_title() == "additive network; the formula a*b is from power_law"
    assert report["network_method"] == "additive"
    assert report["method"] == "power_law"


def test_network_title_unrecorded_method(tmp_path, drawn_figures):
    result = _result(method="power_law", network_method=None, chosen_has_network=False)
    report, _, _ = _write_outputs(tmp_path, result, _dataset())
    (figure,) = drawn_figures
    assert figure.axes[0].get_title() == "most accurate network (method not recorded); formula from power_law: a*b"
    assert report["network_method"] is None


def test_feynman_target_name_is_equation_output():
    from multkan.cli import _target_name, build_parser

    arguments = build_parser().parse_args(["discover", "--feynman", "I.6.20a"])
    assert _target_name(arguments) == get_equation("I.6.20a").output
    arguments = build_parser().parse_args(["discover", "data.csv", "--target", " price "])
    assert _target_name(arguments) == "price"


# Messages in command-line words.


def _table(tmp_path, rows, header="a,b,y", name="data.csv"):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _numeric_rows(n):
    return [f"{i},{2 * i + 1},{3 * i}" for i in range(1, n + 1)]


def _discover_error(tmp_path, capsys, arguments):
    status = main(["discover", *arguments, "--out", str(tmp_path / "out"), "--quiet"])
    error = capsys.readouterr().err
    assert status == 2
    assert not (tmp_path / "out").exists()
    return error


def test_unknown_equation_message_in_cli_words(tmp_path, capsys):
    from multkan.feynman import REGISTRY_PATH

    error = _discover_error(tmp_path, capsys, ["--feynman", "I.99.9"])
    assert "list_equations" not in error
    assert f'All ids are the "id" fields in {REGISTRY_PATH}.' in error
    assert "'I.99.9'" in error

    status = main(["bench", "feynman", "--ids", "I.99.9", "--quiet"])
    error = capsys.readouterr().err
    assert status == 2
    assert "list_equations" not in error
    assert str(REGISTRY_PATH) in error


def test_unknown_equation_python_message_kept():
    with pytest.raises(InvalidParameterError, match=r"Call list_equations\(\) for all ids\."):
        get_equation("I.99.9")


def test_too_few_rows_message_in_cli_words(tmp_path, capsys):
    from multkan import InvalidDataError
    from multkan.tabular import read_table

    path = _table(tmp_path, _numeric_rows(3))
    error = _discover_error(tmp_path, capsys, [str(path), "--target", "y"])
    assert "min_rows" not in error
    assert error.strip().endswith("found 3 data rows, but at least 10 are needed. Add rows.")

    with pytest.raises(InvalidDataError, match=r"\(min_rows=10\)\. Add rows or lower min_rows\."):
        read_table(path, "y")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--target", "y", "--inputs", "a,y"], "the target column 'y' is also listed in --inputs. Remove it from --inputs."),
        (["--target", "y", "--inputs", "a,a"], "invalid --inputs: expected each column once"),
        (["--target", " "], "invalid --target: expected a column name"),
        (["--target", "y", "--methods", "magic"], "invalid --methods: expected a non-empty subset"),
    ],
)
def test_option_names_in_cli_words(tmp_path, capsys, arguments, expected):
    path = _table(tmp_path, _numeric_rows(12))
    error = _discover_error(tmp_path, capsys, [str(path), *arguments])
    assert expected in error


def test_text_column_message_in_cli_words(tmp_path, capsys):
    path = _table(tmp_path, [f"{i},word{i},{i}" for i in range(12)])
    error = _discover_error(tmp_path, capsys, [str(path), "--target", "y"])
    assert "Fix these cells, or leave a text column out of --inputs." in error


def test_constant_input_warning_in_cli_words(tmp_path, capsys):
    path = _table(tmp_path, [f"{i},1,{3 * i}" for i in range(1, 13)])
    status = main(["discover", str(path), "--target", "y", "--methods", "power_law", "--out", str(tmp_path / "out"), "--quiet"])
    error = capsys.readouterr().err
    # The warning is printed while the file is read, whether or not discover then finds a formula.
    assert status in (0, 2)
    assert "multkan discover: warning: " in error
    assert "input column 'b' has the same value 1 in all 12 rows" in error
    assert error.count("Leave it out of --inputs.") == 1
    assert "ConstantInputWarning" not in error


def test_no_formula_message_in_cli_words(tmp_path, capsys):
    # A target with both signs has no power law, so power_law alone finds nothing.
    path = _table(tmp_path, [f"{i},{i + 1},{i - 6}" for i in range(1, 13)])
    error = _discover_error(tmp_path, capsys, [str(path), "--target", "y", "--methods", "power_law"])
    assert "discover found no formula" in error
    assert "Check the data, add rows (or raise --samples), or try more --methods." in error


def test_discover_reads_semicolon_csv(tmp_path, capsys):
    path = _table(tmp_path, [f"{i};{i + 1};{i * (i + 1)}" for i in range(1, 13)], header="a;b;y")
    status = main(["discover", str(path), "--target", "y", "--methods", "power_law", "--out", str(tmp_path / "out"), "--quiet", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["variables"] == ["a", "b"]
    assert report["formula"] == "a*b"


def _discover_table(path, out, capsys):
    status = main(["discover", str(path), "--target", "y", "--methods", "power_law", "--out", str(out), "--quiet", "--json"])
    assert status == 0
    return json.loads(capsys.readouterr().out)


def test_same_file_name_gets_own_folder(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _table(tmp_path / "a", [f"{i},{i + 1},{i * (i + 1)}" for i in range(1, 13)])
    second = _table(tmp_path / "b", [f"{i},{i + 2},{i * (i + 2) ** 2}" for i in range(1, 13)])
    out = tmp_path / "out"

    assert _discover_table(first, out, capsys)["source"] == str(first.resolve())
    _discover_table(second, out, capsys)
    assert json.loads((out / "data" / "report.json").read_text())["formula"] == "a*b"
    assert json.loads((out / "data-2" / "report.json").read_text())["formula"] == "a*b**2"

    # Reruns go back to their own folders.
    _discover_table(second, out, capsys)
    _discover_table(first, out, capsys)
    assert sorted(os.listdir(out)) == ["data", "data-2"]
    assert json.loads((out / "data" / "report.json").read_text())["source"] == str(first.resolve())


def test_unreadable_report_is_not_replaced(tmp_path, capsys):
    path = _table(tmp_path, [f"{i},{i + 1},{i * (i + 1)}" for i in range(1, 13)])
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "report.json").write_text("not json")
    _discover_table(path, out, capsys)
    assert (out / "data" / "report.json").read_text() == "not json"
    assert (out / "data-2" / "report.json").exists()


def test_report_without_source_is_reused(tmp_path, capsys):
    path = _table(tmp_path, [f"{i},{i + 1},{i * (i + 1)}" for i in range(1, 13)])
    out = tmp_path / "out"
    (out / "data").mkdir(parents=True)
    (out / "data" / "report.json").write_text(json.dumps({"formula": "old"}))
    _discover_table(path, out, capsys)
    assert json.loads((out / "data" / "report.json").read_text())["formula"] == "a*b"
    assert sorted(os.listdir(out)) == ["data"]


def test_poor_fit_is_flagged(tmp_path, capsys):
    # y follows no smooth function of a and b.
    rows = [f"{i},{(7 * i) % 11 + 1},{(13 * i) % 17 + 1}" for i in range(1, 31)]
    path = _table(tmp_path, rows)
    arguments = ["discover", str(path), "--target", "y", "--methods", "additive", "--steps", "5", "--out", str(tmp_path / "out"), "--quiet"]
    status = main(arguments)
    output = capsys.readouterr().out
    assert status == 0
    assert "poor fit: the test RMSE is" in output
    report = json.loads((tmp_path / "out" / "data" / "report.json").read_text())
    assert report["formula_relative_test_rmse"] > 0.01


def test_good_fit_is_not_flagged(tmp_path, capsys):
    path = _table(tmp_path, [f"{i},{i + 1},{i * (i + 1)}" for i in range(1, 13)])
    status = main(["discover", str(path), "--target", "y", "--methods", "power_law", "--out", str(tmp_path / "out"), "--quiet"])
    output = capsys.readouterr().out
    assert status == 0
    assert "poor fit" not in output
    report = json.loads((tmp_path / "out" / "data" / "report.json").read_text())
    assert report["formula_relative_test_rmse"] < 1e-6


def test_long_title_is_wrapped(tmp_path, drawn_figures):
    result = _result()
    a, b = sympy.symbols("a b")
    result.formula = sum((sympy.Float(1.234567 * i) * a ** i * b for i in range(1, 12)), sympy.Integer(0))
    _write_outputs(tmp_path, result, _dataset())
    (figure,) = drawn_figures
    lines = figure.axes[0].get_title().splitlines()
    assert len(lines) > 1 and max(len(line) for line in lines) <= 100


def test_figure_draws_scaled_inputs(tmp_path, drawn_figures, monkeypatch):
    # A network trained on inputs divided by 100 is drawn on those inputs, not on the raw ones.
    result = _result()
    result.network_input_scale = [100.0, 100.0]
    seen = []
    original = MultKAN.plot

    def recording_plot(self, x=None, **options):
        seen.append(x)
        return original(self, x, **options)

    monkeypatch.setattr(MultKAN, "plot", recording_plot)
    data = _dataset()
    _write_outputs(tmp_path, result, data)
    assert torch.allclose(seen[0], data["train_input"].to(torch.float32) / 100)
