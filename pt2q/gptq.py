"""``pt2q.gptq``: the previous layout's path (old pickles name classes here).

The code lives in :mod:`pt2q.algorithms.gptq`.
"""

from pt2q.algorithms.gptq import (  # noqa: F401
    GPTQResult,
    gptq_quantize,
    gptq_quantize_weight,
)

__all__ = [
    "gptq_quantize",
    "GPTQResult",
    "gptq_quantize_weight",
]
