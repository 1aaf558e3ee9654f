"""``pt2q.export_utils``: torchao's / ExecuTorch's module path.

The code lives in :mod:`pt2q.core.export_utils`.
"""

from pt2q.core.export_utils import (  # noqa: F401
    NotExportedError,
    WrapperModule,
    model_is_exported,
)

__all__ = [
    "model_is_exported",
    "WrapperModule",
    "NotExportedError",
]
