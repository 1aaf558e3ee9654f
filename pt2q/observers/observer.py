"""Observers: modules that record statistics of the tensors flowing through them.

``prepare_pt2e`` inserts one after every tensor to quantize; ``convert_pt2e`` asks
each for ``calculate_qparams()``. Names, arguments and numerics follow
``torchao.quantization.pt2e.observer`` (same scales and zero points, bit for bit);
pt2q adds ``has_statistics``, ``target_name`` (used in error messages), errors on
non-finite calibration data, and a much cheaper ``forward``.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor, nn

from pt2q.numerics.affine_primitives import MappingType, TorchAODType, ZeroPointDomain
from pt2q.numerics.granularity import (
    Granularity,
    PerAxis,
    PerBlock,
    PerGroup,
    PerRow,
    PerTensor,
    PerToken,
    get_block_size,
)
from pt2q.numerics.qparams import (
    PER_CHANNEL_QSCHEMES,
    PER_TENSOR_QSCHEMES,
    SYMMETRIC_QSCHEMES,
    ChannelAxisError,
    UnsupportedQuantizationError,
    accumulate_histc_,
    choose_qparams,
    dtype_bits,
    quant_range,
    search_histogram_range,
    upscale_histogram,
)
from pt2q.observers.merge_across_ranks import MergeSteps, first_merge, merge_flags, merge_range, remember_merge

__all__ = [
    "ObserverBase",
    "UniformQuantizationObserverBase",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "HistogramObserver",
    "FixedQParamsObserver",
    "PlaceholderObserver",
    "NoopObserver",
    "default_observer",
    "default_weight_observer",
    "default_per_channel_weight_observer",
    "default_histogram_observer",
    "default_placeholder_observer",
    "default_dynamic_quant_observer",
    "default_float_qparams_observer",
    "default_float_qparams_observer_4bit",
    "default_debug_observer",
    "default_reuse_input_observer",
    "weight_observer_range_neg_127_to_127",
    "per_channel_weight_observer_range_neg_127_to_127",
    "default_fixed_qparams_range_neg1to1_observer",
    "default_fixed_qparams_range_0to1_observer",
    "default_symmetric_fixed_qparams_observer",
    "default_affine_fixed_qparams_observer",
    # the affine (low-bit) names torchao's observer module re-exports (and AffineQuantizedObserverBase, below)
    "Granularity",
    "MappingType",
    "PerAxis",
    "PerBlock",
    "PerGroup",
    "PerRow",
    "PerTensor",
    "PerToken",
    "TorchAODType",
    "ZeroPointDomain",
    "get_block_size",
    "RecordingObserver",
    "ReuseInputObserver",
    "get_observer_state_dict",
    "load_observer_state_dict",
]

_F32_EPS = torch.finfo(torch.float32).eps


class _Constructor:
    """``cls`` with preset keyword arguments: calling it builds an instance, later kwargs win.

    ``callable_args`` are called anew for each instance built (unless given explicitly), e.g. to give
    every observer its own freshly made tensor.
    """

    def __init__(
        self,
        cls: Callable[..., nn.Module],
        kwargs: dict[str, Any],
        callable_args: Optional[dict[str, Callable[[], Any]]] = None,
    ) -> None:
        self.cls = cls
        self.kwargs = kwargs
        self.callable_args = dict(callable_args or {})

    def __call__(self, *args: Any, **kwargs: Any) -> nn.Module:
        made = {name: make() for name, make in self.callable_args.items() if name not in kwargs}
        return self.cls(*args, **{**self.kwargs, **made, **kwargs})

    def with_args(self, **kwargs: Any) -> _Constructor:
        return _Constructor(self.cls, {**self.kwargs, **kwargs}, self.callable_args)

    def with_callable_args(self, **kwargs: Callable[[], Any]) -> _Constructor:
        return _Constructor(self.cls, self.kwargs, {**self.callable_args, **kwargs})

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        made = "".join(f".with_callable_args({k}={v!r})" for k, v in self.callable_args.items())
        return f"{self.cls.__name__}.with_args({args}){made}"


def _with_args(cls: Callable[..., nn.Module], **kwargs: Any) -> _Constructor:
    """A constructor of ``cls`` with ``kwargs`` preset; it has ``.with_args`` too."""
    return _Constructor(cls, kwargs)


def _with_callable_args(cls: Callable[..., nn.Module], **kwargs: Callable[[], Any]) -> _Constructor:
    """A constructor of ``cls`` that calls each of ``kwargs``' values for every instance it builds."""
    return _Constructor(cls, {}, kwargs)


