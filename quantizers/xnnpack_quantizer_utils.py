"""ExecuTorch's ``executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils``: the annotators a custom
quantizer for XNNPACK reuses, by ExecuTorch's names.

>>> import torch
>>> from pt2q.quantizers import get_symmetric_quantization_config
>>> gm = torch.export.export(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), (torch.randn(1, 4),)).module()
>>> [[n.name for n in p] for p in OP_TO_ANNOTATOR["linear_relu"](gm, get_symmetric_quantization_config(), None)]
[['linear', 'relu', 'l__self___0_weight', 'l__self___0_bias']]

``OP_TO_ANNOTATOR`` maps each of ExecuTorch's annotator names to pt2q's annotator of that name (a row of
:data:`pt2q.quantizers.PATTERNS`, or ``gru_io_only``); each is called as
``annotator(gm, quantization_config, filter_fn=None)`` and returns the annotated partitions. The
``get_*_qspec`` readers are torchao's (they check per-tensor activations and symmetric weights).
"""

from pt2q.quantizer.utils import (
    OperatorConfig,
    OperatorPatternType,
    QuantizationConfig,
    QuantizationSpec,
    get_bias_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    get_weight_qspec,
)
from pt2q.quantizers.annotation import Annotator
from pt2q.quantizers.annotators import ANNOTATORS, propagate_annotation

__all__ = [
    "OperatorConfig",
    "OperatorPatternType",
    "QuantizationConfig",
    "QuantizationSpec",
    "get_input_act_qspec",
    "get_output_act_qspec",
    "get_weight_qspec",
    "get_bias_qspec",
    "OP_TO_ANNOTATOR",
    "EXECUTORCH_ANNOTATOR_NAMES",
    "propagate_annotation",
]

# ExecuTorch 1.5's registered annotators, in its registration order
EXECUTORCH_ANNOTATOR_NAMES = (
    "linear",
    "linear_relu",
    "conv",
    "conv_transpose",
    "conv_relu",
    "conv_transpose_relu",
    "conv_bn",
    "conv_bn_relu",
    "conv_transpose_bn",
    "conv_transpose_bn_relu",
    "gru_io_only",
    "adaptive_avg_pool2d",
    "add_relu",
    "add",
    "mul_relu",
    "mul",
    "cat",
)

OP_TO_ANNOTATOR: dict[str, Annotator] = {name: ANNOTATORS[name] for name in EXECUTORCH_ANNOTATOR_NAMES}
