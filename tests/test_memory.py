"""Peak memory of training and evaluation does not grow with the number of training rows.

The case: a ``[400, 16, 2]`` network, grid 15, k 5, trained with Adam on
batches of 128 rows and evaluated in chunks whose size follows the layer
width (``multkan.train.evaluation_rows``), with grid updates whose forward
pass is chunked too. tracemalloc does not see
torch's CPU allocations, so each measurement runs in its own interpreter
and reads the growth of the peak resident set size (VmHWM in
``/proc/self/status``). The baseline is taken after the data are built and
after a short warm-up fit has paid for lazy imports, thread pools and
allocator arenas. The peak is reset at the baseline by writing 5 to
``/proc/self/clear_refs``. ``ru_maxrss`` would not do, because Linux keeps
in it the high-water mark of the forked copy of the parent process. A control run
evaluates all rows in one forward pass; it must show the growth that the
chunked path avoids, otherwise the measurement could not detect a
regression.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
import torch
from multkan import MultKAN

torch.set_num_threads(1)
rows, mode = int(sys.argv[1]), sys.argv[2]


def make_data(n, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 400, generator=generator) * 2 - 1
    return x, torch.stack([x[:, :5].sum(1), x[:, 5:10].prod(1)], dim=1)


model = MultKAN([400, 16, 2], grid=15, k=5, seed=0)
x, y = make_data(256, 1)
warmup = {"train_input": x, "train_label": y, "test_input": x, "test_label": y}
model.copy().fit(warmup, opt="Adam", steps=2, batch=128, grid_update_num=1, stop_grid_update_step=1, progress=False)
train_x, train_y = make_data(rows, 2)
test_x, test_y = make_data(1000, 3)
dataset = {"train_input": train_x, "train_label": train_y, "test_input": test_x, "test_label": test_y}


def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


with open("/proc/self/clear_refs", "w") as clear_refs:
    clear_refs.write("5")
baseline = status_kib("VmRSS")
if mode == "fit":
    model.fit(dataset, opt="Adam", steps=4, batch=128, lr=1e-3, grid_update_num=2, stop_grid_update_step=4, log=4, progress=False)
else:
    with torch.no_grad():
        model(train_x)
peak = status_kib("VmHWM")
print(json.dumps({"growth_mib": (peak - baseline) / 1024}))
"""


def _start(rows, mode):
    # A fixed glibc mmap threshold returns every freed block above 1 MiB to
    # the system at once. With the default, adaptive threshold, freed blocks
    # stay in the heap in amounts that vary from run to run by about 100 MiB
    # here, which would hide the size of the live tensors.
    environment = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        MALLOC_MMAP_THRESHOLD_="1048576",
    )
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(rows), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=ROOT
    )


def _growth_mib(process):
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])["growth_mib"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset and read the peak RSS")
def test_peak_memory_independent_of_rows():
    # The four interpreters run at once: each measures only its own peak.
    runs = {(rows, mode): _start(rows, mode) for mode in ("fit", "unchunked") for rows in (5_000, 20_000)}
    # Fewer rows than one chunk of the logged-loss evaluation or the grid update's samples.
    runs[(1_000, "fit")] = _start(1_000, "fit")
    growth = {key: _growth_mib(process) for key, process in runs.items()}

    # The control: one forward pass over all rows needs about 4x more at 4x the rows.
    assert growth[(20_000, "unchunked")] > 2 * growth[(5_000, "unchunked")], growth

    # Training on batches and evaluating in chunks: the same peak up to allocator noise.
    assert growth[(20_000, "fit")] < 1.15 * growth[(5_000, "fit")] + 16, growth
    # Chunks sized by the layer width: 1,000 rows need about as much as 20,000.
    # Fixed chunks of 4096 rows of this 105 KiB-per-row layer gave 296 against 463 MiB.
    assert growth[(20_000, "fit")] < 1.15 * growth[(1_000, "fit")] + 16, growth
