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

import ast
import builtins
import io
import json
import operator
import os
import re
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import torch
from torch.export import ExportedProgram

from pt2q.io.atomic_file import write_atomic
from pt2q.io.digest import DigestMismatchError, seal_zip, verify_zip
from pt2q.io.quiet import quiet

__all__ = ["Pt2LoadError", "UntrustedContentError", "save_pt2", "load_pt2"]

PathLike = Union[str, "os.PathLike[str]"]

_MODEL = "model"
_MAX_EMPTY_TENSOR_BYTES = 1 << 30  # a tensor stored with no bytes is zeros; refuse absurd ones


class Pt2LoadError(RuntimeError):
    """The file is not a ``.pt2`` program pt2q can read (corrupt, truncated or malformed)."""


class UntrustedContentError(Pt2LoadError):
    """Loading the ``.pt2`` would run code stored in it; pass ``trust=True`` (``--trust``) to allow it."""


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
                raise Pt2LoadError(f"cannot load {source}: {type(e).__name__}: {_first_line(e)}") from e
    archive = _Archive(data, source)
    try:
        return _load_untrusted(archive)
    except Pt2LoadError:
        raise
    except Exception as e:  # malformed JSON, tensor metadata, graph: torch's deserializer says what
        raise Pt2LoadError(f"cannot load {source}: {type(e).__name__}: {_first_line(e)}") from e


# --------------------------------------------------------------------- the archive


def _first_line(error: object) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else "(no message)"


def _read(f: Union[PathLike, bytes]) -> tuple[bytes, str]:
    if isinstance(f, (bytes, bytearray, memoryview)):
        return bytes(f), "<bytes>"
    path = Path(f)
    try:
        return path.read_bytes(), str(path)
    except OSError as e:
        raise Pt2LoadError(f"cannot read {path}: {e.strerror or e}") from e


class _Archive:
    """The records of a ``.pt2`` zip (names without the archive's top folder), read with CRC checks."""

    def __init__(self, data: bytes, source: str) -> None:
        from torch.export.pt2_archive.constants import ARCHIVE_FORMAT_PATH, ARCHIVE_FORMAT_VALUE

        self.source = source
        try:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise Pt2LoadError(f"{source} is not a readable .pt2 archive: {_first_line(e)}") from e
        roots = {info.filename.split("/", 1)[0] for info in infos}
        if len(roots) != 1 or any("/" not in info.filename for info in infos):
            raise Pt2LoadError(f"{source} is not a .pt2 archive: its records are not under one top folder")
        self._root = roots.pop() + "/"
        self.names = [info.filename[len(self._root) :] for info in infos]
        for info in infos:
            if info.file_size > 64 * max(info.compress_size, 1 << 20):
                raise Pt2LoadError(f"{source}: record {info.filename} would expand {info.file_size} bytes; refusing it")
        if "serialized_exported_program.json" in self.names:
            raise self.refuse("the archive", "it is in the torch 2.7 format, whose tensors are a pickle")
        if ARCHIVE_FORMAT_PATH not in self.names or self.text(ARCHIVE_FORMAT_PATH) != ARCHIVE_FORMAT_VALUE:
            raise Pt2LoadError(f"{source} is not a torch.export .pt2 archive (no '{ARCHIVE_FORMAT_PATH}' record)")

    def read(self, name: str) -> bytes:
        if name not in self.names:
            raise Pt2LoadError(f"{self.source}: the archive has no record {name!r}")
        try:
            return self._zip.read(self._root + name)
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as e:
            raise Pt2LoadError(f"{self.source}: record {name} is corrupt: {_first_line(e)}") from e

    def text(self, name: str) -> str:
        try:
            return self.read(name).decode()
        except UnicodeDecodeError as e:
            raise Pt2LoadError(f"{self.source}: record {name} is not text: {e}") from e

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.text(name))
        except (json.JSONDecodeError, RecursionError) as e:
            raise Pt2LoadError(f"{self.source}: record {name} is not valid JSON: {_first_line(e)}") from e

    def refuse(self, what: str, why: str) -> UntrustedContentError:
        return UntrustedContentError(
            f"{self.source}: refusing {what}: {why}, and loading it would run code stored in the file. "
            "If you trust its author, load it with --trust (pt2q CLI) or trust=True (pt2q.load_pt2)"
        )


# --------------------------------------------------------------------- loading


def _load_untrusted(archive: _Archive) -> ExportedProgram:
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
    _check_model_json(archive, model)
    state_dict = _tensors(archive, c.WEIGHTS_CONFIG_FILENAME_FORMAT.format(_MODEL), c.WEIGHTS_DIR)
    constants = _tensors(archive, c.CONSTANTS_CONFIG_FILENAME_FORMAT.format(_MODEL), c.CONSTANTS_DIR)
    example_inputs = _sample_inputs(archive, c.SAMPLE_INPUTS_FILENAME_FORMAT.format(_MODEL))
    serialized = _dict_to_dataclass(schema.ExportedProgram, model)
    with quiet():
        program = ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, example_inputs)
    _check_targets(archive, program)
    return program


