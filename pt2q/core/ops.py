"""The one vocabulary of operators pt2q reasons about, and the predicates that test nodes against it.

Every op set is a ``frozenset`` of ``OpOverload``s (one exact overload), or of
``OpOverloadPacket``s where a set names an operator whatever its overload (the edge
dialect's ``aten.view_copy`` in a lowered program, say). :func:`is_op` accepts both,
and sees through ExecuTorch's ``EdgeOpOverload`` wrapper, so one predicate serves ATen
graphs, quantized graphs and lowered programs.

Other modules import these names; none defines an op set of its own.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Optional, Union

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers torch.ops.quantized_decomposed
from torch._ops import OpOverload, OpOverloadPacket
from torch.fx import GraphModule, Node

__all__ = [
    "Target",
    "OpSet",
    "ops",
    "CONV1D",
    "CONV2D",
    "CONV3D",
    "CONVOLUTION",
    "CONV",
    "CONV_TRANSPOSE1D",
    "CONV_TRANSPOSE2D",
    "CONV_TRANSPOSE3D",
    "CONV_TRANSPOSE",
    "LINEAR",
    "MATMUL",
    "EMBEDDING",
    "GRU",
    "BATCH_NORM",
    "BATCH_NORM_NO_TRAINING",
    "RELU",
    "HARDTANH",
    "HARDSWISH",
    "SILU",
    "LEAKY_RELU",
    "TANH",
    "GELU",
    "ADD",
    "MUL",
    "CAT",
    "MAX_POOL2D",
    "AVG_POOL2D",
    "ADAPTIVE_AVG_POOL2D",
    "FLATTEN",
    "MEAN",
    "DROPOUT",
    "LAYER_NORM",
    "FULL",
    "SUB",
    "DIV",
    "WHERE",
    "MASKED_FILL",
    "MOVE_OPS",
    "VIEW",
    "SHARE_QPARAMS_OPS",
    "Q_PER_TENSOR",
    "Q_PER_TENSOR_DYNAMIC",
    "Q_PER_CHANNEL",
    "DQ_PER_TENSOR",
    "DQ_PER_TENSOR_DYNAMIC",
    "DQ_PER_CHANNEL",
    "Q_OPS",
    "DQ_OPS",
    "QDQ_OPS",
    "CHOOSE_QPARAMS_OPS",
    "CONVERT_ELEMENT_TYPE",
    "ANY_QUANTIZE",
    "ANY_DEQUANTIZE",
    "ANY_CHOOSE_QPARAMS",
    "ANY_QDQ",
    "SYM_SIZE",
    "COND",
    "WHILE_LOOP",
    "SCAN",
    "MAP",
    "CONTROL_FLOW",
    "AFFINE_QUANTIZE",
    "AFFINE_DEQUANTIZE",
    "AFFINE_CHOOSE_QPARAMS",
    "OBSERVER_PREFIX",
    "op_name",
    "is_op",
    "node_arg",
    "optional_node_arg",
    "sole_user",
    "users_except_sym_size",
    "writes_first_argument",
    "is_observer_node",
    "is_affine_quantize",
    "is_affine_dequantize",
    "is_choose_qparams_affine",
    "is_affine_qdq",
]

Target = Union[OpOverload, OpOverloadPacket]
OpSet = frozenset  # of Target

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed


def ops(*targets: Target) -> frozenset:
    """An op set."""
    return frozenset(targets)


# --- convolution, linear, embedding ------------------------------------------------------
CONV1D = ops(aten.conv1d.default, aten.conv1d.padding)
CONV2D = ops(aten.conv2d.default, aten.conv2d.padding)
CONV3D = ops(aten.conv3d.default, aten.conv3d.padding)
CONVOLUTION = ops(aten.convolution.default)
CONV = CONV1D | CONV2D | CONV3D | CONVOLUTION
CONV_TRANSPOSE1D = ops(aten.conv_transpose1d.default)
CONV_TRANSPOSE2D = ops(aten.conv_transpose2d.input)
CONV_TRANSPOSE3D = ops(aten.conv_transpose3d.input)
CONV_TRANSPOSE = CONV_TRANSPOSE1D | CONV_TRANSPOSE2D | CONV_TRANSPOSE3D
LINEAR = ops(aten.linear.default)
MATMUL = ops(aten.matmul.default)
EMBEDDING = ops(aten.embedding.default)
GRU = ops(aten.gru.input)  # nn.GRU exports as one fused op (outputs: sequence, final hidden state)

# --- normalization and activations -------------------------------------------------------
BATCH_NORM = ops(aten.batch_norm.default)
BATCH_NORM_NO_TRAINING = ops(aten._native_batch_norm_legit_no_training.default)
RELU = ops(aten.relu.default, aten.relu_.default)
HARDTANH = ops(aten.hardtanh.default, aten.hardtanh_.default)  # nn.ReLU6 exports as hardtanh(0, 6)
HARDSWISH = ops(aten.hardswish.default, aten.hardswish_.default)
SILU = ops(aten.silu.default, aten.silu_.default)
LEAKY_RELU = ops(aten.leaky_relu.default, aten.leaky_relu_.default)
TANH = ops(aten.tanh.default, aten.tanh_.default)
GELU = ops(aten.gelu.default, aten.gelu_.default)

# --- arithmetic, pooling, shape ----------------------------------------------------------
ADD = ops(aten.add.Tensor, aten.add_.Tensor)
MUL = ops(aten.mul.Tensor, aten.mul_.Tensor)
CAT = ops(aten.cat.default)
MAX_POOL2D = ops(aten.max_pool2d.default)
AVG_POOL2D = ops(aten.avg_pool2d.default)
ADAPTIVE_AVG_POOL2D = ops(aten.adaptive_avg_pool2d.default)
FLATTEN = ops(aten.flatten.using_ints)
MEAN = ops(aten.mean.default, aten.mean.dim)
DROPOUT = ops(aten.dropout.default, aten.dropout_.default)
LAYER_NORM = ops(aten.layer_norm.default)
FULL = ops(
    aten.full.default, aten.full_like.default, aten.new_full.default, aten.scalar_tensor.default, aten.fill.Scalar
)
SUB = ops(aten.sub.Tensor, aten.sub_.Tensor, aten.sub.Scalar, aten.rsub.Scalar, aten.rsub.Tensor)
DIV = ops(aten.div.Tensor, aten.div_.Tensor, aten.div.Scalar)
WHERE = ops(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
MASKED_FILL = ops(aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.masked_fill_.Scalar, aten.masked_fill_.Tensor)
VIEW = ops(
    aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.permute.default, aten.expand.default
)
# Ops that move, copy, select or retype values without computing new ones.
MOVE_OPS = VIEW | ops(
    aten.expand_as.default,
    aten.unsqueeze.default,
    aten.squeeze.dim,
    aten.squeeze.dims,
    aten.squeeze.default,
    aten.slice.Tensor,
    aten.select.int,
    aten.transpose.int,
    aten.t.default,
    aten.clone.default,
    aten.contiguous.default,
    aten.to.dtype,
    aten.to.dtype_layout,
    aten.to.device,
    aten._to_copy.default,
    aten.type_as.default,
    aten.repeat.default,
    aten.flatten.using_ints,
    aten.alias.default,
    aten.view_copy.default,
    aten.expand_copy.default,
    aten.unsqueeze_copy.default,
    aten.permute_copy.default,
    aten.slice_copy.Tensor,
    aten.squeeze_copy.dim,
)

# Ops whose output keeps the quantization parameters of their (first) input: they move,
# select or clamp values without creating new ones (dropout is the identity once deployed).
SHARE_QPARAMS_OPS = (
    ops(
        aten.relu.default,
        aten.permute.default,
        aten.permute_copy.default,
        aten.transpose.int,
        aten.squeeze.dim,
        aten.squeeze_copy.dim,
        aten.view_copy.default,
        aten.view.default,
        aten.reshape.default,
        aten.slice.Tensor,
        aten.slice_copy.Tensor,
    )
    | HARDTANH
    | MAX_POOL2D
    | MEAN
    | ADAPTIVE_AVG_POOL2D
    | FLATTEN
    | DROPOUT
)

# --- quantize / dequantize (torch's quantized_decomposed library) ------------------------
Q_PER_TENSOR = ops(qd.quantize_per_tensor.default)
Q_PER_TENSOR_DYNAMIC = ops(qd.quantize_per_tensor.tensor)  # scale and zero point are graph values
Q_PER_CHANNEL = ops(qd.quantize_per_channel.default)
DQ_PER_TENSOR = ops(qd.dequantize_per_tensor.default)
DQ_PER_TENSOR_DYNAMIC = ops(qd.dequantize_per_tensor.tensor)
DQ_PER_CHANNEL = ops(qd.dequantize_per_channel.default)
Q_OPS = Q_PER_TENSOR | Q_PER_TENSOR_DYNAMIC | Q_PER_CHANNEL
DQ_OPS = DQ_PER_TENSOR | DQ_PER_TENSOR_DYNAMIC | DQ_PER_CHANNEL
QDQ_OPS = Q_OPS | DQ_OPS
CHOOSE_QPARAMS_OPS = ops(qd.choose_qparams.tensor, qd.choose_qparams_symmetric.tensor)  # run-time qparams
# a float cast kept as its own op (not fused away): float16 "quantization" of a weight
CONVERT_ELEMENT_TYPE = ops(qd.convert_element_type.no_fuse)
# Every quantize / dequantize / choose-qparams operator of the library, whatever its overload or
# granularity (per token, per channel group): what a lowered program's report counts as Q/DQ.
ANY_QUANTIZE = ops(
    qd.quantize_per_tensor, qd.quantize_per_channel, qd.quantize_per_token, qd.quantize_per_channel_group
)
ANY_DEQUANTIZE = ops(
    qd.dequantize_per_tensor, qd.dequantize_per_channel, qd.dequantize_per_token, qd.dequantize_per_channel_group
)
ANY_CHOOSE_QPARAMS = ops(
    qd.choose_qparams, qd.choose_qparams_symmetric, qd.choose_qparams_per_token, qd.choose_qparams_per_token_asymmetric
)
ANY_QDQ = ANY_QUANTIZE | ANY_DEQUANTIZE | ANY_CHOOSE_QPARAMS

# shape queries on a tensor (dynamic shapes): users that read no values
SYM_SIZE = ops(aten.sym_size, aten.sym_numel)

# control flow: higher-order ops whose bodies are GraphModule attributes of the graph that calls them
_hop = torch.ops.higher_order
COND: frozenset = frozenset({_hop.cond})
WHILE_LOOP: frozenset = frozenset({_hop.while_loop})
SCAN: frozenset = frozenset({_hop.scan})
MAP: frozenset = frozenset({_hop.map_impl})
CONTROL_FLOW = COND | WHILE_LOOP | SCAN | MAP
# --- affine quantize / dequantize (torchao's op library) ----------------------------------
# Named, not held: the ops exist once torchao's library is loaded (pt2q.numerics.affine_ops does that
# when a graph needs them), and a name matches them in converted, exported and edge programs.
# Block-wise qparams of any granularity; ExecuTorch's XNNPACK delegate runs them as dynamically
# quantized linears with groupwise or per-channel low-bit weights.
AFFINE_QUANTIZE = "torchao.quantize_affine"
AFFINE_DEQUANTIZE = "torchao.dequantize_affine"
AFFINE_CHOOSE_QPARAMS = "torchao.choose_qparams_affine"

OBSERVER_PREFIX = "activation_post_process_"  # observers and fake quantizers are submodules named so


def _unwrap(target: Any) -> Any:
    """The ``OpOverload`` inside ExecuTorch's ``EdgeOpOverload`` (other targets unchanged)."""
    inner = getattr(target, "_op", None)
    return inner if isinstance(inner, OpOverload) else target


