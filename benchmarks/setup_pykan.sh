#!/usr/bin/env bash
# Create benchmarks/.pykan-venv: one interpreter that imports both pykan 0.2.8
# (the reference implementation, module name `kan`) and multkan from this
# checkout, so bench_vs_pykan.py can time both on the same data.
#
# Usage, from any directory:  bash benchmarks/setup_pykan.sh [python3]
# pykan is only a benchmark dependency, never a dependency of multkan.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
python="${1:-python3}"
venv="$here/.pykan-venv"

"$python" -m venv "$venv"
pip=("$venv/bin/pip" install -q -c "$repo/constraints.txt")

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
"${pip[@]}" torch==2.13.0

# pykan 0.2.8 declares no install requirements, but `import kan` and the code
# paths timed here (fit, speed, auto_symbolic, saving checkpoints) need these.
"${pip[@]}" pykan==0.2.8 numpy sympy matplotlib pandas scikit-learn pyyaml tqdm setuptools

# multkan itself, editable, so the benchmark times the working tree.
"${pip[@]}" -e "$repo"

"$venv/bin/python" - <<'PY'
import importlib.metadata as metadata

import kan
import multkan

print("pykan", metadata.version("pykan"), "and multkan", metadata.version("multkan"), "import from", kan.__file__, "and", multkan.__file__)
PY
