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
import collections
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, NoReturn, Optional, TypedDict

import torch  # pt2q itself imports torch: a lazy import here would save nothing

if TYPE_CHECKING:
    from pt2q import QuantizeResult as pt2q_QuantizeResult
    from pt2q.quantizer import Quantizer
    from pt2q.runtime import Program

QUANTIZERS = ("embedding", "xnnpack", "x86")  # the order a composition runs them in
TARGETS = ("pt2", "pte", "x86")
Rows = list[tuple[str, object]]  # (label, value) lines of a summary table
TRUST_HELP = (
    "the file comes from a source you trust: load a .pt2 with torch.export.load (which unpickles), "
    "a .pte in this process without a trial load in a child process"
)
DTYPES = {"float32": "float32", "float": "float32", "int64": "int64", "long": "int64", "int32": "int32", "int": "int32"}


class CLIError(Exception):
    """A user error: reported as one ``pt2q: error:`` line, without a traceback."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage block)."""

    def error(self, message: str) -> NoReturn:
        _fail(message)


def _first_line(text: object) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else "(no message)"


def _fail(message: str) -> NoReturn:
    print(f"pt2q: error: {_first_line(message)}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- argument parsing


class InputSpec(NamedTuple):
    """One model input: its shape and dtype name (``1x16:int64``; ``dtype`` None: not given, float32)."""

    shape: tuple[int, ...]
    dtype: Optional[str] = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype or "float32")

    def __str__(self) -> str:
        dims = "x".join(map(str, self.shape))
        return dims if self.dtype in (None, "float32") else f"{dims}:{self.dtype}"


def parse_shape(text: str) -> InputSpec:
    """``"1x3x32x32"`` -> ``InputSpec((1, 3, 32, 32))``; ``"1x16:int64"`` for integer inputs (token ids)."""
    dims_text, _, dtype = text.lower().partition(":")
    if dtype and dtype not in DTYPES:
        raise argparse.ArgumentTypeError(f"invalid dtype {dtype!r} in {text!r} (choose from {', '.join(DTYPES)})")
    try:
        dims = tuple(int(d) for d in dims_text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid shape {text!r}: expected sizes joined by 'x', e.g. 1x3x32x32"
        ) from None
    if any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"invalid shape {text!r}: sizes must be positive")
    return InputSpec(dims, DTYPES[dtype] if dtype else None)


def parse_shapes(text: str) -> list[InputSpec]:
    """``"1x8,1x4:int64"`` -> one :class:`InputSpec` per model input."""
    return [parse_shape(part) for part in text.split(",") if part]


