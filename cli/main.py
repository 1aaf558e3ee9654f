"""The ``pt2q`` command: quantize a model factory, inspect a saved program, run a ``.pte``, or run the demo.

    pt2q quantize MODULE:FACTORY --quantizer xnnpack --example-inputs 1x3x32x32 --target pte --out m.pte
    pt2q quantize MODULE:FACTORY ... --min-sqnr 30 [--max-rounds 6] [--plot tradeoff.png]
    pt2q inspect m.pt2 | m.pte [--trust]
    pt2q run m.pte --inputs 1x3x32x32 [--runs 50] [--trust]
    pt2q demo [--out DIR]

Bad arguments print one ``pt2q: error: ...`` line and exit with status 2
(set ``PT2Q_TRACEBACK=1`` to see the traceback of an unexpected failure).
Files are read without running anything stored in them: a ``.pt2`` that needs a pickle
is refused unless ``--trust`` is given, and a ``.pte`` is first loaded in a child process
(``--trust`` skips that), so a loader crash is one error line. Every file is written
atomically with a SHA-256 digest that loading checks.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pt2q.cli.common import (  # noqa: F401  the names pt2q.cli.main has always offered
    DTYPES,
    QUANTIZERS,
    TARGETS,
    TRUST_HELP,
    CLIError,
    InputSpec,
    Parser,
    Rows,
    build_quantizer,
    check_inputs,
    fail,
    first_line,
    load_factory,
    load_pte,
    make_model,
    parse_quantizers,
    parse_shape,
    parse_shapes,
    print_table,
    random_inputs,
    random_like,
)
from pt2q.cli.inspect_command import Pt2Stats, cmd_inspect, inspect_pt2, inspect_pte, pt2_stats  # noqa: F401
from pt2q.cli.quantize_command import cmd_quantize, quantize_model, quantize_to_target  # noqa: F401


def build_parser() -> argparse.ArgumentParser:
    """The ``pt2q`` argument parser: one subcommand per command, each with its handler."""
    parser = Parser(prog="pt2q", description="Quantize torch.export programs (PT2E) and run them.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_quantize(sub.add_parser("quantize", help="export, quantize, calibrate and save a model"))

    i = sub.add_parser("inspect", help="summarise a .pt2 or .pte file")
    i.add_argument("file", type=Path)
    i.add_argument(
        "--layers", action="store_true", help="per node of a .pt2: how it is quantized, or why it stayed float"
    )
    i.add_argument("--trust", action="store_true", help=TRUST_HELP)
    i.set_defaults(handler=cmd_inspect)

    r = sub.add_parser("run", help="run a .pte on random inputs and time it")
    r.add_argument("file", type=Path)
    r.add_argument("--inputs", type=parse_shape, nargs="+", required=True, metavar="SHAPE")
    r.add_argument("--runs", type=int, default=50)
    r.add_argument("--trust", action="store_true", help=TRUST_HELP)
    r.set_defaults(handler=cmd_run)

    d = sub.add_parser("demo", help="train, quantize and compare the digits CNN")
    d.add_argument("--out", type=Path, default=Path("out"))
    d.add_argument("--epochs", type=int)
    d.add_argument("--calibration-batches", type=int)
    d.set_defaults(handler=cmd_demo)
    return parser


def _add_quantize(q: argparse.ArgumentParser) -> None:
    """The arguments of ``pt2q quantize``."""
    q.add_argument(
        "factory", metavar="MODULE:FACTORY", help="callable returning an nn.Module; MODULE is dotted or a .py path"
    )
    q.add_argument(
        "--quantizer", type=parse_quantizers, default=["xnnpack"], help=f"one or more of {','.join(QUANTIZERS)}"
    )
    q.add_argument(
        "--example-inputs",
        type=parse_shapes,
        required=True,
        metavar="SHAPE[,SHAPE...]",
        help="one shape per model input, e.g. 1x3x32x32 or 1x16:int64 for token ids",
    )
    q.add_argument("--calibrate", type=int, default=8, metavar="N", help="random calibration batches (default 8)")
    q.add_argument("--target", choices=TARGETS, default="pt2")
    q.add_argument("--out", type=Path, help="output file (.pt2 or .pte); optional for --target x86")
    q.add_argument(
        "--report",
        action="store_true",
        help="print the per-layer report: how each node is quantized and its SQNR against fp32",
    )
    q.add_argument(
        "--min-sqnr",
        type=float,
        metavar="DB",
        help="accuracy target (output SQNR in dB against fp32): search the backend's precision ladder (static "
        "int8, dynamic int8, fp32 per layer) for the cheapest choice by measured per-layer latency, "
        "and print the accuracy-vs-latency table of the tries",
    )
    q.add_argument(
        "--max-rounds", type=int, default=6, metavar="N", help="most prepare/calibrate/convert rounds (default 6)"
    )
    q.add_argument("--plot", type=Path, metavar="PNG", help="with --min-sqnr: write the trade-off chart")
    q.set_defaults(handler=cmd_quantize)


# ---------------------------------------------------------------- run, demo


def cmd_run(args: argparse.Namespace) -> None:
    from pt2q.runtime import InputMismatchError, time_program

    if args.runs < 1:
        raise CLIError("--runs must be at least 1")
    program = load_pte(args.file, args.trust)
    specs = args.inputs
    if len(specs) == len(program.input_specs):  # the program knows its dtypes: SHAPE alone is enough
        for i, (spec, (_, dtype)) in enumerate(zip(specs, program.input_specs)):
            if spec.dtype is not None and spec.torch_dtype != dtype:
                raise CLIError(
                    f"--inputs {spec} gives input {i} dtype {spec.dtype}, but {program.method} takes "
                    f"{str(dtype).replace('torch.', '')}: give {InputSpec(spec.shape)} or the right dtype"
                )
        specs = [InputSpec(s.shape, str(d).replace("torch.", "")) for s, (_, d) in zip(specs, program.input_specs)]
    inputs = random_inputs(specs)
    try:
        program.run(inputs)
    except InputMismatchError as e:
        raise CLIError(str(e)) from e
    timing = time_program(program, *inputs, runs=args.runs, warmup=min(5, args.runs))
    print_table(
        f"pt2q run {args.file}",
        [
            ("inputs", ", ".join(map(str, specs))),
            ("median latency", f"{timing.median_ms:.3f} ms"),
            ("min latency", f"{timing.min_ms:.3f} ms"),
            ("runs / threads", f"{timing.runs} / {timing.threads}"),
        ],
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from pt2q.cli import demo

    argv = ["--out", str(args.out)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.calibration_batches is not None:
        argv += ["--calibration-batches", str(args.calibration_batches)]
    demo.main(argv)


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> int:
    """Console entry point of ``pt2q``."""
    from pt2q.io.atomic_file import FileWriteError
    from pt2q.io.pt2_file import Pt2LoadError
    from pt2q.runtime import ProgramLoadError

    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except (CLIError, FileWriteError, Pt2LoadError, ProgramLoadError) as e:
        fail(str(e))
    except Exception as e:  # an unexpected failure: still one line unless asked for the traceback
        if os.environ.get("PT2Q_TRACEBACK"):
            raise
        fail(f"{type(e).__name__}: {first_line(e)} (PT2Q_TRACEBACK=1 for details)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
