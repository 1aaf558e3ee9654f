"""``pt2q.range_estimators``: the previous layout's path (old pickles name classes here).

The code lives in :mod:`pt2q.observers.range_estimators`.
"""

from pt2q.observers.range_estimators import (  # noqa: F401
    MSEObserver,
    PercentileObserver,
)

__all__ = [
    "PercentileObserver",
    "MSEObserver",
]
