"""Does this CPU multiply u8 x s8 without saturating? (VNNI, and what oneDNN is allowed to use)

oneDNN runs int8 conv/linear as u8 activations x s8 weights. With VNNI
(``avx512_vnni``, ``avx_vnni``) or AMX the products are accumulated straight into
int32. Without it, the AVX2/AVX-512 kernels add pairs of u8*s8 products in int16
first, and ``255 * 127 * 2`` does not fit: results saturate and accuracy collapses
(an MLP measured 14 dB SQNR instead of 31 dB). Activations limited to 7 bits
(``quant_max=127``, "reduce_range") keep every pair sum in range.

``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``) caps the instructions
oneDNN uses, so a capped process saturates even on a VNNI CPU; it is honoured here.
"""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["cpu_has_vnni", "default_reduce_range", "cpu_flags"]

_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# oneDNN ISA caps that exclude every VNNI kernel; AVX2_VNNI* caps allow only avx_vnni
_NO_VNNI_ISAS = {"SSE41", "AVX", "AVX2", "AVX512_CORE", "AVX512_MIC", "AVX512_MIC_4OPS"}
_AVX2_VNNI_ISAS = {"AVX2_VNNI", "AVX2_VNNI_2"}


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags: torch's cpuinfo probe, else ``/proc/cpuinfo``."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is not None:
        return {name for name, value in get_capabilities().items() if value is True}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _onednn_isa_cap() -> str:
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()


@functools.lru_cache
def cpu_has_vnni() -> bool:
    """True when oneDNN's int8 kernels on this CPU (and under its ISA cap) accumulate without saturating."""
    flags = cpu_flags()
    cap = _onednn_isa_cap()
    if cap in _NO_VNNI_ISAS:
        return False
    if cap in _AVX2_VNNI_ISAS:
        return "avx_vnni" in flags
    return any(flag in flags for flag in _VNNI_FLAGS)


def default_reduce_range() -> bool:
    """Whether activations should be limited to 7 bits here: only when the CPU lacks VNNI."""
    return not cpu_has_vnni()
