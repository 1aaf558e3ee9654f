"""The ``pt2q`` command, driven through its console entry point in a subprocess."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pt2q.io.digest import verify_trailer
from tests.hostile_files import hostile_pt2s

FACTORY = """
import torch
import torch.nn as nn


def make():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


class ImageAndTokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.image, self.tokens = make(), nn.Embedding(32, 5)

    def forward(self, x, ids):
        return self.image(x) + self.tokens(ids).mean(1)


def both():
    return ImageAndTokens()


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 2)

    def forward(self, x):
        return {"a": self.a(x), "b": self.b(x)}


def heads():
    return TwoHeads()


class Outlier(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)  # one shape: three programs to time
        with torch.no_grad():
            self.b.bias[3] = 60.0  # one output channel 50x the others: per-tensor int8 loses the rest

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + x


def outlier():
    return Outlier()


def quits():
    import sys

    sys.exit(0)


NOT_A_MODEL = 3
"""
SHAPE = "1x3x8x8"


def pt2q(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m pt2q.cli.main ARGS`` in ``cwd``."""
    return pt2q_many([list(args)], cwd)[0]


def pt2q_many(
    commands: list[list[str]], cwd: Path, launcher: tuple[str, ...] = (sys.executable, "-m", "pt2q.cli.main")
) -> list[subprocess.CompletedProcess]:
    """Run several ``pt2q`` commands at once (each pays torch's import time) and wait for all."""
    procs = [
        subprocess.Popen([*launcher, *args], cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for args in commands
    ]
    results = []
    for args, proc in zip(commands, procs):
        out, err = proc.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return results


def assert_one_error_line(done: subprocess.CompletedProcess, says: str) -> None:
    """A non-zero exit with exactly one ``pt2q: error:`` line on stderr that mentions ``says``."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, f"{done.args} succeeded"
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("pt2q: error: "), f"{done.args}: {done.stderr}"
    assert says in lines[0], f"{done.args}: {lines[0]}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli")
    (path / "tiny.py").write_text(FACTORY)
    return path


def test_console_script_imports_a_dotted_module_from_the_working_directory(workdir: Path) -> None:
    script = shutil.which("pt2q")
    assert script, "pip install -e . should install the pt2q command"
    (done,) = pt2q_many(
        [["quantize", "tiny:make", "--example-inputs", SHAPE, "--calibrate", "1", "--out", "dotted.pt2"]],
        cwd=workdir,
        launcher=(script,),
    )
    assert done.returncode == 0, done.stderr
    assert (workdir / "dotted.pt2").is_file()


def test_quantize_to_pt2_with_composed_quantizers_then_inspect(workdir: Path) -> None:
    done = pt2q(
        "quantize",
        "tiny.py:both",
        "--quantizer",
        "xnnpack,embedding",
        "--example-inputs",
        f"{SHAPE},1x6:int64",
        "--calibrate",
        "2",
        "--target",
        "pt2",
        "--out",
        "tiny.pt2",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    assert (workdir / "tiny.pt2").is_file()
    assert re.search(r"quantizers\s+\| embedding,xnnpack", done.stdout), done.stdout
    assert re.search(r"quantize / dequantize ops \| 6 / 9", done.stdout), done.stdout

    shown = pt2q("inspect", "tiny.pt2", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"\| quantize ops\s+\| 6\b", shown.stdout), shown.stdout
    assert re.search(r"\| dequantize ops\s+\| 9\b", shown.stdout), shown.stdout
    # conv and linear weights per channel (int8), the embedding table per row (uint8)
    assert re.search(r"quantized_decomposed\.dequantize_per_channel\s+\| 3\b", shown.stdout)
    share = float(re.search(r"int8 share of tensor bytes\s+\| ([\d.]+)%", shown.stdout).group(1))
    assert share > 50


PROGRESS = re.compile(r"^(\r?[\w ()]+: +\d+%\|.*)+$")  # tqdm's progress bars, pt2q's own output


def assert_no_third_party_noise(done: subprocess.CompletedProcess) -> None:
    """Nothing but pt2q's tables, progress bars and error line: no warnings, log lines or library paths."""
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    noise = [
        line
        for line in lines
        if not (
            line.startswith(("|", "pt2q ", "pt2q: error: ", "per-layer"))
            or PROGRESS.match(line)
            or line.startswith(str(done.args[1]))
        )
    ]
    assert not noise, "\n".join(noise)


def test_quantize_to_pte_then_inspect_and_run(workdir: Path) -> None:
    done = pt2q(
        "quantize",
        "tiny.py:make",
        "--example-inputs",
        SHAPE,
        "--calibrate",
        "2",
        "--target",
        "pte",
        "--out",
        "tiny.pte",
        cwd=workdir,
    )
    assert done.returncode == 0, done.stderr
    assert (workdir / "tiny.pte").is_file()
    assert_no_third_party_noise(done)
    # a .pte from elsewhere (no digest) that makes ExecuTorch's loader abort the process
    raw = verify_trailer((workdir / "tiny.pte").read_bytes()).payload
    at = list(re.finditer(rb"[0-9a-f]{64}", raw))[-1].start() + 40
    (workdir / "aborts.pte").write_bytes(raw[:at] + b"\xc2" + raw[at + 1 :])

    shown, ran, mismatched, wrong_dtype, inspect_abort, run_abort = pt2q_many(
        [
            ["inspect", "tiny.pte"],
            ["run", "tiny.pte", "--inputs", SHAPE, "--runs", "5"],
            ["run", "tiny.pte", "--inputs", "2x3x9x9"],
            ["run", "tiny.pte", "--inputs", f"{SHAPE}:int64"],
            ["inspect", "aborts.pte"],
            ["run", "aborts.pte", "--inputs", SHAPE],
        ],
        cwd=workdir,
    )
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"methods\s+\| forward", shown.stdout)
    assert re.search(r"forward inputs\s+\| 1: float32\[1, 3, 8, 8\]", shown.stdout), shown.stdout

    assert ran.returncode == 0, ran.stderr
    assert re.search(r"median latency\s+\| [\d.]+ ms", ran.stdout), ran.stdout
    for quiet in (shown, ran):
        assert_no_third_party_noise(quiet)
    assert_one_error_line(mismatched, "must have shape (1, 3, 8, 8)")
    assert_one_error_line(wrong_dtype, "gives input 0 dtype int64, but forward takes float32: give 1x3x8x8")
    for aborted in (inspect_abort, run_abort):
        assert_one_error_line(aborted, "ExecuTorch crashed (SIGABRT) while loading aborts.pte")


