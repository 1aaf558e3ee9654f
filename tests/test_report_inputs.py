"""pt2q.report names where a reused input quantization comes from: the nearest layer up the chain."""

from __future__ import annotations

import torch
import torch.nn as nn

import pt2q
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config


class EmbedNormTwoHeads(nn.Module):
    """embedding -> LayerNorm (float under XNNPACK) -> two linears reading the same quantized input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.norm = nn.Embedding(20, 8), nn.LayerNorm(8)
        self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.embed(ids))
        return self.a(x) + self.b(x)


def test_a_shared_input_is_from_the_layer_norm_not_the_embedding_table() -> None:
    example = (torch.randint(0, 20, (2, 5)),)
    ep = torch.export.export(EmbedNormTwoHeads().eval(), example)
    m = pt2q.prepare_pt2e(ep.module(), XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
    m(*example)
    r = pt2q.report(pt2q.convert_pt2e(m), ep, None)
    (owner_input,) = [t for t in r.row("linear").quantization if t.role == "input"]
    (reused_input,) = [t for t in r.row("linear_1").quantization if t.role == "input"]
    assert owner_input.source is None  # linear quantizes the LayerNorm's output ...
    assert reused_input.source == "layer_norm"  # ... linear_1 reuses it (it said "embed_weight")
    assert reused_input.scale == owner_input.scale
