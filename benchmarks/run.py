"""All benchmark suites in one run: speed, overhead, size and accuracy tables, pt2q vs torchao vs fp32.

Prints one Markdown document (machine, method, one table per suite) to stdout and
writes it to ``--out``; progress goes to stderr. Every ratio in a table comes from
numbers measured in this same run. Suites:

* speed: single-thread latency, x86 (eager / Inductor / int8 through Inductor) and
  ExecuTorch ``.pte`` (XNNPACK) — ``benchmarks/speed.py``, ``benchmarks/executorch_speed.py``;
* overhead: prepare+convert time and calibration cost — ``benchmarks/overhead.py``;
* size: saved ``.pt2`` and ``.pte`` bytes — ``benchmarks/size.py``;
* accuracy: SQNR of int8 vs fp32 outputs on the benchmark models, and digits accuracy
  (fp32 / PTQ / QAT) — ``benchmarks/accuracy.py``;
* transformer: static int8 recipes on a real sentence-embedding BERT, accuracy and ``.pte``
  latency — ``benchmarks/transformer.py``;
* distributed: calibration throughput on 1 and 2 processes, cost of ``sync_observers`` —
  ``benchmarks/distributed.py``;
* decoder_lm: a Llama-style decoder trained on the standard library, fp32 / 8da8w / 8da4w
  (RTN, GPTQ) ``.pte`` perplexity, size, prefill and decode tokens/s — ``benchmarks/decoder_lm.py``;
* backends: ExecuTorch's backend quantizers through pt2q and torchao (matrix: runs / bit-identical) and
  prepare+convert time — ``benchmarks/backends.py``;
* architectures: the ``transformers`` library's own model classes (29, random weights) through pt2q's .pte and
  x86 flows and torchao's, and the decoders through each XNNPACK recipe — ``benchmarks/architectures.py``.

    python -m benchmarks.run [--small] [--suites speed,overhead,size,accuracy] [--models mlp,...] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks import accuracy, architectures, backends, decoder_lm, distributed, overhead, size, transformer
from benchmarks.executorch_speed import export_variants, lower_to_pte, pte_latencies
from benchmarks.models import benchmark_models
from benchmarks.speed import BASELINE, x86_latencies
from pt2q.io.atomic_file import write_atomic

__all__ = ["Settings", "FULL", "SMALL", "Section", "SUITES", "ratio_table", "main"]

DEFAULT_OUT = Path(__file__).with_name("RESULTS.md")
ALL_MODELS = ("resnet18", "mobilenet_v2", "bert_encoder_12l", "mlp")


@dataclass(frozen=True)
class Settings:
    """Repeat counts of one run (``FULL`` or ``SMALL``)."""

    small: bool
    models: tuple[str, ...]
    x86_runs: int  # interleaved timing rounds of the x86 columns (median)
    pte_runs: int  # timed calls per .pte and round (median)
    pte_rounds: int  # interleaved rounds per .pte (best median)
    overhead_repeats: int  # prepare+convert repeats (median)
    sqnr_batches: int  # fresh random batches for the SQNR table
    epochs: int  # digits: fp32 training epochs
    qat_epochs: int  # digits: QAT fine-tuning epochs


FULL = Settings(
    False,
    ALL_MODELS,
    x86_runs=20,
    pte_runs=20,
    pte_rounds=3,
    overhead_repeats=3,
    sqnr_batches=4,
    epochs=12,
    qat_epochs=4,
)
SMALL = Settings(
    True,
    ("mlp", "resnet18"),
    x86_runs=5,
    pte_runs=5,
    pte_rounds=2,
    overhead_repeats=1,
    sqnr_batches=2,
    epochs=3,
    qat_epochs=1,
)


@dataclass(frozen=True)
class Section:
    title: str
    method: str
    table: str

    def markdown(self) -> str:
        return f"## {self.title}\n\n{self.method}\n\n{self.table}\n"


Models = dict[str, tuple[torch.nn.Module, tuple]]


class Variants:
    """Per model, the fp32 / pt2q int8 / torchao int8 exported programs and ``.pte`` buffers, built once per run."""

    def __init__(self, models: Models) -> None:
        self.models = models
        self._programs: dict[str, dict[str, torch.export.ExportedProgram]] = {}
        self._ptes: dict[str, dict[str, bytes]] = {}

    def programs(self, name: str) -> dict[str, torch.export.ExportedProgram]:
        if name not in self._programs:
            self._programs[name] = export_variants(*self.models[name])
        return self._programs[name]

    def ptes(self, name: str) -> dict[str, bytes]:
        if name not in self._ptes:
            self._ptes[name] = {
                variant: lower_to_pte(variant, program) for variant, program in self.programs(name).items()
            }
        return self._ptes[name]


def ratio_table(
    rows: dict[str, dict[str, float]],
    columns: dict[str, str],
    ratios: dict[str, tuple[str, str]],
    fmt: str = "{:.2f}",
) -> str:
    """Markdown table: one row per model, ``columns`` (key -> header) formatted with ``fmt``, then
    ``ratios`` (header -> (numerator key, denominator key)) to two decimals; missing cells are "–"."""
    lines = [
        "| model | " + " | ".join([*columns.values(), *ratios]) + " |",
        "|---|" + "---:|" * (len(columns) + len(ratios)),
    ]
    for model, row in rows.items():
        cells = [fmt.format(row[key]) if key in row else "–" for key in columns]
        cells += [f"{row[a] / row[b]:.2f}" if a in row and b in row else "–" for a, b in ratios.values()]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _progress(items: Iterable[str], suite: str) -> Iterable[str]:
    return tqdm(list(items), desc=suite, unit="model", file=sys.stderr, leave=False)


def _failed(what: str, name: str, exc: Exception) -> None:
    tqdm.write(f"benchmarks.run: {what} failed on {name}: {exc!r}", file=sys.stderr)


def speed_suite(models: Models, variants: Variants, settings: Settings) -> list[Section]:
    """Single-thread latency medians: x86 (eager, Inductor, int8 via Inductor) and ExecuTorch .pte."""
    x86: dict[str, dict[str, float]] = {}
    pte: dict[str, dict[str, float]] = {}
    for name in _progress(models, "speed"):
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
    x86_table = ratio_table(
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
    pte_table = ratio_table(
        pte,
        {"fp32": "fp32 .pte ms", "pt2q_int8": "pt2q int8 .pte ms", "torchao_int8": "torchao int8 .pte ms"},
        {
            "speed-up pt2q": ("fp32", "pt2q_int8"),
            "speed-up torchao": ("fp32", "torchao_int8"),
            "pt2q/torchao latency": ("pt2q_int8", "torchao_int8"),
        },
    )
    return [
        Section(
            "Speed: x86 through Inductor",
            (
                f"Median latency of one call (ms), one thread, batch of the example input. The four columns are timed "
                f"in turn, in a fresh random order each round, over {settings.x86_runs} rounds after 3 warm-up calls. "
                "int8: `X86InductorQuantizer` (pt2q's, resp. torchao's), calibrated on 2 random batches; pt2q lowered "
                "with `compile_quantized_for_x86`, torchao with `torch.compile` + freezing. "
                "speed-up = fp32 eager / int8."
            ),
            x86_table,
        ),
        Section(
            "Speed: ExecuTorch (XNNPACK delegate)",
            (
                f"Median latency (ms) of a loaded `.pte`, ExecuTorch thread pool of 1: best of {settings.pte_rounds} "
                f"medians, each over {settings.pte_runs} rounds in which the three programs are called in turn, in a "
                "fresh random order (3 warm-up calls first). int8: XNNPACK "
                "per-channel symmetric config, pt2q's flow + `pt2q.lowering.to_executorch` vs torchao's flow + "
                "ExecuTorch's `to_edge_transform_and_lower`. speed-up = fp32 .pte / int8 .pte."
            ),
            pte_table,
        ),
    ]


def overhead_suite(models: Models, variants: Variants, settings: Settings) -> list[Section]:
    """prepare+convert time and calibration-forward cost, pt2q vs torchao (XNNPACK per-channel)."""
    results = {
        name: overhead.measure(*models[name], settings.overhead_repeats) for name in _progress(models, "overhead")
    }
    return [
        Section(
            "Overhead: prepare + convert, calibration",
            (
                "Wall time of `prepare_pt2e` + `convert_pt2e` (export excluded; median of "
                f"{settings.overhead_repeats}, after one warm-up of each flow on a tiny model). calib/fp32: median "
                "time of a calibration forward of the prepared model (3 calls per repeat, after the first) over the "
                f"median fp32 forward of the exported model ({3 * settings.overhead_repeats} calls). Overhead ratio = "
                "(pt2q calib/fp32 - 1) / (torchao calib/fp32 - 1), noisy where a calibration forward costs about one "
                "fp32 forward. One thread, XNNPACK per-channel config."
            ),
            overhead.markdown_table(results),
        )
    ]


def size_suite(models: Models, variants: Variants, settings: Settings) -> list[Section]:
    """Saved .pt2 and .pte bytes of fp32, pt2q int8 and torchao int8."""
    results = {name: size.sizes(variants.programs(name), variants.ptes(name)) for name in _progress(models, "size")}
    return [
        Section(
            "Size on disk",
            (
                "`.pt2`: bytes written by `torch.export.save` of the exported fp32 program and of the re-exported "
                "converted int8 programs; `.pte`: bytes of the ExecuTorch program with the XNNPACK delegate. "
                "XNNPACK per-channel config for both flows; KiB = 1024 bytes; sizes are deterministic (no repeats)."
            ),
            size.markdown_table(results),
        )
    ]


def sqnr_db(reference: torch.Tensor, actual: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio of ``actual`` against ``reference``, in dB."""
    noise = (reference - actual).pow(2).sum()
    return float(10 * torch.log10(reference.pow(2).sum() / noise)) if noise > 0 else float("inf")