def _refuse_code_records(archive: _Archive) -> None:
    from torch.export.pt2_archive import constants as c

    for name in archive.names:
        if name.startswith(c.AOTINDUCTOR_DIR):
            raise archive.refuse(f"record {name}", "it belongs to an AOTInductor package (compiled shared libraries)")
        if name in (f"{c.WEIGHTS_DIR}{_MODEL}.pt", f"{c.CONSTANTS_DIR}{_MODEL}.pt"):
            raise archive.refuse(f"record {name}", "tensors in the legacy format are a pickle")


def _tensors(archive: _Archive, config_name: str, folder: str) -> dict[str, torch.Tensor]:
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


def _tensor(archive: _Archive, record: str, payload: dict, storages: dict[str, torch.Tensor]) -> torch.Tensor:
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


def _sample_inputs(archive: _Archive, name: str) -> Any:
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


# --------------------------------------------------------------------- what torch would evaluate

# Callables a symbolic-shape expression may name: sympy constructors and torch's sympy functions.
_SYMPY_CALLS = frozenset(
    {
        "Symbol",
        "Integer",
        "Float",
        "Rational",
        "Max",
        "Min",
        "Abs",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "StrictLessThan",
        "StrictGreaterThan",
        "LessThan",
        "GreaterThan",
        "Equality",
        "Unequality",
        "And",
        "Or",
        "Not",
        "Piecewise",
        "floor",
        "ceiling",
        "sqrt",
        "Pow",
        "Mul",
        "Add",
        "Mod",
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
    }
)
# Methods and math functions a guard may call, on ``L['input']`` paths.
_GUARD_ATTRS = frozenset(
    {"size", "stride", "storage_offset", "dim", "numel", "isnan", "isinf", "inf", "floor", "ceil", "trunc", "sqrt"}
)
_EXPR_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Call,
    ast.Name,
    ast.Constant,
    ast.keyword,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
    ast.expr_context,
)
_SAFE_TEXT = re.compile(r"[A-Za-z0-9_ .,()\[\]'+\-*/%<>=!&|~^]*")
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_BUILTIN_NAMES = frozenset(dir(builtins))


def _safe_expression(text: object, guard: bool) -> bool:
    """Whether ``text`` is an arithmetic/comparison expression over symbols (or, for a guard, input
    sizes) calling only known sympy/math functions: nothing ``eval`` could turn into other code."""
    if not isinstance(text, str) or len(text) > 10_000 or not _SAFE_TEXT.fullmatch(text):
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            ok = (isinstance(func, ast.Name) and func.id in _SYMPY_CALLS) or (
                guard and isinstance(func, ast.Attribute) and func.attr in _GUARD_ATTRS
            )
            if not ok or any(not isinstance(k.value, ast.Constant) or k.arg is None for k in node.keywords):
                return False
        elif isinstance(node, ast.Name):
            if not _IDENTIFIER.fullmatch(node.id) or "__" in node.id:
                return False
            if node.id in _BUILTIN_NAMES and node.id not in ("True", "False") and not (guard and node.id == "L"):
                return False
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not _IDENTIFIER.fullmatch(node.value):
                return False
            if not isinstance(node.value, (int, float, str)):  # bool is an int
                return False
        elif guard and isinstance(node, ast.Attribute):
            if node.attr not in _GUARD_ATTRS:
                return False
        elif guard and isinstance(node, (ast.Subscript, ast.Load)):
            if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Constant):
                return False
        elif not isinstance(node, _EXPR_NODES):
            return False
    return True


def _walk_json(value: Any) -> Iterator[dict]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_model_json(archive: _Archive, model: Any) -> None:
    """Refuse shape expressions and guards that ``sympify``/``exec`` would run as code."""
    if not isinstance(model, dict):
        raise Pt2LoadError(f"{archive.source}: the program record is not a JSON object")
    for item in _walk_json(model):
        expr = item.get("expr_str")
        if expr is not None and not _safe_expression(expr, guard=False):
            raise archive.refuse(f"the shape expression {str(expr)[:80]!r}", "it is not a plain symbolic-shape formula")
    for guard in model.get("guards_code") or ():
        if not _safe_expression(guard, guard=True):
            raise archive.refuse(f"the guard {str(guard)[:80]!r}", "it is not a plain input-shape check")


def _allowed_callables() -> frozenset:
    import math

    from torch._export.serde.serialize import _SYM_OPS
    from torch._export.verifier import Verifier

    return frozenset({*Verifier().allowed_builtin_ops(), *_SYM_OPS, operator.getitem, math.ceil, math.floor})


def _check_targets(archive: _Archive, program: ExportedProgram) -> None:
    """Every node must call an operator: a graph calling any other Python callable is refused."""
    from torch._export.serde.serialize import _registered_extension_types

    op_types = (torch._ops.OpOverload, torch._ops.HigherOrderOperator, *_registered_extension_types())
    allowed = _allowed_callables()
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if isinstance(graph, torch.fx.Graph) else ():
            if node.op == "call_function" and not isinstance(node.target, op_types) and node.target not in allowed:
                raise archive.refuse(f"node '{node.name}'", f"it calls {node.target!r}, which is not an operator")
            if node.op in ("call_method", "call_module"):
                raise archive.refuse(
                    f"node '{node.name}'", f"it is a {node.op} node, which exported programs never hold"
                )
