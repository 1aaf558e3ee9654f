"""``ComposableQuantizer``: several quantizers applied one after another
(``torchao.quantization.pt2e.quantizer.composable_quantizer``)."""

from __future__ import annotations

from typing import Optional

from torch.fx import GraphModule, Node

from pt2q.core.spec import Q_ANNOTATION_KEY, QuantizationAnnotation
from pt2q.quantizer.quantizer import Quantizer

__all__ = ["ComposableQuantizer"]


class ComposableQuantizer(Quantizer):
    """Apply ``quantizers`` one after another; earlier ones take precedence.

    A later quantizer may annotate nodes the earlier ones left alone, but changing
    an annotation an earlier quantizer wrote is an error that names the node.
    """

    def __init__(self, quantizers: list[Quantizer]):
        super().__init__()
        self.quantizers = list(quantizers)

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        for quantizer in self.quantizers:
            model = quantizer.transform_for_annotation(model)
        return model

    def annotate(self, model: GraphModule) -> GraphModule:
        # node -> (annotation object, snapshot of its content, owner quantizer)
        seen: dict[Node, tuple[QuantizationAnnotation, tuple, Quantizer]] = {}
        for quantizer in self.quantizers:
            quantizer.annotate(model)
            for node in model.graph.nodes:
                ann = node.meta.get(Q_ANNOTATION_KEY)
                if ann is None:
                    if node in seen:  # an earlier quantizer's annotation removed: its nodes would go float
                        raise RuntimeError(
                            f"{type(quantizer).__name__} removed the quantization annotation of node "
                            f"'{node.name}' that {type(seen[node][2]).__name__} wrote before it. Quantizers in a "
                            "ComposableQuantizer must annotate disjoint nodes."
                        )
                    continue
                snap = _snapshot(ann)
                if node in seen:
                    old_ann, old_snap, owner = seen[node]
                    if ann is not old_ann or snap != old_snap:
                        raise RuntimeError(
                            f"{type(quantizer).__name__} changed the quantization annotation of node "
                            f"'{node.name}' that {type(owner).__name__} wrote before it. Quantizers in a "
                            "ComposableQuantizer must annotate disjoint nodes: skip nodes whose "
                            "annotation has `_annotated=True`, or reorder the quantizers."
                        )
                else:
                    seen[node] = (ann, snap, quantizer)
        return model

    def validate(self, model: GraphModule) -> None:
        for quantizer in self.quantizers:
            quantizer.validate(model)

    def explain_unannotated(self, node: Node) -> Optional[str]:
        reasons = [f"{type(q).__name__}: {r}" for q in self.quantizers if (r := _explain(q, node))]
        return "; ".join(reasons) or None


def _snapshot(ann: QuantizationAnnotation) -> tuple:
    inputs = tuple((n, id(s)) for n, s in ann.input_qspec_map.items())
    return (inputs, id(ann.output_qspec), ann.allow_implicit_sharing, ann._annotated)


def _explain(quantizer: object, node: Node) -> Optional[str]:
    explain = getattr(quantizer, "explain_unannotated", None)  # optional: quantizers written for torchao lack it
    return explain(node) if explain is not None else None
