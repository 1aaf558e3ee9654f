"""Try a ``.pte`` in a forked child process before this process loads it.

ExecuTorch verifies a program's flatbuffer, but some malformed programs still make its
loader or a kernel abort the process (SIGABRT) or crash it. :func:`check_in_child`
loads the program and runs it once on zeros in a child; if the child dies, the caller
gets a :class:`~pt2q.runtime.ProgramLoadError` naming the signal and ExecuTorch's last
log line instead of losing the process. A program that passes loads the same way here.
"""

from __future__ import annotations

import faulthandler
import os
import select
import signal
import time

import torch

from pt2q.io.quiet import quiet
from pt2q.runtime.loading import ProgramLoadError, executorch_runtime, open_method, tensor_spec

__all__ = ["check_in_child"]

_ERROR = b"\0pt2q-error:"


def _child(data: bytes, method: str, source: str, report: int) -> int:
    """Load and run once on zeros; the exit status says how it went (a crash says it by itself)."""
    try:
        with quiet():  # Python warnings off; native log lines go to the parent through fd 2
            _, loaded = open_method(data, method, source)
            meta = loaded.metadata
            specs = [tensor_spec(meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
            try:
                loaded.execute([torch.zeros(shape, dtype=dtype) for shape, dtype in specs])
            except RuntimeError as e:
                raise ProgramLoadError(f"{source} loads but fails to run on zero inputs: {e}") from e
        return 0
    except ProgramLoadError as e:
        os.write(report, _ERROR + str(e).encode(errors="replace"))
        return 1
    except Exception:  # not a loader failure: the caller meets it again when it loads in-process
        return 0


def check_in_child(data: bytes, method: str = "forward", source: str = "<bytes>", timeout: float = 120.0) -> None:
    """Raise :class:`ProgramLoadError` if loading ``data`` (verified ``.pte`` bytes) or running
    ``method`` once on zero inputs kills, hangs or fails in a child process (a no-op without ``os.fork``)."""
    if not hasattr(os, "fork"):  # no fork (Windows): nothing to isolate in; the caller loads in-process
        return
    executorch_runtime()  # import ExecuTorch here, so the child does not pay for it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into the caller's code
        status = 1
        try:
            os.close(read)
            os.dup2(write, 2)
            faulthandler.disable()  # a crash here is the parent's to report, in one line
            status = _child(data, method, source, write)
        finally:
            os._exit(status)
    os.close(write)
    output, deadline = b"", time.monotonic() + timeout
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read], [], [], remaining)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise ProgramLoadError(f"ExecuTorch did not finish loading {source} within {timeout:.0f} s")
            chunk = os.read(read, 65536)
            if not chunk:
                break
            output += chunk
    finally:
        os.close(read)
    _, status = os.waitpid(pid, 0)
    if _ERROR in output:
        raise ProgramLoadError(output.split(_ERROR, 1)[1].decode(errors="replace"))
    if os.WIFSIGNALED(status):
        lines = [line.strip() for line in output.decode(errors="replace").splitlines() if line.strip()]
        said = f" after logging: {lines[-1]}" if lines else ""
        raise ProgramLoadError(
            f"ExecuTorch crashed ({signal.Signals(os.WTERMSIG(status)).name}) while loading {source}{said}: "
            "the .pte is corrupt or malformed"
        )
    if os.WEXITSTATUS(status) != 0:
        raise ProgramLoadError(f"loading {source} failed in a child process (exit status {os.WEXITSTATUS(status)})")
