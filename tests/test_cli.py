"""The multkan command: discover on a Feynman equation and on files, and bad input."""

import json

import pytest

from multkan.cli import main


def test_discover_feynman_power_law(tmp_path, capsys):
    status = main(["discover", "--feynman", "I.12.1", "--methods", "power_law", "--out", str(tmp_path), "--quiet"])
    output = capsys.readouterr().out
    assert status == 0
    assert "formula:  Nn*mu" in output
    assert "recovered: equal" in output
    report = json.loads((tmp_path / "I.12.1" / "report.json").read_text())
    assert report["exact"] is True
    assert report["formula"] == "Nn*mu"


@pytest.mark.slow
def test_discover_csv_with_network_outputs(tmp_path, capsys):
    rows = ["a,b,y"] + [f"{a},{b},{a * b}" for a in (1.0, 1.5, 2.0, 2.5, 3.0) for b in (1.0, 2.0, 3.0, 4.0)]
    path = tmp_path / "data.csv"
    path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    status = main(["discover", str(path), "--target", "y", "--methods", "power_law,additive", "--steps", "5", "--out", str(out), "--quiet", "--json"])
    assert status == 0
    report = json.loads(capsys.readouterr().out)
    assert report["formula"] == "a*b"
    assert sorted(p.name for p in (out / "data").iterdir()) == ["model.safetensors", "network.png", "report.json"]


def test_failed_discover_prints_json_with_json(tmp_path, capsys):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    status = main(["discover", str(path), "--target", "y", "--out", str(tmp_path / "out"), "--quiet", "--json"])
    assert status == 2
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["formula"] is None
    assert "column 'y'" in report["error"] or "'y'" in report["error"]
    assert report["error"] in captured.err
    rows = ["a,b,y"] + [f"{a},{b},{a * b}" for a in (1.0, 2.0, 3.0) for b in (1.0, 2.0, 3.0, 4.0)]
    path.write_text("\n".join(rows) + "\n")
    status = main(["discover", str(path), "--target", "y", "--methods", "power_law", "--time-limit", "1e-9", "--out", str(tmp_path / "out"), "--quiet", "--json"])
    assert status == 2
    assert json.loads(capsys.readouterr().out)["error"].startswith("discover found no formula within the time limit of 1e-09 s")


def test_discover_missing_target_column(tmp_path, capsys):
    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    out = tmp_path / "out"
    status = main(["discover", str(path), "--target", "y", "--out", str(out), "--quiet"])
    assert status == 2
    assert "y" in capsys.readouterr().err
    assert not out.exists()


def test_discover_needs_target_with_file(tmp_path, capsys):
    path = tmp_path / "data.csv"
    path.write_text("a,y\n1,2\n")
    status = main(["discover", str(path), "--out", str(tmp_path / "out")])
    assert status == 2
    assert "--target" in capsys.readouterr().err


def test_discover_unknown_equation(tmp_path, capsys):
    status = main(["discover", "--feynman", "I.99.99", "--out", str(tmp_path)])
    assert status == 2
    assert "I.99.99" in capsys.readouterr().err


def test_discover_unknown_method(tmp_path, capsys):
    status = main(["discover", "--feynman", "I.12.1", "--methods", "magic", "--out", str(tmp_path)])
    assert status == 2
    assert "magic" in capsys.readouterr().err


def test_equivalence_under_positive_variables():
    import sympy

    from multkan.discover import equivalent

    gamma, pressure, density = sympy.symbols("gamma pr rho", real=True)
    found = sympy.sqrt(gamma) * sympy.sqrt(pressure) / sympy.sqrt(density)
    truth = sympy.sqrt(gamma * pressure / density)
    assert equivalent(found, truth) == (True, True)
    assert equivalent(found, truth, positive=False) == (False, False)
    assert equivalent(found + 3, truth) == (True, False)
    assert equivalent(2 * found, truth) == (True, False)
    assert equivalent(found * gamma, truth) == (False, False)


@pytest.mark.parametrize(
    "arguments, fragment",
    [
        (["--ids", "I.99.9"], "I.99.9"),
        (["--ids", ","], "--ids"),
        (["--ids", "I.12.1", "--jobs", "0"], "--jobs"),
        (["--ids", "I.12.1", "--methods", "bogus"], "--methods"),
    ],
)
def test_bench_rejects_bad_arguments(arguments, fragment, capsys):
    status = main(["bench", "feynman", "--quiet", *arguments])
    assert status == 2
    assert fragment in capsys.readouterr().err


