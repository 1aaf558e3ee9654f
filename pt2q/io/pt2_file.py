"""Save and load ``.pt2`` programs (``torch.export``'s archive) without trusting the file.

::

    save_pt2(exported_program, "model.pt2")   # atomic write, SHA-256 digest as the zip comment
    ep = load_pt2("model.pt2")                # runs nothing stored in the file
    ep = load_pt2("theirs.pt2", trust=True)   # torch.export.load, pickles and all

``torch.export.load`` unpickles parts of an archive (sample inputs, tensor subclasses,
script objects; it falls back to a full unpickler when the safe one fails), loads
AOTInductor shared libraries, evaluates the symbolic-shape strings of the graph with
``sympy.sympify`` (an ``eval``) and compiles the program's guard strings into Python.
Any of these runs code written by whoever made the file. :func:`load_pt2` reads the
archive with :mod:`zipfile` (CRC-checked) and builds the same ``ExportedProgram`` from
what is plain data: the graph's JSON, raw tensor bytes, and sample inputs through
``torch.load(weights_only=True)``. Before torch's deserializer sees the JSON, every shape
expression and guard is checked against a small grammar; afterwards every node must call
an operator (``torch.ops.*``, a higher-order op or one of the symbolic-int builtins).
Whatever needs more is refused by :class:`UntrustedContentError`, naming the archive
entry and the ``trust=True`` / ``--trust`` opt-in. A file carrying pt2q's digest is
checked first, so a corrupt copy fails before any parsing.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path
from typing import Any, Union

import torch
from torch.export import ExportedProgram

from pt2q.io.atomic_file import write_atomic
from pt2q.io.digest import DigestMismatchError, seal_zip, verify_zip
from pt2q.io.pt2_archive import Pt2Archive, Pt2LoadError, UntrustedContentError, first_line
from pt2q.io.pt2_safety import check_model_json, check_targets
from pt2q.io.quiet import quiet

__all__ = ["Pt2LoadError", "UntrustedContentError", "save_pt2", "load_pt2"]

PathLike = Union[str, "os.PathLike[str]"]

_MODEL = "model"
_MAX_EMPTY_TENSOR_BYTES = 1 << 30  # a tensor stored with no bytes is zeros; refuse absurd ones


def save_pt2(program: ExportedProgram, path: PathLike) -> Path:
    """``torch.export.save`` to ``path``, written atomically and sealed with a SHA-256 digest.

    The file loads with ``torch.export.load`` as well as with :func:`load_pt2`.
    """
    buffer = io.BytesIO()
    with quiet():
        torch.export.save(program, buffer)
    return write_atomic(path, seal_zip(buffer.getvalue()))


def load_pt2(f: Union[PathLike, bytes], *, trust: bool = False) -> ExportedProgram:
    """Load a ``.pt2`` program without running anything stored in it (unless ``trust``).

    Raises :class:`Pt2LoadError` for a corrupt or malformed file (a file saved by
    :func:`save_pt2` whose digest does not match, included) and
    :class:`UntrustedContentError` for one that needs pickles, shared libraries or
    Python code to load.
    """
    data, source = _read(f)
    try:
        data = verify_zip(data, source).payload
    except DigestMismatchError as e:
        raise Pt2LoadError(str(e)) from e
    if trust:
        with quiet():
            try:
                return torch.export.load(io.BytesIO(data))
            except Exception as e:
                raise Pt2LoadError(f"cannot load {source}: {type(e).__name__}: {first_line(e)}") from e
    archive = Pt2Archive(data, source)
    try:
        return _load_untrusted(archive)
    except Pt2LoadError:
        raise
    except Exception as e:  # malformed JSON, tensor metadata, graph: torch's deserializer says what
        raise Pt2LoadError(f"cannot load {source}: {type(e).__name__}: {first_line(e)}") from e


# --------------------------------------------------------------------- reading


def _read(f: Union[PathLike, bytes]) -> tuple[bytes, str]:
    if isinstance(f, (bytes, bytearray, memoryview)):
        return bytes(f), "<bytes>"
    path = Path(f)
    try:
        return path.read_bytes(), str(path)
    except OSError as e:
        raise Pt2LoadError(f"cannot read {path}: {e.strerror or e}") from e


# --------------------------------------------------------------------- loading


def _load_untrusted(archive: Pt2Archive) -> ExportedProgram:
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _dict_to_dataclass
    from torch.export.pt2_archive import constants as c

    _refuse_code_records(archive)
    version = archive.text(c.ARCHIVE_VERSION_PATH) if c.ARCHIVE_VERSION_PATH in archive.names else None
    if version != c.ARCHIVE_VERSION_VALUE:
        raise Pt2LoadError(
            f"{archive.source}: archive version {version!r}, this PyTorch reads {c.ARCHIVE_VERSION_VALUE!r}"
        )
    if "byteorder" in archive.names and archive.text("byteorder") != sys.byteorder:
        order = archive.text("byteorder")
        raise Pt2LoadError(f"{archive.source} stores {order}-endian tensors; this machine is {sys.byteorder}-endian")
    model = archive.json(c.MODELS_FILENAME_FORMAT.format(_MODEL))
    check_model_json(archive, model)
    state_dict = _tensors(archive, c.WEIGHTS_CONFIG_FILENAME_FORMAT.format(_MODEL), c.WEIGHTS_DIR)
    constants = _tensors(archive, c.CONSTANTS_CONFIG_FILENAME_FORMAT.format(_MODEL), c.CONSTANTS_DIR)
    example_inputs = _sample_inputs(archive, c.SAMPLE_INPUTS_FILENAME_FORMAT.format(_MODEL))
    serialized = _dict_to_dataclass(schema.ExportedProgram, model)
    with quiet():
        program = ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, example_inputs)
    check_targets(archive, program)
    return program


def _refuse_code_records(archive: Pt2Archive) -> None:
    from torch.export.pt2_archive import constants as c

    for name in archive.names:
        if name.startswith(c.AOTINDUCTOR_DIR):
            raise archive.refuse(f"record {name}", "it belongs to an AOTInductor package (compiled shared libraries)")
        if name in (f"{c.WEIGHTS_DIR}{_MODEL}.pt", f"{c.CONSTANTS_DIR}{_MODEL}.pt"):
            raise archive.refuse(f"record {name}", "tensors in the legacy format are a pickle")


def _tensors(archive: Pt2Archive, config_name: str, folder: str) -> dict[str, torch.Tensor]:
    """The raw tensors a weights/constants config lists, sharing storage where the archive does."""
    from torch.export.pt2_archive import constants as c

    config = archive.json(config_name)
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise Pt2LoadError(f"{archive.source}: {config_name} has no 'config' mapping")
    storages: dict[str, torch.Tensor] = {}
    tensors: dict[str, torch.Tensor] = {}
    for fqn, payload in config["config"].items():
        path_name = str(payload.get("path_name"))
        record = f"{folder}{path_name}"
        if payload.get("use_pickle"):
            raise archive.refuse(f"'{fqn}' ({record})", "it is stored as a pickle (a tensor subclass or object)")
        if path_name.startswith((c.CUSTOM_OBJ_FILENAME_PREFIX, c.OPAQUE_OBJ_FILENAME_PREFIX)):
            raise archive.refuse(f"'{fqn}' ({record})", "it is a script or opaque object, stored as a pickle")
        tensors[fqn] = _tensor(archive, record, payload, storages)
    return tensors


def _tensor(archive: Pt2Archive, record: str, payload: dict, storages: dict[str, torch.Tensor]) -> torch.Tensor:
    from torch._export.serde import schema
    from torch._export.serde.serialize import (
        _dict_to_dataclass,
        deserialize_device,
        deserialize_scalar_type,
        deserialize_size,
        deserialize_storage_offset,
        deserialize_stride,
    )

    meta = _dict_to_dataclass(schema.TensorMeta, payload.get("tensor_meta"))
    if meta is None:
        raise Pt2LoadError(f"{archive.source}: {record} has no tensor metadata")
    dtype = deserialize_scalar_type(meta.dtype)
    size, stride = deserialize_size(meta.sizes), deserialize_stride(meta.strides)
    flat = storages.get(record)
    if flat is None:
        raw = archive.read(record)
        if raw:
            if len(raw) % dtype.itemsize:
                raise Pt2LoadError(f"{archive.source}: {record} holds {len(raw)} bytes, not a whole number of {dtype}")
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype)
        else:  # torch stores an empty record for fake or empty tensors and loads zeros of that size
            numel = 1
            for d in size:
                numel *= d
            if numel * dtype.itemsize > _MAX_EMPTY_TENSOR_BYTES:
                raise Pt2LoadError(f"{archive.source}: {record} is empty but declares a {list(size)} tensor")
            flat = torch.zeros(size, dtype=dtype).reshape(-1)
        if meta.requires_grad:
            flat.requires_grad_(True)
        storages[record] = flat
    tensor = torch.as_strided(flat, size, stride, deserialize_storage_offset(meta.storage_offset))
    device = deserialize_device(meta.device)
    if device.type != "cpu":
        tensor = tensor.to(device)
    if payload.get("is_param"):
        tensor = torch.nn.Parameter(tensor, requires_grad=meta.requires_grad)
    return tensor


def _sample_inputs(archive: Pt2Archive, name: str) -> Any:
    if name not in archive.names:
        return None
    data = archive.read(name)
    if not data:
        return None
    try:
        with quiet():
            inputs = torch.load(io.BytesIO(data), weights_only=True)
    except Exception as e:
        raise archive.refuse(
            f"record {name}", "the sample inputs are a pickle torch.load(weights_only=True) rejects"
        ) from e
    if not isinstance(inputs, tuple):
        raise Pt2LoadError(f"{archive.source}: {name} holds a {type(inputs).__name__}, not the (args, kwargs) tuple")
    return inputs
