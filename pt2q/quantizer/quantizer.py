"""The ``Quantizer`` interface a backend implements, and the spec names it writes
(``torchao.quantization.pt2e.quantizer.quantizer``)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Optional

import torch
from torch.fx import GraphModule, Node

from pt2q.core.spec import (
    Q_ANNOTATION_KEY,
    DerivedQuantizationSpec,
    EdgeOrNode,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)

__all__ = [
    "Quantizer",
    "QuantizationSpecBase",
    "QuantizationSpec",
    "FixedQParamsQuantizationSpec",
    "SharedQuantizationSpec",
    "DerivedQuantizationSpec",
    "QuantizationAnnotation",
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
