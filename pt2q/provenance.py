"""Carrying a node's provenance (module stack, stack trace, source) over to nodes made for it."""
from __future__ import annotations

from torch.fx import Node

__all__ = ["PROVENANCE_KEYS", "copy_provenance"]

PROVENANCE_KEYS = ("nn_module_stack", "stack_trace", "source_fn_stack", "from_node", "custom")


def copy_provenance(new: Node, source: Node) -> Node:
    """Copy ``source``'s provenance metadata onto ``new`` (so filters, debuggers and reports see
    where an inserted observer, Q/DQ or rewrite node came from); return ``new``."""
    for key in PROVENANCE_KEYS:
        if key in source.meta:
            new.meta[key] = source.meta[key]
    return new
