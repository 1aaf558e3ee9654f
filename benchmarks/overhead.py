"""Quantization overhead, pt2q vs torchao, measured in one run.

* prepare+convert: wall time of ``prepare_pt2e`` + ``convert_pt2e`` (export excluded);
* calibration: one forward pass of the prepared (observed) model divided by one plain fp32
  forward of the exported model, and the overhead above 1.

Both flows use the same model and the XNNPACK per-channel config. Medians over repeats.
Usage: ``python -m benchmarks.overhead [--quick] [--models resnet18,...]``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from benchmarks.common import Section, progress
from benchmarks.flows import quantize, xnnpack_flows
from benchmarks.models import benchmark_models
from benchmarks.settings import Settings
from pt2q.runtime.timing import median_ms

if TYPE_CHECKING:
    from benchmarks.variants import Models, Variants

__all__ = ["measure", "markdown_table", "suite", "main"]


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls (no warm-up)."""
    return median_ms(fn, (), repeats, warmup=0) / 1e3


@functools.cache
def _warm_up() -> None:
    """Quantize a tiny model once with each flow, so lazy imports and first-call caches are not timed."""
    example = (torch.randn(2, 8),)
    for flow in xnnpack_flows().values():
        quantize(flow, torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU()).eval(), example, [example])


def measure(model: torch.nn.Module, example: tuple, repeats: int) -> dict[str, dict[str, float]]:
    """Per flow: median prepare+convert seconds, calibration-forward / fp32-forward ratio and its overhead."""
    _warm_up()
    exported = torch.export.export(model, example)
    fp32 = exported.module()
    with torch.no_grad():
        fp32(*example)
        t_fp32 = _median_time(lambda: fp32(*example), repeats * 3)
    results = {}
    for name, (prepare, convert, make_quantizer) in xnnpack_flows().items():
        prep_conv, calib = [], []
        for _ in range(repeats):
            gm = copy.deepcopy(exported).module()
            t0 = time.perf_counter()
            prepared = prepare(gm, make_quantizer())
            t_prepare = time.perf_counter() - t0
            with torch.no_grad():
                prepared(*example)  # first batch initializes observers
                calib.append(_median_time(functools.partial(prepared, *example), 3))
            t0 = time.perf_counter()
            convert(prepared)
            prep_conv.append(t_prepare + time.perf_counter() - t0)
        t_calib = statistics.median(calib)
        results[name] = {
            "prepare_convert_s": statistics.median(prep_conv),
            "calib_ratio": t_calib / t_fp32,
            "calib_overhead": t_calib / t_fp32 - 1,
        }
    return results


def markdown_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """One row per model from ``{model: measure(...)}``: times, calibration ratios and pt2q/torchao ratios."""
    lines = [
        "| model | pt2q prepare+convert s | torchao prepare+convert s | ratio pt2q/torchao "
        "| pt2q calib/fp32 | torchao calib/fp32 | overhead ratio pt2q/torchao |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        ours, theirs = r["pt2q"], r["torchao"]
        lines.append(
            f"| {name} | {ours['prepare_convert_s']:.3f} | {theirs['prepare_convert_s']:.3f} "
            f"| {ours['prepare_convert_s'] / theirs['prepare_convert_s']:.2f} "
            f"| {ours['calib_ratio']:.2f} | {theirs['calib_ratio']:.2f} "
            f"| {ours['calib_overhead'] / max(theirs['calib_overhead'], 1e-9):.2f} |"
        )
    return "\n".join(lines)


def suite(models: Models, variants: Variants, settings: Settings) -> list[Section]:
    """The ``overhead`` suite of ``benchmarks.run``: prepare+convert time and calibration-forward cost, pt2q vs
    torchao (XNNPACK per-channel)."""
    results = {name: measure(*models[name], settings.overhead_repeats) for name in progress(models, "overhead")}
    return [
        Section(
            "Overhead: prepare + convert, calibration",
            (
                "Wall time of `prepare_pt2e` + `convert_pt2e` (export excluded; median of "
                f"{settings.overhead_repeats}, after one warm-up of each flow on a tiny model). calib/fp32: median "
                "time of a calibration forward of the prepared model (3 calls per repeat, after the first) over the "
                f"median fp32 forward of the exported model ({3 * settings.overhead_repeats} calls). Overhead ratio = "
                "(pt2q calib/fp32 - 1) / (torchao calib/fp32 - 1), noisy where a calibration forward costs about one "
                "fp32 forward. One thread, XNNPACK per-channel config."
            ),
            markdown_table(results),
        )
    ]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small inputs, one repeat (for tests)")
    parser.add_argument("--models", default="resnet18,bert_encoder_12l")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    models = benchmark_models(small=args.quick)
    repeats = 1 if args.quick else 3
    table = markdown_table({name: measure(*models[name], repeats) for name in args.models.split(",")})
    print(table)
    return table


if __name__ == "__main__":
    main()
