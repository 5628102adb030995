"""Tests of the Feynman equation registry and its loader."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import sympy
import torch

from multkan import feynman
from multkan.errors import InvalidDataError, InvalidParameterError
from multkan.feynman import FeynmanEquation, get_equation, list_equations, parse_formula

ALL_IDS = list_equations(include_invalid=True)


def evaluate_at(equation_id: str, **values: float) -> float:
    """Evaluate one equation at a single point given by variable name."""
    equation = get_equation(equation_id)
    row = torch.tensor([[values[name] for name in equation.variable_names]], dtype=torch.float64)
    return float(equation.evaluate(row)[0])


def test_registry_counts():
    assert len(list_equations("main")) == 100
    assert len(list_equations("bonus")) == 20
    assert len(list_equations()) == 120
    assert len(set(ALL_IDS)) == 120


def test_registry_order():
    main = list_equations("main")
    assert main[0] == "I.6.2a"
    assert main[-1] == "III.21.20"
    assert list_equations("bonus") == [f"test_{number}" for number in range(1, 21)]
    assert list_equations() == main + list_equations("bonus")


def test_registry_all_valid():
    assert list_equations() == ALL_IDS
    for equation_id in ALL_IDS:
        assert get_equation(equation_id).valid, equation_id


def test_registry_source_note():
    document = json.loads(feynman.REGISTRY_PATH.read_text(encoding="utf-8"))
    assert next(iter(document)) == "source"
    for phrase in ("Udrescu", "Tegmark", "AI Feynman", "Science Advances", "SRBench"):
        assert phrase in document["source"]
    assert document["format_version"] == feynman.FORMAT_VERSION
    for record in document["equations"]:
        assert isinstance(record["notes"], list), record["id"]


@pytest.mark.parametrize("equation_id", ALL_IDS)
def test_formula_parses(equation_id):
    equation = get_equation(equation_id)
    expr = sympy.parse_expr(equation.formula, local_dict=dict(zip(equation.variable_names, equation.symbols)))
    assert sympy.simplify(expr - equation.expr) == 0
    assert isinstance(equation.expr, sympy.Expr)
    assert equation.expr.free_symbols == set(equation.symbols)
    assert equation.n_var == len(equation.expr.free_symbols)
    assert [str(symbol) for symbol in equation.symbols] == list(equation.variable_names)
    for symbol in equation.symbols:
        assert isinstance(symbol, sympy.Symbol)
        assert symbol.is_real


@pytest.mark.parametrize("equation_id", ALL_IDS)
def test_formula_uses_sympy_names(equation_id):
    formula = get_equation(equation_id).formula
    assert "~" not in formula
    for numpy_name in ("arcsin", "arccos", "arctan", "ln("):
        assert numpy_name not in formula


def test_labels_finite_everywhere():
    for equation_id in ALL_IDS:
        equation = get_equation(equation_id)
        data = equation.sample(n_train=2000, n_test=1000, seed=7, dtype=torch.float64)
        for key in ("train_label", "test_label"):
            assert torch.isfinite(data[key]).all(), (equation_id, key)
        low = torch.tensor([low for _, low, _ in equation.variables], dtype=torch.float64)
        high = torch.tensor([high for _, _, high in equation.variables], dtype=torch.float64)
        for key in ("train_input", "test_input"):
            assert (data[key] >= low).all(), (equation_id, key)
            assert (data[key] <= high).all(), (equation_id, key)


def test_radiated_power_positive():
    equation = get_equation("test_9")
    data = equation.sample(n_train=3000, n_test=1000, seed=0, dtype=torch.float64)
    assert (data["train_label"] > 0).all()
    assert (data["test_label"] > 0).all()
    assert evaluate_at("test_9", G=1.0, c=1.0, m1=1.0, m2=1.0, r=1.0) == pytest.approx(32 / 5 * 2)


def test_dielectric_sphere_sign():
    # Far from the sphere the potential approaches the applied one, -Ef*r*cos(theta).
    value = evaluate_at("test_14", Ef=2.0, theta=0.0, r=3.0, d=1.0, alpha=1.0)
    assert value == pytest.approx(-6.0)
    value = evaluate_at("test_14", Ef=1.0, theta=0.0, r=1.0, d=1.0, alpha=4.0)
    assert value == pytest.approx(-1.0 + 3.0 / 6.0)


def test_friedmann_pressure_sign():
    value = evaluate_at("test_19", G=1.0, k_f=2.0, r=1.0, H_G=1.0, alpha=1.0, c=1.0)
    assert value == pytest.approx(-1.0 / (8 * math.pi))


def test_tilde_decisions_noted():
    for equation_id in ("test_9", "test_14", "test_19"):
        notes = " ".join(get_equation(equation_id).notes)
        assert "~" in notes, equation_id


def test_variable_count_mismatch():
    expected = {"test_12": 5, "test_13": 5, "test_18": 5, "test_19": 6}
    for equation_id, n_var in expected.items():
        equation = get_equation(equation_id)
        assert equation.n_var == n_var
        assert any("'# variables'" in note for note in equation.notes), equation_id


def test_alias_lookup_both_ways():
    pairs = {
        "I.6.2a": "I.6.20a",
        "I.6.2": "I.6.20",
        "I.6.2b": "I.6.20b",
        "I.15.1": "I.15.10",
        "I.34.1": "I.34.10",
        "I.39.1": "I.39.10",
        "I.48.2": "I.48.20",
        "test_1": "bonus_1",
        "test_20": "bonus_20",
    }
    for table_id, alias in pairs.items():
        equation = get_equation(table_id)
        assert equation.id == table_id
        assert alias in equation.aliases
        assert get_equation(alias) is equation


def test_every_alias_resolves():
    for equation_id in ALL_IDS:
        equation = get_equation(equation_id)
        for alias in equation.aliases:
            assert get_equation(alias).id == equation_id


def test_lookup_ignores_case():
    assert get_equation("i.6.20A").id == "I.6.2a"
    assert get_equation("TEST_9").id == "test_9"
    assert get_equation("Bonus_9").id == "test_9"
    assert get_equation(" ii.34.2a ").id == "II.34.2a"


def test_distinct_ids_not_merged():
    assert get_equation("I.6.2").formula != get_equation("I.6.2a").formula
    assert get_equation("II.34.2").output == "mom"
    assert get_equation("II.34.2a").output == "I"


def test_unknown_id_error():
    with pytest.raises(InvalidParameterError) as info:
        get_equation("I.6.2c")
    message = str(info.value)
    assert "'I.6.2c'" in message
    assert "'I.6.2a'" in message
    assert "list_equations()" in message
    assert isinstance(info.value, ValueError)


def test_unknown_id_no_match():
    with pytest.raises(InvalidParameterError, match="There is no close match"):
        get_equation("navier-stokes")


def test_non_string_id():
    with pytest.raises(InvalidParameterError, match="equation id"):
        get_equation(12)


def test_list_equations_bad_set():
    with pytest.raises(InvalidParameterError, match="'main', 'bonus' or None"):
        list_equations("extra")


def test_closed_form_values():
    assert evaluate_at("I.12.1", mu=2.0, Nn=3.0) == 6.0
    assert evaluate_at("I.6.2a", theta=1.0) == pytest.approx(math.exp(-0.5) / math.sqrt(2 * math.pi), rel=1e-15)
    assert evaluate_at("I.44.4", n=1.0, kb=2.0, T=3.0, V1=1.0, V2=math.e) == pytest.approx(6.0, rel=1e-15)
    assert evaluate_at("I.30.5", lambd=1.0, d=2.0, n=1.0) == pytest.approx(math.pi / 6, rel=1e-15)
    assert evaluate_at("I.39.11", gamma=3.0, pr=2.0, V=5.0) == pytest.approx(5.0, rel=1e-15)
    assert evaluate_at("II.13.17", epsilon=1.0, c=1.0, I=2.0 * math.pi, r=1.0) == pytest.approx(1.0, rel=1e-15)
    assert evaluate_at("III.17.37", beta=2.0, alpha=0.5, theta=0.0) == pytest.approx(3.0, rel=1e-15)


def test_clashing_names_are_symbols():
    for equation_id, name in (("I.39.11", "gamma"), ("III.17.37", "beta"), ("II.13.17", "I"), ("II.38.14", "sigma")):
        equation = get_equation(equation_id)
        assert sympy.Symbol(name, real=True) in equation.expr.free_symbols
        assert not equation.expr.atoms(sympy.gamma, sympy.beta)
        assert not equation.expr.has(sympy.I)


def test_expr_cached():
    equation = get_equation("I.9.18")
    assert equation.expr is equation.expr
    assert equation.symbols is equation.symbols


def test_equation_frozen():
    equation = get_equation("I.12.1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        equation.formula = "mu"


def test_evaluate_float64():
    equation = get_equation("I.12.1")
    values = equation.evaluate(torch.tensor([[2.0, 3.0], [1.5, 4.0]], dtype=torch.float32))
    assert values.dtype == torch.float64
    assert values.tolist() == [6.0, 6.0]


def test_evaluate_wrong_shape():
    equation = get_equation("I.12.1")
    with pytest.raises(InvalidDataError, match=r"expected shape \(N, 2\)"):
        equation.evaluate(torch.ones(4, 3))
    with pytest.raises(InvalidDataError, match=r"received \(4,\)"):
        equation.evaluate(torch.ones(4))


def test_sample_shapes_and_dtype():
    equation = get_equation("II.6.15a")
    data = equation.sample(n_train=50, n_test=20)
    assert data["train_input"].shape == (50, 6)
    assert data["train_label"].shape == (50, 1)
    assert data["test_input"].shape == (20, 6)
    assert data["test_label"].shape == (20, 1)
    for tensor in data.values():
        assert tensor.dtype == torch.float32


def test_sample_deterministic():
    equation = get_equation("I.9.18")
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()
    first = equation.sample(n_train=100, n_test=50, seed=11)
    second = equation.sample(n_train=100, n_test=50, seed=11)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    other = equation.sample(n_train=100, n_test=50, seed=12)
    assert not torch.equal(first["train_input"], other["train_input"])


def test_test_set_independent_of_n_train():
    equation = get_equation("I.12.11")
    small = equation.sample(n_train=10, n_test=30, seed=5)
    large = equation.sample(n_train=500, n_test=30, seed=5)
    assert torch.equal(small["test_input"], large["test_input"])
    assert torch.equal(small["train_input"], large["train_input"][:10])


def test_labels_match_evaluate():
    equation = get_equation("II.24.17")
    data = equation.sample(n_train=200, n_test=100, seed=2, dtype=torch.float64)
    assert torch.equal(equation.evaluate(data["train_input"]), data["train_label"][:, 0])
    assert torch.equal(equation.evaluate(data["test_input"]), data["test_label"][:, 0])
    single = equation.sample(n_train=200, n_test=100, seed=2)
    torch.testing.assert_close(single["train_label"], data["train_label"].float())


def test_sample_noise():
    equation = get_equation("I.13.4")
    clean = equation.sample(n_train=4000, n_test=100, seed=3, dtype=torch.float64)
    noisy = equation.sample(n_train=4000, n_test=100, seed=3, dtype=torch.float64, noise=0.1)
    assert torch.equal(clean["train_input"], noisy["train_input"])
    assert torch.equal(clean["test_label"], noisy["test_label"])
    difference = noisy["train_label"] - clean["train_label"]
    rms = clean["train_label"].pow(2).mean().sqrt()
    assert float(difference.std() / rms) == pytest.approx(0.1, rel=0.05)
    assert abs(float(difference.mean() / rms)) < 0.01


@pytest.mark.parametrize(
    ("argument", "value"),
    [("n_train", 0), ("n_test", -1), ("n_train", 2.5), ("seed", -1), ("dtype", torch.int64), ("noise", -0.1), ("noise", math.nan)],
)
def test_sample_rejects_arguments(argument, value):
    with pytest.raises(InvalidParameterError, match=argument):
        get_equation("I.12.1").sample(**{argument: value})


def test_invalid_record_rejected():
    equation = FeynmanEquation(
        id="demo",
        aliases=(),
        set="main",
        output="y",
        formula="sqrt(x - 2)",
        variables=(("x", 1.0, 3.0),),
        valid=False,
        notes=("Marked invalid: sqrt of a negative number for x < 2.",),
    )
    with pytest.raises(InvalidParameterError, match="sqrt of a negative number"):
        equation.sample(n_train=10, n_test=10)


def test_invalid_record_unlisted(tmp_path, monkeypatch):
    records = []
    for equation_id, valid in (("demo.1", True), ("demo.2", False)):
        records.append(
            {
                "id": equation_id,
                "aliases": [],
                "set": "main",
                "output": "y",
                "formula": "x**2",
                "variables": [{"name": "x", "low": 1.0, "high": 2.0}],
                "valid": valid,
                "notes": [],
            }
        )
    path = tmp_path / "feynman.json"
    path.write_text(json.dumps({"source": "test", "format_version": feynman.FORMAT_VERSION, "equations": records}))
    monkeypatch.setattr(feynman, "REGISTRY_PATH", path)
    feynman._registry.cache_clear()
    try:
        assert list_equations() == ["demo.1"]
        assert list_equations(include_invalid=True) == ["demo.1", "demo.2"]
        assert get_equation("DEMO.2").valid is False
    finally:
        feynman._registry.cache_clear()


def test_non_finite_labels_raise():
    equation = FeynmanEquation(id="demo", aliases=(), set="main", output="y", formula="sqrt(x - 1.5)", variables=(("x", 1.0, 2.0),))
    with np.errstate(divide="ignore", invalid="ignore"), pytest.raises(InvalidDataError, match="not finite"):
        equation.sample(n_train=5, n_test=5)


def test_bad_range_rejected():
    with pytest.raises(InvalidParameterError, match="range of x"):
        FeynmanEquation(id="demo", aliases=(), set="main", output="y", formula="x", variables=(("x", 2.0, 1.0),))


def test_parse_rejects_unknown_names():
    with pytest.raises(InvalidParameterError, match=r"names \['E'\]"):
        parse_formula("x + E", ["x"])
    with pytest.raises(InvalidParameterError, match="unknown functions"):
        parse_formula("foo(x)", ["x"])
    with pytest.raises(InvalidParameterError, match="cannot parse"):
        parse_formula("x +* 2", ["x"])


def test_parse_keeps_clashing_names():
    symbols, expr = parse_formula("gamma*beta + I + E_n", ["gamma", "beta", "I", "E_n"])
    gamma, beta, current, energy = symbols
    assert expr == gamma * beta + current + energy
    assert all(symbol.is_real for symbol in symbols)
