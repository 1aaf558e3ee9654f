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
  summed. One process re-bins at other moments, so the histograms differ by
  where re-binning moved mass (within about one bin); measured on real
  activations the qparams agree to a few bins of the histogram (tests/test_distributed.py
  checks scale within 1% and zero point within 2).
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
  into the weights) are averaged: with ``convert_sync_batchnorm`` they are equal
  on every rank already.

Histograms are summed, so a histogram observer is merged once, after
calibration; syncing again is a no-op, or an error if a rank observed more.

QAT under DDP: wrap the prepared model in ``DistributedDataParallel(m,
broadcast_buffers=False)`` so that each rank's observers keep their own
statistics (DDP's default broadcasts rank 0's buffers before every forward,
overwriting the other ranks' observations), optionally after
``convert_sync_batchnorm(m)``; train; call ``sync_observers(m)`` (at the end, or
at any point such as each epoch's end); then ``convert_pt2e(move_exported_model_to_eval(m))``
gives the same program on every rank, so rank 0 may save it.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.fx import GraphModule
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from pt2q.derived import DerivedObserverOrFakeQuantize
from pt2q.fake_quantize import FakeQuantizeBase
from pt2q.merge_across_ranks import MergeSteps, Reductions
from pt2q.observer import ObserverBase
from pt2q.sync_batch_norm import convert_sync_batchnorm, require_process_group, sync_batch_norm

__all__ = ["sync_observers", "calibrate", "convert_sync_batchnorm"]

aten = torch.ops.aten
_REDUCE_OPS = {"min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX, "sum": dist.ReduceOp.SUM}


@dataclasses.dataclass
class _Member:
    """Something whose state is merged: an observer, a fake quantizer or a BatchNorm's running statistics."""

    name: str  # module path, or the BatchNorm node's name
    where: str  # for messages
    kind: str
    has_statistics: bool
    merge: Callable[[], MergeSteps]
    tensors: list[Tensor]  # the state it merges


def _batch_norm_merge(stats: list[Tensor]) -> MergeSteps:
    """Running mean and variance averaged; the batch counter (equal on all ranks in practice) takes the max."""
    merged = yield [(t, "max" if not t.is_floating_point() else "mean") for t in stats]
    for t, m in zip(stats, merged):
        t.copy_(m)


def _members(model: nn.Module) -> list[_Member]:
    members: list[_Member] = []
    owners: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(owner) for owner in owners) or isinstance(module, DerivedObserverOrFakeQuantize):
            continue  # an observer inside a fake quantizer merges through it; derived qparams follow their sources
        if isinstance(module, (ObserverBase, FakeQuantizeBase)):
            where = f"{name} ({module.target_name})" if module.target_name else name
            members.append(_Member(name, where, type(module).__name__, bool(getattr(module, "has_statistics", True)),
                                   module.merge_across_ranks, [*module.parameters(), *module.buffers()]))
            owners.append(name + ".")
        elif hasattr(module, "calculate_qparams"):
            raise TypeError(
                f"sync_observers: module {name!r} ({type(module).__name__}) looks like an observer but is not a pt2q "
                "ObserverBase or FakeQuantizeBase, so pt2q cannot merge its statistics across ranks"
            )
    if isinstance(model, GraphModule):
        members += _batch_norm_members(model)
    return members


def _batch_norm_members(gm: GraphModule) -> list[_Member]:
    members, seen = [], set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in (aten.batch_norm.default, sync_batch_norm):
            continue
        attrs = [a for a in node.args[3:5] if getattr(a, "op", None) == "get_attr"]
        if len(attrs) != 2 or attrs[0].target in seen:
            continue
        seen.add(attrs[0].target)
        stats = [gm.get_buffer(a.target) for a in attrs]
        counter = attrs[0].target.rsplit("running_mean", 1)[0] + "num_batches_tracked"
        if attrs[0].target.endswith("running_mean") and _has_buffer(gm, counter):
            stats.append(gm.get_buffer(counter))
        members.append(_Member(node.name, f"BatchNorm statistics of node {node.name!r}", "BatchNorm", True,
                               functools.partial(_batch_norm_merge, stats), stats))
    return members


def _has_buffer(gm: GraphModule, target: str) -> bool:
    try:
        gm.get_buffer(target)
    except AttributeError:
        return False
    return True


def _gather(t: Tensor, group: Any) -> Tensor:
    """``[world, *t.shape]``: every rank's ``t``, in rank order."""
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return torch.stack(out)


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def _check_same_members(members: list[_Member], rank: int, group: Any) -> None:
    """The ranks must hold the same observers, in the same order, or the reductions would mix them up."""
    codes = torch.tensor([_crc(f"{m.name}:{m.kind}") for m in members], dtype=torch.int64)
    header = _gather(torch.tensor([len(members), _crc(" ".join(map(str, codes.tolist())))]), group)
    if (header == header[0]).all():
        return
    counts = header[:, 0].tolist()
    if len(set(counts)) > 1:
        per_rank = ", ".join(f"rank {r}: {c}" for r, c in enumerate(counts))
        raise ValueError(
            f"sync_observers: the ranks hold different models ({per_rank} observers and BatchNorms). Every rank "
            "must prepare the same model with the same quantizer before calibrating."
        )
    everyone = _gather(codes, group)
    i = int((everyone != everyone[0]).any(0).nonzero()[0])
    other = int((everyone[:, i] != codes[i]).nonzero()[0])
    raise ValueError(
        f"sync_observers: the ranks hold different models: {members[i].where} ({members[i].kind}) on rank {rank} "
        f"differs from rank {other}'s observer at the same position. Every rank must prepare the same model with "
        "the same quantizer."
    )


_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _checksum(t: Tensor) -> int:
    """The sum of the tensor's elements read as integers: equal tensors, equal sums (any thread count)."""
    t = t.detach().contiguous()
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    elif t.element_size() in _INT_VIEW:
        t = t.view(_INT_VIEW[t.element_size()])
    return int(t.sum(dtype=torch.int64))


def _check_same_weights(model: nn.Module, members: list[_Member], rank: int, group: Any) -> None:
    """Everything else convert_pt2e reads (weights, constants) must already be equal on every rank."""
    merged = {id(t) for m in members for t in m.tensors}
    named = [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if id(t) not in merged]
    mine = torch.tensor([[_checksum(t), t.numel()] for _, t in named], dtype=torch.int64).reshape(-1, 2)
    counts = _gather(torch.tensor([len(named)]), group)
    if (counts != len(named)).any():
        raise ValueError(f"sync_observers: the ranks hold different models ({counts.flatten().tolist()} weights)")
    differ = (_gather(mine, group) != mine).any(-1).any(0).nonzero().flatten().tolist()
    if differ:
        raise ValueError(
            f"sync_observers: the ranks hold different weights, e.g. {named[differ[0]][0]!r} "
            f"({len(differ)} tensor(s) differ from another rank's). Every rank must prepare the same float model: "
            "DistributedDataParallel keeps parameters equal, but BatchNorm running statistics (which prepare_pt2e "
            "folds into the weights) are per rank; broadcast the float model's buffers from rank 0, or load the same "
            "checkpoint everywhere, before exporting."
        )


def _check_every_rank_saw_data(members: list[_Member], rank: int, group: Any) -> list[bool]:
    """Which members to merge: those with statistics on every rank (none anywhere: left to convert's error)."""
    flags = _gather(torch.tensor([m.has_statistics for m in members], dtype=torch.int64), group)
    partial = (flags.any(0) & ~flags.all(0)).nonzero().flatten().tolist()
    if partial:
        empty = sorted({r for i in partial for r in (flags[:, i] == 0).nonzero().flatten().tolist()})
        first = members[partial[0]]
        raise RuntimeError(
            f"sync_observers: rank(s) {empty} saw no data: {len(partial)} observer(s) have statistics on other ranks "
            f"but not there (e.g. {first.where}, {first.kind}). Run calibration batches on every rank before syncing: "
            "check that each rank's DataLoader yields data (a DistributedSampler gives each rank "
            "len(dataset) / world_size samples, rounded up)."
        )
    return flags.all(0).tolist()


def _describe(requests: Optional[Reductions]) -> list[int]:
    """Number, size and a checksum of shapes, dtypes and ops of one member's requests in a round."""
    if requests is None:
        return [0, 0, 0]
    layout = ";".join(f"{tuple(t.shape)}{t.dtype}{op}" for t, op in requests)
    return [len(requests), sum(t.numel() for t, _ in requests), _crc(layout)]


def _check_same_requests(members: list[_Member], rounds: list[Optional[Reductions]], rank: int, group: Any) -> None:
    mine = torch.tensor([_describe(r) for r in rounds], dtype=torch.int64).reshape(len(rounds), 3)
    everyone = _gather(mine, group)
    differ = (everyone != mine).any(-1).any(0).nonzero().flatten().tolist()
    if differ:
        i = differ[0]
        sizes = ", ".join(f"rank {r}: {int(everyone[r, i, 1])}" for r in range(everyone.shape[0]))
        raise ValueError(
            f"sync_observers: {members[i].where} ({members[i].kind}) holds differently shaped statistics on the "
            f"ranks ({sizes} values). The ranks must run the same model on inputs of the same shape (per-channel "
            "observers need the same number of channels)."
        )


def _reduce(rounds: list[Optional[Reductions]], world: int, group: Any) -> list[Optional[list[Tensor]]]:
    """All requests of a round in one float64 all_reduce per op (MIN, MAX, SUM; "mean" is a SUM / world)."""
    buckets: dict[str, list[Tensor]] = {"min": [], "max": [], "sum": []}
    for requests in rounds:
        for t, op in requests or ():
            if op not in ("min", "max", "sum", "mean"):
                raise ValueError(f"sync_observers: unknown reduction {op!r} (use min, max, sum or mean)")
            buckets["sum" if op == "mean" else op].append(t.detach().reshape(-1).double())
    reduced: dict[str, Iterator[Tensor]] = {}
    for op, parts in buckets.items():
        if parts:
            flat = torch.cat(parts)
            dist.all_reduce(flat, op=_REDUCE_OPS[op], group=group)
            reduced[op] = iter(flat.split([p.numel() for p in parts]))
    results: list[Optional[list[Tensor]]] = []
    for requests in rounds:
        if requests is None:
            results.append(None)
            continue
        out = []
        for t, op in requests:
            value = next(reduced["sum" if op == "mean" else op])
            if op == "mean":
                value = value / world
            out.append(value.to(t.dtype).reshape(t.shape))
        results.append(out)
    return results


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def sync_observers(model: nn.Module, group: Optional[Any] = None) -> nn.Module:
    """Merge the statistics of every observer, fake quantizer and BatchNorm of ``model`` across ``group``.

    Call it on every rank (it is a collective), after calibration or training
    and before ``convert_pt2e``; afterwards every rank holds the same merged
    state (see the module docstring for what each observer's merge computes).
    ``model`` is a prepared model or the ``DistributedDataParallel`` wrapping
    it; ``group`` defaults to the default process group. Returns ``model``.
    """
    rank, world = require_process_group("sync_observers", group)
    if world == 1:
        return model
    module = _unwrap(model)
    members = _members(module)
    _check_same_members(members, rank, group)
    _check_same_weights(module, members, rank, group)
    active = [m for m, ok in zip(members, _check_every_rank_saw_data(members, rank, group)) if ok]
    steps: list[Optional[MergeSteps]] = [m.merge() for m in active]
    rounds = [_advance(s, None) for s in steps]
    while any(r is not None for r in rounds):
        _check_same_requests(active, rounds, rank, group)
        results = _reduce(rounds, world, group)
        rounds = [_advance(s, res) if res is not None else None for s, res in zip(steps, results)]
    return model


def _advance(steps: Optional[MergeSteps], results: Optional[list[Tensor]]) -> Optional[Reductions]:
    """The member's next requests (None when it is done)."""
    if steps is None:
        return None
    try:
        return next(steps) if results is None else steps.send(results)
    except StopIteration:
        return None


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
