"""Open a method of ``.pte`` bytes with ExecuTorch's runtime: the pieces :mod:`pt2q.runtime.program`
and :mod:`pt2q.runtime.isolation` share (the runtime, header and digest checks, tensor specs).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from pt2q.io.digest import DigestMismatchError, verify_trailer
from pt2q.io.quiet import quiet

__all__ = [
    "ProgramLoadError",
    "executorch_runtime",
    "open_method",
    "verified_payload",
    "check_pte_header",
    "tensor_spec",
]

# ExecuTorch ScalarType codes (the same numbering as c10::ScalarType)
_SCALAR_TYPES = {
    0: torch.uint8,
    1: torch.int8,
    2: torch.int16,
    3: torch.int32,
    4: torch.int64,
    5: torch.float16,
    6: torch.float32,
    7: torch.float64,
    11: torch.bool,
    15: torch.bfloat16,
}
_FILE_IDENTIFIER_AT = slice(4, 8)
_EXTENDED_HEADER_AT = 8


class ProgramLoadError(RuntimeError):
    """The bytes are not a loadable ExecuTorch program (corrupt, truncated, or missing kernels)."""


@functools.lru_cache(maxsize=1)
def executorch_runtime() -> Any:
    """ExecuTorch's runtime (imported once), with the quantized kernel library registered."""
    with quiet():  # importing ExecuTorch imports torchao, which logs its missing CUDA libraries
        import executorch.kernels.quantized  # noqa: F401  registers quantized_decomposed::* kernels
        from executorch.runtime import Runtime

        return Runtime.get()


def _said(native_line: Callable[[], str]) -> str:
    line = native_line()
    return f" [ExecuTorch: {line}]" if line else ""


def open_method(data: bytes, method: str, source: str, native_line: Callable[[], str] = str) -> tuple[Any, Any]:
    """ExecuTorch's (program, method) for verified ``.pte`` bytes, or a :class:`ProgramLoadError`.

    ``native_line`` returns the last line ExecuTorch logged, for the error message.
    """
    from executorch.runtime import Verification

    runtime = executorch_runtime()
    try:
        program = runtime.load_program(data, verification=Verification.InternalConsistency)
    except (RuntimeError, ValueError) as e:  # ValueError: a corrupt method name is not UTF-8
        raise ProgramLoadError(
            f"ExecuTorch could not load {source}: {e}{_said(native_line)} (corrupt or incompatible .pte)"
        ) from e
    if method not in program.method_names:
        raise ProgramLoadError(f"{source} has no method {method!r}; it has {sorted(program.method_names)}")
    try:
        return program, program.load_method(method)
    except RuntimeError as e:
        raise ProgramLoadError(
            f"ExecuTorch could not initialise method {method!r} of {source}: {e}{_said(native_line)}. A delegate "
            "rejected its blob or a kernel is missing (corrupt .pte, or a runtime without the ops it needs)."
        ) from e


def verified_payload(data: bytes, source: str = "<bytes>") -> bytes:
    """The program bytes of ``data``: its pt2q digest checked and stripped, its header checked."""
    try:
        data = verify_trailer(data, source).payload
    except DigestMismatchError as e:
        raise ProgramLoadError(str(e)) from e
    check_pte_header(data)
    return data


def check_pte_header(data: bytes) -> None:
    """Raise :class:`ProgramLoadError` unless ``data`` starts like a complete ``.pte``.

    Checks the flatbuffer file identifier (``ET`` + version) and, when present, that
    the file is as long as its extended header (``eh00``) says it is.
    """
    if len(data) < 8 or data[_FILE_IDENTIFIER_AT][:2] != b"ET":
        raise ProgramLoadError(
            f"not an ExecuTorch program: expected the file identifier 'ET..' at bytes 4-8, "
            f"got {bytes(data[_FILE_IDENTIFIER_AT])!r} ({len(data)} bytes in all)"
        )
    header = data[_EXTENDED_HEADER_AT:]
    if header[:4] != b"eh00" or len(header) < 24:
        return
    length = int.from_bytes(header[4:8], "little")
    program_size = int.from_bytes(header[8:16], "little")
    expected = program_size
    if length >= 32 and len(header) >= 32:
        segment_base, segment_size = int.from_bytes(header[16:24], "little"), int.from_bytes(header[24:32], "little")
        if segment_size:
            expected = max(expected, segment_base + segment_size)
    if len(data) < expected:
        raise ProgramLoadError(f"truncated ExecuTorch program: its header says {expected} bytes, got {len(data)}")


def tensor_spec(info: Any) -> tuple[tuple[int, ...], torch.dtype]:
    """The (shape, dtype) of an ExecuTorch tensor metadata record."""
    return tuple(info.sizes()), _SCALAR_TYPES.get(info.dtype(), torch.float32)
