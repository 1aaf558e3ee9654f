"""The protocol by which an observer merges its statistics with other processes'.

Each observer and fake quantizer has a ``merge_across_ranks()`` generator: every
``yield`` hands over a list of ``(tensor, op)`` reductions, op ``"min"``, ``"max"``,
``"sum"`` or ``"mean"`` across ranks, and receives the reduced tensors; when it
returns, the module holds the merged state. ``pt2q.distributed.sync_observers``
drives all of a model's merges in step, one bucketed ``all_reduce`` per op and
round. Nothing here talks to ``torch.distributed``: these are the shared steps.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Optional

import torch
from torch import Tensor

__all__ = ["Reductions", "MergeSteps", "merge_range", "merge_flags", "first_merge", "remember_merge"]

Reductions = list[tuple[Tensor, str]]
"""(this rank's tensor, how to combine it across ranks: "min", "max", "sum" or "mean") pairs."""
MergeSteps = Generator[Reductions, list[Tensor], None]
"""What ``merge_across_ranks`` returns: it yields reductions and is sent their results."""


def merge_range(obs: Any, lo_op: str, hi_op: str) -> MergeSteps:
    """Merge ``obs.min_val`` / ``obs.max_val`` across ranks with the given reductions."""
    lo, hi = yield [(obs.min_val, lo_op), (obs.max_val, hi_op)]
    obs.min_val.copy_(lo)
    obs.max_val.copy_(hi)


def merge_flags(obs: Any, count: float) -> tuple[Tensor, str]:
    """The reduction to ask for, in the first round, before merging summed statistics of ``count`` values.

    Merging sums every rank's statistics, so every rank then holds all of them. Merging
    again with nothing new observed anywhere is a no-op; after new data it is an error,
    as the statistics merged before would count once per rank (see :func:`first_merge`).
    """
    before = obs.__dict__.get("_merged_count")
    return torch.tensor([before is not None, before != count], dtype=torch.float64), "max"


def first_merge(obs: Any, flags: Tensor) -> bool:
    """Whether to merge now, given the reduced :func:`merge_flags`; an error if new data came after a merge."""
    merged_before, fresh = bool(flags[0]), bool(flags[1])
    if merged_before and fresh:
        raise RuntimeError(
            f"{obs.target_name or type(obs).__name__}: {type(obs).__name__} observed more data after its statistics "
            "were merged across ranks; merging again would count the merged data once per rank. Sync once, "
            "after calibration."
        )
    return not merged_before


def remember_merge(obs: Any, count: Optional[float]) -> None:
    """Record that ``obs`` holds merged statistics of ``count`` values (None: forget; see :func:`merge_flags`)."""
    obs.__dict__["_merged_count"] = count
