"""``sync_observers``: merge every observer's statistics across the ranks of a process group.

It drives the ``merge_across_ranks`` generators of all observers and fake
quantizers (``pt2q.observers.merge_across_ranks``), plus the running statistics of the
graph's BatchNorms, in step: each round's requests go into one float64
``all_reduce`` MIN (max as the min of negatives) and one SUM, whatever the number
of observers. Before any data moves, one ``all_gather`` checks that the ranks
hold the same model (observers, and checksums of every other weight and
constant), that every rank has statistics where another has, and that the
first round's tensors have the same shapes; later rounds check their shapes
the same way. Every rank raises the same error at the same point, so a bad
setup fails everywhere instead of hanging.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.fx import GraphModule
from torch.nn.parallel import DistributedDataParallel

from pt2q.core.ops import BATCH_NORM, is_op
from pt2q.distributed.sync_batch_norm import require_process_group, sync_batch_norm
from pt2q.fake_quant.base import FakeQuantizeBase
from pt2q.observers.base import ObserverBase
from pt2q.observers.derived import DerivedObserverOrFakeQuantize
from pt2q.observers.merge_across_ranks import MergeSteps, Reductions

__all__ = ["sync_observers"]

Round = list[Optional[Reductions]]  # per member: its requests this round (None: done, or never started)


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
    merged = yield [(t, "mean" if t.is_floating_point() else "max") for t in stats]
    for t, m in zip(stats, merged):
        t.copy_(m)


def _members(model: nn.Module) -> list[_Member]:
    members: list[_Member] = []
    inside: set[str] = set()  # members and the modules under them (named_modules lists a parent first)
    for name, module in model.named_modules():
        if (name and name.rpartition(".")[0] in inside) or isinstance(module, DerivedObserverOrFakeQuantize):
            inside.add(name)  # an observer inside a fake quantizer merges through it; derived qparams follow sources
            continue
        if isinstance(module, (ObserverBase, FakeQuantizeBase)):
            label = name or type(module).__name__
            where = f"{label} ({module.target_name})" if module.target_name else label
            members.append(
                _Member(
                    name,
                    where,
                    type(module).__name__,
                    bool(getattr(module, "has_statistics", True)),
                    module.merge_across_ranks,
                    [*module.parameters(), *module.buffers()],
                )
            )
            inside.add(name)
        elif hasattr(module, "calculate_qparams"):
            raise TypeError(
                f"sync_observers: module {name!r} ({type(module).__name__}) looks like an observer but is not a pt2q "
                "ObserverBase or FakeQuantizeBase, so pt2q cannot merge its statistics across ranks"
            )
    if isinstance(model, GraphModule):
        members += _batch_norm_members(model)
    return members


def _batch_norm_members(gm: GraphModule) -> list[_Member]:
    members, seen, buffers = [], set(), dict(gm.named_buffers())
    for node in gm.graph.nodes:
        if not is_op(node, BATCH_NORM | {sync_batch_norm}):
            continue
        attrs = [a for a in node.args[3:5] if getattr(a, "op", None) == "get_attr"]
        if len(attrs) != 2 or attrs[0].target in seen:
            continue
        seen.add(attrs[0].target)
        stats = [buffers[a.target] for a in attrs if a.target in buffers]
        counter = attrs[0].target.rsplit("running_mean", 1)[0] + "num_batches_tracked"
        if attrs[0].target.endswith("running_mean") and counter in buffers:
            stats.append(buffers[counter])
        members.append(
            _Member(
                node.name,
                f"BatchNorm statistics of node {node.name!r}",
                "BatchNorm",
                True,
                functools.partial(_batch_norm_merge, stats),
                stats,
            )
        )
    return members


def _weights(model: nn.Module, members: list[_Member]) -> list[tuple[str, Tensor]]:
    """Every parameter and buffer that no merge touches: convert_pt2e reads them as they are."""
    merged = {id(t) for m in members for t in m.tensors}
    return [(n, t) for n, t in [*model.named_parameters(), *model.named_buffers()] if id(t) not in merged]


def _checksum(t: Tensor) -> int:
    """The tensor's bytes summed as int64 words (wrapping): equal tensors give equal sums, in any thread count."""
    raw = t.detach().contiguous().reshape(-1).view(torch.uint8)
    whole = raw.numel() // 8 * 8
    return int(raw[:whole].view(torch.int64).sum()) + int(raw[whole:].sum())


