"""Building reference-representation graphs: the rewrite row, its matcher loop, node helpers, Q/DQ forms.

The reference rewrites (:mod:`pt2q.passes.reference_representation`, :mod:`pt2q.passes.affine_reference`)
are tables of :class:`Rewrite` rows applied by :func:`apply_rewrites`. A row's ``replace`` builds its
integer form node by node with :func:`call_op` and :func:`operand`, before the matched chain's last node;
:func:`quantize_form` and :func:`dequantize_form` are the elementwise quantize / dequantize arithmetic
both tables share (their rows only prepare the scale and zero point operands).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Union

import torch
from torch.fx import GraphModule, Node

from pt2q.core.attrs import set_new_attr
from pt2q.core.dead_code import erase_with_dead_inputs
from pt2q.core.pattern import Step, arg_producers, find_chains

__all__ = [
    "Constant",
    "Rewrite",
    "apply_rewrites",
    "replace_chain",
    "call_op",
    "operand",
    "quantize_form",
    "dequantize_form",
]

aten = torch.ops.aten

_PORTED_META = ("nn_module_stack", "stack_trace")

Constant = Union[int, float, torch.Tensor]  # a tensor becomes a buffer of the module


@dataclass(frozen=True)
class Rewrite:
    """One row of the table: a float pattern, how its qparams carry over, its integer replacement.

    The pattern is a chain of ops linked through their first input (the float op, maybe a
    fused relu, then the output quantize) whose first op reads dequantize ops at the
    argument positions of ``inputs``. ``carry`` turns the matched qparams into the
    constants of the integer form, or None when the match does not fit it; ``replace``
    builds that form and returns the node standing for the chain's last node.
    """

    name: str
    chain: tuple[Step, ...]
    inputs: Mapping[int, Step]
    carry: Callable[[GraphModule, tuple[Node, ...], tuple[Node, ...]], Any]
    replace: Callable[[GraphModule, Any], Node]


def call_op(gm: GraphModule, op: Callable, *args: Any) -> Node:
    """A new ``call_function`` node running ``op`` on ``args``, at the graph's insertion point."""
    return gm.graph.call_function(op, args)


def operand(gm: GraphModule, value: Constant, name: str) -> Union[Node, int, float]:
    """A literal for a scalar; a new buffer (read by get_attr) for a tensor."""
    if isinstance(value, torch.Tensor):
        return gm.graph.get_attr(set_new_attr(gm, name, value))
    return value


def replace_chain(gm: GraphModule, chain: tuple[Node, ...], build: Callable[[], Node]) -> None:
    """Build the replacement before the chain's last node, hand it the chain's users, erase the chain.

    The new nodes get the provenance of the chain's first node; the result also takes the
    last node's name and value meta (it computes the same tensor), so graphs before and
    after the rewrite can be compared node by node.
    """
    last = chain[-1]
    start = last.prev
    with gm.graph.inserting_before(last):
        result = build()
    node = start.next
    while node is not last:  # the new nodes sit between ``start`` and ``last``
        node.meta.update({k: chain[0].meta[k] for k in _PORTED_META if k in chain[0].meta})
        node = node.next
    if "val" in last.meta:
        result.meta["val"] = last.meta["val"]
    last.replace_all_uses_with(result)
    name = last.name
    erase_with_dead_inputs(gm, [last])
    result.name = name  # erased names stay reserved in the graph's namespace: no other node can take it


def quantize_form(
    gm: GraphModule, x: Node, inv_scale: Any, zero_point: Any, qmin: int, qmax: int, dtype: torch.dtype
) -> Node:
    """``clamp(round(x * inv_scale) + zero_point, qmin, qmax).to(dtype)``; no offset when ``zero_point`` is None."""
    rounded = call_op(gm, aten.round.default, call_op(gm, aten.mul.Tensor, x, inv_scale))
    if zero_point is not None:
        rounded = call_op(gm, aten.add.Tensor, rounded, zero_point)
    return call_op(gm, aten.to.dtype, call_op(gm, aten.clamp.default, rounded, qmin, qmax), dtype)


def dequantize_form(
    gm: GraphModule, x: Node, scale: Any, zero_point: Any, centre_dtype: torch.dtype, out_dtype: torch.dtype
) -> Node:
    """``(x.to(centre_dtype) - zero_point).to(out_dtype) * scale``; no offset when ``zero_point`` is None,
    no second cast when the codes are centred in ``out_dtype`` already."""
    centred = call_op(gm, aten.to.dtype, x, centre_dtype)
    if zero_point is not None:
        centred = call_op(gm, aten.sub.Tensor, centred, zero_point)
    if centre_dtype != out_dtype:
        centred = call_op(gm, aten.to.dtype, centred, out_dtype)
    return call_op(gm, aten.mul.Tensor, centred, scale)


def apply_rewrites(gm: GraphModule, rewrites: Sequence[Rewrite]) -> GraphModule:
    """Rewrite every chain a row of ``rewrites`` matches (and whose qparams it carries) into its form, in place."""
    for rewrite in rewrites:
        for chain in list(find_chains(gm, rewrite.chain)):
            dqs = arg_producers(chain[0], rewrite.inputs)
            carried = None if dqs is None else rewrite.carry(gm, chain, dqs)
            if carried is not None:
                replace_chain(gm, chain, partial(rewrite.replace, gm, carried))
    gm.graph.lint()
    gm.recompile()
    return gm
