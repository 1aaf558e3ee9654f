"""The shared operator annotators: a table of pattern rows plus the few that need code.

Every annotator has the signature of :data:`Annotator`::

    annotator(gm, config, filter_fn=None) -> list of annotated partitions

and is registered by name (``"linear"``, ``"conv_relu"``, ``"add"``, ...) in
:data:`ANNOTATORS`. Most are rows of :data:`PATTERNS` (:class:`~pt2q.quantizers.patterns.Pattern`
records applied by :func:`~pt2q.quantizers.patterns.annotate_pattern`); ``cat``,
``adaptive_avg_pool2d`` and ``propagate_annotation`` are written out. The names and the
annotations they write are those of ExecuTorch's XNNPACK quantizer, so graphs annotated
here quantize the same way. A quantizer is a list of rows (or names) plus a
``QuantizationConfig``; see :mod:`pt2q.quantizers.annotation` for the conventions
(claiming, filters on the anchor).

Where these differ from ExecuTorch's, on purpose: ``cat`` and the qparam propagation
honour ``filter_fn``; ``adaptive_avg_pool2d`` is matched by operator, so the functional
form counts too; a transposed conv kept with BatchNorm for QAT has its weight quantized
per output channel (axis 1), as without BatchNorm.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any, Optional, cast

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import get_attr_value
from pt2q.core.ops import (
    ADAPTIVE_AVG_POOL2D,
    ADD,
    BATCH_NORM,
    CAT,
    CONV1D,
    CONV2D,
    CONV3D,
    CONV_TRANSPOSE,
    CONV_TRANSPOSE1D,
    CONV_TRANSPOSE2D,
    GRU,
    LINEAR,
    MUL,
    RELU,
    SHARE_QPARAMS_OPS,
    is_op,
    node_arg,
    sole_user,
)
from pt2q.core.spec import Q_ANNOTATION_KEY, QuantizationConfig, SharedQuantizationSpec
from pt2q.quantizers.annotation import (
    Annotator,
    FilterFn,
    InputSpecs,
    accepts,
    annotate_node,
    claim,
    get_bias_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    get_weight_qspec,
    is_annotated,
    is_dynamic_config,
    mark_annotated,
    tensor_rank,
)
from pt2q.quantizers.patterns import Pattern, annotate_pattern

__all__ = [
    "Annotator",
    "FilterFn",
    "ANNOTATORS",
    "PATTERNS",
    "register_annotator",
    "get_annotator",
    "get_input_act_qspec",
    "get_output_act_qspec",
    "get_weight_qspec",
    "get_bias_qspec",
    "is_dynamic_config",
    "is_annotated",
    "mark_annotated",
    "propagate_annotation",
    "annotate_cat_node",
    "annotate_pool_node",
    "float_operands",
    "not_before_relu",
    "single_group",
    "GRU_IO_ONLY",
    "annotate_gru_io",
]

ANNOTATORS: dict[str, Annotator] = {}

# histc, which HistogramObserver relies on, fails past this magnitude
_HISTC_UPPER_BOUND = 3.4028235e15


def register_annotator(name: str) -> Callable[[Annotator], Annotator]:
    """Register an annotator under ``name`` (replacing any previous one) and return it unchanged."""

    def decorator(fn: Annotator) -> Annotator:
        ANNOTATORS[name] = fn
        return fn

    return decorator


def get_annotator(name: str) -> Annotator:
    """The annotator registered under ``name``."""
    try:
        return ANNOTATORS[name]
    except KeyError:
        raise KeyError(f"no annotator named {name!r}; known: {sorted(ANNOTATORS)}") from None


# --- guards of the shared rows ------------------------------------------------------------


def not_before_relu(gm: GraphModule, match: tuple[Node, ...], config: Optional[QuantizationConfig]) -> bool:
    """The match's last node is not followed by a relu (that is left to the ``*_relu`` row, run or not)."""
    return not is_op(sole_user(match[-1]), RELU)


def single_group(gm: GraphModule, match: tuple[Node, ...], config: Optional[QuantizationConfig]) -> bool:
    """A transposed conv has one group: XNNPACK runs grouped transposed convs in float."""
    conv = match[0]
    # conv_transposeNd(input, weight, bias, stride, padding, output_padding, groups, dilation)
    groups = conv.args[6] if len(conv.args) > 6 else conv.kwargs.get("groups", 1)
    return not isinstance(groups, int) or groups == 1


