"""``pt2q.affine_primitives``: the previous layout's path (old pickles name classes here).

The code lives in :mod:`pt2q.numerics.affine_primitives`.
"""

from pt2q.numerics.affine_primitives import (  # noqa: F401
    MappingType,
    TorchAODType,
    ZeroPointDomain,
    choose_qparams_affine_with_min_max,
    dequantize_affine,
    fake_quantize_affine,
    get_and_check_qmin_qmax,
    quantize_affine,
    qvalue_bounds,
    reduction_params,
)

__all__ = [
    "MappingType",
    "ZeroPointDomain",
    "TorchAODType",
    "qvalue_bounds",
    "get_and_check_qmin_qmax",
    "reduction_params",
    "choose_qparams_affine_with_min_max",
    "quantize_affine",
    "dequantize_affine",
    "fake_quantize_affine",
]
