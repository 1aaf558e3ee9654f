"""Bases of the observers: ``ObserverBase`` (the protocol every observer follows) and
``UniformQuantizationObserverBase`` (qparams from a per-tensor or per-channel range).

``prepare_pt2e`` inserts an observer after every tensor to quantize; ``convert_pt2e`` asks
each for ``calculate_qparams()``. Names, arguments and numerics follow
``torchao.quantization.pt2e.observer`` (same scales and zero points, bit for bit);
pt2q adds ``has_statistics``, ``target_name`` (used in error messages), errors on
non-finite calibration data, and a much cheaper ``forward``.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from typing import Any, Optional

import torch
from torch import Tensor, nn

from pt2q.numerics.dtypes import quant_range
from pt2q.numerics.errors import UnsupportedQuantizationError
from pt2q.numerics.qparams import F32_EPS, choose_qparams
from pt2q.numerics.qschemes import PER_CHANNEL_QSCHEMES, PER_TENSOR_QSCHEMES, SYMMETRIC_QSCHEMES
from pt2q.observers import constructor
from pt2q.observers.merge_across_ranks import MergeSteps

__all__ = ["ObserverBase", "UniformQuantizationObserverBase"]


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

    with_args = classmethod(constructor.with_args)
    with_callable_args = classmethod(constructor.with_callable_args)


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
        eps: float = F32_EPS,
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