def _dynamic_conv_supported(gm: GraphModule, match: tuple[Node, ...], config: Optional[QuantizationConfig]) -> bool:
    """Dynamically quantized convs must be 2-D, and not have a single input channel per group."""
    if not is_dynamic_config(config):
        return True
    weight = node_arg(match[0], 1)
    rank = tensor_rank(weight)
    if rank is not None and rank != 4:
        return False
    return is_op(match[0], CONV_TRANSPOSE) or rank is None or weight.meta["val"].shape[1] != 1


def _all(*guards: Callable[[GraphModule, tuple[Node, ...], Optional[QuantizationConfig]], bool]):
    return lambda gm, match, config: all(g(gm, match, config) for g in guards)


def float_operands(gm: GraphModule, match: tuple[Node, ...], config: Optional[QuantizationConfig]) -> bool:
    """Every tensor operand of the binary op is a float32 tensor an observer can take (not a huge constant)."""
    for arg in match[0].args[:2]:
        if not isinstance(arg, Node):
            continue  # a Python scalar
        val = arg.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.dtype != torch.float32:
            return False
        if arg.op == "get_attr":
            value = get_attr_value(gm, str(arg.target))
            if value.numel() == 1 and abs(value.item()) > _HISTC_UPPER_BOUND:
                return False
    return True


# --- cat and pooling: outputs that share their input's qparams ----------------------------


def _has_annotated_output(node: Node) -> bool:
    ann = node.meta.get(Q_ANNOTATION_KEY)
    return ann is not None and ann._annotated and ann.output_qspec is not None


def _traces_to_annotated_output(node: Node) -> bool:
    """True if ``node``, or what it views/selects through qparam-sharing ops, has an output spec."""
    seen: set[Node] = set()
    while node not in seen:
        seen.add(node)
        if _has_annotated_output(node):
            return True
        if not is_op(node, SHARE_QPARAMS_OPS) or not node.args or not isinstance(node.args[0], Node):
            return False
        node = node.args[0]
    return False


def annotate_cat_node(cat: Node, config: Optional[QuantizationConfig]) -> list[Node]:
    """``cat``: all inputs and the output share one set of qparams.

    The group is rooted at the first input already known to be quantized (else the
    first input), which gets the config's input spec.
    """
    tensors = [t for t in cast(Sequence[Any], cat.args[0]) if isinstance(t, Node)]
    source = next((t for t in tensors if _traces_to_annotated_output(t)), tensors[0])
    shared = SharedQuantizationSpec((source, cat))
    inputs: InputSpecs = {source: get_input_act_qspec(config)}
    for t in tensors:
        inputs.setdefault(t, shared)
    annotate_node(cat, inputs, shared)
    return list(cat.all_input_nodes)


def annotate_pool_node(pool: Node, config: Optional[QuantizationConfig]) -> list[Node]:
    """A pooling op whose output shares its input's qparams.

    The input edge shares its producer's output spec when that is annotated, and gets
    the config's input spec otherwise.
    """
    act = node_arg(pool, 0)
    act_qspec = SharedQuantizationSpec(act) if _has_annotated_output(act) else get_input_act_qspec(config)
    annotate_node(pool, {act: act_qspec}, SharedQuantizationSpec((act, pool)))
    return [pool]


def _has_tensor_input(gm: GraphModule, match: tuple[Node, ...], config: Optional[QuantizationConfig]) -> bool:
    return isinstance(match[0].args[0], Node)


# --- the table ----------------------------------------------------------------------------

_CONV = CONV1D | CONV2D | CONV3D
_CONV_T_BN = CONV_TRANSPOSE1D | CONV_TRANSPOSE2D  # transposed convs whose BatchNorm QAT keeps

