"""Reproducibility, global state left alone, and training stopped by Ctrl-C."""

import json
import logging
import math
import os
import random
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from tqdm.auto import tqdm

import multkan.train
from multkan import MultKAN, MultKANWarning, create_dataset

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The pipeline whose results must repeat: fit, prune, snap to a small library,
# read the formula. It defines run(), which returns the pruned width, the
# formula and a SHA-256 over the names, dtypes, shapes and bytes of the state_dict.
PIPELINE = textwrap.dedent(
    """
    import hashlib
    import warnings

    import torch

    import multkan


    def run():
        data = multkan.create_dataset(
            lambda x: torch.sin(torch.pi * x[:, 0]) + x[:, 1] ** 2, n_var=2, train_num=200, test_num=50, seed=0
        )
        model = multkan.MultKAN([2, 3, 1], grid=3, seed=7)
        model.fit(data, opt="LBFGS", steps=5, lamb=0.01, progress=False)
        with warnings.catch_warnings():
            # A warning (an emptied layer, a poor symbolic fit) does not change the result.
            warnings.simplefilter("ignore", multkan.MultKANWarning)
            model = model.prune()
            model.auto_symbolic(["x", "x^2", "sin", "exp", "0"])
        formula = str(model.symbolic_formula()[0])
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return {"width": model.width, "formula": formula, "state_sha256": digest.hexdigest()}
    """
)


def _run_pipeline_in_this_process():
    namespace = {}
    exec(PIPELINE, namespace)
    return namespace["run"]()


def _python_environment():
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [REPOSITORY, environment.get("PYTHONPATH")]))
    return environment


def _start_python(script):
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPOSITORY,
        env=_python_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _last_json_line(process, timeout=240):
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


# Same seed, same results.


@pytest.fixture(scope="module")
def fresh_process_results():
    """Run the pipeline in two fresh Python processes at the same time and return both outputs."""
    # One thread, as in conftest.py, so the work split between threads cannot differ.
    script = "import json, torch\ntorch.set_num_threads(1)\n" + PIPELINE + "\nprint(json.dumps(run()))\n"
    processes = [_start_python(script) for _ in range(2)]
    return [_last_json_line(process) for process in processes]


def test_pipeline_repeats_in_one_process():
    first, second = _run_pipeline_in_this_process(), _run_pipeline_in_this_process()
    assert first["width"] == second["width"]
    assert first["formula"] == second["formula"]
    assert first["state_sha256"] == second["state_sha256"]


def test_pipeline_repeats_across_processes(fresh_process_results):
    first, second = fresh_process_results
    assert first["width"] == second["width"]
    assert first["formula"] == second["formula"]
    assert first["state_sha256"] == second["state_sha256"]


def test_fresh_process_matches_this_one(fresh_process_results):
    this_process = _run_pipeline_in_this_process()
    assert fresh_process_results[0]["width"] == this_process["width"]
    assert fresh_process_results[0]["formula"] == this_process["formula"]
    assert fresh_process_results[0]["state_sha256"] == this_process["state_sha256"]


def test_pipeline_result_not_trivial(fresh_process_results):
    # A width and formula that the pipeline could not have changed would make the checks above vacuous.
    result = fresh_process_results[0]
    assert result["width"][0] == 2
    assert "x_" in result["formula"]


# Global state: random generators and torch settings.


def _global_state():
    """Return every global setting that multkan must leave alone, as comparable values."""
    return {
        "torch_rng": torch.get_rng_state().numpy().tobytes(),
        "numpy_rng": repr(np.random.get_state()),
        "python_rng": repr(random.getstate()),
        "default_dtype": str(torch.get_default_dtype()),
        "num_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "grad_enabled": torch.is_grad_enabled(),
    }


SETTINGS = ["torch_rng", "numpy_rng", "python_rng", "default_dtype", "num_threads", "deterministic_algorithms", "grad_enabled"]

