"""The ``multkan`` command: ``discover``, ``bench feynman`` and ``demo``."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import sys
import textwrap
import time
import warnings
from pathlib import Path

__all__ = ["main", "build_parser"]

DEFAULT_EQUATION = "I.12.1"
DEFAULT_METHODS = "power_law,power_law_group,separable_product,factored_sum,additive,multiplicative,mult_node"

# Python API names in library messages, with the words a command-line user
# acts on. The library messages name parameters (inputs, min_rows) and
# functions (list_equations) that the command line does not have.
_CLI_WORDING = (
    (re.compile(r"\binvalid (inputs|target|methods):"), r"invalid --\1:"),
    (re.compile(r"\b(out of|listed in|from) inputs\b"), r"\1 --inputs"),
    (re.compile(r" \(min_rows=\d+\)\. Add rows or lower min_rows\."), ". Add rows."),
    (re.compile(r"Call list_equations\(\) for all ids\."), lambda match: _equation_ids_hint()),
    (re.compile(r"Check the data or give more samples\."), "Check the data, add rows (or raise --samples), or try more --methods."),
    (re.compile(r"Raise time_limit\."), "Raise --time-limit."),
)


def _cli_message(message: object) -> str:
    """Return the text of a library error or warning in command-line words."""
    text = str(message)
    for pattern, replacement in _CLI_WORDING:
        text = pattern.sub(replacement, text)
    return text


def _equation_ids_hint() -> str:
    from .feynman import REGISTRY_PATH

    return f'All ids are the "id" fields in {REGISTRY_PATH}.'


def _discover_data_printing_warnings(arguments: argparse.Namespace):
    """Call :func:`_discover_data` and print its multkan warnings (such as a constant input column) in command-line words."""
    from .errors import MultKANWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = _discover_data(arguments)
    for warning in caught:
        if issubclass(warning.category, MultKANWarning):
            print(f"multkan discover: warning: {_cli_message(warning.message)}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return loaded


def _discover_data(arguments: argparse.Namespace):
    """Return ``(dataset, variable names, true formula or None, run name)``."""
    import torch

    from .errors import InvalidParameterError

    if arguments.data is not None:
        from .tabular import read_table

        if arguments.feynman is not None:
            raise InvalidParameterError("give either a data file or --feynman, not both")
        if arguments.target is None:
            raise InvalidParameterError("missing --target: name the column to predict, for example --target y")
        inputs = None if arguments.inputs is None else [name.strip() for name in arguments.inputs.split(",") if name.strip()]
        table = read_table(arguments.data, arguments.target, inputs)
        dataset = table.to_dataset(seed=arguments.seed)
        dataset = {key: value.to(torch.float64) for key, value in dataset.items()}
        return dataset, list(table.input_names), None, Path(arguments.data).stem

    if arguments.target is not None or arguments.inputs is not None:
        option = "--target" if arguments.target is not None else "--inputs"
        raise InvalidParameterError(f"{option} needs a data file: give the CSV or TSV file before the options, for example multkan discover data.csv {option} ...")
    from .feynman import get_equation

    equation = get_equation(arguments.feynman or DEFAULT_EQUATION)
    dataset = equation.sample(n_train=arguments.samples, n_test=arguments.samples // 2, seed=arguments.seed, dtype=torch.float64)
    return dataset, list(equation.variable_names), equation.expr, equation.id


# Characters per line of the network figure's title.
TITLE_WIDTH = 100

# Training rows drawn for a Feynman equation unless --samples sets another number.
DEFAULT_SAMPLES = 1000

OUTPUT_FILES = ("report.json", "network.png", "model.safetensors")

# The summary flags a formula whose test RMSE exceeds this fraction of the largest |target|.
POOR_FIT = 1e-2


def _run_folder(out: Path, run_name: str, source: str) -> Path:
    """Return ``out / run_name``, or ``run_name-2``, ``-3``, ... when the report there came from another source.

    A rerun on the same data file or equation reuses its folder. A different
    file with the same name (``a/data.csv`` after ``b/data.csv``) gets the
    next free number instead of replacing the other run's outputs. A folder
    whose report.json cannot be read is treated as another source's.
    """
    for number in itertools.count(1):
        folder = out / (run_name if number == 1 else f"{run_name}-{number}")
        report = folder / "report.json"
        if not report.exists():
            return folder
        try:
            recorded = json.loads(report.read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            continue
        # Reports written before the source was recorded belong to the same run name.
        if recorded is None or recorded == source:
            return folder


def _write_outputs(folder: Path, result, dataset, source: str | None = None) -> tuple[dict, list[str], list[str]]:
    """Write the report, the network figure and the model into ``folder``.

    Every file is written to a temporary file first and then renamed, so a
    reader never sees a half-written file. Files of :data:`OUTPUT_FILES` that
    an earlier run left and this run did not write (the figure and the model,
    when no method produced a network) are removed, so the folder never
    mixes two runs. Other files in ``folder`` are left alone.

    Returns
    -------
    report : dict
        The contents of report.json: ``result.to_dict()`` plus
        ``network_method``, ``formula_relative_test_rmse`` (the formula's test
        RMSE over the largest |test label|), ``files`` (``written`` and
        ``removed``) and, when given, ``source`` (the data file's absolute
        path or ``feynman:<id>``).
    written, removed : list of str
        Names of the files written and of the stale files removed.
    """
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    model = result.model
    network_method = _network_method(result)
    if model is not None:
        inputs = dataset["train_input"].to(model.dtype)
        if result.network_input_scale is not None:
            inputs = inputs / torch.tensor(result.network_input_scale, dtype=model.dtype)
        figure = model.plot(
            inputs,
            # Long formulas are wrapped, or they make the figure as wide as the title.
            title=textwrap.fill(_network_title(result, network_method), TITLE_WIDTH),
        )
        _replace_file(folder / "network.png", lambda path: figure.savefig(path, format="png", dpi=120, bbox_inches="tight"))
        written.append("network.png")
        model.save(folder / "model.safetensors")
        written.append("model.safetensors")

    written.append("report.json")
    removed = [name for name in OUTPUT_FILES if name not in written and (folder / name).exists()]
    report = result.to_dict()
    report["network_method"] = network_method
    labels = dataset.get("test_label")
    scale = float(labels.abs().max()) if labels is not None and labels.numel() else 0.0
    rmse = result.formula_test_rmse
    finite = rmse is not None and math.isfinite(rmse) and scale > 0
    report["formula_relative_test_rmse"] = rmse / scale if finite else None
    report["files"] = {"written": written, "removed": removed}
    if source is not None:
        report["source"] = source
    _replace_file(folder / "report.json", lambda path: Path(path).write_text(json.dumps(report, indent=2) + "\n"))
    for name in removed:
        (folder / name).unlink(missing_ok=True)
    return report, written, removed


def _replace_file(path: Path, write) -> None:
    """Call ``write`` on a temporary path next to ``path``, then rename the result over ``path``."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _network_method(result) -> str | None:
    """Return the method whose network ``result.model`` is, or None when the report does not record it.

    ``discover`` keeps the chosen formula's network, or else the most
    accurate network of any method, so the network can come from a method
    other than ``result.method``.
    """
    if result.model is None:
        return None
    if result.network_method is not None:
        return result.network_method
    for candidate in result.candidates:
        if candidate.model is result.model:
            return candidate.method
    # NOTE: a result built without network_method whose network's candidate
    # is not on the Pareto front has no record of the method.
    return None


