"""Backends matrix and prepare+convert time with ExecuTorch's backend quantizers, pt2q vs torchao.

* matrix: every quantizer configuration of ``tests/backend_zoo.py`` (each built as its backend documents it) on
  every model it lists, PTQ and QAT, through torchao's flow and pt2q's: does each run, and is pt2q's converted
  graph the same (Q/DQ ops with every qparam) with bit-identical outputs on held-out inputs;
* time: wall time of ``prepare_pt2e`` (or ``prepare_qat_pt2e``) + ``convert_pt2e`` with the same quantizer
  config on the same exported model (export, quantizer construction and calibration excluded), median of
  interleaved repeats, pt2q / torchao.

    python -m benchmarks.backends [--small] [--repeats N]
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import Section, print_document
from tests.backend_zoo import (
    CASES,
    UNAVAILABLE,
    Flow,
    QuantizerCase,
    export_for,
    importable,
    make_model,
    model_batches,
    pattern_memo,
    pt2q_flow,
    qdq_signature,
    quantize,
    torchao_flow,
)

__all__ = ["Cell", "run_matrix", "matrix_table", "grid_table", "time_prepare_convert", "timing_table", "suite", "main"]

BENCHMARK_MODELS = ("resnet18", "bert_encoder_12l")
# one configuration per backend, on a conv and a transformer model: the timing rows
TIMED = (
    ("xnnpack-per_channel", "resnet18"),
    ("xnnpack-per_channel", "bert_encoder_12l"),
    ("qualcomm-8a8w", "resnet18"),
    ("qualcomm-8a8w", "bert_encoder_12l"),
    ("cadence-default", "resnet18"),
    ("samsung-a8w8", "resnet18"),
    ("coreml-int8_symmetric", "resnet18"),
    ("openvino-int8_sym", "resnet18"),
    ("xnnpack-per_channel", "conv_bn_relu"),
    ("xnnpack-per_channel", "attention"),
    ("xnnpack-per_channel-qat", "conv_bn_relu"),
    ("vulkan-dynamic_8a4w", "attention"),
    ("cadence-default", "conv_bn_relu"),
    ("cadence-default", "attention"),
    ("qualcomm-8a8w", "conv_bn_relu"),
    ("qualcomm-16a8w", "attention"),
    ("qualcomm-8a8w-qat", "conv_bn_relu"),
    ("coreml-int8_symmetric", "conv_bn_relu"),
    ("samsung-a8w8", "conv_bn_relu"),
    ("samsung-a8w8-qat", "conv_bn_relu"),
    ("example-default", "conv_bn_relu"),
    ("openvino-int8_sym", "conv_bn_relu"),
    ("openvino-int8_transformer", "attention"),
    ("arm-tosa_int", "conv_bn_relu"),
)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]


@dataclass
class Cell:
    """One (quantizer configuration, model) of the matrix."""

    case: QuantizerCase
    model: str
    torchao: str = "-"  # "ok" or the error
    pt2q: str = "-"
    identical: bool | None = None  # same Q/DQ graph and torch.equal outputs (None: not comparable)
    detail: str = ""

    @property
    def mode(self) -> str:
        return "QAT" if self.case.qat else "PTQ"


def _run(flow: Flow, case: QuantizerCase, model: str) -> tuple[torch.fx.GraphModule | None, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantize(flow, case, model), "ok"
    except Exception as exc:  # the matrix records what fails, it does not stop
        return None, _error(exc)


def run_cell(case: QuantizerCase, model: str) -> Cell:
    """Quantize ``model`` with ``case`` through both flows and compare."""
    cell = Cell(case, model)
    theirs, cell.torchao = _run(torchao_flow(), case, model)
    ours, cell.pt2q = _run(pt2q_flow(), case, model)
    if theirs is None or ours is None:
        return cell
    expected, actual = qdq_signature(theirs), qdq_signature(ours)
    if actual != expected:
        cell.identical, cell.detail = False, f"Q/DQ graph differs ({sum(actual.values())} vs {sum(expected.values())})"
        return cell
    with torch.no_grad():
        for batch in model_batches(model, 2, seed=100):
            if not torch.equal(ours(*batch), theirs(*batch)):
                cell.identical, cell.detail = False, "outputs differ"
                return cell
    cell.identical = True
    return cell


def run_matrix(progress: bool = True) -> list[Cell]:
    """Every available (case, model) of the zoo."""
    cells = []
    for case in CASES:
        if not importable(case.needs):
            continue
        for model in case.models:
            if progress:
                print(f"backends: {case.name} / {model}", file=sys.stderr)
            cells.append(run_cell(case, model))
    return cells


def _mark(cell: Cell) -> str:
    if cell.pt2q != "ok":
        return f"fails: {cell.pt2q}"
    if cell.identical is None:
        return "runs"
    return "bit-identical" if cell.identical else f"runs, differs: {cell.detail}"


def matrix_table(cells: list[Cell], problems_only: bool = False) -> str:
    """Markdown: backend, configuration, PTQ/QAT, model, torchao's flow, pt2q's flow (``problems_only``: the
    cells that are not bit-identical), then the backends that are not available here and why."""
    lines = ["| backend | config | mode | model | torchao | pt2q |", "|---|---|---|---|---|---|"]
    for c in cells:
        if problems_only and c.identical:
            continue
        torchao = "runs" if c.torchao == "ok" else f"fails: {c.torchao}"
        lines.append(f"| {c.case.backend} | {c.case.config} | {c.mode} | {c.model} | {torchao} | {_mark(c)} |")
    for case in CASES:
        if not importable(case.needs) and case.backend not in {u.backend for u in UNAVAILABLE}:
            lines.append(f"| {case.backend} | {case.config} | – | – | `{case.needs}` not installed | – |")
    for u in UNAVAILABLE:
        if u.backend in ("arm", "cortex_m") and importable("tosa_serializer"):
            continue
        lines.append(f"| {u.backend} | – | – | – | import fails: `{u.error.__name__}: {u.message}` | – |")
    return "\n".join(lines)


def _symbol(cell: Cell) -> str:
    if cell.torchao != "ok":
        return "torchao fails"
    if cell.pt2q != "ok":
        return "fails"
    return "bit-identical" if cell.identical else "differs"


def grid_table(cells: list[Cell]) -> str:
    """Compact Markdown: one row per quantizer configuration and mode, one column per model."""
    models = [
        m
        for m in ("conv_bn_relu", "depthwise", "ln_gelu_mlp", "attention", "embedding", "gru")
        if any(c.model == m for c in cells)
    ]
    rows: dict[tuple[str, str, str], dict[str, str]] = {}
    for c in cells:
        rows.setdefault((c.case.backend, c.case.config, c.mode), {})[c.model] = _symbol(c)
    lines = ["| backend | config | mode | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for (backend, config, mode), row in rows.items():
        lines.append(f"| {backend} | {config} | {mode} | " + " | ".join(row.get(m, "") for m in models) + " |")
    return "\n".join(lines)


def matrix_summary(cells: list[Cell]) -> str:
    runnable = [c for c in cells if c.torchao == "ok"]
    runs = sum(c.pt2q == "ok" for c in runnable)
    same = sum(bool(c.identical) for c in runnable)
    return (
        f"{len(cells)} cases; torchao's flow runs {len(runnable)}; of those pt2q runs {runs} and is bit-identical "
        f"(same Q/DQ graph and outputs) on {same}."
    )


QUANTIZER_HOOKS = ("transform_for_annotation", "annotate", "validate")


def _timed(method: Any, spent: list[float]) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - t0

    return call


def _one_prepare_convert(
    flow: Flow, case: QuantizerCase, exported: torch.fx.GraphModule, batch: tuple
) -> tuple[float, float]:
    """Seconds of prepare + convert, and of them the seconds spent inside the quantizer's own hooks."""
    gm = copy.deepcopy(exported)
    quantizer = case.build()
    spent = [0.0]
    for hook in QUANTIZER_HOOKS:
        method = getattr(quantizer, hook, None)
        if method is not None:
            setattr(quantizer, hook, _timed(method, spent))
    with warnings.catch_warnings(), pattern_memo():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        prepared = (flow.prepare_qat if case.qat else flow.prepare)(gm, quantizer)
        t_prepare = time.perf_counter() - t0
        with torch.no_grad():
            prepared(*batch)
        if case.qat:
            flow.to_eval(prepared)
        t0 = time.perf_counter()
        flow.convert(prepared)
        return t_prepare + time.perf_counter() - t0, spent[0]


