"""Affine quantization arithmetic over blocks: choose qparams, quantize, dequantize, fake-quantize.

A *block size* (see :mod:`pt2q.numerics.granularity`) says which elements share one scale and
zero point. The functions here compute what ``torch.ops.torchao.choose_qparams_affine /
quantize_affine / dequantize_affine`` compute (the ops ExecuTorch's XNNPACK delegate
consumes), bit for bit, as plain differentiable-where-needed torch code: observers,
fake quantizers and GPTQ use them; converted graphs call the ops themselves.

Enums and argument names follow ``torchao.quantization.pt2e._affine_quantization``.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum, auto
from typing import Optional

import torch
from torch import Tensor

__all__ = [
    "MappingType",
    "ZeroPointDomain",
    "TorchAODType",
    "qvalue_bounds",
    "get_and_check_qmin_qmax",
    "reduction_params",
    "choose_qparams_affine_with_min_max",
    "quantize_affine",
    "dequantize_affine",
    "fake_quantize_affine",
]


class _EnumByName(Enum):
    """An enum whose members equal the same-named members of an enum of the same class name: torchao's
    ``MappingType.SYMMETRIC == pt2q.MappingType.SYMMETRIC`` (both ways round; the hash is the member's
    name, as Enum's own), so either library's functions accept the other's members."""

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Enum) and type(other).__name__ == type(self).__name__:
            return self.name == other.name
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._name_)


class MappingType(_EnumByName):
    """How a float range maps onto the integer range.

    ``SYMMETRIC``: ``[-a, a]`` with ``a = max(|min|, |max|)`` onto the full integer range;
    ``SYMMETRIC_NO_CLIPPING_ERR``: the scale is the larger of ``min / quant_min`` and
    ``max / quant_max``, so no value is clipped; ``ASYMMETRIC``: ``[min, max]`` onto the
    integer range, with a zero point.
    """

    SYMMETRIC = auto()
    SYMMETRIC_NO_CLIPPING_ERR = auto()
    ASYMMETRIC = auto()


class ZeroPointDomain(_EnumByName):
    """Where the zero point lives: ``INT`` (added to the rounded value), ``FLOAT`` (subtracted
    from the float value before rounding) or ``NONE`` (no zero point)."""

    INT = auto()
    FLOAT = auto()
    NONE = auto()


class TorchAODType(Enum):
    """Sub-byte signed integer types, as torchao names them (``torch.int1`` .. ``torch.int7`` today)."""

    INT1 = auto()
    INT2 = auto()
    INT3 = auto()
    INT4 = auto()
    INT5 = auto()
    INT6 = auto()
    INT7 = auto()


_SUB_BYTE_UINT = {getattr(torch, f"uint{b}"): (0, 2**b - 1) for b in range(1, 8)}
_QVALUE_BOUNDS: dict[torch.dtype, tuple[int, int]] = {
    torch.uint8: (0, 255),
    torch.int8: (-128, 127),
    torch.int16: (-(2**15), 2**15 - 1),
    torch.int32: (-(2**31), 2**31 - 1),
    **_SUB_BYTE_UINT,
}
_FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16)


def qvalue_bounds(dtype: torch.dtype) -> tuple[int, int]:
    """The integer range a target dtype holds (sub-byte ``torch.uintN`` are stored in uint8)."""
    if dtype not in _QVALUE_BOUNDS:
        raise ValueError(
            f"unsupported affine target dtype {dtype}; use one of {sorted(map(str, _QVALUE_BOUNDS))}. "
            "For signed low-bit weights use torch.int8 with quant_min/quant_max, e.g. (-8, 7) for 4 bits: "
            "the form ExecuTorch's XNNPACK delegate runs"
        )
    return _QVALUE_BOUNDS[dtype]


def get_and_check_qmin_qmax(dtype: torch.dtype, quant_min: Optional[int], quant_max: Optional[int]) -> tuple[int, int]:
    """``quant_min`` / ``quant_max``, defaulting to the dtype's range and checked against it."""
    lo, hi = qvalue_bounds(dtype)
    quant_min = lo if quant_min is None else quant_min
    quant_max = hi if quant_max is None else quant_max
    if not lo <= quant_min <= quant_max <= hi:
        raise ValueError(
            f"quant_min={quant_min}, quant_max={quant_max} must satisfy "
            f"{lo} <= quant_min <= quant_max <= {hi} for {dtype}"
        )
    return int(quant_min), int(quant_max)


