"""``pt2q quantize``: export, quantize and calibrate a model factory (or search its precision ladder for
an accuracy target), then save it as ``.pt2`` or ``.pte``, or lower it for x86 and time it."""

from __future__ import annotations

import argparse
import collections
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pt2q.cli.common import (
    CLIError,
    Rows,
    build_quantizer,
    check_inputs,
    human_bytes,
    make_folder,
    make_model,
    print_table,
    random_inputs,
    random_like,
)
from pt2q.cli.inspect_command import pt2_stats

if TYPE_CHECKING:
    from pt2q import QuantizeResult as pt2q_QuantizeResult

__all__ = ["quantize_model", "quantize_to_target", "cmd_quantize"]


def quantize_model(model: torch.nn.Module, inputs: tuple, names: Sequence[str], batches: int) -> torch.fx.GraphModule:
    """Export, prepare with the quantizers, calibrate on random batches, convert."""
    from tqdm import tqdm

    import pt2q

    prepared = pt2q.prepare_pt2e(torch.export.export(model, inputs).module(), build_quantizer(names))
    with torch.no_grad():
        for _ in tqdm(range(batches), desc="calibrate", unit="batch"):
            prepared(*random_like(inputs))
    return pt2q.convert_pt2e(prepared)


def quantize_to_target(
    model: torch.nn.Module, inputs: tuple, args: argparse.Namespace
) -> tuple[pt2q_QuantizeResult, str]:
    """``pt2q.quantize`` with the quantizer's precision ladder, priced by latency measured on this machine
    (XNNPACK ``.pte`` or Inductor x86, per the quantizer), on random calibration and evaluation batches."""
    import pt2q
    from pt2q.lowering.latency_cost import PteLatencyCost, X86LatencyCost
    from pt2q.quantizers.ladders import precision_ladder

    quantizer = build_quantizer(args.quantizer)
    cost = X86LatencyCost() if "x86" in args.quantizer else PteLatencyCost()
    result = pt2q.quantize(
        model,
        inputs,
        quantizer,
        [random_like(inputs) for _ in range(args.calibrate)],
        eval_data=[random_like(inputs) for _ in range(2)],
        min_sqnr=args.min_sqnr,
        ladder=precision_ladder(quantizer),
        cost=cost,
        max_passes=args.max_rounds,
    )
    return result, cost.name


def _check_args(args: argparse.Namespace) -> None:
    if args.target != "x86" and args.out is None:
        raise CLIError(f"--out is required for --target {args.target}")
    if args.target == "x86" and "x86" not in args.quantizer:
        raise CLIError("--target x86 needs --quantizer x86 (oneDNN int8 kernels take uint8 activations)")
    suffix = ".pte" if args.target == "pte" else ".pt2"
    if args.out is not None and args.out.suffix != suffix:
        raise CLIError(f"--target {args.target} writes a {suffix} file, got --out {args.out}")
    if args.calibrate < 1:
        raise CLIError("--calibrate must be at least 1")
    if args.min_sqnr is None and args.plot is not None:
        raise CLIError("--plot draws the trade-off of --min-sqnr: give a target")
    if args.max_rounds < 1:
        raise CLIError("--max-rounds must be at least 1")


def _search_rows(args: argparse.Namespace, searched: pt2q_QuantizeResult) -> Rows:
    return [
        ("target", f"output SQNR >= {args.min_sqnr:g} dB: {'met' if searched.target_met else 'NOT met'}"),
        ("rounds (prepare/calibrate/convert)", searched.rounds),
        ("moved off static int8", _rung_counts(searched.choice) or "none"),
    ]


def _print_trade_off(args: argparse.Namespace, searched: pt2q_QuantizeResult, cost_model: str) -> None:
    print(f"\naccuracy vs latency of the tries ({cost_model}):")
    print(searched.trade_off_table())
    if args.plot is not None:
        make_folder(args.plot)
        searched.plot_trade_off(args.plot)
        print(f"trade-off chart: {args.plot}")