def accuracy_suite(models: Models, variants: Variants, settings: Settings) -> list[Section]:
    """SQNR of each int8 model against fp32, and test accuracy on scikit-learn digits."""
    sqnr: dict[str, dict[str, float]] = {}
    for name in _progress(models, "accuracy"):
        modules = {variant: program.module() for variant, program in variants.programs(name).items()}
        g = torch.Generator().manual_seed(2)
        batches = [
            tuple(torch.randn(x.shape, generator=g) for x in models[name][1]) for _ in range(settings.sqnr_batches)
        ]
        with torch.no_grad():
            out = {v: torch.cat([m(*b).flatten() for b in batches]) for v, m in modules.items()}
        sqnr[name] = {
            "pt2q": sqnr_db(out["fp32"], out["pt2q_int8"]),
            "torchao": sqnr_db(out["fp32"], out["torchao_int8"]),
            "agree": sqnr_db(out["torchao_int8"], out["pt2q_int8"]),
        }
    lines = [
        "| model | pt2q int8 vs fp32 dB | torchao int8 vs fp32 dB | pt2q - torchao dB | pt2q vs torchao output dB |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {r['pt2q']:.2f} | {r['torchao']:.2f} | {r['pt2q'] - r['torchao']:+.2f} | {r['agree']:.2f} |"
        for n, r in sqnr.items()
    ]
    rows = accuracy.measure(accuracy.QUANTIZERS, epochs=settings.epochs, qat_epochs=settings.qat_epochs)
    n_test = len(accuracy.load_digits()[3])
    digits = accuracy.markdown_table(rows, n_test)  # its caption line is replaced by the section's text
    return [
        Section(
            "Accuracy: SQNR against fp32",
            (
                f"SQNR (dB, higher is better) of the int8 model's outputs against the fp32 model's on "
                f"{settings.sqnr_batches} fresh random batches (the models have random weights, so this measures "
                "numerics, not task accuracy). XNNPACK per-channel config, 2 calibration batches, quantized graphs "
                "run in PyTorch (Q/DQ reference kernels). Last column: pt2q's output against torchao's "
                "(inf: bit-identical)."
            ),
            "\n".join(lines),
        ),
        Section(
            "Accuracy: digits (real data)",
            (
                f"DigitsNet (conv-BN x2, 2 linear) trained {settings.epochs} epochs on scikit-learn's digits, then PTQ "
                f"(8 calibration batches) and QAT ({settings.qat_epochs} epochs) with each quantizer; accuracy (%) on "
                f"the {n_test} held-out test images; one run, fixed seeds."
            ),
            "\n".join(line for line in digits.splitlines() if line.startswith("|")),
        ),
    ]


