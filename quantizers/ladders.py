"""Precision ladders for the backends: the recipes each runs fast, cheapest first, fp32 last.

    result = pt2q.quantize(model, example_inputs, quantizer, batches, min_sqnr=30,
                           ladder=precision_ladder(quantizer), cost=PteLatencyCost(example_inputs))

* **XNNPACK** (ExecuTorch): static int8 (the quantizer as given) -> dynamic int8 per token
  (``8da8w``: int8 per-channel weights, activations quantized per row at run time; XNNPACK's
  ``qd8`` linears, whose numerics the Q/DQ graph reproduces) -> fp32. Not rungs: a16w8 (XNNPACK
  has no int16-activation kernels: the ``.pte`` fails to build), weight-only int8 linears
  (ExecuTorch 1.5.1's delegate miscomputes them, ``to_executorch`` refuses them) and per-tensor
  dynamic int8 (XNNPACK runs it per row, so the Q/DQ graph's accuracy is not the ``.pte``'s).
* **x86** (Inductor + oneDNN): static int8 -> dynamic int8 (per-tensor activations quantized at
  run time, oneDNN's dynamic ``qlinear``) -> fp32.

Each rung's ``relative_cost`` is only the fallback estimate; measured costs come from
``pt2q.lowering.latency_cost``.
"""

from __future__ import annotations

from pt2q.algorithms.precision_ladder import FP32, Ladder, Rung
from pt2q.quantizer import ComposableQuantizer, Quantizer
from pt2q.quantizers.low_bit import get_8da8w_quantization_config
from pt2q.quantizers.x86_inductor import X86InductorQuantizer, get_default_x86_inductor_quantization_config
from pt2q.quantizers.xnnpack import XNNPACKQuantizer

__all__ = ["xnnpack_rungs", "x86_rungs", "precision_ladder", "DYNAMIC_PER_TOKEN", "DYNAMIC"]

DYNAMIC_PER_TOKEN = "dynamic int8 (per token)"
DYNAMIC = "dynamic int8"


def xnnpack_rungs() -> list[Rung]:
    """The rungs XNNPACK runs after static int8: dynamic per-token int8 linears, then fp32."""
    dynamic = XNNPACKQuantizer().set_global(get_8da8w_quantization_config())
    return [Rung(DYNAMIC_PER_TOKEN, dynamic, 1.05, "XNNPACK qd8 linears"), Rung(FP32, None, 3.0, "XNNPACK fp32")]


def x86_rungs() -> list[Rung]:
    """The rungs oneDNN runs after static int8: dynamic int8 linears, then fp32."""
    dynamic = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_dynamic=True))
    return [Rung(DYNAMIC, dynamic, 1.2, "oneDNN dynamic qlinear"), Rung(FP32, None, 3.0, "Inductor fp32")]


def _flavour(quantizer: Quantizer) -> str:
    parts = quantizer.quantizers if isinstance(quantizer, ComposableQuantizer) else [quantizer]
    if any(isinstance(q, X86InductorQuantizer) for q in parts):
        return "x86"
    if any(isinstance(q, XNNPACKQuantizer) for q in parts):
        return "xnnpack"
    raise TypeError(
        f"precision_ladder: no ladder known for {type(quantizer).__name__}; build one with "
        "pt2q.algorithms.precision_ladder.Ladder([Rung(name, quantizer), ...])"
    )


def precision_ladder(quantizer: Quantizer, base_name: str = "static int8") -> Ladder:
    """``quantizer`` (an XNNPACK or x86 quantizer, or a composition holding one) as the base rung,
    followed by the rungs its backend runs fast."""
    rungs = xnnpack_rungs() if _flavour(quantizer) == "xnnpack" else x86_rungs()
    return Ladder([Rung(base_name, quantizer, 1.0), *rungs])
