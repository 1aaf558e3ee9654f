"""How one layer of a converted graph is quantized: the :class:`~pt2q.debug.report_table.TensorQuantization`
of each tensor quantized inside its subgraph (inputs, weights, bias, output), read off its Q/DQ nodes."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any, Optional, cast

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import constant_attr
from pt2q.core.notes import OBSERVER_KEY, NodeSourceDebugInfo, note, value_handle
from pt2q.core.ops import (
    CHOOSE_QPARAMS_OPS,
    DQ_OPS,
    DQ_PER_CHANNEL,
    Q_OPS,
    Q_PER_CHANNEL,
    is_affine_dequantize,
    is_affine_qdq,
    is_affine_quantize,
    is_op,
)
from pt2q.debug.report_table import TensorQuantization

__all__ = ["layer_quantization", "op_nodes", "result_value"]

_QUANT_MACHINERY = Q_OPS | DQ_OPS | CHOOSE_QPARAMS_OPS | {operator.getitem}


def _is_machinery(node: Node) -> bool:
    return node.target in _QUANT_MACHINERY or is_affine_qdq(node)


def _qparams(gm: GraphModule, node: Node) -> tuple[Optional[int], Any, Any, torch.dtype]:
    """(per-channel axis, scale, zero point, dtype) of a Q/DQ node."""
    if is_affine_qdq(node):  # (x, block_size, scale, zero_point, dtype, quant_min, quant_max)
        scale = node.args[2]
        if isinstance(scale, Node) and scale.op != "get_attr":
            return None, None, None, cast(torch.dtype, node.args[4])
        return None, constant_attr(gm, scale), constant_attr(gm, node.args[3]), cast(torch.dtype, node.args[4])
    dtype = cast(torch.dtype, node.args[-1])
    if is_op(node, Q_PER_CHANNEL | DQ_PER_CHANNEL):
        axis = cast(int, node.args[3])
        return axis, constant_attr(gm, node.args[1]), constant_attr(gm, node.args[2]), dtype
    scale, zp = node.args[1], node.args[2]
    if isinstance(scale, Node):  # dynamic: chosen at run time
        return None, None, None, dtype
    return None, float(cast(float, scale)), int(cast(int, zp)), dtype


def _tensor_quantization(gm: GraphModule, qdq: Node, role: str, source: Optional[str] = None) -> TensorQuantization:
    axis, scale, zp, dtype = _qparams(gm, qdq)
    dynamic = scale is None and axis is None
    observer = note(qdq, OBSERVER_KEY)
    if is_affine_qdq(qdq):
        block = tuple(cast(Sequence[int], qdq.args[1]))
        qrange = (cast(int, qdq.args[5]), cast(int, qdq.args[6]))
        return TensorQuantization(role, dtype, None, dynamic, scale, zp, observer, source, block, qrange)
    return TensorQuantization(role, dtype, axis, dynamic, scale, zp, observer, source)


def _weight_role(dq: Node) -> str:
    for user in dq.users:
        if len(user.args) > 2 and user.args[2] is dq:
            return "bias"
    return "weight"


def _value_name(node: Node, row_of: dict[NodeSourceDebugInfo, NodeSourceDebugInfo]) -> str:
    """The float value a Q/DQ chain carries: the row of the nearest node up the chain that holds one
    (its layer's), or the graph input's / constant's name."""
    while (handle := value_handle(node)) is None:
        if node.op != "call_function" or not node.args or not isinstance(node.args[0], Node):
            return node.name
        node = node.args[0]
    return row_of.get(handle, handle).name


def _dequantizes_constant(n: Node) -> bool:
    """A dequantize of a stored weight or bias (a ``get_attr``)."""
    source = n.args[0] if n.args else None
    dequantize = is_op(n, DQ_OPS) or is_affine_dequantize(n)
    return dequantize and isinstance(source, Node) and source.op == "get_attr"


def layer_quantization(
    gm: GraphModule, members: list[Node], row_of: dict[NodeSourceDebugInfo, NodeSourceDebugInfo]
) -> tuple[TensorQuantization, ...]:
    """The tensors quantized inside one layer's subgraph, in graph order (``row_of``: the row a merged
    layer is shown in)."""
    member_set = set(members)
    found: list[TensorQuantization] = []
    for n in members:
        if n.op != "call_function":
            continue
        if is_op(n, Q_OPS) or is_affine_quantize(n):
            src = n.args[0]
            produced_here = isinstance(src, Node) and src in member_set and not _is_machinery(src)
            found.append(_tensor_quantization(gm, n, "output" if produced_here else "input"))
        elif _dequantizes_constant(n):
            found.append(_tensor_quantization(gm, n, _weight_role(n)))
        elif not _is_machinery(n):
            for arg in n.all_input_nodes:  # an input quantized outside this layer (by its producer)
                if (is_op(arg, DQ_OPS) or is_affine_dequantize(arg)) and arg not in member_set:
                    found.append(_tensor_quantization(gm, arg, "input", _value_name(arg, row_of)))
    return tuple(found)


def op_nodes(members: list[Node]) -> list[Node]:
    """A layer's operators, without the quantize/dequantize/qparams nodes around them."""
    return [m for m in members if m.op == "call_function" and not _is_machinery(m)]


def result_value(members: list[Node]) -> Optional[NodeSourceDebugInfo]:
    """The float value a layer's result holds: its last operator's."""
    ops = op_nodes(members)
    return value_handle(ops[-1]) if ops else None
