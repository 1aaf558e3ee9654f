"""Conv + BatchNorm for quantization-aware training: simulated folding, then real folding.

During QAT the BatchNorm keeps training, but the weight the backend will run is
the BN-folded one, so that is the weight to fake-quantize. ``prepare_qat_pt2e``
rewrites each annotated ``conv -> batch_norm`` into::

    scale  = bn.weight / sqrt(bn.running_var + eps)
    y      = conv(x, fake_quant(conv.weight * scale), zeros)   # observer on this weight edge
    y      = y / scale + conv.bias
    out    = batch_norm(y, ...)                                # still trains its statistics

``convert_pt2e`` then folds the trained BN for good: with running statistics,
``batch_norm(conv(x, w*scale)/scale + b)`` equals ``conv(x, w*scale) + b'`` where
``b' = (b - mean) * scale + beta``; the quantized ``w*scale`` is already in place.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, cast

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import constant_attr, get_attr_value, set_new_attr
from pt2q.core.dead_code import erase_with_dead_inputs
from pt2q.core.notes import copy_provenance, mark_value_of
from pt2q.core.ops import (
    ANY_DEQUANTIZE,
    ANY_QUANTIZE,
    BATCH_NORM,
    CONV,
    CONV_TRANSPOSE,
    is_op,
    node_arg,
    optional_node_arg,
)
from pt2q.core.pattern import find_chains, match_chain
from pt2q.core.spec import Q_ANNOTATION_KEY, DerivedQuantizationSpec, SharedQuantizationSpec

__all__ = ["simulate_conv_bn_folding", "fold_trained_conv_bn"]

aten = torch.ops.aten
# batch_norm.default(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
_BN_EPS = 7


def _arg(node: Node, index: int, default: object) -> object:
    return node.args[index] if len(node.args) > index else default


def _is_transposed(conv: Node) -> bool:
    # aten.convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding, groups)
    return conv.target in CONV_TRANSPOSE or (conv.target == aten.convolution.default and bool(_arg(conv, 6, False)))


def _groups(conv: Node) -> object:
    if conv.target == aten.convolution.default:
        return _arg(conv, 8, 1)
    # conv_transposeNd(input, weight, bias, stride, padding, output_padding, groups, dilation)
    # convNd(input, weight, bias, stride, padding, dilation, groups)
    return _arg(conv, 6, 1)


def _channel_shape(conv: Node, weight_rank: int, for_weight: bool) -> list[int]:
    shape = [1] * weight_rank
    # output channels: dim 0 of a conv weight, dim 1 of a transposed conv weight and of activations
    shape[1 if (_is_transposed(conv) or not for_weight) else 0] = -1
    return shape


def _remap_specs(gm: GraphModule, old: tuple[Node, Node], new: tuple[Node, Node]) -> None:
    """Point shared/derived specs that named edge ``old`` at ``new``."""

    def fix(spec):
        if isinstance(spec, SharedQuantizationSpec) and spec.edge_or_node == old:
            return SharedQuantizationSpec(new)
        if isinstance(spec, DerivedQuantizationSpec) and old in spec.derived_from:
            return dataclasses.replace(spec, derived_from=[new if e == old else e for e in spec.derived_from])
        return spec

    for node in gm.graph.nodes:
        ann = node.meta.get(Q_ANNOTATION_KEY)
        if ann is not None:
            ann.input_qspec_map = {k: fix(v) for k, v in ann.input_qspec_map.items()}
            ann.output_qspec = fix(ann.output_qspec)


def _simulate_one(gm: GraphModule, conv: Node, bn: Node) -> None:
    g = gm.graph
    weight, bias = node_arg(conv, 1), optional_node_arg(conv, 2)
    bn_weight, bn_var, eps = bn.args[1], bn.args[4], bn.args[_BN_EPS]
    rank = weight.meta["val"].dim() if "val" in weight.meta else get_attr_value(gm, str(weight.target)).dim()

    def op(target: Any, *args: Any) -> Node:
        """A node of the simulated folding: it computes part of the conv, so it carries the conv's provenance."""
        return copy_provenance(g.call_function(target, args), conv)

    with g.inserting_before(conv):
        std = op(aten.sqrt.default, op(aten.add.Tensor, bn_var, eps))
        scale = op(aten.reciprocal.default, std) if bn_weight is None else op(aten.div.Tensor, bn_weight, std)
        w_scale = op(aten.reshape.default, scale, _channel_shape(conv, rank, True))
        scaled_weight = op(aten.mul.Tensor, weight, w_scale)
        zero_bias = None if bias is None else op(aten.zeros_like.default, bias)
    conv.args = (conv.args[0], scaled_weight, zero_bias, *conv.args[3:])
    with g.inserting_after(conv):
        y_scale = op(aten.reshape.default, scale, _channel_shape(conv, rank, False))
    with g.inserting_after(y_scale):
        y = op(aten.div.Tensor, conv, y_scale)
    if bias is not None:
        with g.inserting_after(y):
            b = op(aten.reshape.default, bias, _channel_shape(conv, rank, False))
        with g.inserting_after(b):
            y = op(aten.add.Tensor, y, b)
    bn.replace_input_with(conv, y)
    ann = conv.meta.get(Q_ANNOTATION_KEY)
    if ann is not None:
        moves = {weight: scaled_weight}
        if bias is not None and zero_bias is not None:
            moves[bias] = zero_bias
        ann.input_qspec_map = {moves.get(k, k): v for k, v in ann.input_qspec_map.items()}
        for old, new in moves.items():
            _remap_specs(gm, (old, conv), (new, conv))


