"""Carrying a node's provenance (module stack, stack trace, source) over to nodes made for it."""

from __future__ import annotations

from torch.fx import Node

from pt2q.quantization_notes import NOTE_KEYS

__all__ = ["PROVENANCE_KEYS", "copy_provenance"]

PROVENANCE_KEYS = ("nn_module_stack", "stack_trace", "source_fn_stack", "from_node", "custom")


def copy_provenance(new: Node, source: Node) -> Node:
    """Copy ``source``'s provenance metadata onto ``new`` (so filters, debuggers and reports see
    where an inserted observer, Q/DQ or rewrite node came from); return ``new``."""
    for key in PROVENANCE_KEYS:
        if key in source.meta:
            new.meta[key] = source.meta[key]
    custom = new.meta.get("custom")
    if isinstance(custom, dict) and any(k in custom for k in NOTE_KEYS):
        new.meta["custom"] = {k: v for k, v in custom.items() if k not in NOTE_KEYS}  # notes describe `source` only
    return new
