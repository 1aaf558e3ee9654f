"""Calibration and quantization-aware training across processes (``torch.distributed``):
merging observers, SyncBatchNorm for exported graphs."""

from pt2q.distributed.calibration import (
    calibrate,
    convert_sync_batchnorm,
    sync_observers,
)

__all__ = [
    "sync_observers",
    "calibrate",
    "convert_sync_batchnorm",
]
