"""Backend quantizers built on pt2q's annotators.

``XNNPACKQuantizer`` + ``get_symmetric_quantization_config`` quantize for
ExecuTorch's XNNPACK delegate, ``X86InductorQuantizer`` +
``get_default_x86_inductor_quantization_config`` for Inductor's x86 (oneDNN)
int8 kernels, ``ArmInductorQuantizer`` for its aarch64 ones, ``EmbeddingQuantizer``
for weight-only embedding tables (ExecuTorch's
``embedding_byte``); the operator annotators they are built from are
registered by name in ``ANNOTATORS`` for other quantizers to reuse.
"""

from pt2q.quantizers.activation_options import with_activation_observer
from pt2q.quantizers.annotators import (
    ANNOTATORS,
    PATTERNS,
    Annotator,
    get_annotator,
    get_bias_qspec,
    get_input_act_qspec,
    get_output_act_qspec,
    get_weight_qspec,
    propagate_annotation,
    register_annotator,
)
from pt2q.quantizers.arm_inductor import ArmInductorQuantizer, get_default_arm_inductor_quantization_config
from pt2q.quantizers.embedding import (
    EmbeddingQuantizer,
    get_embedding_operators_config,
    get_embedding_quantization_config,
)
from pt2q.quantizers.low_bit import (
    get_8da4w_quantization_config,
    get_8da8w_quantization_config,
    get_a16w8_quantization_config,
    get_dynamic_affine_quantization_config,
)
from pt2q.quantizers.patterns import Pattern, annotate_pattern
from pt2q.quantizers.transformer import TransformerPreset, xnnpack_transformer_quantizer
from pt2q.quantizers.x86_inductor import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    get_x86_inductor_linear_dynamic_fp16_config,
)
from pt2q.quantizers.xnnpack import (
    XNNPACKQuantizer,
    get_symmetric_quantization_config,
    get_weight_only_quantization_config,
)

__all__ = [
    "XNNPACKQuantizer",
    "get_symmetric_quantization_config",
    "get_weight_only_quantization_config",
    "get_8da4w_quantization_config",
    "get_8da8w_quantization_config",
    "get_dynamic_affine_quantization_config",
    "get_a16w8_quantization_config",
    "X86InductorQuantizer",
    "get_default_x86_inductor_quantization_config",
    "get_x86_inductor_linear_dynamic_fp16_config",
    "ArmInductorQuantizer",
    "get_default_arm_inductor_quantization_config",
    "EmbeddingQuantizer",
    "TransformerPreset",
    "with_activation_observer",
    "xnnpack_transformer_quantizer",
    "get_embedding_quantization_config",
    "get_embedding_operators_config",
    "ANNOTATORS",
    "PATTERNS",
    "Pattern",
    "annotate_pattern",
    "Annotator",
    "register_annotator",
    "get_annotator",
    "get_input_act_qspec",
    "get_output_act_qspec",
    "get_weight_qspec",
    "get_bias_qspec",
    "propagate_annotation",
]