def simulate_conv_bn_folding(gm: GraphModule) -> GraphModule:
    """Rewrite every ``conv -> batch_norm`` with a constant weight for QAT (in place).

    A grouped transposed conv is left as it is (its weight holds out_channels/groups
    output channels per group, so the BN scale does not map onto one weight axis);
    its BatchNorm then stays in the converted graph.
    """
    for conv, bn in list(find_chains(gm, [CONV | CONV_TRANSPOSE, BATCH_NORM])):
        if _is_transposed(conv) and _groups(conv) != 1:
            continue
        if isinstance(conv.args[1], Node) and conv.args[1].op == "get_attr":
            _simulate_one(gm, conv, bn)
    gm.recompile()
    return gm


def _divides_by_bn_scale(div: Node, bn: Node) -> bool:
    """Whether ``div`` is the ``y / reshape(scale)`` that ``_simulate_one`` built for ``bn``."""
    divisor = div.args[1]
    if not isinstance(divisor, Node) or not is_op(divisor, {aten.reshape.default}):
        return False
    scale = divisor.args[0]
    if isinstance(scale, Node) and is_op(scale, {aten.reciprocal.default}):
        std = scale.args[0]
    elif isinstance(scale, Node) and is_op(scale, {aten.div.Tensor}) and scale.args[0] is bn.args[1]:
        std = scale.args[1]
    else:
        return False
    if not isinstance(std, Node) or not is_op(std, {aten.sqrt.default}):
        return False
    added = std.args[0]
    return isinstance(added, Node) and is_op(added, {aten.add.Tensor}) and added.args[0] is bn.args[4]


def _batch_counter(gm: GraphModule, bn: Node) -> Optional[Node]:
    """The ``add_(<bn>.num_batches_tracked, 1)`` export emits next to a training BatchNorm."""
    mean = bn.args[3]
    if not (isinstance(mean, Node) and mean.op == "get_attr" and str(mean.target).endswith("running_mean")):
        return None
    counter = str(mean.target)[: -len("running_mean")] + "num_batches_tracked"
    for node in gm.graph.nodes:
        if (
            is_op(node, {aten.add_.Tensor})
            and isinstance(node.args[0], Node)
            and node.args[0].op == "get_attr"
            and node.args[0].target == counter
        ):
            return node
    return None


