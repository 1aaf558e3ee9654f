"""Reference quantized representation: quantized operators as integer arithmetic in plain ATen ops.

``convert_pt2e`` leaves each quantized operator as ``dq -> float op -> q``. This pass
rewrites those neighbourhoods into what an integer kernel computes, the form a backend
author pattern-matches to write a lowering:

* int8 operands are widened to int16 and offset by their zero points;
* products are accumulated in int32 (``out_dtype(op, torch.int32, ...)``), plus an
  int32 bias quantized with the accumulator's scale ``x_scale * w_scale``;
* requantization to the output grid multiplies by the combined scale held as a
  fixed-point number ``m / 2**shift`` (int64 multiply, add ``2**(shift-1)``,
  arithmetic right shift), adds the output zero point, clamps (a fused relu raises
  the lower bound to the zero point) and casts to int8;
* except ``relu(x + y)``, written as torchao writes it so that a lowering keyed on torchao's
  form finds it, with the same numbers: each centred operand times its float32 scale ratio,
  ``out_dtype(mul, int32, ...)`` (which truncates towards zero), summed, offset by the output
  zero point, clamped from it.

The quantize/dequantize ops left over become their elementwise reference forms, which
reproduce the ``quantized_decomposed`` kernels bit for bit. Operators without a row in
``REWRITES`` keep ``dq -> float op -> q``. Replacement nodes are built directly with
``graph.call_function``; no example program is traced, and everything is plain ATen
(plus torch's ``out_dtype`` higher-order op), so the result exports, saves and loads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, TypeVar, Union

import torch
from torch._higher_order_ops.out_dtype import out_dtype
from torch.fx import GraphModule, Node

from pt2q.core.attrs import get_attr_value, set_new_attr
from pt2q.core.dead_code import erase_with_dead_inputs
from pt2q.core.ops import (
    DQ_OPS,
    DQ_PER_CHANNEL,
    DQ_PER_TENSOR,
    DQ_PER_TENSOR_DYNAMIC,
    LINEAR,
    MAX_POOL2D,
    Q_OPS,
    Q_PER_CHANNEL,
    Q_PER_TENSOR,
    RELU,
    is_op,
    node_arg,
    ops,
    optional_node_arg,
)
from pt2q.core.pattern import Step, arg_producers, find_chains

__all__ = ["reference_representation_rewrite", "REWRITES", "Rewrite"]

aten = torch.ops.aten

_DQ_WEIGHT = DQ_PER_TENSOR | DQ_PER_CHANNEL
_8BIT = (torch.int8, torch.uint8)
_INT32 = torch.iinfo(torch.int32)
_PORTED_META = ("nn_module_stack", "stack_trace")

Constant = Union[int, float, torch.Tensor]  # a tensor becomes a buffer of the module
_T = TypeVar("_T")


@dataclass(frozen=True)
class Rewrite:
    """One row of the table: a float pattern, how its qparams carry over, its integer replacement.

    The pattern is a chain of ops linked through their first input (the float op, maybe a
    fused relu, then the output quantize) whose first op reads dequantize ops at the
    argument positions of ``inputs``. ``carry`` turns the matched qparams into the
    constants of the integer form, or None when the match does not fit it; ``replace``
    builds that form and returns the node standing for the chain's last node.
    """

    name: str
    chain: tuple[Step, ...]
    inputs: Mapping[int, Step]
    carry: Callable[[GraphModule, tuple[Node, ...], tuple[Node, ...]], Any]
    replace: Callable[[GraphModule, Any], Node]


# ---------------------------------------------------------------------------------------
# What carries across: qparams read from the Q/DQ graph, constants of the integer form.


@dataclass(frozen=True)
class _Affine:
    """Static qparams of a quantize/dequantize node; scale and zero point as 1-D tensors."""

    source: Node
    scale: torch.Tensor  # float64
    zero_point: torch.Tensor  # int64
    qmin: int
    qmax: int
    dtype: torch.dtype
    axis: Optional[int]  # None when per tensor


@dataclass(frozen=True)
class _Requant:
    """``clamp((sum_i t_i * m_i + 2**(shift-1) >> shift) + zero_point, qmin, qmax).to(dtype)`` in int64.

    ``m_i / 2**shift`` is the ratio of operand ``i``'s scale to the output scale; a fused
    relu raises ``qmin`` to the zero point.
    """

    multipliers: tuple[Constant, ...]
    shift: int
    zero_point: int
    qmin: int
    qmax: int
    dtype: torch.dtype


@dataclass(frozen=True)
class _Weighted:
    """A static linear or conv: int8 activation and weight, int32 bias, requantization."""

    op: torch._ops.OpOverload
    x: Node
    x_zero_point: int
    weight: Node
    weight_zero_point: Constant
    bias: Optional[torch.Tensor]  # int32, shaped to broadcast over the output
    op_args: tuple[Any, ...]  # the op's arguments after (input, weight, bias)
    out: _Requant


@dataclass(frozen=True)
class _DynamicLinear:
    """A linear whose activation is quantized at run time; its output stays float."""

    x: Node
    x_scale: Node
    x_zero_point: Node
    weight: Node
    weight_zero_point: Constant
    weight_scale: Constant
    bias: Optional[Node]


@dataclass(frozen=True)
class _Rescaled:
    """An op on int8 operands (add, max_pool2d) whose result is brought to the output grid."""

    operands: tuple[tuple[Node, int], ...]  # (int8 node, zero point)
    op_args: tuple[Any, ...]
    out: _Requant


@dataclass(frozen=True)
class _TruncatedSum:
    """``clamp(sum_i out_dtype(mul, int32, x_i - zp_i, ratio_i) + zero_point, zero_point, qmax)``: relu of an add.

    ``ratio_i`` is operand ``i``'s scale over the output scale, divided in float32 (a Python
    float holding a float32 value); out_dtype multiplies in float32 and truncates to int32.
    """

    operands: tuple[tuple[Node, int, float], ...]  # (8-bit node, zero point, scale ratio)
    zero_point: int
    qmax: int
    dtype: torch.dtype


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


def _literal(node: Node, index: int, kind: type[_T]) -> _T:
    """``node.args[index]``, which the op's schema makes a literal of ``kind`` (FX types arguments loosely)."""
    arg = node.args[index]
    if not isinstance(arg, kind):
        raise TypeError(f"argument {index} of node '{node.name}' is {arg!r}, not a {kind.__name__}")
    return arg


