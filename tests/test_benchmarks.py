"""The benchmark entry point (benchmarks/run.py) in --small mode on the MLP: structure of its tables, never wall time."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("executorch")
pytest.importorskip("torchao")

SIZE_COLUMNS = [
    "model",
    "format",
    "fp32 KiB",
    "pt2q int8 KiB",
    "torchao int8 KiB",
    "pt2q/fp32",
    "torchao/fp32",
    "pt2q/torchao",
]
OVERHEAD_COLUMNS = [
    "model",
    "pt2q prepare+convert s",
    "torchao prepare+convert s",
    "ratio pt2q/torchao",
    "pt2q calib/fp32",
    "torchao calib/fp32",
    "overhead ratio pt2q/torchao",
]


def _tables(document: str) -> dict[str, list[dict[str, str]]]:
    """Section title -> the rows of its Markdown table, as header -> cell."""
    tables = {}
    for section in document.split("\n## ")[1:]:
        title, _, body = section.partition("\n")
        lines = [line for line in body.splitlines() if line.startswith("|")]
        header, rows = [c.strip() for c in lines[0].strip("|").split("|")], lines[2:]
        tables[title] = [dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in rows]
    return tables


def _number(cell: str) -> float:
    return float(cell.replace(",", ""))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    from benchmarks.run import main

    out = tmp_path_factory.mktemp("bench") / "nested" / "RESULTS.md"
    out.parent.mkdir()
    document = main(["--small", "--models", "mlp", "--suites", "size,overhead", "--out", str(out)])
    return document, out.read_text(), out


def test_writes_the_document_where_out_says(run, capsys) -> None:
    document, written, _ = run
    assert written == document
    assert document.startswith("# pt2q benchmark results\n")
    for field in ("Machine:", "cores", "torch ", "torchao ", "executorch ", "Date:", "Method:", "mlp (1.6M params"):
        assert field in document.split("\n## ")[0], field


def test_size_table_has_ratios_of_its_own_numbers(run) -> None:
    tables = _tables(run[0])
    assert list(tables) == ["Size on disk", "Overhead: prepare + convert, calibration"]
    rows = tables["Size on disk"]
    assert [list(r) for r in rows] == [SIZE_COLUMNS, SIZE_COLUMNS]
    assert [(r["model"], r["format"]) for r in rows] == [("mlp", ".pt2"), ("mlp", ".pte")]
    for r in rows:
        fp32, ours, theirs = (_number(r[c]) for c in ("fp32 KiB", "pt2q int8 KiB", "torchao int8 KiB"))
        assert _number(r["pt2q/fp32"]) == pytest.approx(ours / fp32, abs=1e-3)
        assert _number(r["torchao/fp32"]) == pytest.approx(theirs / fp32, abs=1e-3)
        assert _number(r["pt2q/torchao"]) == pytest.approx(ours / theirs, abs=1e-3)
        assert ours < 0.5 * fp32, r  # int8 weights, no float copies left in the program
    pte = rows[1]
    assert _number(pte["torchao int8 KiB"]) < 0.5 * _number(pte["fp32 KiB"])


def test_overhead_table_has_ratios_of_its_own_numbers(run) -> None:
    (row,) = _tables(run[0])["Overhead: prepare + convert, calibration"]
    assert list(row) == OVERHEAD_COLUMNS and row["model"] == "mlp"
    ours, theirs = _number(row["pt2q prepare+convert s"]), _number(row["torchao prepare+convert s"])
    assert ours > 0 and theirs > 0
    # the seconds are printed to 3 decimals, the ratio to 2
    assert _number(row["ratio pt2q/torchao"]) == pytest.approx(ours / theirs, rel=0.05, abs=0.011)
    calib = [_number(row[c]) for c in ("pt2q calib/fp32", "torchao calib/fp32")]
    assert all(c > 0 for c in calib)
    assert re.fullmatch(r"-?\d+\.\d\d", row["overhead ratio pt2q/torchao"])


def test_unknown_suite_is_an_error(tmp_path: Path) -> None:
    from benchmarks.run import main

    with pytest.raises(SystemExit):
        main(["--suites", "speed,latency", "--out", str(tmp_path / "x.md")])
    assert not (tmp_path / "x.md").exists()
