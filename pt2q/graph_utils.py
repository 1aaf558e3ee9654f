"""``pt2q.graph_utils``: torchao's / ExecuTorch's module path.

The code lives in :mod:`pt2q.core.graph_utils`.
"""

from pt2q.core.graph_utils import (  # noqa: F401
    bfs_trace_with_node_process,
    collect_producer_nodes,
    control_flow_subgraphs,
    find_sequential_partitions,
    get_equivalent_types,
    update_equivalent_types_dict,
)

__all__ = [
    "find_sequential_partitions",
    "get_equivalent_types",
    "update_equivalent_types_dict",
    "bfs_trace_with_node_process",
    "collect_producer_nodes",
    "control_flow_subgraphs",
]