def _number(node: Node, index: int) -> float:
    """``node.args[index]``, a literal int or float (a per-tensor scale)."""
    arg = node.args[index]
    if not isinstance(arg, (int, float)):
        raise TypeError(f"argument {index} of node '{node.name}' is {arg!r}, not a number")
    return float(arg)


def _qdq_literals(node: Node) -> tuple[Optional[int], int, int, torch.dtype]:
    """(axis, or None per tensor; qmin; qmax; dtype) of a quantize/dequantize node."""
    if is_op(node, Q_PER_CHANNEL | DQ_PER_CHANNEL):
        return _literal(node, 3, int), _literal(node, 4, int), _literal(node, 5, int), _literal(node, 6, torch.dtype)
    return None, _literal(node, 3, int), _literal(node, 4, int), _literal(node, 5, torch.dtype)


def _static_affine(gm: GraphModule, node: Node) -> Optional[_Affine]:
    source = node_arg(node, 0)
    axis, qmin, qmax, dtype = _qdq_literals(node)
    if is_op(node, Q_PER_TENSOR | DQ_PER_TENSOR):
        scale = torch.tensor([_number(node, 1)], dtype=torch.float64)
        return _Affine(source, scale, torch.tensor([_literal(node, 2, int)]), qmin, qmax, dtype, None)
    scale_node, zero_point_node = node.args[1], node.args[2]
    if not (isinstance(scale_node, Node) and scale_node.op == "get_attr"):
        return None
    if not (isinstance(zero_point_node, Node) and zero_point_node.op == "get_attr"):
        return None
    scales = get_attr_value(gm, str(scale_node.target)).double()
    zero_points = get_attr_value(gm, str(zero_point_node.target)).long()
    return _Affine(source, scales, zero_points, qmin, qmax, dtype, axis)


