"""Reference representation of affine (torchao) Q/DQ graphs: what the integer kernels compute, in plain ATen.

``convert_pt2e(m, use_reference_representation=True)`` runs this after the per-tensor /
per-channel rows of :mod:`pt2q.passes.reference_representation` (with the same row type and
building helpers, :mod:`pt2q.passes.reference_graph`):

* a **dynamically quantized, groupwise linear** (int8 per-token activation, low-bit weight
  in groups of ``g`` input channels) becomes integer arithmetic per group: both operands
  centred on their zero points and widened to int32, products of each group accumulated
  in int32 (``matmul`` over ``[..., G, 1, g] x [G, g, N]``), then each group's sum scaled by
  its weight scale, the groups summed and the token's activation scale applied in float --
  what XNNPACK's ``qd8-f32-qb4w`` kernels do;
* leftover ``choose_qparams_affine`` (per token), ``quantize_affine`` and
  ``dequantize_affine`` become their elementwise forms (min/max, round, clamp), bit for
  bit as torchao's kernels compute them.

The result is plain ATen: it exports, saves, loads and runs in ExecuTorch's portable kernels.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import get_attr_value
from pt2q.core.dead_code import erase_with_dead_inputs
from pt2q.core.ops import LINEAR, is_affine_qdq, is_choose_qparams_affine
from pt2q.numerics.affine_ops import affine_ops
from pt2q.passes.reference_graph import Rewrite, apply_rewrites, call_op, dequantize_form, operand, quantize_form

__all__ = ["affine_reference_rewrite"]

aten = torch.ops.aten


def _per_token(block_size: Any, rank: Optional[int], last: Optional[int]) -> bool:
    """Block size of one qparam per index of all dimensions but the last (which is shared whole)."""
    block = list(block_size)
    return (
        rank is not None
        and len(block) == rank
        and all(b == 1 for b in block[:-1])
        and (last is None or block[-1] == last)
    )


def _shape(gm: GraphModule, node: Any) -> Optional[torch.Size]:
    """Shape of ``node``'s value: its meta, the attribute it reads, or (for Q/DQ nodes made by
    convert, which carry no meta) the shape of the tensor it quantizes."""
    if not isinstance(node, Node):
        return None
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return val.shape
    if node.op == "get_attr":
        return get_attr_value(gm, str(node.target)).shape
    if is_affine_qdq(node) and not is_choose_qparams_affine(node):
        return _shape(gm, node.args[0])
    return None


@dataclass(frozen=True)
class _GroupwiseLinear:
    x: Node  # int8 codes of the activation, [..., K]
    x_scale: Node  # [...], one per token
    x_zero_point: Node
    weight: Node  # int codes, [N, K]
    weight_zero_point: Optional[torch.Tensor]  # [N, G]
    weight_scale: torch.Tensor  # [G, N], float32
    groups: int
    group_size: int
    bias: Optional[Node]


def _carry_groupwise_linear(
    gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...]
) -> Optional[_GroupwiseLinear]:
    op, (dq_x, dq_w) = chain[0], dqs
    q_x = dq_x.args[0]
    if op.kwargs or not (isinstance(q_x, Node) and q_x.op == "call_function"):
        return None
    x_scale, x_zp = dq_x.args[2], dq_x.args[3]
    if not (
        isinstance(x_scale, Node)
        and isinstance(x_zp, Node)
        and x_scale.target is operator.getitem
        and x_zp.target is operator.getitem
    ):
        return None  # static activation qparams: not this pattern
    weight, w_block, w_scale, w_zp = dq_w.args[:4]
    shape_x, shape_w = _shape(gm, q_x), _shape(gm, weight)
    if not (isinstance(weight, Node) and weight.op == "get_attr" and shape_w is not None and len(shape_w) == 2):
        return None
    n_out, k = shape_w
    if not isinstance(w_block, (list, tuple)) or len(w_block) != 2 or w_block[0] != 1:
        return None
    if shape_x is None or not _per_token(dq_x.args[1], len(shape_x), k):
        return None
    if dq_x.args[4] != torch.int8 or not (isinstance(w_scale, Node) and w_scale.op == "get_attr"):
        return None
    bias = op.args[2] if len(op.args) > 2 else None
    if bias is not None and not isinstance(bias, Node):
        return None
    group = int(w_block[1])  # type: ignore[arg-type]  # an int in dequantize_affine's schema
    groups = k // group
    scale = get_attr_value(gm, str(w_scale.target)).float().reshape(n_out, groups)
    zp = None
    if isinstance(w_zp, Node):
        zp = get_attr_value(gm, str(w_zp.target)).to(torch.int32).reshape(n_out, groups)
        zp = None if not bool(zp.any()) else zp
    return _GroupwiseLinear(q_x, x_scale, x_zp, weight, zp, scale.T.contiguous(), groups, group, bias)


def _integer_groupwise_linear(gm: GraphModule, c: _GroupwiseLinear) -> Node:
    # activation: int8 codes centred on the token's zero point, [..., G, 1, g] in int32
    x_zp = call_op(gm, aten.unsqueeze.default, call_op(gm, aten.to.dtype, c.x_zero_point, torch.int32), -1)
    x = call_op(gm, aten.sub.Tensor, call_op(gm, aten.to.dtype, c.x, torch.int32), x_zp)
    x = call_op(gm, aten.unsqueeze.default, call_op(gm, aten.unflatten.int, x, -1, [c.groups, c.group_size]), -2)
    # weight: codes centred on each group's zero point, [G, g, N] in int32
    w = call_op(gm, aten.view.default, call_op(gm, aten.to.dtype, c.weight, torch.int32), [-1, c.groups, c.group_size])
    if c.weight_zero_point is not None:
        w = call_op(gm, aten.sub.Tensor, w, operand(gm, c.weight_zero_point.unsqueeze(-1), "_weight_zero_point"))
    w = call_op(gm, aten.permute.default, w, [1, 2, 0])
    acc = call_op(gm, aten.squeeze.dim, call_op(gm, aten.matmul.default, x, w), -2)  # [..., G, N], int32 per group
    per_group = call_op(
        gm,
        aten.mul.Tensor,
        call_op(gm, aten.to.dtype, acc, torch.float32),
        operand(gm, c.weight_scale, "_weight_scale"),
    )
    x_scale = call_op(gm, aten.unsqueeze.default, call_op(gm, aten.to.dtype, c.x_scale, torch.float32), -1)
    out = call_op(gm, aten.mul.Tensor, call_op(gm, aten.sum.dim_IntList, per_group, [-2]), x_scale)
    return out if c.bias is None else call_op(gm, aten.add.Tensor, out, c.bias)


@dataclass(frozen=True)
class _AffineQDQ:
    x: Node
    scale: Node  # one per token
    zero_point: Optional[Node]
    qmin: int
    qmax: int
    dtype: torch.dtype
    out_dtype: torch.dtype


def _carry_per_token_qdq(gm: GraphModule, chain: tuple[Node, ...], dqs: tuple[Node, ...]) -> Optional[_AffineQDQ]:
    node = chain[0]
    x, block, scale, zero_point, dtype = node.args[:5]
    qmin, qmax = node.args[5], node.args[6]
    shape = _shape(gm, x)
    if not (
        isinstance(qmin, int) and isinstance(qmax, int) and shape is not None and _per_token(block, len(shape), None)
    ):
        return None
    if not isinstance(x, Node) or not isinstance(scale, Node) or not isinstance(dtype, torch.dtype):
        return None
    if zero_point is not None and not isinstance(zero_point, Node):
        return None
    out_dtype = node.kwargs.get("output_dtype", torch.float32)
    if not isinstance(out_dtype, torch.dtype):
        return None
    return _AffineQDQ(x, scale, zero_point, qmin, qmax, dtype, out_dtype)


def _token_view(gm: GraphModule, qparam: Node) -> Node:
    return call_op(gm, aten.unsqueeze.default, qparam, -1)


def _reference_quantize(gm: GraphModule, c: _AffineQDQ) -> Node:
    """``clamp(round(x * (1 / scale)) + zero_point, qmin, qmax).to(dtype)``, one scale per token."""
    inv_scale = call_op(gm, aten.reciprocal.default, _token_view(gm, c.scale))
    zero_point = None if c.zero_point is None else _token_view(gm, c.zero_point)
    return quantize_form(gm, c.x, inv_scale, zero_point, c.qmin, c.qmax, c.dtype)


def _reference_dequantize(gm: GraphModule, c: _AffineQDQ) -> Node:
    """``(q - zero_point) * scale`` in the output dtype, one scale per token."""
    zero_point = None
    if c.zero_point is not None:
        zero_point = call_op(gm, aten.to.dtype, _token_view(gm, c.zero_point), c.out_dtype)
    return dequantize_form(gm, c.x, _token_view(gm, c.scale), zero_point, c.out_dtype, c.out_dtype)


def _rows() -> tuple[Rewrite, ...]:
    ops = affine_ops()
    q, dq = {ops.quantize_affine.default, ops.quantize_affine}, {ops.dequantize_affine.default, ops.dequantize_affine}
    return (
        Rewrite(
            "dynamic_groupwise_linear", (LINEAR,), {0: dq, 1: dq}, _carry_groupwise_linear, _integer_groupwise_linear
        ),
        Rewrite("quantize_affine", (q,), {}, _carry_per_token_qdq, _reference_quantize),
        Rewrite("dequantize_affine", (dq,), {}, _carry_per_token_qdq, _reference_dequantize),
    )


def _reference_choose_qparams(gm: GraphModule, choose: Node) -> bool:
    """Per-token ``choose_qparams_affine`` as min/max arithmetic; its two getitem users read the results."""
    x, mapping, block, _, qmin, qmax, eps, scale_dtype, zp_dtype = (list(choose.args) + [None] * 9)[:9]
    shape = _shape(gm, x)
    getters = {u.args[1]: u for u in choose.users if u.target is operator.getitem}
    if not (isinstance(x, Node) and isinstance(qmin, int) and isinstance(qmax, int)):
        return False
    if shape is None or not _per_token(block, len(shape), None) or set(getters) - {0, 1}:
        return False
    if mapping not in ("ASYMMETRIC", "SYMMETRIC"):
        return False
    dtype = x.meta["val"].dtype if "val" in x.meta else torch.float32
    eps = torch.finfo(dtype).smallest_normal if eps is None else eps  # the op's default
    g = gm.graph
    with g.inserting_before(choose):
        lo = call_op(gm, aten.clamp_max.default, call_op(gm, aten.amin.default, x, [-1]), 0.0)
        hi = call_op(gm, aten.clamp_min.default, call_op(gm, aten.amax.default, x, [-1]), 0.0)
        if mapping == "ASYMMETRIC":
            span = call_op(gm, aten.div.Tensor, call_op(gm, aten.sub.Tensor, hi, lo), float(qmax - qmin))
            scale = call_op(gm, aten.clamp_min.default, span, eps)
            offset = call_op(gm, aten.round.default, call_op(gm, aten.div.Tensor, lo, scale))
            zp = call_op(gm, aten.clamp.default, call_op(gm, aten.rsub.Scalar, offset, qmin), qmin, qmax)
            zp_dtype = torch.int32 if zp_dtype is None else zp_dtype
        else:
            half = call_op(
                gm,
                aten.div.Tensor,
                call_op(gm, aten.maximum.default, call_op(gm, aten.neg.default, lo), hi),
                float(qmax - qmin) / 2,
            )
            scale = call_op(gm, aten.clamp_min.default, half, eps)
            zp = call_op(gm, aten.full_like.default, scale, int((qmax + qmin + 1) / 2))
        scale = call_op(gm, aten.to.dtype, scale, dtype if scale_dtype is None else scale_dtype)
        if zp_dtype is not None:
            zp = call_op(gm, aten.to.dtype, zp, zp_dtype)
    for index, value in ((0, scale), (1, zp)):
        if index in getters:
            value.meta.update(
                {k: v for k, v in getters[index].meta.items() if k in ("val", "nn_module_stack", "stack_trace")}
            )
            getters[index].replace_all_uses_with(value)
    erase_with_dead_inputs(gm, list(getters.values()))
    return True


def affine_reference_rewrite(gm: GraphModule) -> GraphModule:
    """Rewrite the affine Q/DQ patterns of ``gm`` into their reference forms (in place)."""
    if not any(is_affine_qdq(n) for n in gm.graph.nodes):
        return gm
    apply_rewrites(gm, _rows())
    for node in list(gm.graph.nodes):
        if is_choose_qparams_affine(node):
            _reference_choose_qparams(gm, node)
    gm.graph.lint()
    gm.recompile()
    return gm
