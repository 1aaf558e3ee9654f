"""The ``Quantizer`` interface a backend implements, ``ComposableQuantizer`` that runs several, and the
public spec names."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

import torch
from torch.fx import GraphModule, Node

from pt2q.spec import (
    Q_ANNOTATION_KEY,
    DerivedQuantizationSpec,
    EdgeOrNode,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)

__all__ = [
    "Quantizer",
    "ComposableQuantizer",
    "QuantizationSpecBase",
    "QuantizationSpec",
    "FixedQParamsQuantizationSpec",
    "SharedQuantizationSpec",
    "DerivedQuantizationSpec",
    "QuantizationAnnotation",
    "QuantizationConfig",
    "EdgeOrNode",
    "Q_ANNOTATION_KEY",
]


class Quantizer(ABC):
    """A backend's rules for which tensors to quantize and how.

    ``prepare_pt2e`` calls, in order: ``transform_for_annotation`` (graph rewrites
    the backend needs before annotating), ``annotate`` (write
    ``QuantizationAnnotation``s on nodes), ``validate`` (reject what the backend
    cannot run), then ``prepare_obs_or_fq_callback`` once observers exist.
    """

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        return model

    @abstractmethod
    def annotate(self, model: GraphModule) -> GraphModule: ...

    @abstractmethod
    def validate(self, model: GraphModule) -> None: ...

    def prepare_obs_or_fq_callback(
        self, model: GraphModule, edge_or_node_to_obs_or_fq: dict[EdgeOrNode, torch.nn.Module]
    ) -> None:
        """Hook to adjust the created observers/fake quantizers (e.g. to share one across edges)."""
        return None

    def explain_unannotated(self, node: Node) -> Optional[str]:
        """Why ``node``, which ``annotate`` left alone, stays float (shown by ``pt2q.report``).

        None means "no particular reason known"; backends override this with e.g. "no
        annotator for this operator" or "kept float by set_module_name(..., None)".
        """
        return None


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
        reasons = [f"{type(q).__name__}: {r}" for q in self.quantizers if (r := q.explain_unannotated(node))]
        return "; ".join(reasons) or None


def _snapshot(ann: QuantizationAnnotation) -> tuple:
    inputs = tuple((n, id(s)) for n, s in ann.input_qspec_map.items())
    return (inputs, id(ann.output_qspec), ann.allow_implicit_sharing, ann._annotated)