def _collapse(t: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> Constant:
    """A python scalar if all entries of ``t`` are equal, else ``t`` reshaped to broadcast."""
    first = t.flatten()[0]
    if bool((t == first).all()):
        return first.item()
    return t.to(dtype).reshape(shape)


def _fixed_point(
    multipliers: Sequence[torch.Tensor], out: _Affine, relu: bool, shape: Sequence[int]
) -> Optional[_Requant]:
    """Express each multiplier as ``m / 2**shift`` with one shift; the largest ``m`` lies in [2**30, 2**31]."""
    shift = min(31 - math.frexp(max(float(m.max()) for m in multipliers))[1], 62)
    if shift < 1:  # a multiplier of 2**30 or more: no sensible quantization gives one
        return None
    fixed = tuple(_collapse(torch.round(m * 2.0**shift).long(), shape, torch.int64) for m in multipliers)
    zero_point = int(out.zero_point)
    return _Requant(fixed, shift, zero_point, max(out.qmin, zero_point) if relu else out.qmin, out.qmax, out.dtype)


def _carry_weighted(
    gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...], spatial_dims: int
) -> Optional[_Weighted]:
    op, q = chain[0], chain[-1]
    x, w, out = _static_affine(gm, dqs[0]), _static_affine(gm, dqs[1]), _static_affine(gm, q)
    bias = op.args[2] if len(op.args) > 2 else None
    target = op.target
    if (
        not isinstance(target, torch._ops.OpOverload)
        or x is None
        or w is None
        or out is None
        or op.kwargs
        or any(a.dtype not in _8BIT for a in (x, w, out))
        or w.axis not in (None, 0)
        or not (bias is None or (isinstance(bias, Node) and bias.op == "get_attr"))
    ):
        return None
    out_shape = (-1,) + (1,) * spatial_dims  # output channels: last dim of linear, dim 1 of NC(H, W)
    acc_scale = x.scale * w.scale
    bias_i32 = None
    if bias is not None:
        value = torch.round(get_attr_value(gm, str(bias.target)).double() / acc_scale)
        bias_i32 = value.clamp(_INT32.min, _INT32.max).to(torch.int32).reshape(out_shape)
    requant = _fixed_point([acc_scale / out.scale], out, relu=len(chain) == 3, shape=out_shape)
    if requant is None:
        return None
    weight_shape = (-1,) + (1,) * (spatial_dims + 1)
    return _Weighted(
        target,
        x.source,
        int(x.zero_point),
        w.source,
        _collapse(w.zero_point, weight_shape, torch.int16),
        bias_i32,
        tuple(op.args[3:]),
        requant,
    )


def _carry_dynamic_linear(gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...]) -> Optional[_DynamicLinear]:
    op, x = chain[0], dqs[0]
    w = _static_affine(gm, dqs[1])
    if w is None or op.kwargs or w.dtype not in _8BIT or x.args[5] not in _8BIT or w.axis not in (None, 0):
        return None
    return _DynamicLinear(
        node_arg(x, 0),
        node_arg(x, 1),
        node_arg(x, 2),
        w.source,
        _collapse(w.zero_point, (-1, 1), torch.int16),
        _collapse(w.scale, (-1,), torch.float32),
        optional_node_arg(op, 2),
    )


def _carry_rescaled(gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...]) -> Optional[_Rescaled]:
    op, q = chain[0], chain[-1]
    found, out = [_static_affine(gm, dq) for dq in dqs], _static_affine(gm, q)
    ins = [a for a in found if a is not None]
    if op.kwargs or out is None or len(ins) < len(found) or any(a.dtype not in _8BIT for a in (*ins, out)):
        return None
    requant = _fixed_point([a.scale / out.scale for a in ins], out, relu=len(chain) == 3, shape=(-1,))
    if requant is None:
        return None
    return _Rescaled(tuple((a.source, int(a.zero_point)) for a in ins), tuple(op.args[len(dqs) :]), requant)


