"""Build ``multkan/data/feynman.json`` from the public AI Feynman tables.

Usage::

    python scripts/build_feynman_registry.py --source-dir DIR [--output PATH]

``DIR`` contains ``FeynmanEquations.csv`` (100 equations) and
``BonusEquations.csv`` (20 equations), the tables of the AI Feynman
benchmark. The script fixes the tables' known problems, records each fix in
the record's ``notes``, parses every formula with sympy, checks that every
formula is real and finite over its variable ranges, and writes the registry
that :mod:`multkan.feynman` loads. The output depends only on the tables, so
running the script twice gives the same file.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sympy

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from multkan.feynman import FORMAT_VERSION, FORMULA_NAMESPACE, parse_formula  # noqa: E402

DEFAULT_OUTPUT = REPO_ROOT / "multkan" / "data" / "feynman.json"
TABLES = (("main", "FeynmanEquations.csv"), ("bonus", "BonusEquations.csv"))
MAX_VARIABLES = 10

SOURCE = (
    "AI Feynman benchmark tables FeynmanEquations.csv (100 equations) and BonusEquations.csv (20 equations) "
    "from S.-M. Udrescu and M. Tegmark, 2020, \"AI Feynman: a physics-inspired method for symbolic regression\", "
    "Science Advances 6(16), eaay2631. SRBench uses the same tables for its ground-truth Feynman track."
)
CONVENTIONS = (
    "Each record has the table id, aliases (other equation numbers for the same row, bonus_N for test_N), "
    "the set (main or bonus), the table row number, the name the bonus table gives, the output name, the formula "
    "in sympy syntax with the table's original string in table_formula, the variables with their uniform sampling "
    "ranges [low, high], valid (false if the formula is not real and finite over the ranges), and notes on every "
    "change made to the table row."
)

# The main table writes some equation numbers without their trailing zero.
# The rows are in equation-number order within each chapter, and that order
# shows two of them: I.15.1 comes after I.15.3t, and I.34.1 sits between
# I.34.8 and I.34.14, which only fits 15.10 and 34.10.
EQUATION_NUMBER_ALIASES: dict[str, tuple[str, str]] = {
    "I.6.2a": ("I.6.20a", "Accepts I.6.20a, the equation number that other copies of this list use; the table drops its trailing zero."),
    "I.6.2": ("I.6.20", "Accepts I.6.20, the equation number that other copies of this list use; the table drops its trailing zero."),
    "I.6.2b": ("I.6.20b", "Accepts I.6.20b, the equation number that other copies of this list use; the table drops its trailing zero."),
    "I.15.1": ("I.15.10", "Accepts I.15.10: the table drops the trailing zero, as its row order shows (this row follows I.15.3x and I.15.3t)."),
    "I.34.1": ("I.34.10", "Accepts I.34.10: the table drops the trailing zero, as its row order shows (this row sits between I.34.8 and I.34.14)."),
    "I.39.1": ("I.39.10", "Accepts I.39.10, the equation number that other copies of this list use; the table drops its trailing zero."),
    "I.48.2": ("I.48.20", "Accepts I.48.20, the equation number that some copies of this list use; others keep I.48.2."),
    "I.18.14": ("I.18.16", "Accepts I.18.16, the number that other copies of this list give the angular momentum L = m*r*v*sin(theta)."),
}

# Three bonus formulas contain `~`, where other copies print a minus sign. In
# Python `~32/5` is the bitwise complement, -33/5, so the character cannot stay.
TILDE_FIXES: dict[str, tuple[str, str, str]] = {
    "test_9": (
        "~32/5*",
        "32/5*",
        "Removed the leading '~': the radiated gravitational-wave power of a binary is positive, "
        "P = 32/5*G**4/c**5*(m1*m2)**2*(m1+m2)/r**5. The minus sign in other copies belongs to the orbital energy loss dE/dt = -P.",
    ),
    "test_14": (
        "(~r+",
        "(-r+",
        "Read '~r' as '-r': outside a dielectric sphere of radius d and relative permittivity alpha in a uniform field Ef, "
        "the potential is Ef*cos(theta)*(-r + d**3/r**2*(alpha-1)/(alpha+2)), because the applied field alone "
        "contributes -Ef*r*cos(theta).",
    ),
    "test_19": (
        "~1/(8*pi*G)",
        "-1/(8*pi*G)",
        "Read the leading '~' as a minus sign: the second Friedmann equation gives the pressure "
        "p = -(c**4*k/r**2 + H**2*c**2*(1-2*q))/(8*pi*G), with q (alpha here) the deceleration parameter.",
    ),
}

NAME_FIXES: dict[str, tuple[str, str]] = {
    "test_9": ("ratiated", "radiated"),
    "test_10": ("aberation", "aberration"),
}

# Numpy spellings in the tables and their sympy names.
FUNCTION_RENAMES = {"arcsin": "asin", "arccos": "acos", "arctan": "atan", "ln": "log"}

# Points where a formula is 0/0 although the physical quantity has a finite
# limit. The range check skips these points, and the record's notes state it.
REMOVABLE_SINGULARITIES: dict[str, tuple[Callable[[dict[str, np.ndarray]], np.ndarray], str]] = {
    "III.9.52": (
        lambda columns: columns["omega"] == columns["omega_0"],
        "At omega == omega_0 the formula is 0/0 (sin(u)**2/u**2 with u = 0), and evaluate returns NaN there; "
        "the limit is the prefactor. The ranges of omega and omega_0 overlap, but uniform float64 sampling hits "
        "the plane with probability near zero, so the range check skips it.",
    ),
}

EXTRA_NOTES: dict[str, list[str]] = {
    "III.9.52": [
        "Kept the table's prefactor p_d*Ef*t/(h/(2*pi)) unsquared. The first-order transition probability grows "
        "with the square of the field amplitude, so the physical law squares it; the registry keeps the benchmark formula.",
    ],
    "test_12": [
        "The force law holds for a charge outside the sphere (y > d), but the table samples y in [1, 3] and d in [4, 6]. "
        "Kept the table's ranges: the formula stays real and finite there because y**2 - d**2 never vanishes.",
    ],
    "test_14": [
        "The potential formula holds outside the sphere (r >= d), but the table samples r and d both in [1, 5]. "
        "Kept the table's ranges: the formula stays real and finite there.",
    ],
}

CHECK_RANDOM_POINTS = 20_000
CHECK_SEED = 20200415


def read_table(path: Path, set_name: str) -> list[dict[str, Any]]:
    """Read one table into raw rows with stripped strings and the variable list."""
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not row.get("Filename"):
                continue
            cleaned = {key: (value or "").strip() for key, value in row.items() if key is not None}
            variables = []
            for index in range(1, MAX_VARIABLES + 1):
                name = cleaned.get(f"v{index}_name", "")
                if name:
                    variables.append(
                        {"name": name, "low": float(cleaned[f"v{index}_low"]), "high": float(cleaned[f"v{index}_high"])}
                    )
            cleaned["variables"] = variables
            cleaned["set"] = set_name
            rows.append(cleaned)
    return rows


def rename_functions(formula: str) -> tuple[str, list[str]]:
    """Replace numpy function names with their sympy names and describe each replacement."""
    notes = []
    for numpy_name, sympy_name in FUNCTION_RENAMES.items():
        pattern = rf"\b{numpy_name}\b"
        if re.search(pattern, formula):
            formula = re.sub(pattern, sympy_name, formula)
            notes.append(f"Wrote the numpy name {numpy_name} as the sympy name {sympy_name}.")
    return formula, notes


def fix_tilde(table_id: str, formula: str) -> tuple[str, list[str]]:
    """Apply the recorded decision for a formula that contains `~`."""
    if "~" not in formula:
        if table_id in TILDE_FIXES:
            raise SystemExit(f"{table_id}: expected a '~' in {formula!r}. The table changed, so review TILDE_FIXES.")
        return formula, []
    if table_id not in TILDE_FIXES:
        raise SystemExit(f"{table_id}: formula {formula!r} contains '~', but TILDE_FIXES has no decision for it. Add one.")
    old, new, note = TILDE_FIXES[table_id]
    if formula.count(old) != 1:
        raise SystemExit(f"{table_id}: expected {old!r} once in {formula!r}. Review TILDE_FIXES.")
    formula = formula.replace(old, new)
    if "~" in formula:
        raise SystemExit(f"{table_id}: {formula!r} still contains '~' after the fix")
    return formula, [note]


def check_real_finite(table_id: str, expr: sympy.Expr, symbols: tuple, variables: list[dict[str, Any]]) -> str | None:
    """Evaluate a formula at every corner of its box and at random points.

    Returns None when every value is real and finite with no floating-point
    error (underflow aside), else the reason. Points on a recorded removable
    singularity are skipped.
    """
    names = [variable["name"] for variable in variables]
    low = np.array([variable["low"] for variable in variables])
    high = np.array([variable["high"] for variable in variables])
    corners = np.array(list(itertools.product(*zip(low, high))), dtype=np.float64)
    generator = np.random.default_rng(CHECK_SEED)
    points = np.concatenate([corners, generator.uniform(low, high, size=(CHECK_RANDOM_POINTS, len(names)))])

    if table_id in REMOVABLE_SINGULARITIES:
        on_singularity, _ = REMOVABLE_SINGULARITIES[table_id]
        skip = on_singularity({name: points[:, column] for column, name in enumerate(names)})
        points = points[~skip]

    if expr.has(sympy.I):
        return "the formula contains the imaginary unit"
    function = sympy.lambdify(symbols, expr, modules="numpy", dummify=True)
    try:
        with np.errstate(all="raise", under="ignore"):
            values = np.asarray(function(*(points[:, column] for column in range(len(names)))))
    except FloatingPointError as error:
        return f"evaluating it over the listed ranges raises a floating-point error ({error})"
    if np.iscomplexobj(values):
        return "the formula gives complex values over the listed ranges"
    values = np.broadcast_to(values.astype(np.float64), (points.shape[0],))
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        example = dict(zip(names, points[bad[0]].tolist()))
        return f"{bad.size} of {points.shape[0]} checked points give non-finite values, for example at {example}"
    return None


def build_record(row: dict[str, Any]) -> dict[str, Any]:
    """Turn one table row into a registry record, applying and recording every fix."""
    table_id = row["Filename"]
    set_name = row["set"]
    notes: list[str] = []

    aliases = []
    if table_id in EQUATION_NUMBER_ALIASES:
        alias, note = EQUATION_NUMBER_ALIASES[table_id]
        aliases.append(alias)
        notes.append(note)
    if set_name == "bonus":
        aliases.append(table_id.replace("test_", "bonus_"))

    name = row.get("Name") or None
    if table_id in NAME_FIXES:
        typo, fixed = NAME_FIXES[table_id]
        if name is None or typo not in name:
            raise SystemExit(f"{table_id}: expected {typo!r} in the name {name!r}. Review NAME_FIXES.")
        name = name.replace(typo, fixed)
        notes.append(f"Corrected the spelling '{typo}' to '{fixed}' in the name.")

    table_formula = row["Formula"]
    formula, tilde_notes = fix_tilde(table_id, table_formula)
    formula, rename_notes = rename_functions(formula)
    notes += tilde_notes + rename_notes

    variables = row["variables"]
    names = [variable["name"] for variable in variables]
    symbols, expr = parse_formula(formula, names)
    unused = [name for name, symbol in zip(names, symbols) if symbol not in expr.free_symbols]
    if unused:
        raise SystemExit(f"{table_id}: variables {unused} are listed but not used in {formula!r}. Review the table row.")

    declared = int(row["# variables"])
    if declared != len(variables):
        notes.append(
            f"The table's '# variables' column says {declared}, but the row lists and the formula uses "
            f"{len(variables)} variables ({', '.join(names)}); n_var is {len(variables)}."
        )

    if table_id in REMOVABLE_SINGULARITIES:
        notes.append(REMOVABLE_SINGULARITIES[table_id][1])
    notes += EXTRA_NOTES.get(table_id, [])

    reason = check_real_finite(table_id, expr, symbols, variables)
    valid = reason is None
    if not valid:
        notes.append(f"Marked invalid: {reason}.")

    return {
        "id": table_id,
        "aliases": aliases,
        "set": set_name,
        "number": int(row["Number"]),
        "name": name,
        "output": row["Output"],
        "formula": formula,
        "table_formula": table_formula,
        "variables": variables,
        "valid": valid,
        "notes": notes,
    }


def check_decisions_used(records: list[dict[str, Any]]) -> None:
    """Fail if a recorded decision names an id that is not in the tables."""
    ids = {record["id"] for record in records}
    for table in (EQUATION_NUMBER_ALIASES, TILDE_FIXES, NAME_FIXES, REMOVABLE_SINGULARITIES, EXTRA_NOTES):
        missing = sorted(set(table) - ids)
        if missing:
            raise SystemExit(f"decisions name ids that the tables do not contain: {missing}. Remove or rename these decisions.")


def build_registry(source_dir: Path) -> dict[str, Any]:
    """Read both tables and return the registry document."""
    records = []
    for set_name, filename in TABLES:
        path = source_dir / filename
        if not path.is_file():
            raise SystemExit(f"table not found: {path}. Pass the folder that contains {filename} as --source-dir.")
        records += [build_record(row) for row in read_table(path, set_name)]
    check_decisions_used(records)
    return {
        "source": SOURCE,
        "format_version": FORMAT_VERSION,
        "generated_by": "scripts/build_feynman_registry.py",
        "conventions": CONVENTIONS,
        "formula_functions": sorted(FORMULA_NAMESPACE),
        "range_check": (
            f"Each formula was evaluated in float64 at every corner of its variable box and at {CHECK_RANDOM_POINTS} "
            f"uniform random points (numpy seed {CHECK_SEED}), with numpy floating-point errors other than underflow raised. "
            "Points on a removable singularity that a record's notes describe were skipped."
        ),
        "equations": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-dir", type=Path, required=True, help="folder with FeynmanEquations.csv and BonusEquations.csv")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"registry file to write (default: {DEFAULT_OUTPUT})")
    args = parser.parse_args(argv)

    document = build_registry(args.source_dir)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")

    equations = document["equations"]
    invalid = [record["id"] for record in equations if not record["valid"]]
    with_notes = sum(1 for record in equations if record["notes"])
    print(f"wrote {len(equations)} equations to {args.output}: {with_notes} with notes, invalid: {invalid or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
