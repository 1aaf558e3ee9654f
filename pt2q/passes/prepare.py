"""``prepare_pt2e`` / ``prepare_qat_pt2e``: fold BatchNorm, annotate with a Quantizer, insert observers.

The pipeline: the bodies of ``prepare_pt2e`` / ``prepare_qat_pt2e`` and of ``_annotate`` (the
quantizer's hooks and the annotation checks) name each pass in the order it runs; every pass is a
function of :mod:`pt2q.passes` or :mod:`pt2q.core`.
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule

from pt2q.core.control_flow import bodies, detach_operands, inline_constants
from pt2q.core.recompile import deferred_recompile
from pt2q.passes.annotation_protocol import adopt_annotations
from pt2q.passes.check_annotations import check_annotations
from pt2q.passes.float_reasons import record_float_reasons
from pt2q.passes.fold_bn import fold_bn
from pt2q.passes.input_checks import require_float_export
from pt2q.passes.insert_observers import insert_observers
from pt2q.passes.qat_conv_bn import simulate_conv_bn_folding
from pt2q.passes.reentrant import is_quantized, keep_existing_qparams, seal_previous_round
from pt2q.passes.train_eval import disallow_eval_train
from pt2q.quantizer import Quantizer

__all__ = ["prepare_pt2e", "prepare_qat_pt2e"]


def prepare_pt2e(model: GraphModule, quantizer: Quantizer) -> GraphModule:
    """Prepare an exported model for post-training quantization.

    Folds eval-mode BatchNorm into the preceding conv/linear, lets ``quantizer``
    annotate the graph and the bodies of its control flow (``cond``, ``while_loop``,
    ``scan``, ``map``), checks the annotations and inserts one observer per
    group of tensors that share quantization parameters (across a body's boundary
    too). Run the result on calibration data, then call ``convert_pt2e``.

    A converted model may be prepared again (e.g. with a quantizer for another part of it): what is
    already quantized keeps its qparams and is not quantized twice. A prepared model is refused.
    """
    model = require_float_export(model, "prepare_pt2e")
    torch._C._log_api_usage_once("pt2q.prepare_pt2e")
    original_meta = dict(model.meta)
    with deferred_recompile(model):
        fold_bn(model)
        inline_constants(model)  # a weight in a control-flow body is a constant there too (convert lifts it back out)
    model = _annotate_all(model, quantizer)
    with deferred_recompile(model):
        insert_observers(model, is_qat=False, obs_or_fq_callback=getattr(quantizer, "prepare_obs_or_fq_callback", None))
        detach_operands(model)
    model.meta.update(original_meta)
    return disallow_eval_train(model)


def prepare_qat_pt2e(model: GraphModule, quantizer: Quantizer) -> GraphModule:
    """Prepare an exported model (in training mode) for quantization-aware training.

    Like ``prepare_pt2e``, but BatchNorm keeps training: each annotated
    conv+BatchNorm is rewritten so that the BN-folded weight is fake-quantized,
    and fake quantizers are inserted instead of observers. Train, then call
    ``move_exported_model_to_eval`` and ``convert_pt2e``.

    The bodies of control flow (``cond``, ``while_loop``, ...) stay float here: training
    traces them for autograd, and a fake quantizer's statistics cannot be traced.
    """
    model = require_float_export(model, "prepare_qat_pt2e")
    torch._C._log_api_usage_once("pt2q.prepare_qat_pt2e")
    original_meta = dict(model.meta)
    model = _annotate_all(model, quantizer, with_bodies=False)
    simulate_conv_bn_folding(model)
    insert_observers(model, is_qat=True, obs_or_fq_callback=getattr(quantizer, "prepare_obs_or_fq_callback", None))
    model.meta.update(original_meta)
    return disallow_eval_train(model)


def _annotate_all(model: GraphModule, quantizer: Quantizer, with_bodies: bool = True) -> GraphModule:
    """Annotate ``model`` and (PTQ) the bodies of its control flow. A converted model is quantized again
    where the first round left it float, never twice (see ``pt2q.passes.reentrant``)."""
    again = is_quantized(model)
    if again:
        seal_previous_round(model)
    model = _annotate(model, quantizer)
    for parent, name, body in list(bodies(model)) if with_bodies else []:
        setattr(parent, name, _annotate(body, quantizer))
    if again:
        keep_existing_qparams(model)
    return model


def _no_explanation(node: object) -> None:
    return None


def _annotate(model: GraphModule, quantizer: Quantizer) -> GraphModule:
    transform = getattr(quantizer, "transform_for_annotation", None)  # annotate is the one required method
    model = transform(model) if transform is not None else model
    quantizer.annotate(model)
    validate = getattr(quantizer, "validate", None)
    if validate is not None:
        validate(model)
    adopt_annotations(model)  # a quantizer written against torchao's classes writes torchao's objects
    check_annotations(model)
    explain = getattr(quantizer, "explain_unannotated", None) or _no_explanation  # a pt2q-only hook
    record_float_reasons(model, explain, type(quantizer).__name__)
    return model
