"""``pt2q.affine_fake_quantize``: the previous layout's path (old pickles name classes here).

The code lives in :mod:`pt2q.fake_quant.affine_fake_quantize`.
"""

from pt2q.fake_quant.affine_fake_quantize import (  # noqa: F401
    AffineFakeQuantize,
    default_affine_fake_quant,
    default_affine_per_axis_fake_quant,
    default_groupwise_fake_quant,
)

__all__ = [
    "AffineFakeQuantize",
    "default_affine_fake_quant",
    "default_groupwise_fake_quant",
    "default_affine_per_axis_fake_quant",
]
