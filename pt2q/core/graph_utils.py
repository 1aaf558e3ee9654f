"""Graph helpers of torchao's ``graph_utils``: finding fused module sequences, walking nested graphs.

>>> import torch
>>> class Net(torch.nn.Module):
...     def __init__(self):
...         super().__init__()
...         self.conv, self.relu = torch.nn.Conv2d(3, 3, 1), torch.nn.ReLU()
...     def forward(self, x):
...         return self.relu(self.conv(x))
>>> gm = torch.export.export(Net(), (torch.randn(1, 3, 4, 4),)).module()
>>> [[p.output_nodes[0].name for p in seq] for seq in find_sequential_partitions(gm, [torch.nn.Conv2d, torch.nn.ReLU])]
[['conv2d', 'relu']]

``find_sequential_partitions`` matches by the module or function that produced each node (its
``source_fn_stack``), as torchao's quantizers do; pt2q's own quantizers match by operator
(:mod:`pt2q.core.pattern`).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node
from torch.fx.passes.utils.source_matcher_utils import (
    SourcePartition,
    check_subgraphs_connected,
    get_source_partitions,
)

from pt2q.core.control_flow import control_flow_calls
from pt2q.core.export_utils import NotExportedError

__all__ = [
    "find_sequential_partitions",
    "get_equivalent_types",
    "update_equivalent_types_dict",
    "bfs_trace_with_node_process",
    "collect_producer_nodes",
    "control_flow_subgraphs",
]


# Each set: module types, functions and method names that produce the same operator.
_DEFAULT_EQUIVALENT_TYPES: list[set] = [
    {torch.nn.Conv1d, F.conv1d},
    {torch.nn.Conv2d, F.conv2d},
    {torch.nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d},
    {torch.nn.ReLU, F.relu, F.relu_},
    {torch.nn.BatchNorm2d, F.batch_norm},
    {torch.nn.Hardtanh, F.hardtanh, F.hardtanh_},
    {torch.add, operator.add, operator.iadd, "add", "add_"},
    {torch.mul, operator.mul, operator.imul, "mul", "mul_"},
]


def _index(groups: list[set]) -> dict[Any, list[Any]]:
    return {member: list(group) for group in groups for member in group}


_equivalent_types: list[set] = _DEFAULT_EQUIVALENT_TYPES
_equivalents: dict[Any, list[Any]] = _index(_equivalent_types)


def get_equivalent_types() -> list[set]:
    """The groups of module types / functions that ``find_sequential_partitions`` treats as one."""
    return _equivalent_types


def update_equivalent_types_dict(customized_equivalent_types: Optional[list[set]] = None) -> None:
    """Replace the equivalence groups (e.g. to add ``{MyReLU, F.relu}``)."""
    global _equivalent_types, _equivalents
    if customized_equivalent_types is None:
        raise ValueError("customized_equivalent_types should not be None: pass the list of equivalence sets to use")
    _equivalent_types = customized_equivalent_types
    _equivalents = _index(customized_equivalent_types)


def _matching_types(partition_type: Any) -> list[Any]:
    return [partition_type, *_equivalents.get(partition_type, [])]


def find_sequential_partitions(
    gm: GraphModule,
    partition_types: list[Any],
    include_functional_equivalent: bool = True,
    filter_fn: Optional[Callable[[Node], bool]] = None,
) -> list[tuple[SourcePartition, ...]]:
    """Every sequence of source partitions, one of each type in ``partition_types``, each feeding the next.

    A type matches its equivalents too (:func:`get_equivalent_types`); two types in the sequence may not
    be equivalent to each other. ``filter_fn`` restricts the nodes partitions are built from.
    """
    seen: set[Any] = set()
    for partition_type in partition_types:
        types = set(_matching_types(partition_type))
        if seen & types:
            raise ValueError(
                f"Invalid partition types: {partition_types}. Each type in the sequence must be unique "
                "(no two may be equivalent)"
            )
        seen |= types
    candidates = []
    for partition_type in partition_types:
        found = get_source_partitions(gm.graph, _matching_types(partition_type), filter_fn)
        candidates.append(list(itertools.chain.from_iterable(found.values())))
    return [
        combo
        for combo in itertools.product(*candidates)
        if all(check_subgraphs_connected(a, b) for a, b in zip(combo, combo[1:]))
    ]


def control_flow_subgraphs(gm: GraphModule) -> list[tuple[str, GraphModule, Node]]:
    """``(attribute name, subgraph, calling node)`` for each control-flow subgraph ``gm``'s own graph runs
    (``cond`` branches, the ``map`` / ``scan`` body, the ``while_loop`` body); nested ones are not included.

    These are the bodies that return the op's outputs (:attr:`pt2q.core.control_flow.ControlFlowCall.returning`):
    a ``while_loop``'s condition is not among them, as in torchao."""
    return [(name, call.body(name), call.node) for call in control_flow_calls(gm) for name in call.returning]


def bfs_trace_with_node_process(model: Union[ExportedProgram, GraphModule], node_op: Callable[[Node], Any]) -> None:
    """Call ``node_op`` on every node but placeholders and outputs, graph by graph, breadth first through
    control-flow subgraphs."""
    if not isinstance(model, (ExportedProgram, GraphModule)):
        raise NotExportedError(f"Expected GraphModule or ExportedProgram, got {type(model).__name__}")
    queue = [model.graph_module if isinstance(model, ExportedProgram) else model]
    while queue:
        gm = queue.pop(0)
        for node in gm.graph.nodes:
            if node.op not in ("placeholder", "output"):
                node_op(node)
        queue.extend(sub for _, sub, _ in control_flow_subgraphs(gm))


def collect_producer_nodes(node: Node) -> Optional[list[Node]]:
    """``node`` and everything it is computed from, up to ``get_attr``s; None if a graph input is among them
    (the value is then not a constant that could be folded)."""
    nodes = [node]
    frontier = [node]
    while frontier:
        current = frontier.pop()
        for arg in [*current.args, *current.kwargs.values()]:
            if not isinstance(arg, Node):
                continue
            if arg.op == "placeholder":
                return None
            nodes.append(arg)
            if not (arg.op == "call_function" and arg.target is getattr):
                frontier.append(arg)
    return nodes
