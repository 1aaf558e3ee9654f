"""Operator annotators: small functions that write ``QuantizationAnnotation``s for one pattern.

Every annotator has the signature of :data:`Annotator`::

    annotator(gm, config, filter_fn=None) -> list of annotated partitions

and is registered by name (``"linear"``, ``"conv_relu"``, ``"add"``, ...) in
:data:`ANNOTATORS`; a quantizer is a list of names plus a ``QuantizationConfig``.
The names and the annotations they write are those of ExecuTorch's XNNPACK
quantizer, so graphs annotated here quantize the same way.

Conventions shared by all annotators:

* A pattern whose nodes already carry an annotation with ``_annotated=True`` is
  skipped, so the annotator (or quantizer) that runs first wins.
* ``filter_fn`` is asked about the pattern's *anchor*: the conv, linear, add,
  mul, cat or pool node. Fused followers (batch_norm, relu) go with their anchor,
  and weights/biases (``get_attr`` nodes, which carry no module stack) are not
  asked. A conv in module ``a`` followed by a ``relu`` in its parent is therefore
  one partition, owned by ``a``.
* Weight and bias nodes of an annotated pattern are marked ``_annotated``.

Where these differ from ExecuTorch's, on purpose: ``cat`` and the qparam
propagation honour ``filter_fn``; ``adaptive_avg_pool2d`` is matched by operator,
so the functional form counts too; a transposed conv kept with BatchNorm for QAT
has its weight quantized per output channel (axis 1), as without BatchNorm.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Optional

import torch
from torch.fx import GraphModule, Node

from pt2q.attrs import get_attr_value
from pt2q.pattern import CONV1D, CONV2D, CONV3D, CONV_TRANSPOSE, LINEAR, RELU, Step, find_chains, is_op
from pt2q.spec import (
    Q_ANNOTATION_KEY,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)

__all__ = [
    "Annotator",
    "FilterFn",
    "ANNOTATORS",
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
    "SHARE_QPARAMS_OPS",
    "CONV_OPS",
    "ADD_OPS",
    "MUL_OPS",
    "CAT_OPS",
    "ADAPTIVE_AVG_POOL2D_OPS",
]

FilterFn = Callable[[Node], bool]
Annotator = Callable[[GraphModule, Optional[QuantizationConfig], Optional[FilterFn]], list[list[Node]]]

ANNOTATORS: dict[str, Annotator] = {}

aten = torch.ops.aten
CONV_OPS = CONV1D | CONV2D | CONV3D
ADD_OPS = {aten.add.Tensor, aten.add_.Tensor}
MUL_OPS = {aten.mul.Tensor, aten.mul_.Tensor}
CAT_OPS = {aten.cat.default}
ADAPTIVE_AVG_POOL2D_OPS = {aten.adaptive_avg_pool2d.default}
BATCH_NORM_OPS = {aten.batch_norm.default}
# conv -> batch_norm is kept for QAT over 1-D and 2-D convolutions, keyed by "transposed"
_CONV_BN_OPS = {
    False: CONV1D | CONV2D,
    True: {aten.conv_transpose1d.default, aten.conv_transpose2d.input},
}

# Ops whose output keeps the quantization parameters of their (first) input:
# they move, select or clamp values without creating new ones.
SHARE_QPARAMS_OPS = frozenset(
    {
        aten.relu.default,
        aten.hardtanh.default,
        aten.hardtanh_.default,
        aten.max_pool2d.default,
        aten.mean.default,
        aten.mean.dim,
        aten.permute.default,
        aten.permute_copy.default,
        aten.transpose.int,
        aten.squeeze.dim,
        aten.squeeze_copy.dim,
        aten.adaptive_avg_pool2d.default,
        aten.view_copy.default,
        aten.view.default,
        aten.reshape.default,
        aten.slice.Tensor,
        aten.slice_copy.Tensor,
        aten.flatten.using_ints,
        aten.dropout.default,  # identity once deployed (eval)
        aten.dropout_.default,
    }
)

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


# --- reading a config ---------------------------------------------------------------


def get_input_act_qspec(config: Optional[QuantizationConfig]) -> Optional[QuantizationSpec]:
    return None if config is None else config.input_activation


def get_output_act_qspec(config: Optional[QuantizationConfig]) -> Optional[QuantizationSpec]:
    return None if config is None else config.output_activation


def get_weight_qspec(config: Optional[QuantizationConfig]) -> Optional[QuantizationSpec]:
    return None if config is None else config.weight


def get_bias_qspec(config: Optional[QuantizationConfig]) -> Optional[QuantizationSpecBase]:
    return None if config is None else config.bias


def is_dynamic_config(config: Optional[QuantizationConfig]) -> bool:
    """True when the config quantizes input activations dynamically (qparams chosen at run time)."""
    act = get_input_act_qspec(config)
    return bool(act is not None and getattr(act, "is_dynamic", False))


# --- marking nodes -----------------------------------------------------------------


def is_annotated(nodes: Iterable[Optional[Node]]) -> bool:
    """True if any of ``nodes`` was already claimed by a pattern (``_annotated=True``)."""
    for node in nodes:
        ann = node.meta.get(Q_ANNOTATION_KEY) if isinstance(node, Node) else None
        if ann is not None and ann._annotated:
            return True
    return False


def mark_annotated(nodes: Iterable[Optional[Node]]) -> None:
    """Claim ``nodes`` (adding an empty annotation where there is none)."""
    for node in nodes:
        if not isinstance(node, Node):
            continue
        ann = node.meta.setdefault(Q_ANNOTATION_KEY, QuantizationAnnotation())
        ann._annotated = True


def _annotate(
    node: Node,
    inputs: Optional[dict[Node, Optional[QuantizationSpecBase]]] = None,
    output: Optional[QuantizationSpecBase] = None,
) -> None:
    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
        input_qspec_map=dict(inputs or {}), output_qspec=output, _annotated=True
    )


def _accepts(filter_fn: Optional[FilterFn], anchor: Node) -> bool:
    return filter_fn is None or bool(filter_fn(anchor))


def _nodes(*maybe_nodes: object) -> list[Node]:
    return [n for n in maybe_nodes if isinstance(n, Node)]


def _arg(node: Node, index: int, default: object = None) -> object:
    return node.args[index] if len(node.args) > index else default


def _rank(node: object) -> Optional[int]:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else None


# --- linear ------------------------------------------------------------------------


def _conv_weight_qspec(config: Optional[QuantizationConfig], transposed: bool) -> Optional[QuantizationSpecBase]:
    """The weight spec; a transposed conv's weight is (in, out/groups, ...): its channel axis is 1."""
    spec = get_weight_qspec(config)
    if transposed and isinstance(spec, QuantizationSpec):
        spec = dataclasses.replace(spec, ch_axis=1)
    return spec


