"""Model size on disk: fp32 vs pt2q int8 vs torchao int8, as a saved ``.pt2`` and as an ExecuTorch ``.pte``.

The int8 programs come from the same model, calibration data and XNNPACK per-channel
symmetric config (``benchmarks/flows.py``). ``.pt2``: bytes written by
``torch.export.save``; ``.pte``: bytes of the XNNPACK-delegated ExecuTorch program
(``benchmarks/executorch_speed.py``'s ``lower_to_pte``). Sizes are deterministic: no repeats.

    python -m benchmarks.size [--small] [--models mlp,resnet18,...]
"""

from __future__ import annotations

import argparse
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from benchmarks.common import Section, progress
from benchmarks.executorch_speed import export_variants, lower_to_pte
from benchmarks.models import benchmark_models
from benchmarks.settings import Settings

if TYPE_CHECKING:
    from benchmarks.variants import Models, Variants

__all__ = ["FORMATS", "pt2_bytes", "sizes", "measure", "markdown_table", "suite", "main"]

FORMATS = (".pt2", ".pte")


def pt2_bytes(program: torch.export.ExportedProgram) -> int:
    """Size of ``program`` saved with ``torch.export.save``."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getbuffer().nbytes


def sizes(programs: dict[str, torch.export.ExportedProgram], ptes: dict[str, bytes]) -> dict[str, dict[str, int]]:
    """``{".pt2" | ".pte": {variant: bytes}}`` from each variant's exported program and ``.pte`` buffer."""
    return {
        ".pt2": {name: pt2_bytes(program) for name, program in programs.items()},
        ".pte": {name: len(buffer) for name, buffer in ptes.items()},
    }


def measure(model: torch.nn.Module, example_inputs: Sequence[torch.Tensor]) -> dict[str, dict[str, int]]:
    """``{".pt2" | ".pte": {"fp32" | "torchao_int8" | "pt2q_int8": bytes}}`` for ``model``."""
    programs = export_variants(model, example_inputs)
    return sizes(programs, {name: lower_to_pte(name, program) for name, program in programs.items()})


def _kib(n: int) -> str:
    return f"{n / 1024:,.1f}"


def markdown_table(results: dict[str, dict[str, dict[str, int]]]) -> str:
    """One row per model and format: KiB of each variant, int8 / fp32 ratios and pt2q / torchao."""
    lines = [
        "| model | format | fp32 KiB | pt2q int8 KiB | torchao int8 KiB | pt2q/fp32 | torchao/fp32 | pt2q/torchao |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, by_format in results.items():
        for fmt in FORMATS:
            b = by_format[fmt]
            fp32, ours, theirs = b["fp32"], b["pt2q_int8"], b["torchao_int8"]
            lines.append(
                f"| {name} | {fmt} | {_kib(fp32)} | {_kib(ours)} | {_kib(theirs)} "
                f"| {ours / fp32:.3f} | {theirs / fp32:.3f} | {ours / theirs:.3f} |"
            )
    return "\n".join(lines)


def suite(models: Models, variants: Variants, settings: Settings) -> list[Section]:
    """The ``size`` suite of ``benchmarks.run``: saved .pt2 and .pte bytes of fp32, pt2q int8 and torchao int8."""
    results = {name: sizes(variants.programs(name), variants.ptes(name)) for name in progress(models, "size")}
    return [
        Section(
            "Size on disk",
            (
                "`.pt2`: bytes written by `torch.export.save` of the exported fp32 program and of the re-exported "
                "converted int8 programs; `.pte`: bytes of the ExecuTorch program with the XNNPACK delegate. "
                "XNNPACK per-channel config for both flows; KiB = 1024 bytes; sizes are deterministic (no repeats)."
            ),
            markdown_table(results),
        )
    ]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="smaller inputs and a 2-layer encoder")
    parser.add_argument("--models", default="resnet18,mobilenet_v2,bert_encoder_12l,mlp")
    args = parser.parse_args(argv)
    available = benchmark_models(small=args.small)
    table = markdown_table({name: measure(*available[name]) for name in args.models.split(",")})
    print(table)
    return table


if __name__ == "__main__":
    main()
