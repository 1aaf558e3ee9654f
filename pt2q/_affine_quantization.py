"""Affine quantization for the PT2E flow, at the path torchao keeps it
(``torchao.quantization.pt2e._affine_quantization``): observers, granularities, enums and
the block-wise quantize/dequantize arithmetic. The definitions live in
:mod:`pt2q.observers.affine_observer`, :mod:`pt2q.observers.affine_base`,
:mod:`pt2q.numerics.granularity` and :mod:`pt2q.numerics.affine_primitives`.
"""

from pt2q.numerics.affine_primitives import (
    MappingType,
    TorchAODType,
    ZeroPointDomain,
    choose_qparams_affine_with_min_max,
    dequantize_affine,
    quantize_affine,
)
from pt2q.numerics.granularity import Granularity, get_block_size
from pt2q.observers.affine_base import AffineQuantizedObserverBase
from pt2q.observers.affine_observer import (
    AffineQuantizedFixedQParamsObserver,
    AffineQuantizedMinMaxObserver,
    AffineQuantizedMovingAverageMinMaxObserver,
    AffineQuantizedPlaceholderObserver,
)

__all__ = [
    "AffineQuantizedObserverBase",
    "AffineQuantizedMinMaxObserver",
    "AffineQuantizedMovingAverageMinMaxObserver",
    "AffineQuantizedPlaceholderObserver",
    "AffineQuantizedFixedQParamsObserver",
    "MappingType",
    "TorchAODType",
    "ZeroPointDomain",
    "Granularity",
    "get_block_size",
    "choose_qparams_affine_with_min_max",
    "quantize_affine",
    "dequantize_affine",
]
