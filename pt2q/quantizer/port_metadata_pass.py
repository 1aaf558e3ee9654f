"""``pt2q.quantizer.port_metadata_pass``: torchao's / ExecuTorch's module path.

The code lives in :mod:`pt2q.passes.port_metadata`.
"""

from pt2q.passes.port_metadata import (  # noqa: F401
    METADATA_TO_PORT,
    PortNodeMetaForQDQ,
    port_node_meta_for_qdq,
)

__all__ = [
    "PortNodeMetaForQDQ",
    "METADATA_TO_PORT",
    "port_node_meta_for_qdq",
]
