"""Hugging Face architectures through pt2q and torchao: does each one quantize, lower and run, and how well?

Every model of ``tests/hf_zoo.py`` (the ``transformers`` library's own classes, small configs,
random weights, nothing downloaded) goes through three flows:

* **pt2q .pte**: export -> ``pt2q.prepare_pt2e`` with ``XNNPACKQuantizer`` (static int8,
  per-channel weights) -> 4 calibration batches -> ``convert_pt2e`` -> ``pt2q.lowering.to_executorch``
  -> run with ``pt2q.runtime``;
* **pt2q x86**: the same with ``X86InductorQuantizer`` -> ``compile_quantized_for_x86``;
* **torchao .pte**: ``torchao.quantization.pt2e`` prepare/convert with ExecuTorch's own
  ``XNNPACKQuantizer`` -> ExecuTorch's ``to_edge_transform_and_lower`` (XNNPACK) -> run.

Per cell: runs? (else the first line of the error), output SQNR against fp32 on a held-out
batch, the share of matmul-class ops (linear/conv/matmul) whose operands are all int8, and
latency against the same flow's fp32 program (fp32 ``.pte`` with XNNPACK / fp32 Inductor).

A second table runs the decoders through each XNNPACK recipe (static int8, dynamic int8, 8da8w, 8da4w).

    python -m benchmarks.architectures [--models bert,gpt2] [--flows pt2q_pte,pt2q_x86,torchao_pte] [--recipes]
                                       [--no-timing]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any, Optional

import torch
from torch.fx import GraphModule

from benchmarks.common import Section, print_document
from pt2q.io.quiet import quiet
from pt2q.numerics.metrics import sqnr
from tests.hf_zoo import ARCHITECTURES, Arch

__all__ = ["Cell", "FLOWS", "run_cell", "rows", "table", "recipe_rows", "recipe_table", "suite", "main", "int8_share"]

CALIBRATION = 4  # batches; the next one is held out for SQNR
FLOWS = ("pt2q_pte", "pt2q_x86", "torchao_pte")
MATMUL_OPS = {
    torch.ops.aten.linear.default,
    torch.ops.aten.conv1d.default,
    torch.ops.aten.conv1d.padding,
    torch.ops.aten.conv2d.default,
    torch.ops.aten.conv2d.padding,
    torch.ops.aten.matmul.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
}
_DEQUANTIZE = {
    torch.ops.quantized_decomposed.dequantize_per_tensor.default,
    torch.ops.quantized_decomposed.dequantize_per_tensor.tensor,
    torch.ops.quantized_decomposed.dequantize_per_channel.default,
}


@dataclasses.dataclass
class Cell:
    """One (architecture, flow): whether it ran, and how well."""

    runs: bool
    sqnr: Optional[float] = None
    int8: Optional[float] = None  # share of matmul-class ops with all-int8 operands
    latency: Optional[float] = None  # int8 / fp32 latency of the same runtime
    error: str = ""
    floats: tuple[str, ...] = ()  # why-float notes of the report (pt2q flows)


sqnr_db = sqnr  # this module's name for it, as the tests import it


def int8_share(converted: GraphModule) -> float:
    """Fraction of the matmul-class ops whose tensor operands all come out of a dequantize."""
    ops = [n for n in converted.graph.nodes if n.op == "call_function" and n.target in MATMUL_OPS]
    quantized = [n for n in ops if all(a.target in _DEQUANTIZE for a in n.args[:2] if isinstance(a, torch.fx.Node))]
    return len(quantized) / len(ops) if ops else 0.0


def float_notes(converted: GraphModule, float_gm: GraphModule) -> tuple[str, ...]:
    """The distinct why-float reasons ``pt2q.report`` gives for the nodes left float (guards and settings)."""
    import pt2q

    with quiet():
        rep = pt2q.report(converted, float_gm, sensitivity=False)
    reasons = {r.float_reason for r in rep.float_rows if r.float_reason and "guard" in r.float_reason}
    return tuple(sorted(reasons))


def _export(model: torch.nn.Module, example: tuple) -> GraphModule:
    with quiet():
        return torch.export.export(copy.deepcopy(model), example).module()


def _quantize(prepare: Callable, convert: Callable, quantizer: Any, gm: GraphModule, batches: list) -> GraphModule:
    with quiet():
        prepared = prepare(copy.deepcopy(gm), quantizer)
        for batch in batches[:CALIBRATION]:
            prepared(*batch)
        return convert(prepared)


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:160]


def _time(fn: Callable[..., Any], inputs: tuple, runs: int) -> float:
    from pt2q.runtime import time_program

    return time_program(fn, *inputs, runs=runs, warmup=3, max_seconds=5.0).median_ms


def _pte(program: torch.export.ExportedProgram, pt2q_lowering: bool) -> bytes:
    with quiet():
        if pt2q_lowering:
            from pt2q.lowering import to_executorch

            return to_executorch(program).buffer
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        return bytes(edge.to_executorch().buffer)


def pt2q_xnnpack_quantizer() -> Any:
    from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config

    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def _pte_cell(arch: Arch, torchao: bool, timing_runs: int, quantizer: Optional[Any] = None) -> Cell:
    from pt2q import runtime

    model, batches = arch.build(CALIBRATION + 1)
    held_out = batches[CALIBRATION]
    with torch.no_grad():
        reference = model(*held_out)
    gm = _export(model, batches[0])
    if torchao:
        from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as et
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        et_quantizer = et.XNNPACKQuantizer().set_global(et.get_symmetric_quantization_config(is_per_channel=True))
        converted = _quantize(prepare_pt2e, convert_pt2e, et_quantizer, gm, batches)
    else:
        import pt2q

        quantizer = quantizer if quantizer is not None else pt2q_xnnpack_quantizer()
        converted = _quantize(pt2q.prepare_pt2e, pt2q.convert_pt2e, quantizer, gm, batches)
    with quiet():
        program = torch.export.export(converted, batches[0])
    buffer = _pte(program, pt2q_lowering=not torchao)
    int8 = runtime.load(buffer)
    out = int8(*held_out)
    cell = Cell(True, sqnr_db(reference, out), int8_share(converted))
    if not torchao:
        cell.floats = float_notes(converted, gm)
    if timing_runs:
        with quiet():
            fp32 = runtime.load(_pte(torch.export.export(gm, batches[0]), pt2q_lowering=True))
        cell.latency = _time(int8, held_out, timing_runs) / _time(fp32, held_out, timing_runs)
    return cell


def _x86_cell(arch: Arch, timing_runs: int) -> Cell:
    import pt2q
    from pt2q.lowering import compile_quantized_for_x86
    from pt2q.quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    model, batches = arch.build(CALIBRATION + 1)
    held_out = batches[CALIBRATION]
    with torch.no_grad():
        reference = model(*held_out)
    gm = _export(model, batches[0])
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    converted = _quantize(pt2q.prepare_pt2e, pt2q.convert_pt2e, quantizer, gm, batches)
    compiled = compile_quantized_for_x86(converted, batches[0])
    out = compiled(*held_out)
    cell = Cell(True, sqnr_db(reference, out), int8_share(converted), floats=float_notes(converted, gm))
    if timing_runs:
        with quiet(), torch.no_grad():
            fp32 = torch.compile(gm.forward)
            fp32(*batches[0])
        with torch.no_grad():
            cell.latency = _time(compiled, held_out, timing_runs) / _time(fp32, held_out, timing_runs)
    return cell


def run_cell(name: str, flow: str, timing_runs: int = 0) -> Cell:
    """One architecture through one flow; a failure is a cell with ``runs=False`` and the error's first line."""
    arch = ARCHITECTURES[name]
    try:
        if flow == "pt2q_x86":
            return _x86_cell(arch, timing_runs)
        return _pte_cell(arch, torchao=flow == "torchao_pte", timing_runs=timing_runs)
    except Exception as exc:  # the table records every failure, by its message
        return Cell(False, error=_error(exc))
    finally:
        torch._dynamo.reset()