def _quantized_like(gm: GraphModule, conv: Node, bias: Node, training_bias: object) -> Node:
    """``bias``, quantized as the quantizer asked for the training bias (e.g. int32 with act_scale * w_scale:
    the quantize -> dequantize on it), or as it is when the training bias was float."""
    dq = training_bias if is_op(training_bias, ANY_DEQUANTIZE) else None
    q = dq.args[0] if isinstance(dq, Node) else None
    if not isinstance(dq, Node) or not isinstance(q, Node) or not is_op(q, ANY_QUANTIZE):
        return bias
    with gm.graph.inserting_before(conv):
        new_q = gm.graph.call_function(q.target, (bias, *q.args[1:]), dict(q.kwargs))  # type: ignore[arg-type]
        new_dq = gm.graph.call_function(dq.target, (new_q, *dq.args[1:]), dict(dq.kwargs))  # type: ignore[arg-type]
    for new, old in ((new_q, q), (new_dq, dq)):
        copy_provenance(new, old)
        new.meta.update({k: v for k, v in old.meta.items() if k not in new.meta and k != "val"})
    return new_dq


def fold_trained_conv_bn(gm: GraphModule) -> GraphModule:
    """Fold the BatchNorm of each simulated-folding subgraph whose conv weight is quantized into the conv's
    bias (in place).

    The BatchNorm's batch counter goes too, and so does the zero bias the conv
    ran with during training.
    """
    for conv in list(gm.graph.nodes):
        if not is_op(conv, CONV | CONV_TRANSPOSE):
            continue
        chain = match_chain(
            conv, [CONV | CONV_TRANSPOSE, {aten.div.Tensor}, {aten.add.Tensor}, BATCH_NORM]
        ) or match_chain(conv, [CONV | CONV_TRANSPOSE, {aten.div.Tensor}, BATCH_NORM])
        if chain is None or not _divides_by_bn_scale(chain[1], chain[-1]):
            continue
        if not is_op(optional_node_arg(conv, 1), ANY_DEQUANTIZE):
            continue  # a float weight keeps the training form, as in torchao (same numbers, bit for bit)
        bn = chain[-1]
        bias_node = node_arg(node_arg(chain[2], 1), 0) if len(chain) == 4 else None  # add(y, reshape(bias))
        bn_w, bn_b, mean, var = (constant_attr(gm, a) for a in bn.args[1:5])
        if mean is None or var is None:
            continue
        scale = (bn_w if bn_w is not None else torch.ones_like(var)) / torch.sqrt(var + cast(float, bn.args[_BN_EPS]))
        bias = constant_attr(gm, bias_node) if bias_node is not None else torch.zeros_like(mean)
        if bias is None:
            continue  # a computed bias: nothing constant to fold into, the BatchNorm stays
        beta = bn_b if bn_b is not None else torch.zeros_like(mean)
        folded_bias = ((bias - mean) * scale + beta).detach()
        with gm.graph.inserting_before(conv):
            bias_attr = gm.graph.get_attr(set_new_attr(gm, "_folded_bn_bias_", folded_bias, parameter=True))
        for key in ("source_fn_stack", "nn_module_stack", "stack_trace"):  # one partition with its conv
            if key in conv.meta:
                bias_attr.meta[key] = conv.meta[key]
        args = list(conv.args) + [None] * max(0, 3 - len(conv.args))
        training_bias, args[2] = args[2], _quantized_like(gm, conv, bias_attr, args[2])
        conv.args = tuple(args)
        mark_value_of(conv, bn)
        bn.replace_all_uses_with(conv)
        counter = _batch_counter(gm, bn)
        # erasing the BatchNorm frees the div/add above it, and the new bias frees the zero bias
        erase_with_dead_inputs(gm, [bn] + ([counter] if counter is not None else []))
        if isinstance(training_bias, Node):
            erase_with_dead_inputs(gm, [training_bias])
    gm.recompile()
    return gm
