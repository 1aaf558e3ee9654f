"""``pt2q inspect``: summarise a ``.pt2`` (ops, quantize/dequantize counts, int8 share, or the per-layer
report) or a ``.pte`` (methods and signatures)."""

from __future__ import annotations

import argparse
import collections
from pathlib import Path
from typing import TypedDict

import torch

from pt2q.cli.common import CLIError, human_bytes, load_pte, print_table

__all__ = ["Pt2Stats", "pt2_stats", "cmd_inspect", "inspect_pt2", "inspect_pte"]


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
            ("file size", human_bytes(path.stat().st_size)),
            ("tensor bytes", human_bytes(stats["tensor_bytes"])),
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
            ("file size", human_bytes(path.stat().st_size)),
            ("methods", ", ".join(program.method_names)),
            (f"{program.method} inputs", f"{len(program.input_specs)}: {describe(program.input_specs)}"),
            (f"{program.method} outputs", f"{len(program.output_specs)}: {describe(program.output_specs)}"),
        ],
    )
