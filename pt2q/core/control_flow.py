"""Control flow: the bodies of ``cond`` / ``while_loop`` / ``scan`` / ``map`` and the values that cross into them.

An exported model keeps each branch or loop body of a higher-order op as a GraphModule attribute of the
graph that calls it (``true_graph_0``, ``while_loop_body_graph_0``, ...). The op passes values in as
operands, which the body reads as placeholders, and hands the body's outputs back through ``getitem``.
Export passes parameters in as operands too: a body holds no tensor attributes, and a saved program
requires that it does not.

* :func:`bodies` / :func:`graph_modules` list a model's graph and every nested body, so passes run on all;
* :func:`value_aliases` says which nodes of different graphs carry one value (an operand and the
  placeholder bound to it, a body output and the getitem returning it, a loop's carried value), so the
  observers on both sides of a boundary can share quantization parameters;
* :func:`inline_constants` / :func:`lift_constants` move constant operands into the bodies (where weights
  fold to integers like anywhere else) and every tensor a body then holds back out as an operand;
* :func:`detach_operands` / :func:`reattach_operands` keep autograd out of calibration: with a tensor
  that requires grad among its operands, a higher-order op traces its body, and observers cannot be traced.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import resolve_attr, set_new_attr
from pt2q.core.ops import COND, CONTROL_FLOW, MAP, SCAN, WHILE_LOOP, is_op

__all__ = [
    "ControlFlowCall",
    "control_flow_calls",
    "bodies",
    "graph_modules",
    "value_aliases",
    "inline_constants",
    "lift_constants",
    "detach_operands",
    "reattach_operands",
]

_CALIBRATION_DETACH = "pt2q_calibration_detach"  # meta key of the detach nodes prepare adds
_INLINED_FROM = "pt2q_inlined_from"  # meta key: the placeholder an inlined constant stood in for


@dataclass
class ControlFlowCall:
    """One higher-order op call: its bodies and how its operands bind to their placeholders."""

    node: Node
    parent: GraphModule
    body_names: list[str]  # attributes of ``parent``
    returning: list[str]  # the bodies whose outputs the op returns (not a while_loop's condition)
    groups: list[int]  # positions in node.args of the operand lists, in placeholder order
    sliced: list[bool]  # per group: the body sees one slice along dim 0 (scan's xs, map's xs)
    carried: int  # leading outputs fed back into the leading placeholders (loop state)

    def body(self, name: str) -> GraphModule:
        body = getattr(self.parent, name)
        assert isinstance(body, GraphModule)
        return body

    def operands(self) -> list[Any]:
        return [a for g in self.groups for a in _group(self.node, g)]

    @property
    def growable(self) -> int:
        """The last group (cond's operands, the additional inputs of loops, map's pos_args) is passed whole
        to every body; constants lifted out of a body join it."""
        return self.groups[-1]

    def growable_start(self) -> int:
        return sum(len(_group(self.node, g)) for g in self.groups[:-1])


def _group(node: Node, index: int) -> list[Any]:
    """The operand list at ``node.args[index]`` (a tuple or a list in the graph), as a new list."""
    group = node.args[index]
    assert isinstance(group, (list, tuple)), f"{node.name}: argument {index} is not an operand list"
    return list(group)


def _like(container: object, items: list[Any]) -> Any:
    """``items`` as the same kind of sequence as ``container`` (the ops check tuple vs list)."""
    return tuple(items) if isinstance(container, tuple) else list(items)


def _attr_name(node: object) -> str:
    assert isinstance(node, Node) and node.op == "get_attr", f"expected a get_attr of a body, got {node}"
    return str(node.target)


def control_flow_calls(gm: GraphModule) -> list[ControlFlowCall]:
    """The higher-order control-flow calls in ``gm``'s own graph (not nested ones)."""
    calls = []
    for node in gm.graph.nodes:
        if not is_op(node, CONTROL_FLOW):
            continue
        a = node.args
        if is_op(node, COND):
            names = [_attr_name(a[1]), _attr_name(a[2])]
            calls.append(ControlFlowCall(node, gm, names, names, [3], [False], 0))
        elif is_op(node, WHILE_LOOP):
            names = [_attr_name(a[0]), _attr_name(a[1])]
            carried = len(_group(node, 2))
            calls.append(ControlFlowCall(node, gm, names, names[1:], [2, 3], [False, False], carried))
        elif is_op(node, SCAN):
            name = _attr_name(a[0])
            carried = len(_group(node, 1))
            calls.append(ControlFlowCall(node, gm, [name], [name], [1, 2, 3], [False, True, False], carried))
        elif is_op(node, MAP):
            name = _attr_name(a[0])
            calls.append(ControlFlowCall(node, gm, [name], [name], [1, 2], [True, False], 0))
    return calls


