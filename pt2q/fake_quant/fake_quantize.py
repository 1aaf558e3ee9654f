"""Fake quantizers for QAT: an observer plus quantize-dequantize with a straight-through gradient.

``FakeQuantize``, ``FixedQParamsFakeQuantize`` and ``FusedMovingAvgObsFakeQuantize``; names, arguments
and numerics follow ``torchao.quantization.pt2e.fake_quantize``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import Tensor, nn

from pt2q.fake_quant.base import FakeQuantizeBase, ObserverTypeError
from pt2q.numerics.qschemes import PER_CHANNEL_QSCHEMES, PER_TENSOR_QSCHEMES, SYMMETRIC_QSCHEMES
from pt2q.observers.merge_across_ranks import MergeSteps
from pt2q.observers.min_max import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
from pt2q.observers.pass_through import FixedQParamsObserver

__all__ = ["FakeQuantize", "FixedQParamsFakeQuantize", "FusedMovingAvgObsFakeQuantize"]


class FakeQuantize(FakeQuantizeBase):
    """Observe with ``observer`` (a constructor, given ``observer_kwargs``) and fake-quantize:
    ``(clamp(round(x / scale + zero_point), quant_min, quant_max) - zero_point) * scale``.

    In ``forward``, with the observer enabled the input is observed and ``scale`` /
    ``zero_point`` are recomputed; with fake quant enabled the output is fake-quantized
    (per tensor, or per channel along ``ch_axis``), its gradient passing straight
    through inside the quantization range.
    """

    scale: Tensor
    zero_point: Tensor
    # any observer module: duck-typed (calculate_qparams, quant_min/max, dtype, qscheme, min_val/max_val)
    activation_post_process: Any
    dtype: torch.dtype
    qscheme: torch.qscheme
    quant_min: int
    quant_max: int
    ch_axis: int

    def __init__(
        self,
        observer: Callable[..., nn.Module] = MovingAverageMinMaxObserver,
        quant_min: Optional[int] = None,
        quant_max: Optional[int] = None,
        is_dynamic: bool = False,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__()
        for name, value in (("quant_min", quant_min), ("quant_max", quant_max)):
            if value is not None:
                observer_kwargs[name] = value
        self.activation_post_process = observer(is_dynamic=is_dynamic, **observer_kwargs)
        obs = self.activation_post_process
        if obs.qscheme not in PER_TENSOR_QSCHEMES + PER_CHANNEL_QSCHEMES:
            raise ValueError(f"FakeQuantize supports per-tensor and per-channel qschemes; got {obs.qscheme}")
        self.dtype = obs.dtype
        self.qscheme = obs.qscheme
        self.quant_min = obs.quant_min
        self.quant_max = obs.quant_max
        self.is_dynamic = obs.is_dynamic
        self.ch_axis = getattr(obs, "ch_axis", -1)
        self.is_per_channel = obs.qscheme in PER_CHANNEL_QSCHEMES
        float_zp = obs.qscheme == torch.per_channel_affine_float_qparams
        self.register_buffer("scale", torch.tensor([1.0], dtype=torch.float))
        self.register_buffer("zero_point", torch.tensor([0], dtype=torch.float if float_zp else torch.int))

    @property
    def eps(self) -> Any:
        return self.activation_post_process.eps

    @property
    def has_statistics(self) -> bool:
        return getattr(self.activation_post_process, "has_statistics", True)

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        return self.activation_post_process.calculate_qparams()

    def forward(self, x: Tensor) -> Tensor:
        if self.observer_enabled.item() == 1:
            self.activation_post_process(x.detach())
            self._update_qparams()
        if self.fake_quant_enabled.item() == 1:
            return self._fake_quantize(x)
        return x

    def _update_qparams(self) -> None:
        """Set ``scale`` and ``zero_point`` from the observer's statistics."""
        scale, zero_point = self.calculate_qparams()
        if self.scale.shape != scale.shape:
            self.scale.data = self.scale.new_empty(scale.shape)
            self.zero_point.data = self.zero_point.new_empty(zero_point.shape)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)

    def merge_across_ranks(self) -> MergeSteps:
        """Merge the observer's statistics; ``scale`` and ``zero_point`` then follow them (also with
        the observer disabled: they were computed from the same statistics before the merge)."""
        yield from self.activation_post_process.merge_across_ranks()
        if self.has_statistics:
            self._update_qparams()

    def _fake_quantize(self, x: Tensor) -> Tensor:
        if self.is_per_channel:
            return torch.fake_quantize_per_channel_affine(
                x, self.scale, self.zero_point, self.ch_axis, self.quant_min, self.quant_max
            )
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.quant_min, self.quant_max)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in ("scale", "zero_point"):  # per-channel qparams take the saved number of channels
            saved, buffer = state_dict.get(prefix + name), self._buffers[name]
            if saved is not None and buffer is not None and buffer.shape != saved.shape:
                buffer.resize_(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return (
            f"fake_quant_enabled={self.fake_quant_enabled}, observer_enabled={self.observer_enabled}, "
            f"quant_min={self.quant_min}, quant_max={self.quant_max}, dtype={self.dtype}, "
            f"qscheme={self.qscheme}, ch_axis={self.ch_axis}, scale={self.scale}, zero_point={self.zero_point}"
        )


class FixedQParamsFakeQuantize(FakeQuantize):
    """Fake-quantize with the fixed qparams of a ``FixedQParamsObserver`` (per tensor)."""

    def __init__(self, observer: Callable[..., nn.Module]) -> None:
        super().__init__(observer=observer)
        if type(self.activation_post_process) is not FixedQParamsObserver:
            got = type(self.activation_post_process).__name__
            raise ObserverTypeError(f"FixedQParamsFakeQuantize needs a FixedQParamsObserver, got {got}")
        self.scale = self.activation_post_process.scale
        self.zero_point = self.activation_post_process.zero_point

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        return self.scale, self.zero_point

    def forward(self, x: Tensor) -> Tensor:
        return self._fake_quantize(x) if self.fake_quant_enabled.item() == 1 else x


class FusedMovingAvgObsFakeQuantize(FakeQuantize):
    """``FakeQuantize`` with a moving-average min/max observer, run as one fused torch op
    (``torch.fused_moving_avg_obs_fake_quant``)."""

    def __init__(
        self,
        observer: Callable[..., nn.Module] = MovingAverageMinMaxObserver,
        quant_min: int = 0,
        quant_max: int = 255,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__(observer, quant_min, quant_max, **observer_kwargs)
        moving_average = (MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver)
        if not isinstance(self.activation_post_process, moving_average):
            raise ObserverTypeError("FusedMovingAvgObsFakeQuantize works only with moving-average min/max observers")
        # the fused op takes int64 flags
        self.register_buffer("fake_quant_enabled", torch.tensor([1], dtype=torch.long))
        self.register_buffer("observer_enabled", torch.tensor([1], dtype=torch.long))
        self.is_symmetric_quant = self.qscheme in SYMMETRIC_QSCHEMES

    def forward(self, x: Tensor) -> Tensor:
        if self.is_per_channel and self.ch_axis != 0:
            # torch's fused kernel only handles channel axis 0 (e.g. not a transposed
            # conv's output channels on axis 1): run observer and fake quant unfused.
            return super().forward(x)
        obs = self.activation_post_process
        out = torch.fused_moving_avg_obs_fake_quant(
            x,
            self.observer_enabled,
            self.fake_quant_enabled,
            obs.min_val,
            obs.max_val,
            self.scale,
            self.zero_point,
            obs.averaging_constant,
            self.quant_min,
            self.quant_max,
            self.ch_axis,
            self.is_per_channel,
            self.is_symmetric_quant,
        )
        if self.observer_enabled.item() == 1:
            self._check_finite(obs.min_val, obs.max_val)
        return out

    def _check_finite(self, lo: Tensor, hi: Tensor) -> None:
        if lo.numel() == 1:
            ok = math.isfinite(lo.item()) and math.isfinite(hi.item())
        else:
            ok = bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())
        if not ok:
            raise ValueError(
                f"{self.target_name or type(self).__name__}: training data must be finite, "
                "but the observed min/max are not (NaN or Inf in the input)"
            )