def _weighted_inputs(
    op: Node, config: Optional[QuantizationConfig], transposed: bool = False
) -> tuple[dict[Node, Optional[QuantizationSpecBase]], list[Node]]:
    """Input specs of a conv/linear ``op(input, weight, bias)`` and its weight/bias nodes."""
    act, weight, bias = op.args[0], op.args[1], _arg(op, 2)
    inputs: dict[Node, Optional[QuantizationSpecBase]] = {}
    if isinstance(act, Node):
        inputs[act] = get_input_act_qspec(config)
    if isinstance(weight, Node):
        inputs[weight] = _conv_weight_qspec(config, transposed)
    if isinstance(bias, Node):
        inputs[bias] = get_bias_qspec(config)
    return inputs, _nodes(weight, bias)


@register_annotator("linear")
def annotate_linear(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``linear``: input, weight and bias specs on the edges, output spec on the result."""
    partitions = []
    for node in list(gm.graph.nodes):
        if not is_op(node, LINEAR) or not _accepts(filter_fn, node) or is_annotated([node]):
            continue
        inputs, params = _weighted_inputs(node, config)
        _annotate(node, inputs, get_output_act_qspec(config))
        mark_annotated(params)
        partitions.append([node, *params])
    return partitions


@register_annotator("linear_relu")
def annotate_linear_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``linear -> relu``: linear's inputs as in ``"linear"``, the output spec on the relu."""
    partitions = []
    for linear, relu in find_chains(gm, [LINEAR, RELU]):
        inputs, params = _weighted_inputs(linear, config)
        partition = [relu, linear, *params]
        if is_annotated(partition) or not _accepts(filter_fn, linear):
            continue
        _annotate(linear, inputs)
        _annotate(relu, output=get_output_act_qspec(config))
        mark_annotated(params)
        partitions.append(partition)
    return partitions


# --- convolution -------------------------------------------------------------------


def _conv_transpose_groups(conv: Node) -> int:
    # conv_transposeNd(input, weight, bias, stride, padding, output_padding, groups, dilation)
    groups = _arg(conv, 6, conv.kwargs.get("groups", 1))
    return int(groups) if isinstance(groups, int) else 1


def _conv_ops(transposed: bool) -> Step:
    return CONV_TRANSPOSE if transposed else CONV_OPS


def _annotate_conv(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn], transposed: bool
) -> list[list[Node]]:
    dynamic = is_dynamic_config(config)
    partitions = []
    for conv in list(gm.graph.nodes):
        if not is_op(conv, _conv_ops(transposed)):
            continue
        if len(conv.users) == 1 and is_op(next(iter(conv.users)), RELU):
            continue  # left to "conv_relu", even when that one does not run
        inputs, params = _weighted_inputs(conv, config, transposed)
        partition = [conv, *params]
        if is_annotated(partition) or not _accepts(filter_fn, conv):
            continue
        if transposed and _conv_transpose_groups(conv) != 1:
            continue  # XNNPACK runs grouped transposed convs in float
        if dynamic and not _dynamic_conv_supported(conv, transposed):
            continue
        _annotate(conv, inputs, get_output_act_qspec(config))
        mark_annotated(params)
        partitions.append(partition)
    return partitions