def _crc(text: str) -> int:
    return zlib.crc32(text.encode())


def _layout(requests: Optional[Reductions]) -> list[int]:
    """Number, size and a checksum of shapes, dtypes and ops of one member's requests in a round."""
    if requests is None:
        return [0, 0, 0]
    return [
        len(requests),
        sum(t.numel() for t, _ in requests),
        _crc(";".join(f"{tuple(t.shape)}{t.dtype}{op}" for t, op in requests)),
    ]


def _gather(t: Tensor, group: Any) -> Tensor:
    """``[world, *t.shape]``: every rank's ``t``, in rank order."""
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return torch.stack(out)


_SAME_MODEL = "Every rank must prepare the same model with the same quantizer."


def _check_same_model(members: list[_Member], weights: list[tuple[str, Tensor]], rank: int, group: Any) -> None:
    """The ranks must hold the same observers in the same order, or the reductions would mix them up."""
    codes = torch.tensor([_crc(f"{m.name}:{m.kind}") for m in members], dtype=torch.int64)
    header = _gather(torch.tensor([len(members), _crc(" ".join(map(str, codes.tolist()))), len(weights)]), group)
    if (header == header[0]).all():
        return
    if len(set(header[:, 0].tolist())) > 1:
        per_rank = ", ".join(f"rank {r}: {c}" for r, c in enumerate(header[:, 0].tolist()))
        raise ValueError(
            f"sync_observers: the ranks hold different models ({per_rank} observers and BatchNorms). {_SAME_MODEL}"
        )
    if len(set(header[:, 2].tolist())) > 1:
        raise ValueError(
            f"sync_observers: the ranks hold different models ({header[:, 2].tolist()} weights). {_SAME_MODEL}"
        )
    everyone = _gather(codes, group)
    i = int((everyone != everyone[0]).any(0).nonzero()[0])
    other = int((everyone[:, i] != codes[i]).nonzero()[0])
    raise ValueError(
        f"sync_observers: the ranks hold different models: {members[i].where} ({members[i].kind}) on rank {rank} "
        f"differs from rank {other}'s observer at the same position. {_SAME_MODEL}"
    )


def _check_weights_data_and_shapes(
    members: list[_Member], weights: list[tuple[str, Tensor]], first: Round, group: Any
) -> None:
    """One all_gather: weight checksums, which members have statistics, and the first round's layout."""
    sums = torch.tensor([_checksum(t) for _, t in weights], dtype=torch.int64)
    flags = torch.tensor([m.has_statistics for m in members], dtype=torch.int64)
    layouts = torch.tensor([_layout(r) for r in first], dtype=torch.int64).reshape(-1)
    everyone = _gather(torch.cat([sums, flags, layouts]), group)
    n, m = len(weights), len(members)
    differ = (everyone[:, :n] != sums).any(0).nonzero().flatten().tolist()
    if differ:
        raise ValueError(
            f"sync_observers: the ranks hold different weights, e.g. {weights[differ[0]][0]!r} ({len(differ)} "
            "tensor(s) differ from another rank's). Every rank must prepare the same float model: "
            "DistributedDataParallel keeps parameters equal, but BatchNorm running statistics (which prepare_pt2e "
            "folds into the weights) are per rank; broadcast the float model's buffers from rank 0, or load the same "
            "checkpoint everywhere, before exporting."
        )
    has = everyone[:, n : n + m].bool()
    partial = (has.any(0) & ~has.all(0)).nonzero().flatten().tolist()
    if partial:
        empty = sorted({r for i in partial for r in (~has[:, i]).nonzero().flatten().tolist()})
        example = members[partial[0]]
        raise RuntimeError(
            f"sync_observers: rank(s) {empty} saw no data: {len(partial)} observer(s) have statistics on other ranks "
            f"but not there (e.g. {example.where}, {example.kind}). Run calibration batches on every rank before "
            "syncing: check that each rank's DataLoader yields data (a DistributedSampler gives each rank "
            "len(dataset) / world_size samples, rounded up)."
        )
    _check_layouts(members, everyone[:, n + m :].reshape(everyone.shape[0], m, 3), layouts.reshape(m, 3))


