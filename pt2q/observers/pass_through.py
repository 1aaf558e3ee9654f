"""Observers that compute no qparams from data: fixed qparams (``FixedQParamsObserver``), markers
for dynamic quantization or a cast (``PlaceholderObserver``, ``NoopObserver``), and the debugging
ones (``RecordingObserver``, ``ReuseInputObserver``)."""

from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import Tensor

from pt2q.numerics.dtypes import quant_range
from pt2q.numerics.errors import UnsupportedQuantizationError
from pt2q.numerics.qparams import F32_EPS
from pt2q.numerics.qschemes import PER_TENSOR_QSCHEMES
from pt2q.observers.base import ObserverBase
from pt2q.observers.merge_across_ranks import MergeSteps

__all__ = ["FixedQParamsObserver", "PlaceholderObserver", "NoopObserver", "RecordingObserver", "ReuseInputObserver"]


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
        self.eps = F32_EPS
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
        self.eps = F32_EPS if eps is None else eps
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
