"""Quantization arithmetic shared by observers, fake quantizers and runtime checks.

Everything here is a pure function on tensors. The numerics follow
``torchao.quantization.pt2e`` (and ``quantized_decomposed`` for quantize /
dequantize) operation for operation, so results are bit-identical to theirs.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from pt2q.numerics.dtypes import storage_dtype
from pt2q.numerics.errors import ChannelAxisError

__all__ = ["F32_EPS", "choose_qparams", "quantize", "dequantize", "fake_quantize"]

F32_EPS = torch.finfo(torch.float32).eps
"""The default smallest scale observers return (float32's machine epsilon)."""


def choose_qparams(
    min_val: Tensor,
    max_val: Tensor,
    quant_min: int,
    quant_max: int,
    qscheme_symmetric: bool,
    eps: Union[float, Tensor],
    dtype: torch.dtype,
    *,
    float_qparams: bool = False,
    has_customized_qrange: bool = True,
) -> tuple[Tensor, Tensor]:
    """Scale and zero point covering ``[min_val, max_val]`` (0-d, or 1-d per channel).

    The range is first widened to include 0, so 0.0 is always exactly
    representable; scales are clamped to at least ``eps``. Shapes and dtypes
    follow torchao: scale is float32 of shape ``[1]`` (per tensor) or ``[C]``;
    the zero point is int32 (affine), int64 (symmetric) or float32
    (``float_qparams``, i.e. ``per_channel_affine_float_qparams``).
    ``has_customized_qrange=False`` selects torchao's default-range convention
    for unsigned symmetric zero points (128 rather than the range midpoint).
    """
    if not isinstance(eps, Tensor):
        eps = torch.tensor([eps], dtype=torch.float32, device=min_val.device)
    if float_qparams:
        scale = (max_val - min_val) / float(quant_max - quant_min)
        scale = torch.where(scale > eps, scale, torch.ones_like(scale))
        zero_point = -1 * min_val / scale
    else:
        zeros = torch.zeros_like(min_val)
        min_neg = torch.min(min_val, zeros)
        max_pos = torch.max(max_val, zeros)
        if qscheme_symmetric:
            scale = torch.max(-min_neg, max_pos) / (float(quant_max - quant_min) / 2)
            scale = torch.max(scale, eps)
            zp = _symmetric_zero_point(dtype, quant_min, quant_max, has_customized_qrange)
            zero_point = torch.full(min_val.shape, zp, dtype=torch.int64, device=min_val.device)
        else:
            scale = torch.max((max_pos - min_neg) / float(quant_max - quant_min), eps)
            zero_point = quant_min - torch.round(min_neg / scale).to(torch.int)
            zero_point = torch.clamp(zero_point, quant_min, quant_max)
    return _at_least_1d(scale), _at_least_1d(zero_point)


def _at_least_1d(t: Tensor) -> Tensor:
    return t.reshape(1) if t.dim() == 0 else t


def _symmetric_zero_point(dtype: torch.dtype, quant_min: int, quant_max: int, has_customized_qrange: bool) -> int:
    if dtype in (torch.quint8, torch.uint8):
        return (quant_min + quant_max) // 2 if has_customized_qrange else 128
    if dtype == torch.uint16:
        return 2**15
    return 0


def _channel_shape(x: Tensor, axis: int) -> list[int]:
    if not -x.dim() <= axis < x.dim():
        raise ChannelAxisError(f"axis {axis} is out of range for a {x.dim()}-d tensor")
    shape = [1] * x.dim()
    shape[axis] = -1
    return shape


def quantize(
    x: Tensor,
    scale: Union[float, Tensor],
    zero_point: Union[int, Tensor],
    quant_min: int,
    quant_max: int,
    dtype: torch.dtype,
    axis: Optional[int] = None,
) -> Tensor:
    """``clamp(round(x / scale) + zero_point)`` as ``dtype``; per channel along ``axis`` if given.

    Same arithmetic as ``quantized_decomposed.quantize_per_tensor`` / ``quantize_per_channel``.
    """
    x = x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x
    if axis is None:
        q = torch.round(x * (1.0 / float(scale))) + int(zero_point)
    else:
        shape = _channel_shape(x, axis)
        q = torch.round(x * (1.0 / torch.as_tensor(scale).reshape(shape))) + torch.as_tensor(zero_point).reshape(shape)
    return torch.clamp(q, quant_min, quant_max).to(storage_dtype(dtype))


def dequantize(
    q: Tensor,
    scale: Union[float, Tensor],
    zero_point: Union[int, Tensor],
    axis: Optional[int] = None,
    out_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(q - zero_point) * scale``; same arithmetic as ``quantized_decomposed.dequantize_per_*``."""
    if axis is None:
        return (q.to(out_dtype) - int(zero_point)) * float(scale)
    shape = _channel_shape(q, axis)
    return ((q - torch.as_tensor(zero_point).reshape(shape)) * torch.as_tensor(scale).reshape(shape)).to(out_dtype)


def fake_quantize(
    x: Tensor,
    scale: Union[float, Tensor],
    zero_point: Union[int, Tensor],
    quant_min: int,
    quant_max: int,
    axis: Optional[int] = None,
) -> Tensor:
    """Quantize then dequantize ``x``, with a straight-through gradient (torch's fake-quant kernels)."""
    if axis is not None:
        zp = torch.as_tensor(zero_point)
        zp = zp if zp.is_floating_point() else zp.to(torch.int32)
        return torch.fake_quantize_per_channel_affine(x, torch.as_tensor(scale), zp, axis, quant_min, quant_max)
    if isinstance(scale, Tensor):
        zp = zero_point if isinstance(zero_point, Tensor) else torch.tensor([zero_point])
        return torch.fake_quantize_per_tensor_affine(x, scale.float(), zp.to(torch.int32), quant_min, quant_max)
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero_point), quant_min, quant_max)
