"""Model files: round trips, a fresh process, damaged and edited files, atomic writes."""

import json
import os
import stat
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sympy
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import multkan.io
from multkan import CheckpointError, InvalidParameterError, MultKAN
from multkan.io import _checksum, load, save
from multkan.symbolic import SymbolicFunction

PYTHON = "/work/venv/bin/python" if os.path.exists("/work/venv/bin/python") else sys.executable
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(model, n=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, model.n_inputs, generator=generator, dtype=torch.float64) * 2.4 - 1.2).to(model.dtype)


def _set_symbolic(model, layer, source, target, name, affine):
    entry = model.library[name]
    model.layers[layer].set_symbolic(source, target, name, entry.safe_torch_fn, affine)


def _refined_symbolic_model():
    """Width [2, [1, 1], 1] with a sin edge, grid refined to 10 and one edge pruned."""
    model = MultKAN([2, [1, 1], 1], grid=5, seed=3)
    _set_symbolic(model, 0, 0, 1, "sin", (1.5, 0.25, 0.8, -0.1))
    model = model.refine(10)
    return model.prune_edge((0, 1, 0))


def _read(path):
    with safe_open(path, framework="pt", device="cpu") as handle:
        return dict(handle.metadata() or {}), {name: handle.get_tensor(name) for name in handle.keys()}


def _rewrite(path, metadata, tensors, *, rehash):
    if rehash:
        metadata["sha256"] = _checksum(tensors, metadata)
    os.remove(path)
    save_file(tensors, path, metadata=metadata)


def _assert_same_state(first, second):
    first_state, second_state = first.state_dict(), second.state_dict()
    assert sorted(first_state) == sorted(second_state)
    for name, value in first_state.items():
        assert value.dtype == second_state[name].dtype, name
        assert torch.equal(value, second_state[name]), name


# Round trips.


@pytest.mark.parametrize(
    "width, arity, dtype",
    [([2, 5, 1], 2, torch.float32), ([2, [0, 2], 1], 2, torch.float64), ([3, [1, 2], 2], [0, [3, 2], 0], torch.float32)],
)
def test_round_trip_bit_identical(tmp_path, width, arity, dtype):
    model = MultKAN(width, grid=4, mult_arity=arity, seed=1, dtype=dtype, input_names=None)
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = MultKAN.load(path)
    x = _inputs(model)
    assert torch.equal(model(x), loaded(x))
    _assert_same_state(model, loaded)
    assert loaded.width == model.width
    assert loaded.mult_arity == model.mult_arity
    assert loaded.dtype == dtype


def test_round_trip_keeps_settings(tmp_path):
    model = MultKAN(
        [2, 3, 1], grid=6, k=2, grid_range=(-2.0, 3.0), grid_eps=1.0, base_fun="identity",
        affine_trainable=True, input_names=["mass", "speed"], output_names=["energy"], seed=11,
    )
    model.update_grid(_inputs(model, n=200) * 2)
    path = tmp_path / "model.safetensors"
    save(model, path)
    loaded = load(path)
    assert loaded.options == model.options
    assert loaded.grid_eps == 1.0
    assert loaded.seed == 11
    assert loaded.input_names == ["mass", "speed"]
    assert loaded.output_names == ["energy"]
    assert [layer.uniform for layer in loaded.layers] == [layer.uniform for layer in model.layers]
    assert all(parameter.requires_grad for parameter in (loaded.layers[0].node_scale, loaded.layers[0].node_bias))
    x = _inputs(model)
    assert torch.equal(model(x), loaded(x))


def test_non_uniform_grid_restored(tmp_path):
    model = MultKAN([2, 3, 1], grid=5, seed=2, grid_eps=0.0)
    model.update_grid(torch.randn(300, 2, generator=torch.Generator().manual_seed(0)) ** 3)
    assert not model.layers[0].uniform
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = MultKAN.load(path)
    assert not loaded.layers[0].uniform
    assert torch.equal(loaded.layers[0].grid, model.layers[0].grid)
    x = _inputs(model)
    assert torch.equal(model(x), loaded(x))