def _progress(cell: Cell) -> str:
    """One cell on one line: SQNR, % int8 and latency vs fp32, or the error."""
    if not (cell.runs and cell.sqnr is not None):
        return cell.error
    int8 = f", {cell.int8:.0%} int8" if cell.int8 is not None else ""
    latency = f", {cell.latency:.2f}x fp32" if cell.latency is not None else ""
    return f"{cell.sqnr:.1f} dB{int8}{latency}"


def rows(
    names: Sequence[str], flows: Sequence[str] = FLOWS, timing_runs: int = 20, progress: bool = True
) -> dict[str, dict[str, Cell]]:
    out: dict[str, dict[str, Cell]] = {}
    for name in names:
        out[name] = {}
        for flow in flows:
            out[name][flow] = cell = run_cell(name, flow, timing_runs)
            if progress:
                print(f"architectures: {name} {flow}: {_progress(cell)}", file=sys.stderr, flush=True)
    return out


def _recipes() -> dict[str, Callable[[], Any]]:
    from pt2q.quantizers import (
        XNNPACKQuantizer,
        get_8da4w_quantization_config,
        get_8da8w_quantization_config,
        get_symmetric_quantization_config,
    )

    return {
        "static int8": pt2q_xnnpack_quantizer,
        "dynamic int8": lambda: XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
        ),
        "8da8w": lambda: XNNPACKQuantizer().set_global(get_8da8w_quantization_config()),
        "8da4w": lambda: XNNPACKQuantizer().set_global(get_8da4w_quantization_config(group_size=32)),
    }


