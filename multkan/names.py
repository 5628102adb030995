"""Variable names for formulas.

sympy prints a symbol's name as it is, so a column named ``v-1`` reads as
``v - 1`` in ``m*v-1``. Names that are not Python identifiers are replaced
in formulas by identifiers, with a warning that lists each change.
"""

from __future__ import annotations

import keyword
import re
import warnings
from collections.abc import Sequence

from .errors import MultKANWarning

__all__ = ["formula_names"]


def formula_names(names: Sequence[str], *, stacklevel: int = 2) -> list[str]:
    """Return ``names`` with every name that is not a Python identifier made into one, warning about each change.

    Each run of characters other than letters, digits and ``_`` becomes
    one ``_``, with none at either end (``m [kg]`` becomes ``m_kg``), a name
    that starts with a digit (or is a Python keyword) gets the prefix
    ``x_``, and a name that then repeats another gets the suffix ``_2``,
    ``_3`` and so on.
    """
    result: list[str] = []
    changed: list[str] = []
    for name in names:
        name = str(name)
        safe = name
        if not safe.isidentifier() or keyword.iskeyword(safe):
            # One "_" per run of other characters, none at the ends: "m [kg]" -> m_kg,
            # not m__kg_, which sympy's LaTeX printer reads as a superscript.
            safe = re.sub(r"\W+", "_", safe).strip("_") or "x"
            if safe[0].isdigit() or keyword.iskeyword(safe):
                safe = "x_" + safe
        base, suffix = safe, 2
        while safe in result or (safe != name and safe in names):
            safe, suffix = f"{base}_{suffix}", suffix + 1
        if safe != name:
            changed.append(f"{name!r} -> {safe}")
        result.append(safe)
    if changed:
        warnings.warn(
            f"variable names that are not Python identifiers, or are keywords, would print ambiguously in formulas ('m*v-1'); "
            f"they are renamed in formulas: {', '.join(changed)}",
            MultKANWarning,
            stacklevel=stacklevel + 1,
        )
    return result