class ObserverBase(ABC, nn.Module):
    """Base of all observers: ``forward`` records statistics and returns its input unchanged."""

    def __init__(self, dtype: torch.dtype, is_dynamic: bool = False) -> None:
        super().__init__()
        self.dtype = dtype
        self.is_dynamic = is_dynamic
        self.target_name = ""  # what is observed, e.g. "output of node 'conv2d'"; set by prepare

    supports_dynamic: bool = True  # whether qparams may be chosen at run time (``is_dynamic``)

    def _refuse_dynamic(self, is_dynamic: bool) -> None:
        if is_dynamic and not self.supports_dynamic:
            raise UnsupportedQuantizationError(f"{type(self).__name__} does not support dynamic quantization")

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def calculate_qparams(self) -> tuple[Tensor, Tensor]: ...

    @property
    def has_statistics(self) -> bool:
        """Whether the observer has seen data (observers that need none always have)."""
        return True

    def _where(self) -> str:
        return self.target_name or type(self).__name__

    def merge_across_ranks(self) -> MergeSteps:
        """Merge the statistics with the other processes' (see ``pt2q.observers.merge_across_ranks``)."""
        raise NotImplementedError(
            f"{self._where()}: {type(self).__name__} does not define merge_across_ranks, so its statistics "
            "cannot be merged across processes; implement it (see ObserverBase.merge_across_ranks)"
        )
        yield []  # a generator, like the implementations

    def _uncalibrated_qparams(self) -> tuple[Tensor, Tensor]:
        """torchao's answer for an observer that saw no data: scale 1.0, zero point 0, with a warning."""
        warnings.warn(f"{self._where()}: calculate_qparams called before the observer saw any data", stacklevel=2)
        return torch.tensor([1.0]), torch.tensor([0])

    with_args = classmethod(_with_args)
    with_callable_args = classmethod(_with_callable_args)


