"""Integer forms of quantized operators: what an int8 kernel computes, built from plain ATen ops.

Each operator has a ``carry_*`` (the matched ``dq -> op (-> relu) -> q`` chain's qparams as the
constants of the integer form, or None when they do not fit it) and an ``integer_*`` (the form):

* int8 operands are widened to int16 and offset by their zero points;
* products are accumulated in int32 (``out_dtype(op, torch.int32, ...)``), plus an int32 bias
  quantized with the accumulator's scale ``x_scale * w_scale``;
* requantization multiplies by the fixed-point scale ratio ``m / 2**shift`` (int64), adds
  ``2**(shift-1)``, shifts right, adds the output zero point, clamps and casts to int8;
* ``relu(x + y)`` is written as torchao writes it: each centred operand times its float32 scale
  ratio through ``out_dtype(mul, int32, ...)`` (truncating), summed, offset, clamped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch._higher_order_ops.out_dtype import out_dtype
from torch.fx import GraphModule, Node

from pt2q.core.attrs import get_attr_value
from pt2q.core.ops import node_arg, optional_node_arg
from pt2q.passes.reference_graph import Constant, call_op, operand
from pt2q.passes.reference_qparams import (
    EIGHT_BIT,
    AffineQParams,
    Requant,
    collapse,
    fixed_point,
    static_affine,
)

__all__ = [
    "carry_weighted",
    "carry_dynamic_linear",
    "carry_rescaled",
    "carry_add_relu",
    "integer_weighted",
    "integer_dynamic_linear",
    "integer_add",
    "integer_add_relu",
    "integer_max_pool2d",
]

aten = torch.ops.aten

_INT32 = torch.iinfo(torch.int32)


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
    out: Requant


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
    out: Requant


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


def carry_weighted(
    gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...], spatial_dims: int
) -> Optional[_Weighted]:
    """A static linear or conv (``spatial_dims`` 0 or 2) with 8-bit operands; None if it does not fit."""
    op, q = chain[0], chain[-1]
    x, w, out = static_affine(gm, dqs[0]), static_affine(gm, dqs[1]), static_affine(gm, q)
    bias = op.args[2] if len(op.args) > 2 else None
    target = op.target
    if (
        not isinstance(target, torch._ops.OpOverload)
        or x is None
        or w is None
        or out is None
        or op.kwargs
        or any(a.dtype not in EIGHT_BIT for a in (x, w, out))
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
    requant = fixed_point([acc_scale / out.scale], out, relu=len(chain) == 3, shape=out_shape)
    if requant is None:
        return None
    weight_shape = (-1,) + (1,) * (spatial_dims + 1)
    return _Weighted(
        target,
        x.source,
        int(x.zero_point),
        w.source,
        collapse(w.zero_point, weight_shape, torch.int16),
        bias_i32,
        tuple(op.args[3:]),
        requant,
    )


def carry_dynamic_linear(gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...]) -> Optional[_DynamicLinear]:
    """A linear with a run-time quantized activation and a static 8-bit weight; None if it does not fit."""
    op, x = chain[0], dqs[0]
    w = static_affine(gm, dqs[1])
    if w is None or op.kwargs or w.dtype not in EIGHT_BIT or x.args[5] not in EIGHT_BIT or w.axis not in (None, 0):
        return None
    return _DynamicLinear(
        node_arg(x, 0),
        node_arg(x, 1),
        node_arg(x, 2),
        w.source,
        collapse(w.zero_point, (-1, 1), torch.int16),
        collapse(w.scale, (-1,), torch.float32),
        optional_node_arg(op, 2),
    )


def _static_operands(
    gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...]
) -> Optional[tuple[list[AffineQParams], AffineQParams]]:
    """The static 8-bit qparams of an elementwise op's operands and of its output, or None if any is not."""
    op, q = chain[0], chain[-1]
    found, out = [static_affine(gm, dq) for dq in dqs], static_affine(gm, q)
    ins = [a for a in found if a is not None]
    if op.kwargs or out is None or len(ins) < len(found) or any(a.dtype not in EIGHT_BIT for a in (*ins, out)):
        return None
    return ins, out


def carry_rescaled(gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...]) -> Optional[_Rescaled]:
    """An op on static 8-bit operands (add, max_pool2d) requantized to the output grid; None if it does not fit."""
    operands = _static_operands(gm, chain, dqs)
    if operands is None:
        return None
    ins, out = operands
    requant = fixed_point([a.scale / out.scale for a in ins], out, relu=len(chain) == 3, shape=(-1,))
    if requant is None:
        return None
    return _Rescaled(tuple((a.source, int(a.zero_point)) for a in ins), tuple(chain[0].args[len(dqs) :]), requant)


