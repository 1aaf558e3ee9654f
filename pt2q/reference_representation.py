"""``pt2q.reference_representation``: torchao's / ExecuTorch's module path.

The code lives in :mod:`pt2q.passes.reference_representation`.
"""

from pt2q.passes.reference_representation import (  # noqa: F401
    REWRITES,
    Constant,
    Rewrite,
    aten,
    reference_representation_rewrite,
)

__all__ = [
    "reference_representation_rewrite",
    "REWRITES",
    "Rewrite",
]