def cmd_quantize(args: argparse.Namespace) -> None:
    """``pt2q quantize``: quantize the factory's model, save or lower it, print what it became."""
    from pt2q.runtime import compare

    _check_args(args)
    model = make_model(args.factory)
    inputs = random_inputs(args.example_inputs)
    check_inputs(model, inputs, args.factory)
    searched, cost_model = None, ""
    if args.min_sqnr is None:
        quantized = quantize_model(model, inputs, args.quantizer, args.calibrate)
    else:
        searched, cost_model = quantize_to_target(model, inputs, args)
        quantized = searched.model
    rows: Rows = [
        ("model", args.factory),
        ("quantizers", ",".join(args.quantizer)),
        ("example inputs", ", ".join(map(str, args.example_inputs))),
        ("calibration batches", args.calibrate),
    ]
    if searched is not None:
        rows += _search_rows(args, searched)
    test = random_like(inputs)
    rows += [("SQNR Q/DQ vs fp32", f"{compare(quantized, model, *test).sqnr_db:.1f} dB")]
    rows += {"pt2": _save_pt2, "pte": _save_pte, "x86": _lower_x86}[args.target](
        model, quantized, inputs, test, args.out
    )
    print_table(f"pt2q quantize -> {args.target}", rows)
    if searched is not None:
        _print_trade_off(args, searched, cost_model)
    if args.report:
        import pt2q

        print(f"\nper-layer report ({args.calibrate} random batches; SQNR in dB against fp32)")
        print(pt2q.report(quantized, model, [random_like(inputs) for _ in range(args.calibrate)]))


def _rung_counts(choice: dict[str, str]) -> str:
    counts = collections.Counter(choice.values())
    return ", ".join(f"{n} layer(s) on {rung}" for rung, n in counts.items())


def _save_pt2(model: torch.nn.Module, quantized: torch.fx.GraphModule, inputs: tuple, test: tuple, out: Path) -> Rows:
    from pt2q.io.pt2_file import save_pt2

    program = torch.export.export(quantized, inputs)
    make_folder(out)
    save_pt2(program, out)
    stats = pt2_stats(program)
    return [
        ("quantize / dequantize ops", f"{stats['quantize']} / {stats['dequantize']}"),
        ("output", out),
        ("file size", human_bytes(out.stat().st_size)),
    ]


def _save_pte(model: torch.nn.Module, quantized: torch.fx.GraphModule, inputs: tuple, test: tuple, out: Path) -> Rows:
    from pt2q.lowering import to_executorch
    from pt2q.runtime import compare, load

    lowered = to_executorch(quantized, inputs)
    make_folder(out)
    lowered.save(out)
    program = load(out)
    sqnr = compare(program, model, *test).sqnr_db
    del program
    return [("SQNR .pte vs fp32", f"{sqnr:.1f} dB"), ("output", out), ("file size", human_bytes(lowered.size))]


def _lower_x86(
    model: torch.nn.Module, quantized: torch.fx.GraphModule, inputs: tuple, test: tuple, out: Path | None
) -> Rows:
    from pt2q.lowering import lower_pt2e_quantized_to_x86
    from pt2q.runtime import compare, time_program

    rows = _save_pt2(model, quantized, inputs, test, out) if out is not None else []
    lowered = lower_pt2e_quantized_to_x86(quantized, inputs)
    with torch.no_grad():
        fp32_ms = time_program(model, *test, runs=20, max_seconds=5).median_ms
        int8_ms = time_program(lowered, *test, runs=20, max_seconds=5).median_ms
    return rows + [
        ("SQNR x86 int8 vs fp32", f"{compare(lowered, model, *test).sqnr_db:.1f} dB"),
        ("latency fp32 eager", f"{fp32_ms:.3f} ms"),
        ("latency x86 int8", f"{int8_ms:.3f} ms"),
    ]
