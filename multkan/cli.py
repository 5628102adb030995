"""The ``multkan`` command."""

from __future__ import annotations

import argparse
import math
import sys
import time

__all__ = ["main"]


def _demo(arguments: argparse.Namespace) -> int:
    import torch

    from . import MultKAN, create_dataset

    def target(x):
        return torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2)

    data = create_dataset(target, n_var=2, train_num=1000, test_num=1000, seed=arguments.seed)
    model = MultKAN([2, 5, 1], grid=5, k=3, seed=arguments.seed)
    start = time.perf_counter()
    model.fit(data, steps=arguments.steps, progress=not arguments.quiet)
    model = model.refine(10)
    history = model.fit(data, steps=arguments.steps, progress=not arguments.quiet)
    elapsed = time.perf_counter() - start
    print(f"fitted exp(sin(pi*x_1) + x_2**2) with MultKAN([2, 5, 1]): test RMSE {history['test_loss'][-1]:.2e} in {elapsed:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``multkan`` command."""
    parser = argparse.ArgumentParser(prog="multkan", description="Kolmogorov-Arnold networks with sum and mult nodes.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="fit the standard example exp(sin(pi*x_1) + x_2^2) and print the test RMSE")
    demo.add_argument("--steps", type=int, default=50, help="L-BFGS steps before and after grid refinement (default 50)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data and model (default 0)")
    demo.add_argument("--quiet", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    arguments = build_parser().parse_args(argv)
    return arguments.handler(arguments)


if __name__ == "__main__":
    sys.exit(main())
