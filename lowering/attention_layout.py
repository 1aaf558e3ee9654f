"""Copy attention outputs to a contiguous layout before they are viewed: what GPT-2 needs to reach a ``.pte``.

``torch.export`` records each tensor's strides as the eager kernel produced them, and drops
layout calls that were no-ops there. CPU ``scaled_dot_product_attention`` returns its
``(batch, heads, seq, dim)`` output laid out as ``(batch, seq, heads, dim)``, so Hugging Face's
``out.transpose(1, 2).contiguous()`` records no copy, and GPT-2's ``Conv1D`` then calls
``x.view(-1, hidden)`` on it. ExecuTorch's ``to_edge_transform_and_lower`` first turns every
``reshape`` into a ``view`` (with the eager layout) and later decomposes the attention the
XNNPACK delegate does not take into matmuls, whose output has the plain layout: the views
no longer fit and lowering fails with ``Cannot view a tensor with shape ... and strides ...``.

:func:`copy_attention_outputs` puts the copy back: before the first view/reshape that reads a
transposed or permuted attention output, a ``clone(memory_format=torch.contiguous_format)``
(XNNPACK runs it; ExecuTorch would copy there anyway once the attention is decomposed).
"""

from __future__ import annotations

import operator
from typing import Optional

import torch
from torch.export import ExportedProgram
from torch.fx import Node

__all__ = ["copy_attention_outputs"]

aten = torch.ops.aten
# kernels whose output layout export records from eager and ExecuTorch's decomposition changes
_KERNEL_LAYOUT = {aten.scaled_dot_product_attention.default, aten._scaled_dot_product_flash_attention_for_cpu.default}
_RESHAPES = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_PERMUTES = {aten.transpose.int, aten.permute.default}
_PASS_THROUGH = _RESHAPES | _PERMUTES | {aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, operator.getitem}


def _attention_source(node: Node) -> Optional[Node]:
    """The attention op ``node`` (a reshape's input) is a permuted view of, if any."""
    permuted = False
    while node.op == "call_function" and node.target not in _KERNEL_LAYOUT:
        if node.target not in _PASS_THROUGH:
            return None
        permuted |= node.target in _PERMUTES
        source = node.args[0]
        if not isinstance(source, Node):
            return None
        node = source
    return node if permuted and node.op == "call_function" else None


def copy_attention_outputs(program: ExportedProgram) -> int:
    """Insert a contiguous copy before each reshape of a permuted attention output (in place); how many."""
    gm = program.graph_module
    inserted = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _RESHAPES or not isinstance(node.args[0], Node):
            continue
        source = node.args[0]
        if _attention_source(source) is None:
            continue
        with gm.graph.inserting_before(node):
            copy = gm.graph.call_function(aten.clone.default, (source,), {"memory_format": torch.contiguous_format})
        val = source.meta.get("val")
        if isinstance(val, torch.Tensor):
            with val.fake_mode:  # type: ignore[attr-defined]
                copy.meta["val"] = val.clone(memory_format=torch.contiguous_format)
        copy.meta.update({k: v for k, v in source.meta.items() if k not in ("val", "quantization_annotation")})
        node.replace_input_with(source, copy)
        inserted += 1
    if inserted:
        gm.recompile()
    return inserted
