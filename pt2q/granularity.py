"""``pt2q.granularity``: the previous layout's path (old pickles name classes here).

The code lives in :mod:`pt2q.numerics.granularity`.
"""

from pt2q.numerics.granularity import (  # noqa: F401
    Granularity,
    PerAxis,
    PerBlock,
    PerGroup,
    PerRow,
    PerTensor,
    PerToken,
    as_granularity,
    get_block_size,
)

__all__ = [
    "Granularity",
    "PerTensor",
    "PerAxis",
    "PerGroup",
    "PerRow",
    "PerToken",
    "PerBlock",
    "get_block_size",
    "as_granularity",
]
