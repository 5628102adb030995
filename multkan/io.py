"""Save and load models as one safetensors file, with no pickle.

The file contains every tensor of ``model.state_dict()`` and, in the string
metadata of the safetensors header:

``format``, ``format_version``
    ``"multkan-model"`` and ``"1"``.
``multkan_version``
    Version of multkan that wrote the file, for information only.
``graph``
    The graph IR as JSON (:func:`multkan.graph.graph_to_json`) with the
    structure only: node kinds and names, edges and the type of each edge
    function (spline, symbolic with its name, zero). The numbers live in the
    tensors.
``options``, ``grid_eps``, ``seed``, ``dtype``
    JSON of the :class:`~multkan.compile.CompileOptions` fields, the grid
    mix, the seed and ``"float32"`` or ``"float64"``.
``layers``
    JSON list with ``{"uniform": bool}`` per layer, the knot layout flag that
    is not a tensor.
``library``
    JSON: null when the model uses the default symbolic library, otherwise
    the entry names and aliases of its library and, for every entry that is
    not a default entry, its sympy form (``sympy.srepr`` of ``f(x)``),
    domain and complexity.
``sha256``
    SHA-256 over the tensor names, dtypes, shapes and bytes and over every
    other metadata entry, so that a file edited after saving is rejected.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from typing import Any

import sympy
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_bytes

from .compile import CompileOptions, write_back
from .errors import CheckpointError, GraphError, InvalidParameterError, SymbolicError, invalid_parameter
from .graph import graph_from_json, graph_to_json

__all__ = ["BATCH_FORMAT", "FORMAT", "FORMAT_VERSION", "load", "load_batch", "save", "save_batch"]

FORMAT = "multkan-model"
FORMAT_VERSION = 1
# A file of several models, written by save_batch: each model's tensors under
# "models.<i>." and its metadata as one JSON entry of the "models" list.
BATCH_FORMAT = "multkan-batch"

_DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Numeric attributes that write_back puts on the graph. The tensors carry these
# values, so the graph JSON leaves them out.
_NODE_PARAMETERS = ("grid", "grid_uniform", "scale", "bias")
_EDGE_PARAMETERS = ("coef", "scale_base", "scale_sp")


# Saving.


def save(model, path: str | os.PathLike) -> None:
    """Write ``model`` to one safetensors file at ``path``.

    The file is first written to a temporary file in the same folder and
    then renamed over ``path`` with :func:`os.replace`, so an interrupted
    save leaves either the old file or the new one, never a partial file.

    Parameters
    ----------
    model : MultKAN
    path : str or os.PathLike
        Target file. An existing file is replaced.

    Raises
    ------
    CheckpointError
        When a symbolic edge uses a function that cannot be rebuilt on load:
        its name is missing from ``model.library``, its torch function is not
        the library entry's ``safe_torch_fn``, or the library entry has no
        sympy form.
    FileNotFoundError
        When the folder of ``path`` does not exist.
    """
    from .model import MultKAN

    if not isinstance(model, MultKAN):
        raise invalid_parameter("model", "a multkan.MultKAN", type(model).__name__)
    path = _writable_path(path, "model")

    # The layers' extra state (symbolic function names, knot layout) is in the graph and the 'layers' metadata.
    tensors = {
        name: value.detach().to("cpu").contiguous().clone()
        for name, value in model.state_dict().items()
        if not _is_extra_state(name)
    }
    metadata = _model_metadata(model)
    metadata["sha256"] = _checksum(tensors, metadata)
    _write_atomically(tensors, metadata, path)


def _writable_path(path: str | os.PathLike, kind: str) -> str:
    """Return ``path`` as a string, or raise FileNotFoundError when its folder does not exist."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot save the {kind} to {path}: the folder {folder} does not exist")
    return path