def test_x86_target_and_demo(workdir: Path) -> None:
    x86, demo = pt2q_many(
        [
            [
                "quantize",
                "tiny.py:make",
                "--quantizer",
                "x86",
                "--example-inputs",
                SHAPE,
                "--calibrate",
                "2",
                "--target",
                "x86",
                "--out",
                "x86.pt2",
            ],
            ["demo", "--out", "demo", "--epochs", "1", "--calibration-batches", "2"],
        ],
        cwd=workdir,
    )
    assert x86.returncode == 0, x86.stderr
    assert re.search(r"SQNR x86 int8 vs fp32\s+\| [\d.]+ dB", x86.stdout), x86.stdout
    assert re.search(r"latency x86 int8\s+\| [\d.]+ ms", x86.stdout), x86.stdout
    assert (workdir / "x86.pt2").is_file()
    assert demo.returncode == 0, demo.stderr
    assert re.search(r"\| int8 XNNPACK\s+\| ExecuTorch \.pte", demo.stdout), demo.stdout
    assert (workdir / "demo" / "demo_int8_xnnpack.pte").is_file()


def test_bad_arguments_print_one_error_line(workdir: Path) -> None:
    cases = [
        (
            ["quantize", "tiny.py:make", "--quantizer", "xnnpack,int4", "--example-inputs", SHAPE, "--out", "x.pt2"],
            "unknown quantizer",
        ),
        (["quantize", "tiny.py:nope", "--example-inputs", SHAPE, "--out", "x.pt2"], "factory 'nope' not found"),
        (["quantize", "tiny.py:make", "--example-inputs", "1x5x8x8", "--out", "x.pt2"], "do not fit"),
        (["inspect", "missing.pt2"], "no such file"),
        (["run", "missing.pte", "--inputs", SHAPE], "no such file"),
    ]
    for done, (_, says) in zip(pt2q_many([args for args, _ in cases], cwd=workdir), cases):
        assert_one_error_line(done, says)


