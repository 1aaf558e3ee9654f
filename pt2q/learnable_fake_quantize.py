"""``pt2q.learnable_fake_quantize``: torchao's / ExecuTorch's module path.

The code lives in :mod:`pt2q.fake_quant.learnable_fake_quantize`.
"""

from pt2q.fake_quant.learnable_fake_quantize import (  # noqa: F401
    LearnableFakeQuantize,
    disable_range_learning,
    enable_range_learning,
)

__all__ = [
    "LearnableFakeQuantize",
    "enable_range_learning",
    "disable_range_learning",
]
