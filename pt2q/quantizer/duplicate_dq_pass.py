"""``pt2q.quantizer.duplicate_dq_pass``: torchao's module path.

The code lives in :mod:`pt2q.passes.duplicate_dq`.
"""

from pt2q.passes.duplicate_dq import DuplicateDQPass

__all__ = ["DuplicateDQPass"]