def _network_title(result, network_method: str | None) -> str:
    if network_method is None:
        return f"most accurate network (method not recorded); formula from {result.method}: {result.formula}"
    if network_method == result.method:
        return f"{network_method} network, which gives the formula {result.formula}"
    return f"{network_method} network; the formula {result.formula} is from {result.method}"


def _discover_failed(arguments: argparse.Namespace, error: Exception) -> int:
    """Report a failed run on stderr and, with --json, as a JSON object on stdout; return the exit status 2."""
    message = _cli_message(error)
    print(f"multkan discover: {message}", file=sys.stderr)
    if arguments.json:
        # A script that parses stdout gets JSON on failure too.
        print(json.dumps({"error": message, "formula": None}, indent=2))
    return 2


def _discover(arguments: argparse.Namespace) -> int:
    from .discover import discover
    from .errors import MultKANError

    if arguments.steps < 1:
        print(f"multkan discover: invalid --steps {arguments.steps}: expected an integer >= 1", file=sys.stderr)
        return 2
    if arguments.samples is not None and arguments.data is not None:
        print("multkan discover: --samples draws rows of a Feynman equation; a data file is used as it is, so leave --samples out", file=sys.stderr)
        return 2
    if arguments.samples is None:
        arguments.samples = DEFAULT_SAMPLES
    if arguments.samples < 2:
        print(f"multkan discover: invalid --samples {arguments.samples}: expected an integer >= 2", file=sys.stderr)
        return 2
    if not arguments.stop_rmse >= 0:
        print(f"multkan discover: invalid --stop-rmse {arguments.stop_rmse}: expected a number >= 0", file=sys.stderr)
        return 2
    if arguments.time_limit is not None and not arguments.time_limit > 0:
        print(f"multkan discover: invalid --time-limit {arguments.time_limit}: expected a number of seconds > 0", file=sys.stderr)
        return 2
    try:
        dataset, names, truth, run_name = _discover_data_printing_warnings(arguments)
    except MultKANError as error:
        return _discover_failed(arguments, error)

    methods = tuple(m.strip() for m in arguments.methods.split(","))
    if arguments.methods == DEFAULT_METHODS and arguments.data is None and arguments.feynman is None:
        # The default equation is a product: its mult-node network is the one worth drawing.
        methods = ("power_law", "mult_node", *(m for m in methods if m not in ("power_law", "mult_node")))
    try:
        result = discover(
            dataset,
            names,
            target_name=_target_name(arguments),
            true_formula=truth,
            seed=arguments.seed,
            steps=arguments.steps,
            methods=methods,
            stop_rmse=arguments.stop_rmse or None,
            stop_needs_network=True,
            time_limit=arguments.time_limit,
            progress=not arguments.quiet,
        )
    except MultKANError as error:
        return _discover_failed(arguments, error)
    source = str(Path(arguments.data).resolve()) if arguments.data is not None else f"feynman:{run_name}"
    folder = _run_folder(Path(arguments.out), run_name, source)
    report, written, removed = _write_outputs(folder, result, dataset, source)

    if arguments.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"formula:  {result.formula}")
    print(f"method:   {result.method}")
    for method, reason in result.skipped.items():
        print(f"no formula from {method}: {reason}")
    print(f"test RMSE of the formula: {result.formula_test_rmse:.3e}")
    relative = report["formula_relative_test_rmse"]
    if relative is not None and relative > POOR_FIT:
        print(
            f"poor fit: the test RMSE is {100 * relative:.1f}% of the largest |target|; "
            "more rows, other --methods or --stop-rmse 0 may find a better formula"
        )
    if result.model_test_rmse is not None:
        print(f"test RMSE of the best network: {result.model_test_rmse:.3e}")
    if truth is not None:
        print(f"true formula: {truth}   recovered: {_recovery(result.exact, result.strict)}")
    print(f"time: {result.seconds:.1f} s; outputs in {folder}: {', '.join(written)}")
    if removed:
        print(f"removed {', '.join(removed)} of an earlier run from {folder}, because no method of this run produced a network")
    return 0


