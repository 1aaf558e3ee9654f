"""The quantizer interface and the helpers to write one (``torchao.quantization.pt2e.quantizer``).

* :mod:`~pt2q.quantizer.quantizer`: ``Quantizer`` and the specs it writes on nodes;
* :mod:`~pt2q.quantizer.composable_quantizer`: ``ComposableQuantizer``;
* :mod:`~pt2q.quantizer.utils`: annotation helpers, ``QuantizationConfig`` and its readers;
* :mod:`~pt2q.passes.duplicate_dq`, :mod:`~pt2q.passes.port_metadata`: the passes
  ``convert_pt2e`` runs, as ``torch.fx`` ``PassBase`` classes.

The backend quantizers live in :mod:`pt2q.quantizers`. The modules here named after torchao's
backend modules (``x86_inductor_quantizer``, ``arm_inductor_quantizer``, ``embedding_quantizer``)
only re-export them, so that ``from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import ...``
migrates by renaming the package; nothing in pt2q imports them, and this package does not.
"""

from pt2q.passes.duplicate_dq import DuplicateDQPass
from pt2q.passes.port_metadata import PortNodeMetaForQDQ
from pt2q.quantizer.composable_quantizer import ComposableQuantizer
from pt2q.quantizer.quantizer import (
    Q_ANNOTATION_KEY,
    DerivedQuantizationSpec,
    EdgeOrNode,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
)
from pt2q.quantizer.utils import (
    OperatorConfig,
    OperatorPatternType,
    QuantizationConfig,
    annotate_input_qspec_map,
    annotate_output_qspec,
    get_bias_qspec,
    get_input_act_qspec,
    get_module_name_filter,
    get_output_act_qspec,
    get_weight_qspec,
    is_valid_annotation,
)

__all__ = [
    "Quantizer",
    "ComposableQuantizer",
    "EdgeOrNode",
    "QuantizationSpec",
    "QuantizationSpecBase",
    "DerivedQuantizationSpec",
    "FixedQParamsQuantizationSpec",
    "SharedQuantizationSpec",
    "QuantizationAnnotation",
    "annotate_input_qspec_map",
    "annotate_output_qspec",
    "get_module_name_filter",
    "is_valid_annotation",
    "QuantizationConfig",
    "OperatorPatternType",
    "OperatorConfig",
    "get_input_act_qspec",
    "get_output_act_qspec",
    "get_weight_qspec",
    "get_bias_qspec",
    "DuplicateDQPass",
    "PortNodeMetaForQDQ",
    "Q_ANNOTATION_KEY",
]
