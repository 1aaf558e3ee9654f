"""Quantize constant weights ahead of time: ``quantize(get_attr)`` becomes an integer constant."""
from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from pt2q.attrs import get_attr_value, set_new_attr
from pt2q.qdq import Q_OPS

__all__ = ["fold_quantize"]


def _constant(gm: GraphModule, arg: object) -> object:
    if isinstance(arg, Node):
        return get_attr_value(gm, arg.target) if arg.op == "get_attr" else None
    return arg


def fold_quantize(gm: GraphModule) -> GraphModule:
    """Replace each quantize op whose inputs are all constants by its int result (in place).

    The integer tensor is stored as buffer ``_frozen_param{i}``; the float weight
    it came from is left unused for ``remove_unused_attributes`` to drop.
    """
    for q in list(gm.graph.nodes):
        if q.op != "call_function" or q.target not in Q_OPS:
            continue
        args = [_constant(gm, a) for a in q.args]
        if not isinstance(q.args[0], Node) or any(a is None for a in args):
            continue
        with torch.no_grad():
            value = q.target(*args)
        name = set_new_attr(gm, "_frozen_param", value)
        with gm.graph.inserting_before(q):
            folded = gm.graph.get_attr(name)
        folded.meta.update({k: v for k, v in q.meta.items() if k != "val"})
        q.replace_all_uses_with(folded)
        gm.graph.erase_node(q)
    gm.recompile()
    return gm