# In ExecuTorch's precedence order: a row claims its nodes before the rows after it see them.
# Static configs run every row; dynamic ones the ``dynamic`` rows (and ``qat_only`` rows for dynamic QAT).
PATTERNS: tuple[Pattern, ...] = (
    Pattern("conv_bn_relu", (CONV1D | CONV2D, BATCH_NORM, RELU), weighted=0, qat_only=True, claim_chain=False),
    Pattern("conv_bn", (CONV1D | CONV2D, BATCH_NORM), weighted=0, qat_only=True),
    Pattern("conv_transpose_bn_relu", (_CONV_T_BN, BATCH_NORM, RELU), weighted=0, qat_only=True, claim_chain=False),
    Pattern("conv_transpose_bn", (_CONV_T_BN, BATCH_NORM), weighted=0, qat_only=True),
    Pattern("linear_relu", (LINEAR, RELU), weighted=0),
    Pattern("linear", (LINEAR,), weighted=0, dynamic=True, params_exclusive=False),
    Pattern("conv", (_CONV,), weighted=0, dynamic=True, guard=_all(not_before_relu, _dynamic_conv_supported)),
    Pattern(
        "conv_transpose",
        (CONV_TRANSPOSE,),
        weighted=0,
        dynamic=True,
        guard=_all(not_before_relu, single_group, _dynamic_conv_supported),
    ),
    Pattern("conv_relu", (_CONV, RELU), weighted=0),
    Pattern("conv_transpose_relu", (CONV_TRANSPOSE, RELU), weighted=0, guard=single_group),
    Pattern("adaptive_avg_pool2d", (ADAPTIVE_AVG_POOL2D,), guard=_has_tensor_input, annotate=annotate_pool_node),
    Pattern("add_relu", (ADD, RELU), operands=0, guard=float_operands),
    Pattern("add", (ADD,), operands=0, guard=float_operands),
    Pattern("mul_relu", (MUL, RELU), operands=0, guard=float_operands),
    Pattern("mul", (MUL,), operands=0, guard=float_operands),
    Pattern("cat", (CAT,), annotate=annotate_cat_node),
)


def _register_row(pattern: Pattern) -> None:
    def annotate(gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None):
        return annotate_pattern(gm, pattern, config, filter_fn)

    annotate.__doc__ = f"The ``{pattern.name}`` row of the shared table, as an annotator."
    ANNOTATORS[pattern.name] = annotate


def annotate_gru_io(gru: Node, config: Optional[QuantizationConfig]) -> list[Node]:
    """A fused ``aten.gru``: its input sequence and initial hidden state get the input spec, its two outputs
    (the ``getitem``s of the output sequence and final hidden state) the output spec; the cell stays float."""
    inputs: InputSpecs = {a: get_input_act_qspec(config) for a in gru.args[:2] if isinstance(a, Node)}
    annotate_node(gru, inputs)
    outputs = [u for u in gru.users if u.target is operator.getitem]
    for out in outputs:
        annotate_node(out, None, get_output_act_qspec(config))
    return [gru, *outputs]


# ExecuTorch registers it but its XNNPACKQuantizer does not run it: a row of its own, outside PATTERNS.
# (ExecuTorch's annotator writes the sequence's spec and then overwrites it with the hidden state's,
# so only the hidden state is quantized there; here both inputs are.)
GRU_IO_ONLY = Pattern("gru_io_only", (GRU,), guard=_has_tensor_input, annotate=annotate_gru_io)

for _row in (*PATTERNS, GRU_IO_ONLY):
    _register_row(_row)


def propagate_annotation(model: GraphModule, filter_fn: Optional[FilterFn] = None) -> list[list[Node]]:
    """Let qparam-sharing ops (relu, view, max_pool2d, ...) share the qparams of their quantized input.

    Walks the graph in order, so chains of such ops all join their producer's group.
    Run it after the other annotators.
    """
    partitions = []
    for node in list(model.graph.nodes):
        if not is_op(node, SHARE_QPARAMS_OPS) or not node.args or not isinstance(node.args[0], Node):
            continue
        producer = node.args[0]
        ann = producer.meta.get(Q_ANNOTATION_KEY)
        if ann is None or ann.output_qspec is None or is_annotated([node]) or not accepts(filter_fn, node):
            continue
        shared = SharedQuantizationSpec(producer)
        annotate_node(node, {producer: shared}, shared)
        claim([node], "propagate_annotation", node)
        partitions.append([node])
    return partitions


@register_annotator("propagate_annotation")
def _propagate_annotation(
    gm: GraphModule, config: Optional[QuantizationConfig] = None, filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """:func:`propagate_annotation` under the common annotator signature (``config`` is unused)."""
    return propagate_annotation(gm, filter_fn)