def op_name(target: Any) -> Optional[str]:
    """``namespace.op`` of an ATen/edge operator (overload dropped), or None for other callables."""
    target = _unwrap(target)
    schema = getattr(target, "_schema", None)
    if schema is None and isinstance(target, torch._ops.OpOverloadPacket):  # e.g. torchao's affine ops
        return target._qualified_op_name.replace("::", ".")
    return None if schema is None else schema.name.replace("::", ".")


def is_op(node: object, targets: Collection[Any]) -> bool:
    """True if ``node`` calls one of ``targets``: an exact overload, or any overload of a packet.

    ExecuTorch's edge-dialect ops are seen as the ATen ops they wrap.
    """
    if not isinstance(node, Node) or node.op != "call_function":
        return False
    target = node.target
    if target in targets:
        return True
    target = _unwrap(target)
    return target in targets or getattr(target, "overloadpacket", None) in targets


def node_arg(node: Node, index: int) -> Node:
    """``node.args[index]``, which the caller relies on being a graph node (FX types arguments loosely)."""
    arg = node.args[index]
    if not isinstance(arg, Node):
        raise TypeError(f"argument {index} of node '{node.name}' is {arg!r}, not a graph node")
    return arg


def optional_node_arg(node: Node, index: int) -> Optional[Node]:
    """``node.args[index]`` when it is a graph node; None when it is absent or None (an optional bias)."""
    arg = node.args[index] if index < len(node.args) else None
    return None if arg is None else node_arg(node, index)


