"""Measure where the local basis evaluation overtakes the dense recursion.

For each grid size the same model runs a forward and backward pass twice,
once with every grid on the dense path and once with every grid on the
local path (``multkan.splines.LOCAL_BASIS_MIN`` set to a huge value, then
to 1). Times are the minimum CPU time of the calling thread over 25 calls
with one torch thread. The crossover sets ``LOCAL_BASIS_MIN``.

The knots are first moved to sample quantiles (``update_grid`` with
``grid_eps=0``): equally spaced knots always take the fused layer's own
local evaluation, and ``LOCAL_BASIS_MIN`` decides only for unequally
spaced ones, between the fused dense recursion and the unfused local basis.

Usage, from the repository root::

    python benchmarks/basis_crossover.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multkan import MultKAN, splines  # noqa: E402 - the checkout goes on sys.path first

# (width, rows) and (grid, k) pairs.
MODELS = [([10, 10, 1], 3000), ([400, 16, 2], 128)]
GRIDS = [(10, 3), (15, 3), (20, 3), (30, 3), (10, 5), (15, 5), (25, 5)]


def min_thread_time(function, calls=25, warmup=5):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(calls):
        start = time.thread_time()
        function()
        times.append(time.thread_time() - start)
    return min(times)


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    default = splines.LOCAL_BASIS_MIN
    print("| width, rows | G | k | basis functions | dense | local | dense / local |")
    print("|---|---|---|---|---|---|---|")
    try:
        for width, rows in MODELS:
            for grid, k in GRIDS:
                model = MultKAN(width, grid=grid, k=k, seed=0)
                x = torch.rand(rows, width[0]) * 2 - 1
                model.update_grid(x, grid_eps=0.0)

                def step():
                    model.zero_grad()
                    model(x).square().mean().backward()

                splines.LOCAL_BASIS_MIN = 10**9
                dense = min_thread_time(step)
                splines.LOCAL_BASIS_MIN = 1
                local = min_thread_time(step)
                print(f"| {width}, {rows} | {grid} | {k} | {grid + k} | {dense * 1e3:.2f} ms | {local * 1e3:.2f} ms | {dense / local:.2f} |", flush=True)
    finally:
        splines.LOCAL_BASIS_MIN = default


if __name__ == "__main__":
    main()
