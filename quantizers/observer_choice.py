"""Which observer or fake quantizer a backend config uses for activations and for weights, and the two
specs the XNNPACK, x86 and Arm configs build on them (per-tensor affine activations, symmetric weights)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

from pt2q.core.spec import QuantizationSpec
from pt2q.fake_quant.fake_quantize import FakeQuantize, FusedMovingAvgObsFakeQuantize
from pt2q.observers.histogram import HistogramObserver
from pt2q.observers.min_max import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from pt2q.observers.pass_through import PlaceholderObserver

__all__ = ["activation_constructor", "weight_constructor", "activation_spec", "symmetric_weight_spec"]


def activation_constructor(is_qat: bool, is_dynamic: bool) -> Callable[..., nn.Module]:
    """The activation observer/fake-quant constructor shared by the XNNPACK and x86 configs.

    Static PTQ calibrates a histogram; dynamic PTQ only records the spec (qparams
    are chosen at run time); QAT fake-quantizes with a moving-average observer,
    which a dynamic QAT config resets every batch (averaging constant 1).
    """
    if is_qat and is_dynamic:
        return FakeQuantize.with_args(eps=2**-12, observer=MovingAverageMinMaxObserver.with_args(averaging_constant=1))
    if is_qat:
        return FusedMovingAvgObsFakeQuantize.with_args(eps=2**-12)
    return (PlaceholderObserver if is_dynamic else HistogramObserver).with_args(eps=2**-12)


def weight_constructor(is_qat: bool, is_per_channel: bool) -> Callable[..., nn.Module]:
    """The weight observer/fake-quant constructor shared by the XNNPACK and x86 configs:
    (per-channel) min/max for PTQ; for QAT, fused fake quantization over a moving-average one."""
    if is_qat:
        observer = MovingAveragePerChannelMinMaxObserver if is_per_channel else MovingAverageMinMaxObserver
        return FusedMovingAvgObsFakeQuantize.with_args(eps=2**-12, observer=observer)
    return (PerChannelMinMaxObserver if is_per_channel else MinMaxObserver).with_args(eps=2**-12)


def activation_spec(
    dtype: torch.dtype, quant_min: int, quant_max: int, is_qat: bool, is_dynamic: bool
) -> QuantizationSpec:
    """A per-tensor affine activation spec observed by :func:`activation_constructor`."""
    return QuantizationSpec(
        dtype=dtype,
        quant_min=quant_min,
        quant_max=quant_max,
        qscheme=torch.per_tensor_affine,
        is_dynamic=is_dynamic,
        observer_or_fake_quant_ctr=activation_constructor(is_qat, is_dynamic),
    )


def symmetric_weight_spec(
    is_qat: bool, is_per_channel: bool, quant_min: int, quant_max: int, ch_axis: Optional[int]
) -> QuantizationSpec:
    """A symmetric int8 weight spec (per output channel or per tensor) observed by :func:`weight_constructor`."""
    return QuantizationSpec(
        dtype=torch.int8,
        quant_min=quant_min,
        quant_max=quant_max,
        qscheme=torch.per_channel_symmetric if is_per_channel else torch.per_tensor_symmetric,
        ch_axis=ch_axis,
        is_dynamic=False,
        observer_or_fake_quant_ctr=weight_constructor(is_qat, is_per_channel),
    )
