"""``convert_pt2e``: observers become quantize/dequantize ops, weights become integers.

The pipeline: the body of ``convert_pt2e`` names each pass in the order it runs; every pass is a
function of :mod:`pt2q.passes` or :mod:`pt2q.core`.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from pt2q.core.attrs import remove_unused_attributes
from pt2q.core.control_flow import bodies, graph_modules, inline_constants, lift_constants, reattach_operands
from pt2q.core.recompile import deferred_recompile
from pt2q.passes.affine_reference import affine_reference_rewrite
from pt2q.passes.duplicate_dq import duplicate_dq
from pt2q.passes.fold_quantize import fold_quantize as fold_quantized_weights
from pt2q.passes.input_checks import require_bool, require_graph_module
from pt2q.passes.port_metadata import port_node_meta_for_qdq
from pt2q.passes.qat_conv_bn import fold_trained_conv_bn
from pt2q.passes.qdq import replace_observers_with_qdq
from pt2q.passes.reentrant import drop_requantize
from pt2q.passes.reference_representation import reference_representation_rewrite
from pt2q.passes.scale_check import warn_absurd_scales
from pt2q.passes.train_eval import disallow_eval_train, move_exported_model_to_eval

__all__ = ["convert_pt2e"]


def convert_pt2e(
    model: GraphModule,
    use_reference_representation: bool = False,
    fold_quantize: bool = True,
) -> GraphModule:
    """Convert a calibrated (or trained) model to a quantized Q/DQ graph.

    Each observer becomes ``quantize -> dequantize`` with its qparams; each
    dequantize gets one consumer; with ``fold_quantize`` the weights are stored
    as integer tensors and their float originals are dropped, so a saved program
    holds no float copy of a quantized weight. Dropout and BatchNorm are put in
    eval mode first: the result is an inference program. A tensor quantized with a
    scale above ``pt2q.passes.scale_check.ABSURD_SCALE`` (1e3: its range comes from constants
    such as an attention mask) gets a ``QuantizationRangeWarning`` naming the node.
    """
    model = require_graph_module(model, "convert_pt2e")
    require_bool(use_reference_representation, "convert_pt2e", "use_reference_representation", "second")
    torch._C._log_api_usage_once("pt2q.convert_pt2e")
    original_meta = dict(model.meta)
    # A converted model is for inference: dropout off, BatchNorm on running statistics
    # (torchao leaves a QAT model's dropout training if the user forgot to switch it).
    move_exported_model_to_eval(model)
    with deferred_recompile(model):  # the passes edit graphs; the code is regenerated once, at the end
        reattach_operands(model)
        for name, m in [("", model), *((name, body) for _, name, body in bodies(model))]:
            replace_observers_with_qdq(m, where=name)
            warn_absurd_scales(m)
        drop_requantize(model)  # a second round's Q/DQ around values the first round quantized
        fold_trained_conv_bn(model)
        inline_constants(model)  # control-flow bodies see their weights as constants, to fold them
        for m in graph_modules(model):
            duplicate_dq(m)
            port_node_meta_for_qdq(m, strict=False)  # as torchao: Q/DQ nodes take the stack_trace of their op
            if fold_quantize:
                fold_quantized_weights(m)
        if use_reference_representation:
            reference_representation_rewrite(model)
            affine_reference_rewrite(model)
        lift_constants(model)  # and pass every tensor they hold back in as an operand, so the result saves
        remove_unused_attributes(model)
    model.meta.update(original_meta)
    return disallow_eval_train(model)