def recipe_rows(names: Sequence[str], timing_runs: int = 20, progress: bool = True) -> dict[str, dict[str, Cell]]:
    """Decoders through each XNNPACK recipe (static int8, dynamic int8, 8da8w, 8da4w), to a running .pte."""
    out: dict[str, dict[str, Cell]] = {}
    for name in names:
        out[name] = {}
        for recipe, build in _recipes().items():
            try:
                cell = _pte_cell(ARCHITECTURES[name], False, timing_runs, build())
            except Exception as exc:
                cell = Cell(False, error=_error(exc))
            out[name][recipe] = cell
            if progress:
                print(f"architectures: {name} {recipe}: {_progress(cell)}", file=sys.stderr, flush=True)
    return out


def recipe_table(results: dict[str, dict[str, Cell]]) -> str:
    recipes = list(next(iter(results.values())))
    lines = [
        "| decoder | " + " | ".join(f"{r} SQNR | {r} vs fp32" for r in recipes) + " |",
        "|---|" + "---:|---:|" * len(recipes),
    ]
    for name, cells in results.items():
        shown = []
        for recipe in recipes:
            cell = cells[recipe]
            ok = cell.runs and cell.sqnr is not None
            shown += [f"{cell.sqnr:.1f}" if ok else "✗", f"{cell.latency:.2f}" if cell.latency else "–"]
        lines.append(f"| {name} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


RECIPE_METHOD = (
    "The decoders of the zoo through pt2q's XNNPACK recipes, each lowered to a .pte and run: static int8 "
    "(per-channel weights, calibrated activations), dynamic int8 (per-tensor activations chosen at run time), "
    "8da8w / 8da4w (int8 per-token dynamic activations, int8 per-channel / int4 group-32 weights). SQNR (dB) of "
    "the .pte against fp32 on a held-out batch; vs fp32: latency over the fp32 .pte (one thread, median)."
)


def _fmt_cell(cell: Cell) -> list[str]:
    if not cell.runs:
        return ["✗", "–", "–", "–"]
    sqnr = f"{cell.sqnr:.1f}" if cell.sqnr is not None else "–"
    if cell.sqnr is not None and cell.sqnr < 15:
        sqnr = f"**{sqnr}**"
    int8 = f"{cell.int8:.0%}" if cell.int8 is not None else "–"
    latency = f"{cell.latency:.2f}" if cell.latency is not None else "–"
    return ["✓", sqnr, int8, latency]


def table(results: dict[str, dict[str, Cell]]) -> str:
    """Markdown: one row per architecture, runs? / SQNR dB / % int8 / latency vs fp32 per flow; then the errors."""
    flows = list(next(iter(results.values())))
    head = ["architecture", "family"]
    for flow in flows:
        head += [f"{flow} runs", "SQNR", "% int8", "vs fp32"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---|---:|---:|---:|" * len(flows)]
    errors = []
    for name, cells in results.items():
        line = [name, ARCHITECTURES[name].family]
        for flow in flows:
            line += _fmt_cell(cells[flow])
            if not cells[flow].runs:
                errors.append(f"- {name} / {flow}: `{cells[flow].error}`")
        lines.append("| " + " | ".join(line) + " |")
    totals = {flow: sum(cells[flow].runs for cells in results.values()) for flow in flows}
    summary = ", ".join(f"{flow}: {n}/{len(results)} run" for flow, n in totals.items())
    return "\n".join([*lines, "", summary, *(["", "Failures:", *errors] if errors else [])])


METHOD = (
    "The `transformers` library's own model classes (`tests/hf_zoo.py`: small configs, weights re-drawn with "
    "fan-in scales, nothing downloaded), batch 2 (16 tokens / 32-64 px images / 4000 audio samples). Static int8 "
    "with per-channel weights, 4 calibration batches, SQNR (dB) of the runtime's output against fp32 eager on a "
    "held-out batch (**bold** below 15 dB). % int8: linear/conv/matmul ops whose operands are all int8 in the "
    "converted graph. vs fp32: latency of the int8 program over the same runtime's fp32 program (XNNPACK .pte / "
    "Inductor), one thread, median. torchao: `torchao.quantization.pt2e` prepare/convert with ExecuTorch's "
    "`XNNPACKQuantizer`, lowered with ExecuTorch's `to_edge_transform_and_lower`."
)


def _flows_section(results: dict[str, dict[str, Cell]]) -> Section:
    return Section("Architectures: Hugging Face models to .pte and x86", METHOD, table(results))


def _recipes_section(decoders: list[str], runs: int) -> Section:
    return Section("Architectures: decoder recipes (.pte)", RECIPE_METHOD, recipe_table(recipe_rows(decoders, runs)))


def suite(models: Any, variants: Any, settings: Any) -> list[Section]:
    """The ``architectures`` suite of ``benchmarks.run`` (its own models: ``tests/hf_zoo.py``)."""
    torch.set_num_threads(1)
    runs = 5 if settings.small else 20
    results = rows(list(ARCHITECTURES), timing_runs=runs)
    decoders = [n for n, a in ARCHITECTURES.items() if a.family == "decoder"]
    return [_flows_section(results), _recipes_section(decoders, runs)]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(ARCHITECTURES))
    parser.add_argument("--flows", default=",".join(FLOWS))
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--recipes", action="store_true", help="also the decoder recipe table")
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    names = args.models.split(",")
    unknown = set(names) - set(ARCHITECTURES)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; known: {', '.join(ARCHITECTURES)}")
    runs = 0 if args.no_timing else args.runs
    sections = []
    if args.flows:
        sections.append(_flows_section(rows(names, args.flows.split(","), runs)))
    if args.recipes:
        sections.append(_recipes_section([n for n in names if ARCHITECTURES[n].family == "decoder"], runs))
    return print_document(sections)


if __name__ == "__main__":
    main()
