"""Quantize constant weights ahead of time: ``quantize(constant)`` becomes an integer constant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import resolve_attr, set_new_attr
from pt2q.core.dead_code import erase_with_dead_inputs
from pt2q.core.ops import Q_OPS, is_affine_quantize, is_op

__all__ = ["fold_quantize"]


def _is_constant(gm: GraphModule, arg: Any, known: dict[Node, bool]) -> bool:
    """Whether ``arg`` depends on attributes and literals only (decided from the graph, nothing is run)."""
    if isinstance(arg, (list, tuple)):
        return all(_is_constant(gm, a, known) for a in arg)
    if not isinstance(arg, Node):
        return True
    if arg not in known:
        if arg.op == "get_attr":
            known[arg] = isinstance(resolve_attr(gm, str(arg.target)), torch.Tensor)  # not a control-flow body
        elif arg.op == "call_function" and not arg.kwargs and not _is_random(arg):
            known[arg] = _is_constant(gm, arg.args, known)
        else:
            known[arg] = False
    return known[arg]


def _constant(gm: GraphModule, arg: Any, cache: dict[Node, Any]) -> Any:
    """The value of ``arg``, which ``_is_constant`` accepted."""
    if isinstance(arg, (list, tuple)):
        return type(arg)(_constant(gm, a, cache) for a in arg)
    if not isinstance(arg, Node):
        return arg
    if arg not in cache:
        if arg.op == "get_attr":
            cache[arg] = resolve_attr(gm, str(arg.target))
        else:
            cache[arg] = cast(Callable[..., Any], arg.target)(*_constant(gm, arg.args, cache))
    return cache[arg]


def _is_random(node: Node) -> bool:
    return torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())


def fold_quantize(gm: GraphModule) -> GraphModule:
    """Replace each quantize op whose inputs are constants by its integer result (in place).

    Inputs may be computed from attributes (e.g. a QAT weight scaled by its folded
    BatchNorm). The integer tensor is stored as buffer ``_frozen_param{i}``; the float
    weight and whatever computed it are erased.
    """
    known: dict[Node, bool] = {}
    cache: dict[Node, Any] = {}
    for q in list(gm.graph.nodes):
        if not (is_op(q, Q_OPS) or is_affine_quantize(q)) or not isinstance(q.args[0], Node):
            continue
        if not _is_constant(gm, q.args, known):
            continue
        with torch.no_grad():
            value = q.target(*_constant(gm, q.args, cache))
        with gm.graph.inserting_before(q):
            folded = gm.graph.get_attr(set_new_attr(gm, "_frozen_param", value))
        folded.meta.update({k: v for k, v in q.meta.items() if k != "val"})
        q.replace_all_uses_with(folded)
        erase_with_dead_inputs(gm, [q])
    gm.recompile()
    return gm
