"""Time multkan and pykan 0.2.8 side by side on the same data, architecture and dtype.

Run with the interpreter of ``benchmarks/.pykan-venv`` (see ``setup_pykan.sh``),
which imports both packages; without pykan the pykan columns read "not
available". Every timing is the median of ``--repeats`` runs after one
warm-up run, in float32, with ``torch.set_num_threads`` set to each value of
``--threads``. Results go to ``benchmarks/results/<date>.json`` and a
Markdown table goes to stdout.

Cases:

- a: ``[2, 5, 1]``, grid 5, 1000 train and 1000 test rows, ``fit`` with
  50 L-BFGS steps and the shared defaults (``update_grid=True``,
  ``grid_update_num=10``, ``stop_grid_update_step=50``, ``lamb=0``, ``log=1``).
- a-mlp: a SiLU MLP ``[2, 10, 10, 1]`` (151 parameters, as many as the
  spline parameters of case a) trained by the same 50 L-BFGS steps.
- b: ``[10, 10, 10, 1]``, grid 10, 3000 rows, Adam steps (pykan after
  ``model.speed()``).
- c: ``[2, [0, 1], 1]`` (one mult node) on ``x0 * x1``, L-BFGS steps.
- d: ``auto_symbolic`` with the full library on a trained ``[2, 2, 1]``.
- e: peak memory of case b, each library in its own subprocess.
- f: import time, each import in its own subprocess, and import plus
  building the first multkan model.
- g: one ``[64, 64]`` layer against ``torch.nn.Linear(640, 64)`` (equal
  parameter count), forward and backward, with and without the regulariser.
- c20: ``[400, 16, 2]``, grid 15, k 5, batch 128: peak memory at 5,000 and
  20,000 rows (multkan only).
- compile: ``torch.compile`` of the case a and b models (multkan only).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import multkan
from multkan import MultKAN
from multkan.train import regularization

try:
    import kan as pykan
except ImportError:  # the project venv has no pykan; only multkan columns are filled
    pykan = None

HERE = Path(__file__).resolve().parent
NOT_AVAILABLE = "not available"


# Data and models.


def make_dataset(function, n_var, n_train, n_test, seed):
    """Return a pykan-style dataset dict of float32 tensors, inputs uniform in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    train_input = torch.rand(n_train, n_var, generator=generator) * 2 - 1
    test_input = torch.rand(n_test, n_var, generator=generator) * 2 - 1
    return {
        "train_input": train_input,
        "train_label": function(train_input),
        "test_input": test_input,
        "test_label": function(test_input),
    }


def target_a(x):
    return torch.exp(torch.sin(math.pi * x[:, [0]]) + x[:, [1]] ** 2)


def target_b(x):
    return torch.sin(math.pi * x[:, :5].sum(dim=1, keepdim=True) / 5) + (x[:, 5:] ** 2).mean(dim=1, keepdim=True)


def target_c(x):
    return x[:, [0]] * x[:, [1]]


def target_d(x):
    return torch.sin(math.pi * x[:, [0]]) + x[:, [1]] ** 2


def new_multkan(width, grid, k=3):
    return MultKAN(copy.deepcopy(width), grid=grid, k=k, seed=0, dtype=torch.float32)


def new_pykan(width, grid, k=3, *, speed=False):
    # pykan rewrites its width argument in place, so it gets a copy.
    model = pykan.KAN(width=copy.deepcopy(width), grid=grid, k=k, seed=0, auto_save=False, ckpt_path=tempfile.mkdtemp(), device="cpu")
    return model.speed() if speed else model


def count_forwards(model):
    """Count calls of ``model.forward``; returns a one-element list updated in place.

    pykan's ``fit`` calls ``self.forward`` directly, which skips module hooks,
    so the bound method is wrapped on the instance instead.
    """
    calls = [0]
    forward = model.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    model.forward = counted
    return calls


