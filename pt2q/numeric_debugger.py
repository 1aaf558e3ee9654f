"""``pt2q.numeric_debugger``: the previous layout's path (old pickles name classes here).

The code lives in :mod:`pt2q.debug.numeric_debugger`.
"""

from pt2q.debug.numeric_debugger import (  # noqa: F401
    CUSTOM_KEY,
    NUMERIC_DEBUG_HANDLE_KEY,
    NodeAccuracySummary,
    NodeSourceDebugInfo,
    OutputLogger,
    QuantizationComparisonResult,
    anchor_nodes,
    compare_results,
    extract_results_from_loggers,
    generate_numeric_debug_handle,
    prepare_for_propagation_comparison,
    value_anchors,
)

__all__ = [
    "NUMERIC_DEBUG_HANDLE_KEY",
    "CUSTOM_KEY",
    "NodeSourceDebugInfo",
    "OutputLogger",
    "QuantizationComparisonResult",
    "NodeAccuracySummary",
    "generate_numeric_debug_handle",
    "value_anchors",
    "anchor_nodes",
    "prepare_for_propagation_comparison",
    "extract_results_from_loggers",
    "compare_results",
]
