"""The pieces every benchmark suite shares: a report section, progress bars, ratio tables (latency medians:
``pt2q.runtime.timing``).

A suite is a function ``(models, variants, settings) -> list[Section]`` living in its own
module (``benchmarks/speed.py``'s ``suite``, ...); ``benchmarks/run.py`` lists them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from tqdm import tqdm

__all__ = [
    "RUNS",
    "Section",
    "progress",
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