def test_demo_rejects_zero_steps(capsys):
    assert main(["demo", "--steps", "0"]) == 2
    assert "--steps" in capsys.readouterr().err


def test_discover_rejects_tuple_dataset():
    import numpy as np

    from multkan import InvalidParameterError
    from multkan.discover import discover

    with pytest.raises(InvalidParameterError, match="invalid dataset"):
        discover((np.zeros((5, 2)), np.zeros(5)), ["a", "b"])


def test_discover_accepts_single_method_string():
    from multkan.discover import discover
    from multkan.feynman import get_equation

    equation = get_equation("I.12.1")
    result = discover(equation.sample(n_train=50, n_test=20, seed=0), list(equation.variable_names), methods="power_law", progress=False)
    assert str(result.formula) == "Nn*mu"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--steps", "0"], "invalid --steps 0: expected an integer >= 1"),
        (["--samples", "1"], "invalid --samples 1: expected an integer >= 2"),
        (["--stop-rmse", "-1"], "invalid --stop-rmse -1.0: expected a number >= 0"),
        (["--time-limit", "0"], "invalid --time-limit 0.0: expected a number of seconds > 0"),
        (["--target", "y"], "--target needs a data file"),
        (["--inputs", "a,b"], "--inputs needs a data file"),
        (["--methods", "power_law,,additive"], "invalid --methods"),
    ],
)
def test_discover_rejects_bad_options(arguments, message, tmp_path, capsys):
    status = main(["discover", "--out", str(tmp_path), "--quiet", *arguments])
    assert status == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_discover_stops_after_exact_formula_and_network(tmp_path, capsys):
    status = main(["discover", "--feynman", "I.12.1", "--methods", "power_law,separable_product,additive", "--steps", "5", "--out", str(tmp_path), "--quiet", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert status == 0
    assert report["method"] == "power_law"
    assert report["network_method"] == "additive"
    assert report["skipped"] == {"separable_product": "not run: an earlier formula already fits to stop_rmse"}


def test_threads_option_sets_torch_threads(tmp_path, capsys):
    import torch

    path = tmp_path / "data.csv"
    path.write_text("a,b\n1,2\n3,4\n")
    assert main(["discover", str(path), "--target", "y", "--threads", "0"]) == 2
    assert "invalid --threads 0: expected an integer >= 1" in capsys.readouterr().err
    try:
        # The run fails on the missing column after the thread count is set.
        assert main(["discover", str(path), "--target", "y", "--threads", "2", "--out", str(tmp_path / "out"), "--quiet"]) == 2
        assert torch.get_num_threads() == 2
        torch.set_num_threads(3)
        main(["discover", str(path), "--target", "y", "--out", str(tmp_path / "out"), "--quiet"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)


def test_discover_rejects_samples_with_a_file(tmp_path, capsys):
    path = tmp_path / "data.csv"
    path.write_text("a,y\n" + "".join(f"{i},{2 * i}\n" for i in range(1, 20)))
    out = tmp_path / "out"
    status = main(["discover", str(path), "--target", "y", "--samples", "50", "--out", str(out), "--quiet"])
    assert status == 2
    assert "--samples draws rows of a Feynman equation" in capsys.readouterr().err
    assert not out.exists()


def test_recovery_wording():
    from multkan.cli import _recovery

    assert _recovery(True, True) == "equal"
    assert _recovery(True, False) == "up to a constant term or factor (SRBench), not equal"
    assert _recovery(False, False) == "no"


def test_discover_reports_a_constant_factor_as_not_equal(tmp_path, capsys, monkeypatch):
    import multkan.discover

    # A power law off by a constant factor: SRBench counts it, and the CLI reports it as not equal.
    original = multkan.discover._power_law
    monkeypatch.setattr(multkan.discover, "_power_law", lambda data, symbols: 2 * original(data, symbols))
    status = main(["discover", "--feynman", "I.12.1", "--methods", "power_law", "--out", str(tmp_path), "--quiet"])
    output = capsys.readouterr().out
    assert status == 0
    assert "formula:  2*Nn*mu" in output
    assert "recovered: up to a constant term or factor (SRBench), not equal" in output


def test_version(capsys):
    from multkan import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"multkan {__version__}"
