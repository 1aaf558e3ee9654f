"""torchao's ``quantizer.arm_inductor_quantizer`` path (a compatibility mirror): the quantizer lives in
:mod:`pt2q.quantizers.arm_inductor`."""

from pt2q.quantizers.arm_inductor import ArmInductorQuantizer, get_default_arm_inductor_quantization_config

__all__ = ["ArmInductorQuantizer", "get_default_arm_inductor_quantization_config"]
