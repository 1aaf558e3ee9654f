"""Corrupted program files: what each loader does with the same seeded mutations (mutations x outcome).

A small XNNPACK-quantized CNN is saved by pt2q as ``.pt2`` and ``.pte``; each file gets
``--mutations`` seeded corruptions (a changed byte, a flipped bit, a run of random bytes, a
truncation), and each corrupted copy goes through a loader and, if it loads, runs on a fixed
input. Loaders:

* ``torch.export.load`` / ``ExecuTorch``: the libraries on their own (what ``pt2q inspect``
  and ``pt2q.runtime.load`` did before pt2q checked digests: header check + ExecuTorch);
* ``pt2q.load_pt2`` / ``pt2q.runtime.load``: on the digest-sealed files pt2q writes;
* ``pt2q.runtime.load(isolate=True)``: on the unsealed ``.pte`` (a program from elsewhere).

Outcomes: the same output, pt2q's load error, another exception, a different output, or the
process killed ("abort"; the worker process is replaced). Usage:
``python -m benchmarks.file_fuzz [--mutations 1000] [--seed 12]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["mutations", "tiny_program", "LOADERS", "fuzz", "markdown_table", "main"]

OUTCOMES = ("same output", "pt2q error", "other error", "different output", "abort")
# loader -> the file it reads
LOADERS = {
    "torch.export.load": "tiny.pt2",
    "ExecuTorch": "tiny.pte",
    "pt2q.load_pt2": "tiny.pt2",
    "pt2q.runtime.load": "tiny.pte",
    "pt2q.runtime.load(isolate=True)": "unsealed.pte",
}


def mutations(data: bytes, count: int, seed: int) -> list[bytes]:
    """``count`` seeded corruptions of ``data``: a changed byte, a flipped bit, a run of random bytes
    or a truncation."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        b = bytearray(data)
        kind = rng.choice(("byte", "byte", "bit", "run", "truncate"))
        if kind == "truncate":
            out.append(bytes(b[: rng.randrange(len(b))]))
            continue
        i = rng.randrange(len(b))
        if kind == "byte":
            b[i] = (b[i] + rng.randrange(1, 256)) % 256
        elif kind == "bit":
            b[i] ^= 1 << rng.randrange(8)
        else:
            for j in range(i, min(i + rng.randrange(2, 9), len(b))):
                b[j] = rng.randrange(256)
        out.append(bytes(b))
    return out


def tiny_program() -> tuple[Any, tuple[Any, ...]]:
    """A small CNN quantized by pt2q's XNNPACK flow and lowered to ExecuTorch: (LoweredProgram, example inputs)."""
    import torch
    import torch.nn as nn

    import pt2q
    from pt2q.lowering import to_executorch
    from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = (torch.randn(1, 3, 8, 8),)
    prepared = pt2q.prepare_pt2e(
        torch.export.export(model, x).module(),
        XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
    )
    for _ in range(3):
        prepared(torch.randn(1, 3, 8, 8))
    return to_executorch(torch.export.export(pt2q.convert_pt2e(prepared), x)), x


def write_files(folder: Path) -> None:
    """The program of :func:`tiny_program` as tiny.pt2, tiny.pte (sealed), unsealed.pte, and its input."""
    import torch

    lowered, x = tiny_program()
    lowered.save_all(folder, "tiny")
    (folder / "unsealed.pte").write_bytes(lowered.buffer)
    torch.save(x[0], folder / "input.pt")


def _worker(folder: Path) -> None:
    """Answer "LOADER PATH" lines with the outcome as JSON (run in its own process)."""
    import contextlib
    import io
    import os

    import torch

    from pt2q.io.pt2_file import Pt2LoadError, load_pt2
    from pt2q.io.quiet import quiet
    from pt2q.runtime import ProgramLoadError, load
    from pt2q.runtime.program import check_pte_header, open_method

    x = torch.load(folder / "input.pt")

    def executorch(path: str) -> torch.Tensor:
        data = Path(path).read_bytes()
        check_pte_header(data)
        _, method = open_method(data, "forward", path)
        return method.execute([x])[0]

    run = {
        "torch.export.load": lambda p: torch.export.load(p).module()(x),
        "ExecuTorch": executorch,
        "pt2q.load_pt2": lambda p: load_pt2(p).module()(x),
        "pt2q.runtime.load": lambda p: load(p)(x),
        "pt2q.runtime.load(isolate=True)": lambda p: load(p, isolate=True)(x),
    }
    reference = {name: run[name](str(folder / file)) for name, file in LOADERS.items()}
    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)  # native log lines of the corrupt loads
    print("ready", flush=True)
    for line in sys.stdin:
        name, path = line.split(" ", 1)
        try:
            with quiet(), contextlib.redirect_stderr(io.StringIO()):
                out = run[name](path.strip())
            outcome = "same output" if torch.equal(out, reference[name]) else "different output"
        except (ProgramLoadError, Pt2LoadError):
            outcome = "pt2q error"
        except Exception as e:  # noqa: BLE001  counted: any other exception type
            outcome = (
                "other error" if not isinstance(e, RuntimeError) or "failed to run" not in str(e) else "pt2q error"
            )
        print(json.dumps(outcome), flush=True)


class _Worker:
    def __init__(self, folder: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.file_fuzz", "--worker", str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError("the fuzz worker did not start")

    def ask(self, loader: str, path: Path) -> str:
        self.process.stdin.write(f"{loader} {path}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            return "abort"
        return json.loads(line)

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def fuzz(count: int, seed: int, loaders=tuple(LOADERS)) -> dict[str, collections.Counter]:
    """loader -> outcome counts over ``count`` mutations of its file."""
    from tqdm import tqdm

    results: dict[str, collections.Counter] = {}
    with tempfile.TemporaryDirectory(prefix="pt2q-fuzz-") as tmp:
        folder = Path(tmp)
        write_files(folder)
        worker = _Worker(folder)
        for loader in loaders:
            file = folder / LOADERS[loader]
            counts: collections.Counter = collections.Counter()
            for data in tqdm(mutations(file.read_bytes(), count, seed), desc=loader, file=sys.stderr):
                mutated = folder / f"mutated{file.suffix}"
                mutated.write_bytes(data)
                outcome = worker.ask(loader, mutated)
                counts[outcome] += 1
                if outcome == "abort":
                    worker = _Worker(folder)
            results[loader] = counts
        worker.close()
    return results


def markdown_table(results: dict[str, collections.Counter]) -> str:
    lines = ["| loader | file | mutations | " + " | ".join(OUTCOMES) + " |", "|---|---|---:|" + "---:|" * len(OUTCOMES)]
    for loader, counts in results.items():
        lines.append(
            f"| {loader} | {LOADERS[loader]} | {sum(counts.values())} | "
            + " | ".join(str(counts[o]) for o in OUTCOMES)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mutations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--loaders", default=",".join(LOADERS), help="comma-separated, of: " + ", ".join(LOADERS))
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        _worker(args.worker)
        return ""
    table = markdown_table(fuzz(args.mutations, args.seed, tuple(args.loaders.split(","))))
    print(table)
    return table


if __name__ == "__main__":
    main()
