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
from collections.abc import Sequence

import torch

import pt2q.runtime as runtime
from benchmarks.flows import calibration_batches, quantize, xnnpack_flows
from pt2q.lowering import to_executorch
from pt2q.runtime.timing import interleaved_medians_ms

__all__ = [
    "VARIANTS",
    "export_variants",
    "lower_to_pte",
    "lower_variants",
    "pte_latencies",
    "executorch_latencies",
    "main",
]

VARIANTS = ("fp32", "torchao_int8", "pt2q_int8")


def _executorch_lower(program: torch.export.ExportedProgram) -> bytes:
    """ExecuTorch's standard XNNPACK lowering, without anything from pt2q."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return bytes(to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)


def lower_to_pte(name: str, program: torch.export.ExportedProgram) -> bytes:
    """The ``.pte`` of variant ``name``: pt2q's own lowering for ``pt2q_int8``, ExecuTorch's for the others."""
    if name == "pt2q_int8":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return to_executorch(program).buffer
    return _executorch_lower(program)


def export_variants(
    model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]
) -> dict[str, torch.export.ExportedProgram]:
    """``fp32``, ``torchao_int8`` and ``pt2q_int8`` exported programs of ``model`` (same calibration data)."""
    model = model.eval()
    example = tuple(example_inputs)
    batches = calibration_batches(example)
    programs = {"fp32": torch.export.export(copy.deepcopy(model), example)}
    for flow_name, flow in xnnpack_flows().items():
        programs[f"{flow_name}_int8"] = torch.export.export(quantize(flow, model, example, batches), example)
    return {name: programs[name] for name in VARIANTS}


def lower_variants(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[str, bytes]:
    """The three ``.pte`` buffers of ``model``: ``fp32``, ``torchao_int8``, ``pt2q_int8``."""
    return {name: lower_to_pte(name, program) for name, program in export_variants(model, example_inputs).items()}


def pte_latencies(
    buffers: dict[str, bytes], example: tuple, runs: int, warmup: int, rounds: int = 3
) -> dict[str, float]:
    """Single-thread latency (ms) of each ``.pte`` buffer: the best of ``rounds`` medians over ``runs`` calls.

    Within a round the programs are called in turn, in a fresh random order each time
    (``benchmarks.common.interleaved_medians_ms``), so a burst of background load hits all alike.
    """
    runtime.set_num_threads(1)  # before loading: loaded programs hold on to the pool
    programs = {name: runtime.load(buf) for name, buf in buffers.items()}
    result = {name: float("inf") for name in programs}
    for round_ in range(rounds):
        medians = interleaved_medians_ms(programs, example, runs, warmup if round_ == 0 else 0)
        result = {name: min(result[name], ms) for name, ms in medians.items()}
    return result


def executorch_latencies(
    model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], runs: int = 30, warmup: int = 5, rounds: int = 3
) -> dict[str, float]:
    """Median single-thread latency (ms) of the fp32, torchao int8 and pt2q int8 ``.pte`` of ``model``.

    Keys are ``fp32``, ``torchao_int8`` and ``pt2q_int8``; each value is the best of
    ``rounds`` interleaved medians over ``runs`` timed calls.
    """
    return pte_latencies(lower_variants(model, example_inputs), tuple(example_inputs), runs, warmup, rounds)


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
        ms = pte_latencies(buffers, example, args.runs, warmup=5, rounds=args.rounds)
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
