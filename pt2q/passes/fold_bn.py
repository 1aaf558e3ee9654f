"""Fold eval-mode BatchNorm into the convolution or linear layer that feeds it."""

from __future__ import annotations

import operator
from typing import cast

import torch
from torch import nn
from torch.fx import GraphModule, Node
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

from pt2q.core.attrs import constant_attr, remove_unused_attributes, set_new_attr
from pt2q.core.notes import mark_value_of
from pt2q.core.ops import BATCH_NORM, BATCH_NORM_NO_TRAINING, CONV, CONV_TRANSPOSE, LINEAR, is_op
from pt2q.core.pattern import find_chains

__all__ = ["fold_bn", "BatchNormInTrainingMode"]

# batch_norm.default(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
_TRAINING, _EPS = 5, 7
# _native_batch_norm_legit_no_training(input, weight, bias, running_mean, running_var, momentum, eps) -> 3 outputs
_EPS_NO_TRAINING = 6


class BatchNormInTrainingMode(ValueError):
    """Post-training quantization met a BatchNorm that still updates its statistics."""


def _write_weight(gm: GraphModule, op: Node, index: int, value: torch.Tensor, prefix: str) -> None:
    """Store ``value`` as ``op.args[index]``: in place if the old attribute is ``op``'s alone."""
    old = op.args[index] if len(op.args) > index else None
    if isinstance(old, Node) and old.op == "get_attr" and len(old.users) == 1:
        # Rebind the name to a new Parameter: the exported module shares storage with
        # the user's float model, which must not change under them.
        owner_path, _, attr = str(old.target).rpartition(".")
        owner = gm.get_submodule(owner_path)
        setattr(owner, attr, nn.Parameter(value.detach(), requires_grad=value.requires_grad))  # a new tensor
        return
    name = set_new_attr(gm, prefix, value.detach(), parameter=True)
    with gm.graph.inserting_before(op):
        new = gm.graph.get_attr(name)
    args = list(op.args) + [None] * (index + 1 - len(op.args))
    args[index] = new
    op.args = tuple(args)


def _fold_one(gm: GraphModule, op: Node, bn: Node) -> bool:
    weight = constant_attr(gm, op.args[1])
    bias_arg = op.args[2] if len(op.args) > 2 else None
    bias = constant_attr(gm, bias_arg)
    if weight is None or (bias_arg is not None and bias is None):
        return False  # weight or bias computed in the graph: nothing constant to fold into
    bn_w, bn_b, mean, var = (constant_attr(gm, a) for a in bn.args[1:5])
    if mean is None or var is None:
        return False
    decomposed = is_op(bn, BATCH_NORM_NO_TRAINING)  # e.g. after run_decompositions (Cadence's trace)
    eps = cast(float, bn.args[_EPS_NO_TRAINING if decomposed else _EPS])
    if decomposed and any(u.target is not operator.getitem or u.args[1] != 0 for u in bn.users):
        return False  # its saved mean / invstd are read: leave it
    if is_op(op, LINEAR):
        if op.meta.get("val") is None or op.meta["val"].dim() != 2:
            return False  # BatchNorm1d over a 3-D linear output normalizes another axis
        bn_w = bn_w if bn_w is not None else torch.ones_like(mean)
        bn_b = bn_b if bn_b is not None else torch.zeros_like(mean)
        bias_t = bias if bias is not None else torch.zeros_like(mean)
        new_w, new_b = fuse_linear_bn_weights(weight, bias_t, mean, var, eps, bn_w, bn_b)
    else:
        transpose = is_op(op, CONV_TRANSPOSE)
        if transpose and len(op.args) > 6 and op.args[6] != 1:
            return False  # grouped transposed conv: per-group channel layout, leave the BN
        new_w, new_b = fuse_conv_bn_weights(weight, bias, mean, var, eps, bn_w, bn_b, transpose=transpose)
    _write_weight(gm, op, 1, new_w, "_folded_bn_weight_")
    _write_weight(gm, op, 2, new_b, "_folded_bn_bias_")
    mark_value_of(op, bn)
    for out in list(bn.users) if decomposed else [bn]:
        out.replace_all_uses_with(op)
        if out is not bn:
            gm.graph.erase_node(out)
    gm.graph.erase_node(bn)
    return True


def fold_bn(gm: GraphModule) -> GraphModule:
    """Fold every ``conv|conv_transpose|linear -> batch_norm(training=False)`` pair (in place).

    A BatchNorm still in training mode raises: post-training quantization of a
    model whose statistics move would calibrate on a different model than the
    one deployed.
    """
    for node in gm.graph.nodes:
        if is_op(node, BATCH_NORM) and node.args[_TRAINING]:
            raise BatchNormInTrainingMode(
                f"node '{node.name}' is a BatchNorm in training mode. Export the model after "
                "model.eval(), or call pt2q.move_exported_model_to_eval(m) before prepare_pt2e; "
                "for quantization-aware training use prepare_qat_pt2e."
            )
    for op, bn in list(find_chains(gm, [CONV | CONV_TRANSPOSE | LINEAR, BATCH_NORM | BATCH_NORM_NO_TRAINING])):
        _fold_one(gm, op, bn)
    return remove_unused_attributes(gm)
