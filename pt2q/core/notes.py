"""The notes contract: what pt2q's passes leave on graph nodes, and how readers find it.

Three kinds of metadata, all readable from a converted, re-exported or reloaded program:

* **Provenance** (``nn_module_stack``, ``stack_trace``, ``source_fn_stack``,
  ``from_node``, ``custom``) is copied onto every node a pass inserts for another
  (:func:`copy_provenance`), so filters, debuggers and reports see where it came from.
* **Debug handles**: a node's identity in the float graph, the oldest ``from_node``
  ancestor torch.export recorded (:func:`debug_info`); :func:`value_handle` tells which
  float value a node holds, and :func:`mark_value_of` records that a rewritten node now
  computes another node's value (a conv with its BatchNorm folded in).
* **Quantization notes** in ``node.meta["custom"]``, the one dictionary ``torch.export``
  copies through re-export and serializes in ``.pt2`` files: which observer chose a Q/DQ's
  qparams, why a node stayed float, which pattern claimed it. A note describes one node,
  so copying provenance leaves notes behind; each write makes a new dictionary, since
  passes share ``custom`` between nodes.

Passes write through this module; reports only read. It sits at the bottom of the
import order (it needs only :mod:`pt2q.core.ops`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Optional

from torch.fx import Node

from pt2q.core.ops import (
    CHOOSE_QPARAMS_OPS,
    QDQ_OPS,
    is_affine_dequantize,
    is_affine_quantize,
    is_choose_qparams_affine,
    is_op,
)

__all__ = [
    "OBSERVER_KEY",
    "FLOAT_REASON_KEY",
    "VALUE_OF_KEY",
    "PATTERN_KEY",
    "NOTE_KEYS",
    "PROVENANCE_KEYS",
    "FROM_NODE_KEY",
    "note",
    "set_note",
    "copy_provenance",
    "NodeSourceDebugInfo",
    "debug_info",
    "value_handle",
    "mark_value_of",
    "claimed_by",
    "chain_source",
    "module_path",
    "module_paths",
]

OBSERVER_KEY = "pt2q_observer"  # on a Q/DQ: "ObserverClass(args)" that chose its qparams
FLOAT_REASON_KEY = "pt2q_float_reason"  # on an unannotated op: why it stays float
VALUE_OF_KEY = "pt2q_value_of"  # [name, graph_id] of the float node whose value this node computes
PATTERN_KEY = "pt2q_pattern"  # [rule name, anchor handle name, anchor graph id]: the quantizer rule that claimed it
NOTE_KEYS = (OBSERVER_KEY, FLOAT_REASON_KEY, VALUE_OF_KEY, PATTERN_KEY)
FROM_NODE_KEY = "from_node"  # torch.export's provenance: the nodes a node was made from
PROVENANCE_KEYS = ("nn_module_stack", "stack_trace", "source_fn_stack", FROM_NODE_KEY, "custom")

_UNLIFT_PASS = "ExportedProgram.module().unlift()"
_ROOT_PREFIX = "L['self']."


def note(node: Node, key: str) -> Optional[Any]:
    """The note ``key`` on ``node``, if any."""
    custom = node.meta.get("custom")
    return custom.get(key) if isinstance(custom, dict) else None


def set_note(node: Node, key: str, value: Any) -> None:
    """Write the note ``key`` (a JSON-serializable value) on ``node`` (without touching
    dictionaries other nodes share)."""
    node.meta["custom"] = {**(node.meta.get("custom") or {}), key: value}


def copy_provenance(new: Node, source: Node) -> Node:
    """Copy ``source``'s provenance metadata onto ``new``, leaving ``source``'s notes behind;
    return ``new``."""
    for key in PROVENANCE_KEYS:
        if key in source.meta:
            new.meta[key] = source.meta[key]
    custom = new.meta.get("custom")
    if isinstance(custom, dict) and any(k in custom for k in NOTE_KEYS):
        new.meta["custom"] = {k: v for k, v in custom.items() if k not in NOTE_KEYS}
    return new


@dataclass(frozen=True)
class NodeSourceDebugInfo:
    """The debug handle of a float-graph node: its name and the id of the graph it was exported in."""

    name: str
    graph_id: int


def debug_info(node: Node) -> Optional[NodeSourceDebugInfo]:
    """The handle of the float node ``node`` descends from, or None (placeholders, outputs,
    parameters lifted by ``ExportedProgram.module()``, nodes made without provenance)."""
    if node.op in ("placeholder", "output"):
        return None
    sources = node.meta.get(FROM_NODE_KEY)
    if not sources or sources[-1].pass_name == _UNLIFT_PASS:
        return None
    source = sources[-1]
    while source.from_node:
        source = source.from_node[-1]
    return NodeSourceDebugInfo(source.name, source.graph_id)


def chain_source(node: Node) -> Node:
    """The node whose value a chain of quantize/dequantize ops carries."""
    while (is_op(node, QDQ_OPS) or is_affine_quantize(node) or is_affine_dequantize(node)) and isinstance(
        node.args[0], Node
    ):
        node = node.args[0]
    return node


def _is_qparams(node: Node) -> bool:
    """A run-time ``choose_qparams`` or one of its outputs."""
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], Node):
        node = node.args[0]
    return is_op(node, CHOOSE_QPARAMS_OPS) or is_choose_qparams_affine(node)


def value_handle(node: Node) -> Optional[NodeSourceDebugInfo]:
    """The handle of the float value ``node`` holds, if it holds one.

    A layer's output Q/DQ holds the layer's (quantized) value. A Q/DQ a layer puts on its
    *input* carries that layer's provenance: it is part of the layer (its input
    quantization), not a value of the producer, so it holds none; nor do constants and
    run-time qparams. A node marked by :func:`mark_value_of` holds that node's value.
    """
    source = chain_source(node)
    if source is not node and debug_info(node) != debug_info(source):
        return None
    if source.op == "get_attr" or _is_qparams(source):
        return None
    marked = note(source, VALUE_OF_KEY)
    return NodeSourceDebugInfo(marked[0], int(marked[1])) if marked else debug_info(source)


def claimed_by(node: Node) -> Optional[tuple[str, Optional[NodeSourceDebugInfo]]]:
    """The quantizer rule that claimed ``node`` and the debug handle of that match's anchor, if noted."""
    claim = note(node, PATTERN_KEY)
    if not claim:
        return None
    name, anchor, graph_id = claim
    return name, None if anchor is None else NodeSourceDebugInfo(anchor, int(graph_id))


def mark_value_of(node: Node, source: Node) -> None:
    """Record that ``node`` now computes the value ``source`` computed in the float graph
    (a conv with the BatchNorm after it folded in computes the BatchNorm's output)."""
    handle = value_handle(source)
    if handle is not None:
        set_note(node, VALUE_OF_KEY, [handle.name, handle.graph_id])


def _strip_root(path: str) -> str:
    return path[len(_ROOT_PREFIX) :] if path.startswith(_ROOT_PREFIX) else path


def module_path(stack: object) -> str:
    """The innermost module of an ``nn_module_stack`` ("" for the root), else ``str(stack)``."""
    if not isinstance(stack, dict):
        return str(stack)
    if not stack:
        return ""
    return _strip_root(list(stack.values())[-1][0])


def module_paths(node: Node) -> set[str]:
    """Every module path on ``node``'s ``nn_module_stack`` (``"blocks.0"``, ``"blocks.0.attn"``, ...)."""
    stack = node.meta.get("nn_module_stack") or {}
    return {_strip_root(path) for path, _ in stack.values()}
