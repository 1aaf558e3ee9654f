"""Reference quantized representation: quantized operators as integer arithmetic in plain ATen ops.

``convert_pt2e`` leaves each quantized operator as ``dq -> float op -> q``. This pass
rewrites those neighbourhoods into what an integer kernel computes, the form a backend
author pattern-matches to write a lowering:

* int8 operands are widened to int16 and offset by their zero points;
* products are accumulated in int32 (``out_dtype(op, torch.int32, ...)``), plus an
  int32 bias quantized with the accumulator's scale ``x_scale * w_scale``;
* requantization to the output grid multiplies by the combined scale held as a
  fixed-point number ``m / 2**shift`` (int64 multiply, add ``2**(shift-1)``,
  arithmetic right shift), adds the output zero point, clamps (a fused relu raises
  the lower bound to the zero point) and casts to int8;
* except ``relu(x + y)``, written as torchao writes it so that a lowering keyed on torchao's
  form finds it, with the same numbers: each centred operand times its float32 scale ratio,
  ``out_dtype(mul, int32, ...)`` (which truncates towards zero), summed, offset by the output
  zero point, clamped from it.

The quantize/dequantize ops left over become their elementwise reference forms, which
reproduce the ``quantized_decomposed`` kernels bit for bit. Operators without a row in
``REWRITES`` keep ``dq -> float op -> q``. Replacement nodes are built directly with
``graph.call_function``; no example program is traced, and everything is plain ATen
(plus torch's ``out_dtype`` higher-order op), so the result exports, saves and loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch.fx import GraphModule

from pt2q.core.ops import (
    DQ_OPS,
    DQ_PER_CHANNEL,
    DQ_PER_TENSOR,
    DQ_PER_TENSOR_DYNAMIC,
    LINEAR,
    MAX_POOL2D,
    Q_OPS,
    Q_PER_TENSOR,
    RELU,
    ops,
)
from pt2q.passes.reference_graph import Constant, Rewrite, apply_rewrites
from pt2q.passes.reference_integer import (
    carry_add_relu,
    carry_dynamic_linear,
    carry_rescaled,
    carry_weighted,
    integer_add,
    integer_add_relu,
    integer_dynamic_linear,
    integer_max_pool2d,
    integer_weighted,
)
from pt2q.passes.reference_qdq import carry_qdq, reference_dequantize, reference_quantize

__all__ = ["reference_representation_rewrite", "REWRITES", "Rewrite", "Constant"]

aten = torch.ops.aten

_DQ_WEIGHT = DQ_PER_TENSOR | DQ_PER_CHANNEL

_CONV2D = ops(aten.conv2d.default)  # conv2d.padding (string padding) has no out_dtype form
_ADD = ops(aten.add.Tensor)  # the functional add a converted graph holds
_STATIC = {0: DQ_PER_TENSOR, 1: _DQ_WEIGHT}

REWRITES: tuple[Rewrite, ...] = (
    Rewrite("linear", (LINEAR, Q_PER_TENSOR), _STATIC, partial(carry_weighted, spatial_dims=0), integer_weighted),
    Rewrite(
        "linear_relu",
        (LINEAR, RELU, Q_PER_TENSOR),
        _STATIC,
        partial(carry_weighted, spatial_dims=0),
        integer_weighted,
    ),
    Rewrite(
        "dynamic_linear",
        (LINEAR,),
        {0: DQ_PER_TENSOR_DYNAMIC, 1: _DQ_WEIGHT},
        carry_dynamic_linear,
        integer_dynamic_linear,
    ),
    Rewrite("conv2d", (_CONV2D, Q_PER_TENSOR), _STATIC, partial(carry_weighted, spatial_dims=2), integer_weighted),
    Rewrite(
        "conv2d_relu",
        (_CONV2D, RELU, Q_PER_TENSOR),
        _STATIC,
        partial(carry_weighted, spatial_dims=2),
        integer_weighted,
    ),
    Rewrite("add", (_ADD, Q_PER_TENSOR), {0: DQ_PER_TENSOR, 1: DQ_PER_TENSOR}, carry_rescaled, integer_add),
    Rewrite(
        "add_relu",
        (_ADD, RELU, Q_PER_TENSOR),
        {0: DQ_PER_TENSOR, 1: DQ_PER_TENSOR},
        carry_add_relu,
        integer_add_relu,
    ),
    Rewrite("max_pool2d", (MAX_POOL2D, Q_PER_TENSOR), {0: DQ_PER_TENSOR}, carry_rescaled, integer_max_pool2d),
    Rewrite("quantize", (Q_OPS,), {}, carry_qdq, reference_quantize),
    Rewrite("dequantize", (DQ_OPS,), {}, carry_qdq, reference_dequantize),
)


def reference_representation_rewrite(gm: GraphModule, rewrites: Sequence[Rewrite] = REWRITES) -> GraphModule:
    """Rewrite every row of ``rewrites`` that matches into its integer reference form (in place)."""
    return apply_rewrites(gm, rewrites)
