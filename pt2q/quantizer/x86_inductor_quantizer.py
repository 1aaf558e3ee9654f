"""torchao's ``quantizer.x86_inductor_quantizer`` path (a compatibility mirror): the quantizer lives in
:mod:`pt2q.quantizers.x86_inductor`."""

from pt2q.core.spec import Q_ANNOTATION_KEY as QUANT_ANNOTATION_KEY  # noqa: F401  (torchao defines it here, outside __all__)
from pt2q.quantizers.x86_inductor import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
    get_x86_inductor_linear_dynamic_fp16_config,
)

__all__ = [
    "X86InductorQuantizer",
    "get_default_x86_inductor_quantization_config",
    "get_x86_inductor_linear_dynamic_fp16_config",
]
