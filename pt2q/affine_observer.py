"""``pt2q.affine_observer``: the previous layout's path (old pickles name classes here).

The code lives in :mod:`pt2q.observers.affine_observer` and :mod:`pt2q.observers.affine_base`.
"""

from pt2q.observers.affine_base import AffineQuantizedObserverBase  # noqa: F401
from pt2q.observers.affine_observer import (  # noqa: F401
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
]
