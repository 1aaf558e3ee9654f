"""What ExecuTorch 1.5.1 can run of torchao's affine Q/DQ ops, checked before and after partitioning.

ExecuTorch has no portable kernels for ``torchao::choose_qparams_affine / quantize_affine /
dequantize_affine``: only the XNNPACK delegate runs them, as dynamically quantized linears.
And XNNPACK accepts some affine weights it then gets wrong: it ignores weight zero points
(asymmetric weights compute garbage, silently) and packs only 4-bit groups (other
groupwise widths fail deep inside serialization). These checks turn both into errors
that name the nodes and say what would work.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.export import ExportedProgram
from torch.fx import Node

from pt2q.core.ops import is_affine_dequantize, op_name
from pt2q.lowering.delegation_report import program_tensor, source_name

__all__ = ["unsupported_affine_weights", "affine_ops_outside_delegate"]


def _constant(program: ExportedProgram, node: object) -> Optional[torch.Tensor]:
    return program_tensor(program, node) if isinstance(node, Node) and node.op == "placeholder" else None


def _weight_problem(program: ExportedProgram, dq: Node) -> Optional[str]:
    weight = _constant(program, dq.args[0])
    if weight is None:
        return None  # an activation: qparams chosen at run time, which XNNPACK runs per token
    block, zero_point, dtype = dq.args[1], _constant(program, dq.args[3]), dq.args[4]
    qmin, qmax = dq.args[5], dq.args[6]
    if dtype != torch.int8:
        return f"weight stored as {dtype}; XNNPACK takes affine weights stored as torch.int8"
    if zero_point is not None and bool((zero_point != 0).any()):
        return "asymmetric weight (nonzero zero points), which XNNPACK ignores: use MappingType.SYMMETRIC"
    assert isinstance(block, (list, tuple)), (
        f"{dq.name}: block_size {block!r} is not a list (dequantize_affine's schema)"
    )
    groupwise = weight.dim() == 2 and block[0] == 1 and block[1] != weight.shape[1]
    if groupwise and (qmin, qmax) != (-8, 7):
        return (
            f"groupwise weight with range [{qmin}, {qmax}]; XNNPACK packs only 4-bit groups ([-8, 7]): "
            "use 4 bits, or per-channel weights (group_size=None) for other widths"
        )
    return None


def unsupported_affine_weights(program: ExportedProgram) -> list[str]:
    """Affine-quantized weights XNNPACK would take but compute wrong or fail to serialize, one line each."""
    found = []
    for node in program.graph.nodes:
        if is_affine_dequantize(node):
            problem = _weight_problem(program, node)
            if problem is not None:
                found.append(f"'{source_name(node)}': {problem}")
    return found


def affine_ops_outside_delegate(edge_program: ExportedProgram) -> list[str]:
    """torchao affine ops the partitioner left in the top-level program (ExecuTorch has no kernels
    for them), one line per source node."""
    left: dict[str, list[str]] = {}
    for node in edge_program.graph.nodes:
        name = op_name(node.target) if node.op == "call_function" else None
        if name is not None and name.startswith("torchao."):
            ops = left.setdefault(source_name(node), [])
            if name not in ops:
                ops.append(name)
    return [f"'{source}': {', '.join(ops)}" for source, ops in left.items()]
