"""Load an ExecuTorch ``.pte`` and call it like a module.

::

    prog = pt2q.runtime.load("model.pte")     # or the bytes of one
    y = prog(x)                                # a tensor, or a tuple for several outputs
    prog = pt2q.runtime.load("theirs.pte", isolate=True)   # a loader crash becomes an error

Loading goes through ExecuTorch's Python runtime (flatbuffer bytes, no pickle) with its
internal-consistency verification; ExecuTorch's quantized kernel library is registered
first so ``embedding_byte`` and friends resolve. A ``.pte`` written by pt2q carries a
SHA-256 digest (:mod:`pt2q.io.digest`) that is checked before ExecuTorch sees the bytes, so
a corrupt copy is a :class:`ProgramLoadError`, never different numbers. Then the header
is checked, and inputs are checked against the method's signature before it runs.
With ``isolate=True`` the program is first loaded (and run once on zeros) in a forked
child process: ExecuTorch aborts the process on some malformed programs, and this turns
that into a :class:`ProgramLoadError`.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import torch

from pt2q.io.quiet import quiet
from pt2q.runtime.isolation import check_in_child
from pt2q.runtime.loading import ProgramLoadError, check_pte_header, open_method, tensor_spec, verified_payload

__all__ = [
    "Program",
    "ProgramLoadError",
    "InputMismatchError",
    "load",
    "check_pte_header",
    "open_method",
    "live_programs",
]

PathLike = Union[str, "os.PathLike[str]"]

# Loaded programs keep pointers into ExecuTorch's thread pool: resizing it while one is
# alive would leave them dangling (see pt2q.runtime.timing.set_num_threads).
_LIVE: weakref.WeakSet[Program] = weakref.WeakSet()


def live_programs() -> int:
    """How many :class:`Program` objects are alive in this process."""
    return len(_LIVE)


class InputMismatchError(ValueError):
    """The inputs do not match the program's signature (count, dtype or shape)."""


class Program:
    """A loaded ``.pte`` method (``forward`` by default), callable with tensors."""

    def __init__(self, data: bytes, method: str = "forward", source: str = "<bytes>") -> None:
        data = verified_payload(data, source)
        self.source = source
        self.data = data
        with quiet(native=True) as native:  # ExecuTorch logs CPU probing to fd 2 on first load
            self._program, self._method = open_method(data, method, source, native.last_line)
        meta = self._method.metadata
        self.method = method
        self.input_specs = tuple(tensor_spec(meta.input_tensor_meta(i)) for i in range(meta.num_inputs()))
        self.output_specs = tuple(tensor_spec(meta.output_tensor_meta(i)) for i in range(meta.num_outputs()))
        _LIVE.add(self)

    def _check_inputs(self, inputs: Sequence[Any]) -> None:
        if len(inputs) != len(self.input_specs):
            raise InputMismatchError(f"{self.source} takes {len(self.input_specs)} input(s), got {len(inputs)}")
        for i, (x, (shape, dtype)) in enumerate(zip(inputs, self.input_specs)):
            if not isinstance(x, torch.Tensor):
                raise InputMismatchError(f"input {i} must be a tensor, got {type(x).__name__}")
            if x.dtype != dtype:
                raise InputMismatchError(f"input {i} must have dtype {dtype}, got {x.dtype}")
            if x.dim() != len(shape) or any(a > b for a, b in zip(x.shape, shape)):
                raise InputMismatchError(f"input {i} must have shape {shape}, got {tuple(x.shape)}")

    def run(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Execute with a list of inputs; the outputs as a list."""
        inputs = list(inputs)
        self._check_inputs(inputs)
        try:
            return list(self._method.execute(inputs))
        except RuntimeError as e:
            got = ", ".join(str(tuple(x.shape)) for x in inputs)
            want = ", ".join(str(s) for s, _ in self.input_specs)
            if got == want:
                raise RuntimeError(f"{self.source} failed to run: {e}") from e
            # smaller than planned: fine for a dynamic-shape program, an error for a static one
            raise InputMismatchError(
                f"{self.source} failed to run on inputs of shape {got} (expects {want}): {e}"
            ) from e

    def __call__(self, *inputs: torch.Tensor) -> Union[torch.Tensor, tuple[torch.Tensor, ...]]:
        outputs = self.run(inputs)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    @property
    def method_names(self) -> list[str]:
        """The program's methods, sorted."""
        return sorted(self._program.method_names)

    @property
    def size(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        ins = ", ".join(f"{str(d).replace('torch.', '')}{list(s)}" for s, d in self.input_specs)
        return f"Program({self.source}, {self.method}({ins}), {self.size} bytes)"


def load(
    path_or_bytes: Union[PathLike, bytes, bytearray, memoryview], method: str = "forward", *, isolate: bool = False
) -> Program:
    """Load a ``.pte`` from a path or from its bytes.

    ``isolate=True`` first loads it in a child process (see :mod:`pt2q.runtime.isolation`):
    use it for files you did not write, whose malformations may abort the process.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data, source = bytes(path_or_bytes), "<bytes>"
    else:
        path = Path(path_or_bytes)
        if not path.is_file():
            raise ProgramLoadError(f"no .pte file at {path}")
        data, source = path.read_bytes(), str(path)
    if isolate:
        check_in_child(verified_payload(data, source), method, source)
    return Program(data, method, source=source)