SUITES: dict[str, Callable[[Models, Variants, Settings], list[Section]]] = {
    "speed": speed_suite,
    "overhead": overhead_suite,
    "size": size_suite,
    "accuracy": accuracy_suite,
    "transformer": transformer.suite,  # the real MiniLM, its own models and data (benchmarks/transformer.py)
    "distributed": distributed.suite,  # calibration throughput on 1 and 2 processes, cost of sync_observers
    "decoder_lm": decoder_lm.suite,
    "backends": backends.suite,  # ExecuTorch's backend quantizers: pt2q vs torchao matrix and prepare+convert time
    "architectures": architectures.suite,  # transformers' own model classes to .pte / x86 (tests/hf_zoo.py)
}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def header(settings: Settings, models: Models, argv: Sequence[str], seconds: float) -> str:
    """Machine, versions, date, command and models of this run."""
    from pt2q.quantizers.cpu_capability import cpu_has_vnni

    shapes = ", ".join(
        f"{n} ({sum(p.numel() for p in m.parameters()) / 1e6:.1f}M params, input {'x'.join(map(str, ex[0].shape))})"
        for n, (m, ex) in models.items()
    )
    return "\n".join(
        [
            "# pt2q benchmark results",
            "",
            f"- Machine: {_cpu_model()}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, "
            f"VNNI: {'yes' if cpu_has_vnni() else 'no'}; Python {platform.python_version()}",
            f"- Versions: torch {torch.__version__}, torchao {_version('torchao')}, "
            f"executorch {_version('executorch')}, pt2q {_version('pt2q')}",
            f"- Date: {datetime.date.today().isoformat()}; command: `{' '.join(['python -m benchmarks.run', *argv])}`; "
            f"total {seconds / 60:.1f} min",
            f"- Models ({'small' if settings.small else 'full'} sizes, random weights): {shapes}",
            "- Method: every number below was measured in this one run, in one process with one thread "
            "(`torch.set_num_threads(1)`, ExecuTorch thread pool of 1); latencies are medians as stated per table; "
            "every ratio divides two numbers of the same run. The machine is shared, so absolute times are noisy; "
            "ratios of interleaved measurements are the robust part.",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> str:
    """Run the chosen suites, print the Markdown document and write it to ``--out``; return it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--small",
        action="store_true",
        help=f"small inputs, 2-layer encoder, fewer repeats, models {','.join(SMALL.models)} (~2 min)",
    )
    parser.add_argument("--suites", default=",".join(SUITES), help="comma-separated subset of " + ",".join(SUITES))
    parser.add_argument("--models", default=None, help="comma-separated subset of " + ",".join(ALL_MODELS))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    settings = SMALL if args.small else FULL
    suites = args.suites.split(",")
    names = args.models.split(",") if args.models else list(settings.models)
    for bad, known in ((set(suites) - set(SUITES), SUITES), (set(names) - set(ALL_MODELS), ALL_MODELS)):
        if bad:
            parser.error(f"unknown {sorted(bad)}; choose from {','.join(known)}")

    start, threads = time.perf_counter(), torch.get_num_threads()
    available = benchmark_models(small=settings.small)
    models = {name: available[name] for name in names}
    variants = Variants(models)
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sections = [
                section
                for suite in tqdm(suites, desc="suites", file=sys.stderr)
                for section in SUITES[suite](models, variants, settings)
            ]
    finally:
        torch.set_num_threads(threads)
    document = (
        header(settings, models, argv, time.perf_counter() - start) + "\n" + "\n".join(s.markdown() for s in sections)
    )
    print(document)
    write_atomic(args.out, document.encode())
    return document


if __name__ == "__main__":
    main()