class UniformQuantizationObserverBase(ObserverBase):
    """Observers computing affine/symmetric qparams from a (per-tensor or per-channel) range.

    ``quant_min``/``quant_max`` default to the dtype's range (halved by
    ``reduce_range``); ``eps`` is the smallest scale returned.
    """

    supported_qschemes: tuple[torch.qscheme, ...] = PER_TENSOR_QSCHEMES + PER_CHANNEL_QSCHEMES
    eps: Tensor

    def __init__(
        self,
        dtype: torch.dtype = torch.quint8,
        qscheme: Optional[torch.qscheme] = None,
        reduce_range: bool = False,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        factory_kwargs: Optional[dict[str, Any]] = None,
        eps: float = _F32_EPS,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        self._refuse_dynamic(is_dynamic)
        name = type(self).__name__
        qscheme = self.supported_qschemes[0] if qscheme is None else qscheme
        if qscheme not in self.supported_qschemes:
            hint = " (use PerChannelMinMaxObserver for per-channel qschemes)" if qscheme in PER_CHANNEL_QSCHEMES else ""
            supported = ", ".join(map(str, self.supported_qschemes))
            raise UnsupportedQuantizationError(f"{name} supports qscheme {supported}; got {qscheme}{hint}")
        if kwargs:
            raise TypeError(f"{name} got unexpected arguments {sorted(kwargs)}")
        if reduce_range and qscheme in SYMMETRIC_QSCHEMES and dtype == torch.quint8:
            raise UnsupportedQuantizationError(
                f"{name}: reduce_range is not supported for symmetric quint8 quantization"
            )
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        self.qscheme = qscheme
        self.reduce_range = reduce_range
        self.has_customized_qrange = quant_min is not None or quant_max is not None
        self.quant_min, self.quant_max = quant_range(dtype, quant_min, quant_max, reduce_range)
        self._factory_kwargs = torch.nn.factory_kwargs(factory_kwargs)
        self.register_buffer("eps", torch.tensor([eps], **self._factory_kwargs))

    def _calculate_qparams(self, min_val: Tensor, max_val: Tensor) -> tuple[Tensor, Tensor]:
        scale, zero_point = choose_qparams(
            min_val,
            max_val,
            self.quant_min,
            self.quant_max,
            self.qscheme in SYMMETRIC_QSCHEMES,
            self.eps,
            self.dtype,
            float_qparams=self.qscheme == torch.per_channel_affine_float_qparams,
            has_customized_qrange=self.has_customized_qrange,
        )
        if not torch.isfinite(scale).all():
            lo, hi = getattr(self, "min_val", min_val).min().item(), getattr(self, "max_val", max_val).max().item()
            raise ValueError(
                f"{self._where()}: the observed range [{lo:.4g}, {hi:.4g}] is too wide for float32 quantization "
                "parameters (the scale overflows to inf): the calibration data holds values near the float32 "
                "limit. Clip or rescale it, or keep this tensor in float."
            )
        return scale, zero_point

    def reset_min_max_vals(self) -> None:
        """Forget everything observed (observers with running statistics override this)."""
        raise NotImplementedError(f"{type(self).__name__} cannot reset its min/max values")

    def _check_finite(self, lo: float, hi: float) -> None:
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(
                f"{self._where()}: calibration data must be finite, but the observer saw "
                f"min={lo}, max={hi} (NaN or Inf in the input)"
            )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("min_val", "max_val"):  # per-channel buffers take the saved number of channels
            saved = state_dict.get(prefix + name)
            buf = self._buffers.get(name)
            if saved is not None and buf is not None and buf.shape != saved.shape:
                buf.resize_(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args)


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
        eps: float = _F32_EPS,
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
        eps: float = _F32_EPS,
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
        eps: float = _F32_EPS,
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
        eps: float = _F32_EPS,
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
        eps: float = _F32_EPS,
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


class FixedQParamsObserver(ObserverBase):
    """Always returns the given ``scale`` and ``zero_point`` (e.g. for sigmoid's output)."""

    supports_dynamic = False
    scale: Tensor
    zero_point: Tensor

    def __init__(
        self,
        scale: float,
        zero_point: int,
        dtype: torch.dtype = torch.quint8,
        qscheme: Optional[torch.qscheme] = None,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        is_dynamic: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs:
            raise TypeError(f"FixedQParamsObserver got unexpected arguments {sorted(kwargs)}")
        qscheme = torch.per_tensor_affine if qscheme is None else qscheme
        self._refuse_dynamic(is_dynamic)
        if qscheme not in PER_TENSOR_QSCHEMES:
            raise UnsupportedQuantizationError(f"FixedQParamsObserver supports per-tensor qschemes only; got {qscheme}")
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        self.qscheme = qscheme
        self.quant_min, self.quant_max = quant_range(dtype, quant_min, quant_max)
        self.eps = _F32_EPS
        self.register_buffer("scale", torch.tensor([scale], dtype=torch.float))
        self.register_buffer("zero_point", torch.tensor([zero_point], dtype=torch.int))

    def forward(self, x: Tensor) -> Tensor:
        return x

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        return self.scale, self.zero_point

    def merge_across_ranks(self) -> MergeSteps:
        yield from ()  # fixed qparams: nothing observed


class _PassThroughObserver(ObserverBase):
    """Records nothing; carries dtype, range and qscheme to convert."""

    def __init__(
        self,
        dtype: torch.dtype,
        custom_op_name: str = "",
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        qscheme: Optional[torch.qscheme] = None,
        eps: Optional[float] = None,
        is_dynamic: bool = False,
    ) -> None:
        super().__init__(dtype=dtype, is_dynamic=is_dynamic)
        self.qscheme = torch.per_tensor_affine if qscheme is None else qscheme
        self.quant_min = quant_min
        self.quant_max = quant_max
        self.eps = _F32_EPS if eps is None else eps
        self.custom_op = custom_op_name

    def forward(self, x: Tensor) -> Tensor:
        return x

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        raise RuntimeError(f"{self._where()}: a {type(self).__name__} has no qparams to calculate")

    def merge_across_ranks(self) -> MergeSteps:
        yield from ()  # nothing observed

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}, is_dynamic={self.is_dynamic}"


class PlaceholderObserver(_PassThroughObserver):
    """Records nothing; marks a tensor for dynamic quantization (``is_dynamic``) or a float cast.

    ``compute_dtype`` is deprecated (use ``is_dynamic``) and, as in torchao, only warns.
    """

    def __init__(
        self,
        dtype: torch.dtype = torch.float32,
        custom_op_name: str = "",
        compute_dtype: Optional[torch.dtype] = None,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        qscheme: Optional[torch.qscheme] = None,
        eps: Optional[float] = None,
        is_dynamic: bool = False,
    ) -> None:
        if compute_dtype:
            warnings.warn("PlaceholderObserver: compute_dtype is deprecated; use is_dynamic", stacklevel=2)
        super().__init__(dtype, custom_op_name, quant_min, quant_max, qscheme, eps, is_dynamic)


class NoopObserver(_PassThroughObserver):
    """Records nothing (float16 by default)."""

    def __init__(self, dtype: torch.dtype = torch.float16, custom_op_name: str = "", **kwargs: Any) -> None:
        super().__init__(dtype=dtype, custom_op_name=custom_op_name, **kwargs)


class RecordingObserver(ObserverBase):
    """Records a copy of every tensor it sees (for debugging); ``get_tensor_value()`` returns them."""

    def __init__(self, dtype: torch.dtype = torch.quint8) -> None:
        super().__init__(dtype=dtype, is_dynamic=False)
        self.tensor_val: list[Optional[Tensor]] = []

    def forward(self, x: Tensor) -> Tensor:
        self.tensor_val.append(x.clone())
        return x

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        raise RuntimeError(f"{self._where()}: a RecordingObserver records values and has no qparams")

    def get_tensor_value(self) -> list[Optional[Tensor]]:
        return self.tensor_val


class ReuseInputObserver(ObserverBase):
    """Observes nothing: the operator's output reuses the observer of its input (e.g. a reshape).

    Meaningful in FX graph mode quantization; in PT2E the same is said with a
    ``SharedQuantizationSpec``, and as an observer it passes values through.
    """

    def __init__(self) -> None:
        super().__init__(torch.quint8, is_dynamic=False)

    def forward(self, x: Tensor) -> Tensor:
        return x

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        raise RuntimeError(f"{self._where()}: a ReuseInputObserver has no qparams of its own")


default_observer = MinMaxObserver.with_args(quant_min=0, quant_max=127)
default_placeholder_observer = PlaceholderObserver
default_weight_observer = MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)
default_histogram_observer = HistogramObserver.with_args(quant_min=0, quant_max=127)
default_per_channel_weight_observer = PerChannelMinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_channel_symmetric
)
default_dynamic_quant_observer = PlaceholderObserver.with_args(
    dtype=torch.quint8, quant_min=0, quant_max=255, is_dynamic=True
)
default_float_qparams_observer = PerChannelMinMaxObserver.with_args(
    dtype=torch.quint8, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0
)
default_float_qparams_observer_4bit = PerChannelMinMaxObserver.with_args(
    dtype=torch.quint4x2, qscheme=torch.per_channel_affine_float_qparams, ch_axis=0
)
default_debug_observer = RecordingObserver
default_reuse_input_observer = ReuseInputObserver
# symmetric int8 weights in [-127, 127] (no -128)
weight_observer_range_neg_127_to_127 = MinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-127, quant_max=127, eps=2**-12
)
per_channel_weight_observer_range_neg_127_to_127 = PerChannelMinMaxObserver.with_args(
    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127, eps=2**-12
)
# outputs of ops with a known range: tanh ([-1, 1]), sigmoid / softmax ([0, 1])
default_fixed_qparams_range_neg1to1_observer = FixedQParamsObserver.with_args(
    scale=2.0 / 256.0, zero_point=128, dtype=torch.quint8, quant_min=0, quant_max=255
)
default_fixed_qparams_range_0to1_observer = FixedQParamsObserver.with_args(
    scale=1.0 / 256.0, zero_point=0, dtype=torch.quint8, quant_min=0, quant_max=255
)
default_symmetric_fixed_qparams_observer = default_fixed_qparams_range_neg1to1_observer
default_affine_fixed_qparams_observer = default_fixed_qparams_range_0to1_observer


