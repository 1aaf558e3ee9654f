"""ExecuTorch's ``executorch.backends.xnnpack.quantizer.xnnpack_quantizer`` path (and the removed
``torch.ao.quantization.quantizer.xnnpack_quantizer``): the quantizer of :mod:`pt2q.quantizers.xnnpack`."""

from pt2q.quantizers.xnnpack import XNNPACKQuantizer, get_symmetric_quantization_config

__all__ = ["XNNPACKQuantizer", "get_symmetric_quantization_config"]
