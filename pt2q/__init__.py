"""pt2q: quantize ``torch.export`` programs (PT2E) and lower them to int8 runtimes.

The flow, as in ``torchao.quantization.pt2e``:

>>> import torch
>>> from pt2q import convert_pt2e, prepare_pt2e, report
>>> from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
>>> model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
>>> ep = torch.export.export(model, (torch.randn(2, 16),))
>>> quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
>>> m = prepare_pt2e(ep.module(), quantizer)
>>> calibration_batches = [(torch.randn(2, 16),) for _ in range(4)]   # each batch: a tuple of inputs
>>> for batch in calibration_batches:
...     _ = m(*batch)
>>> m = convert_pt2e(m)
>>> r = report(m, ep, calibration_batches)   # what was quantized, and where accuracy is lost
>>> [(row.name, row.op, row.pattern) for row in r.quantized_rows]
[('linear', 'linear+relu', 'linear_relu'), ('linear_1', 'linear', 'linear')]
"""

from pt2q.algorithms.accuracy_aware import FallbackStep, QuantizeResult, quantize
from pt2q.algorithms.bias_correction import correct_bias
from pt2q.algorithms.gptq import gptq_quantize
from pt2q.algorithms.keep_float import KeepFloat
from pt2q.algorithms.smoothing import smooth_quant
from pt2q.core.drop_in_warnings import (
    DropInWarning,
    FakeQuantizeInPTQWarning,
    IgnoredArgumentWarning,
    MissingChannelAxisWarning,
    NotAnInputWarning,
    ObserverInQATWarning,
    UncalibratedObserverWarning,
)
from pt2q.core.export_utils import WrapperModule
from pt2q.core.graph_utils import (
    bfs_trace_with_node_process,
    find_sequential_partitions,
    get_equivalent_types,
    update_equivalent_types_dict,
)
from pt2q.core.notes import FROM_NODE_KEY
from pt2q.debug.numeric_debugger import (
    CUSTOM_KEY,
    NUMERIC_DEBUG_HANDLE_KEY,
    NodeSourceDebugInfo,
    compare_results,
    extract_results_from_loggers,
    generate_numeric_debug_handle,
    prepare_for_propagation_comparison,
)
from pt2q.debug.quantization_report import QuantizationReport, report
from pt2q.fake_quant.affine_fake_quantize import AffineFakeQuantize
from pt2q.fake_quant.base import (
    FakeQuantizeBase,
    ObserverOrFakeQuantize,
    ObserverOrFakeQuantizeConstructor,
    disable_fake_quant,
    disable_observer,
    enable_fake_quant,
    enable_observer,
)
from pt2q.fake_quant.defaults import default_dynamic_fake_quant, default_fake_quant
from pt2q.fake_quant.fake_quantize import FakeQuantize, FixedQParamsFakeQuantize, FusedMovingAvgObsFakeQuantize
from pt2q.fake_quant.learnable_fake_quantize import (
    LearnableFakeQuantize,
    disable_range_learning,
    enable_range_learning,
)
from pt2q.io.pt2_file import Pt2LoadError, UntrustedContentError, load_pt2, save_pt2
from pt2q.numerics.affine_primitives import MappingType, TorchAODType, ZeroPointDomain
from pt2q.numerics.granularity import (
    Granularity,
    PerAxis,
    PerBlock,
    PerGroup,
    PerRow,
    PerTensor,
    PerToken,
    get_block_size,
)
from pt2q.numerics.metrics import sqnr
from pt2q.observers.affine_base import AffineQuantizedObserverBase
from pt2q.observers.affine_observer import (
    AffineQuantizedMinMaxObserver,
    AffineQuantizedMovingAverageMinMaxObserver,
    AffineQuantizedPlaceholderObserver,
)
from pt2q.observers.base import ObserverBase, UniformQuantizationObserverBase
from pt2q.observers.derived import DerivedObserverOrFakeQuantize
from pt2q.observers.histogram import HistogramObserver
from pt2q.observers.min_max import (
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver,
)
from pt2q.observers.pass_through import (
    FixedQParamsObserver,
    NoopObserver,
    PlaceholderObserver,
    RecordingObserver,
    ReuseInputObserver,
)
from pt2q.passes.convert import convert_pt2e
from pt2q.passes.prepare import prepare_pt2e, prepare_qat_pt2e
from pt2q.passes.scale_check import QuantizationRangeWarning
from pt2q.passes.train_eval import (
    allow_exported_model_train_eval,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)
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
    "quantize",
    "sqnr",
    "QuantizeResult",
    "FallbackStep",
    "KeepFloat",
    "smooth_quant",
    "correct_bias",
    "QuantizationRangeWarning",
    # where pt2q accepts what torchao accepts but warns
    "DropInWarning",
    "ObserverInQATWarning",
    "FakeQuantizeInPTQWarning",
    "MissingChannelAxisWarning",
    "NotAnInputWarning",
    "UncalibratedObserverWarning",
    "IgnoredArgumentWarning",
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
    "save_pt2",
    "load_pt2",
    "Pt2LoadError",
    "UntrustedContentError",
    # observers and fake quantizers (torchao.quantization.pt2e's names)
    "ObserverBase",
    "UniformQuantizationObserverBase",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver",
    "MovingAveragePerChannelMinMaxObserver",
    "HistogramObserver",
    "FixedQParamsObserver",
    "PlaceholderObserver",
    "NoopObserver",
    "RecordingObserver",
    "ReuseInputObserver",
    "DerivedObserverOrFakeQuantize",
    "FakeQuantizeBase",
    "FakeQuantize",
    "FixedQParamsFakeQuantize",
    "FusedMovingAvgObsFakeQuantize",
    "ObserverOrFakeQuantize",
    "ObserverOrFakeQuantizeConstructor",
    "default_fake_quant",
    "default_dynamic_fake_quant",
    "enable_fake_quant",
    "disable_fake_quant",
    "enable_observer",
    "disable_observer",
    # graph and export helpers, debugger keys
    "WrapperModule",
    "find_sequential_partitions",
    "get_equivalent_types",
    "update_equivalent_types_dict",
    "bfs_trace_with_node_process",
    "CUSTOM_KEY",
    "NUMERIC_DEBUG_HANDLE_KEY",
    "FROM_NODE_KEY",
    # affine (low-bit, blockwise) quantization, as torchao.quantization.pt2e exports it
    "AffineQuantizedObserverBase",
    "AffineQuantizedMinMaxObserver",
    "AffineQuantizedMovingAverageMinMaxObserver",
    "AffineQuantizedPlaceholderObserver",
    "AffineFakeQuantize",
    "Granularity",
    "MappingType",
    "PerAxis",
    "PerBlock",
    "PerGroup",
    "PerRow",
    "PerTensor",
    "PerToken",
    "TorchAODType",
    "ZeroPointDomain",
    "get_block_size",
    "gptq_quantize",
]