@contextlib.contextmanager
def count_direct_evaluations(calls):
    """Add the calls of multkan's direct objective (loss, gradient and logged predictions without model.forward) to ``calls``."""
    from multkan.nn._direct import DirectObjective

    originals = {name: getattr(DirectObjective, name) for name in ("__call__", "predict")}

    def counting(original):
        def counted(self, *args, **kwargs):
            calls[0] += 1
            return original(self, *args, **kwargs)

        return counted

    for name, original in originals.items():
        setattr(DirectObjective, name, counting(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(DirectObjective, name, original)


@contextlib.contextmanager
def quiet():
    """Silence pykan's prints and both progress bars."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# Memory.


def _status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def reset_peak_rss():
    """Reset the peak resident set size of this process to its current size and return it in KiB.

    ``ru_maxrss`` is no use in a child process: Linux keeps the high-water
    mark of the process image that ``exec`` replaced, the forked copy of
    the parent. ``/proc/self/status`` VmHWM belongs to the current image,
    and writing 5 to ``/proc/self/clear_refs`` resets it.
    """
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_kib("VmRSS")


def peak_rss():
    """Return the peak resident set size since the last reset, in KiB."""
    return _status_kib("VmHWM")


# Timing.


def median_time(function, repeats, warmup=1):
    """Return (median, all times) in seconds of ``function()`` after ``warmup`` calls."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def time_fit(library, width, grid, dataset, options, repeats, *, speed=False):
    """Time ``fit`` on a fresh model per repeat.

    Returns a dict with the median seconds per fit and per step, the
    forward calls per fit (L-BFGS evaluations plus loss logging; for
    multkan also evaluations of the direct objective) and the
    final test RMSE.
    """
    steps = options["steps"]
    records = []

    def run():
        if library == "multkan":
            model = new_multkan(width, grid)
            calls = count_forwards(model)
            with count_direct_evaluations(calls):
                start = time.perf_counter()
                history = model.fit(dataset, progress=False, **options)
        else:
            model = new_pykan(width, grid, speed=speed)
            calls = count_forwards(model)
            start = time.perf_counter()
            with quiet():
                history = model.fit(dataset, **options)
        elapsed = time.perf_counter() - start
        records.append((elapsed, calls[0], float(history["test_loss"][-1])))

    with quiet():
        run()  # warm-up
    records.clear()
    for _ in range(repeats):
        run()
    seconds = statistics.median(r[0] for r in records)
    return {
        "seconds": seconds,
        "seconds_per_step": seconds / steps,
        "forward_calls": statistics.median(r[1] for r in records),
        "test_rmse": statistics.median(r[2] for r in records),
        "all_seconds": [r[0] for r in records],
    }


def time_mlp_fit(dataset, steps, repeats):
    """Train a SiLU MLP [2, 10, 10, 1] with the same L-BFGS settings as ``fit`` and log losses per step."""
    records = []

    def run():
        torch.manual_seed(0)
        mlp = torch.nn.Sequential(torch.nn.Linear(2, 10), torch.nn.SiLU(), torch.nn.Linear(10, 10), torch.nn.SiLU(), torch.nn.Linear(10, 1))
        optimizer = torch.optim.LBFGS(mlp.parameters(), lr=1.0, max_iter=20, history_size=10, line_search_fn="strong_wolfe", tolerance_grad=1e-32, tolerance_change=1e-32)
        x, y = dataset["train_input"], dataset["train_label"]
        start = time.perf_counter()
        for _ in range(steps):

            def closure():
                optimizer.zero_grad()
                loss = torch.mean((mlp(x) - y) ** 2)
                loss.backward()
                return loss

            optimizer.step(closure)
            with torch.no_grad():
                float(torch.mean((mlp(x) - y) ** 2))
                test = float(torch.mean((mlp(dataset["test_input"]) - dataset["test_label"]) ** 2)) ** 0.5
        records.append((time.perf_counter() - start, test, sum(p.numel() for p in mlp.parameters())))

    run()
    records.clear()
    for _ in range(repeats):
        run()
    seconds = statistics.median(r[0] for r in records)
    return {"seconds": seconds, "seconds_per_step": seconds / steps, "test_rmse": statistics.median(r[1] for r in records), "parameters": records[0][2]}


def spline_parameter_count(model):
    return sum(layer.coef.numel() + layer.scale_base.numel() + layer.scale_sp.numel() for layer in model.layers)


# Cases.


def case_a(repeats):
    dataset = make_dataset(target_a, 2, 1000, 1000, seed=0)
    options = dict(opt="LBFGS", steps=50, update_grid=True, grid_update_num=10, stop_grid_update_step=50, lamb=0.0, log=1)
    row = {"multkan": time_fit("multkan", [2, 5, 1], 5, dataset, options, repeats)}
    row["pykan"] = time_fit("pykan", [2, 5, 1], 5, dataset, options, repeats) if pykan else None
    row["mlp"] = time_mlp_fit(dataset, 50, repeats)
    row["mlp"]["kan_spline_parameters"] = spline_parameter_count(new_multkan([2, 5, 1], 5))
    return row


def case_b(repeats):
    dataset = make_dataset(target_b, 10, 3000, 3000, seed=1)
    options = dict(opt="Adam", steps=20, update_grid=False, lamb=0.0, lr=1e-3, log=1)
    row = {"multkan": time_fit("multkan", [10, 10, 10, 1], 10, dataset, options, repeats)}
    row["pykan"] = time_fit("pykan", [10, 10, 10, 1], 10, dataset, options, repeats, speed=True) if pykan else None
    return row


def case_c(repeats):
    dataset = make_dataset(target_c, 2, 1000, 1000, seed=2)
    options = dict(opt="LBFGS", steps=5, update_grid=False, lamb=0.0, log=1)
    row = {"multkan": time_fit("multkan", [2, [0, 1], 1], 5, dataset, options, repeats)}
    row["pykan"] = time_fit("pykan", [2, [0, 1], 1], 5, dataset, options, repeats) if pykan else None
    return row


def case_d(repeats):
    """auto_symbolic with the full library on a [2, 2, 1] model trained for 20 L-BFGS steps."""
    dataset = make_dataset(target_d, 2, 1000, 1000, seed=3)
    options = dict(opt="LBFGS", steps=20, update_grid=True, lamb=0.0)
    row = {}
    if hasattr(MultKAN, "auto_symbolic"):
        trained = new_multkan([2, 2, 1], 5)
        trained.fit(dataset, progress=False, **options)

        def run_multkan():
            model = trained.copy()
            with quiet():
                model.auto_symbolic()

        seconds, times = median_time(run_multkan, repeats)
        row["multkan"] = {"seconds": seconds, "all_seconds": times}
    else:
        row["multkan"] = None
    if pykan:
        trained = new_pykan([2, 2, 1], 5)
        with quiet():
            trained.fit(dataset, **options)
        trained.save_act = True
        with torch.no_grad():
            # Cache the activations auto_symbolic reads; without a graph the model can be deep-copied.
            trained(dataset["train_input"])

        def run_pykan():
            model = copy.deepcopy(trained)
            with quiet():
                model.auto_symbolic(verbose=0)

        # One run with no warm-up: a single pykan run takes minutes on 2 cores.
        seconds, times = median_time(run_pykan, 1, warmup=0)
        row["pykan"] = {"seconds": seconds, "all_seconds": times}
    else:
        row["pykan"] = None
    return row


def memory_child(library, threads):
    """Subprocess body for case e: print the peak RSS growth of 20 Adam steps of case b."""
    torch.set_num_threads(threads)
    dataset = make_dataset(target_b, 10, 3000, 3000, seed=1)
    small = {key: value[:64] for key, value in dataset.items()}
    options = dict(opt="Adam", update_grid=False, lamb=0.0, lr=1e-3)

    def fit(model, data, steps):
        with quiet():
            if library == "multkan":
                model.fit(data, steps=steps, progress=False, **options)
            else:
                model.fit(data, steps=steps, **options)

    def new_model():
        return new_multkan([10, 10, 10, 1], 10) if library == "multkan" else new_pykan([10, 10, 10, 1], 10, speed=True)

    # A warm-up fit on 64 rows pays for lazy imports, thread pools and
    # allocator arenas before the baseline, so the growth is what training
    # on 3000 rows adds.
    fit(new_model(), small, 2)
    model = new_model()
    baseline = reset_peak_rss()
    fit(model, dataset, 20)
    peak = peak_rss()
    print(json.dumps({"baseline_kib": baseline, "peak_kib": peak, "training_kib": peak - baseline}))


def run_child(arguments, environment=None):
    output = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=True, env=environment)
    return json.loads(output.stdout.strip().splitlines()[-1])


def case_e(repeats, threads):
    row = {}
    for library in ("multkan", "pykan"):
        if library == "pykan" and not pykan:
            row[library] = None
            continue
        runs = [run_child(["--memory-child", library, "--threads", str(threads)]) for _ in range(max(1, repeats))]
        row[library] = {
            "training_mib": statistics.median(r["training_kib"] for r in runs) / 1024,
            "peak_mib": statistics.median(r["peak_kib"] for r in runs) / 1024,
        }
    return row


def import_seconds(statement, setup=""):
    code = f"import time\n{setup}\nstart = time.perf_counter()\n{statement}\nprint(time.perf_counter() - start)"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(output.stdout.strip().splitlines()[-1])


def case_f(repeats):
    """Import times in fresh interpreters, interleaved so machine load hits all of them alike."""
    statements = {
        "torch": "import torch",
        "multkan": "import multkan",
        # import multkan and build a model, which loads torch, networkx and the model code.
        "multkan_first_use": "import multkan\nmultkan.MultKAN([2, 5, 1])",
    }
    if pykan:
        statements["pykan"] = "import kan"
    totals = {name: [] for name in statements}
    after_torch = {name: [] for name in statements if name != "torch"}
    for _ in range(max(3, repeats)):
        for name, statement in statements.items():
            totals[name].append(import_seconds(statement))
            if name in after_torch:
                after_torch[name].append(import_seconds(statement, setup="import torch"))
    row = {name: {"seconds": statistics.median(values), "all_seconds": values} for name, values in totals.items()}
    for name, values in after_torch.items():
        row[name]["seconds_after_torch"] = statistics.median(values)
    return row


def case_g(repeats):
    """Time a [64, 64] layer (grid 5, k 3) and nn.Linear(640, 64) on a batch of 1024, forward + backward."""
    batch = 1024
    model = new_multkan([64, 64], 5)
    x = torch.rand(batch, 64) * 2 - 1
    linear = torch.nn.Linear(640, 64)
    x_linear = torch.rand(batch, 640)

    def kan_step():
        model.zero_grad()
        model(x).square().mean().backward()

    def kan_reg_step():
        model.zero_grad()
        output, reg = regularization(model, x)
        (output.square().mean() + reg).backward()

    def linear_step():
        linear.zero_grad()
        linear(x_linear).square().mean().backward()

    timings = {}
    for name, function in (("multkan", kan_step), ("multkan_reg", kan_reg_step), ("linear", linear_step)):
        seconds, _ = median_time(function, 20 * repeats, warmup=5)
        timings[name] = {"seconds": seconds}
    timings["multkan"]["parameters"] = spline_parameter_count(model)
    timings["linear"]["parameters"] = sum(p.numel() for p in linear.parameters())
    return timings


def c20_child(rows, threads):
    """Subprocess body for the c20 row: peak RSS growth while fitting and evaluating [400, 16, 2]."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(0)
    dataset = {
        "train_input": torch.rand(rows, 400, generator=generator) * 2 - 1,
        "test_input": torch.rand(1000, 400, generator=generator) * 2 - 1,
    }
    dataset["train_label"] = torch.stack([dataset["train_input"][:, :5].sum(1), dataset["train_input"][:, 5:10].prod(1)], dim=1)
    dataset["test_label"] = torch.stack([dataset["test_input"][:, :5].sum(1), dataset["test_input"][:, 5:10].prod(1)], dim=1)
    model = MultKAN([400, 16, 2], grid=15, k=5, seed=0)
    warmup = {key: value[:256] for key, value in dataset.items()}
    model.copy().fit(warmup, opt="Adam", steps=2, batch=128, grid_update_num=1, stop_grid_update_step=1, progress=False)
    baseline = reset_peak_rss()
    start = time.perf_counter()
    model.fit(dataset, opt="Adam", steps=20, batch=128, lr=1e-3, update_grid=True, grid_update_num=2, stop_grid_update_step=10, log=20, progress=False)
    elapsed = time.perf_counter() - start
    peak = peak_rss()
    print(json.dumps({"rows": rows, "training_kib": peak - baseline, "seconds": elapsed}))


def case_c20(threads):
    # A fixed glibc mmap threshold returns freed blocks above 1 MiB to the
    # system at once. With the default, adaptive threshold the peak RSS of
    # this case varies by about 150 MiB from run to run, whatever the rows.
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="1048576")
    return {str(rows): run_child(["--c20-child", str(rows), "--threads", str(threads)], environment) for rows in (5000, 20000)}


def case_compile(repeats):
    """Eager against torch.compile for forward + backward; the first compiled call includes compilation.

    Inductor's on-disk and in-memory caches are disabled and reset, so every
    compilation is cold, as on a user's first run.
    """
    import torch._dynamo
    import torch._inductor.config

    torch._inductor.config.force_disable_caches = True
    warnings.filterwarnings("ignore", message="dynamo_pgo force disabled")
    row = {}
    for name, width, grid, n_in, rows in (("a", [2, 5, 1], 5, 2, 1000), ("b", [10, 10, 10, 1], 10, 10, 3000)):
        model = new_multkan(width, grid)
        x = torch.rand(rows, n_in) * 2 - 1

        def step(module):
            model.zero_grad()
            module(x).square().mean().backward()

        eager, _ = median_time(lambda: step(model), 20 * repeats, warmup=5)
        try:
            torch._dynamo.reset()
            compiled = torch.compile(model)
            start = time.perf_counter()
            step(compiled)
            compile_seconds = time.perf_counter() - start
            fast, _ = median_time(lambda: step(compiled), 20 * repeats, warmup=5)
        except Exception as error:  # noqa: BLE001 - any compiler failure is reported in the table, not raised
            row[name] = {"eager_seconds": eager, "error": f"{type(error).__name__}: {error}"[:300]}
            continue
        row[name] = {"eager_seconds": eager, "compiled_seconds": fast, "compile_seconds": compile_seconds}
    return row


# Report.


def ratio(slow, fast):
    if slow is None or fast is None or fast == 0:
        return NOT_AVAILABLE
    return f"{slow / fast:.1f}x"


def ms(seconds):
    return NOT_AVAILABLE if seconds is None else f"{seconds * 1e3:.1f} ms"


def get(record, key):
    return None if record is None else record.get(key)


def markdown(results):
    lines = []
    for threads, cases in results["threads"].items():
        lines.append(f"\n### {threads} thread(s)\n")
        lines.append("| case | multkan | pykan 0.2.8 | pykan / multkan | notes |")
        lines.append("|---|---|---|---|---|")
        for key, label in (("a", "a: [2,5,1] G5, 50 L-BFGS steps"), ("c", "c: [2,[0,1],1] x0*x1, 5 L-BFGS steps"), ("b", "b: [10,10,10,1] G10, 20 Adam steps")):
            row = cases.get(key)
            if row is None:
                continue
            m, p = row["multkan"], row["pykan"]
            lines.append(f"| {label}, whole fit | {ms(m['seconds'])} | {ms(get(p, 'seconds'))} | {ratio(get(p, 'seconds'), m['seconds'])} | test RMSE {m['test_rmse']:.2e} vs {get(p, 'test_rmse') or float('nan'):.2e} |")
            lines.append(
                f"| {key}: per training step | {ms(m['seconds_per_step'])} | {ms(get(p, 'seconds_per_step'))} | {ratio(get(p, 'seconds_per_step'), m['seconds_per_step'])} | "
                f"forward calls per fit {m['forward_calls']:.0f} vs {get(p, 'forward_calls') or float('nan'):.0f} |"
            )
            if p:
                per_call_m = m["seconds"] / m["forward_calls"]
                per_call_p = p["seconds"] / p["forward_calls"]
                lines.append(f"| {key}: per forward call | {ms(per_call_m)} | {ms(per_call_p)} | {ratio(per_call_p, per_call_m)} | fit time / forward calls |")
        if "a" in cases:
            mlp = cases["a"]["mlp"]
            lines.append(
                f"| a-mlp: MLP [2,10,10,1], {mlp['parameters']} parameters, per step | {ms(mlp['seconds_per_step'])} | | | "
                f"KAN has {mlp['kan_spline_parameters']} spline parameters; multkan / MLP {ratio(cases['a']['multkan']['seconds_per_step'], mlp['seconds_per_step'])} slower; MLP test RMSE {mlp['test_rmse']:.2e} |"
            )
        if "d" in cases:
            m, p = cases["d"]["multkan"], cases["d"]["pykan"]
            lines.append(f"| d: auto_symbolic [2,2,1], full library | {ms(get(m, 'seconds')) if m else NOT_AVAILABLE} | {ms(get(p, 'seconds'))} | {ratio(get(p, 'seconds'), get(m, 'seconds'))} | |")
        if "e" in cases:
            m, p = cases["e"]["multkan"], cases["e"]["pykan"]
            lines.append(
                f"| e: peak memory of b (peak RSS growth) | {m['training_mib']:.1f} MiB | {get(p, 'training_mib') or float('nan'):.1f} MiB | "
                f"{ratio(get(p, 'training_mib'), m['training_mib'])} | whole process {m['peak_mib']:.0f} vs {get(p, 'peak_mib') or float('nan'):.0f} MiB |"
            )
        if "f" in cases:
            row = cases["f"]
            m, p, t = row["multkan"], row.get("pykan"), row["torch"]
            lines.append(f"| f: import time | {ms(m['seconds'])} | {ms(get(p, 'seconds'))} | {ratio(get(p, 'seconds'), m['seconds'])} | `import torch` alone {ms(t['seconds'])} |")
            lines.append(
                f"| f: import time after torch | {ms(m['seconds_after_torch'])} | {ms(get(p, 'seconds_after_torch'))} | "
                f"{ratio(get(p, 'seconds_after_torch'), m['seconds_after_torch'])} | torch already imported |"
            )
            first = row.get("multkan_first_use")
            if first:
                lines.append(
                    f"| f: import and first model | {ms(first['seconds'])} | {ms(get(p, 'seconds'))} | {ratio(get(p, 'seconds'), first['seconds'])} | "
                    f"`import multkan` then `MultKAN([2, 5, 1])`; after torch {ms(first['seconds_after_torch'])}; pykan column: `import kan` alone |"
                )
        if "g" in cases:
            g = cases["g"]
            lines.append(
                f"| g: [64,64] layer fwd+bwd, batch 1024 | {ms(g['multkan']['seconds'])} | | | nn.Linear(640, 64) {ms(g['linear']['seconds'])}: layer / Linear "
                f"{ratio(g['multkan']['seconds'], g['linear']['seconds'])}; {g['multkan']['parameters']} vs {g['linear']['parameters']} parameters |"
            )
            lines.append(
                f"| g: same with regularisation | {ms(g['multkan_reg']['seconds'])} | | | layer with regulariser / Linear {ratio(g['multkan_reg']['seconds'], g['linear']['seconds'])} |"
            )
        if "c20" in cases:
            small, large = cases["c20"]["5000"], cases["c20"]["20000"]
            lines.append(
                f"| c20: [400,16,2] G15 k5 batch 128, peak RSS growth | {small['training_kib'] / 1024:.0f} MiB at 5,000 rows, {large['training_kib'] / 1024:.0f} MiB at 20,000 | | | "
                f"fit of 20 Adam steps: {small['seconds']:.1f} s and {large['seconds']:.1f} s |"
            )
        if "compile" in cases:
            for name, row in cases["compile"].items():
                if "error" in row:
                    lines.append(f"| compile {name}: torch.compile | {NOT_AVAILABLE} | | | {row['error']} |")
                else:
                    lines.append(
                        f"| compile {name}: fwd+bwd eager / compiled | {ms(row['eager_seconds'])} / {ms(row['compiled_seconds'])} | | | "
                        f"compilation {row['compile_seconds']:.1f} s |"
                    )
    return "\n".join(lines)


def _commit():
    """Return the checkout's short commit hash, with "+changes" when the working tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=HERE).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True, cwd=HERE).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if dirty else "")


def machine():
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "multkan": multkan.__version__,
        "pykan": getattr(pykan, "__version__", None) or (_pykan_version() if pykan else None),
        "commit": _commit(),
    }


