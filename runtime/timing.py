"""Time a loaded program: median latency over repeated runs after warm-up, on a fixed thread count."""
from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Callable, Optional

import torch

__all__ = ["Timing", "time_program", "set_num_threads", "get_num_threads"]


@dataclasses.dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    runs: int
    threads: int

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms median (min {self.min_ms:.3f}, {self.runs} runs, {self.threads} thread(s))"


def _pybindings():
    from executorch.extension.pybindings import portable_lib

    return portable_lib


def get_num_threads() -> int:
    """Threads in ExecuTorch's thread pool (which XNNPACK uses)."""
    return int(_pybindings()._threadpool_get_thread_count())


def set_num_threads(threads: int) -> None:
    """Resize ExecuTorch's thread pool; call it between runs, never during one."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if get_num_threads() != threads:
        _pybindings()._unsafe_reset_threadpool(threads)


def time_program(
    program: Callable[..., object],
    *inputs: torch.Tensor,
    runs: int = 50,
    warmup: int = 5,
    threads: Optional[int] = 1,
    max_seconds: Optional[float] = None,
) -> Timing:
    """Median wall time of ``program(*inputs)`` in ms, after ``warmup`` untimed calls.

    ``threads`` sets ExecuTorch's thread pool first (``None`` keeps it). With
    ``max_seconds`` the timed loop stops early (after at least 3 runs) once that much
    time was spent.
    """
    if threads is not None:
        set_num_threads(threads)
    for _ in range(warmup):
        program(*inputs)
    samples: list[float] = []
    start = time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        program(*inputs)
        samples.append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and len(samples) >= 3 and time.perf_counter() - start > max_seconds:
            break
    return Timing(
        median_ms=statistics.median(samples),
        min_ms=min(samples),
        runs=len(samples),
        threads=get_num_threads(),
    )
