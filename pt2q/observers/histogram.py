"""``HistogramObserver``: qparams minimizing the L2 quantization error of a running histogram.

Numerics follow ``torchao.quantization.pt2e.observer.HistogramObserver`` bit for bit; the arithmetic
lives in :mod:`pt2q.numerics.histograms`.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from pt2q.numerics.dtypes import dtype_bits
from pt2q.numerics.histograms import accumulate_histc_, search_histogram_range, upscale_histogram
from pt2q.numerics.qparams import F32_EPS
from pt2q.numerics.qschemes import PER_TENSOR_QSCHEMES
from pt2q.observers.base import UniformQuantizationObserverBase
from pt2q.observers.merge_across_ranks import MergeSteps, first_merge, merge_flags, remember_merge

__all__ = ["HistogramObserver"]


class HistogramObserver(UniformQuantizationObserverBase):
    """Qparams minimizing the L2 quantization error of a running histogram (per tensor).

    The histogram has ``bins`` bins over the running [min, max]; when a batch
    widens the range, the old histogram is re-binned onto the new range. At
    ``calculate_qparams`` outliers are clipped by torchao's non-linear search.
    ``forward`` produces exactly torchao's histogram, but a batch within the
    current range costs one ``aminmax`` plus a vectorized histogram.
    """

    supported_qschemes = PER_TENSOR_QSCHEMES
    supports_dynamic = False
    histogram: Tensor
    min_val: Tensor
    max_val: Tensor

    def __init__(
        self,
        bins: int = 2048,
        dtype: torch.dtype = torch.quint8,
        qscheme: Optional[torch.qscheme] = None,
        reduce_range: bool = False,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        factory_kwargs: Optional[dict[str, Any]] = None,
        eps: float = F32_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(dtype, qscheme, reduce_range, quant_min, quant_max, factory_kwargs, eps, is_dynamic, **kwargs)
        self.bins = bins
        self.register_buffer("histogram", torch.zeros(bins, **self._factory_kwargs))
        self.register_buffer("min_val", torch.tensor(float("inf"), **self._factory_kwargs))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **self._factory_kwargs))
        self.dst_nbins = 2 ** dtype_bits(dtype)
        self.upsample_rate = 16  # sub-bins per bin when re-binning onto a wider range

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        x = x_orig.detach()
        lo_t, hi_t = torch.aminmax(x)
        lo, hi = lo_t.item(), hi_t.item()
        self._check_finite(lo, hi)
        cur_lo, cur_hi = self.min_val.item(), self.max_val.item()
        if cur_lo == math.inf:  # first batch
            self.min_val.fill_(lo)
            self.max_val.fill_(hi)
            accumulate_histc_(self.histogram.zero_(), x, lo, hi)
        elif lo >= cur_lo and hi <= cur_hi:
            accumulate_histc_(self.histogram, x, cur_lo, cur_hi)
        else:
            new_lo, new_hi = min(lo, cur_lo), max(hi, cur_hi)
            self.histogram.copy_(accumulate_histc_(self._histogram_on(new_lo, new_hi), x, new_lo, new_hi))
            self.min_val.fill_(new_lo)
            self.max_val.fill_(new_hi)
        return x_orig

    def _histogram_on(self, new_lo: float, new_hi: float) -> Tensor:
        """The histogram re-binned onto ``[new_lo, new_hi]``, a range containing the current one."""
        if (new_lo, new_hi) == (self.min_val.item(), self.max_val.item()):
            return self.histogram.clone()
        if self.min_val.item() == self.max_val.item():  # all mass so far at one point
            return torch.histc(self.min_val, self.bins, new_lo, new_hi) * self.histogram.sum()
        return upscale_histogram(self.histogram, self.min_val, self.max_val, new_lo, new_hi, self.upsample_rate)

    def merge_across_ranks(self) -> MergeSteps:
        """The common range is the min and max over all ranks (exact); each rank's histogram is
        re-binned onto it as ``forward`` does when a batch widens the range, and the histograms
        are summed. Once, after calibration (see ``merge_flags``)."""
        count = self.histogram.sum(dtype=torch.float64).item()
        lo, hi, flags = yield [(self.min_val, "min"), (self.max_val, "max"), merge_flags(self, count)]
        if not first_merge(self, flags):
            return
        (total,) = yield [(self._histogram_on(lo.item(), hi.item()), "sum")]
        self.histogram.copy_(total)
        self.min_val.copy_(lo)
        self.max_val.copy_(hi)
        remember_merge(self, self.histogram.sum(dtype=torch.float64).item())

    def reset_histogram(self, x: Tensor, min_val: Tensor, max_val: Tensor) -> None:
        """Start over from ``x`` alone, binned over ``[min_val, max_val]`` (scalars)."""
        if min_val.numel() != 1 or max_val.numel() != 1:
            raise ValueError(f"{self._where()}: histogram min/max values must be scalars")
        self.min_val.data = min_val.detach().to(self.min_val.dtype)
        self.max_val.data = max_val.detach().to(self.max_val.dtype)
        self.histogram.copy_(torch.histc(x.detach().float(), self.bins, min_val.item(), max_val.item()))

    def reset_min_max_vals(self) -> None:
        """Forget everything observed."""
        self.histogram.zero_()
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))

    @property
    def has_statistics(self) -> bool:
        return self.min_val.item() != math.inf

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        if not self.has_statistics:
            return self._uncalibrated_qparams()
        new_min, new_max = search_histogram_range(self.histogram, self.min_val, self.max_val, self.dst_nbins)
        return self._calculate_qparams(new_min, new_max)

    def extra_repr(self) -> str:
        return f"bins={self.bins}, min_val={self.min_val}, max_val={self.max_val}"