def _pykan_version():
    from importlib.metadata import version

    return version("pykan")


CASES = {"a": case_a, "b": case_b, "c": case_c, "d": case_d, "f": case_f, "g": case_g, "compile": case_compile}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to run every case with")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement after one warm-up run")
    parser.add_argument("--cases", nargs="+", default=["a", "b", "c", "d", "e", "f", "g", "c20", "compile"], help="cases to run")
    parser.add_argument("--output", type=Path, default=HERE / "results", help="folder for the JSON results")
    parser.add_argument("--memory-child", choices=["multkan", "pykan"], help=argparse.SUPPRESS)
    parser.add_argument("--c20-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--malloc-thresholds", action="store_true",
        help="call multkan.set_malloc_thresholds() first; applies to both libraries in this process, not to the children of cases e and c20",
    )
    arguments = parser.parse_args()

    if arguments.memory_child:
        memory_child(arguments.memory_child, arguments.threads[0])
        return
    if arguments.c20_child:
        c20_child(arguments.c20_child, arguments.threads[0])
        return

    malloc_thresholds = arguments.malloc_thresholds and multkan.set_malloc_thresholds()
    if arguments.malloc_thresholds and not malloc_thresholds:
        print("multkan.set_malloc_thresholds() changed nothing: the C library is not glibc", file=sys.stderr)
    results = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "malloc_thresholds": malloc_thresholds,
        "repeats": arguments.repeats,
        "load_average_start": os.getloadavg(),
        "threads": {},
    }
    for threads in arguments.threads:
        torch.set_num_threads(threads)
        cases = {}
        for name in arguments.cases:
            if name in ("d", "f") and threads != arguments.threads[0]:
                continue  # import time does not depend on the thread count, and pykan's auto_symbolic takes minutes
            print(f"[{threads} thread(s)] case {name} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            if name == "e":
                cases[name] = case_e(arguments.repeats, threads)
            elif name == "c20":
                cases[name] = case_c20(threads)
            else:
                cases[name] = CASES[name](arguments.repeats)
            print(f"    done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        results["threads"][str(threads)] = cases

    results["load_average_end"] = os.getloadavg()
    arguments.output.mkdir(parents=True, exist_ok=True)
    path = arguments.output / f"bench_{results['date'].replace(':', '-')}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"# multkan {results['machine']['multkan']} against pykan {results['machine']['pykan']}")
    if malloc_thresholds:
        print("\nglibc's mmap and trim thresholds raised by multkan.set_malloc_thresholds() for both libraries")
    print(f"\nload average (1, 5, 15 min) at the start {results['load_average_start']}, at the end {results['load_average_end']}")
    print(f"\n{results['machine']}, {results['date']}, median of {arguments.repeats} runs; raw results in {path.relative_to(HERE.parent) if path.is_relative_to(HERE.parent) else path}")
    print(markdown(results))


if __name__ == "__main__":
    main()