def test_fresh_process_bit_identical(tmp_path):
    model = _refined_symbolic_model()
    path = tmp_path / "model.safetensors"
    model.save(path)
    x = _inputs(model, n=101)
    np.save(tmp_path / "x.npy", x.numpy())

    script = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import torch
        from multkan import MultKAN

        folder = sys.argv[1]
        model = MultKAN.load(folder + "/model.safetensors")
        x = torch.from_numpy(np.load(folder + "/x.npy", allow_pickle=False))
        with torch.no_grad():
            np.save(folder + "/y.npy", model(x).numpy())
        np.savez(folder + "/state.npz", **{name: value.numpy() for name, value in model.state_dict().items()})
        description = {
            "width": model.width,
            "grid_size": model.grid_size,
            "symbolic": [sorted([list(edge), name] for edge, name in layer.symbolic_names.items()) for layer in model.layers],
            "uniform": [layer.uniform for layer in model.layers],
        }
        with open(folder + "/description.json", "w") as handle:
            json.dump(description, handle)
        """
    )
    environment = {**os.environ, "PYTHONPATH": REPOSITORY}
    result = subprocess.run([PYTHON, "-c", script, str(tmp_path)], capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 0, result.stderr

    with torch.no_grad():
        expected = model(x).numpy()
    received = np.load(tmp_path / "y.npy", allow_pickle=False)
    assert received.dtype == expected.dtype
    assert received.tobytes() == expected.tobytes()

    state = np.load(tmp_path / "state.npz", allow_pickle=False)
    for name, value in model.state_dict().items():
        assert state[name].tobytes() == value.numpy().tobytes(), name

    with open(tmp_path / "description.json") as handle:
        description = json.load(handle)
    assert description["width"] == model.width
    assert description["grid_size"] == 10
    assert description["symbolic"] == [sorted([list(e), n] for e, n in layer.symbolic_names.items()) for layer in model.layers]
    assert description["symbolic"][0] == [[[0, 1], "sin"]]
    assert description["uniform"] == [layer.uniform for layer in model.layers]


def test_symbolic_pruned_structure_restored(tmp_path):
    model = _refined_symbolic_model()
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = MultKAN.load(path)
    first = loaded.layers[0]
    assert first.symbolic_names == {(0, 1): "sin"}
    assert first.symbolic_functions["sin"] is loaded.library["sin"].safe_torch_fn
    assert first.grid_size == 10
    assert first.spline_mask[1, 0] == 0
    assert first.symbolic_mask[1, 0] == 0
    assert torch.equal(first.spline_mask, model.layers[0].spline_mask)
    assert torch.equal(first.symbolic_mask, model.layers[0].symbolic_mask)
    assert torch.equal(first.symbolic_affine, model.layers[0].symbolic_affine)
    graph = loaded.to_graph()
    functions = {(u, v): d["function"] for u, v, d in graph.edges(data=True) if d["kind"] == "function"}
    assert functions[("L0:input0", "L1:mult0.operand0")]["name"] == "sin"
    assert functions[("L0:input1", "L1:sum0")]["type"] == "zero" or ("L0:input1", "L1:sum0") not in functions


def test_pruned_node_round_trip(tmp_path):
    model = MultKAN([3, [2, 1], 1], seed=5).prune_node((1, 0)).prune_input(1)
    assert model.width == [2, [1, 1], 1]
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = MultKAN.load(path)
    assert loaded.width == model.width
    assert loaded.input_names == model.input_names
    assert sorted(loaded.graph.nodes) == sorted(model.graph.nodes)
    _assert_same_state(model, loaded)
    x = _inputs(model)
    assert torch.equal(model(x), loaded(x))


def test_edits_after_load_stay_independent(tmp_path):
    model = MultKAN([2, 3, 1], seed=0)
    path = tmp_path / "model.safetensors"
    model.save(path)
    loaded = MultKAN.load(path)
    with torch.no_grad():
        loaded.layers[0].coef.add_(1.0)
    assert not torch.equal(loaded.layers[0].coef, model.layers[0].coef)


def test_custom_symbolic_function(tmp_path):
    model = MultKAN([2, 2, 1], seed=4)
    x_symbol = sympy.Symbol("x")
    softplus = SymbolicFunction.from_sympy("softplus", sympy.log(1 + sympy.exp(x_symbol)), x_symbol)
    wave = SymbolicFunction.from_sympy("wave", sympy.Float(1.5) * sympy.sin(sympy.pi * x_symbol) + x_symbol / 3, x_symbol)
    model.library.add(softplus)
    model.library.add(wave)
    _set_symbolic(model, 0, 1, 0, "softplus", (2.0, -0.5, 0.7, 0.1))
    _set_symbolic(model, 1, 0, 0, "tanh", (1.0, 0.0, 1.0, 0.0))
    path = tmp_path / "model.safetensors"
    model.save(path)

    metadata, _ = _read(path)
    library = json.loads(metadata["library"])
    assert list(library["custom"]) == ["softplus", "wave"]
    assert "log" in library["custom"]["softplus"]["sympy"]

    loaded = MultKAN.load(path)
    assert "softplus" in loaded.library
    assert loaded.layers[0].symbolic_names == {(1, 0): "softplus"}
    assert list(loaded.library) == list(model.library)
    assert loaded.library["wave"].expression() == wave.expression()
    assert loaded.library["wave"].domain == wave.domain
    assert loaded.library["wave"].complexity == wave.complexity
    x = _inputs(model)
    assert torch.equal(model(x), loaded(x))


def test_default_library_not_stored(tmp_path):
    model = MultKAN([2, 2, 1], seed=0)
    _set_symbolic(model, 0, 0, 0, "exp", (1.0, 0.0, 1.0, 0.0))
    path = tmp_path / "model.safetensors"
    model.save(path)
    metadata, _ = _read(path)
    assert json.loads(metadata["library"]) is None


def test_device_argument(tmp_path):
    model = MultKAN([2, 3, 1], seed=0)
    path = tmp_path / "model.safetensors"
    model.save(path)
    for device in (None, "cpu", torch.device("cpu")):
        loaded = MultKAN.load(path, device=device)
        assert loaded.device == torch.device("cpu")
        assert all(tensor.device.type == "cpu" for tensor in loaded.state_dict().values())
    with pytest.raises(InvalidParameterError, match="device"):
        MultKAN.load(path, device="no-such-device")


def test_overwrite_existing_file(tmp_path):
    path = tmp_path / "model.safetensors"
    MultKAN([2, 3, 1], seed=0).save(path)
    second = MultKAN([3, 2, 2], seed=1)
    second.save(path)
    assert MultKAN.load(path).width == [3, 2, 2]
    assert os.listdir(tmp_path) == ["model.safetensors"]


# Atomic writes.


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    MultKAN([2, 3, 1], seed=0).save(path)
    before = path.read_bytes()

    def fail_after_write(descriptor):
        raise OSError("disk full")

    # The temporary file is complete when fsync runs, so this fails after the write.
    monkeypatch.setattr(multkan.io.os, "fsync", fail_after_write)
    with pytest.raises(OSError, match="disk full"):
        MultKAN([2, 4, 1], seed=1).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def interrupt(descriptor):
        raise KeyboardInterrupt

    monkeypatch.setattr(multkan.io.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        MultKAN([2, 3, 1], seed=0).save(tmp_path / "model.safetensors")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_save_mode_follows_umask(tmp_path, umask):
    path = tmp_path / "model.safetensors"
    previous = os.umask(umask)
    try:
        MultKAN([2, 3, 1], seed=0).save(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_save_replaces_file_with_new_mode(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    path.chmod(0o600)
    previous = os.umask(0o022)
    try:
        MultKAN([2, 3, 1], seed=0).save(path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert MultKAN.load(path).width == [2, 3, 1]


def test_save_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MultKAN([2, 3, 1]).save(tmp_path / "absent" / "model.safetensors")


# Rejected saves.


def test_save_rejects_foreign_function(tmp_path):
    model = MultKAN([2, 2, 1], seed=0)
    model.layers[0].set_symbolic(0, 0, "sin", lambda values: torch.sin(values), (1.0, 0.0, 1.0, 0.0))
    with pytest.raises(CheckpointError, match=r"edge \(0, 0, 0\).*safe_torch_fn"):
        model.save(tmp_path / "model.safetensors")
    assert os.listdir(tmp_path) == []


def test_save_rejects_unknown_function(tmp_path):
    model = MultKAN([2, 2, 1], seed=0)
    model.layers[1].set_symbolic(1, 0, "mystery", torch.sin, (1.0, 0.0, 1.0, 0.0))
    with pytest.raises(CheckpointError, match="'mystery' is not in model.library"):
        model.save(tmp_path / "model.safetensors")


def test_save_rejects_non_model(tmp_path):
    with pytest.raises(InvalidParameterError, match="MultKAN"):
        save(torch.nn.Linear(2, 1), tmp_path / "model.safetensors")


# Damaged and edited files.


@pytest.fixture
def saved(tmp_path):
    model = MultKAN([2, [1, 1], 1], seed=0)
    path = tmp_path / "model.safetensors"
    model.save(path)
    return path


def test_load_missing_file(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(CheckpointError, match="not found") as error:
        MultKAN.load(path)
    assert str(path) in str(error.value)


def test_load_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not a file"):
        MultKAN.load(tmp_path)


@pytest.mark.parametrize("keep", [0, 4, 60, -1])
def test_load_truncated(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep] if keep >= 0 else data[:-7])
    with pytest.raises(CheckpointError, match="not a safetensors file or it is truncated") as error:
        MultKAN.load(saved)
    assert str(saved) in str(error.value)


def test_load_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("this is not a model\n" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors file") as error:
        MultKAN.load(path)
    assert str(path) in str(error.value)


def test_load_foreign_safetensors(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    with pytest.raises(CheckpointError, match="not a multkan model file"):
        MultKAN.load(path)


def test_flipped_tensor_byte(saved):
    data = bytearray(saved.read_bytes())
    header_length = int.from_bytes(data[:8], "little")
    data[8 + header_length + 5] ^= 0x01
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="the file was modified after saving"):
        MultKAN.load(saved)


def test_edited_metadata(saved):
    metadata, tensors = _read(saved)
    metadata["seed"] = "5"
    _rewrite(saved, metadata, tensors, rehash=False)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        MultKAN.load(saved)


def test_edited_tensor(saved):
    metadata, tensors = _read(saved)
    tensors["layers.0.coef"] = tensors["layers.0.coef"] + 1e-3
    _rewrite(saved, metadata, tensors, rehash=False)
    with pytest.raises(CheckpointError, match="the file was modified after saving"):
        MultKAN.load(saved)


def test_missing_checksum(saved):
    metadata, tensors = _read(saved)
    del metadata["sha256"]
    _rewrite(saved, metadata, tensors, rehash=False)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        MultKAN.load(saved)


def test_wrong_format_name(saved):
    metadata, tensors = _read(saved)
    metadata["format"] = "pt"
    _rewrite(saved, metadata, tensors, rehash=True)
    with pytest.raises(CheckpointError, match="format 'pt', expected 'multkan-model'"):
        MultKAN.load(saved)


def test_newer_format_version(saved):
    metadata, tensors = _read(saved)
    metadata["format_version"] = "2"
    _rewrite(saved, metadata, tensors, rehash=True)
    with pytest.raises(CheckpointError, match="format version 2.*Upgrade multkan"):
        MultKAN.load(saved)


@pytest.mark.parametrize("version", ["0", "one", ""])
def test_invalid_format_version(saved, version):
    metadata, tensors = _read(saved)
    metadata["format_version"] = version
    _rewrite(saved, metadata, tensors, rehash=True)
    with pytest.raises(CheckpointError, match="invalid format_version"):
        MultKAN.load(saved)


def test_missing_tensor(saved):
    metadata, tensors = _read(saved)
    del tensors["layers.1.scale_sp"]
    _rewrite(saved, metadata, tensors, rehash=True)
    with pytest.raises(CheckpointError, match=r"missing tensors \['layers.1.scale_sp'\]"):
        MultKAN.load(saved)


def test_unexpected_tensor(saved):
    metadata, tensors = _read(saved)
    tensors["layers.2.coef"] = torch.zeros(1)
    _rewrite(saved, metadata, tensors, rehash=True)
    with pytest.raises(CheckpointError, match="unexpected tensors"):
        MultKAN.load(saved)


def test_wrong_tensor_shape(saved):
    metadata, tensors = _read(saved)
    tensors["layers.0.coef"] = torch.zeros(2, 3, 4)
    _rewrite(saved, metadata, tensors, rehash=True)
    with pytest.raises(CheckpointError, match="'layers.0.coef' has shape"):
        MultKAN.load(saved)


def test_invalid_graph_metadata(saved):
    metadata, tensors = _read(saved)
    metadata["graph"] = "{not json"
    _rewrite(saved, metadata, tensors, rehash=True)
    with pytest.raises(CheckpointError, match="cannot rebuild the model"):
        MultKAN.load(saved)


@pytest.mark.parametrize("layers", ["[]", '[{"uniform": true}]', '[{}, {}]', '"yes"'])
def test_invalid_layers_metadata(saved, layers):
    metadata, tensors = _read(saved)
    metadata["layers"] = layers
    _rewrite(saved, metadata, tensors, rehash=True)
    with pytest.raises(CheckpointError, match="'layers' must list 2 entries"):
        MultKAN.load(saved)


def test_symbolic_mask_mismatch(saved):
    metadata, tensors = _read(saved)
    tensors["layers.0.symbolic_mask"] = torch.ones_like(tensors["layers.0.symbolic_mask"])
    _rewrite(saved, metadata, tensors, rehash=True)
    with pytest.raises(CheckpointError, match="symbolic edges of the graph"):
        MultKAN.load(saved)


@pytest.mark.parametrize(
    "form",
    [
        "__import__('pathlib').Path({marker!r}).touch()",
        "sin(\"__import__('pathlib').Path({marker!r}).touch() or 1\")",
        "Add(Symbol('x'), Tuple(\"__import__('pathlib').Path({marker!r}).touch() or 1\"))",
        "Symbol('x').__class__",
    ],
)
def test_crafted_sympy_form_rejected(tmp_path, form):
    model = MultKAN([2, 2, 1], seed=0)
    x_symbol = sympy.Symbol("x")
    model.library.add(SymbolicFunction.from_sympy("cube", x_symbol**3 + x_symbol, x_symbol))
    path = tmp_path / "model.safetensors"
    model.save(path)
    metadata, tensors = _read(path)
    library = json.loads(metadata["library"])
    marker = tmp_path / "marker"
    library["custom"]["cube"]["sympy"] = form.format(marker=str(marker))
    metadata["library"] = json.dumps(library)
    _rewrite(path, metadata, tensors, rehash=True)
    with pytest.raises(CheckpointError, match="invalid sympy form"):
        MultKAN.load(path)
    assert not marker.exists()


# state_dict and load_state_dict: the function of every symbolic edge travels by name.


def _symbolic_model(seed=0):
    model = MultKAN([2, [1, 1], 1], seed=seed, dtype=torch.float64)
    _set_symbolic(model, 0, 1, 1, "sin", (2.0, 0.5, 1.5, -0.2))
    _set_symbolic(model, 1, 0, 0, "exp", (0.5, 0.0, 1.0, 0.0))
    return model


def test_state_dict_carries_symbolic_functions(tmp_path):
    model = _symbolic_model()
    x = _inputs(model)
    # A fresh model of the same width, no symbolic edges and other parameters.
    fresh = MultKAN([2, [1, 1], 1], seed=1, dtype=torch.float64)
    result = fresh.load_state_dict(model.state_dict())
    assert not result.missing_keys
    assert not result.unexpected_keys
    assert fresh.layers[0].symbolic_names == {(1, 1): "sin"}
    assert fresh.layers[1].symbolic_names == {(0, 0): "exp"}
    assert torch.equal(fresh(x), model(x))
    formula = model.symbolic_formula(numeric_edges="function")[0]
    assert fresh.symbolic_formula(numeric_edges="function")[0] == formula
    assert formula.has(sympy.sin)
    assert formula.has(sympy.exp)
    # Through torch.save and a weights-only torch.load, and with every value a tensor.
    torch.save(model.state_dict(), tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    other = MultKAN([2, [1, 1], 1], seed=2, dtype=torch.float64)
    other.load_state_dict(state)
    assert torch.equal(other(x), model(x))


def test_state_dict_restores_spline_edges():
    spline = MultKAN([2, [1, 1], 1], seed=1, dtype=torch.float64)
    spline.update_grid(_inputs(spline), grid_eps=0.0)
    assert [layer.uniform for layer in spline.layers] == [False, False]
    model = _symbolic_model()
    model.load_state_dict(spline.state_dict())
    assert all(not layer.symbolic_names for layer in model.layers)
    assert [layer.uniform for layer in model.layers] == [False, False]
    x = _inputs(model)
    assert torch.equal(model(x), spline(x))


def test_state_dict_of_a_submodule():
    class Wrapper(torch.nn.Module):
        def __init__(self, seed):
            super().__init__()
            self.kan = MultKAN([2, [1, 1], 1], seed=seed, dtype=torch.float64)

    source = Wrapper(0)
    _set_symbolic(source.kan, 0, 1, 1, "tanh", (1.0, 0.0, 2.0, 0.0))
    target = Wrapper(1)
    target.load_state_dict(source.state_dict())
    x = _inputs(source.kan)
    assert torch.equal(target.kan(x), source.kan(x))


def test_state_dict_with_unknown_function_raises():
    model = _symbolic_model()
    x_symbol = sympy.Symbol("x")
    model.library.add(SymbolicFunction.from_sympy("cube", x_symbol**3 + x_symbol, x_symbol))
    _set_symbolic(model, 0, 0, 0, "cube", (1.0, 0.0, 1.0, 0.0))
    fresh = MultKAN([2, [1, 1], 1], seed=1, dtype=torch.float64)
    with pytest.raises(InvalidParameterError, match=r"functions \['cube'\] that are not in model.library"):
        fresh.load_state_dict(model.state_dict())
    fresh.library.add(model.library["cube"])
    fresh.load_state_dict(model.state_dict())
    x = _inputs(model)
    assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda state: state.update({"layers.0._extra_state": torch.zeros(3)}), "uint8 tensor"),
        (lambda state: state.update({"layers.0._extra_state": torch.tensor(list(b'{"uniform": true}'), dtype=torch.uint8)}), "JSON object"),
        (
            lambda state: state.update(
                {"layers.0._extra_state": torch.tensor(list(b'{"symbolic_names": [[5, 0, "sin"]], "uniform": true}'), dtype=torch.uint8)}
            ),
            "0 <= source < 2",
        ),
        (lambda state: state.update({"layers.0.symbolic_mask": torch.zeros_like(state["layers.0.symbolic_mask"])}), "differ from those"),
    ],
)
def test_state_dict_with_invalid_layer_state_raises(change, message):
    state = _symbolic_model().state_dict()
    change(state)
    with pytest.raises(InvalidParameterError, match=message):
        MultKAN([2, [1, 1], 1], seed=1, dtype=torch.float64).load_state_dict(state)


def test_state_dict_size_mismatch_is_torchs_error():
    source = _symbolic_model()
    # Another hidden width: torch's size mismatch, not a symbolic-edge complaint.
    target = MultKAN([2, [2, 1], 1], seed=1, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="size mismatch"):
        target.load_state_dict(source.state_dict())
    assert all(not layer.symbolic_names for layer in target.layers)


def test_state_dict_missing_extra_state():
    state = {name: value for name, value in _symbolic_model().state_dict().items() if not name.endswith("_extra_state")}
    with pytest.raises(RuntimeError, match="Missing key"):
        MultKAN([2, [1, 1], 1], seed=1, dtype=torch.float64).load_state_dict(state)
