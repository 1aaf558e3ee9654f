"""The pieces every benchmark suite shares: a report section, progress bars, timing medians, tables.

A suite is a function ``(models, variants, settings) -> list[Section]`` living in its own
module (``benchmarks/speed.py``'s ``suite``, ...); ``benchmarks/run.py`` lists them.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

__all__ = [
    "RUNS",
    "Section",
    "progress",
    "median_ms",
    "interleaved_medians_ms",
    "ratio_table",
    "print_document",
]

RUNS = 20  # timed rounds of a latency median, unless a caller says otherwise


@dataclass(frozen=True)
class Section:
    """One titled part of a benchmark document: what was measured and how, then its Markdown table."""

    title: str
    method: str
    table: str

    def markdown(self) -> str:
        """``## title``, the method paragraph and the table, separated by blank lines."""
        return f"## {self.title}\n\n{self.method}\n\n{self.table}\n"


def progress(items: Iterable[str], suite: str) -> Iterable[str]:
    """``items`` with a progress bar on stderr, labelled ``suite``, that disappears when done."""
    return tqdm(list(items), desc=suite, unit="model", file=sys.stderr, leave=False)


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


def print_document(sections: Sequence[Section]) -> str:
    """The sections as one Markdown document, printed to stdout and returned."""
    document = "\n".join(section.markdown() for section in sections)
    print(document)
    return document
