"""``ArmInductorQuantizer``: int8 activations and weights for Inductor's aarch64 kernels (oneDNN / ACL).

Behaves like ``torchao.quantization.pt2e.quantizer.arm_inductor_quantizer.ArmInductorQuantizer``: the
x86 quantizer's machinery with a smaller recipe (:data:`ARM_PATTERNS`) and signed int8 activations:

>>> quantizer = ArmInductorQuantizer().set_global(get_default_arm_inductor_quantization_config())
>>> [p.name for p in ARM_PATTERNS]
['x86_conv_bn_add', 'conv_bn', 'x86_conv_add', 'arm_conv', 'linear_relu', 'x86_linear_unary', 'linear', 'matmul']

* conv2d, conv2d + add (the add's other operand quantized too), linear, linear + relu / leaky_relu /
  tanh / gelu; matmul when asked for (``set_function_type_qconfig(torch.matmul, ...)``);
* QAT only (BatchNorm still present): conv2d + batch_norm (+ add);
* no int8 pass-through ops (pooling, cat, flatten) and no conv + unary fusion: a relu after a conv
  stays float.

Annotation, prepare and convert run anywhere (tested on x86 against torchao's); lowering the result
to int8 kernels needs an aarch64 machine (Inductor with torch's ARM oneDNN/ACL build): pt2q's x86
lowering expects the x86 recipe's uint8 activations.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch._ops import OpOverload

from pt2q.core.ops import aten, ops
from pt2q.quantizer import QuantizationConfig
from pt2q.quantizers.observer_choice import activation_spec, symmetric_weight_spec
from pt2q.quantizers.patterns import Pattern
from pt2q.quantizers.x86_inductor import X86InductorQuantizer
from pt2q.quantizers.x86_recipe import X86_PATTERNS

__all__ = ["ArmInductorQuantizer", "get_default_arm_inductor_quantization_config", "ARM_PATTERNS"]

_X86 = {p.name: p for p in X86_PATTERNS}
_C2 = ops(aten.conv2d.default)

# torchao's aarch64 recipe, in its precedence order
ARM_PATTERNS: tuple[Pattern, ...] = (
    _X86["x86_conv_bn_add"],
    _X86["conv_bn"],
    _X86["x86_conv_add"],
    Pattern("arm_conv", (_C2,), weighted=0),  # a relu after it is not fused: no guard against one
    _X86["linear_relu"],
    _X86["x86_linear_unary"],
    _X86["linear"],
    _X86["matmul"],
)

_DEFAULT_QUANTIZABLE = ops(aten.conv2d.default, aten.linear.default)


@functools.lru_cache
def get_default_arm_inductor_quantization_config(is_qat: bool = False, is_dynamic: bool = False) -> QuantizationConfig:
    """int8 per-tensor affine activations (histogram-calibrated; QAT: fused fake quantizers; dynamic:
    qparams chosen at run time) and int8 per-tensor symmetric weights; bias stays float. Equal arguments
    return the same (cached) config object."""
    act = activation_spec(torch.int8, -128, 127, is_qat, is_dynamic)
    weight = symmetric_weight_spec(is_qat, False, -128, 127, ch_axis=None)
    return QuantizationConfig(input_activation=act, output_activation=act, weight=weight, bias=None, is_qat=is_qat)


class ArmInductorQuantizer(X86InductorQuantizer):
    """Annotates an exported graph for Inductor's aarch64 int8 kernels (see the module docstring).

    Configured as :class:`~pt2q.quantizers.X86InductorQuantizer` (global, function/module type, module
    name; ``None`` keeps what it covers in float), over conv2d, linear and (opt-in) matmul.
    """

    PATTERNS = ARM_PATTERNS
    QUANTIZABLE_OPS = _DEFAULT_QUANTIZABLE | ops(aten.matmul.default)
    DEFAULT_QUANTIZABLE_OPS = _DEFAULT_QUANTIZABLE
    OPERATOR_OF: dict[Any, OpOverload] = {
        nn.Conv2d: aten.conv2d.default,
        F.conv2d: aten.conv2d.default,
        nn.Linear: aten.linear.default,
        F.linear: aten.linear.default,
        torch.matmul: aten.matmul.default,
    }