def _carry_add_relu(gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...]) -> Optional[_TruncatedSum]:
    op, q = chain[0], chain[-1]
    found, out = [_static_affine(gm, dq) for dq in dqs], _static_affine(gm, q)
    ins = [a for a in found if a is not None]
    if op.kwargs or out is None or len(ins) < len(found) or any(a.dtype not in _8BIT for a in (*ins, out)):
        return None
    out_scale = out.scale.float()
    operands = tuple((a.source, int(a.zero_point), float(a.scale.float() / out_scale)) for a in ins)
    zero_point = int(out.zero_point)
    return _TruncatedSum(operands, zero_point, out.qmax, out.dtype)


def _rank(gm: GraphModule, node: Node) -> int:
    if node.op == "get_attr":
        return get_attr_value(gm, str(node.target)).dim()
    return node.meta["val"].dim()


def _carry_qdq(gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...]) -> _QDQ:
    node = chain[0]
    x = node_arg(node, 0)
    axis, qmin, qmax, dtype = _qdq_literals(node)
    scale = node.args[1] if isinstance(node.args[1], Node) else _number(node, 1)
    zero_point = node.args[2]
    if not (zero_point is None or isinstance(zero_point, (Node, int))):
        raise TypeError(f"argument 2 of node '{node.name}' is {zero_point!r}, not a zero point")
    out_dtype = node.kwargs.get("out_dtype")
    if not isinstance(out_dtype, torch.dtype):
        out_dtype = torch.float32
    rank = 0 if axis is None else _rank(gm, x)
    return _QDQ(x, scale, zero_point, axis, rank, qmin, qmax, dtype, out_dtype)


# ---------------------------------------------------------------------------------------
# Replacements: integer forms built node by node before the matched chain's last node.


def _call(gm: GraphModule, op: Callable, *args: Any) -> Node:
    return gm.graph.call_function(op, args)


def _const(gm: GraphModule, value: Constant, name: str) -> Union[Node, int, float]:
    """A literal for a scalar; a new buffer (read by get_attr) for a tensor."""
    if isinstance(value, torch.Tensor):
        return gm.graph.get_attr(set_new_attr(gm, name, value))
    return value


def _widen(gm: GraphModule, x: Node, zero_point: Any) -> Node:
    """``x.to(int16) - zero_point``: an 8-bit operand centred on its zero point, exact in int16."""
    return _call(gm, aten.sub.Tensor, _call(gm, aten.to.dtype, x, torch.int16), zero_point)


def _requantize(gm: GraphModule, terms: Sequence[Node], rq: _Requant) -> Node:
    """Bring integer ``terms`` to the output grid: fixed-point multiply-add, rounding shift, offset, clamp, cast."""
    total: Optional[Node] = None
    for term, multiplier in zip(terms, rq.multipliers):
        wide = _call(gm, aten.to.dtype, term, torch.int64)
        product = _call(gm, aten.mul.Tensor, wide, _const(gm, multiplier, "_requant_multiplier"))
        total = product if total is None else _call(gm, aten.add.Tensor, total, product)
    rounded = _call(gm, aten.add.Tensor, total, 1 << (rq.shift - 1))
    shifted = _call(gm, aten.bitwise_right_shift.Tensor_Scalar, rounded, rq.shift)
    offset = _call(gm, aten.add.Tensor, shifted, rq.zero_point)
    return _call(gm, aten.to.dtype, _call(gm, aten.clamp.default, offset, rq.qmin, rq.qmax), rq.dtype)


def _integer_weighted(gm: GraphModule, c: _Weighted) -> Node:
    x = _widen(gm, c.x, c.x_zero_point)
    w = _widen(gm, c.weight, _const(gm, c.weight_zero_point, "_weight_zero_point"))
    acc = _call(gm, out_dtype, c.op, torch.int32, x, w, None, *c.op_args)
    if c.bias is not None:
        acc = _call(gm, aten.add.Tensor, acc, _const(gm, c.bias, "_bias_int32"))
    return _requantize(gm, [acc], c.out)


