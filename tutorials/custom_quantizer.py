"""Writing your own Quantizer, and composing it with others.

A pt2q quantizer is two things: *which* patterns to quantize (a table of ``Pattern`` rows:
the operator chain and where the specs go; ``pt2q.quantizers.PATTERNS`` holds the shared
ones, ``"linear"``, ``"linear_relu"``, ``"conv_bn_relu"``, ``"add"``, ...) and *how* (a
``QuantizationConfig`` of ``QuantizationSpec``s, each naming an observer from
``pt2q.observer``). This script:

1. writes ``LinearOnlyQuantizer`` in ~40 lines: int8 per-tensor activations calibrated
   with a ``HistogramObserver``, symmetric per-channel int8 weights, applied to linear
   layers (and the ReLU fused after them) only;
2. composes it with ``EmbeddingQuantizer`` (uint8 per-row embedding tables) through
   ``ComposableQuantizer``: each quantizer annotates what it knows, and the earlier
   one wins where both would;
3. prepares, calibrates and converts a small token classifier (embedding -> mean ->
   linear -> relu -> linear) and checks the int8 model against fp32 (SQNR, weight bytes).

Run: ``python tutorials/custom_quantizer.py``
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.fx import GraphModule

from pt2q import QuantizationConfig, QuantizationSpec, Quantizer, convert_pt2e, prepare_pt2e, sqnr
from pt2q.core.ops import GELU, LINEAR, RELU
from pt2q.observer import HistogramObserver, PerChannelMinMaxObserver
from pt2q.quantizer import ComposableQuantizer
from pt2q.quantizers import EmbeddingQuantizer, Pattern, annotate_pattern, propagate_annotation


# 1. A quantizer of your own ---------------------------------------------------------
class LinearOnlyQuantizer(Quantizer):
    """int8 linear layers (with their fused ReLU or GELU); everything else stays float."""

    # The table, in precedence order: a fused row claims linear+relu before "linear" takes a
    # linear alone. weighted=0: the chain's first op gets the input, weight and bias specs; the
    # output spec goes on the chain's last node.
    PATTERNS = (
        Pattern("linear_relu", (LINEAR, RELU), weighted=0),
        Pattern("linear_gelu", (LINEAR, GELU), weighted=0),
        Pattern("linear", (LINEAR,), weighted=0),
    )

    def __init__(self) -> None:
        super().__init__()
        activation = QuantizationSpec(
            dtype=torch.int8,
            quant_min=-128,
            quant_max=127,
            qscheme=torch.per_tensor_affine,
            observer_or_fake_quant_ctr=HistogramObserver.with_args(eps=2**-12),
        )
        weight = QuantizationSpec(
            dtype=torch.int8,
            quant_min=-127,
            quant_max=127,
            qscheme=torch.per_channel_symmetric,
            ch_axis=0,
            observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=2**-12),
        )
        self.config = QuantizationConfig(
            input_activation=activation, output_activation=activation, weight=weight, bias=None
        )

    def annotate(self, model: GraphModule) -> GraphModule:
        for row in self.PATTERNS:
            annotate_pattern(model, row, self.config)
        # Ops that only move data (view, flatten, max_pool2d, ...) share their input's qparams.
        propagate_annotation(model)
        return model

    def validate(self, model: GraphModule) -> None:
        pass  # nothing this backend cannot run


# 2. A model with an embedding table and linears --------------------------------------
class TokenClassifier(nn.Module):
    def __init__(self, vocab: int = 1000, dim: int = 64, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 128), nn.Linear(128, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens).mean(dim=1)
        return self.fc2(torch.relu(self.fc1(x)))


def weight_bytes(program: torch.export.ExportedProgram) -> int:
    tensors = list(program.state_dict.values()) + list(program.constants.values())
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def main(fast: bool = False) -> dict:
    torch.manual_seed(0)
    model = TokenClassifier().eval()
    example_inputs = (torch.randint(0, 1000, (8, 16)),)  # (batch, sequence) of token ids
    exported = torch.export.export(model, example_inputs)

    # 3. Compose: the embedding quantizer first, then ours.
    quantizer = ComposableQuantizer([EmbeddingQuantizer(), LinearOnlyQuantizer()])
    prepared = prepare_pt2e(exported.module(), quantizer)
    for _ in range(4 if fast else 32):
        prepared(torch.randint(0, 1000, (8, 16)))
    quantized = convert_pt2e(prepared)

    test_tokens = torch.randint(0, 1000, (8, 16))
    with torch.no_grad():
        db = sqnr(model(test_tokens), quantized(test_tokens))
    quantized_ep = torch.export.export(quantized, example_inputs)
    tensors = {**quantized_ep.state_dict, **quantized_ep.constants}
    int8_dtypes = sorted(
        {
            str(t.dtype)
            for t in tensors.values()  # uint8 embedding rows, int8 linear weights
            if isinstance(t, torch.Tensor) and t.dtype in (torch.int8, torch.uint8)
        }
    )
    quant_ops = sorted(
        {str(n.target) for n in quantized.graph.nodes if n.op == "call_function" and "quantize" in str(n.target)}
    )

    results = {
        "sqnr_db": db,
        "fp32_weight_bytes": weight_bytes(exported),
        "int8_weight_bytes": weight_bytes(quantized_ep),
        "weight_size_ratio": weight_bytes(quantized_ep) / weight_bytes(exported),
        "quantized_weight_dtypes": int8_dtypes,
        "quantize_ops": quant_ops,
    }
    print(f"SQNR int8 vs fp32: {db:.1f} dB")
    print(
        f"weights: fp32 {results['fp32_weight_bytes']:,} B  quantized {results['int8_weight_bytes']:,} B  "
        f"(ratio {results['weight_size_ratio']:.2f}; dtypes {', '.join(int8_dtypes)})"
    )
    print("quantize/dequantize ops in the converted graph:\n  " + "\n  ".join(quant_ops))
    return results


if __name__ == "__main__":
    main()