def _target_name(arguments: argparse.Namespace) -> str:
    if arguments.data is not None:
        return arguments.target.strip()
    from .feynman import get_equation

    return get_equation(arguments.feynman or DEFAULT_EQUATION).output


def _bench_one(equation_id: str, seed: int, steps: int, methods: tuple[str, ...] | None = None) -> dict:
    """Run discover on one Feynman equation; a module-level function so worker processes can pickle it."""
    import torch

    from .discover import discover
    from .feynman import get_equation

    torch.set_num_threads(1)
    equation = get_equation(equation_id)
    start = time.perf_counter()
    try:
        dataset = equation.sample(n_train=1000, n_test=500, seed=seed, dtype=torch.float64)
        result = discover(
            dataset, list(equation.variable_names), true_formula=equation.expr, seed=seed, steps=steps, methods=methods, stop_rmse=1e-9, progress=False
        )
        return {
            "id": equation.id, "n_var": equation.n_var, "formula": str(result.formula), "truth": equation.formula,
            "method": result.method, "exact": bool(result.exact), "strict": bool(result.strict),
            "test_rmse": result.formula_test_rmse, "seconds": time.perf_counter() - start, "error": None,
        }
    except Exception as error:  # noqa: BLE001 - a sweep records every failure and goes on
        return {
            "id": equation.id, "n_var": equation.n_var, "formula": None, "truth": equation.formula, "method": None,
            "exact": False, "strict": False, "test_rmse": math.inf, "seconds": time.perf_counter() - start,
            "error": f"{type(error).__name__}: {error}",
        }


