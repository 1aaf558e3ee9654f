"""``KeepFloat``: any quantizer, with some nodes of the float graph left float.

    quantizer = KeepFloat(XNNPACKQuantizer().set_global(config), {"linear_5": "its output has outliers"})

Nodes are named as ``pt2q.report`` names its rows: by the float exported graph's node
names (their debug handles), so a name read off a report keeps that layer float in a new
prepare of the same graph. The wrapped quantizer annotates as usual; then the named
nodes lose their annotations, and so does every annotation that shares or derives its
qparams from what they no longer quantize (e.g. a ``view`` sharing a float linear's
output), which is what the quantizer would have done had it never annotated them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Optional, Union

from torch.fx import GraphModule, Node

from pt2q.core.notes import debug_info
from pt2q.core.spec import (
    Q_ANNOTATION_KEY,
    DerivedQuantizationSpec,
    EdgeOrNode,
    QuantizationAnnotation,
    SharedQuantizationSpec,
)
from pt2q.quantizer import Quantizer

__all__ = ["KeepFloat", "layer_name"]


def layer_name(node: Node) -> str:
    """The name ``pt2q.report`` gives ``node``'s row: its float-graph node's."""
    handle = debug_info(node)
    return handle.name if handle is not None else node.name


def _references(spec: object) -> list[EdgeOrNode]:
    if isinstance(spec, SharedQuantizationSpec):
        return [spec.edge_or_node]
    if isinstance(spec, DerivedQuantizationSpec):
        return list(spec.derived_from)
    return []


def _members(node: Node, ann: QuantizationAnnotation) -> set[EdgeOrNode]:
    members: set[EdgeOrNode] = {(arg, node) for arg in ann.input_qspec_map}
    if ann.output_qspec is not None:
        members.add(node)
    return members


def strip_annotations(model: GraphModule, names: Iterable[str]) -> list[Node]:
    """Remove the annotations of the nodes whose layer is in ``names``, and of those that
    depended on them (in place); return the nodes stripped."""
    wanted = set(names)
    stripped: list[Node] = []
    gone: set[EdgeOrNode] = set()

    def strip(node: Node, ann: QuantizationAnnotation) -> None:
        gone.update(_members(node, ann))
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(_annotated=True)  # claimed, and float
        stripped.append(node)

    for node in model.graph.nodes:
        ann = node.meta.get(Q_ANNOTATION_KEY)
        if ann is not None and layer_name(node) in wanted:
            strip(node, ann)
    changed = True
    while changed:  # drop whatever shares with or derives from a stripped tensor
        changed = False
        for node in model.graph.nodes:
            ann = node.meta.get(Q_ANNOTATION_KEY)
            if ann is None or node in stripped:
                continue
            specs = [*ann.input_qspec_map.values(), ann.output_qspec]
            if any(ref in gone for spec in specs for ref in _references(spec)):
                strip(node, ann)
                changed = True
    return stripped


class KeepFloat(Quantizer):
    """``quantizer``, except that the layers named in ``layers`` (report row names) stay float.

    ``layers`` maps each name to the reason ``pt2q.report`` shows (or is a plain collection
    of names, reported as "kept float by KeepFloat").
    """

    def __init__(self, quantizer: Quantizer, layers: Union[Mapping[str, str], Iterable[str]]) -> None:
        super().__init__()
        self.quantizer = quantizer
        self.layers = dict(layers) if isinstance(layers, Mapping) else dict.fromkeys(layers, "kept float by KeepFloat")
        self._dependents: dict[str, str] = {}

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        return self.quantizer.transform_for_annotation(model)

    def annotate(self, model: GraphModule) -> GraphModule:
        self.quantizer.annotate(model)
        stripped = strip_annotations(model, self.layers)
        self._dependents = {n.name: layer_name(n) for n in stripped if layer_name(n) not in self.layers}
        return model

    def validate(self, model: GraphModule) -> None:
        self.quantizer.validate(model)

    def prepare_obs_or_fq_callback(self, model: GraphModule, edge_or_node_to_obs_or_fq: dict) -> None:
        self.quantizer.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)

    def explain_unannotated(self, node: Node) -> Optional[str]:
        name = layer_name(node)
        if name in self.layers:
            return self.layers[name]
        if node.name in self._dependents:
            return "it shares its qparams with a layer kept float"
        return self.quantizer.explain_unannotated(node)