def _dynamic_conv_supported(conv: Node, transposed: bool) -> bool:
    """Dynamically quantized convs must be 2-D, and not have a single input channel per group."""
    weight = conv.args[1]
    rank = _rank(weight)
    if rank is not None and rank != 4:
        return False
    if not transposed and rank is not None and weight.meta["val"].shape[1] == 1:
        return False
    return True


def _annotate_conv_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn], transposed: bool
) -> list[list[Node]]:
    partitions = []
    for conv, relu in find_chains(gm, [_conv_ops(transposed), RELU]):
        inputs, params = _weighted_inputs(conv, config, transposed)
        partition = [relu, conv, *params]
        if is_annotated(partition) or not _accepts(filter_fn, conv):
            continue
        if transposed and _conv_transpose_groups(conv) != 1:
            continue
        _annotate(conv, inputs)
        _annotate(relu, output=get_output_act_qspec(config))
        mark_annotated(params)
        partitions.append(partition)
    return partitions


def _annotate_conv_bn(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn], transposed: bool, relu: bool
) -> list[list[Node]]:
    """``conv -> batch_norm [-> relu]``, left unfused for QAT: the conv's inputs and the pattern's output."""
    steps: list[Step] = [_CONV_BN_OPS[transposed], BATCH_NORM_OPS] + ([RELU] if relu else [])
    partitions = []
    for chain in find_chains(gm, steps):
        conv, out = chain[0], chain[-1]
        inputs, params = _weighted_inputs(conv, config, transposed)
        partition = [conv, *params]
        if is_annotated(partition) or not _accepts(filter_fn, conv):
            continue
        _annotate(conv, inputs)
        _annotate(out, output=get_output_act_qspec(config))
        mark_annotated(params)
        partitions.append(partition)
    return partitions