def sole_user(node: object) -> Optional[Node]:
    """The only user of ``node``, or None when it has zero or several (or ``node`` is no graph node)."""
    return next(iter(node.users)) if isinstance(node, Node) and len(node.users) == 1 else None


def users_except_sym_size(node: Node) -> list[Node]:
    """The users of ``node`` that read its values (shape queries such as ``sym_size`` left out)."""
    return [u for u in node.users if not is_op(u, SYM_SIZE)]


def writes_first_argument(node: object) -> bool:
    """True if ``node`` calls an in-place op that writes its first argument (``index_put_``, ``copy_``,
    ``add_``, ``fill_``, ...), as its schema says."""
    if not isinstance(node, Node) or node.op != "call_function" or not node.args:
        return False
    schema = getattr(_unwrap(node.target), "_schema", None)
    if schema is None or not schema.arguments:
        return False
    alias = schema.arguments[0].alias_info
    return alias is not None and alias.is_write


def is_observer_node(node: object, gm: GraphModule) -> bool:
    """True if ``node`` calls an observer or fake quantizer that ``prepare_pt2e`` inserted into ``gm``."""
    return (
        isinstance(node, Node)
        and node.op == "call_module"
        and isinstance(node.target, str)
        and node.target.startswith(OBSERVER_PREFIX)
        and hasattr(gm, node.target)
    )


def _calls(node: object, name: str) -> bool:
    return isinstance(node, Node) and node.op == "call_function" and op_name(node.target) == name


def is_affine_quantize(node: object) -> bool:
    """A ``torchao.quantize_affine`` call."""
    return _calls(node, AFFINE_QUANTIZE)


def is_affine_dequantize(node: object) -> bool:
    """A ``torchao.dequantize_affine`` call."""
    return _calls(node, AFFINE_DEQUANTIZE)


def is_choose_qparams_affine(node: object) -> bool:
    """A ``torchao.choose_qparams_affine`` call (run-time qparams)."""
    return _calls(node, AFFINE_CHOOSE_QPARAMS)


def is_affine_qdq(node: object) -> bool:
    """Any of torchao's affine quantize, dequantize or choose-qparams calls."""
    return is_affine_quantize(node) or is_affine_dequantize(node) or is_choose_qparams_affine(node)