def _integer_dynamic_linear(gm: GraphModule, c: _DynamicLinear) -> Node:
    x_zero_point = _call(gm, aten.to.dtype, c.x_zero_point, torch.int16)
    x = _widen(gm, c.x, x_zero_point)
    w = _widen(gm, c.weight, _const(gm, c.weight_zero_point, "_weight_zero_point"))
    acc = _call(gm, out_dtype, aten.linear.default, torch.int32, x, w, None)
    x_scale = _call(gm, aten.to.dtype, c.x_scale, torch.float32)
    scale = _call(gm, aten.mul.Tensor, x_scale, _const(gm, c.weight_scale, "_weight_scale"))
    out = _call(gm, aten.mul.Tensor, _call(gm, aten.to.dtype, acc, torch.float32), scale)
    return out if c.bias is None else _call(gm, aten.add.Tensor, out, c.bias)


def _integer_add(gm: GraphModule, c: _Rescaled) -> Node:
    return _requantize(gm, [_widen(gm, x, zp) for x, zp in c.operands], c.out)


def _integer_add_relu(gm: GraphModule, c: _TruncatedSum) -> Node:
    total: Optional[Node] = None
    for x, zero_point, ratio in c.operands:
        term = _call(gm, out_dtype, aten.mul.Tensor, torch.int32, _widen(gm, x, zero_point), ratio)
        total = term if total is None else _call(gm, aten.add.Tensor, total, term)
    offset = _call(gm, aten.add.Tensor, total, c.zero_point)
    return _call(gm, aten.to.dtype, _call(gm, aten.clamp.default, offset, c.zero_point, c.qmax), c.dtype)


def _integer_max_pool2d(gm: GraphModule, c: _Rescaled) -> Node:
    ((x, zero_point),) = c.operands
    pooled = _call(gm, aten.max_pool2d.default, _widen(gm, x, zero_point), *c.op_args)
    return _requantize(gm, [pooled], c.out)


def _channel_view(gm: GraphModule, values: Node, axis: int, rank: int) -> Node:
    """Per-channel qparams viewed to broadcast along ``axis`` of a rank-``rank`` tensor."""
    return _call(gm, aten.view.default, values, [-1] + [1] * (rank - 1 - axis))


def _qparams_operands(gm: GraphModule, c: _QDQ) -> tuple[Any, Any]:
    """(scale, zero point) ready to broadcast: literals, float32 run-time scalars, or channel views."""
    if c.axis is not None:  # per channel: scale and zero point are tensors, read by graph nodes
        assert isinstance(c.scale, Node) and not isinstance(c.zero_point, int)
        zero_point = None if c.zero_point is None else _channel_view(gm, c.zero_point, c.axis, c.rank)
        return _channel_view(gm, c.scale, c.axis, c.rank), zero_point
    if isinstance(c.scale, Node):  # run-time qparams; the kernels read the scale as a float32 scalar
        return _call(gm, aten.to.dtype, c.scale, torch.float32), c.zero_point
    return c.scale, c.zero_point


def _reference_quantize(gm: GraphModule, c: _QDQ) -> Node:
    """``clamp(round(x * (1 / scale)) + zero_point, qmin, qmax).to(dtype)``, as the kernels compute it."""
    x = c.x
    if x.meta.get("val") is not None and x.meta["val"].dtype != torch.float32:  # the kernels quantize float32
        x = _call(gm, aten.to.dtype, x, torch.float32)
    zero_point: Any = c.zero_point
    if c.axis is not None:
        scale, zero_point = _qparams_operands(gm, c)
        inv_scale: Any = _call(gm, aten.reciprocal.default, scale)
    elif isinstance(c.scale, Node):  # 1 / scale in float64, then read as a float32 scalar
        inv_scale = _call(gm, aten.to.dtype, _call(gm, aten.reciprocal.default, c.scale), torch.float32)
    else:
        inv_scale = 1.0 / c.scale
    rounded = _call(gm, aten.round.default, _call(gm, aten.mul.Tensor, x, inv_scale))
    shifted = _call(gm, aten.add.Tensor, rounded, zero_point)
    return _call(gm, aten.to.dtype, _call(gm, aten.clamp.default, shifted, c.qmin, c.qmax), c.dtype)


def _reference_dequantize(gm: GraphModule, c: _QDQ) -> Node:
    """``(x.to(int32) - zero_point).to(float) * scale``."""
    scale, zero_point = _qparams_operands(gm, c)
    centred = _call(gm, aten.to.dtype, c.x, torch.int32)
    if zero_point is not None:
        centred = _call(gm, aten.sub.Tensor, centred, zero_point)
    return _call(gm, aten.mul.Tensor, _call(gm, aten.to.dtype, centred, c.out_dtype), scale)