def parse_quantizers(text: str) -> list[str]:
    """``"embedding,xnnpack"`` -> the known names, in the order they must run."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in QUANTIZERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown quantizer {','.join(unknown) or text!r} (choose from {', '.join(QUANTIZERS)})"
        )
    return sorted(set(names), key=QUANTIZERS.index)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pt2q", description="Quantize torch.export programs (PT2E) and run them.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    q = sub.add_parser("quantize", help="export, quantize, calibrate and save a model")
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


# ---------------------------------------------------------------- shared helpers


def load_factory(spec: str) -> Callable[[], object]:
    """Resolve ``MODULE:FACTORY`` (dotted module or ``.py`` path) to the factory callable."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"expected MODULE:FACTORY, got {spec!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        module = _import_path(Path(module_name))
    else:
        if os.getcwd() not in sys.path:  # as with `python -m`: modules in the working directory import
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise CLIError(f"cannot import module {module_name!r}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CLIError(f"factory {attr!r} not found in {module_name} (or not callable)")
    return factory


def _import_path(path: Path) -> object:
    if not path.is_file():
        raise CLIError(f"no such file: {path}")
    spec = importlib.util.spec_from_file_location(f"_pt2q_factory_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise CLIError(f"cannot import {path}: not a Python source file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_model(spec: str) -> torch.nn.Module:
    try:
        model = load_factory(spec)()
    except SystemExit as e:  # the factory's module or call ended the program: that is no model
        raise CLIError(f"{spec} called sys.exit({e.code!r}) instead of returning an nn.Module") from e
    if not isinstance(model, torch.nn.Module):
        raise CLIError(f"{spec} returned {type(model).__name__}, not an nn.Module")
    return model.eval()


def random_inputs(specs: Sequence[InputSpec]) -> tuple[torch.Tensor, ...]:
    """Random inputs: normal floats, or integers in [0, 2) (valid indices for any embedding)."""
    return random_like([torch.empty(s.shape, dtype=s.torch_dtype) for s in specs])


def random_like(tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Fresh random inputs with the shapes and dtypes of ``tensors``."""
    return tuple(
        torch.randn(t.shape).to(t.dtype) if t.dtype.is_floating_point else torch.randint(0, 2, t.shape, dtype=t.dtype)
        for t in tensors
    )


def check_inputs(model: torch.nn.Module, inputs: tuple, label: str) -> torch.Tensor:
    """Run ``model`` once on ``inputs``: a mismatch becomes a :class:`CLIError`."""
    try:
        with torch.no_grad():
            return model(*inputs)
    except Exception as e:  # shape, dtype or arity mismatch in user code
        shapes = ",".join(str(InputSpec(tuple(t.shape), str(t.dtype).replace("torch.", ""))) for t in inputs)
        raise CLIError(f"example inputs {shapes} do not fit {label}: {_first_line(e)}") from e


def build_quantizer(names: Sequence[str]) -> Quantizer:
    """The quantizers for ``names``, composed when there are several."""
    from pt2q.quantizer import ComposableQuantizer
    from pt2q.quantizers import (
        EmbeddingQuantizer,
        X86InductorQuantizer,
        XNNPACKQuantizer,
        get_default_x86_inductor_quantization_config,
        get_symmetric_quantization_config,
    )

    makers: dict[str, Callable[[], Quantizer]] = {
        "embedding": EmbeddingQuantizer,
        "xnnpack": lambda: XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
        "x86": lambda: X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config()),
    }
    quantizers = [makers[n]() for n in names]
    return quantizers[0] if len(quantizers) == 1 else ComposableQuantizer(quantizers)


def load_pte(path: Path, trust: bool = False) -> Program:
    """``pt2q.runtime.load``; unless ``trust``, after a trial load in a child process (a crash is an error)."""
    from pt2q.runtime import load

    if not path.is_file():
        raise CLIError(f"no such file: {path}")
    return load(path, isolate=not trust)


def print_table(title: str, rows: Rows, header: str = "value") -> None:
    """A two-column markdown table."""
    width = max([len(k) for k, _ in rows] + [8])
    print(f"\n{title}")
    print(f"| {'':<{width}} | {header}")
    print(f"|-{'-' * width}-|------")
    for key, value in rows:
        print(f"| {key:<{width}} | {value}")


def _human(n: int) -> str:
    return f"{n:,} B ({n / 1024:.1f} KiB)"


# ---------------------------------------------------------------- quantize


def quantize_model(model: torch.nn.Module, inputs: tuple, names: Sequence[str], batches: int) -> torch.fx.GraphModule:
    """Export, prepare with the quantizers, calibrate on random batches, convert."""
    from tqdm import tqdm

    import pt2q

    prepared = pt2q.prepare_pt2e(torch.export.export(model, inputs).module(), build_quantizer(names))
    with torch.no_grad():
        for _ in tqdm(range(batches), desc="calibrate", unit="batch"):
            prepared(*random_like(inputs))
    return pt2q.convert_pt2e(prepared)


def quantize_to_target(
    model: torch.nn.Module, inputs: tuple, args: argparse.Namespace
) -> tuple[pt2q_QuantizeResult, str]:
    """``pt2q.quantize`` with the quantizer's precision ladder, priced by latency measured on this machine
    (XNNPACK ``.pte`` or Inductor x86, per the quantizer), on random calibration and evaluation batches."""
    import pt2q
    from pt2q.lowering.latency_cost import PteLatencyCost, X86LatencyCost
    from pt2q.quantizers.ladders import precision_ladder

    quantizer = build_quantizer(args.quantizer)
    cost = X86LatencyCost() if "x86" in args.quantizer else PteLatencyCost()
    result = pt2q.quantize(
        model,
        inputs,
        quantizer,
        [random_like(inputs) for _ in range(args.calibrate)],
        eval_data=[random_like(inputs) for _ in range(2)],
        min_sqnr=args.min_sqnr,
        ladder=precision_ladder(quantizer),
        cost=cost,
        max_passes=args.max_rounds,
    )
    return result, cost.name


def cmd_quantize(args: argparse.Namespace) -> None:
    from pt2q.runtime import compare

    if args.target != "x86" and args.out is None:
        raise CLIError(f"--out is required for --target {args.target}")
    if args.target == "x86" and "x86" not in args.quantizer:
        raise CLIError("--target x86 needs --quantizer x86 (oneDNN int8 kernels take uint8 activations)")
    suffix = ".pte" if args.target == "pte" else ".pt2"
    if args.out is not None and args.out.suffix != suffix:
        raise CLIError(f"--target {args.target} writes a {suffix} file, got --out {args.out}")
    if args.calibrate < 1:
        raise CLIError("--calibrate must be at least 1")
    if args.min_sqnr is None and args.plot is not None:
        raise CLIError("--plot draws the trade-off of --min-sqnr: give a target")
    if args.max_rounds < 1:
        raise CLIError("--max-rounds must be at least 1")
    model = make_model(args.factory)
    inputs = random_inputs(args.example_inputs)
    check_inputs(model, inputs, args.factory)
    searched, cost_model = None, ""
    if args.min_sqnr is None:
        quantized = quantize_model(model, inputs, args.quantizer, args.calibrate)
    else:
        searched, cost_model = quantize_to_target(model, inputs, args)
        quantized = searched.model
    rows = [
        ("model", args.factory),
        ("quantizers", ",".join(args.quantizer)),
        ("example inputs", ", ".join(map(str, args.example_inputs))),
        ("calibration batches", args.calibrate),
    ]
    if searched is not None:
        rows += [
            ("target", f"output SQNR >= {args.min_sqnr:g} dB: {'met' if searched.target_met else 'NOT met'}"),
            ("rounds (prepare/calibrate/convert)", searched.rounds),
            ("moved off static int8", _rung_counts(searched.choice) or "none"),
        ]
    test = random_like(inputs)
    rows += [("SQNR Q/DQ vs fp32", f"{compare(quantized, model, *test).sqnr_db:.1f} dB")]
    rows += {"pt2": _save_pt2, "pte": _save_pte, "x86": _lower_x86}[args.target](
        model, quantized, inputs, test, args.out
    )
    print_table(f"pt2q quantize -> {args.target}", rows)
    if searched is not None:
        print(f"\naccuracy vs latency of the tries ({cost_model}):")
        print(searched.trade_off_table())
        if args.plot is not None:
            _make_folder(args.plot)
            searched.plot_trade_off(args.plot)
            print(f"trade-off chart: {args.plot}")
    if args.report:
        import pt2q

        print(f"\nper-layer report ({args.calibrate} random batches; SQNR in dB against fp32)")
        print(pt2q.report(quantized, model, [random_like(inputs) for _ in range(args.calibrate)]))


def _rung_counts(choice: dict[str, str]) -> str:
    counts = collections.Counter(choice.values())
    return ", ".join(f"{n} layer(s) on {rung}" for rung, n in counts.items())


def _make_folder(out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CLIError(f"cannot create the folder of --out {out}: {e.strerror or e}") from e


def _save_pt2(model: torch.nn.Module, quantized: torch.fx.GraphModule, inputs: tuple, test: tuple, out: Path) -> Rows:
    from pt2q.io.pt2_file import save_pt2

    program = torch.export.export(quantized, inputs)
    _make_folder(out)
    save_pt2(program, out)
    stats = pt2_stats(program)
    return [
        ("quantize / dequantize ops", f"{stats['quantize']} / {stats['dequantize']}"),
        ("output", out),
        ("file size", _human(out.stat().st_size)),
    ]


def _save_pte(model: torch.nn.Module, quantized: torch.fx.GraphModule, inputs: tuple, test: tuple, out: Path) -> Rows:
    from pt2q.lowering import to_executorch
    from pt2q.runtime import compare, load

    lowered = to_executorch(quantized, inputs)
    _make_folder(out)
    lowered.save(out)
    program = load(out)
    sqnr = compare(program, model, *test).sqnr_db
    del program
    return [("SQNR .pte vs fp32", f"{sqnr:.1f} dB"), ("output", out), ("file size", _human(lowered.size))]


def _lower_x86(
    model: torch.nn.Module, quantized: torch.fx.GraphModule, inputs: tuple, test: tuple, out: Path | None
) -> Rows:
    from pt2q.lowering import lower_pt2e_quantized_to_x86
    from pt2q.runtime import compare, time_program

    rows = _save_pt2(model, quantized, inputs, test, out) if out is not None else []
    lowered = lower_pt2e_quantized_to_x86(quantized, inputs)
    with torch.no_grad():
        fp32_ms = time_program(model, *test, runs=20, max_seconds=5).median_ms
        int8_ms = time_program(lowered, *test, runs=20, max_seconds=5).median_ms
    return rows + [
        ("SQNR x86 int8 vs fp32", f"{compare(lowered, model, *test).sqnr_db:.1f} dB"),
        ("latency fp32 eager", f"{fp32_ms:.3f} ms"),
        ("latency x86 int8", f"{int8_ms:.3f} ms"),
    ]


# ---------------------------------------------------------------- inspect


class Pt2Stats(TypedDict):
    ops: collections.Counter[str]  # op name -> calls
    quantize: int
    dequantize: int
    tensor_bytes: int
    int8_bytes: int


def pt2_stats(program: torch.export.ExportedProgram) -> Pt2Stats:
    """Op histogram, quantize/dequantize counts and tensor bytes (total and int8) of a program."""
    from pt2q.core.ops import ANY_DEQUANTIZE, ANY_QUANTIZE, is_op

    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    ops = collections.Counter(str(n.target).replace("aten.", "").replace(".default", "") for n in calls)
    quant = sum(is_op(n, ANY_QUANTIZE) for n in calls)
    dequant = sum(is_op(n, ANY_DEQUANTIZE) for n in calls)
    tensors = [
        t for t in list(program.state_dict.values()) + list(program.constants.values()) if isinstance(t, torch.Tensor)
    ]
    total = sum(t.numel() * t.element_size() for t in tensors)
    int8 = sum(t.numel() * t.element_size() for t in tensors if t.dtype in (torch.int8, torch.uint8))
    return {"ops": ops, "quantize": quant, "dequantize": dequant, "tensor_bytes": total, "int8_bytes": int8}


def cmd_inspect(args: argparse.Namespace) -> None:
    path: Path = args.file
    if path.suffix not in (".pt2", ".pte"):
        raise CLIError(f"cannot inspect {path}: expected a .pt2 or .pte file")
    if path.suffix == ".pte" and args.layers:
        raise CLIError("--layers reads a .pt2 program (a .pte keeps no per-node quantization records)")
    if not path.is_file():
        raise CLIError(f"no such file: {path}")
    if path.suffix == ".pt2":
        inspect_pt2(path, args.layers, args.trust)
    else:
        inspect_pte(path, args.trust)


def inspect_pt2(path: Path, layers: bool = False, trust: bool = False) -> None:
    from pt2q.io.pt2_file import load_pt2

    program = load_pt2(path, trust=trust)
    if layers:
        import pt2q

        print(pt2q.report(program, None))
        return
    stats = pt2_stats(program)
    share = stats["int8_bytes"] / stats["tensor_bytes"] if stats["tensor_bytes"] else 0.0
    print_table(
        f"{path} (torch.export program)",
        [
            ("file size", _human(path.stat().st_size)),
            ("tensor bytes", _human(stats["tensor_bytes"])),
            ("int8 share of tensor bytes", f"{share:.1%}"),
            ("quantize ops", stats["quantize"]),
            ("dequantize ops", stats["dequantize"]),
            ("inputs", len(program.graph_signature.user_inputs)),
            ("outputs", len(program.graph_signature.user_outputs)),
        ],
    )
    print_table("ops", [(op, count) for op, count in stats["ops"].most_common()], header="count")


def inspect_pte(path: Path, trust: bool = False) -> None:
    program = load_pte(path, trust)
    describe = lambda specs: ", ".join(f"{str(d).replace('torch.', '')}{list(s)}" for s, d in specs)  # noqa: E731
    print_table(
        f"{path} (ExecuTorch program)",
        [
            ("file size", _human(path.stat().st_size)),
            ("methods", ", ".join(program.method_names)),
            (f"{program.method} inputs", f"{len(program.input_specs)}: {describe(program.input_specs)}"),
            (f"{program.method} outputs", f"{len(program.output_specs)}: {describe(program.output_specs)}"),
        ],
    )


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
        _fail(str(e))
    except Exception as e:  # an unexpected failure: still one line unless asked for the traceback
        if os.environ.get("PT2Q_TRACEBACK"):
            raise
        _fail(f"{type(e).__name__}: {_first_line(e)} (PT2Q_TRACEBACK=1 for details)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
