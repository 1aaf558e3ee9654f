"""Quantize constant weights ahead of time: ``quantize(constant)`` becomes an integer constant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch.fx import GraphModule, Node

from pt2q.attrs import resolve_attr, set_new_attr
from pt2q.dead_code import erase_with_dead_inputs
from pt2q.ops import Q_OPS, is_affine_quantize, is_op

__all__ = ["fold_quantize"]

_NOT_CONSTANT = object()


def _constant(gm: GraphModule, arg: Any, cache: dict[Node, Any]) -> Any:
    """The value of ``arg`` if it depends on attributes and literals only, else _NOT_CONSTANT."""
    if isinstance(arg, (list, tuple)):
        values = [_constant(gm, a, cache) for a in arg]
        return _NOT_CONSTANT if any(v is _NOT_CONSTANT for v in values) else type(arg)(values)
    if not isinstance(arg, Node):
        return arg
    if arg not in cache:
        if arg.op == "get_attr":
            value = resolve_attr(gm, str(arg.target))  # a tensor, or a control-flow body
            cache[arg] = value if isinstance(value, torch.Tensor) else _NOT_CONSTANT
        elif arg.op == "call_function" and not arg.kwargs and not _is_random(arg):
            args = _constant(gm, arg.args, cache)
            target = cast(Callable[..., Any], arg.target)
            cache[arg] = _NOT_CONSTANT if args is _NOT_CONSTANT else target(*args)
        else:
            cache[arg] = _NOT_CONSTANT
    return cache[arg]


def _is_random(node: Node) -> bool:
    return torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ())


def fold_quantize(gm: GraphModule) -> GraphModule:
    """Replace each quantize op whose inputs are constants by its integer result (in place).

    Inputs may be computed from attributes (e.g. a QAT weight scaled by its folded
    BatchNorm). The integer tensor is stored as buffer ``_frozen_param{i}``; the float
    weight and whatever computed it are erased.
    """
    cache: dict[Node, Any] = {}
    for q in list(gm.graph.nodes):
        if not (is_op(q, Q_OPS) or is_affine_quantize(q)) or not isinstance(q.args[0], Node):
            continue
        with torch.no_grad():
            args = _constant(gm, q.args, cache)
            if args is _NOT_CONSTANT:
                continue
            value = q.target(*args)
        with gm.graph.inserting_before(q):
            folded = gm.graph.get_attr(set_new_attr(gm, "_frozen_param", value))
        folded.meta.update({k: v for k, v in q.meta.items() if k != "val"})
        q.replace_all_uses_with(folded)
        erase_with_dead_inputs(gm, [q])
    gm.recompile()
    return gm
