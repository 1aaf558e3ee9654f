"""Lowering of converted pt2q graphs to int8 runtimes."""

# x86: Inductor + oneDNN int8 kernels
# ExecuTorch (.pte): XNNPACK delegate + ExecuTorch quantized kernels
from pt2q.lowering.delegation_report import DelegationReport, OpPlacement  # noqa: E402
from pt2q.lowering.executorch import (  # noqa: E402
    LoweredProgram,
    LoweringError,
    QuantizedFallbackWarning,
    UnsupportedQuantizedPatternError,
    to_executorch,
)

# pt2q.report for lowered programs: where each node runs, and the .pte's own output SQNR
from pt2q.lowering.numeric_report import LoweredReport, numeric_report  # noqa: E402
from pt2q.lowering.x86 import (  # noqa: E402
    X86CompiledModel,
    compile_quantized_for_x86,
    int8_inference,
    lower_pt2e_quantized_to_x86,
)

__all__ = [
    "X86CompiledModel",
    "compile_quantized_for_x86",
    "int8_inference",
    "lower_pt2e_quantized_to_x86",
    "DelegationReport",
    "OpPlacement",
    "LoweredProgram",
    "LoweringError",
    "QuantizedFallbackWarning",
    "UnsupportedQuantizedPatternError",
    "to_executorch",
    "LoweredReport",
    "numeric_report",
]
