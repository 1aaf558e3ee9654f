"""Histogram arithmetic of ``HistogramObserver``: accumulating, re-binning, and torchao's search for
the range with the smallest L2 quantization error, bit-identical to torchao's and vectorized."""

from __future__ import annotations

import bisect
import itertools
import math
import struct
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["accumulate_histc_", "upscale_histogram", "search_histogram_range"]

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
