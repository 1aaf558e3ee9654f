"""The quantized dtypes: what each is stored as and which integer range it holds.

One table for the whole package: observers take their default ``quant_min`` / ``quant_max`` from it,
specs their bounds (:func:`dtype_range`).
"""

from __future__ import annotations

from typing import Optional

import torch

from pt2q.numerics.errors import QuantizationArgumentError

__all__ = ["storage_dtype", "dtype_bits", "quant_range", "dtype_range"]

# dtype -> (storage dtype, default (min, max), reduced-range (min, max))
_INT8 = (torch.int8, (-128, 127), (-64, 63))
_UINT8 = (torch.uint8, (0, 255), (0, 127))
_INT32 = (torch.int32, (-(2**31), 2**31 - 1), (-(2**31), 2**31 - 1))
_DTYPES: dict[torch.dtype, tuple[torch.dtype, tuple[int, int], tuple[int, int]]] = {
    torch.int8: _INT8,
    torch.qint8: _INT8,
    torch.uint8: _UINT8,
    torch.quint8: _UINT8,
    torch.int32: _INT32,
    torch.qint32: _INT32,
    torch.int16: (torch.int16, (-(2**15), 2**15 - 1), (-(2**15), 2**15 - 1)),
    torch.uint16: (torch.uint16, (0, 2**16 - 1), (0, 2**16 - 1)),
    torch.quint4x2: (torch.uint8, (0, 15), (0, 15)),
}
for _f8 in (torch.float8_e4m3fn, torch.float8_e5m2):  # float8 "quantization": a scaled cast, as in torchao
    _F8_RANGE = (int(torch.finfo(_f8).min), int(torch.finfo(_f8).max))
    _DTYPES[_f8] = (_f8, _F8_RANGE, _F8_RANGE)


def _dtype_info(dtype: torch.dtype) -> tuple[torch.dtype, tuple[int, int], tuple[int, int]]:
    if dtype not in _DTYPES:
        supported = ", ".join(sorted(str(d) for d in _DTYPES))
        raise QuantizationArgumentError(f"unsupported quantized dtype {dtype}; expected one of {supported}")
    return _DTYPES[dtype]


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """The plain integer dtype holding values of ``dtype`` (``torch.qint8`` -> ``torch.int8``)."""
    return _dtype_info(dtype)[0]


def dtype_bits(dtype: torch.dtype) -> int:
    """Bit width of the quantized ``dtype`` (8 for int8/uint8/qint8/quint8)."""
    return torch.iinfo(storage_dtype(dtype)).bits


def quant_range(
    dtype: torch.dtype, quant_min: Optional[int] = None, quant_max: Optional[int] = None, reduce_range: bool = False
) -> tuple[int, int]:
    """The (quant_min, quant_max) an observer of ``dtype`` uses.

    Without a custom range this is the dtype's full range (halved with
    ``reduce_range``); a custom range must contain 0 and fit the dtype, and
    ``reduce_range`` halves it, as in torchao.
    """
    _, full, reduced = _dtype_info(dtype)
    if quant_min is None and quant_max is None:
        return reduced if reduce_range else full
    quant_min = full[0] if quant_min is None else int(quant_min)
    quant_max = full[1] if quant_max is None else int(quant_max)
    if not quant_min <= 0 <= quant_max or quant_min >= quant_max:
        raise QuantizationArgumentError(
            f"quant_min ({quant_min}) < quant_max ({quant_max}) must hold and the range must include 0"
        )
    if quant_min < full[0] or quant_max > full[1]:
        raise QuantizationArgumentError(
            f"quant range [{quant_min}, {quant_max}] does not fit {dtype} ([{full[0]}, {full[1]}])"
        )
    if reduce_range:
        return quant_min // 2, quant_max // 2
    return quant_min, quant_max


# the dtypes dtype_range reads from the table; torch's quantized dtypes (qint8, ...) are not among them
_PLAIN_DTYPES = (
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.uint16,
    torch.int32,
    torch.float8_e4m3fn,
    torch.float8_e5m2,
)


def dtype_range(dtype: torch.dtype) -> Optional[tuple[int, int]]:
    """The (min, max) a quantized dtype can hold: an integer dtype's range, float8's finite range (as
    ``quantized_decomposed``'s bounds), or None for other float dtypes."""
    if dtype in _PLAIN_DTYPES:
        return _DTYPES[dtype][1]
    if hasattr(torch, "uint4") and dtype in (torch.uint4,):
        return (0, 15)
    if not dtype.is_floating_point:
        info = torch.iinfo(dtype)
        return (info.min, info.max)
    return None
