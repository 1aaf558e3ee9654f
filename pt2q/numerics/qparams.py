"""Quantization arithmetic shared by observers, fake quantizers and runtime checks.

Everything here is a pure function on tensors. The numerics follow
``torchao.quantization.pt2e`` (and ``quantized_decomposed`` for quantize /
dequantize) operation for operation, so results are bit-identical to theirs.
"""

from __future__ import annotations

import bisect
import itertools
import math
import struct
from collections.abc import Iterator
from typing import Optional, Union

import torch
from torch import Tensor

__all__ = [
    "QuantizationArgumentError",
    "UnsupportedQuantizationError",
    "ChannelAxisError",
    "PER_TENSOR_QSCHEMES",
    "PER_CHANNEL_QSCHEMES",
    "SYMMETRIC_QSCHEMES",
    "storage_dtype",
    "dtype_bits",
    "quant_range",
    "choose_qparams",
    "quantize",
    "dequantize",
    "fake_quantize",
    "accumulate_histc_",
    "upscale_histogram",
    "search_histogram_range",
]


class QuantizationArgumentError(ValueError, AssertionError):
    """An invalid range, dtype, qscheme or min/max given to an observer or a quantization helper.

    Both a ``ValueError`` and the ``AssertionError`` torchao raises for the same mistakes.
    """


class UnsupportedQuantizationError(ValueError, NotImplementedError):
    """A combination an observer does not support (a qscheme, dynamic quantization, reduce_range).

    Both a ``ValueError`` and the ``NotImplementedError`` torchao raises for the same combinations.
    """


class ChannelAxisError(ValueError, IndexError):
    """A channel axis outside the tensor's dimensions (also the ``IndexError`` torchao raises there)."""


PER_TENSOR_QSCHEMES = (torch.per_tensor_affine, torch.per_tensor_symmetric)
PER_CHANNEL_QSCHEMES = (torch.per_channel_affine, torch.per_channel_symmetric, torch.per_channel_affine_float_qparams)
SYMMETRIC_QSCHEMES = (torch.per_tensor_symmetric, torch.per_channel_symmetric)

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


# ---------------------------------------------------------------------------------------------
# Histograms (HistogramObserver)

_F32_MAX = float(torch.finfo(torch.float32).max)
_F32_TINY = float(torch.finfo(torch.float32).tiny)
# float32 histc counts stay exact integers while every bin holds fewer than 2**24 elements.
_EXACT_COUNTS = 1 << 24
# Below this size torch.histc's fixed cost beats the several ops of the bincount path.
_SMALL = 2048


def _round_f32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def accumulate_histc_(hist: Tensor, x: Tensor, lo: float, hi: float) -> Tensor:
    """``hist += torch.histc(x, hist.numel(), lo, hi)`` for ``x`` within ``[lo, hi]``, bit-exactly.

    torch.histc puts an element in bin ``trunc((x - lo) * bins / (hi - lo))`` (in the
    input's precision; ``x == hi`` goes to the last bin) with a scalar loop. For large
    float32 inputs the same float32 arithmetic is done here with vectorized ops and a
    ``bincount``, which is several times faster. Other cases call torch.histc.
    """
    bins = hist.numel()
    span = hi - lo
    n = x.numel()
    if x.dtype != torch.float32 or not 0.0 < span < _F32_MAX / bins or n < _SMALL or n >= _EXACT_COUNTS:
        return hist.add_(torch.histc(x, bins, lo, hi))
    width = _round_f32(span)  # hi - lo in float32, as the kernel computes it
    q = torch.sub(x, lo)
    step = width / bins
    if bins & (bins - 1) == 0 and step >= _F32_TINY:
        q.div_(step)  # (x - lo) * bins / width == (x - lo) / (width / bins): scaling by 2**k is exact
    else:
        q.mul_(bins).div_(width)
    idx = q.clamp_max_(bins - 1).to(torch.int16 if bins <= 2**15 else torch.int32)  # x == hi: last bin
    return hist.add_(torch.bincount(idx.reshape(-1), minlength=bins))


def upscale_histogram(
    hist: Tensor, orig_min: Tensor, orig_max: Tensor, new_min: float, new_max: float, upsample_rate: int
) -> Tensor:
    """Re-bin ``hist`` (over ``[orig_min, orig_max]``) onto as many bins over ``[new_min, new_max]``.

    Each bin is split into ``upsample_rate`` pieces whose mass moves to the new bin
    holding the piece's midpoint (torchao's ``_upscale_histogram``).
    """
    bins = hist.numel()
    fine = bins * upsample_rate
    pieces = hist.repeat_interleave(upsample_rate) / upsample_rate
    piece_width = (orig_max - orig_min) / fine
    mids = torch.linspace(orig_min, orig_max, fine + 1, device=hist.device)[:-1] + 0.5 * piece_width
    edges = torch.linspace(new_min, new_max, bins + 1, device=hist.device)
    target = (torch.bucketize(mids, edges, right=True) - 1).clamp_(0, bins - 1)
    return torch.bincount(target, weights=pieces, minlength=bins)