# ---------------------------------------------------------------------------------------
# The table, applied top to bottom: quantized operators first, then the leftover Q/DQ ops.

_CONV2D = ops(aten.conv2d.default)  # conv2d.padding (string padding) has no out_dtype form
_ADD = ops(aten.add.Tensor)  # the functional add a converted graph holds
_STATIC = {0: DQ_PER_TENSOR, 1: _DQ_WEIGHT}

REWRITES: tuple[Rewrite, ...] = (
    Rewrite("linear", (LINEAR, Q_PER_TENSOR), _STATIC, partial(_carry_weighted, spatial_dims=0), _integer_weighted),
    Rewrite(
        "linear_relu",
        (LINEAR, RELU, Q_PER_TENSOR),
        _STATIC,
        partial(_carry_weighted, spatial_dims=0),
        _integer_weighted,
    ),
    Rewrite(
        "dynamic_linear",
        (LINEAR,),
        {0: DQ_PER_TENSOR_DYNAMIC, 1: _DQ_WEIGHT},
        _carry_dynamic_linear,
        _integer_dynamic_linear,
    ),
    Rewrite("conv2d", (_CONV2D, Q_PER_TENSOR), _STATIC, partial(_carry_weighted, spatial_dims=2), _integer_weighted),
    Rewrite(
        "conv2d_relu",
        (_CONV2D, RELU, Q_PER_TENSOR),
        _STATIC,
        partial(_carry_weighted, spatial_dims=2),
        _integer_weighted,
    ),
    Rewrite("add", (_ADD, Q_PER_TENSOR), {0: DQ_PER_TENSOR, 1: DQ_PER_TENSOR}, _carry_rescaled, _integer_add),
    Rewrite(
        "add_relu",
        (_ADD, RELU, Q_PER_TENSOR),
        {0: DQ_PER_TENSOR, 1: DQ_PER_TENSOR},
        _carry_add_relu,
        _integer_add_relu,
    ),
    Rewrite("max_pool2d", (MAX_POOL2D, Q_PER_TENSOR), {0: DQ_PER_TENSOR}, _carry_rescaled, _integer_max_pool2d),
    Rewrite(
        "quantize",
        (Q_OPS,),
        {},
        _carry_qdq,
        _reference_quantize,
    ),
    Rewrite(
        "dequantize",
        (DQ_OPS,),
        {},
        _carry_qdq,
        _reference_dequantize,
    ),
)


def _replace(gm: GraphModule, chain: tuple[Node, ...], build: Callable[[], Node]) -> None:
    """Build the replacement before the chain's last node, hand it the chain's users, erase the chain.

    The new nodes get the provenance of the chain's first node; the result also takes the
    last node's name and value meta (it computes the same tensor), so graphs before and
    after the rewrite can be compared node by node.
    """
    last = chain[-1]
    start = last.prev
    with gm.graph.inserting_before(last):
        result = build()
    node = start.next
    while node is not last:  # the new nodes sit between ``start`` and ``last``
        node.meta.update({k: chain[0].meta[k] for k in _PORTED_META if k in chain[0].meta})
        node = node.next
    if "val" in last.meta:
        result.meta["val"] = last.meta["val"]
    last.replace_all_uses_with(result)
    name = last.name
    erase_with_dead_inputs(gm, [last])
    result.name = name  # erased names stay reserved in the graph's namespace: no other node can take it


def reference_representation_rewrite(gm: GraphModule, rewrites: Sequence[Rewrite] = REWRITES) -> GraphModule:
    """Rewrite every row of ``rewrites`` that matches into its integer reference form (in place)."""
    for rewrite in rewrites:
        for chain in list(find_chains(gm, rewrite.chain)):
            dqs = arg_producers(chain[0], rewrite.inputs)
            carried = None if dqs is None else rewrite.carry(gm, chain, dqs)
            if carried is not None:
                _replace(gm, chain, partial(rewrite.replace, gm, carried))
    gm.graph.lint()
    gm.recompile()
    return gm
