"""Package metadata in pyproject.toml."""

from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_notebooks_extra_has_ipywidgets():
    # tqdm.auto, which fit and discover use for progress bars, needs ipywidgets to draw them in Jupyter.
    extras = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    names = [Requirement(requirement).name for requirement in extras["notebooks"]]
    assert "ipywidgets" in names
    assert "ipykernel" in names
    assert "jupyterlab" in names
