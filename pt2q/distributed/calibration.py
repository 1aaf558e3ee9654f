"""Calibration and quantization-aware training across processes, on ``torch.distributed``.

When the calibration set or the training data is sharded across ranks (torchrun,
``DistributedDataParallel``), each rank's observers see only its shard, and the
program a rank converts would depend on which rank it is. ``sync_observers``
merges every observer's statistics across the process group, so that each rank
holds the qparams one process would compute over the union of the shards::

    dist.init_process_group("gloo")                     # torchrun --nproc-per-node 2 script.py
    m = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    calibrate(m, DataLoader(data, batch_size=32, sampler=DistributedSampler(data, shuffle=False)))
    m = convert_pt2e(m)                                  # the same program on every rank

What a merge gives, per observer (each class says it in its ``merge_across_ranks``):

* ``MinMaxObserver``, ``PerChannelMinMaxObserver``: the min and max over all
  ranks (``all_reduce`` MIN / MAX): exactly one process's qparams.
* ``PercentileObserver``, ``MSEObserver``: min/max as above and the sum of the
  ranks' histograms, whose log-spaced bins are fixed in advance: exact too.
* ``HistogramObserver``: each rank's histogram re-binned onto the common
  [min, max] (exact) as ``forward`` does when a batch widens the range, then
  summed. One process re-bins at other moments, so where re-binning put mass
  differs (by about one bin); measured on real activations (tests/test_distributed.py)
  the scale is within 0.1% of one process's and the zero point equal; the test
  allows 1% and 2.
* Moving averages (``MovingAverage*MinMaxObserver``, QAT's default fake
  quantizers): the mean of the ranks' averages. A moving average is linear in
  the batch statistics, so this is the moving average of the rank-averaged
  batch min/max, whether the ranks sync once or after every step (if all ran as
  many batches). One process over the union has no single answer here (its
  average depends on the batch order and size); averaging keeps the statistics
  of the per-rank batch that ``averaging_constant`` was chosen for, and leaves
  the weights' fake quantizers (equal on every rank under DDP) unchanged.
* Fake quantizers: their observer as above, then ``scale`` / ``zero_point`` from
  the merged statistics; ``LearnableFakeQuantize``'s learned qparams are averaged.
* The running statistics of the graph's BatchNorms (``convert_pt2e`` folds them
  into the weights) are averaged; with ``convert_sync_batchnorm`` they are equal
  on every rank already.

Histograms are summed, so a histogram observer is merged once, after
calibration; syncing again is a no-op, or an error if a rank observed more.
Everything else ``convert_pt2e`` reads (weights, constants) must already be
equal: ``sync_observers`` checks it and names the first tensor that differs.

QAT under DDP: optionally ``convert_sync_batchnorm(m)`` (BatchNorm statistics of
the global batch), then ``DistributedDataParallel(m, forward_sync_buffers=False)``
so that each rank's observers keep their own statistics (DDP's default copies
rank 0's buffers to every rank before each forward, dropping the other ranks'
observations); train; ``sync_observers(m)`` at the end (or also at any earlier
point, e.g. each epoch); then ``convert_pt2e(move_exported_model_to_eval(m))``
gives the same program on every rank, so rank 0 may save it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pt2q.distributed.sync_batch_norm import convert_sync_batchnorm, require_process_group
from pt2q.distributed.sync_observers import sync_observers

__all__ = ["sync_observers", "calibrate", "convert_sync_batchnorm"]


def _model_inputs(batch: Any) -> tuple[Any, ...]:
    """A batch's model inputs: a tensor, or the first element of an (inputs, labels, ...) sequence."""
    if isinstance(batch, (tuple, list)):
        first = batch[0]
        return tuple(first) if isinstance(first, (tuple, list)) else (first,)
    return (batch,)


def _check_sampler(loader: DataLoader, rank: int, world: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler) and (sampler.num_replicas, sampler.rank) != (world, rank):
        raise ValueError(
            f"calibrate: the DataLoader's DistributedSampler shards for rank {sampler.rank} of {sampler.num_replicas}, "
            f"but this process is rank {rank} of {world} in the group; build it with "
            f"DistributedSampler(dataset, num_replicas={world}, rank={rank})"
        )


def calibrate(
    model: nn.Module,
    data_loader: DataLoader,
    group: Optional[Any] = None,
    *,
    inputs: Callable[[Any], tuple[Any, ...]] = _model_inputs,
    progress: bool = True,
) -> nn.Module:
    """Run ``model`` on this rank's batches of ``data_loader``, then ``sync_observers``. Returns ``model``.

    Give each rank its own shard, e.g. ``DataLoader(data, batch_size=..., sampler=DistributedSampler(data,
    shuffle=False))``: a DistributedSampler pads the shards to equal length by
    repeating samples, which changes no min/max but adds those samples to
    histograms, so use a data set whose size the world size divides for a result
    identical to one process's. ``inputs`` maps a batch to the model's positional
    arguments (default: the batch, or its first element for ``(inputs, labels)``
    batches). A progress bar shows on rank 0 of ``group`` only.
    """
    rank, world = require_process_group("calibrate", group)
    _check_sampler(data_loader, rank, world)
    batches = tqdm(data_loader, desc=f"calibrating ({world} ranks)", unit="batch", disable=not progress or rank != 0)
    with torch.no_grad():
        for batch in batches:
            model(*inputs(batch))
    return sync_observers(model, group)