def bodies(gm: GraphModule) -> Iterator[tuple[GraphModule, str, GraphModule]]:
    """``(parent, attribute, body)`` for every body of ``gm``, nested ones included, parents first."""
    for call in control_flow_calls(gm):
        for name in dict.fromkeys(call.body_names):
            body = call.body(name)
            yield gm, name, body
            yield from bodies(body)


def graph_modules(gm: GraphModule) -> list[GraphModule]:
    """``gm`` and every body nested in it, parents before children."""
    return [gm] + [body for _, _, body in bodies(gm)]


def placeholders(gm: GraphModule) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def _outputs(gm: GraphModule) -> list[Any]:
    out = gm.graph.output_node().args[0]
    return list(out) if isinstance(out, (list, tuple)) else [out]


def value_aliases(gm: GraphModule) -> dict[Node, list[Node]]:
    """For each node that carries the same value as nodes of another graph, those other nodes."""
    parent: dict[Node, Node] = {}

    def find(n: Node) -> Node:
        while parent.get(n, n) is not n:
            n = parent[n]
        return n

    def union(a: object, b: object) -> None:
        if isinstance(a, Node) and isinstance(b, Node) and find(a) is not find(b):
            parent[find(b)] = find(a)

    for m in graph_modules(gm):
        for call in control_flow_calls(m):
            operands = call.operands()
            getitems = {u.args[1]: u for u in call.node.users if u.target is operator.getitem}
            for name in call.body_names:
                phs = placeholders(call.body(name))
                for operand, ph in zip(operands, phs):
                    union(operand, ph)
            for name in call.returning:
                outs = _outputs(call.body(name))
                for i, out in enumerate(outs):
                    union(getitems.get(i), out)
                    if i < call.carried:
                        for other in call.body_names:
                            union(out, placeholders(call.body(other))[i])
    classes: dict[Node, list[Node]] = {}
    for n in parent:
        classes.setdefault(find(n), []).append(n)
    for root, members in classes.items():
        if root not in members:
            members.append(root)
    return {n: [o for o in members if o is not n] for members in classes.values() for n in members}


def _fake_like(body: GraphModule, value: torch.Tensor) -> Any:
    for n in body.graph.nodes:
        mode = getattr(n.meta.get("val"), "fake_mode", None)
        if mode is not None:
            return mode.from_tensor(value, static_shapes=True)
    return None


def inline_constants(gm: GraphModule) -> GraphModule:
    """Read constant operands (weights, buffers) as attributes of the bodies that use them (in place).

    A weight then looks in a body as it does at the top level, so converting folds its quantization.
    :func:`lift_constants` undoes this for whatever stays a tensor.
    """
    for m in graph_modules(gm):  # parents first: an inlined constant becomes a constant operand of nested calls
        for call in control_flow_calls(m):
            start = call.growable_start()
            operands = call.operands()
            for name in call.body_names:
                body = call.body(name)
                phs = placeholders(body)
                for i in range(start, len(operands)):
                    operand = operands[i]
                    if not isinstance(operand, Node) or operand.op != "get_attr" or not phs[i].users:
                        continue
                    value = resolve_attr(m, str(operand.target))
                    if not isinstance(value, torch.Tensor):
                        continue
                    attr = set_new_attr(body, str(operand.target).replace(".", "_") + "_", value.detach())
                    with body.graph.inserting_before(next(iter(body.graph.nodes))):
                        const = body.graph.get_attr(attr)
                    const.meta.update(phs[i].meta)
                    const.meta[_INLINED_FROM] = phs[i].name
                    phs[i].replace_all_uses_with(const)
                body.recompile()
    return gm


def _placeholders_first(body: GraphModule) -> None:
    """Move the placeholders (in order) to the top of ``body``, so a new last placeholder precedes its readers."""
    phs = placeholders(body)
    if phs and next(iter(body.graph.nodes)) is not phs[0]:
        next(iter(body.graph.nodes)).prepend(phs[0])
    for before, ph in zip(phs, phs[1:]):
        before.append(ph)