def search_histogram_range(hist: Tensor, min_val: Tensor, max_val: Tensor, dst_nbins: int) -> tuple[Tensor, Tensor]:
    """The sub-range of ``hist`` minimizing the L2 quantization error, as (new_min, new_max).

    Same result as torchao's ``HistogramObserver._non_linear_param_search``: the
    quantile bounds move inward in steps of 1e-5 while the error of quantizing the
    histogram onto ``dst_nbins`` levels over the candidate range does not grow.
    Candidate ranges are generated with index arithmetic and their errors
    evaluated in vectorized batches.
    """
    bins = hist.numel()
    bin_width = (max_val - min_val) / bins
    total = torch.sum(hist).item()
    csum = torch.cumsum(hist, dim=0)
    candidates = _candidate_ranges(csum, total, bins)
    src_width = (max_val.item() - min_val.item()) / bins
    start, end = 0, bins - 1
    norm_min = math.inf
    chunk = 8
    while batch := list(itertools.islice(candidates, chunk)):
        for (s, e), norm in zip(batch, _l2_errors(hist, src_width, dst_nbins, batch)):
            if norm > norm_min:
                return min_val + bin_width * start, min_val + bin_width * (end + 1)
            norm_min, start, end = norm, s, e
        chunk = min(chunk * 2, 256)
    return min_val + bin_width * start, min_val + bin_width * (end + 1)


_QUANTILE_STEP = 1e-5
_BLOCK = 512


class _BoundScan:
    """A quantile bound stepped by ``step`` (summed one step at a time, as torchao's loop
    does) and, per step, the bin where torchao's linear scan for that bound stops.

    The scan compares float32 cumulative counts with float32(bound * total), so the
    stop bin is a ``searchsorted``; values are computed in blocks, as far as needed.
    """

    def __init__(self, csum: Tensor, total: float, first: float, step: float, upper: bool) -> None:
        self.csum, self.total, self.step, self.upper = csum, total, step, upper
        self.bound: list[float] = []
        self.bin: list[int] = []
        self._next = first

    def grow(self) -> None:
        block = torch.full((_BLOCK,), self.step, dtype=torch.float64)
        block[0] = self._next
        bound = torch.cumsum(block, 0)
        found = torch.searchsorted(self.csum, (bound * self.total).float(), right=self.upper)
        self.bound += bound.tolist()
        self.bin += (found - 1 if self.upper else found).tolist()
        self._next = self.bound[-1] + self.step

    def ensure(self, index: int) -> None:
        while index >= len(self.bound):
            self.grow()


def _candidate_ranges(csum: Tensor, total: float, bins: int) -> Iterator[tuple[int, int]]:
    """(start_bin, end_bin) pairs torchao's search evaluates, assuming each is accepted."""
    lower = _BoundScan(csum, total, 0.0, _QUANTILE_STEP, upper=False)  # alpha: 0, 1e-5, ...
    upper = _BoundScan(csum, total, 1.0, -_QUANTILE_STEP, upper=True)  # beta: 1, 1 - 1e-5, ...
    a = b = 0
    start, end = 0, bins - 1
    while True:
        lower.ensure(a + 1)
        upper.ensure(b + 1)
        if not lower.bound[a] < upper.bound[b]:
            return
        left = min(max(lower.bin[a + 1], start), end)
        right = min(max(upper.bin[b + 1], start), end)
        if left - start > end - right:
            start, a = left, a + 1
        elif right < end:
            end, b = right, b + 1
        elif start == end:  # nothing can move any more
            return
        else:  # (left == start) nothing moves until the upper bound's bin drops below the end bin
            b = _first_below(upper, end, b + 1, lower.bound[a]) - 1
            continue
        yield start, end


def _first_below(upper: _BoundScan, end: int, lo: int, alpha: float) -> int:
    """First step index >= lo whose upper-bound bin is < end (or one past the loop's last step)."""
    while True:
        j = bisect.bisect_right(upper.bin, -end, lo=lo, key=lambda v: -v)  # bins do not increase
        if j < len(upper.bin) or upper.bound[-1] <= alpha:
            return j
        lo = len(upper.bin)
        upper.grow()


def _l2_errors(hist: Tensor, src_width: float, dst_nbins: int, ranges: list[tuple[int, int]]) -> list[float]:
    """torchao's ``_compute_quantization_error`` for each (start_bin, end_bin), batched over rows."""
    bins = hist.numel()
    starts = torch.tensor([s for s, _ in ranges]).unsqueeze(1)
    dst = [src_width * (e - s + 1) / dst_nbins for s, e in ranges]
    dst_w = torch.tensor(dst, dtype=torch.float32).unsqueeze(1)
    half = torch.tensor([d / 2 for d in dst], dtype=torch.float32).unsqueeze(1)
    neg_half = torch.tensor([-d / 2 for d in dst], dtype=torch.float32).unsqueeze(1)

    src_begin = (torch.arange(bins) - starts) * src_width
    src_end = src_begin + src_width
    dst_of_begin = torch.div(src_begin, dst_w, rounding_mode="floor").clamp(0, dst_nbins - 1)
    dst_of_end = torch.div(src_end, dst_w, rounding_mode="floor").clamp(0, dst_nbins - 1)
    density = hist / src_width

    def cube_diff(end: Tensor, begin: Tensor) -> Tensor:  # integral of x^2 from begin to end
        return (end * end * end - begin * begin * begin) / 3

    norm = torch.zeros(len(ranges), bins)
    norm += density * cube_diff(half, src_begin - (dst_of_begin + 0.5) * dst_w)
    norm += (dst_of_end - dst_of_begin - 1) * (density * cube_diff(half, neg_half))
    norm += density * cube_diff(src_end - (dst_of_end * dst_w + half), neg_half)
    sums = norm.sum(dim=1).tolist()
    return [0.0 if d == 0.0 else n for d, n in zip(dst, sums)]
