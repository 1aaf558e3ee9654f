"""Observers for affine quantization at any granularity (per tensor, axis, group, row, token, block).

Names, arguments and qparams follow ``torchao.quantization.pt2e._affine_quantization``; what they
share (arguments, block sizes, the quantized form ``convert_pt2e`` asks each to write) is
:class:`pt2q.observers.affine_base.AffineQuantizedObserverBase`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from pt2q.numerics.affine_primitives import (
    MappingType,
    ZeroPointDomain,
    choose_qparams_affine_with_min_max,
    reduction_params,
)
from pt2q.numerics.granularity import Granularity
from pt2q.observers.affine_base import AffineQuantizedObserverBase

__all__ = [
    "AffineQuantizedRunningMinMaxBase",
    "AffineQuantizedMinMaxObserver",
    "AffineQuantizedMovingAverageMinMaxObserver",
    "AffineQuantizedPlaceholderObserver",
    "AffineQuantizedFixedQParamsObserver",
]


class AffineQuantizedRunningMinMaxBase(AffineQuantizedObserverBase):
    """Base of the affine observers that keep per-block ``min_val`` / ``max_val`` buffers (created on the
    first observation)."""

    min_val: Tensor
    max_val: Tensor

    def _block_min_max(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._record_block(x)
        assert self.block_size is not None
        shape, dims = reduction_params(self.block_size, x.shape)
        blocks = x.detach().view(shape)
        lo, hi = torch.amin(blocks, dim=dims), torch.amax(blocks, dim=dims)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError(f"{self._where()}: calibration data must be finite, but the observer saw NaN or Inf")
        return lo, hi

    def _combine(self, old: Tensor, new: Tensor, is_min: bool) -> Tensor:
        raise NotImplementedError

    def forward(self, input: Tensor) -> Tensor:
        if input.numel() == 0:
            return input
        lo, hi = self._block_min_max(input)
        if "min_val" not in self._buffers:
            self.register_buffer("min_val", lo.clone())
            self.register_buffer("max_val", hi.clone())
        else:
            self.min_val.copy_(self._combine(self.min_val, lo, True))
            self.max_val.copy_(self._combine(self.max_val, hi, False))
        return input

    @property
    def has_statistics(self) -> bool:
        return "min_val" in self._buffers and self.block_size is not None

    def calculate_qparams(self) -> tuple[Tensor, Optional[Tensor]]:
        if "min_val" not in self._buffers:
            raise RuntimeError(f"{self._where()}: calculate_qparams called before the observer saw any data")
        return choose_qparams_affine_with_min_max(
            self.min_val,
            self.max_val,
            self.mapping_type,
            [],
            self.target_dtype,
            self.quant_min,
            self.quant_max,
            self.eps,
            self.scale_dtype,
            self.zero_point_dtype,
            self.preserve_zero,
            self.zero_point_domain,
        )

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("min_val", "max_val"):  # buffers exist only once data was seen: take the saved ones
            saved = state_dict.get(prefix + name)
            if saved is not None and name not in self._buffers:
                self.register_buffer(name, torch.empty_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args)


class AffineQuantizedMinMaxObserver(AffineQuantizedRunningMinMaxBase):
    """Qparams of each block from the running min and max of everything observed."""

    def _combine(self, old: Tensor, new: Tensor, is_min: bool) -> Tensor:
        return torch.minimum(old, new) if is_min else torch.maximum(old, new)


class AffineQuantizedMovingAverageMinMaxObserver(AffineQuantizedRunningMinMaxBase):
    """Qparams of each block from an exponential moving average of its min and max
    (``averaging_constant`` 1 keeps only the last tensor, the memoryless form dynamic QAT needs)."""

    def __init__(
        self,
        mapping_type: MappingType,
        target_dtype: torch.dtype,
        granularity: Granularity,
        averaging_constant: float = 0.01,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        eps: Optional[float] = None,
        is_dynamic: bool = False,
        scale_dtype: Optional[torch.dtype] = None,
        zero_point_dtype: Optional[torch.dtype] = None,
        preserve_zero: bool = True,
        zero_point_domain: Optional[ZeroPointDomain] = ZeroPointDomain.INT,
        **kwargs: Any,
    ) -> None:
        if is_dynamic and averaging_constant != 1:
            raise ValueError(
                "AffineQuantizedMovingAverageMinMaxObserver supports dynamic quantization only with "
                f"averaging_constant=1 (got {averaging_constant})"
            )
        super().__init__(
            mapping_type,
            target_dtype,
            granularity,
            quant_min,
            quant_max,
            eps,
            scale_dtype,
            zero_point_dtype,
            preserve_zero,
            zero_point_domain,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        self.is_dynamic = is_dynamic
        self.averaging_constant = averaging_constant

    @classmethod
    def is_dynamic_capable(cls) -> bool:
        return True

    def _combine(self, old: Tensor, new: Tensor, is_min: bool) -> Tensor:
        return old + self.averaging_constant * (new - old)


class AffineQuantizedPlaceholderObserver(AffineQuantizedObserverBase):
    """Records only the block size and dtype: for dynamic quantization (``is_dynamic=True``),
    where ``choose_qparams_affine`` picks the qparams of every block at run time."""

    def __init__(
        self,
        mapping_type: MappingType,
        target_dtype: torch.dtype,
        granularity: Granularity,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        eps: Optional[float] = None,
        is_dynamic: bool = False,
        scale_dtype: Optional[torch.dtype] = None,
        zero_point_dtype: Optional[torch.dtype] = None,
        preserve_zero: bool = True,
        zero_point_domain: Optional[ZeroPointDomain] = ZeroPointDomain.INT,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            mapping_type,
            target_dtype,
            granularity,
            quant_min,
            quant_max,
            eps,
            scale_dtype,
            zero_point_dtype,
            preserve_zero,
            zero_point_domain,
            is_dynamic=is_dynamic,
            **kwargs,
        )
        self.is_dynamic = is_dynamic

    @classmethod
    def is_dynamic_capable(cls) -> bool:
        return True

    def forward(self, input: Tensor) -> Tensor:
        self._record_block(input)
        return input

    def calculate_qparams(self) -> tuple[Tensor, Optional[Tensor]]:
        raise ValueError(
            f"{self._where()}: AffineQuantizedPlaceholderObserver has no qparams of its own; "
            "it is for dynamic quantization (is_dynamic=True), where they are chosen at run time"
        )


class AffineQuantizedFixedQParamsObserver(AffineQuantizedObserverBase):
    """Qparams given ahead of time, for a tensor of a known block structure (pt2q addition).

    GPTQ (:mod:`pt2q.algorithms.gptq`) installs one per weight it quantized: the weight then lies
    exactly on this grid, and ``convert_pt2e`` quantizes it with exactly these qparams.
    """

    scale: Tensor
    zero_point: Tensor

    def __init__(
        self,
        mapping_type: MappingType,
        target_dtype: torch.dtype,
        granularity: Granularity,
        scale: Tensor,
        zero_point: Optional[Tensor],
        block_size: tuple[int, ...],
        original_dtype: torch.dtype = torch.float32,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(mapping_type, target_dtype, granularity, quant_min, quant_max, **kwargs)
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("zero_point", None if zero_point is None else zero_point.detach().clone())
        self.block_size = tuple(block_size)
        self.original_dtype = original_dtype

    def forward(self, input: Tensor) -> Tensor:
        self._record_block(input)
        return input

    def calculate_qparams(self) -> tuple[Tensor, Optional[Tensor]]:
        return self.scale, self.zero_point