def _is_observer_or_fake_quantize(module: nn.Module) -> bool:
    from pt2q.fake_quant.fake_quantize import FakeQuantizeBase  # fake quantizers are built on this module

    return isinstance(module, (ObserverBase, FakeQuantizeBase))


def get_observer_state_dict(mod: nn.Module) -> dict[str, Any]:
    """The entries of ``mod.state_dict()`` that belong to its observers and fake quantizers (their
    statistics and qparams), to save a calibration and load it into a model prepared the same way."""
    full = mod.state_dict()
    observed: OrderedDict[str, Any] = OrderedDict((k, v) for k, v in full.items() if "activation_post_process" in k)
    observed._metadata = getattr(full, "_metadata", None)  # type: ignore[attr-defined]
    return observed


def load_observer_state_dict(mod: nn.Module, obs_dict: dict[str, Any]) -> None:
    """Load what :func:`get_observer_state_dict` saved into the observers and fake quantizers of ``mod``.

    A missing or unexpected observer entry raises a ``RuntimeError`` naming it (torchao means to, but
    loads non-strictly and so never reports a missing entry).
    """
    missing: list[str] = []
    unexpected: list[str] = []
    for name, module in mod.named_modules():
        if _is_observer_or_fake_quantize(module):
            module._load_from_state_dict(obs_dict, name + ".", {}, True, missing, unexpected, [])
    for kind, keys in (("Missing", missing), ("Unexpected", unexpected)):
        for key in keys:
            if "observer" in key or "activation_post_process" in key:
                raise RuntimeError(f"{kind} keys for observer {key} in state_dict")


def __getattr__(name: str) -> Any:
    """``PercentileObserver`` and ``MSEObserver`` (:mod:`pt2q.observers.range_estimators`) and
    ``AffineQuantizedObserverBase`` (:mod:`pt2q.observers.affine_observer`), built on the classes here, are
    importable from this module too."""
    if name in ("PercentileObserver", "MSEObserver"):
        from pt2q.observers import range_estimators

        return getattr(range_estimators, name)
    if name == "AffineQuantizedObserverBase":
        from pt2q.observers import affine_observer

        return affine_observer.AffineQuantizedObserverBase
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