def _check_layouts(members: list[_Member], everyone: Tensor, mine: Tensor) -> None:
    differ = (everyone != mine).any(-1).any(0).nonzero().flatten().tolist()
    if differ:
        i = differ[0]
        sizes = ", ".join(f"rank {r}: {int(everyone[r, i, 1])}" for r in range(everyone.shape[0]))
        raise ValueError(
            f"sync_observers: {members[i].where} ({members[i].kind}) holds differently shaped statistics on the "
            f"ranks ({sizes} values). The ranks must run the same model on inputs of the same shape (per-channel "
            "observers need the same number of channels)."
        )


def _reduce(requests: Round, world: int, group: Any) -> list[Optional[list[Tensor]]]:
    """A round's requests in two float64 all_reduces: MIN (of the mins and the negated maxes) and SUM."""
    parts: dict[str, list[Tensor]] = {"min": [], "sum": []}
    for member in requests:
        for t, op in member or ():
            if op not in ("min", "max", "sum", "mean"):
                raise ValueError(f"sync_observers: unknown reduction {op!r} (use min, max, sum or mean)")
            flat = t.detach().reshape(-1).double()
            parts["min" if op in ("min", "max") else "sum"].append(-flat if op == "max" else flat)
    reduced: dict[str, Iterator[Tensor]] = {}
    for bucket, tensors in parts.items():
        if tensors:
            flat = torch.cat(tensors)
            dist.all_reduce(flat, op=dist.ReduceOp.MIN if bucket == "min" else dist.ReduceOp.SUM, group=group)
            reduced[bucket] = iter(flat.split([t.numel() for t in tensors]))

    def result(t: Tensor, op: str) -> Tensor:
        value = next(reduced["min" if op in ("min", "max") else "sum"])
        value = -value if op == "max" else value / world if op == "mean" else value
        return value.to(t.dtype).reshape(t.shape)

    return [None if member is None else [result(t, op) for t, op in member] for member in requests]


def _advance(steps: Optional[MergeSteps], results: Optional[list[Tensor]]) -> Optional[Reductions]:
    """A member's next requests (None when it is done)."""
    if steps is None:
        return None
    try:
        return next(steps) if results is None else steps.send(results)
    except StopIteration:
        return None


def sync_observers(model: nn.Module, group: Optional[Any] = None) -> nn.Module:
    """Merge the statistics of every observer, fake quantizer and BatchNorm of ``model`` across ``group``.

    Call it on every rank (it is a collective), after calibration or training
    and before ``convert_pt2e``; afterwards every rank holds the same merged
    state (what each observer's merge computes: ``pt2q.distributed``).
    ``model`` is a prepared model or the ``DistributedDataParallel`` wrapping
    it; ``group`` defaults to the default process group. Returns ``model``.
    """
    rank, world = require_process_group("sync_observers", group)
    if world == 1:
        return model
    module = model.module if isinstance(model, DistributedDataParallel) else model
    members = _members(module)
    weights = _weights(module, members)
    _check_same_model(members, weights, rank, group)
    steps = [m.merge() if m.has_statistics else None for m in members]  # no statistics anywhere: convert says so
    requests = [_advance(s, None) for s in steps]
    _check_weights_data_and_shapes(members, weights, requests, group)
    while any(r is not None for r in requests):
        results = _reduce(requests, world, group)
        requests = [_advance(s, res) for s, res in zip(steps, results)]
        if any(r is not None for r in requests):
            mine = torch.tensor([_layout(r) for r in requests], dtype=torch.int64)
            _check_layouts(members, _gather(mine, group), mine)
    return model
