"""``pt2q.derived``: the previous layout's path (old pickles name classes here).

The code lives in :mod:`pt2q.observers.derived`.
"""

from pt2q.observers.derived import (  # noqa: F401
    DerivedObserverOrFakeQuantize,
)

__all__ = [
    "DerivedObserverOrFakeQuantize",
]
