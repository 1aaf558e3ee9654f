"""A prepare pass: note on every operator the quantizer left unannotated why it stays float."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch.fx import GraphModule, Node

from pt2q.core.notes import FLOAT_REASON_KEY, set_note
from pt2q.core.spec import Q_ANNOTATION_KEY

__all__ = ["record_float_reasons"]


def _annotated(node: Node) -> bool:
    ann = node.meta.get(Q_ANNOTATION_KEY)
    return ann is not None and bool(ann.input_qspec_map or ann.output_qspec is not None)


def record_float_reasons(model: GraphModule, explain: Callable[[Node], Optional[str]], quantizer_name: str) -> None:
    """Note on every operator node the quantizer left unannotated why it stays float (for ``pt2q.report``).

    ``explain(node)`` is the quantizer's own account (``Quantizer.explain_unannotated``);
    non-float outputs and nodes it has nothing to say about get a generic reason.
    """
    for node in model.graph.nodes:
        if node.op != "call_function" or _annotated(node):
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and not val.is_floating_point():
            reason = f"its output is {val.dtype}, not a float tensor"
        elif val is not None and not isinstance(val, torch.Tensor):
            reason = "its output is not a tensor"
        else:
            reason = explain(node) or f"{quantizer_name} has no annotation for it"
        set_note(node, FLOAT_REASON_KEY, reason)
