"""Low-bit configs for ``XNNPACKQuantizer``: 8-bit dynamic activations with 2..8-bit weights, and a16w8.

::

    quantizer = XNNPACKQuantizer().set_global(get_8da4w_quantization_config(group_size=32))

* ``8da4w``: int8 activations quantized per token at run time (asymmetric), int4 weights
  symmetric in groups of ``group_size`` input channels -- what ExecuTorch's XNNPACK
  delegate runs as blockwise-quantized linears (``qd8-f32-qb4w``); ``group_size=None``
  is one group per output channel (``qc4w``).
* ``8da8w``: the same with int8 per-channel weights.
* :func:`get_dynamic_affine_quantization_config` is the general form: 2..8-bit weights,
  symmetric or asymmetric, groupwise or per channel. XNNPACK runs symmetric 4-bit
  (groupwise or per channel) and symmetric 2..8-bit per-channel weights (stored in int8);
  other combinations are for backends that take them, or run through ExecuTorch's portable kernels.
* ``a16w8``: static int16 activations (symmetric, per tensor) with int8 per-channel
  weights, for backends with 16-bit activation kernels (not XNNPACK).

These configs quantize linear layers only (groupwise weights have no conv form here).
The converted graph calls ``torch.ops.torchao.choose_qparams_affine / quantize_affine /
dequantize_affine``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

from pt2q.core.spec import QuantizationConfig, QuantizationSpec
from pt2q.fake_quant.affine_fake_quantize import AffineFakeQuantize
from pt2q.fake_quant.fake_quantize import FakeQuantize
from pt2q.numerics.affine_primitives import MappingType
from pt2q.numerics.granularity import Granularity, PerAxis, PerGroup, PerToken
from pt2q.observers.affine_observer import (
    AffineQuantizedMinMaxObserver,
    AffineQuantizedMovingAverageMinMaxObserver,
    AffineQuantizedPlaceholderObserver,
)
from pt2q.observers.min_max import MinMaxObserver, MovingAverageMinMaxObserver
from pt2q.quantizers.xnnpack import get_symmetric_quantization_config

__all__ = [
    "get_dynamic_affine_quantization_config",
    "get_8da4w_quantization_config",
    "get_8da8w_quantization_config",
    "get_a16w8_quantization_config",
]


def _affine_constructor(is_qat: bool, **observer_kwargs: object) -> Callable[..., nn.Module]:
    """An affine observer for PTQ; for QAT a fake quantizer over a memoryless moving-average one."""
    if is_qat:
        return AffineFakeQuantize.with_args(
            observer=AffineQuantizedMovingAverageMinMaxObserver, averaging_constant=1, **observer_kwargs
        )
    return AffineQuantizedMinMaxObserver.with_args(**observer_kwargs)


def _per_token_int8_activation(is_qat: bool) -> QuantizationSpec:
    """int8 asymmetric per-token activations, qparams chosen at run time (XNNPACK's ``qd8``)."""
    kwargs = dict(
        mapping_type=MappingType.ASYMMETRIC,
        target_dtype=torch.int8,
        granularity=PerToken(),
        eps=torch.finfo(torch.float32).eps,
        scale_dtype=torch.float32,
        zero_point_dtype=torch.int8,
    )
    ctr = _affine_constructor(True, **kwargs) if is_qat else AffineQuantizedPlaceholderObserver.with_args(**kwargs)
    return QuantizationSpec(
        dtype=torch.int8, quant_min=-128, quant_max=127, is_dynamic=True, observer_or_fake_quant_ctr=ctr
    )


@functools.lru_cache
def get_dynamic_affine_quantization_config(
    weight_bits: int = 4,
    group_size: Optional[int] = 32,
    weight_mapping_type: MappingType = MappingType.SYMMETRIC,
    is_qat: bool = False,
) -> QuantizationConfig:
    """int8 per-token dynamic activations, ``weight_bits``-bit weights (2..8, stored in int8).

    ``group_size`` input channels share a weight scale (``None``: per output channel).
    ``weight_mapping_type`` is ``MappingType.SYMMETRIC`` (what XNNPACK runs) or
    ``ASYMMETRIC`` (a zero point per group). With ``is_qat`` everything is fake-quantized
    with the same granularities.
    """
    if not 2 <= weight_bits <= 8:
        raise ValueError(f"weight_bits must be in 2..8, got {weight_bits}")
    if group_size is not None and group_size < 1:
        raise ValueError(f"group_size must be positive or None (per channel), got {group_size}")
    granularity: Granularity = PerAxis(0) if group_size is None else PerGroup(group_size)
    qmin, qmax = -(2 ** (weight_bits - 1)), 2 ** (weight_bits - 1) - 1
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=qmin,
        quant_max=qmax,
        observer_or_fake_quant_ctr=_affine_constructor(
            is_qat,
            mapping_type=weight_mapping_type,
            target_dtype=torch.int8,
            granularity=granularity,
            scale_dtype=torch.float32,
            zero_point_dtype=torch.int8,
        ),
    )
    return QuantizationConfig(
        input_activation=_per_token_int8_activation(is_qat),
        output_activation=None,
        weight=weight,
        bias=None,
        is_qat=is_qat,
    )


def get_8da4w_quantization_config(group_size: Optional[int] = 32, is_qat: bool = False) -> QuantizationConfig:
    """int8 dynamic per-token activations, symmetric int4 weights in groups of ``group_size``."""
    return get_dynamic_affine_quantization_config(4, group_size, MappingType.SYMMETRIC, is_qat)


def get_8da8w_quantization_config(group_size: Optional[int] = None, is_qat: bool = False) -> QuantizationConfig:
    """int8 dynamic per-token activations, symmetric int8 weights (per output channel by default)."""
    return get_dynamic_affine_quantization_config(8, group_size, MappingType.SYMMETRIC, is_qat)


@functools.lru_cache
def get_a16w8_quantization_config(is_per_channel: bool = True, is_qat: bool = False) -> QuantizationConfig:
    """Static symmetric int16 activations (min/max calibrated, per tensor) and symmetric int8 weights."""
    observer = (MovingAverageMinMaxObserver if is_qat else MinMaxObserver).with_args(eps=2**-20)
    ctr = FakeQuantize.with_args(observer=observer) if is_qat else observer
    act = QuantizationSpec(
        dtype=torch.int16,
        quant_min=-(2**15) + 1,
        quant_max=2**15 - 1,
        qscheme=torch.per_tensor_symmetric,
        observer_or_fake_quant_ctr=ctr,
    )
    weight = get_symmetric_quantization_config(is_per_channel=is_per_channel, is_qat=is_qat).weight
    return QuantizationConfig(input_activation=act, output_activation=act, weight=weight, bias=None, is_qat=is_qat)