@register_annotator("conv")
def annotate_conv(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``conv{1,2,3}d`` not followed by a relu: input, weight, bias and output specs."""
    return _annotate_conv(gm, config, filter_fn, transposed=False)


@register_annotator("conv_relu")
def annotate_conv_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``conv -> relu``: conv inputs, the output spec on the relu."""
    return _annotate_conv_relu(gm, config, filter_fn, transposed=False)


@register_annotator("conv_bn")
def annotate_conv_bn(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``conv -> batch_norm`` (QAT): conv inputs, the output spec on the batch_norm."""
    return _annotate_conv_bn(gm, config, filter_fn, transposed=False, relu=False)


@register_annotator("conv_bn_relu")
def annotate_conv_bn_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``conv -> batch_norm -> relu`` (QAT): conv inputs, the output spec on the relu."""
    return _annotate_conv_bn(gm, config, filter_fn, transposed=False, relu=True)


@register_annotator("conv_transpose")
def annotate_conv_transpose(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``conv_transpose{1,2,3}d`` (one group) not followed by a relu."""
    return _annotate_conv(gm, config, filter_fn, transposed=True)


@register_annotator("conv_transpose_relu")
def annotate_conv_transpose_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``conv_transpose -> relu`` (one group)."""
    return _annotate_conv_relu(gm, config, filter_fn, transposed=True)


@register_annotator("conv_transpose_bn")
def annotate_conv_transpose_bn(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``conv_transpose -> batch_norm`` (QAT)."""
    return _annotate_conv_bn(gm, config, filter_fn, transposed=True, relu=False)


@register_annotator("conv_transpose_bn_relu")
def annotate_conv_transpose_bn_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``conv_transpose -> batch_norm -> relu`` (QAT)."""
    return _annotate_conv_bn(gm, config, filter_fn, transposed=True, relu=True)


# --- add / mul ---------------------------------------------------------------------


def _is_float32_tensor(node: Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype == torch.float32


def _is_large_scalar(gm: GraphModule, node: Node) -> bool:
    if node.op != "get_attr":
        return False
    value = get_attr_value(gm, str(node.target))
    return value.numel() == 1 and abs(value.item()) > _HISTC_UPPER_BOUND


def _binary_inputs(
    gm: GraphModule, op: Node, config: Optional[QuantizationConfig]
) -> Optional[dict[Node, Optional[QuantizationSpecBase]]]:
    """Specs for the tensor operands of add/mul, or None if one cannot be observed."""
    inputs: dict[Node, Optional[QuantizationSpecBase]] = {}
    for arg in op.args[:2]:
        if not isinstance(arg, Node):
            continue  # a Python scalar
        if _is_large_scalar(gm, arg) or not _is_float32_tensor(arg):
            return None
        inputs[arg] = get_input_act_qspec(config)
    return inputs


def _annotate_binary(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn], ops: Step
) -> list[list[Node]]:
    partitions = []
    for node in list(gm.graph.nodes):
        if not is_op(node, ops) or is_annotated([node]) or not _accepts(filter_fn, node):
            continue
        inputs = _binary_inputs(gm, node, config)
        if inputs is None:
            continue
        _annotate(node, inputs, get_output_act_qspec(config))
        partitions.append([node, *inputs])
    return partitions


def _annotate_binary_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn], ops: Step
) -> list[list[Node]]:
    partitions = []
    for op, relu in find_chains(gm, [ops, RELU]):
        if is_annotated([relu, op]) or not _accepts(filter_fn, op):
            continue
        inputs = _binary_inputs(gm, op, config)
        if inputs is None:
            continue
        _annotate(op, inputs)
        _annotate(relu, output=get_output_act_qspec(config))
        partitions.append([relu, op, *inputs])
    return partitions


@register_annotator("add")
def annotate_add(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``add``: both float32 tensor operands and the output (skipped if an operand is not float32)."""
    return _annotate_binary(gm, config, filter_fn, ADD_OPS)


@register_annotator("add_relu")
def annotate_add_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``add -> relu``: the add's operands, the output spec on the relu."""
    return _annotate_binary_relu(gm, config, filter_fn, ADD_OPS)


@register_annotator("mul")
def annotate_mul(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``mul``: both float32 tensor operands and the output."""
    return _annotate_binary(gm, config, filter_fn, MUL_OPS)


@register_annotator("mul_relu")
def annotate_mul_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``mul -> relu``: the mul's operands, the output spec on the relu."""
    return _annotate_binary_relu(gm, config, filter_fn, MUL_OPS)


# --- ops whose output shares its input's qparams ------------------------------------


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


@register_annotator("cat")
def annotate_cat(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``cat``: all inputs and the output share one set of qparams.

    The group is rooted at the first input already known to be quantized (else
    the first input), which gets the config's input spec.
    """
    partitions = []
    for cat in list(gm.graph.nodes):
        if not is_op(cat, CAT_OPS) or is_annotated([cat]) or not _accepts(filter_fn, cat):
            continue
        tensors = list(cat.args[0])
        source = next((t for t in tensors if isinstance(t, Node) and _traces_to_annotated_output(t)), tensors[0])
        shared = SharedQuantizationSpec((source, cat))
        inputs: dict[Node, Optional[QuantizationSpecBase]] = {source: get_input_act_qspec(config)}
        for t in tensors:
            inputs.setdefault(t, shared)
        _annotate(cat, inputs, shared)
        partitions.append(list(cat.all_input_nodes))
    return partitions


@register_annotator("adaptive_avg_pool2d")
def annotate_adaptive_avg_pool2d(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``adaptive_avg_pool2d``: output shares the input's qparams.

    The input edge shares its producer's output spec when that is annotated, and
    gets the config's input spec otherwise.
    """
    partitions = []
    for pool in list(gm.graph.nodes):
        if not is_op(pool, ADAPTIVE_AVG_POOL2D_OPS) or is_annotated([pool]) or not _accepts(filter_fn, pool):
            continue
        act = pool.args[0]
        if not isinstance(act, Node):
            continue
        act_qspec = SharedQuantizationSpec(act) if _has_annotated_output(act) else get_input_act_qspec(config)
        _annotate(pool, {act: act_qspec}, SharedQuantizationSpec((act, pool)))
        partitions.append([pool])
    return partitions


def propagate_annotation(gm: GraphModule, filter_fn: Optional[FilterFn] = None) -> list[list[Node]]:
    """Let qparam-sharing ops (relu, view, max_pool2d, ...) share the qparams of their quantized input.

    Walks the graph in order, so chains of such ops all join their producer's
    group. Run it after the other annotators.
    """
    partitions = []
    for node in list(gm.graph.nodes):
        if not is_op(node, SHARE_QPARAMS_OPS) or not node.args or not isinstance(node.args[0], Node):
            continue
        producer = node.args[0]
        ann = producer.meta.get(Q_ANNOTATION_KEY)
        if ann is None or ann.output_qspec is None or is_annotated([node]) or not _accepts(filter_fn, node):
            continue
        shared = SharedQuantizationSpec(producer)
        _annotate(node, {producer: shared}, shared)
        partitions.append([node])
    return partitions


@register_annotator("propagate_annotation")
def _propagate_annotation(
    gm: GraphModule, config: Optional[QuantizationConfig] = None, filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """:func:`propagate_annotation` under the common annotator signature (``config`` is unused)."""
    return propagate_annotation(gm, filter_fn)