def _model_metadata(model) -> dict[str, str]:
    dtype_name = str(model.dtype).removeprefix("torch.")
    from . import __version__

    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "multkan_version": __version__,
        "graph": graph_to_json(_structure_graph(model)),
        "options": json.dumps(dataclasses.asdict(model.options)),
        "grid_eps": json.dumps(float(model.grid_eps)),
        "seed": json.dumps(int(model.seed)),
        "dtype": dtype_name,
        "layers": json.dumps([{"uniform": bool(layer.uniform)} for layer in model.layers]),
        "library": json.dumps(_library_metadata(model)),
    }


def _structure_graph(model):
    """Return the graph with the layers' current edge types and no numeric parameters.

    ``write_back`` reads the edge types from the layers, because code may
    change a layer (``set_symbolic``, ``set_zero``, masks) without updating
    ``model.graph``.
    """
    graph = write_back(model.graph, list(model.layers))
    for _, data in graph.nodes(data=True):
        for key in _NODE_PARAMETERS:
            data.pop(key, None)
    for _, _, data in graph.edges(data=True):
        for key in _EDGE_PARAMETERS:
            data.pop(key, None)
    return graph


def _library_metadata(model) -> dict[str, Any] | None:
    """Describe the model's symbolic library, or return None for the default one."""
    from .symbolic import SymbolicFunction, default_library

    default = default_library()
    library = model._library
    _check_symbolic_edges(model, library if library is not None else default)
    if library is None or _is_default_library(library, default):
        return None

    entries, custom = [], {}
    for name in library:
        entry = library[name]
        entries.append(name)
        if name in default and default[name] is entry:
            continue
        if not isinstance(entry, SymbolicFunction):
            raise CheckpointError(
                f"cannot save symbolic function {name!r}: the library entry is a {type(entry).__name__}, "
                "not a multkan.symbolic.SymbolicFunction, so it has no sympy form to store"
            )
        # NOTE: load rebuilds this entry with SymbolicFunction.from_sympy, so its torch
        # functions come from sympy.lambdify. An entry made with hand-written torch
        # functions may compute slightly different values after loading.
        symbol = sympy.Symbol("x", real=True)
        domain = entry.domain
        custom[name] = {
            "symbol": sympy.srepr(symbol),
            "sympy": sympy.srepr(entry.expression(symbol)),
            "domain": [domain.low, domain.high, domain.low_open, domain.high_open, domain.excluded],
            "complexity": entry.complexity,
        }
    aliases = getattr(library, "aliases", {})
    return {"entries": entries, "aliases": dict(aliases), "custom": custom}


def _is_default_library(library: Mapping, default) -> bool:
    """Return True when ``library`` has exactly the default entries, in order, and the default aliases."""
    if list(library) != list(default) or getattr(library, "aliases", None) != default.aliases:
        return False
    return all(library[name] is default[name] for name in default)


def _check_symbolic_edges(model, library: Mapping) -> None:
    """Raise CheckpointError unless every symbolic edge can be rebuilt from its name."""
    for position, layer in enumerate(model.layers):
        for (source, target), name in sorted(layer.symbolic_names.items()):
            edge = f"({position}, {source}, {target})"
            if name not in library:
                raise CheckpointError(
                    f"cannot save edge {edge}: its symbolic function {name!r} is not in model.library. "
                    "Add it with model.library.add(SymbolicFunction.from_sympy(...)) before saving"
                )
            if layer.symbolic_functions.get(name) is not library[name].safe_torch_fn:
                raise CheckpointError(
                    f"cannot save edge {edge}: its torch function for {name!r} is not "
                    f"model.library[{name!r}].safe_torch_fn, so loading would compute a different function. "
                    "Set the edge from the library entry instead"
                )


