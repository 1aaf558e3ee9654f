"""Sharing groups: which edges and node outputs use one observer.

Every annotated input edge ``(producer, consumer)`` and every annotated node
output is a member. Members join a group when

* a ``SharedQuantizationSpec`` points one at the other (explicit sharing), or
* an input edge's spec has the same quantization parameters (dtype, range,
  qscheme, axis, fixed scale/zero point) as its producer's output or as another
  edge out of the same producer, and the consumer allows implicit sharing: they
  quantize the same tensor, so one observer serves all of them. A producer's
  aliases (the same value seen from another graph: an operand of a control-flow
  op and the placeholder of its body, a body output and the getitem returning
  it) count as the producer.

Groups are a union-find over members; the result is a group id per member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Optional

from torch.fx import GraphModule, Node

from pt2q.core.spec import Q_ANNOTATION_KEY, EdgeOrNode, QuantizationSpecBase, SharedQuantizationSpec
from pt2q.passes.check_annotations import PHANTOM_INPUTS_KEY

__all__ = ["collect_qspecs", "sharing_groups", "root_spec"]

_SAME_QUANTIZATION = ("dtype", "is_dynamic", "quant_min", "quant_max", "qscheme", "ch_axis", "scale", "zero_point")


def collect_qspecs(gm: GraphModule) -> dict[EdgeOrNode, QuantizationSpecBase]:
    """Map each annotated edge and node output to its spec, in graph order (with the entries for nodes that
    are not inputs, which join sharing groups but get no observer)."""
    specs: dict[EdgeOrNode, QuantizationSpecBase] = {}
    for node in gm.graph.nodes:
        ann = node.meta.get(Q_ANNOTATION_KEY)
        if ann is None:
            continue
        entries = list(ann.input_qspec_map.items())
        for position, arg, spec in node.meta.get(PHANTOM_INPUTS_KEY, ()):
            entries.insert(position, (arg, spec))
        for arg, spec in entries:
            if spec is not None:
                specs[(arg, node)] = spec
        if ann.output_qspec is not None:
            specs[node] = ann.output_qspec
    return specs


class _UnionFind:
    def __init__(self, members):
        self.parent = {m: m for m in members}

    def find(self, m: EdgeOrNode) -> EdgeOrNode:
        root = m
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[m] != root:  # path compression
            self.parent[m], m = root, self.parent[m]
        return root

    def union(self, keep: EdgeOrNode, other: EdgeOrNode) -> None:
        """Merge ``other``'s group into ``keep``'s; ``keep``'s root stays the root."""
        a, b = self.find(keep), self.find(other)
        if a != b:
            self.parent[b] = a


def root_spec(member: EdgeOrNode, specs: dict, uf: _UnionFind) -> QuantizationSpecBase:
    """The non-shared spec that finally describes ``member`` (following SharedQuantizationSpecs)."""
    spec = specs[member]
    seen = set()
    while isinstance(spec, SharedQuantizationSpec):
        target = uf.find(spec.edge_or_node)
        if target in seen:
            break
        seen.add(target)
        spec = specs[target]
    return spec


def _same_quantization(a: QuantizationSpecBase, b: QuantizationSpecBase) -> bool:
    return all(
        getattr(a, f, None) == getattr(b, f, None) and hasattr(a, f) == hasattr(b, f) for f in _SAME_QUANTIZATION
    )


def _share(parent: EdgeOrNode, child: EdgeOrNode, specs: dict, uf: _UnionFind) -> None:
    # Keep the root whose spec is a real (non-shared) spec, so the group's observer
    # is built from it; a root holding a SharedQuantizationSpec that points back
    # into the merged group hands the root role over.
    root_parent, root_child = uf.find(parent), uf.find(child)
    parent_spec = specs[root_parent]
    if isinstance(parent_spec, SharedQuantizationSpec) and parent_spec.edge_or_node == root_child:
        uf.union(root_child, root_parent)
    else:
        uf.union(root_parent, root_child)


def sharing_groups(
    specs: dict[EdgeOrNode, QuantizationSpecBase], aliases: Optional[Mapping[Node, Sequence[Node]]] = None
) -> tuple[dict[EdgeOrNode, int], _UnionFind]:
    """Assign a group id to every member of ``specs`` (see module docstring)."""
    uf = _UnionFind(specs)
    aliases = aliases or {}
    for member, spec in specs.items():
        if isinstance(member, tuple):
            producer, consumer = member
            if consumer.meta[Q_ANNOTATION_KEY].allow_implicit_sharing:
                mine = root_spec(member, specs, uf)
                same_value = [producer, *aliases.get(producer, ())]
                siblings: list[EdgeOrNode] = [(p, u) for p in same_value for u in p.users if (p, u) != member]
                for other in siblings + same_value:
                    if other in specs and _same_quantization(root_spec(other, specs, uf), mine):
                        _share(other, member, specs, uf)
        if isinstance(spec, SharedQuantizationSpec):
            _share(spec.edge_or_node, member, specs, uf)
    group_of_root: dict[EdgeOrNode, int] = {}
    groups: dict[EdgeOrNode, int] = {}
    for member in specs:
        root = uf.find(member)
        groups[member] = group_of_root.setdefault(root, len(group_of_root))
    return groups, uf
