"""Lazy imports: ``import multkan`` and the command line's help load no heavy dependency."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import multkan

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["torch", "sympy", "networkx", "matplotlib", "sklearn", "numpy"]


def _loaded_after(code):
    """Run ``code`` in a fresh interpreter and return which HEAVY modules it loaded."""
    script = f"import json, sys\n{code}\nprint(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))"
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(output.stdout.strip().splitlines()[-1])


def test_import_loads_no_heavy_module():
    assert _loaded_after("import multkan") == []


def test_subpackage_imports_stay_light():
    assert _loaded_after("import multkan.graph, multkan.symbolic, multkan.nn") == []


def test_cli_help_loads_no_heavy_module():
    code = "from multkan.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    assert _loaded_after(code) == []


def test_cli_argument_error_loads_no_heavy_module():
    code = "from multkan.cli import main\ntry:\n    main(['--no-such-option'])\nexcept SystemExit as error:\n    assert error.code == 2"
    assert _loaded_after(code) == []


def test_first_use_loads_torch():
    assert "torch" in _loaded_after("from multkan import MultKAN\nMultKAN([2, 1])")


def test_lazy_names_are_the_defining_objects():
    from multkan.datasets import create_dataset
    from multkan.model import MultKAN
    from multkan.train import fit

    assert multkan.MultKAN is MultKAN
    assert multkan.fit is fit
    assert multkan.create_dataset is create_dataset


def test_dir_lists_every_public_name():
    names = dir(multkan)
    for name in multkan.__all__:
        assert name in names
    assert "__version__" in names


def test_every_public_name_resolves():
    for name in multkan.__all__:
        assert getattr(multkan, name) is not None


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="module 'multkan' has no attribute 'no_such_name'"):
        multkan.no_such_name  # noqa: B018