def carry_add_relu(gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...]) -> Optional[_TruncatedSum]:
    """``relu(x + y)`` on static 8-bit operands, as torchao's truncating form; None if it does not fit."""
    operands = _static_operands(gm, chain, dqs)
    if operands is None:
        return None
    ins, out = operands
    out_scale = out.scale.float()
    ratios = tuple((a.source, int(a.zero_point), float(a.scale.float() / out_scale)) for a in ins)
    return _TruncatedSum(ratios, int(out.zero_point), out.qmax, out.dtype)


def _widen(gm: GraphModule, x: Node, zero_point: Any) -> Node:
    """``x.to(int16) - zero_point``: an 8-bit operand centred on its zero point, exact in int16."""
    return call_op(gm, aten.sub.Tensor, call_op(gm, aten.to.dtype, x, torch.int16), zero_point)


def _requantize(gm: GraphModule, terms: Sequence[Node], rq: Requant) -> Node:
    """Bring integer ``terms`` to the output grid: fixed-point multiply-add, rounding shift, offset, clamp, cast."""
    total: Optional[Node] = None
    for term, multiplier in zip(terms, rq.multipliers):
        wide = call_op(gm, aten.to.dtype, term, torch.int64)
        product = call_op(gm, aten.mul.Tensor, wide, operand(gm, multiplier, "_requant_multiplier"))
        total = product if total is None else call_op(gm, aten.add.Tensor, total, product)
    rounded = call_op(gm, aten.add.Tensor, total, 1 << (rq.shift - 1))
    shifted = call_op(gm, aten.bitwise_right_shift.Tensor_Scalar, rounded, rq.shift)
    offset = call_op(gm, aten.add.Tensor, shifted, rq.zero_point)
    return call_op(gm, aten.to.dtype, call_op(gm, aten.clamp.default, offset, rq.qmin, rq.qmax), rq.dtype)


def integer_weighted(gm: GraphModule, c: _Weighted) -> Node:
    """Centred int16 operands, int32 accumulation (``out_dtype``) plus int32 bias, requantized."""
    x = _widen(gm, c.x, c.x_zero_point)
    w = _widen(gm, c.weight, operand(gm, c.weight_zero_point, "_weight_zero_point"))
    acc = call_op(gm, out_dtype, c.op, torch.int32, x, w, None, *c.op_args)
    if c.bias is not None:
        acc = call_op(gm, aten.add.Tensor, acc, operand(gm, c.bias, "_bias_int32"))
    return _requantize(gm, [acc], c.out)


def integer_dynamic_linear(gm: GraphModule, c: _DynamicLinear) -> Node:
    """Centred int16 operands, int32 accumulation, scaled back to float by both scales (plus the float bias)."""
    x_zero_point = call_op(gm, aten.to.dtype, c.x_zero_point, torch.int16)
    x = _widen(gm, c.x, x_zero_point)
    w = _widen(gm, c.weight, operand(gm, c.weight_zero_point, "_weight_zero_point"))
    acc = call_op(gm, out_dtype, aten.linear.default, torch.int32, x, w, None)
    x_scale = call_op(gm, aten.to.dtype, c.x_scale, torch.float32)
    scale = call_op(gm, aten.mul.Tensor, x_scale, operand(gm, c.weight_scale, "_weight_scale"))
    out = call_op(gm, aten.mul.Tensor, call_op(gm, aten.to.dtype, acc, torch.float32), scale)
    return out if c.bias is None else call_op(gm, aten.add.Tensor, out, c.bias)


def integer_add(gm: GraphModule, c: _Rescaled) -> Node:
    """The centred operands, each times its fixed-point scale ratio, summed and requantized."""
    return _requantize(gm, [_widen(gm, x, zp) for x, zp in c.operands], c.out)


def integer_add_relu(gm: GraphModule, c: _TruncatedSum) -> Node:
    """torchao's ``relu(x + y)``: float32 scale ratios applied by ``out_dtype(mul, int32)``, offset, clamped."""
    total: Optional[Node] = None
    for x, zero_point, ratio in c.operands:
        term = call_op(gm, out_dtype, aten.mul.Tensor, torch.int32, _widen(gm, x, zero_point), ratio)
        total = term if total is None else call_op(gm, aten.add.Tensor, total, term)
    offset = call_op(gm, aten.add.Tensor, total, c.zero_point)
    return call_op(gm, aten.to.dtype, call_op(gm, aten.clamp.default, offset, c.zero_point, c.qmax), c.dtype)


def integer_max_pool2d(gm: GraphModule, c: _Rescaled) -> Node:
    """max_pool2d on the centred int16 operand, requantized to the output grid."""
    ((x, zero_point),) = c.operands
    pooled = call_op(gm, aten.max_pool2d.default, _widen(gm, x, zero_point), *c.op_args)
    return _requantize(gm, [pooled], c.out)