def _add_placeholder(body: GraphModule, base: str, value: torch.Tensor) -> Node:
    _placeholders_first(body)
    phs = placeholders(body)
    taken = {str(p.target) for p in phs} | {n.name for n in body.graph.nodes}
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    with body.graph.inserting_after(phs[-1]) if phs else body.graph.inserting_before(None):
        ph = body.graph.placeholder(name)
    fake = _fake_like(body, value)
    if fake is not None:
        ph.meta["val"] = fake
    return ph


def _set_group(call: ControlFlowCall, items: list[Any]) -> None:
    args = list(call.node.args)
    args[call.growable] = _like(args[call.growable], items)
    call.node.args = tuple(args)


def _lift_body_tensors(call: ControlFlowCall) -> None:
    """Each tensor attribute read in a body of ``call`` becomes a new operand of the call."""
    m = call.parent
    for name in call.body_names:
        body = call.body(name)
        for node in [n for n in body.graph.nodes if n.op == "get_attr"]:
            value = resolve_attr(body, str(node.target))
            if not isinstance(value, torch.Tensor):
                continue
            origin = {p.name: p for p in placeholders(body)}.get(node.meta.get(_INLINED_FROM, ""))
            if origin is not None:  # an inlined operand still a float tensor (a bias): read it as before
                node.replace_all_uses_with(origin)
            elif node.users:
                attr = set_new_attr(m, re.sub(r"\d+$", "", str(node.target)), value)
                with m.graph.inserting_before(call.node):
                    operand = m.graph.get_attr(attr)
                operand.meta.update(node.meta)
                _set_group(call, [*_group(call.node, call.growable), operand])
                new = {b: _add_placeholder(call.body(b), attr, value) for b in call.body_names}
                node.replace_all_uses_with(new[name])
            body.graph.erase_node(node)
        for attr in [a for a in list(body._buffers) + list(body._parameters)]:
            if not any(n.op == "get_attr" and n.target == attr for n in body.graph.nodes):
                delattr(body, attr)


def _drop_unread_operands(call: ControlFlowCall) -> None:
    """Operands of the growable group that no body reads any more (weights now folded into integers)."""
    start = call.growable_start()
    items = _group(call.node, call.growable)
    phs = {name: placeholders(call.body(name)) for name in call.body_names}
    for j in reversed(range(len(items))):
        if any(phs[name][start + j].users for name in call.body_names):
            continue
        for name in call.body_names:
            call.body(name).graph.erase_node(phs[name][start + j])
        del items[j]
    _set_group(call, items)


def lift_constants(gm: GraphModule) -> GraphModule:
    """Pass every tensor a body reads as an attribute (folded weights, qparams) in as an operand (in place),
    and drop operands no body reads any more; the result is a body ``torch.export`` can save."""
    for m in reversed(graph_modules(gm)):  # children first: what a nested body lifts, its parent lifts on
        for call in control_flow_calls(m):
            _lift_body_tensors(call)
            _drop_unread_operands(call)
            for name in call.body_names:
                call.body(name).recompile()
        m.graph.eliminate_dead_code()
        m.recompile()
    return gm


def detach_operands(gm: GraphModule) -> GraphModule:
    """Detach the tensor operands of calls whose bodies hold observers (in place), for calibration.

    A higher-order op given a tensor that requires grad (the weights do) traces its body for autograd;
    an observer updates real statistics and cannot be traced. Calibration needs no gradients.
    """
    for m in graph_modules(gm):
        for call in control_flow_calls(m):
            if not any(
                n.op == "call_module"
                for name in call.body_names
                for b in graph_modules(call.body(name))
                for n in b.graph.nodes
            ):
                continue
            args = list(call.node.args)
            for g in call.groups:
                items = []
                for a in _group(call.node, g):
                    if isinstance(a, Node) and isinstance(a.meta.get("val"), torch.Tensor):
                        with m.graph.inserting_before(call.node):
                            d = m.graph.call_function(torch.ops.aten.detach.default, (a,))
                        d.meta.update({"val": a.meta["val"], _CALIBRATION_DETACH: True})
                        a = d
                    items.append(a)
                args[g] = _like(args[g], items)
            call.node.args = tuple(args)
        m.recompile()
    return gm


def reattach_operands(gm: GraphModule) -> GraphModule:
    """Remove the detach nodes :func:`detach_operands` added (in place)."""
    for m in graph_modules(gm):
        for node in list(m.graph.nodes):
            if node.meta.get(_CALIBRATION_DETACH):
                node.replace_all_uses_with(node.args[0])
                m.graph.erase_node(node)
        m.recompile()
    return gm
