"""ExecuTorch latency: fp32 .pte vs pt2q int8 .pte vs torchao int8 .pte, single thread.

All three run in the same ExecuTorch runtime (XNNPACK delegate + quantized kernels)
through ``pt2q.runtime``. The int8 programs come from the same model, calibration
data and per-channel symmetric XNNPACK config: pt2q's flow lowered with
``pt2q.lowering.to_executorch``; torchao's flow (``torchao.quantization.pt2e`` with
ExecuTorch's ``XNNPACKQuantizer``) and the fp32 baseline lowered with ExecuTorch's
own ``to_edge_transform_and_lower`` + ``XnnpackPartitioner``.

    python -m benchmarks.executorch_speed [--small] [--runs N]
"""
from __future__ import annotations

import argparse
import copy
import warnings
from typing import Sequence

import torch

import pt2q
import pt2q.runtime as runtime
from pt2q.lowering import to_executorch
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config

__all__ = ["lower_variants", "executorch_latencies", "main"]

VARIANTS = ("fp32", "torchao_int8", "pt2q_int8")


def _calibration(example_inputs: Sequence[torch.Tensor], n: int = 2) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(1)
    return [tuple(torch.randn(x.shape, generator=g) if x.is_floating_point() else x for x in example_inputs) for _ in range(n)]


def _executorch_lower(program: torch.export.ExportedProgram) -> bytes:
    """ExecuTorch's standard XNNPACK lowering, without anything from pt2q."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)


def _pt2q_int8(model: torch.nn.Module, example: tuple, batches: list[tuple]) -> bytes:
    m = torch.export.export(copy.deepcopy(model), example).module()
    m = pt2q.prepare_pt2e(m, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    for batch in batches:
        m(*batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_executorch(pt2q.convert_pt2e(m), example).buffer


def _torchao_int8(model: torch.nn.Module, example: tuple, batches: list[tuple]) -> bytes:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer as ExecuTorchXNNPACKQuantizer,
        get_symmetric_quantization_config as executorch_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    m = torch.export.export(copy.deepcopy(model), example).module()
    m = prepare_pt2e(m, ExecuTorchXNNPACKQuantizer().set_global(executorch_config(is_per_channel=True)))
    for batch in batches:
        m(*batch)
    return _executorch_lower(torch.export.export(convert_pt2e(m), example))


def lower_variants(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[str, bytes]:
    """The three ``.pte`` buffers of ``model``: ``fp32``, ``torchao_int8``, ``pt2q_int8``."""
    model = model.eval()
    example = tuple(example_inputs)
    batches = _calibration(example)
    return {
        "fp32": _executorch_lower(torch.export.export(copy.deepcopy(model), example)),
        "torchao_int8": _torchao_int8(model, example, batches),
        "pt2q_int8": _pt2q_int8(model, example, batches),
    }


def _latencies(buffers: dict[str, bytes], example: tuple, runs: int, warmup: int, rounds: int = 3) -> dict[str, float]:
    runtime.set_num_threads(1)  # before loading: loaded programs hold on to the pool
    programs = {name: runtime.load(buf) for name, buf in buffers.items()}
    result = {name: float("inf") for name in programs}
    # interleave the variants and keep each one's best median over the rounds, so a burst
    # of background load does not land on one variant only
    for _ in range(rounds):
        for name, program in programs.items():
            timing = runtime.time_program(program, *example, runs=runs, warmup=warmup)
            result[name] = min(result[name], timing.median_ms)
    return result


def executorch_latencies(
    model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], runs: int = 30, warmup: int = 5, rounds: int = 3
) -> dict[str, float]:
    """Median single-thread latency (ms) of the fp32, torchao int8 and pt2q int8 ``.pte`` of ``model``.

    Keys are ``fp32``, ``torchao_int8`` and ``pt2q_int8``; each value is the best of
    ``rounds`` interleaved medians over ``runs`` timed calls.
    """
    return _latencies(lower_variants(model, example_inputs), tuple(example_inputs), runs, warmup, rounds)


def main(argv: Sequence[str] | None = None) -> None:
    from benchmarks.models import benchmark_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smaller inputs and BERT depth, for a quick run")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    print("| model | fp32 ms | torchao int8 ms | pt2q int8 ms | pt2q / torchao | fp32 / pt2q | pt2q .pte / fp32 .pte |")
    print("|---|---|---|---|---|---|---|")
    for name, (model, example) in benchmark_models(small=args.small).items():
        buffers = lower_variants(model, example)
        ms = _latencies(buffers, example, args.runs, warmup=5, rounds=args.rounds)
        print(
            f"| {name} | {ms['fp32']:.3f} | {ms['torchao_int8']:.3f} | {ms['pt2q_int8']:.3f} "
            f"| {ms['pt2q_int8'] / ms['torchao_int8']:.2f}x | {ms['fp32'] / ms['pt2q_int8']:.2f}x "
            f"| {len(buffers['pt2q_int8']) / len(buffers['fp32']):.3f} |",
            flush=True,
        )
    print(
        "\nbest of interleaved medians, single thread, ExecuTorch runtime (XNNPACK); "
        "pt2q / torchao below 1.00x means pt2q is faster"
    )


if __name__ == "__main__":
    main()