@pytest.mark.parametrize(
    "args, says",
    [
        (["quantize", "tiny.py:NOT_A_MODEL", "--example-inputs", SHAPE, "--out", "x.pt2"], "not found"),
        (["quantize", "missing.py:make", "--example-inputs", SHAPE, "--out", "x.pt2"], "no such file"),
        (["quantize", "no_such_module:make", "--example-inputs", SHAPE, "--out", "x.pt2"], "cannot import"),
        (["quantize", "tiny.py", "--example-inputs", SHAPE, "--out", "x.pt2"], "expected MODULE:FACTORY"),
        (["quantize", "tiny.py:make", "--example-inputs", "1xbx8", "--out", "x.pt2"], "invalid shape"),
        (["quantize", "tiny.py:make", "--example-inputs", "1x8:int8", "--out", "x.pt2"], "invalid dtype"),
        (["quantize", "tiny.py:both", "--example-inputs", SHAPE, "--out", "x.pt2"], "do not fit"),
        (["quantize", "tiny.py:make", "--example-inputs", SHAPE], "--out is required"),
        (
            ["quantize", "tiny.py:make", "--example-inputs", SHAPE, "--target", "pte", "--out", "x.pt2"],
            "writes a .pte file",
        ),
        (["quantize", "tiny.py:make", "--example-inputs", SHAPE, "--target", "x86"], "needs --quantizer x86"),
        (
            ["quantize", "tiny.py:make", "--example-inputs", SHAPE, "--out", "x.pt2", "--plot", "t.png"],
            "--plot draws the trade-off of --min-sqnr",
        ),
        (
            [
                "quantize",
                "tiny.py:make",
                "--example-inputs",
                SHAPE,
                "--out",
                "x.pt2",
                "--min-sqnr",
                "30",
                "--max-rounds",
                "0",
            ],
            "--max-rounds must be at least 1",
        ),
        (["inspect", "tiny.py"], "expected a .pt2 or .pte"),
        (["inspect", "tiny.pte", "--layers"], "--layers reads a .pt2 program"),
        (["run", "tiny.pte", "--inputs", SHAPE, "--runs", "0"], "--runs must be at least 1"),
        (
            ["quantize", "tiny.py:quits", "--example-inputs", SHAPE, "--out", "x.pt2"],
            "tiny.py:quits called sys.exit(0) instead of returning an nn.Module",
        ),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_more_bad_arguments_in_process(workdir: Path, monkeypatch, capfd, args: list[str], says: str) -> None:
    """The same entry point called in-process (each subprocess would pay torch's import time)."""
    from pt2q.cli.main import main

    monkeypatch.chdir(workdir)
    with pytest.raises(SystemExit) as exited:
        main(args)
    err = capfd.readouterr().err
    assert exited.value.code != 0
    assert_one_error_line(subprocess.CompletedProcess(args, exited.value.code, "", err), says)


def test_quantize_report_and_inspect_layers_in_process(workdir: Path, monkeypatch, capsys) -> None:
    """`quantize --report` prints the per-layer table; `inspect --layers` reads it back from the .pt2."""
    from pt2q.cli.main import main

    monkeypatch.chdir(workdir)
    assert (
        main(
            [
                "quantize",
                "tiny.py:make",
                "--example-inputs",
                SHAPE,
                "--calibrate",
                "2",
                "--target",
                "pt2",
                "--out",
                "layers.pt2",
                "--report",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    table = out[out.index("per-layer report") :]
    # a row per layer (conv + relu: one pattern, one row) with the rule that claimed it and three
    # SQNR columns, measured on the random batches
    rows = (("conv2d", "0", "conv_relu"), ("flatten", "2", "propagate_annotation"), ("linear", "3", "linear"))
    for name, module, pattern in rows:
        row = rf"\n{name}\s+{module}\s+\S+\s+{pattern}\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+\S+:int8"
        assert re.search(row, table), (name, table)
    assert main(["inspect", "layers.pt2", "--layers"]) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines()[0] == "3 of 3 nodes quantized"
    # read back from the file: the graph order, the patterns, the qparams and the observers that chose them
    assert [line.split()[0] for line in shown.splitlines()[3:]] == ["conv2d", "flatten", "linear"]
    assert re.search(
        r"conv2d\s+0\s+conv2d\+relu\s+conv_relu\s+-\s+-\s+-\s+w:int8 per-channel\(axis 0\) .*"
        r"\(PerChannelMinMaxObserver\); i:int8 s=[\d.]+ zp=-?\d+ \(HistogramObserver\); o:int8",
        shown,
    ), shown


def test_dict_outputs_and_hostile_files_in_process(workdir: Path, monkeypatch, capfd) -> None:
    """A model returning a dict quantizes; hostile and corrupt .pt2 files give one error line to every
    verb and run none of their code; --trust reads a file with torch.export.load."""
    from pt2q.cli.main import main

    monkeypatch.chdir(workdir)
    assert main(["quantize", "tiny.py:heads", "--example-inputs", "1x8", "--calibrate", "2", "--out", "heads.pt2"]) == 0
    assert re.search(r"SQNR Q/DQ vs fp32\s+\| [\d.]+ dB", capfd.readouterr().out)

    marker = workdir / "MARKER"
    benign = (workdir / "heads.pt2").read_bytes()
    corrupt = bytearray(benign)
    corrupt[len(corrupt) // 2] ^= 1
    (workdir / "corrupt.pt2").write_bytes(bytes(corrupt))
    cases = [("corrupt.pt2", "corrupt.pt2 is corrupt: its SHA-256 digest does not match its content")]
    for i, (data, names) in enumerate(hostile_pt2s(benign, marker).values()):
        (workdir / f"hostile{i}.pt2").write_bytes(data)
        cases.append((f"hostile{i}.pt2", names))
    for file, says in cases:
        for args in (
            ["inspect", file],
            ["inspect", file, "--layers"],
            ["run", file, "--inputs", "1x8"],
            ["quantize", f"{file}:make", "--example-inputs", "1x8", "--out", "x.pt2"],
        ):
            with pytest.raises(SystemExit) as exited:
                main(args)
            err = capfd.readouterr().err
            expected = {"inspect": says, "run": "not an ExecuTorch program", "quantize": "cannot import"}[args[0]]
            if file == "corrupt.pt2" and args[0] == "run":  # its digest is checked first, whatever the format
                expected = says
            assert_one_error_line(subprocess.CompletedProcess(args, exited.value.code, "", err), expected)
            assert not marker.exists(), args
    assert main(["inspect", "heads.pt2", "--trust"]) == 0
    assert re.search(r"\| outputs\s+\| 2\b", capfd.readouterr().out)


def test_quantize_to_an_accuracy_target_prints_the_trade_off_in_process(workdir: Path, monkeypatch, capsys) -> None:
    """`quantize --min-sqnr` searches the XNNPACK ladder on measured .pte layer latency and prints every try."""
    from pt2q.cli.main import main

    monkeypatch.chdir(workdir)
    args = ["quantize", "tiny.py:outlier", "--example-inputs", "32x16", "--calibrate", "2", "--target", "pte"]
    assert main([*args, "--out", "target.pte", "--min-sqnr", "45", "--plot", "charts/trade_off.png"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| target\s+\| output SQNR >= 45 dB: met\n", out), out
    rounds = int(re.search(r"\| rounds \(prepare/calibrate/convert\)\s+\| (\d+)\n", out).group(1))
    assert 2 <= rounds <= 6
    table = out[out.index("accuracy vs latency of the tries (XNNPACK .pte latency per layer, 1 thread, measured") :]
    lines = table.splitlines()
    assert lines[1].startswith("| round | choice | est. cost (ms) | vs all static int8 | output SQNR dB")
    assert re.match(r"\| 0 \| all static int8 \| [\d.e-]+ \| 1\.00x \| [\d.]+ \|  \| [\d.]+ \| missed \|", lines[3])
    assert len([line for line in lines if re.match(r"\| \d+ \|", line)]) == rounds
    assert sum("<- returned" in line and "| met" in line for line in lines) == 1
    sqnr = float(re.search(r"\| SQNR \.pte vs fp32\s+\| ([\d.]+) dB", out).group(1))
    assert sqnr >= 45 - 6  # the target is met on the random evaluation batches; the .pte on fresh ones
    assert (workdir / "charts" / "trade_off.png").read_bytes()[:4] == b"\x89PNG"
    assert (workdir / "target.pte").is_file()
