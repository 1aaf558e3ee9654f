"""Pattern matching over ATen graphs: chains of operators, each node feeding the next.

One small matcher serves BatchNorm folding, QAT rewrites, the quantizers' pattern
tables and the reference representation. A chain is a sequence of *steps*; each step
is a set of operators (see :mod:`pt2q.core.ops`). ``conv -> batch_norm -> relu`` matches
when the conv's only user is the batch_norm, which reads it as its first argument, and
likewise for the relu. ``link_args`` widens "first argument" to other positions (an
``add`` fed by a conv through either operand). Matching starts at a *root* step, the
node enumerated in graph order, and extends backward through arguments and forward
through users, so a pattern anchored at its last node (``conv -> add``, found from the
add) is matched exactly as it is written. With ``exclusive=False`` a node may have other
users besides the next one (a relu after a conv whose output is also read elsewhere: the
relu can be quantized with the conv although the two cannot be fused into one kernel).
:class:`NodeIndex` finds the roots by operator without walking the graph again; no example
program is traced.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Optional

from torch.fx import Graph, GraphModule, Node

from pt2q.core.ops import is_op, sole_user

__all__ = ["Step", "NodeIndex", "match_chain", "match_at", "find_chains", "arg_producers"]

Step = AbstractSet[Any]  # a set of operator targets (OpOverload / OpOverloadPacket)


def _feeds(producer: Node, consumer: Node, link_args: Sequence[int]) -> bool:
    return any(i < len(consumer.args) and consumer.args[i] is producer for i in link_args)


def _next_in_chain(node: Node, step: Step, link_args: Sequence[int], exclusive: bool) -> Optional[Node]:
    if exclusive:
        nxt = sole_user(node)
        return nxt if nxt is not None and is_op(nxt, step) and _feeds(node, nxt, link_args) else None
    return next((u for u in node.users if is_op(u, step) and _feeds(node, u, link_args)), None)


def match_at(
    node: Node, steps: Sequence[Step], root: int = 0, link_args: Sequence[int] = (0,), exclusive: bool = True
) -> Optional[tuple[Node, ...]]:
    """Match ``steps`` with ``node`` as step ``root``; return the matched nodes in chain order, or None.

    Every node but the last has exactly one user, the next node of the chain, which reads
    it at one of the positions ``link_args``: a matched chain can be fused without
    changing what other nodes see (``exclusive=False``: the next node is any user reading
    it so, the first in order). Walking back from ``node``, the first argument position
    (in ``link_args`` order) holding a fitting producer is taken.
    """
    if not steps or not is_op(node, steps[root]):
        return None
    before: list[Node] = []
    consumer = node
    for step in reversed(steps[:root]):
        args = [consumer.args[i] for i in link_args if i < len(consumer.args)]
        producer = next(
            (a for a in args if isinstance(a, Node) and is_op(a, step) and (not exclusive or sole_user(a) is consumer)),
            None,
        )
        if producer is None:
            return None
        before.append(producer)
        consumer = producer
    nodes = [*reversed(before), node]
    for step in steps[root + 1 :]:
        nxt = _next_in_chain(nodes[-1], step, link_args, exclusive)
        if nxt is None:
            return None
        nodes.append(nxt)
    return tuple(nodes)


def match_chain(first: Node, steps: Sequence[Step]) -> Optional[tuple[Node, ...]]:
    """Match ``steps`` starting at ``first``, each node read as its user's first argument."""
    return match_at(first, steps)


class NodeIndex:
    """The ``call_function`` nodes of a graph by operator, to find a pattern's roots without a graph walk.

    Built once per annotation pass; annotating writes metadata only, so it stays valid.
    """

    def __init__(self, graph: Graph | GraphModule) -> None:
        g = graph.graph if isinstance(graph, GraphModule) else graph
        self._by_target: dict[Any, list[Node]] = {}
        for node in g.nodes:
            if node.op == "call_function":
                self._by_target.setdefault(node.target, []).append(node)
        self._position = {n: i for i, n in enumerate(g.nodes)}

    def nodes(self, step: Step) -> list[Node]:
        """The nodes calling an operator of ``step``, in graph order."""
        found = [n for target, nodes in self._by_target.items() if is_op(nodes[0], step) for n in nodes]
        return sorted(found, key=self._position.__getitem__)


def find_chains(
    graph: Graph | GraphModule,
    steps: Sequence[Step],
    root: int = 0,
    link_args: Sequence[int] = (0,),
    index: Optional[NodeIndex] = None,
    exclusive: bool = True,
) -> Iterator[tuple[Node, ...]]:
    """Every match of ``steps`` in ``graph``, by root node in graph order (matches may overlap)."""
    for node in (index or NodeIndex(graph)).nodes(steps[root]):
        match = match_at(node, steps, root, link_args, exclusive)
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
