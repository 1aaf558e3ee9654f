"""What the ``pt2q`` commands share: one-line errors, input shapes, loading a model factory, random inputs,
building the quantizers, loading a ``.pte`` and printing a table."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, NoReturn, Optional

import torch  # pt2q itself imports torch: a lazy import here would save nothing

if TYPE_CHECKING:
    from pt2q.quantizer import Quantizer
    from pt2q.runtime import Program

__all__ = [
    "QUANTIZERS",
    "TARGETS",
    "Rows",
    "TRUST_HELP",
    "DTYPES",
    "CLIError",
    "Parser",
    "first_line",
    "fail",
    "InputSpec",
    "parse_shape",
    "parse_shapes",
    "parse_quantizers",
    "load_factory",
    "make_model",
    "random_inputs",
    "random_like",
    "check_inputs",
    "build_quantizer",
    "load_pte",
    "print_table",
    "human_bytes",
    "make_folder",
]

QUANTIZERS = ("embedding", "xnnpack", "x86")  # the order a composition runs them in
TARGETS = ("pt2", "pte", "x86")
Rows = list[tuple[str, object]]  # (label, value) lines of a summary table
TRUST_HELP = (
    "the file comes from a source you trust: load a .pt2 with torch.export.load (which unpickles), "
    "a .pte in this process without a trial load in a child process"
)
DTYPES = {"float32": "float32", "float": "float32", "int64": "int64", "long": "int64", "int32": "int32", "int": "int32"}


class CLIError(Exception):
    """A user error: reported as one ``pt2q: error:`` line, without a traceback."""


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage block)."""

    def error(self, message: str) -> NoReturn:  # noqa: D102
        fail(message)


def first_line(text: object) -> str:
    """The first line of a message."""
    lines = str(text).strip().splitlines()
    return lines[0] if lines else "(no message)"


def fail(message: str) -> NoReturn:
    """Print ``pt2q: error: <first line>`` and exit with status 2."""
    print(f"pt2q: error: {first_line(message)}", file=sys.stderr)
    sys.exit(2)


class InputSpec(NamedTuple):
    """One model input: its shape and dtype name (``1x16:int64``; ``dtype`` None: not given, float32)."""

    shape: tuple[int, ...]
    dtype: Optional[str] = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype or "float32")

    def __str__(self) -> str:
        dims = "x".join(map(str, self.shape))
        return dims if self.dtype in (None, "float32") else f"{dims}:{self.dtype}"


def parse_shape(text: str) -> InputSpec:
    """``"1x3x32x32"`` -> ``InputSpec((1, 3, 32, 32))``; ``"1x16:int64"`` for integer inputs (token ids)."""
    dims_text, _, dtype = text.lower().partition(":")
    if dtype and dtype not in DTYPES:
        raise argparse.ArgumentTypeError(f"invalid dtype {dtype!r} in {text!r} (choose from {', '.join(DTYPES)})")
    try:
        dims = tuple(int(d) for d in dims_text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid shape {text!r}: expected sizes joined by 'x', e.g. 1x3x32x32"
        ) from None
    if any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"invalid shape {text!r}: sizes must be positive")
    return InputSpec(dims, DTYPES[dtype] if dtype else None)


def parse_shapes(text: str) -> list[InputSpec]:
    """``"1x8,1x4:int64"`` -> one :class:`InputSpec` per model input."""
    return [parse_shape(part) for part in text.split(",") if part]


def parse_quantizers(text: str) -> list[str]:
    """``"embedding,xnnpack"`` -> the known names, in the order they must run."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in QUANTIZERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown quantizer {','.join(unknown) or text!r} (choose from {', '.join(QUANTIZERS)})"
        )
    return sorted(set(names), key=QUANTIZERS.index)


def load_factory(spec: str) -> Callable[[], object]:
    """Resolve ``MODULE:FACTORY`` (dotted module or ``.py`` path) to the factory callable."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"expected MODULE:FACTORY, got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        module = _import_path(Path(module_name))
    else:
        if os.getcwd() not in sys.path:  # as with `python -m`: modules in the working directory import
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise CLIError(f"cannot import module {module_name!r}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CLIError(f"factory {attr!r} not found in {module_name} (or not callable)")
    return factory


def _import_path(path: Path) -> object:
    if not path.is_file():
        raise CLIError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"_pt2q_factory_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise CLIError(f"cannot import {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_model(spec: str) -> torch.nn.Module:
    try:
        model = load_factory(spec)()
    except SystemExit as e:  # the factory's module or call ended the program: that is no model
        raise CLIError(f"{spec} called sys.exit({e.code!r}) instead of returning an nn.Module") from e
    if not isinstance(model, torch.nn.Module):
        raise CLIError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    return model.eval()


def random_inputs(specs: Sequence[InputSpec]) -> tuple[torch.Tensor, ...]:
    """Random inputs: normal floats, or integers in [0, 2) (valid indices for any embedding)."""
    return random_like([torch.empty(s.shape, dtype=s.torch_dtype) for s in specs])


def random_like(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Fresh random inputs with the shapes and dtypes of ``tensors``."""
    return tuple(
        torch.randn(t.shape).to(t.dtype) if t.dtype.is_floating_point else torch.randint(0, 2, t.shape, dtype=t.dtype)
        for t in tensors
    )


def check_inputs(model: torch.nn.Module, inputs: tuple, label: str) -> torch.Tensor:
    """Run ``model`` once on ``inputs``: a mismatch becomes a :class:`CLIError`."""
    try:
        with torch.no_grad():
            return model(*inputs)
    except Exception as e:  # shape, dtype or arity mismatch in user code
        shapes = ",".join(str(InputSpec(tuple(t.shape), str(t.dtype).replace("torch.", ""))) for t in inputs)
        raise CLIError(f"example inputs {shapes} do not fit {label}: {first_line(e)}") from e


def build_quantizer(names: Sequence[str]) -> Quantizer:
    """The quantizers for ``names``, composed when there are several."""
    from pt2q.quantizer import ComposableQuantizer
    from pt2q.quantizers import (
        EmbeddingQuantizer,
        X86InductorQuantizer,
        XNNPACKQuantizer,
        get_default_x86_inductor_quantization_config,
        get_symmetric_quantization_config,
    )

    makers: dict[str, Callable[[], Quantizer]] = {
        "embedding": EmbeddingQuantizer,
        "xnnpack": lambda: XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
        "x86": lambda: X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()),
    }
    quantizers = [makers[n]() for n in names]
    return quantizers[0] if len(quantizers) == 1 else ComposableQuantizer(quantizers)


def load_pte(path: Path, trust: bool = False) -> Program:
    """``pt2q.runtime.load``; unless ``trust``, after a trial load in a child process (a crash is an error)."""
    from pt2q.runtime import load

    if not path.is_file():
        raise CLIError(f"no such file: {path}")
    return load(path, isolate=not trust)


def print_table(title: str, rows: Rows, header: str = "value") -> None:
    """A two-column markdown table."""
    width = max([len(k) for k, _ in rows] + [8])
    print(f"\n{title}")
    print(f"| {'':<{width}} | {header}")
    print(f"|-{'-' * width}-|------")
    for key, value in rows:
        print(f"| {key:<{width}} | {value}")


def human_bytes(n: int) -> str:
    """A byte count with its KiB."""
    return f"{n:,} B ({n / 1024:.1f} KiB)"


def make_folder(out: Path) -> None:
    """Create the folder ``out`` is written to (a :class:`CLIError` if that fails)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create the folder of --out {out}: {e.strerror or e}") from e
