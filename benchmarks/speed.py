"""Inference speed of fp32 and int8 backends: single-thread latency medians, one Markdown table.

Each cell is a median latency and its speed-up over fp32 eager, all measured in one
run (one process, one thread; the x86 columns timed in turn, call by call, so
machine drift hits them alike). Columns come from *column sets*: functions
``(model, example_inputs) -> {column: latency in ms}``, one per backend family:

* x86 (:func:`x86_latencies`): fp32 eager, fp32 compiled (Inductor), pt2q int8
  lowered (``X86InductorQuantizer`` + ``compile_quantized_for_x86``), torchao int8
  lowered (torchao's ``X86InductorQuantizer`` + ``torch.compile`` with freezing);
* ExecuTorch: ``benchmarks/executorch_speed.py``'s ``executorch_latencies``, when
  present (its columns prefixed "ExecuTorch").

Add a backend by appending a column set to :func:`column_sets`. Models are the
ResNet-18-, MobileNetV2- and BERT-shaped ones of ``benchmarks/models.py`` (random
weights; int8 models calibrated on random inputs, which is fine for timing).

Usage: ``python -m benchmarks.speed [--small] [--models resnet18,mobilenet_v2,bert_encoder_12l] [--runs N]``
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from benchmarks.common import RUNS, Section, progress, ratio_table
from benchmarks.flows import Flow, calibration_batches, quantize
from benchmarks.models import benchmark_models
from benchmarks.settings import Settings
from pt2q.runtime.timing import interleaved_medians_ms

if TYPE_CHECKING:
    from benchmarks.variants import Models, Variants

__all__ = [
    "ColumnSet",
    "BASELINE",
    "x86_latencies",
    "column_sets",
    "measure",
    "markdown_table",
    "suite",
    "main",
]

ColumnSet = Callable[[nn.Module, tuple], dict[str, float]]
BASELINE = "fp32 eager"
CALIBRATION_BATCHES = 2


def _quantize(prepare: Callable, convert: Callable, quantizer: Any, model: nn.Module, example: tuple) -> nn.Module:
    batches = calibration_batches(example, CALIBRATION_BATCHES, seed=0)
    return quantize(Flow(prepare, convert, lambda: quantizer), model, example, batches)


def _pt2q_int8(model: nn.Module, example: tuple) -> Callable[..., Any]:
    import pt2q
    from pt2q.lowering import compile_quantized_for_x86
    from pt2q.quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    converted = _quantize(pt2q.prepare_pt2e, pt2q.convert_pt2e, quantizer, model, example)
    return compile_quantized_for_x86(converted, example)


def _torchao_int8(model: nn.Module, example: tuple) -> Callable[..., Any]:
    """torchao's documented recipe: its quantizer, then torch.compile with Inductor freezing."""
    import torch._inductor.config as inductor_config

    saved_pass = inductor_config.pre_grad_custom_pass
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    inductor_config.pre_grad_custom_pass = saved_pass  # importing torchao's quantizer installs a global pass
    from pt2q.lowering import int8_inference
    from pt2q.quantizers.cpu_capability import default_reduce_range

    config = xiq.get_default_x86_inductor_quantization_config(reduce_range=default_reduce_range())
    converted = _quantize(prepare_pt2e, convert_pt2e, xiq.X86InductorQuantizer().set_global(config), model, example)
    compiled = torch.compile(converted)

    def run(*inputs: torch.Tensor) -> Any:
        with int8_inference():
            return compiled(*inputs)

    run(*example)
    return run


def x86_latencies(model: nn.Module, example_inputs: tuple, runs: int = RUNS) -> dict[str, float]:
    """fp32 eager / fp32 compiled / pt2q int8 / torchao int8 latencies (ms) on x86 through Inductor."""
    fp32_compiled = torch.compile(copy.deepcopy(model))

    def fp32(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*inputs: torch.Tensor) -> Any:
            with torch.no_grad():
                return fn(*inputs)

        return run

    fns = {
        BASELINE: fp32(model),
        "fp32 compiled (Inductor)": fp32(fp32_compiled),
        "pt2q int8 (x86)": _pt2q_int8(model, example_inputs),
        "torchao int8 (x86)": _torchao_int8(model, example_inputs),
    }
    return interleaved_medians_ms(fns, example_inputs, runs)


def _labelled(label: str, column_set: ColumnSet) -> ColumnSet:
    def measured(model: nn.Module, example_inputs: tuple) -> dict[str, float]:
        return {f"{label} {column}": ms for column, ms in column_set(model, example_inputs).items()}

    measured.__name__ = getattr(column_set, "__name__", label)
    return measured


def column_sets(runs: int = RUNS) -> list[ColumnSet]:
    """The backends to measure: x86 always, ExecuTorch when its benchmark module is there."""
    x86 = functools.partial(x86_latencies, runs=runs)
    sets: list[ColumnSet] = [x86]
    try:
        from benchmarks.executorch_speed import executorch_latencies
    except ImportError:
        pass
    else:
        sets.append(_labelled("ExecuTorch", executorch_latencies))
    return sets


