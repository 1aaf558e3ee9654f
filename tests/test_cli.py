"""The ``pt2q`` command, driven through its console entry point in a subprocess."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FACTORY = """
import torch.nn as nn


def make():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


NOT_A_MODEL = 3
"""
SHAPE = "1x3x8x8"


def pt2q(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m pt2q.cli.main ARGS`` in ``cwd``."""
    return subprocess.run([sys.executable, "-m", "pt2q.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli")
    (path / "tiny.py").write_text(FACTORY)
    return path


def test_console_script_is_installed() -> None:
    assert shutil.which("pt2q"), "pip install -e . should install the pt2q command"


def test_quantize_to_pt2_then_inspect(workdir: Path) -> None:
    done = pt2q("quantize", "tiny.py:make", "--quantizer", "xnnpack", "--example-inputs", SHAPE,
                "--calibrate", "2", "--target", "pt2", "--out", "tiny.pt2", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert (workdir / "tiny.pt2").is_file()
    assert re.search(r"quantize / dequantize ops \| 4 / 6", done.stdout), done.stdout

    shown = pt2q("inspect", "tiny.pt2", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"\| quantize ops\s+\| 4\b", shown.stdout), shown.stdout
    assert re.search(r"\| dequantize ops\s+\| 6\b", shown.stdout), shown.stdout
    assert re.search(r"quantized_decomposed\.dequantize_per_channel\s+\| 2\b", shown.stdout)
    share = float(re.search(r"int8 share of tensor bytes\s+\| ([\d.]+)%", shown.stdout).group(1))
    assert share > 50


def test_quantize_to_pte_then_inspect_and_run(workdir: Path) -> None:
    done = pt2q("quantize", "tiny.py:make", "--example-inputs", SHAPE, "--calibrate", "2",
                "--target", "pte", "--out", "tiny.pte", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert (workdir / "tiny.pte").is_file()

    shown = pt2q("inspect", "tiny.pte", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"methods\s+\| forward", shown.stdout)
    assert re.search(r"forward inputs\s+\| 1: float32\[1, 3, 8, 8\]", shown.stdout), shown.stdout

    ran = pt2q("run", "tiny.pte", "--inputs", SHAPE, "--runs", "5", cwd=workdir)
    assert ran.returncode == 0, ran.stderr
    assert re.search(r"median latency\s+\| [\d.]+ ms", ran.stdout), ran.stdout


@pytest.mark.parametrize(
    "args, says",
    [
        (["quantize", "tiny.py:make", "--quantizer", "xnnpack,int4", "--example-inputs", SHAPE, "--out", "x.pt2"], "unknown quantizer"),
        (["quantize", "tiny.py:nope", "--example-inputs", SHAPE, "--out", "x.pt2"], "factory 'nope' not found"),
        (["quantize", "tiny.py:NOT_A_MODEL", "--example-inputs", SHAPE, "--out", "x.pt2"], "not found"),
        (["quantize", "missing.py:make", "--example-inputs", SHAPE, "--out", "x.pt2"], "no such file"),
        (["quantize", "no_such_module:make", "--example-inputs", SHAPE, "--out", "x.pt2"], "cannot import"),
        (["quantize", "tiny.py:make", "--example-inputs", "1x5x8x8", "--out", "x.pt2"], "do not fit"),
        (["quantize", "tiny.py:make", "--example-inputs", "1xbx8", "--out", "x.pt2"], "invalid shape"),
        (["quantize", "tiny.py:make", "--example-inputs", SHAPE, "--target", "x86"], "needs --quantizer x86"),
        (["inspect", "missing.pt2"], "no such file"),
        (["inspect", "tiny.py"], "expected a .pt2 or .pte"),
        (["run", "missing.pte", "--inputs", SHAPE], "no such file"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_arguments_print_one_error_line(workdir: Path, args: list[str], says: str) -> None:
    done = pt2q(*args, cwd=workdir)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pt2q: error: "), done.stderr
    assert says in lines[0]


def test_run_with_inputs_that_do_not_match_the_program(workdir: Path) -> None:
    if not (workdir / "tiny.pte").is_file():
        pytest.skip("needs the .pte written by test_quantize_to_pte_then_inspect_and_run")
    done = pt2q("run", "tiny.pte", "--inputs", "2x3x9x9", cwd=workdir)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "must have shape (1, 3, 8, 8)" in lines[0], done.stderr
