"""What a reference rewrite carries across: static qparams read off Q/DQ nodes, fixed-point requantization.

:func:`static_affine` reads a quantize/dequantize node's scale, zero point, range and dtype (literals,
or the buffers a per-channel op reads); :func:`fixed_point` turns float scale ratios into the
``m / 2**shift`` multipliers of :class:`Requant`, the requantization an integer kernel performs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, TypeVar

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import get_attr_value
from pt2q.core.ops import DQ_PER_CHANNEL, DQ_PER_TENSOR, Q_PER_CHANNEL, Q_PER_TENSOR, is_op, node_arg
from pt2q.passes.reference_graph import Constant

__all__ = [
    "EIGHT_BIT",
    "AffineQParams",
    "Requant",
    "literal_arg",
    "number_arg",
    "qdq_literals",
    "static_affine",
    "collapse",
    "fixed_point",
]

EIGHT_BIT = (torch.int8, torch.uint8)
_T = TypeVar("_T")


@dataclass(frozen=True)
class AffineQParams:
    """Static qparams of a quantize/dequantize node; scale and zero point as 1-D tensors."""

    source: Node
    scale: torch.Tensor  # float64
    zero_point: torch.Tensor  # int64
    qmin: int
    qmax: int
    dtype: torch.dtype
    axis: Optional[int]  # None when per tensor


@dataclass(frozen=True)
class Requant:
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


def literal_arg(node: Node, index: int, kind: type[_T]) -> _T:
    """``node.args[index]``, which the op's schema makes a literal of ``kind`` (FX types arguments loosely)."""
    arg = node.args[index]
    if not isinstance(arg, kind):
        raise TypeError(f"argument {index} of node '{node.name}' is {arg!r}, not a {kind.__name__}")
    return arg


def number_arg(node: Node, index: int) -> float:
    """``node.args[index]``, a literal int or float (a per-tensor scale)."""
    arg = node.args[index]
    if not isinstance(arg, (int, float)):
        raise TypeError(f"argument {index} of node '{node.name}' is {arg!r}, not a number")
    return float(arg)


def qdq_literals(node: Node) -> tuple[Optional[int], int, int, torch.dtype]:
    """(axis, or None per tensor; qmin; qmax; dtype) of a quantize/dequantize node."""
    if is_op(node, Q_PER_CHANNEL | DQ_PER_CHANNEL):
        return (
            literal_arg(node, 3, int),
            literal_arg(node, 4, int),
            literal_arg(node, 5, int),
            literal_arg(node, 6, torch.dtype),
        )
    return None, literal_arg(node, 3, int), literal_arg(node, 4, int), literal_arg(node, 5, torch.dtype)


def static_affine(gm: GraphModule, node: Node) -> Optional[AffineQParams]:
    """The qparams of a Q/DQ node whose scale and zero point are literals or buffers; None if read at run time."""
    source = node_arg(node, 0)
    axis, qmin, qmax, dtype = qdq_literals(node)
    if is_op(node, Q_PER_TENSOR | DQ_PER_TENSOR):
        scale = torch.tensor([number_arg(node, 1)], dtype=torch.float64)
        return AffineQParams(source, scale, torch.tensor([literal_arg(node, 2, int)]), qmin, qmax, dtype, None)
    scale_node, zero_point_node = node.args[1], node.args[2]
    if not (isinstance(scale_node, Node) and scale_node.op == "get_attr"):
        return None
    if not (isinstance(zero_point_node, Node) and zero_point_node.op == "get_attr"):
        return None
    scales = get_attr_value(gm, str(scale_node.target)).double()
    zero_points = get_attr_value(gm, str(zero_point_node.target)).long()
    return AffineQParams(source, scales, zero_points, qmin, qmax, dtype, axis)


def collapse(t: torch.Tensor, shape: Sequence[int], dtype: torch.dtype) -> Constant:
    """A python scalar if all entries of ``t`` are equal, else ``t`` reshaped to broadcast."""
    first = t.flatten()[0]
    if bool((t == first).all()):
        return first.item()
    return t.to(dtype).reshape(shape)


def fixed_point(
    multipliers: Sequence[torch.Tensor], out: AffineQParams, relu: bool, shape: Sequence[int]
) -> Optional[Requant]:
    """Express each multiplier as ``m / 2**shift`` with one shift; the largest ``m`` lies in [2**30, 2**31]."""
    shift = min(31 - math.frexp(max(float(m.max()) for m in multipliers))[1], 62)
    if shift < 1:  # a multiplier of 2**30 or more: no sensible quantization gives one
        return None
    fixed = tuple(collapse(torch.round(m * 2.0**shift).long(), shape, torch.int64) for m in multipliers)
    zero_point = int(out.zero_point)
    return Requant(fixed, shift, zero_point, max(out.qmin, zero_point) if relu else out.qmin, out.qmax, out.dtype)
