"""The x86 (oneDNN) recipe as data: the operators it quantizes and its pattern rows in precedence order.

:class:`pt2q.quantizers.x86_inductor.X86InductorQuantizer` applies :data:`X86_PATTERNS` to the anchors
a config selects (:data:`QUANTIZABLE_OPS`, :data:`DEFAULT_QUANTIZABLE_OPS`); :data:`OPERATOR_OF` says
which operator a module or function type given to its setters means. Most rows are the shared ones of
:mod:`pt2q.quantizers.annotators`, restricted to the conv2d/conv1d/linear anchors oneDNN fuses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Optional, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch._ops import OpOverload
from torch.fx import GraphModule, Node

from pt2q.core.ops import (
    ADD,
    BATCH_NORM,
    CAT,
    FLATTEN,
    GELU,
    HARDSWISH,
    HARDTANH,
    LEAKY_RELU,
    LINEAR,
    MATMUL,
    RELU,
    SILU,
    TANH,
    aten,
    is_op,
    node_arg,
    ops,
)
from pt2q.core.spec import (
    Q_ANNOTATION_KEY,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)
from pt2q.quantizers.annotation import get_input_act_qspec
from pt2q.quantizers.annotators import PATTERNS, float_operands
from pt2q.quantizers.patterns import Guard, Pattern

__all__ = [
    "CONV_UNARY",
    "LINEAR_UNARY",
    "INT8_IN_INT8_OUT_OPS",
    "DEFAULT_QUANTIZABLE_OPS",
    "QUANTIZABLE_OPS",
    "OPERATOR_OF",
    "X86_PATTERNS",
    "is_quantized_output",
    "PATTERN_OUTPUT_FIELD",
    "mark_pattern_output",
    "mark_other_annotations",
]

# The recipe quantizes one overload of each operator, as torchao's does (in-place mul: not fused; string
# conv padding is made explicit first, see transform_for_annotation), spelled out below as aten.<op>.<overload>.
CONV_UNARY = HARDTANH | HARDSWISH | SILU  # relu has the shared "conv_relu" row; hardtanh covers nn.ReLU6
LINEAR_UNARY = LEAKY_RELU | TANH | GELU

# Ops oneDNN runs on int8 directly when their input is int8; their output keeps the input's qparams.
INT8_IN_INT8_OUT_OPS = ops(
    aten.max_pool2d.default,
    aten.avg_pool2d.default,
    aten.adaptive_avg_pool2d.default,
    aten.cat.default,
    aten.flatten.using_ints,
)
# Anchors the global config quantizes; matmul is opt-in.
DEFAULT_QUANTIZABLE_OPS = INT8_IN_INT8_OUT_OPS | ops(
    aten.conv1d.default, aten.conv2d.default, aten.linear.default, aten.mul.Tensor
)
QUANTIZABLE_OPS = DEFAULT_QUANTIZABLE_OPS | ops(aten.matmul.default)

# What set_function_type_qconfig / set_module_type_qconfig accept, and the operator each means.
OPERATOR_OF: dict[Any, OpOverload] = {
    nn.Conv1d: aten.conv1d.default,
    F.conv1d: aten.conv1d.default,
    nn.Conv2d: aten.conv2d.default,
    F.conv2d: aten.conv2d.default,
    nn.Linear: aten.linear.default,
    F.linear: aten.linear.default,
    nn.MaxPool2d: aten.max_pool2d.default,
    F.max_pool2d: aten.max_pool2d.default,
    nn.AvgPool2d: aten.avg_pool2d.default,
    F.avg_pool2d: aten.avg_pool2d.default,
    nn.AdaptiveAvgPool2d: aten.adaptive_avg_pool2d.default,
    F.adaptive_avg_pool2d: aten.adaptive_avg_pool2d.default,
    torch.cat: aten.cat.default,
    torch.flatten: aten.flatten.using_ints,
    torch.matmul: aten.matmul.default,
    torch.mul: aten.mul.Tensor,
}


def _two_tensor_operands(gm: GraphModule, match: tuple[Node, ...], config: Optional[QuantizationConfig]) -> bool:
    """The add fused after a conv/linear adds two tensors (a scalar operand is not fused)."""
    add = next(n for n in match if is_op(n, ADD))
    return len(add.args) >= 2 and all(isinstance(a, Node) for a in add.args[:2])


def _same_shape_tensors(gm: GraphModule, match: tuple[Node, ...], config: Optional[QuantizationConfig]) -> bool:
    vals = [a.meta.get("val") if isinstance(a, Node) else None for a in match[0].args[:2]]
    a, b = vals if len(vals) == 2 else (None, None)
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape


def _both(a: Guard, b: Guard) -> Guard:
    return lambda gm, match, config: a(gm, match, config) and b(gm, match, config)


def _passthrough_ready(gm: GraphModule, match: tuple[Node, ...], config: Optional[QuantizationConfig]) -> bool:
    """x86's conditions to quantize an int8-in/int8-out op: its (every, for cat) input ends an int8 pattern
    and, for flatten, some user takes int8."""
    node = match[0]
    if is_op(node, CAT):
        return all(is_quantized_output(a) for a in node.all_input_nodes)
    act = node.args[0]
    if not isinstance(act, Node):
        return False
    if is_op(node, FLATTEN) and node.users and not any(u.target in QUANTIZABLE_OPS for u in node.users):
        return False  # nobody downstream would take int8
    return is_quantized_output(act)


def _annotate_x86_cat(cat: Node, config: Optional[QuantizationConfig]) -> list[Node]:
    """``cat``: the first input gets the input spec; the other inputs and the output share its qparams."""
    tensors = [t for t in cast(Sequence[Any], cat.args[0]) if isinstance(t, Node)]
    shared = SharedQuantizationSpec((tensors[0], cat))
    inputs: dict[Node, Optional[QuantizationSpecBase]] = {tensors[0]: get_input_act_qspec(config)}
    for t in tensors[1:]:
        inputs.setdefault(t, shared)
    cat.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=inputs, output_qspec=shared, _annotated=True)
    return [cat]


def _annotate_passthrough(node: Node, config: Optional[QuantizationConfig]) -> list[Node]:
    """An int8-in/int8-out op: input spec on its (first) input, the output shares it."""
    if is_op(node, CAT):
        return _annotate_x86_cat(node, config)
    act = node_arg(node, 0)
    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
        input_qspec_map={act: get_input_act_qspec(config)},
        output_qspec=SharedQuantizationSpec((act, node)),
        _annotated=True,
    )
    return [node]


_SHARED = {p.name: p for p in PATTERNS}
_C2 = ops(aten.conv2d.default)
# conv/linear fused with an add: the chain is found from the add, whose either operand may be the conv
_FROM_ADD: dict[str, Any] = {"link_args": (0, 1), "params_exclusive": False, "guard": _two_tensor_operands}


def _shared_unary(name: str, anchors: frozenset) -> Pattern:
    """A shared ``*_relu`` row on the x86 anchors; the relu is taken with its conv/linear even when that has other
    users too (as torchao's module-sequence matching does: the relu's output is then int8-ready)."""
    return dataclasses.replace(_SHARED[name].restricted(anchors), exclusive=False)


# In precedence order: earlier rows claim nodes first. The anchor (position 0) is the conv/linear/...
X86_PATTERNS: tuple[Pattern, ...] = (
    Pattern(
        "x86_conv_bn_add_relu",
        (_C2, BATCH_NORM, ADD, RELU),
        weighted=0,
        extra_operand=2,
        root=2,
        qat_only=True,
        **_FROM_ADD,
    ),
    Pattern("x86_conv_bn_add", (_C2, BATCH_NORM, ADD), weighted=0, extra_operand=2, root=2, qat_only=True, **_FROM_ADD),
    _shared_unary("conv_bn_relu", _C2),
    Pattern(
        "x86_conv_bn_unary",
        (_C2, BATCH_NORM, CONV_UNARY),
        weighted=0,
        qat_only=True,
        params_exclusive=False,
        exclusive=False,
    ),
    _SHARED["conv_bn"].restricted(_C2),
    Pattern("x86_conv_add_relu", (_C2, ADD, RELU), weighted=0, extra_operand=1, root=1, **_FROM_ADD),
    Pattern("x86_conv_add", (_C2, ADD), weighted=0, extra_operand=1, root=1, **_FROM_ADD),
    _shared_unary("conv_relu", ops(aten.conv2d.default, aten.conv1d.default)),
    Pattern("x86_conv_unary", (_C2, CONV_UNARY), weighted=0, params_exclusive=False, exclusive=False),
    _SHARED["conv"].restricted(ops(aten.conv2d.default, aten.conv1d.default)),
    # the add's other operand stays float: oneDNN accumulates it in fp32
    Pattern("x86_linear_add_relu", (LINEAR, ADD, RELU), weighted=0, root=1, **_FROM_ADD),
    Pattern("x86_linear_add", (LINEAR, ADD), weighted=0, root=1, **_FROM_ADD),
    _shared_unary("linear_relu", LINEAR),
    Pattern("x86_linear_unary", (LINEAR, LINEAR_UNARY), weighted=0, params_exclusive=False, exclusive=False),
    _SHARED["linear"],
    Pattern("matmul", (MATMUL,), operands=0, output=0, params_exclusive=False),
    dataclasses.replace(
        _SHARED["mul"].restricted(ops(aten.mul.Tensor)), guard=_both(float_operands, _same_shape_tensors)
    ),
    # int8-in/int8-out ops, in graph order, once what feeds them is known to be int8
    Pattern("x86_int8_passthrough", (INT8_IN_INT8_OUT_OPS,), guard=_passthrough_ready, annotate=_annotate_passthrough),
)


def is_quantized_output(node: Node) -> bool:
    """True if ``node`` ends an annotated int8 pattern, so its value may be handed on in int8.

    That is a claimed op that no user continues as part of the same pattern (a
    user that quantizes the edge from ``node`` does not continue it). A plain
    linear with several users, one of them a linear+add claiming it as its float
    operand, reads as continued: an approximation no x86 pattern depends on.
    """
    ann = node.meta.get(Q_ANNOTATION_KEY)
    if node.op != "call_function" or ann is None or not ann._annotated:
        return False
    for user in node.users:
        user_ann = user.meta.get(Q_ANNOTATION_KEY)
        if user_ann is not None and user_ann._annotated and node not in user_ann.input_qspec_map:
            return False
    return True


# torchao's x86 annotation field: True on the node that ends a quantized fusion pattern (its output may be
# handed on in int8), False on every other node the quantizer annotates
PATTERN_OUTPUT_FIELD = "_is_output_of_quantized_pattern"


def mark_pattern_output(node: Node) -> None:
    """Record on ``node``'s annotation that it ends a quantized pattern."""
    ann = node.meta.get(Q_ANNOTATION_KEY)
    if ann is not None:
        setattr(ann, PATTERN_OUTPUT_FIELD, True)


def mark_other_annotations(gm: GraphModule) -> None:
    """Every annotation not marked as a pattern's output says so."""
    for node in gm.graph.nodes:
        ann = node.meta.get(Q_ANNOTATION_KEY)
        if ann is not None and not hasattr(ann, PATTERN_OUTPUT_FIELD):
            setattr(ann, PATTERN_OUTPUT_FIELD, False)