# Records the settings before importing multkan, after importing it and after
# building and fitting a model, in a process where nothing imported multkan before.
IMPORT_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, random, warnings
    import numpy as np
    import torch

    def state():
        return {
            "torch_rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
            "numpy_rng": hashlib.sha256(repr(np.random.get_state()).encode()).hexdigest(),
            "python_rng": hashlib.sha256(repr(random.getstate()).encode()).hexdigest(),
            "default_dtype": str(torch.get_default_dtype()),
            "num_threads": torch.get_num_threads(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "grad_enabled": torch.is_grad_enabled(),
        }

    before = state()
    import multkan
    after_import = state()
    data = multkan.create_dataset(lambda x: x[:, 0] * x[:, 1], n_var=2, train_num=100, test_num=20, seed=0)
    model = multkan.MultKAN([2, [1, 1], 1], grid=3, seed=0)
    model.fit(data, steps=2, batch=50, lamb=0.01, progress=False)
    after_fit = state()
    print(json.dumps({"before": before, "after_import": after_import, "after_fit": after_fit}))
    """
)


@pytest.fixture(scope="module")
def fresh_process_states():
    return _last_json_line(_start_python(IMPORT_SCRIPT))


@pytest.mark.parametrize("setting", SETTINGS)
def test_import_keeps_global_setting(fresh_process_states, setting):
    assert fresh_process_states["after_import"][setting] == fresh_process_states["before"][setting]


@pytest.mark.parametrize("setting", SETTINGS)
def test_first_fit_keeps_global_setting(fresh_process_states, setting):
    assert fresh_process_states["after_fit"][setting] == fresh_process_states["before"][setting]


def _workflow(dtype):
    """Build, fit with mini-batches and grid updates, prune, refine and snap a model."""
    data = create_dataset(lambda x: torch.sin(x[:, 0]) * x[:, 1], n_var=2, train_num=120, test_num=30, seed=1, dtype=dtype)
    model = MultKAN([2, [2, 1], 1], grid=3, seed=2, dtype=dtype)
    model.fit(data, steps=3, batch=40, lamb=0.01, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MultKANWarning)
        model = model.prune(x=data["train_input"])
        model = model.refine(6)
        model.auto_symbolic(["x", "x^2", "sin"], x=data["train_input"])
    return model


@pytest.fixture(scope="module")
def workflow_states(tmp_path_factory):
    """Return the global settings before and after two workflows (float32 and float64) with save and load in this process."""
    before = _global_state()
    for dtype in (torch.float32, torch.float64):
        model = _workflow(dtype)
        path = tmp_path_factory.mktemp("workflow") / "model.safetensors"
        model.save(path)
        MultKAN.load(path)
    return before, _global_state()


@pytest.mark.parametrize("setting", SETTINGS)
def test_workflow_keeps_global_setting(workflow_states, setting):
    before, after = workflow_states
    assert after[setting] == before[setting]


def test_fit_under_no_grad_keeps_grad_off():
    data = create_dataset(lambda x: x[:, 0], n_var=1, train_num=40, test_num=10, seed=0)
    model = MultKAN([1, 2, 1], seed=0)
    with torch.no_grad():
        model.fit(data, steps=2, progress=False)
        assert not torch.is_grad_enabled()


def test_float64_model_keeps_default_dtype():
    default = torch.get_default_dtype()
    MultKAN([2, 1], dtype=torch.float64)
    assert torch.get_default_dtype() == default


# Training stopped by Ctrl-C.


class _Interrupter:
    """A loss function that raises KeyboardInterrupt on its ``stop_at``-th call (1-based).

    It also copies the model's state_dict whenever it is called on all training rows,
    keyed by the loss value, so with ``lamb=0`` ``state_for(value)`` returns
    the parameters behind a logged ``history["train_loss"]`` entry, whether
    a training step or a history evaluation computed it.
    """

    def __init__(self, model, n_train, stop_at):
        self.model = model
        self.n_train = n_train
        self.stop_at = stop_at
        self.calls = 0
        self.states = []
        self.state_at_interrupt = None

    def __call__(self, prediction, label):
        self.calls += 1
        if self.calls == self.stop_at:
            self.state_at_interrupt = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
            raise KeyboardInterrupt
        loss = torch.mean((prediction - label) ** 2)
        if prediction.shape[0] == self.n_train:
            self.states.append((float(loss.detach()), {name: value.detach().clone() for name, value in self.model.state_dict().items()}))
        return loss

    def state_for(self, logged_loss):
        value, state = min(self.states, key=lambda entry: abs(entry[0] - logged_loss))
        assert value == pytest.approx(logged_loss, rel=1e-12)
        return state


def _interrupt_data():
    return create_dataset(lambda x: torch.sin(3 * x[:, 0]), n_var=1, train_num=50, test_num=10, seed=0)


def _assert_state(model, expected):
    state = model.state_dict()
    assert sorted(state) == sorted(expected)
    for name, value in expected.items():
        assert torch.equal(state[name], value), name


def _fit_without_warnings(model, data, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(data, progress=False, **options)
    assert [str(w.message) for w in caught] == []
    return history


def test_interrupt_restores_best_step(caplog):
    data = _interrupt_data()
    model = MultKAN([1, 2, 1], seed=0)
    # With full-batch Adam and no regulariser every step calls the loss twice:
    # the training step, then the test rows for the history. The training
    # loss of a step comes from the next step's call. Call 15 is the training
    # step of step 7.
    loss = _Interrupter(model, n_train=50, stop_at=15)

    with caplog.at_level(logging.WARNING, logger="multkan.train"):
        history = _fit_without_warnings(model, data, opt="Adam", steps=10, lr=0.1, update_grid=False, loss_fn=loss)

    assert history["stopped_at"] == 7
    assert len(history["train_loss"]) == 7
    assert len(history["test_loss"]) == 7
    assert len(history["reg"]) == 7
    best = min(range(7), key=lambda step: history["train_loss"][step])
    # The loss rises after its minimum, so the last step is not the best one and
    # keeping the last parameters would fail the check below.
    assert best < 6
    _assert_state(model, loss.state_for(history["train_loss"][best]))
    # A custom loss_fn is recorded as it is, here the MSE.
    with torch.no_grad():
        mse = torch.mean((model(data["train_input"]) - data["train_label"]) ** 2)
    assert float(mse) == pytest.approx(history["train_loss"][best], rel=1e-6)
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert f"interrupted at step 7; restored the parameters of step {best}" in messages[0]


def test_interrupt_in_line_search_restores_best():
    data = _interrupt_data()
    # L-BFGS calls the loss a varying number of times per step, so a first run
    # counts the calls of steps 0 and 1: their training calls, a test call
    # each, and one training call for the history of the last step, which
    # the second run does not make. The second run stops at the fifth call
    # of step 2, inside its line search.
    probe_model = MultKAN([1, 2, 1], seed=0)
    probe = _Interrupter(probe_model, n_train=50, stop_at=-1)
    probe_model.fit(data, opt="LBFGS", steps=2, loss_fn=probe, progress=False)

    model = MultKAN([1, 2, 1], seed=0)
    loss = _Interrupter(model, n_train=50, stop_at=probe.calls - 1 + 5)
    history = _fit_without_warnings(model, data, opt="LBFGS", steps=4, loss_fn=loss)

    assert history["stopped_at"] == 2
    assert len(history["train_loss"]) == 2
    best = min(range(2), key=lambda step: history["train_loss"][step])
    # The line search had already moved the parameters when the interrupt came.
    best_state = loss.state_for(history["train_loss"][best])
    assert any(not torch.equal(loss.state_at_interrupt[name], value) for name, value in best_state.items())
    _assert_state(model, best_state)


def test_interrupt_before_first_log_restores_start(caplog):
    data = _interrupt_data()
    model = MultKAN([1, 2, 1], seed=0)
    start = {name: value.detach().clone() for name, value in model.state_dict().items()}
    loss = _Interrupter(model, n_train=50, stop_at=1)

    with caplog.at_level(logging.WARNING, logger="multkan.train"):
        history = _fit_without_warnings(model, data, opt="Adam", steps=3, loss_fn=loss)

    assert history["stopped_at"] == 0
    assert history["train_loss"] == []
    assert history["test_loss"] == []
    assert history["reg"] == []
    # The grid update of step 0 ran before the interrupt and is undone too.
    _assert_state(model, start)
    assert [layer.uniform for layer in model.layers] == [True, True]
    assert "before any step was logged" in caplog.records[0].getMessage()


def test_interrupt_between_logged_steps():
    data = _interrupt_data()
    model = MultKAN([1, 2, 1], seed=0)
    # With log=3, steps 0 and 3 are logged (a training and a test call each)
    # and steps 1 and 2 only train (1 call each). Call 7 is the training step
    # of step 4.
    loss = _Interrupter(model, n_train=50, stop_at=7)

    history = _fit_without_warnings(model, data, opt="Adam", steps=8, lr=0.1, log=3, update_grid=False, loss_fn=loss)

    assert history["stopped_at"] == 4
    assert len(history["train_loss"]) == 2
    best = min(range(2), key=lambda index: history["train_loss"][index])
    _assert_state(model, loss.state_for(history["train_loss"][best]))


def test_interrupt_closes_progress_bar(monkeypatch):
    bars = []

    class RecordingBar(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.closed_by_fit = False
            bars.append(self)

        def close(self):
            self.closed_by_fit = True
            super().close()

    monkeypatch.setattr(multkan.train, "tqdm", RecordingBar)
    data = _interrupt_data()
    model = MultKAN([1, 2, 1], seed=0)
    loss = _Interrupter(model, n_train=50, stop_at=4)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(data, opt="Adam", steps=5, loss_fn=loss, progress=True)

    assert history["stopped_at"] == 1
    assert len(bars) == 1
    assert bars[0].closed_by_fit
    assert [str(w.message) for w in caught] == []
    assert all(math.isfinite(value) for value in history["train_loss"])