def _checksum(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> str:
    """Return the hex SHA-256 of the tensors and of every metadata entry except ``sha256``."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)])
        digest.update(header.encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    for key in sorted(metadata):
        if key != "sha256":
            digest.update(json.dumps([key, metadata[key]]).encode())
    return digest.hexdigest()


def _write_atomically(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: str) -> None:
    """Write the safetensors file to a new temporary file next to ``path``, then rename it over ``path``.

    The bytes are written through a descriptor that this function opens,
    because ``safetensors.torch.save_file`` (0.8.0) creates its file with
    mode 0600. Mode 0o666 lets the umask set the permissions, as for any
    new file, and O_EXCL makes sure that the temporary file is new.
    """
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
    contents = save_bytes(tensors, metadata=metadata)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(contents)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def save_batch(batch, path: str | os.PathLike) -> None:
    """Save every model of a :class:`~multkan.BatchedMultKAN` to one safetensors file.

    Each model is stored as :func:`save` stores it, with its tensors under
    ``models.<i>.``, so the file has one checksum and is written atomically.
    :func:`load_batch` restacks the models; the optimiser state is not saved.
    """
    from .batch import BatchedMultKAN

    if not isinstance(batch, BatchedMultKAN):
        raise invalid_parameter("batch", "a multkan.BatchedMultKAN", type(batch).__name__)
    path = _writable_path(path, "batch")
    tensors, entries = {}, []
    for index in range(batch.n_models):
        model = batch.model(index)
        for name, value in model.state_dict().items():
            if not _is_extra_state(name):
                tensors[f"models.{index}.{name}"] = value.detach().to("cpu").contiguous().clone()
        entries.append(_model_metadata(model))
    from . import __version__

    metadata = {"format": BATCH_FORMAT, "format_version": str(FORMAT_VERSION), "multkan_version": __version__, "models": json.dumps(entries)}
    metadata["sha256"] = _checksum(tensors, metadata)
    _write_atomically(tensors, metadata, path)


def load_batch(path: str | os.PathLike, *, device: str | torch.device | None = None):
    """Read a batch written by :func:`save_batch` and return it as a :class:`~multkan.BatchedMultKAN`.

    Raises
    ------
    CheckpointError
        As :func:`load` does, and for a file of a single model.
    """
    from .batch import BatchedMultKAN

    device = _check_device(device)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"batch file not found: {path}")
    metadata, tensors = _read_file(path)
    if metadata.get("format") != BATCH_FORMAT:
        raise CheckpointError(
            f"{path} is not a multkan batch file: its metadata has format {metadata.get('format')!r}, expected {BATCH_FORMAT!r}. "
            "Load a single model with MultKAN.load"
        )
    _check_format({**metadata, "format": FORMAT}, path)
    if metadata.get("sha256") != _checksum(tensors, metadata):
        raise CheckpointError(f"checksum mismatch in {path}: the file was modified after saving")
    models = []
    for index, entry in enumerate(_field(metadata, "models", path)):
        prefix = f"models.{index}."
        model = _build_model(entry, path, device)
        _load_tensors(model, {name[len(prefix):]: value for name, value in tensors.items() if name.startswith(prefix)}, path)
        models.append(model)
    return BatchedMultKAN.from_models(models)


# Loading.


def load(path: str | os.PathLike, *, device: str | torch.device | None = None):
    """Read a model written by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
    device : str or torch.device, optional
        Device of the returned model; the CPU by default, whatever device the
        model was saved from.

    Returns
    -------
    MultKAN
        Same structure, parameters, grids, masks and symbolic edges as the
        saved model, so its outputs are bit-identical on the same device.
        The training inputs (``train_input``) are not saved.

    Raises
    ------
    CheckpointError
        When the file is missing, is not a safetensors file or is truncated,
        was not written by :func:`save`, has a newer format version, was
        modified after saving, or lacks tensors the model needs.
    """
    device = _check_device(device)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"model file not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"cannot load a model from {path}: it is not a file")

    metadata, tensors = _read_file(path)
    _check_format(metadata, path)
    if metadata.get("sha256") != _checksum(tensors, metadata):
        raise CheckpointError(f"checksum mismatch in {path}: the file was modified after saving")

    model = _build_model(metadata, path, device)
    _load_tensors(model, tensors, path)
    return model


def _check_device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise invalid_parameter("device", "a torch device such as 'cpu' or 'cuda:0'", device) from error


def _read_file(path: str) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except SafetensorError as error:
        raise CheckpointError(f"cannot read {path}: it is not a safetensors file or it is truncated ({error})") from error
    return metadata, tensors


def _check_format(metadata: Mapping[str, str], path: str) -> None:
    found = metadata.get("format")
    if found != FORMAT:
        raise CheckpointError(
            f"{path} is not a multkan model file: its metadata has format {found!r}, expected {FORMAT!r}. "
            "Write model files with MultKAN.save"
        )
    version = metadata.get("format_version", "")
    if not version.isdigit():
        raise CheckpointError(f"invalid format_version {version!r} in {path}: expected a positive integer")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {version}, newer than version {FORMAT_VERSION} that this multkan reads. "
            "Upgrade multkan to load it"
        )
    if int(version) < 1:
        raise CheckpointError(f"invalid format_version {version!r} in {path}: expected a positive integer")


def _field(metadata: Mapping[str, str], key: str, path: str) -> Any:
    """Return the JSON value of metadata entry ``key``."""
    if key not in metadata:
        raise CheckpointError(f"invalid model file {path}: the metadata entry {key!r} is missing")
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"invalid model file {path}: the metadata entry {key!r} is not valid JSON ({error})") from error


def _build_model(metadata: Mapping[str, str], path: str, device: torch.device):
    from .model import MultKAN

    dtype = _DTYPES.get(metadata.get("dtype", ""))
    if dtype is None:
        raise CheckpointError(f"invalid dtype {metadata.get('dtype')!r} in {path}: expected one of {sorted(_DTYPES)}")
    try:
        options = CompileOptions(**_field(metadata, "options", path))
        options = dataclasses.replace(options, grid_range=tuple(options.grid_range))
        graph = graph_from_json(metadata.get("graph", ""))
        library = _rebuild_library(_field(metadata, "library", path), path)
        model = MultKAN.from_graph(
            graph,
            grid=options.grid_size,
            k=options.k,
            grid_range=options.grid_range,
            grid_eps=_field(metadata, "grid_eps", path),
            base_fun=options.base_fun,
            noise_scale=options.noise_scale,
            scale_base_mu=options.scale_base_mu,
            scale_base_sigma=options.scale_base_sigma,
            affine_trainable=options.affine_trainable,
            sp_trainable=options.sp_trainable,
            sb_trainable=options.sb_trainable,
            seed=_field(metadata, "seed", path),
            dtype=dtype,
            device=device,
            library=library,
        )
    except (GraphError, SymbolicError, TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"invalid model file {path}: cannot rebuild the model ({error})") from error
    # from_graph has no scale_sp argument, so the saved options are restored whole.
    model.options = options

    layers = _field(metadata, "layers", path)
    valid = isinstance(layers, list) and all(isinstance(settings, dict) and "uniform" in settings for settings in layers)
    if not valid or len(layers) != len(model.layers):
        raise CheckpointError(
            f"invalid model file {path}: 'layers' must list {len(model.layers)} entries {{\"uniform\": bool}}, received {layers!r}"
        )
    for layer, settings in zip(model.layers, layers):
        layer.uniform = bool(settings["uniform"])
    return model


def _is_extra_state(name: str) -> bool:
    """Return whether a ``state_dict`` key is a module's extra state rather than a parameter or buffer."""
    return name.rsplit(".", 1)[-1] == "_extra_state"


def _load_tensors(model, tensors: Mapping[str, torch.Tensor], path: str) -> None:
    state = model.state_dict()
    # The model was built from the saved graph, so its extra state is the saved one.
    extra = {name: value for name, value in state.items() if _is_extra_state(name)}
    expected = {name: value for name, value in state.items() if not _is_extra_state(name)}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(f"invalid model file {path}: missing tensors {missing}")
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(f"invalid model file {path}: unexpected tensors {unexpected} that the saved graph does not use")
    for name, reference in expected.items():
        stored = tensors[name]
        if stored.shape != reference.shape or stored.dtype != reference.dtype:
            raise CheckpointError(
                f"invalid model file {path}: tensor {name!r} has shape {tuple(stored.shape)} and dtype {stored.dtype}, "
                f"the saved graph needs shape {tuple(reference.shape)} and dtype {reference.dtype}"
            )
    try:
        with torch.no_grad():
            model.load_state_dict({**tensors, **extra}, strict=True)
    except InvalidParameterError as error:
        # The load hook compares every layer's symbolic edges with its symbolic_mask tensor.
        raise CheckpointError(f"invalid model file {path}: the symbolic edges of the graph and the tensors disagree: {error}") from error


# Symbolic library.


def _rebuild_library(description: Any, path: str):
    """Return the library described by :func:`_library_metadata`, or None for the default one."""
    if description is None:
        return None
    from .symbolic import Domain, SymbolicFunction, SymbolicLibrary, default_library

    default = default_library()
    try:
        names, aliases, custom = description["entries"], description["aliases"], description["custom"]
        entries = []
        for name in names:
            if name in custom:
                spec = custom[name]
                symbol = _parse_srepr(spec["symbol"], path)
                expression = _parse_srepr(spec["sympy"], path)
                low, high, low_open, high_open, excluded = spec["domain"]
                domain = Domain(low, high, low_open, high_open, excluded)
                entries.append(SymbolicFunction.from_sympy(name, expression, symbol, spec["complexity"], domain=domain))
            elif name in default:
                entries.append(default[name])
            else:
                raise CheckpointError(f"invalid model file {path}: symbolic function {name!r} is neither a default nor a stored entry")
        return SymbolicLibrary(entries, aliases)
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"invalid model file {path}: malformed 'library' metadata ({error!r})") from error


