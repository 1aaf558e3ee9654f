"""Time a loaded program: median latency over repeated runs after warm-up.

ExecuTorch's thread pool (which XNNPACK uses) is process-wide and loaded programs hold
on to it, so its size is set with :func:`set_num_threads` *before* loading the programs
to time; :func:`time_program` reports the size it ran with.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Callable
from typing import Any, Optional

import torch

from pt2q.io.quiet import quiet

__all__ = ["Timing", "time_program", "set_num_threads", "get_num_threads", "median_ms", "interleaved_medians_ms"]


@dataclasses.dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    runs: int
    threads: int

    def __str__(self) -> str:
        return f"{self.median_ms:.3f} ms median (min {self.min_ms:.3f}, {self.runs} runs, {self.threads} thread(s))"


def _pybindings():
    with quiet():  # importing ExecuTorch imports torchao, which logs its missing CUDA libraries
        from executorch.extension.pybindings import portable_lib

    return portable_lib


def get_num_threads() -> int:
    """Threads in ExecuTorch's thread pool (which XNNPACK uses)."""
    with quiet(native=True):  # the first call creates the pool, which logs its CPU probing to fd 2
        return int(_pybindings()._threadpool_get_thread_count())


def set_num_threads(threads: int) -> None:
    """Resize ExecuTorch's thread pool. Only while no ``pt2q.runtime.Program`` is alive.

    Programs loaded earlier keep the old pool, and running them after a resize would
    crash the process; so this raises instead. (Programs loaded with ExecuTorch's
    own API are not tracked: free them first.)
    """
    from pt2q.runtime.program import live_programs

    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if get_num_threads() == threads:
        return
    if live_programs():
        raise RuntimeError(
            f"set_num_threads({threads}) must come before loading programs: {live_programs()} loaded program(s) "
            f"still use the current {get_num_threads()}-thread pool. Delete them, or set the thread count first."
        )
    with quiet(native=True):  # the pool logs its CPU probing and size to fd 2
        _pybindings()._unsafe_reset_threadpool(threads)


def time_program(
    program: Callable[..., object],
    *inputs: torch.Tensor,
    runs: int = 50,
    warmup: int = 5,
    max_seconds: Optional[float] = None,
) -> Timing:
    """Median wall time of ``program(*inputs)`` in ms, after ``warmup`` untimed calls.

    Runs on the current thread pool (see :func:`set_num_threads`). With ``max_seconds``
    the timed loop stops early (after at least 3 runs) once that much time was spent.
    """
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


def median_ms(fn: Callable[..., Any], inputs: tuple, runs: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn(*inputs)`` in ms after ``warmup`` untimed calls."""
    return interleaved_medians_ms({"fn": fn}, inputs, runs, warmup)["fn"]


def interleaved_medians_ms(
    fns: dict[str, Callable[..., Any]], inputs: tuple, runs: int = 20, warmup: int = 3, max_seconds: float = 60.0
) -> dict[str, float]:
    """Median wall time (ms) of each of ``fns`` on ``inputs``, timed in turn so drift hits all alike.

    Each round calls every function once, in a fresh random order (what ran just
    before, and so what is in the caches, must not favour one). Stops early (after
    at least 3 rounds) once ``max_seconds`` were spent.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn(*inputs)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns.items())
    rng = random.Random(0)
    start = time.perf_counter()
    for round_ in range(runs):
        if round_ >= 3 and time.perf_counter() - start > max_seconds:
            break
        rng.shuffle(order)
        for name, fn in order:
            t0 = time.perf_counter()
            fn(*inputs)
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: statistics.median(times) for name, times in samples.items()}
