"""Pattern matching over ATen graphs: chains of operators linked through their first input.

One small matcher serves BatchNorm folding, QAT rewrites and the operator
annotators. A pattern is a sequence of *steps*; each step is a set of op
overloads. ``conv -> batch_norm -> relu`` matches when the conv's only user is
the batch_norm, which reads it as its first argument, and likewise for relu.
Matching walks the graph once and never traces example programs, so it is cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Optional

import torch
from torch.fx import Graph, GraphModule, Node

__all__ = [
    "Step",
    "is_op",
    "sole_user",
    "match_chain",
    "find_chains",
    "arg_producers",
    "CONV",
    "CONV1D",
    "CONV2D",
    "CONV3D",
    "CONV_TRANSPOSE",
    "LINEAR",
    "BATCH_NORM",
    "RELU",
]

Step = Collection[Callable]


def is_op(node: object, targets: Step) -> bool:
    """True if ``node`` is a call_function node whose target is one of ``targets``."""
    return isinstance(node, Node) and node.op == "call_function" and node.target in targets


def sole_user(node: Node) -> Optional[Node]:
    """The only user of ``node``, or None when it has zero or several."""
    if len(node.users) != 1:
        return None
    return next(iter(node.users))


def match_chain(first: Node, steps: Sequence[Step]) -> Optional[tuple[Node, ...]]:
    """Match ``steps`` starting at ``first``; return the matched nodes or None.

    Every node except the last must have exactly one user, which is the next
    node of the chain and reads it as its first argument; so a matched chain can
    be fused without changing what other nodes see.
    """
    if not steps or not is_op(first, steps[0]):
        return None
    nodes = [first]
    for step in steps[1:]:
        nxt = sole_user(nodes[-1])
        if nxt is None or not is_op(nxt, step) or not nxt.args or nxt.args[0] is not nodes[-1]:
            return None
        nodes.append(nxt)
    return tuple(nodes)


def find_chains(graph: Graph | GraphModule, steps: Sequence[Step]) -> Iterator[tuple[Node, ...]]:
    """Every match of ``steps`` in ``graph``, in graph order (matches may overlap)."""
    g = graph.graph if isinstance(graph, GraphModule) else graph
    for node in list(g.nodes):
        match = match_chain(node, steps)
        if match is not None:
            yield match


def arg_producers(node: Node, inputs: Mapping[int, Step]) -> Optional[tuple[Node, ...]]:
    """The nodes feeding ``node`` at the argument positions of ``inputs``, in that order.

    None unless each is an op of the step given for its position; e.g. with
    ``{0: DQ, 1: DQ}`` it finds the dequantize ops of a ``dq -> op -> q`` neighbourhood.
    """
    producers = tuple(node.args[i] if i < len(node.args) else None for i in inputs)
    if not all(is_op(p, step) for p, step in zip(producers, inputs.values())):
        return None
    return producers  # type: ignore[return-value]


# Common operator sets, shared by passes and annotators.
CONV1D = {torch.ops.aten.conv1d.default, torch.ops.aten.conv1d.padding}
CONV2D = {torch.ops.aten.conv2d.default, torch.ops.aten.conv2d.padding}
CONV3D = {torch.ops.aten.conv3d.default, torch.ops.aten.conv3d.padding}
CONV = CONV1D | CONV2D | CONV3D | {torch.ops.aten.convolution.default}
CONV_TRANSPOSE = {
    torch.ops.aten.conv_transpose1d.default,
    torch.ops.aten.conv_transpose2d.input,
    torch.ops.aten.conv_transpose3d.input,
}
LINEAR = {torch.ops.aten.linear.default}
BATCH_NORM = {
    torch.ops.aten.batch_norm.default,
    torch.ops.aten._native_batch_norm_legit_no_training.default,
}
RELU = {torch.ops.aten.relu.default, torch.ops.aten.relu_.default}