def _parse_srepr(text: str, path: str) -> sympy.Basic:
    """Rebuild a sympy object from its ``sympy.srepr`` text without ``eval``.

    Only literals, sympy constants (``pi``, ``E``, ``oo``) and calls of sympy
    classes (``Add``, ``Symbol``, ``sin``) are accepted, and strings only as
    arguments of the classes in ``_STRING_CONSTRUCTORS``, so a crafted file
    cannot run code on load.
    """
    try:
        tree = ast.parse(text, mode="eval")
        return _build_sympy(tree.body)
    except (SyntaxError, ValueError, TypeError, AttributeError, RecursionError) as error:
        raise CheckpointError(f"invalid sympy form {text!r} in {path}: {error}") from error


# sympy classes whose string arguments are names or number literals. Other
# classes pass strings to sympy.sympify, which evaluates them as Python code.
_STRING_CONSTRUCTORS = frozenset({"Symbol", "Dummy", "Float", "Integer", "Rational"})


def _build_sympy(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (bool, int, float, str)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_build_sympy(node.operand)
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_build_sympy(item) for item in node.elts)
    if isinstance(node, ast.Name):
        value = getattr(sympy, node.id, None)
        if isinstance(value, sympy.Basic):
            return value
        raise ValueError(f"{node.id!r} is not a sympy constant")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        name = node.func.id
        constructor = getattr(sympy, name, None)
        if not (isinstance(constructor, type) and issubclass(constructor, sympy.Basic)):
            raise ValueError(f"{name!r} is not a sympy class")
        if any(keyword.arg is None for keyword in node.keywords):
            raise ValueError("** arguments are not allowed")
        arguments = [_build_sympy(argument) for argument in node.args]
        keywords = {keyword.arg: _build_sympy(keyword.value) for keyword in node.keywords}
        if name not in _STRING_CONSTRUCTORS and _contains_string([arguments, list(keywords.values())]):
            raise ValueError(f"{name} does not take string arguments")
        return constructor(*arguments, **keywords)
    raise ValueError(f"unsupported syntax {ast.dump(node)[:80]}")


def _contains_string(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_string(item) for item in value)
    return False
