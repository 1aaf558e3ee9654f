"""``prepare_pt2e``: fold BatchNorm, annotate with a Quantizer, insert observers."""

from __future__ import annotations

from typing import Optional

import torch
from torch.fx import GraphModule

from pt2q.core.control_flow import bodies, detach_operands, graph_modules, inline_constants
from pt2q.core.export_utils import NotExportedError
from pt2q.core.ops import is_observer_node
from pt2q.core.recompile import deferred_recompile
from pt2q.passes.annotation_protocol import adopt_annotations
from pt2q.passes.check_annotations import check_annotations
from pt2q.passes.float_reasons import record_float_reasons
from pt2q.passes.fold_bn import fold_bn
from pt2q.passes.insert_observers import insert_observers
from pt2q.passes.qat_conv_bn import simulate_conv_bn_folding
from pt2q.passes.reentrant import is_quantized, keep_existing_qparams, seal_previous_round
from pt2q.passes.train_eval import disallow_eval_train
from pt2q.quantizer import Quantizer

__all__ = ["prepare_pt2e", "prepare_qat_pt2e"]


def _require_graph_module(model: object, fn: str) -> GraphModule:
    if not isinstance(model, GraphModule):
        raise NotExportedError(
            f"{fn} expects the GraphModule of an exported program, got {type(model).__name__}. "
            "Use torch.export.export(model, example_inputs).module()."
        )
    return model


def _not_exported(model: GraphModule) -> Optional[str]:
    """Why ``model`` is not the ATen graph of ``torch.export`` (e.g. ``torch.fx.symbolic_trace``'s), or None."""
    nodes = list(model.graph.nodes)
    for node in nodes:
        if node.op == "call_method":
            return f"node '{node.name}' calls the method {node.target!r}"
        if node.op == "call_module" and not is_observer_node(node, model) and node.target != "_guards_fn":
            module = type(model.get_submodule(node.target)).__name__
            return f"node '{node.name}' calls the module '{node.target}' ({module})"
    for node in nodes:
        if node.op == "placeholder" and "val" not in node.meta:
            return f"input '{node.name}' carries no meta['val'] (the example value export records)"
    return None


def _require_float_export(model: object, fn: str) -> GraphModule:
    """The GraphModule of an exported program (float or converted): not prepared, not symbolically traced."""
    model = _require_graph_module(model, fn)
    _refuse_prepared(model, fn)  # a converted model is fine: it is quantized again (pt2q.passes.reentrant)
    why = _not_exported(model)
    if why is not None:
        raise TypeError(
            f"{fn} expects the ATen graph of torch.export.export(model, example_inputs).module(), but {why}: "
            "this GraphModule comes from torch.fx.symbolic_trace or similar, and quantizers annotate nothing in it."
        )
    return model


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
    model = _require_float_export(model, "prepare_pt2e")
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
    model = _require_float_export(model, "prepare_qat_pt2e")
    torch._C._log_api_usage_once("pt2q.prepare_qat_pt2e")
    original_meta = dict(model.meta)
    model = _annotate_all(model, quantizer, with_bodies=False)
    simulate_conv_bn_folding(model)
    insert_observers(model, is_qat=True, obs_or_fq_callback=getattr(quantizer, "prepare_obs_or_fq_callback", None))
    model.meta.update(original_meta)
    return disallow_eval_train(model)


def _refuse_prepared(model: GraphModule, fn: str) -> None:
    observers = [n.name for m in graph_modules(model) for n in m.graph.nodes if is_observer_node(n, m)]
    if observers:
        raise ValueError(
            f"{fn}: the model is already prepared (it holds observer node '{observers[0]}'). Calibrate it and "
            f"call convert_pt2e, or call {fn} on a fresh torch.export.export(model, example_inputs).module()."
        )


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
