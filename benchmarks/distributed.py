"""Calibration across processes (``pt2q.distributed``), measured in one run.

Per model (XNNPACK per-channel PTQ config, random inputs of the model's example shape):

* throughput of calibrating the same inputs in 1 process and sharded over 2 gloo
  processes (``DistributedSampler``): every rank observes its shard and then merges
  (``sync_observers``), as ``pt2q.distributed.calibrate`` does; inputs per second of
  the slowest rank, from a barrier to the end of the merge;
* the merge alone: median wall time of ``sync_observers`` on 2 processes, each time
  on a fresh copy of the same calibrated (unmerged) model.

One thread per process. Usage: ``python -m benchmarks.distributed [--small] [--models mlp,...]``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from benchmarks.common import Section, progress
from pt2q import prepare_pt2e
from pt2q.distributed import sync_observers
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tests.helpers import run_on_ranks

__all__ = ["measure", "markdown_table", "suite", "main"]


def _calibrate_on_rank(
    rank: int, world: int, model: torch.nn.Module, example: tuple, inputs: int, sync_repeats: int
) -> dict[str, float]:
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    g = torch.Generator().manual_seed(0)
    data = [tuple(torch.randn(x.shape, generator=g) for x in example) for _ in range(inputs)]
    loader = DataLoader(data, batch_size=None, sampler=DistributedSampler(data, shuffle=False))
    with torch.no_grad():
        dist.barrier()
        start = time.perf_counter()
        for batch in loader:
            prepared(*batch)
        observed = time.perf_counter()
        unmerged = copy.deepcopy(prepared)
        copied = time.perf_counter()
        sync_observers(prepared)
        done = time.perf_counter()
    merges = []
    for _ in range(sync_repeats if world > 1 else 0):
        fresh = copy.deepcopy(unmerged)
        dist.barrier()
        t0 = time.perf_counter()
        sync_observers(fresh)
        merges.append(time.perf_counter() - t0)
    observers = sum(1 for name, _ in prepared.named_children() if name.startswith("activation_post_process_"))
    return {
        "seconds": (observed - start) + (done - copied),
        "sync_ms": statistics.median(merges) * 1e3 if merges else 0.0,
        "observers": observers,
    }


def measure(model: torch.nn.Module, example: tuple, inputs: int, sync_repeats: int) -> dict[str, float]:
    """Inputs per second on 1 and 2 processes, and the median ms of one merge on 2."""
    row: dict[str, float] = {"inputs": inputs}
    for world in (1, 2):
        ranks = run_on_ranks(_calibrate_on_rank, world, timeout=1800, args=(model, example, inputs, sync_repeats))
        row[f"{world}p_per_s"] = inputs / max(r["seconds"] for r in ranks)
        if world == 2:
            row["sync_ms"] = max(r["sync_ms"] for r in ranks)
            row["sync_share"] = row["sync_ms"] / 1e3 / max(r["seconds"] for r in ranks)
        row["observers"] = ranks[0]["observers"]
    return row


def markdown_table(rows: dict[str, dict[str, float]]) -> str:
    lines = [
        "| model | observers | inputs | 1 process inputs/s | 2 processes inputs/s | 2p / 1p | "
        "sync_observers ms (2 processes) | sync share of 2-process calibration |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {name} | {r['observers']:.0f} | {r['inputs']:.0f} | {r['1p_per_s']:.1f} | {r['2p_per_s']:.1f} | "
        f"{r['2p_per_s'] / r['1p_per_s']:.2f} | {r['sync_ms']:.1f} | {100 * r['sync_share']:.1f}% |"
        for name, r in rows.items()
    ]
    return "\n".join(lines)


def suite(models: Any, variants: Any, settings: Any) -> list[Section]:
    """The ``distributed`` suite of ``benchmarks.run``."""
    inputs, repeats = (16, 5) if settings.small else (64, 20)
    rows = {name: measure(*models[name], inputs, repeats) for name in progress(models, "distributed")}
    return [
        Section(
            "Calibration across processes",
            (
                f"`pt2q.distributed`: {inputs} random inputs of each model's example shape, XNNPACK per-channel "
                "PTQ config, calibrated in 1 process and sharded over 2 gloo processes (`DistributedSampler`); "
                "inputs/s of the slowest rank from a barrier to the end of the merge (`sync_observers`), so 2p / 1p "
                f"is the speed-up of sharding. sync_observers ms: median of {repeats} merges of a fresh copy of the "
                "same calibrated model on 2 processes (slowest rank). One thread per process; on a machine whose "
                "cores are shared, the 2-process speed-up is bounded by the idle cores."
            ),
            markdown_table(rows),
        )
    ]


def main(argv: list[str] | None = None) -> str:
    from benchmarks.models import benchmark_models

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="small inputs, fewer repeats")
    parser.add_argument("--models", default="mlp,resnet18", help="comma-separated benchmark models")
    args = parser.parse_args(argv)
    available = benchmark_models(small=args.small)
    inputs, repeats = (16, 5) if args.small else (64, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = {name: measure(*available[name], inputs, repeats) for name in args.models.split(",")}
    table = markdown_table(rows)
    print(table)
    return table


if __name__ == "__main__":
    main()
