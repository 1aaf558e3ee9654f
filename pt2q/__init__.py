"""pt2q: quantize ``torch.export`` programs (PT2E) and lower them to int8 runtimes.

The flow, as in ``torchao.quantization.pt2e``::

    m = torch.export.export(model.eval(), example_inputs).module()
    m = prepare_pt2e(m, XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
    for x in calibration_data:
        m(x)
    m = convert_pt2e(m)
    print(report(m, float_model, calibration_data))   # what was quantized, and where accuracy is lost
"""

from pt2q.convert import convert_pt2e
from pt2q.learnable_fake_quantize import (
    LearnableFakeQuantize,
    disable_range_learning,
    enable_range_learning,
)
from pt2q.numeric_debugger import (
    NodeSourceDebugInfo,
    compare_results,
    extract_results_from_loggers,
    generate_numeric_debug_handle,
    prepare_for_propagation_comparison,
)
from pt2q.prepare import prepare_pt2e, prepare_qat_pt2e
from pt2q.quantization_report import QuantizationReport, report
from pt2q.quantizer import (
    ComposableQuantizer,
    DerivedQuantizationSpec,
    EdgeOrNode,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpec,
    QuantizationSpecBase,
    Quantizer,
    SharedQuantizationSpec,
)
from pt2q.train_eval import (
    allow_exported_model_train_eval,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)

__all__ = [
    "prepare_pt2e",
    "prepare_qat_pt2e",
    "convert_pt2e",
    "move_exported_model_to_eval",
    "move_exported_model_to_train",
    "allow_exported_model_train_eval",
    "generate_numeric_debug_handle",
    "prepare_for_propagation_comparison",
    "extract_results_from_loggers",
    "compare_results",
    "NodeSourceDebugInfo",
    "report",
    "QuantizationReport",
    "LearnableFakeQuantize",
    "enable_range_learning",
    "disable_range_learning",
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
]