def _bench(arguments: argparse.Namespace) -> int:
    from .discover import METHODS
    from .errors import MultKANError
    from .feynman import get_equation, list_equations

    methods = tuple(m.strip() for m in arguments.methods.split(","))
    unknown = [m for m in methods if m not in METHODS]
    problems = []
    if unknown or not methods:
        problems.append(f"invalid --methods {arguments.methods!r}: choose from {', '.join(METHODS)}")
    if arguments.jobs < 1:
        problems.append(f"invalid --jobs {arguments.jobs}: expected an integer >= 1")
    if arguments.steps < 1:
        problems.append(f"invalid --steps {arguments.steps}: expected an integer >= 1")
    try:
        names = [i.strip() for i in arguments.ids.split(",") if i.strip()] if arguments.ids is not None else None
        if names is not None and not names:
            problems.append("invalid --ids: expected comma-separated equation ids such as I.12.1,I.6.20a")
        ids = [get_equation(i).id for i in names] if names else list_equations(arguments.set)
    except MultKANError as error:
        problems.append(_cli_message(error))
    if problems:
        print("multkan bench: " + "; ".join(problems), file=sys.stderr)
        return 2
    rows = []
    if arguments.ray is not None:
        import ray

        ray.init(address=arguments.ray or None)
        remote = ray.remote(_bench_one)
        rows = ray.get([remote.remote(i, arguments.seed, arguments.steps, methods) for i in ids])
    else:
        from concurrent.futures import ProcessPoolExecutor

        from tqdm.auto import tqdm

        with ProcessPoolExecutor(max_workers=arguments.jobs) as pool:
            futures = [pool.submit(_bench_one, i, arguments.seed, arguments.steps, methods) for i in ids]
            for future in tqdm(futures, desc="bench", disable=arguments.quiet):
                rows.append(future.result())

    recovered = sum(row["exact"] for row in rows)
    equal = sum(row["strict"] for row in rows)
    print(f"| id | n_var | recovered | method | test RMSE | seconds | formula |")
    print(f"|---|---|---|---|---|---|---|")
    for row in rows:
        status = "error" if row["error"] else _recovery(row["exact"], row["strict"])
        print(f"| {row['id']} | {row['n_var']} | {status} | {row['method']} | {row['test_rmse']:.2e} | {row['seconds']:.1f} | `{row['formula'] or row['error']}` |")
    count = max(len(rows), 1)
    print(f"\nexact recovery (SRBench: equal up to a constant term or factor): {recovered}/{len(rows)} ({100 * recovered / count:.0f}%)")
    print(f"equal to the true formula: {equal}/{len(rows)} ({100 * equal / count:.0f}%)")
    if arguments.out:
        path = Path(arguments.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def _recovery(exact: bool, strict: bool) -> str:
    """Describe a comparison with the true formula: equal, equal up to a constant (SRBench's criterion), or no."""
    if strict:
        return "equal"
    if exact:
        return "up to a constant term or factor (SRBench), not equal"
    return "no"


def _demo(arguments: argparse.Namespace) -> int:
    import torch

    if arguments.steps < 1:
        print(f"multkan demo: invalid --steps {arguments.steps}: expected an integer >= 1", file=sys.stderr)
        return 2
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
    from . import __version__

    parser = argparse.ArgumentParser(prog="multkan", description="Kolmogorov-Arnold networks with sum and mult nodes.")
    parser.add_argument("--version", action="version", version=f"multkan {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    discover = commands.add_parser(
        "discover",
        help="find a formula for data (a CSV/TSV file, a Feynman equation, or by default Feynman I.12.1, F = mu*Nn)",
    )
    discover.add_argument("data", nargs="?", help="CSV or TSV file with a header row")
    discover.add_argument("--target", help="column to predict (required with a data file)")
    discover.add_argument("--inputs", help="comma-separated input columns (default: every column but the target)")
    discover.add_argument("--feynman", metavar="ID", help="Feynman equation id, such as I.6.20a or test_1")
    discover.add_argument("--samples", type=int, default=None, help=f"training samples drawn for a Feynman equation (default {DEFAULT_SAMPLES}); not with a data file")
    discover.add_argument("--steps", type=int, default=50, help="L-BFGS steps per training phase (default 50)")
    discover.add_argument("--seed", type=int, default=0, help="seed of data sampling, splits and models (default 0)")
    discover.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated methods to try, in order, from power_law, power_law_group, separable_product, factored_sum, additive, multiplicative, mult_node (default: all)",
    )
    discover.add_argument(
        "--stop-rmse",
        type=float,
        default=1e-6,
        help="stop trying methods once a formula's test RMSE is at most this times the largest |target| and a network has been trained; 0 tries every method (default 1e-6, above the rounding of values written with 7 significant digits)",
    )
    discover.add_argument(
        "--out",
        default="multkan-out",
        help="folder that gets one subfolder per data file or equation, named after it, with report.json, network.png and model.safetensors; a rerun replaces them and removes the ones it does not write, and another file of the same name gets NAME-2 (default multkan-out)",
    )
    discover.add_argument(
        "--time-limit",
        type=float,
        default=None,
        metavar="SECONDS",
        help="start no further method, and stop the running one, after this many seconds; a network method stops between training stages (default: no limit)",
    )
    discover.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1: the fits here are small, and with other jobs on the cores more threads made a fit up to 50 times slower)")
    discover.add_argument("--quiet", action="store_true", help="hide progress bars")
    discover.add_argument("--json", action="store_true", help="print the report as JSON instead of a summary")
    discover.set_defaults(handler=_discover)

    bench = commands.add_parser("bench", help="run discover over many equations and report the exact-recovery rate")
    bench.add_argument("suite", choices=["feynman"], help="benchmark suite")
    bench.add_argument("--ids", help="comma-separated equation ids (default: the whole set)")
    bench.add_argument("--set", choices=["main", "bonus"], default=None, help="restrict to the main or bonus equations")
    bench.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="local worker processes (default: CPU count)")
    bench.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS", help="run on Ray instead: a cluster address, or none for a local Ray")
    bench.add_argument("--steps", type=int, default=50, help="L-BFGS steps per training phase (default 50)")
    bench.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    bench.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated discover methods, tried in order until one is exact to 1e-9 (default: all)",
    )
    bench.add_argument("--out", help="JSON file for the per-equation results")
    bench.add_argument("--quiet", action="store_true", help="hide the progress bar")
    bench.set_defaults(handler=_bench)

    demo = commands.add_parser("demo", help="fit the standard example exp(sin(pi*x_1) + x_2^2) and print the test RMSE")
    demo.add_argument("--steps", type=int, default=50, help="L-BFGS steps before and after grid refinement (default 50)")
    demo.add_argument("--seed", type=int, default=0, help="seed of data and model (default 0)")
    demo.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1: the fits here are small, and with other jobs on the cores more threads made a fit up to 50 times slower)")
    demo.add_argument("--quiet", action="store_true", help="hide progress bars")
    demo.set_defaults(handler=_demo)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning ({category.__name__}): {message}\n"


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit status."""
    arguments = build_parser().parse_args(argv)
    # The CLI owns its process, so it keeps freed memory for reuse (see multkan.allocator).
    from .allocator import set_malloc_thresholds

    set_malloc_thresholds()
    threads = getattr(arguments, "threads", None)
    if threads is not None:
        if threads < 1:
            print(f"multkan {arguments.command}: invalid --threads {threads}: expected an integer >= 1", file=sys.stderr)
            return 2
        import torch

        torch.set_num_threads(threads)
    # Warnings are for the person at the terminal: category and message, no source line.
    default_format, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return arguments.handler(arguments)
    finally:
        warnings.formatwarning = default_format


if __name__ == "__main__":
    sys.exit(main())
