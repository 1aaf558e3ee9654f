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
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from benchmarks import (
    accuracy,
    architectures,
    backends,
    decoder_lm,
    distributed,
    overhead,
    size,
    speed,
    transformer,
)
from benchmarks.common import Section, ratio_table
from benchmarks.models import benchmark_models
from benchmarks.settings import ALL_MODELS, FULL, SMALL, Settings
from benchmarks.variants import Models, Variants
from pt2q.io.atomic_file import write_atomic
from pt2q.quantizers.cpu_capability import cpu_has_vnni

__all__ = ["Settings", "FULL", "SMALL", "Section", "SUITES", "ratio_table", "main"]

DEFAULT_OUT = Path(__file__).with_name("RESULTS.md")

SUITES: dict[str, Callable[[Models, Variants, Settings], list[Section]]] = {
    "speed": speed.suite,
    "overhead": overhead.suite,
    "size": size.suite,
    "accuracy": accuracy.suite,
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