def measure(models: dict[str, tuple[nn.Module, tuple]], sets: list[ColumnSet]) -> dict[str, dict[str, float]]:
    """model name -> column -> median latency (ms); a column set that fails leaves its cells empty."""
    results: dict[str, dict[str, float]] = {}
    for name, (model, example) in models.items():
        results[name] = {}
        for column_set in sets:
            try:
                results[name].update(column_set(model, example))
            except Exception as exc:  # one backend failing on one model must not lose the others' numbers
                warnings.warn(f"{getattr(column_set, '__name__', column_set)} failed on {name}: {exc!r}", stacklevel=2)
    return results


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    """One row per model: each column's latency and its speed-up over fp32 eager."""
    columns = list(dict.fromkeys(c for row in results.values() for c in row))
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in results.items():
        base = row.get(BASELINE)
        cells = []
        for column in columns:
            ms = row.get(column)
            if ms is None:
                cells.append("–")
            else:
                cells.append(f"{ms:.2f} ms ({base / ms:.2f}x)" if base else f"{ms:.2f} ms")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


X86_METHOD = (
    "Median latency of one call (ms), one thread, batch of the example input. The four columns are timed "
    "in turn, in a fresh random order each round, over {runs} rounds after 3 warm-up calls. "
    "int8: `X86InductorQuantizer` (pt2q's, resp. torchao's), calibrated on 2 random batches; pt2q lowered "
    "with `compile_quantized_for_x86`, torchao with `torch.compile` + freezing. "
    "speed-up = fp32 eager / int8."
)
PTE_METHOD = (
    "Median latency (ms) of a loaded `.pte`, ExecuTorch thread pool of 1: best of {rounds} "
    "medians, each over {runs} rounds in which the three programs are called in turn, in a "
    "fresh random order (3 warm-up calls first). int8: XNNPACK "
    "per-channel symmetric config, pt2q's flow + `pt2q.lowering.to_executorch` vs torchao's flow + "
    "ExecuTorch's `to_edge_transform_and_lower`. speed-up = fp32 .pte / int8 .pte."
)


def _failed(what: str, name: str, exc: Exception) -> None:
    tqdm.write(f"benchmarks.run: {what} failed on {name}: {exc!r}", file=sys.stderr)


def _x86_table(x86: dict[str, dict[str, float]]) -> str:
    return ratio_table(
        x86,
        {
            BASELINE: "fp32 eager ms",
            "fp32 compiled (Inductor)": "fp32 Inductor ms",
            "pt2q int8 (x86)": "pt2q int8 ms",
            "torchao int8 (x86)": "torchao int8 ms",
        },
        {
            "speed-up pt2q": (BASELINE, "pt2q int8 (x86)"),
            "speed-up torchao": (BASELINE, "torchao int8 (x86)"),
            "pt2q/torchao latency": ("pt2q int8 (x86)", "torchao int8 (x86)"),
        },
    )


def _pte_table(pte: dict[str, dict[str, float]]) -> str:
    return ratio_table(
        pte,
        {"fp32": "fp32 .pte ms", "pt2q_int8": "pt2q int8 .pte ms", "torchao_int8": "torchao int8 .pte ms"},
        {
            "speed-up pt2q": ("fp32", "pt2q_int8"),
            "speed-up torchao": ("fp32", "torchao_int8"),
            "pt2q/torchao latency": ("pt2q_int8", "torchao_int8"),
        },
    )


def suite(models: Models, variants: Variants, settings: Settings) -> list[Section]:
    """The ``speed`` suite of ``benchmarks.run``: single-thread latency medians, x86 (eager, Inductor, int8 via
    Inductor) and ExecuTorch .pte."""
    from benchmarks.executorch_speed import pte_latencies  # ExecuTorch is optional for the x86 columns

    x86: dict[str, dict[str, float]] = {}
    pte: dict[str, dict[str, float]] = {}
    for name in progress(models, "speed"):
        model, example = models[name]
        try:
            x86[name] = x86_latencies(model, example, runs=settings.x86_runs)
        except Exception as exc:  # one backend failing must not lose the other numbers
            _failed("x86 timing", name, exc)
        try:
            pte[name] = pte_latencies(
                variants.ptes(name), example, settings.pte_runs, warmup=3, rounds=settings.pte_rounds
            )
        except Exception as exc:
            _failed("ExecuTorch timing", name, exc)
    return [
        Section("Speed: x86 through Inductor", X86_METHOD.format(runs=settings.x86_runs), _x86_table(x86)),
        Section(
            "Speed: ExecuTorch (XNNPACK delegate)",
            PTE_METHOD.format(rounds=settings.pte_rounds, runs=settings.pte_runs),
            _pte_table(pte),
        ),
    ]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18,mobilenet_v2,bert_encoder_12l")
    parser.add_argument("--small", action="store_true", help="smaller inputs and a 2-layer encoder (quick runs)")
    parser.add_argument("--runs", type=int, default=RUNS, help="timed runs per cell (median)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    available = benchmark_models(small=args.small)
    models = {name: available[name] for name in args.models.split(",")}
    table = markdown_table(measure(models, column_sets(args.runs)))
    print(f"Single-thread latency (median of {args.runs} runs), speed-up over {BASELINE}; CPU: {_cpu_name()}\n")
    print(table)
    return table


def _cpu_name() -> str:
    try:
        from pt2q.quantizers.cpu_capability import cpu_has_vnni

        name = dict(torch.cpu.get_capabilities()).get("cpu_name", "x86")
        return f"{name}, {torch.backends.cpu.get_cpu_capability()}, VNNI: {'yes' if cpu_has_vnni() else 'no'}"
    except Exception:
        return "unknown"


if __name__ == "__main__":
    main()
