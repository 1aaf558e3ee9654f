"""Notes pt2q leaves on graph nodes for reports: which observer chose a Q/DQ's qparams, and
why a node stayed float.

They live in ``node.meta["custom"]``, the one metadata dictionary ``torch.export`` copies
through re-export and serializes in ``.pt2`` files, so a reloaded program still explains
itself. Notes describe one node, so copying provenance to a new node leaves them behind;
each write makes a new dictionary, as passes share ``custom`` between nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch.fx import GraphModule, Node

from pt2q.spec import Q_ANNOTATION_KEY

__all__ = ["OBSERVER_KEY", "FLOAT_REASON_KEY", "VALUE_OF_KEY", "NOTE_KEYS", "note", "set_note", "record_float_reasons"]

OBSERVER_KEY = "pt2q_observer"
FLOAT_REASON_KEY = "pt2q_float_reason"
VALUE_OF_KEY = "pt2q_value_of"  # see pt2q.numeric_debugger.mark_value_of
NOTE_KEYS = (OBSERVER_KEY, FLOAT_REASON_KEY, VALUE_OF_KEY)


def note(node: Node, key: str) -> Optional[Any]:
    """The note ``key`` on ``node``, if any."""
    custom = node.meta.get("custom")
    return custom.get(key) if isinstance(custom, dict) else None


def set_note(node: Node, key: str, value: Any) -> None:
    """Write the note ``key`` (a JSON-serializable value) on ``node`` (without touching
    dictionaries other nodes share)."""
    node.meta["custom"] = {**(node.meta.get("custom") or {}), key: value}


def _annotated(node: Node) -> bool:
    ann = node.meta.get(Q_ANNOTATION_KEY)
    return ann is not None and bool(ann.input_qspec_map or ann.output_qspec is not None)


def record_float_reasons(model: GraphModule, explain: Callable[[Node], Optional[str]], quantizer_name: str) -> None:
    """Note on every operator node the quantizer left unannotated why it stays float.

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
