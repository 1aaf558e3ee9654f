"""Min/max observers: qparams from the running (or moving-average) min and max, per tensor or per
channel. Names, arguments and numerics follow ``torchao.quantization.pt2e.observer``."""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from pt2q.numerics.errors import ChannelAxisError, UnsupportedQuantizationError
from pt2q.numerics.qparams import F32_EPS
from pt2q.numerics.qschemes import PER_CHANNEL_QSCHEMES, PER_TENSOR_QSCHEMES
from pt2q.observers.base import UniformQuantizationObserverBase
from pt2q.observers.merge_across_ranks import MergeSteps, merge_range

__all__ = [
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
]


class MinMaxObserver(UniformQuantizationObserverBase):
    """Qparams from the running min and max of everything observed (per tensor)."""

    supported_qschemes = PER_TENSOR_QSCHEMES
    min_val: Tensor
    max_val: Tensor

    def __init__(
        self,
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
        self.register_buffer("min_val", torch.tensor(float("inf"), **self._factory_kwargs))
        self.register_buffer("max_val", torch.tensor(float("-inf"), **self._factory_kwargs))

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        lo_t, hi_t = torch.aminmax(x_orig.detach())
        lo, hi = lo_t.item(), hi_t.item()
        self._check_finite(lo, hi)
        if lo < self.min_val.item():
            self.min_val.fill_(lo)
        if hi > self.max_val.item():
            self.max_val.fill_(hi)
        return x_orig

    @property
    def has_statistics(self) -> bool:
        return bool(self.min_val.item() <= self.max_val.item())

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        if not self.has_statistics:
            return self._uncalibrated_qparams()
        return self._calculate_qparams(self.min_val, self.max_val)

    def reset_min_max_vals(self) -> None:
        """Forget everything observed."""
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))

    def merge_across_ranks(self) -> MergeSteps:
        """Exact: the min and max over every rank's data."""
        return merge_range(self, "min", "max")

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Qparams from exponential moving averages of each batch's min and max.

    ``x_min <- x_min + averaging_constant * (min(X) - x_min)`` (same for max);
    the first batch sets them directly.
    """

    def __init__(
        self,
        averaging_constant: float = 0.01,
        dtype: torch.dtype = torch.quint8,
        qscheme: Optional[torch.qscheme] = None,
        reduce_range: bool = False,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        eps: float = F32_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if is_dynamic and averaging_constant != 1:
            raise UnsupportedQuantizationError(
                "MovingAverageMinMaxObserver supports dynamic quantization only with averaging_constant=1"
            )
        super().__init__(
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        self.averaging_constant = averaging_constant

    def merge_across_ranks(self) -> MergeSteps:
        """The mean of the ranks' moving averages. A moving average is linear in the batch
        statistics, so this is the moving average of the rank-averaged batch min/max, whether
        the ranks sync once or after every batch (if each ran as many batches)."""
        return merge_range(self, "mean", "mean")

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        lo_t, hi_t = torch.aminmax(x_orig.detach())
        self._check_finite(lo_t.item(), hi_t.item())
        if self.has_statistics:
            c = self.averaging_constant
            self.min_val.add_((lo_t - self.min_val).mul_(c))
            self.max_val.add_((hi_t - self.max_val).mul_(c))
        else:
            self.min_val.copy_(lo_t)
            self.max_val.copy_(hi_t)
        return x_orig


class PerChannelMinMaxObserver(UniformQuantizationObserverBase):
    """Qparams per channel (along ``ch_axis``) from running per-channel min and max."""

    supported_qschemes: tuple[torch.qscheme, ...] = PER_CHANNEL_QSCHEMES
    supports_dynamic = False
    min_val: Tensor
    max_val: Tensor

    def __init__(
        self,
        ch_axis: int = 0,
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
        self.ch_axis = ch_axis
        self.register_buffer("min_val", torch.tensor([], **self._factory_kwargs))
        self.register_buffer("max_val", torch.tensor([], **self._factory_kwargs))

    def _channel_aminmax(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-channel (min, max) of ``x``, checked to be finite."""
        if not -x.dim() <= self.ch_axis < x.dim():
            raise ChannelAxisError(
                f"{self._where()}: ch_axis={self.ch_axis} is out of range for an input of shape {tuple(x.shape)}"
            )
        y = x.detach()
        if self.ch_axis not in (0, -y.dim()):
            y = y.transpose(0, self.ch_axis)
        rows = y.reshape(y.shape[0], -1)
        lo, hi = rows.amin(1), rows.amax(1)  # two reductions: ~25x faster than aminmax(dim=1) on CPU
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            bad = int((~(torch.isfinite(lo) & torch.isfinite(hi))).nonzero()[0].item())
            raise ValueError(
                f"{self._where()}: calibration data must be finite, but channel {bad} has "
                f"min={lo[bad].item()}, max={hi[bad].item()} (NaN or Inf in the input)"
            )
        if self.min_val.numel() and lo.shape != self.min_val.shape:
            raise ValueError(
                f"{self._where()}: saw {lo.numel()} channels along ch_axis={self.ch_axis}, "
                f"but earlier inputs had {self.min_val.numel()}"
            )
        return lo, hi

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        lo, hi = self._channel_aminmax(x_orig)
        if self.min_val.numel() == 0:
            self.min_val.data = lo.detach().to(self.min_val.dtype)
            self.max_val.data = hi.detach().to(self.max_val.dtype)
        else:
            torch.minimum(lo, self.min_val, out=self.min_val)
            torch.maximum(hi, self.max_val, out=self.max_val)
        return x_orig

    @property
    def has_statistics(self) -> bool:
        return self.min_val.numel() > 0

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        if not self.has_statistics:
            return self._uncalibrated_qparams()
        return self._calculate_qparams(self.min_val, self.max_val)

    def reset_min_max_vals(self) -> None:
        """Forget everything observed."""
        self.min_val.data = self.min_val.new_empty(0)
        self.max_val.data = self.max_val.new_empty(0)

    def merge_across_ranks(self) -> MergeSteps:
        """Exact: the per-channel min and max over every rank's data."""
        return merge_range(self, "min", "max")

    def extra_repr(self) -> str:
        return f"ch_axis={self.ch_axis}, min_val={self.min_val}, max_val={self.max_val}"


class MovingAveragePerChannelMinMaxObserver(PerChannelMinMaxObserver):
    """Per-channel qparams from moving averages of per-channel min and max."""

    def __init__(
        self,
        averaging_constant: float = 0.01,
        ch_axis: int = 0,
        dtype: torch.dtype = torch.quint8,
        qscheme: Optional[torch.qscheme] = None,
        reduce_range: bool = False,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        eps: float = F32_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            ch_axis=ch_axis,
            dtype=dtype,
            qscheme=qscheme,
            reduce_range=reduce_range,
            quant_min=quant_min,
            quant_max=quant_max,
            eps=eps,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        self.averaging_constant = averaging_constant

    def merge_across_ranks(self) -> MergeSteps:
        """The mean of the ranks' moving averages (see ``MovingAverageMinMaxObserver``)."""
        return merge_range(self, "mean", "mean")

    def forward(self, x_orig: Tensor) -> Tensor:
        if x_orig.numel() == 0:
            return x_orig
        lo, hi = self._channel_aminmax(x_orig)
        if self.min_val.numel() == 0:
            self.min_val.data = lo.detach().to(self.min_val.dtype)
            self.max_val.data = hi.detach().to(self.max_val.dtype)
        else:
            c = self.averaging_constant
            self.min_val.add_((lo - self.min_val).mul_(c))
            self.max_val.add_((hi - self.max_val).mul_(c))
        return x_orig
