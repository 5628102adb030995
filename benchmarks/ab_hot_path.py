"""Compare the forward and backward pass of this checkout against an older commit, interleaved in one process.

The older package is extracted with ``git archive`` into a temporary folder
and imported as ``multkan_old``, so both versions run on the same data in
the same process, alternating call by call: machine load then hits both
alike. Times are CPU time of the calling thread (``time.thread_time``) with
one torch thread, which other processes on a shared machine disturb less
than wall-clock time; the table shows the minimum and the median.

Usage, from the repository root::

    python benchmarks/ab_hot_path.py --old-ref f048af2
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# (width, grid, rows, k)
CASES = [
    ([2, 5, 1], 5, 1000, 3),
    ([10, 10, 10, 1], 10, 3000, 3),
    ([2, [0, 1], 1], 5, 1000, 3),
    ([4, 8, 1], 50, 2000, 3),
    ([400, 16, 2], 15, 128, 5),
]


def import_old(ref: str):
    """Extract ``multkan/`` at ``ref`` and import it as ``multkan_old``."""
    folder = Path(tempfile.mkdtemp())
    archive = folder / "old.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), ref, "multkan"], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    (folder / "multkan").rename(folder / "multkan_old")
    sys.path.insert(0, str(folder))
    return importlib.import_module("multkan_old"), importlib.import_module("multkan_old.train")


def workloads(package, train, width, grid, rows, k):
    model = package.MultKAN(width, grid=grid, k=k, seed=0)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(rows, model.n_inputs, generator=generator) * 2 - 1
    y = torch.rand(rows, model.n_outputs, generator=generator)

    def forward():
        with torch.no_grad():
            model(x)

    def forward_backward():
        model.zero_grad()
        ((model(x) - y) ** 2).mean().backward()

    def regularised():
        model.zero_grad()
        output, reg = train.regularization(model, x)
        (((output - y) ** 2).mean() + reg).backward()

    return {"forward": forward, "forward+backward": forward_backward, "with regulariser": regularised}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-ref", required=True, help="git commit or tag of the older version")
    parser.add_argument("--repeats", type=int, default=30, help="timed calls per version and workload")
    arguments = parser.parse_args()

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    import multkan
    import multkan.train

    old, old_train = import_old(arguments.old_ref)
    print(f"| case | workload | {arguments.old_ref} min / median | this checkout min / median | speed-up of medians |")
    print("|---|---|---|---|---|")
    for width, grid, rows, k in CASES:
        before = workloads(old, old_train, width, grid, rows, k)
        after = workloads(multkan, multkan.train, width, grid, rows, k)
        for name in before:
            for function in (before[name], after[name]):
                for _ in range(5):
                    function()
            times = {"before": [], "after": []}
            for _ in range(arguments.repeats):
                for label, function in (("before", before[name]), ("after", after[name])):
                    start = time.thread_time()
                    function()
                    times[label].append(time.thread_time() - start)
            summary = {label: (min(values) * 1e3, sorted(values)[len(values) // 2] * 1e3) for label, values in times.items()}
            (b_min, b_med), (a_min, a_med) = summary["before"], summary["after"]
            print(f"| {width} G{grid} k{k}, {rows} rows | {name} | {b_min:.2f} / {b_med:.2f} ms | {a_min:.2f} / {a_med:.2f} ms | {b_med / a_med:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
