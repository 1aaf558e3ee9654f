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
import random
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks.flows import Flow, calibration_batches, quantize
from benchmarks.models import benchmark_models

__all__ = [
    "ColumnSet",
    "BASELINE",
    "median_ms",
    "interleaved_medians_ms",
    "x86_latencies",
    "column_sets",
    "measure",
    "markdown_table",
    "main",
]

ColumnSet = Callable[[nn.Module, tuple], dict[str, float]]
BASELINE = "fp32 eager"
RUNS = 20
CALIBRATION_BATCHES = 2


def median_ms(fn: Callable[..., Any], inputs: tuple, runs: int = RUNS, warmup: int = 3) -> float:
    """Median wall time of ``fn(*inputs)`` in ms after ``warmup`` untimed calls."""
    return interleaved_medians_ms({"fn": fn}, inputs, runs, warmup)["fn"]


def interleaved_medians_ms(
    fns: dict[str, Callable[..., Any]], inputs: tuple, runs: int = RUNS, warmup: int = 3, max_seconds: float = 60.0
) -> dict[str, float]:
    """Median wall time (ms) of each of ``fns`` on ``inputs``, timed in turn so drift hits all alike.

    Each round calls every function once, in a fresh random order (what ran just
    before, and so what is in the caches, must not favour one). Stops early (after
    at least 3 rounds) once ``max_seconds`` were spent.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn(*inputs)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    rng = random.Random(0)
    start = time.perf_counter()
    for round_ in range(runs):
        if round_ >= 3 and time.perf_counter() - start > max_seconds:
            break
        rng.shuffle(order)
        for name, fn in order:
            t0 = time.perf_counter()
            fn(*inputs)
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(times) for name, times in samples.items()}


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
