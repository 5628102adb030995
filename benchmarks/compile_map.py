"""Time torch.compile against eager multkan models over a range of sizes.

For each model size and mode (forward without gradients, forward plus
backward of a mean squared output) this prints the eager time, the
compiled time and the compilation time. The compilation time is that of
the first compiled call, with inductor's caches disabled so that every
compilation is cold. Two compiled variants are timed:

``model``
    ``torch.compile(model)`` on the model as shipped. The fused autograd
    nodes and the data-dependent choice of the basis evaluation (one
    ``.item()`` per layer) break the graph, so the compiler gets pieces.
``plain``
    A forward pass rewritten in plain differentiable torch operations (the
    dense Cox-de Boor recursion, one ``einsum``), compiled with
    ``fullgraph=True``: what the compiler can do with the whole network in
    one graph. This variant exists only in this script.

Usage, from the repository root::

    python benchmarks/compile_map.py                 # 1 and 2 threads, about 20 min on an idle 2-core machine
    python benchmarks/compile_map.py --threads 1

Results go to ``benchmarks/results/compile_<date>.json`` and a Markdown table
is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from multkan import MultKAN  # noqa: E402 - the checkout goes on sys.path first
from multkan.nn._layer import BASE_FUNCTIONS, MultKANLayer  # noqa: E402

SIZES = (
    ([2, 5, 1], 5, 3, 1000),
    ([2, 5, 1], 5, 3, 100_000),
    ([10, 10, 10, 1], 10, 3, 3000),
    ([10, 10, 10, 1], 10, 3, 30_000),
    ([64, 64], 5, 3, 8192),
    ([400, 16, 2], 15, 5, 128),
    ([400, 16, 2], 15, 5, 2048),
)
CALLS = 20


def plain_basis(x: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
    """Return the B-spline basis (batch, n_in, n_basis) by the textbook recursion in plain operations."""
    xs = x.unsqueeze(-1)
    basis = ((xs >= grid[:, :-1]) & (xs < grid[:, 1:])).to(x.dtype)
    for p in range(1, k + 1):
        left = (xs - grid[:, : -(p + 1)]) / (grid[:, p:-1] - grid[:, : -(p + 1)])
        right = (grid[:, p + 1 :] - xs) / (grid[:, p + 1 :] - grid[:, 1:-p])
        basis = left * basis[..., :-1] + right * basis[..., 1:]
    return basis


def plain_target_sums(layer: MultKANLayer, x: torch.Tensor) -> torch.Tensor:
    """Return the layer's target sums (batch, n_sub) from plain operations (spline layers without symbolic edges)."""
    weights = layer.coef * (layer.scale_sp * layer.spline_mask).unsqueeze(-1)
    spline = torch.einsum("bim,ijm->bj", plain_basis(x, layer.grid, layer.k), weights)
    return spline + BASE_FUNCTIONS[layer.base_fun](x) @ (layer.scale_base * layer.spline_mask)


def median_seconds(first, second, calls: int) -> tuple[float, float]:
    """Return the median times of two functions, called alternately so that load changes affect both alike."""
    for _ in range(3):
        first()
        second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(calls):
        for function, record in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            function()
            record.append(time.perf_counter() - start)
    return tuple(sorted(record)[len(record) // 2] for record in times)


def measure(width, grid, k, rows, variant):
    """Return a list of result rows for one model size and one compiled variant."""
    model = MultKAN(list(width), grid=grid, k=k, seed=0)
    x = torch.rand(rows, width[0], generator=torch.Generator().manual_seed(0)) * 2 - 1
    results = []
    for mode in ("forward", "forward+backward"):

        def run(module):
            if mode == "forward":
                with torch.no_grad():
                    return module(x)
            model.zero_grad()
            module(x).square().mean().backward()
            return None

        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=(variant == "plain"))
        start = time.perf_counter()
        run(compiled)
        compile_seconds = time.perf_counter() - start
        eager, fast = median_seconds(lambda: run(model), lambda: run(compiled), CALLS)
        difference = None
        if mode == "forward":
            difference = float((run(compiled) - run(model)).abs().max())
        results.append(
            dict(width=width, grid=grid, k=k, rows=rows, variant=variant, mode=mode, eager_seconds=eager,
                 compiled_seconds=fast, compile_seconds=compile_seconds, max_output_difference=difference)
        )
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--variants", nargs="+", choices=["model", "plain"], default=["model", "plain"])
    args = parser.parse_args()
    import torch._dynamo
    import torch._inductor.config

    torch._inductor.config.force_disable_caches = True
    # Compile in this process: a pool of compile workers would share the cores with the timed calls.
    torch._inductor.config.compile_threads = 1
    warnings.filterwarnings("ignore")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%S")
    original = MultKANLayer.target_sums

    def target_sums(layer, x):
        return plain_target_sums(layer, x) if torch.compiler.is_compiling() else original(layer, x)

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for variant in args.variants:
            MultKANLayer.target_sums = target_sums if variant == "plain" else original
            for size in SIZES:
                for row in measure(*size, variant):
                    rows.append(dict(row, threads=threads))
    MultKANLayer.target_sums = original
    out = Path(__file__).resolve().parent / "results" / f"compile_{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "date_utc": stamp, "rows": rows}, indent=1))
    print(f"\nraw results: {out}\n")
    print("| threads | variant | width, rows | mode | eager | compiled | compiled / eager | compilation |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['threads']} | {row['variant']} | {row['width']} G{row['grid']}, {row['rows']} | {row['mode']} | "
            f"{row['eager_seconds'] * 1e3:.2f} ms | {row['compiled_seconds'] * 1e3:.2f} ms | "
            f"{row['compiled_seconds'] / row['eager_seconds']:.2f} | {row['compile_seconds']:.1f} s |"
        )


if __name__ == "__main__":
    main()
