"""A transformer preset for ExecuTorch's XNNPACK delegate: int8 where the delegate gains from it.

    quantizer = xnnpack_transformer_quantizer()          # EmbeddingQuantizer + linears-only XNNPACK
    model_int8, report = pt2q.quantize(model, example_inputs, quantizer, calibration_batches)

In the spirit of NNCF's "transformer" model type, rewritten for the ``.pte`` target:

* **linears** are static int8 (per-channel weights), the GEMMs that dominate a transformer's
  time and that XNNPACK runs in int8; views and transposes of their outputs share their qparams;
* **embedding tables** are stored per row in uint8 (``EmbeddingQuantizer``, ExecuTorch's
  ``embedding_byte`` kernel): the word-embedding table is the largest weight of a small BERT;
* **adds, muls and cats stay float**: residual adds carry the outlier channels of trained
  transformers, the attention-score scale and the mask add feed softmax (which XNNPACK runs
  in fp32 anyway), and each int8 elementwise op costs a requantization. Matmuls of two
  activations (``q @ k``, ``attn @ v``) stay float: XNNPACK's batched matmul is fp32 only.
  LayerNorm, softmax and GELU have no int8 kernels and stay float, as with every recipe.
"""

from __future__ import annotations

from typing import Optional

from torch.fx import Node

from pt2q.core.ops import ADD, CAT, MUL, is_op
from pt2q.quantizer import ComposableQuantizer
from pt2q.quantizers.embedding import EmbeddingQuantizer
from pt2q.quantizers.xnnpack import XNNPACKQuantizer, get_symmetric_quantization_config

__all__ = ["TransformerPreset", "xnnpack_transformer_quantizer", "PRESET_FLOAT_OPS"]

PRESET_FLOAT_OPS = ADD | MUL | CAT


class TransformerPreset(ComposableQuantizer):
    """``EmbeddingQuantizer`` then an ``XNNPACKQuantizer`` whose add/mul/cat patterns are off.

    ``quantizers[1]`` is that XNNPACKQuantizer: further settings (``set_module_name(..., None)``,
    a filter function) go there.
    """

    def __init__(self, is_per_channel: bool = True, embedding_bits: Optional[int] = 8) -> None:
        xnnpack = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=is_per_channel))
        for op in PRESET_FLOAT_OPS:
            xnnpack.set_operator_type(op, None)
        embedding = [EmbeddingQuantizer(bits=embedding_bits)] if embedding_bits else []
        super().__init__([*embedding, xnnpack])

    def explain_unannotated(self, node: Node) -> Optional[str]:
        if is_op(node, PRESET_FLOAT_OPS):
            return (
                "the transformer preset keeps adds/muls/cats float (residual outliers, mask and score "
                "scaling; int8 elementwise ops buy little on XNNPACK)"
            )
        return super().explain_unannotated(node)


def xnnpack_transformer_quantizer(is_per_channel: bool = True, embedding_bits: Optional[int] = 8) -> TransformerPreset:
    """The XNNPACK transformer preset (see module docs); ``embedding_bits=None`` leaves tables float."""
    return TransformerPreset(is_per_channel, embedding_bits)