def _timing_model(model: str) -> tuple[torch.nn.Module, tuple]:
    """A model of the zoo, or a benchmark model (``benchmarks/models.py``, small sizes) by name."""
    if model in BENCHMARK_MODELS:
        from benchmarks.models import benchmark_models

        return benchmark_models(small=True)[model]
    return make_model(model)


def time_prepare_convert(case: QuantizerCase, model: str, repeats: int) -> dict[str, float]:
    """Per flow, median seconds of prepare + convert (``<flow>``) and of the same without the time spent in
    the quantizer's own hooks (``<flow> flow``). The flows alternate in a fresh random order each repeat, after
    one untimed run of each (which also fills the pattern memo both flows share)."""
    net, example = _timing_model(model)
    exported = export_for(case, net, example)
    batch = example if model in BENCHMARK_MODELS else model_batches(model, 1, seed=1)[0]
    flows = [torchao_flow(), pt2q_flow()]
    totals: dict[str, list[float]] = {f.name: [] for f in flows}
    own: dict[str, list[float]] = {f.name: [] for f in flows}
    for flow in flows:
        _one_prepare_convert(flow, case, exported, batch)
    rng = random.Random(0)
    for _ in range(repeats):
        rng.shuffle(flows)
        for flow in flows:
            total, in_quantizer = _one_prepare_convert(flow, case, exported, batch)
            totals[flow.name].append(total)
            own[flow.name].append(total - in_quantizer)
    result = {name: statistics.median(ts) for name, ts in totals.items()}
    result.update({f"{name} flow": statistics.median(ts) for name, ts in own.items()})
    return result