def reduction_params(block_size: Sequence[int], input_size: Sequence[int]) -> tuple[list[int], list[int]]:
    """The view that puts each block in its own dimensions, and the dimensions to reduce.

    A dimension split into blocks (``1 < block < size``) becomes ``(size // block, block)``
    and the second one is reduced; a dimension shared whole (``block == size > 1``) is
    reduced; a dimension with ``block == 1`` is kept.
    """
    if len(block_size) != len(input_size):
        raise ValueError(f"block size {tuple(block_size)} does not have the rank of the tensor {tuple(input_size)}")
    shape: list[int] = []
    dims: list[int] = []
    for size, block in zip(input_size, block_size):
        if block != size and block > 1:
            if size % block:
                raise ValueError(f"dimension of size {size} is not divisible by block size {block}")
            shape += [size // block, block]
            dims.append(len(shape) - 1)
        else:
            shape.append(size)
            if block != 1:
                dims.append(len(shape) - 1)
    return shape, dims


def choose_qparams_affine_with_min_max(
    min_val: Tensor,
    max_val: Tensor,
    mapping_type: MappingType,
    block_size: Sequence[int],
    target_dtype: torch.dtype,
    quant_min: Optional[int] = None,
    quant_max: Optional[int] = None,
    eps: Optional[float] = None,
    scale_dtype: Optional[torch.dtype] = None,
    zero_point_dtype: Optional[torch.dtype] = None,
    preserve_zero: bool = True,
    zero_point_domain: Optional[ZeroPointDomain] = ZeroPointDomain.INT,
) -> tuple[Tensor, Optional[Tensor]]:
    """Scale and zero point of each block from its min and max (already reduced per block).

    ``eps`` (default: the machine epsilon of ``min_val``'s dtype) is the smallest scale;
    ``scale_dtype`` / ``zero_point_dtype`` default to ``min_val``'s dtype. With
    ``preserve_zero`` the range is widened to include 0, so 0.0 is exactly representable.
    ``block_size`` is unused: the statistics are already per block.
    """
    del block_size
    quant_min, quant_max = get_and_check_qmin_qmax(target_dtype, quant_min, quant_max)
    if min_val.dtype != max_val.dtype:
        raise ValueError(f"min_val ({min_val.dtype}) and max_val ({max_val.dtype}) must have the same dtype")
    scale_dtype = min_val.dtype if scale_dtype is None else scale_dtype
    zero_point_dtype = min_val.dtype if zero_point_dtype is None else zero_point_dtype
    eps = torch.finfo(min_val.dtype).eps if eps is None else eps
    if preserve_zero:
        lo, hi = torch.clamp(min_val, max=0.0), torch.clamp(max_val, min=0.0)
    else:
        lo, hi = min_val, max_val
    zero_point: Optional[Tensor]
    if mapping_type in (MappingType.SYMMETRIC, MappingType.SYMMETRIC_NO_CLIPPING_ERR):
        if not preserve_zero:
            raise ValueError("symmetric quantization needs preserve_zero=True")
        if zero_point_domain not in (None, ZeroPointDomain.INT):
            raise ValueError(f"symmetric quantization needs zero_point_domain INT, got {zero_point_domain}")
        if mapping_type == MappingType.SYMMETRIC:
            scale = torch.max(-lo, hi) / (float(quant_max - quant_min) / 2)
        else:
            below, above = lo / float(quant_min), hi / float(quant_max)
            scale = torch.where(below > above, below, above)
        scale = torch.clamp(scale, min=eps)
        zero_point = torch.full_like(scale, int((quant_max + quant_min + 1) / 2))
    elif mapping_type == MappingType.ASYMMETRIC:
        scale = torch.clamp((hi - lo) / float(quant_max - quant_min), min=eps)
        if zero_point_domain == ZeroPointDomain.NONE:
            zero_point = None
        elif preserve_zero:
            zero_point = torch.clamp(quant_min - torch.round(lo / scale), quant_min, quant_max)
        else:
            if zero_point_domain != ZeroPointDomain.FLOAT:
                raise ValueError("preserve_zero=False needs zero_point_domain FLOAT")
            zero_point = lo + scale * ((quant_max + quant_min + 1) / 2)
    else:
        raise ValueError(f"unsupported mapping type {mapping_type!r}")
    if zero_point is not None:
        zero_point = zero_point.to(zero_point_dtype)
    return scale.to(scale_dtype), zero_point


def _blocked(
    x: Tensor, block_size: Sequence[int], scale: Tensor, zero_point: Optional[Tensor]
) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """``x`` viewed with one dimension per block index and block element; scale and zero point viewed to broadcast."""
    shape, dims = reduction_params(block_size, x.shape)
    param_shape = [1 if i in dims else s for i, s in enumerate(shape)]
    return x.view(shape), scale.view(param_shape), None if zero_point is None else zero_point.view(param_shape)


class _RoundSTE(torch.autograd.Function):
    """round() whose gradient passes straight through."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def _quantize_values(
    x: Tensor,
    scale: Tensor,
    zero_point: Optional[Tensor],
    quant_min: int,
    quant_max: int,
    zero_point_domain: Optional[ZeroPointDomain],
    round_fn=torch.round,
) -> Tensor:
    if zero_point_domain == ZeroPointDomain.INT:
        shifted = round_fn(x * (1.0 / scale))
        if zero_point is not None:
            shifted = shifted + zero_point
        return torch.clamp(shifted, quant_min, quant_max)
    if zero_point_domain == ZeroPointDomain.NONE:
        if zero_point is not None:
            raise ValueError("zero_point must be None when zero_point_domain is NONE")
        return torch.clamp(round_fn(x * (1.0 / scale)), quant_min, quant_max)
    if zero_point_domain == ZeroPointDomain.FLOAT:
        assert zero_point is not None, "zero_point_domain FLOAT needs a zero point"
        low = zero_point - scale * ((quant_max + quant_min + 1) / 2)
        return torch.clamp(round_fn((x - low) / scale), quant_min, quant_max)
    raise ValueError(f"unsupported zero_point_domain {zero_point_domain!r}")


def _dequantize_values(
    q: Tensor,
    scale: Tensor,
    zero_point: Optional[Tensor],
    quant_min: int,
    quant_max: int,
    zero_point_domain: Optional[ZeroPointDomain],
    output_dtype: torch.dtype,
) -> Tensor:
    if zero_point_domain == ZeroPointDomain.FLOAT:
        centred = (q - (quant_max + quant_min + 1) / 2).to(output_dtype) * scale
        return centred if zero_point is None else centred + zero_point
    centred = q.to(output_dtype)
    if zero_point is not None and zero_point_domain == ZeroPointDomain.INT:
        centred = centred - zero_point.to(output_dtype)
    return centred * scale


def quantize_affine(
    input: Tensor,
    block_size: Sequence[int],
    scale: Tensor,
    zero_point: Optional[Tensor],
    output_dtype: torch.dtype,
    quant_min: Optional[int] = None,
    quant_max: Optional[int] = None,
    zero_point_domain: Optional[ZeroPointDomain] = ZeroPointDomain.INT,
) -> Tensor:
    """``clamp(round(x * (1 / scale)) + zero_point, quant_min, quant_max)`` per block, as ``output_dtype``
    (sub-byte unsigned dtypes are stored as uint8)."""
    if input.dtype not in _FLOAT_INPUTS:
        raise ValueError(f"quantize_affine takes a float32/float16/bfloat16 tensor, got {input.dtype}")
    quant_min, quant_max = get_and_check_qmin_qmax(output_dtype, quant_min, quant_max)
    blocks, scale_b, zp_b = _blocked(input, block_size, scale, zero_point)
    q = _quantize_values(blocks, scale_b, zp_b, quant_min, quant_max, zero_point_domain)
    storage = torch.uint8 if output_dtype in _SUB_BYTE_UINT else output_dtype
    return q.view(input.shape).to(storage)


def dequantize_affine(
    input: Tensor,
    block_size: Sequence[int],
    scale: Tensor,
    zero_point: Optional[Tensor],
    input_dtype: torch.dtype,
    quant_min: Optional[int] = None,
    quant_max: Optional[int] = None,
    zero_point_domain: Optional[ZeroPointDomain] = ZeroPointDomain.INT,
    *,
    output_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(q - zero_point) * scale`` per block, as ``output_dtype``."""
    if input_dtype not in _SUB_BYTE_UINT and input.dtype != input_dtype:
        raise ValueError(f"dequantize_affine expected a {input_dtype} tensor, got {input.dtype}")
    if output_dtype not in _FLOAT_INPUTS:
        raise ValueError(f"dequantize_affine produces float32/float16/bfloat16, not {output_dtype}")
    quant_min, quant_max = get_and_check_qmin_qmax(input_dtype, quant_min, quant_max)
    blocks, scale_b, zp_b = _blocked(input, block_size, scale, zero_point)
    out = _dequantize_values(blocks, scale_b, zp_b, quant_min, quant_max, zero_point_domain, output_dtype)
    return out.view(input.shape).to(output_dtype)


def fake_quantize_affine(
    input: Tensor,
    block_size: Sequence[int],
    scale: Tensor,
    zero_point: Optional[Tensor],
    quant_dtype: torch.dtype,
    quant_min: Optional[int] = None,
    quant_max: Optional[int] = None,
    zero_point_domain: Optional[ZeroPointDomain] = ZeroPointDomain.INT,
) -> Tensor:
    """Quantize then dequantize in ``input``'s dtype; the gradient passes straight through rounding
    and is zero where the value was clipped (for training, QAT)."""
    quant_min, quant_max = get_and_check_qmin_qmax(quant_dtype, quant_min, quant_max)
    blocks, scale_b, zp_b = _blocked(input, block_size, scale, zero_point)
    q = _quantize_values(blocks, scale_b, zp_b, quant_min, quant_max, zero_point_domain, round_fn=_RoundSTE.apply)
    out = _dequantize_values(q, scale_b, zp_b, quant_min, quant_max, zero_point_domain, input.dtype)
    return out.view(input.shape)
