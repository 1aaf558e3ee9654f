"""Reference forms of the leftover ``quantized_decomposed`` quantize / dequantize ops, bit for bit.

Per tensor (literal or run-time qparams) and per channel; the arithmetic itself is
:func:`pt2q.passes.reference_graph.quantize_form` / :func:`~pt2q.passes.reference_graph.dequantize_form`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import get_attr_value
from pt2q.core.ops import node_arg
from pt2q.passes.reference_graph import call_op, dequantize_form, quantize_form
from pt2q.passes.reference_qparams import number_arg, qdq_literals

__all__ = ["carry_qdq", "reference_quantize", "reference_dequantize"]

aten = torch.ops.aten


@dataclass(frozen=True)
class _QDQ:
    """A quantize/dequantize op: its input and qparams (literals, or nodes for run-time qparams)."""

    x: Node
    scale: Union[float, Node]
    zero_point: Union[int, Node, None]
    axis: Optional[int]
    rank: int  # of x; only needed per channel
    qmin: int
    qmax: int
    dtype: torch.dtype
    out_dtype: torch.dtype  # of a dequantize


def _rank(gm: GraphModule, node: Node) -> int:
    if node.op == "get_attr":
        return get_attr_value(gm, str(node.target)).dim()
    return node.meta["val"].dim()


def carry_qdq(gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...]) -> _QDQ:
    """The input and qparams of a quantize/dequantize node (never refuses one)."""
    node = chain[0]
    x = node_arg(node, 0)
    axis, qmin, qmax, dtype = qdq_literals(node)
    scale = node.args[1] if isinstance(node.args[1], Node) else number_arg(node, 1)
    zero_point = node.args[2]
    if not (zero_point is None or isinstance(zero_point, (Node, int))):
        raise TypeError(f"argument 2 of node '{node.name}' is {zero_point!r}, not a zero point")
    out_dtype = node.kwargs.get("out_dtype")
    if not isinstance(out_dtype, torch.dtype):
        out_dtype = torch.float32
    rank = 0 if axis is None else _rank(gm, x)
    return _QDQ(x, scale, zero_point, axis, rank, qmin, qmax, dtype, out_dtype)


def _channel_view(gm: GraphModule, values: Node, axis: int, rank: int) -> Node:
    """Per-channel qparams viewed to broadcast along ``axis`` of a rank-``rank`` tensor."""
    return call_op(gm, aten.view.default, values, [-1] + [1] * (rank - 1 - axis))


def _qparams_operands(gm: GraphModule, c: _QDQ) -> tuple[Any, Any]:
    """(scale, zero point) ready to broadcast: literals, float32 run-time scalars, or channel views."""
    if c.axis is not None:  # per channel: scale and zero point are tensors, read by graph nodes
        assert isinstance(c.scale, Node) and not isinstance(c.zero_point, int)
        zero_point = None if c.zero_point is None else _channel_view(gm, c.zero_point, c.axis, c.rank)
        return _channel_view(gm, c.scale, c.axis, c.rank), zero_point
    if isinstance(c.scale, Node):  # run-time qparams; the kernels read the scale as a float32 scalar
        return call_op(gm, aten.to.dtype, c.scale, torch.float32), c.zero_point
    return c.scale, c.zero_point


def reference_quantize(gm: GraphModule, c: _QDQ) -> Node:
    """``clamp(round(x * (1 / scale)) + zero_point, qmin, qmax).to(dtype)``, as the kernels compute it."""
    x = c.x
    if x.meta.get("val") is not None and x.meta["val"].dtype != torch.float32:  # the kernels quantize float32
        x = call_op(gm, aten.to.dtype, x, torch.float32)
    zero_point: Any = c.zero_point
    if c.axis is not None:
        scale, zero_point = _qparams_operands(gm, c)
        inv_scale: Any = call_op(gm, aten.reciprocal.default, scale)
    elif isinstance(c.scale, Node):  # 1 / scale in float64, then read as a float32 scalar
        inv_scale = call_op(gm, aten.to.dtype, call_op(gm, aten.reciprocal.default, c.scale), torch.float32)
    else:
        inv_scale = 1.0 / c.scale
    return quantize_form(gm, x, inv_scale, zero_point, c.qmin, c.qmax, c.dtype)


def reference_dequantize(gm: GraphModule, c: _QDQ) -> Node:
    """``(x.to(int32) - zero_point).to(float) * scale``."""
    scale, zero_point = _qparams_operands(gm, c)
    return dequantize_form(gm, c.x, scale, zero_point, torch.int32, c.out_dtype)