def timing_rows(repeats: int, progress: bool = True) -> dict[str, dict[str, float]]:
    by_name = {c.name: c for c in CASES}
    rows = {}
    for name, model in TIMED:
        case = by_name[name]
        if not importable(case.needs):
            continue
        if progress:
            print(f"backends: timing {name} / {model}", file=sys.stderr)
        try:
            rows[f"{name} / {model}"] = time_prepare_convert(case, model, repeats)
        except Exception as exc:
            print(f"backends: timing {name} / {model} failed: {_error(exc)}", file=sys.stderr)
    return rows


def _ratios(r: dict[str, float]) -> tuple[float, float, float]:
    """pt2q / torchao in total, the floor (pt2q's time in the quantizer's own hooks over torchao's total), and
    pt2q / torchao without the hooks."""
    return r["pt2q"] / r["torchao"], (r["pt2q"] - r["pt2q flow"]) / r["torchao"], r["pt2q flow"] / r["torchao flow"]


def timing_table(rows: dict[str, dict[str, float]]) -> str:
    lines = [
        "| quantizer / model | torchao ms | pt2q ms | pt2q / torchao | floor | torchao flow ms | pt2q flow ms | "
        "flow: pt2q / torchao |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        total, floor, flow = _ratios(r)
        lines.append(
            f"| {name} | {r['torchao'] * 1e3:.1f} | {r['pt2q'] * 1e3:.1f} | {total:.2f} | {floor:.2f} | "
            f"{r['torchao flow'] * 1e3:.1f} | {r['pt2q flow'] * 1e3:.1f} | {flow:.2f} |"
        )
    if rows:
        total, floor, flow = (statistics.median(column) for column in zip(*map(_ratios, rows.values())))
        lines.append(f"| **median** | | | **{total:.2f}** | {floor:.2f} | | | **{flow:.2f}** |")
    return "\n".join(lines)


MATRIX_METHOD = (
    "Each ExecuTorch quantizer built as its backend's docs and test flows build it (`tests/backend_zoo.py`), "
    "on CI-sized models (conv+BN+ReLU, depthwise conv+BN, LayerNorm+linear+GELU MLP, self-attention block, "
    "embedding, GRU); exported with `torch.export` (Cadence: its own `compiler.trace`), PTQ calibrated on 3 "
    "batches, QAT prepared with `prepare_qat_pt2e` on the train-mode export and run on the same 3 batches. "
    "bit-identical = the same quantize/dequantize ops with the same scales, zero points, ranges, dtypes and axes, "
    "and `torch.equal` outputs on 2 held-out batches. The XNNPACK and Core ML quantizers' pattern graphs are "
    "memoized for both flows alike. The same matrix is `tests/test_backends.py`."
)


def timing_method(repeats: int) -> str:
    return (
        "Wall time of `prepare_pt2e` (QAT: `prepare_qat_pt2e`) + `convert_pt2e` on the same exported model with a "
        "freshly built quantizer of the same configuration (export, quantizer construction and the one calibration "
        f"batch excluded); median of {repeats} repeats in which the two flows run in a fresh random order, after "
        "one untimed run of each. One thread. The first three columns include the quantizer's own "
        "`transform_for_annotation`, `annotate` and `validate` (the same code in both flows); the *flow* columns "
        "subtract the time spent inside those hooks, leaving each library's own work (observer insertion, QAT "
        "rewrites, convert). *floor* = the time inside the quantizer's hooks over torchao's total: the lowest "
        "pt2q / torchao any flow could reach with that quantizer."
    )


def _matrix_section(cells: list[Cell]) -> Section:
    return Section(
        "Backends: ExecuTorch quantizers through pt2q",
        f"{MATRIX_METHOD} {matrix_summary(cells)}",
        grid_table(cells)
        + "\n\nNot bit-identical, and backends not available here:\n\n"
        + matrix_table(cells, problems_only=True),
    )


def _timing_section(repeats: int) -> Section:
    return Section("Backends: prepare + convert time", timing_method(repeats), timing_table(timing_rows(repeats)))


def suite(models: Any, variants: Any, settings: Any) -> list[Section]:
    """The ``backends`` suite of ``benchmarks.run`` (its own models: ``tests/backend_zoo.py``)."""
    cells = run_matrix()
    repeats = 3 if settings.small else 7
    return [_matrix_section(cells), _timing_section(repeats)]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="3 timing repeats instead of 7")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default: 7, --small: 3)")
    parser.add_argument("--no-matrix", action="store_true", help="only the timing table")
    parser.add_argument("--no-timing", action="store_true", help="only the matrix")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.small else 7)
    torch.set_num_threads(1)
    sections = []
    if not args.no_matrix:
        sections.append(_matrix_section(run_matrix()))
    if not args.no_timing:
        sections.append(_timing_section(repeats))
    return print_document(sections)


if __name__ == "__main__":
    main()
