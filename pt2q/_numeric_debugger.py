"""torchao's ``_numeric_debugger`` module path: the numeric debugger of :mod:`pt2q.debug.numeric_debugger`."""

from pt2q.core.graph_utils import bfs_trace_with_node_process
from pt2q.core.notes import FROM_NODE_KEY
from pt2q.debug.numeric_debugger import (
    CUSTOM_KEY,
    NUMERIC_DEBUG_HANDLE_KEY,
    NodeAccuracySummary,
    NodeSourceDebugInfo,
    OutputLogger,
    QuantizationComparisonResult,
    compare_results,
    extract_results_from_loggers,
    generate_numeric_debug_handle,
    prepare_for_propagation_comparison,
)

__all__ = [
    "CUSTOM_KEY",
    "FROM_NODE_KEY",
    "NUMERIC_DEBUG_HANDLE_KEY",
    "NodeAccuracySummary",
    "NodeSourceDebugInfo",
    "OutputLogger",
    "QuantizationComparisonResult",
    "bfs_trace_with_node_process",
    "compare_results",
    "extract_results_from_loggers",
    "generate_numeric_debug_handle",
    "prepare_for_propagation_comparison",
]
