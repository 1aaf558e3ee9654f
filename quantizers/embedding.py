"""``EmbeddingQuantizer``: weight-only quantization of ``aten.embedding`` tables.

Each row of the table (one token's vector, channel axis 0) gets its own scale and
zero point, the layout ExecuTorch's quantized embedding kernels read:

>>> import torch
>>> from pt2q import ComposableQuantizer, convert_pt2e, prepare_pt2e
>>> from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
>>> model = torch.nn.Sequential(torch.nn.Embedding(100, 16), torch.nn.Linear(16, 4)).eval()
>>> tokens = (torch.randint(0, 100, (1, 8)),)
>>> config = get_symmetric_quantization_config(is_per_channel=True)
>>> quantizer = ComposableQuantizer([EmbeddingQuantizer(), XNNPACKQuantizer().set_global(config)])
>>> m = prepare_pt2e(torch.export.export(model, tokens).module(), quantizer)
>>> _ = m(*tokens)
>>> m = convert_pt2e(m)
>>> sorted({str(b.dtype) for b in m.buffers() if b.dim() == 2})   # the table and the linear's weight
['torch.int8', 'torch.uint8']

* ``bits=8`` (default): uint8 codes with float scale *and float zero point*
  (``per_channel_affine_float_qparams``), as torchao's ``EmbeddingQuantizer``
  writes them; ``pt2q.lowering.to_executorch`` runs them in ExecuTorch's
  ``quantized_decomposed::embedding_byte`` kernel.
* ``bits=4``: int4 codes in ``[-8, 7]`` stored in int8 with an integer zero point
  (``per_channel_affine``); lowering packs two codes per byte for ExecuTorch's
  ``embedding_4bit`` kernel. The embedding dimension must be even.

The indices and the looked-up vectors stay as they are: the kernel dequantizes
only the rows it reads.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch.fx import GraphModule, Node

from pt2q.core.attrs import get_attr_value
from pt2q.core.ops import EMBEDDING, is_op
from pt2q.core.spec import Q_ANNOTATION_KEY, QuantizationAnnotation, QuantizationConfig, QuantizationSpec
from pt2q.observers.min_max import PerChannelMinMaxObserver
from pt2q.quantizer import OperatorConfig, OperatorPatternType, Quantizer
from pt2q.quantizers.annotation import FilterFn, is_annotated, mark_annotated
from pt2q.quantizers.annotators import get_annotator, register_annotator

__all__ = [
    "EmbeddingQuantizer",
    "get_embedding_quantization_config",
    "get_embedding_operators_config",
    "annotate_embedding",
]

_EPS = 2**-12


@functools.lru_cache
def get_embedding_quantization_config(bits: int = 8) -> QuantizationConfig:
    """Weight-only config for embedding tables: per-row uint8 (``bits=8``) or int4 (``bits=4``)."""
    if bits == 8:
        weight = QuantizationSpec(
            dtype=torch.uint8,
            qscheme=torch.per_channel_affine_float_qparams,
            ch_axis=0,
            observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=_EPS),
        )
    elif bits == 4:
        weight = QuantizationSpec(
            dtype=torch.int8,
            quant_min=-8,
            quant_max=7,
            qscheme=torch.per_channel_affine,
            ch_axis=0,
            observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=_EPS),
        )
    else:
        raise ValueError(f"EmbeddingQuantizer supports bits=8 or bits=4 (ExecuTorch kernels), got {bits}")
    return QuantizationConfig(input_activation=None, output_activation=None, weight=weight, bias=None)


def get_embedding_operators_config() -> OperatorConfig:
    """The 8-bit config (:func:`get_embedding_quantization_config`) with the operators it applies to
    (``nn.Embedding``, ``F.embedding``), as torchao's ``EmbeddingQuantizer`` reports it."""
    operators: list[OperatorPatternType] = [[torch.nn.Embedding], [F.embedding]]
    return OperatorConfig(config=get_embedding_quantization_config(8), operators=operators)


def _embedding_weight(node: Node) -> Optional[Node]:
    weight = node.args[0] if node.args else None
    return weight if isinstance(weight, Node) and weight.op == "get_attr" else None


@register_annotator("embedding")
def annotate_embedding(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``embedding(weight, indices)``: the config's weight spec on the table; indices and output stay float.

    Only tables stored in the model (``get_attr``) are quantized; a table computed
    at run time is left alone.
    """
    spec = None if config is None else config.weight
    partitions = []
    for node in list(gm.graph.nodes):
        if not is_op(node, EMBEDDING) or spec is None:
            continue
        weight = _embedding_weight(node)
        if weight is None or is_annotated([node]) or (filter_fn is not None and not filter_fn(node)):
            continue
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map={weight: spec}, _annotated=True)
        mark_annotated([weight])
        partitions.append([node, weight])
    return partitions


class EmbeddingQuantizer(Quantizer):
    """Quantize every embedding table per row, weight only (see module docs for ``bits``).

    ``filter_fn`` (optional) restricts it to the embedding nodes it accepts.
    """

    def __init__(self, bits: int = 8, filter_fn: Optional[FilterFn] = None) -> None:
        super().__init__()
        self.config = get_embedding_quantization_config(bits)
        self.bits = bits
        self.filter_fn = filter_fn

    @classmethod
    def get_supported_operators(cls) -> list[OperatorConfig]:
        return [get_embedding_operators_config()]

    @classmethod
    def get_supported_quantization_configs(cls) -> list[QuantizationConfig]:
        return [config for config, _ in cls.get_supported_operators()]

    @classmethod
    def get_supported_operator_for_quantization_config(
        cls, quantization_config: QuantizationConfig
    ) -> list[OperatorPatternType]:
        return next((ops for config, ops in cls.get_supported_operators() if config == quantization_config), [])

    def annotate(self, model: GraphModule) -> GraphModule:
        get_annotator("embedding")(model, self.config, self.filter_fn)
        return model

    def validate(self, model: GraphModule) -> None:
        """A 4-bit table must have an even width: ExecuTorch packs two codes per byte."""
        if self.bits != 4:
            return
        for node in model.graph.nodes:
            if is_op(node, EMBEDDING):
                weight = _embedding_weight(node)
                if weight is None:
                    continue
                width = get_attr_value(model, str(weight.target)).shape[-1]
                if width % 2:
                    raise ValueError(
                        f"EmbeddingQuantizer(bits=4): embedding '{node.name}' has odd width {width}; "
                        "4-bit tables pack two values per byte and need an even embedding dimension."
                    )
