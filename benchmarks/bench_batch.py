"""Time training M small models as one BatchedMultKAN against training them one by one.

Both sides train the same models (seeds 0 .. M-1) on the same data with the
same Adam settings; one by one uses ``MultKAN.fit``. Model construction is
included in both times. Every time is the median of ``--repeats`` runs, with
the two sides alternating. The script also reports the largest parameter
and test-output differences between batched model i and the one trained
alone. The batched run computes the same updates, so the differences come
from float32 rounding, which Adam and the grid updates amplify over the
steps. In float64, ``tests/test_batch.py`` finds them below 1e-9.

Usage::

    python benchmarks/bench_batch.py                        # 32 models [2,5,1] G5, 1000 rows, 100 steps
    python benchmarks/bench_batch.py --models 8 32 128 --rows 100 1000

Prints a Markdown table and writes ``benchmarks/results/batch_<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from multkan import MultKAN, create_dataset  # noqa: E402
from multkan.batch import BatchedMultKAN  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, nargs="+", default=[32], help="numbers of models M to time (default: 32)")
    parser.add_argument("--width", default="2,5,1", help="sum-node layer sizes, comma-separated (default: 2,5,1)")
    parser.add_argument("--grid", type=int, default=5, help="grid intervals G (default: 5)")
    parser.add_argument("--rows", type=int, nargs="+", default=[1000], help="training rows, and as many test rows; several values give several cases (default: 1000)")
    parser.add_argument("--steps", type=int, default=100, help="Adam steps (default: 100)")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (default: 0.01)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median is reported (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--grid-updates", choices=("on", "off", "both"), default="both", help="fit's grid updates during the first 50 steps (default: both)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result (default: benchmarks/results)")
    arguments = parser.parse_args(argv)
    if any(m < 1 for m in arguments.models):
        parser.error(f"--models: expected integers >= 1, received {arguments.models}")
    if any(r < 1 for r in arguments.rows):
        parser.error(f"--rows: expected integers >= 1, received {arguments.rows}")
    for name in ("grid", "steps", "repeats", "threads"):
        if getattr(arguments, name) < 1:
            parser.error(f"--{name}: expected an integer >= 1, received {getattr(arguments, name)}")
    try:
        arguments.width = [int(v) for v in arguments.width.split(",")]
    except ValueError:
        parser.error(f"--width: expected comma-separated integers such as 2,5,1, received {arguments.width!r}")
    return arguments


def make_data(n_var: int, rows: int) -> dict:
    return create_dataset(
        lambda x: torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2) if n_var >= 2 else torch.sin(math.pi * x[:, 0]),
        n_var=n_var, train_num=rows, test_num=rows, seed=0,
    )


def train_batched(arguments, data, n_models: int, update_grid: bool) -> BatchedMultKAN:
    batch = BatchedMultKAN(arguments.width, seeds=range(n_models), grid=arguments.grid)
    batch.fit(data, steps=arguments.steps, lr=arguments.lr, update_grid=update_grid, log=arguments.steps, progress=False)
    return batch


def train_one_by_one(arguments, data, n_models: int, update_grid: bool) -> list[MultKAN]:
    models = []
    for seed in range(n_models):
        model = MultKAN(arguments.width, grid=arguments.grid, seed=seed)
        model.fit(data, opt="Adam", steps=arguments.steps, lr=arguments.lr, update_grid=update_grid, log=arguments.steps, progress=False, seed=0)
        models.append(model)
    return models


def max_differences(batch: BatchedMultKAN, models: list[MultKAN], x: torch.Tensor) -> tuple[float, float]:
    """Return the largest parameter difference and the largest output difference on ``x`` over all models."""
    parameters = outputs = 0.0
    with torch.no_grad():
        batched_output = batch(x)
        for index, model in enumerate(models):
            extracted = batch.model(index).state_dict()
            for key, value in model.state_dict().items():
                parameters = max(parameters, float((extracted[key] - value).abs().max()))
            outputs = max(outputs, float((batched_output[index] - model(x)).abs().max()))
    return parameters, outputs


def time_case(arguments, rows: int, n_models: int, update_grid: bool) -> dict:
    data = make_data(arguments.width[0], rows)
    batched_times, single_times = [], []
    batch = models = None
    for _ in range(arguments.repeats):
        start = time.perf_counter()
        batch = train_batched(arguments, data, n_models, update_grid)
        batched_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        models = train_one_by_one(arguments, data, n_models, update_grid)
        single_times.append(time.perf_counter() - start)

    batched, single = statistics.median(batched_times), statistics.median(single_times)
    x, y = data["test_input"], data["test_label"]
    with torch.no_grad():
        batched_rmse = torch.sqrt(((batch(x) - y) ** 2).mean(dim=(1, 2)))
    parameter_difference, output_difference = max_differences(batch, models, x)
    return {
        "models": n_models,
        "rows": rows,
        "update_grid": update_grid,
        "batched_s": batched,
        "one_by_one_s": single,
        "batched_runs_s": batched_times,
        "one_by_one_runs_s": single_times,
        "batched_models_per_s": n_models / batched,
        "one_by_one_models_per_s": n_models / single,
        "speedup": single / batched,
        "max_parameter_difference": parameter_difference,
        "max_test_output_difference": output_difference,
        "best_test_rmse": float(batched_rmse.min()),
        "median_test_rmse": float(batched_rmse.median()),
    }


def machine() -> dict:
    cpu = "unknown"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            names = {line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")}
        cpu = ", ".join(sorted(names)) or cpu
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| models | rows | grid updates | batched | one by one | batched models/s | one-by-one models/s | speedup | max parameter / output difference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        lines.append(
            f"| {row['models']} | {row['rows']} | {'on' if row['update_grid'] else 'off'} | {row['batched_s']:.2f} s | {row['one_by_one_s']:.2f} s "
            f"| {row['batched_models_per_s']:.1f} | {row['one_by_one_models_per_s']:.1f} | {row['speedup']:.1f}x "
            f"| {row['max_parameter_difference']:.1e} / {row['max_test_output_difference']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    torch.set_num_threads(arguments.threads)
    settings = {"on": [True], "off": [False], "both": [True, False]}[arguments.grid_updates]

    # Warm-up: first calls pay for lazy imports and allocator growth.
    warm = argparse.Namespace(**{**vars(arguments), "steps": 2})
    warm_data = make_data(arguments.width[0], 100)
    train_batched(warm, warm_data, 2, True)
    train_one_by_one(warm, warm_data, 1, True)

    started = datetime.datetime.now(datetime.timezone.utc)
    results = [
        time_case(arguments, rows, n_models, update_grid)
        for rows in arguments.rows
        for n_models in arguments.models
        for update_grid in settings
    ]
    print(markdown(results))

    record = {
        "started_utc": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "threads": arguments.threads,
        "settings": {key: value for key, value in vars(arguments).items() if key not in ("out", "models", "rows")},
        "results": results,
    }
    arguments.out.mkdir(parents=True, exist_ok=True)
    path = arguments.out / f"batch_{started.strftime('%Y-%m-%dT%H-%M-%S')}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
