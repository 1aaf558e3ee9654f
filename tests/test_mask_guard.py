"""Attention masks stay float: the mask guard of the XNNPACK and x86 quantizers, and convert's scale warning."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import pt2q
from pt2q.numerics.metrics import sqnr
from pt2q.passes.scale_check import ABSURD_SCALE, QuantizationRangeWarning, absurd_scales
from pt2q.quantizers import (
    X86InductorQuantizer,
    XNNPACKQuantizer,
    get_default_x86_inductor_quantization_config,
    get_symmetric_quantization_config,
)
from pt2q.quantizers.mask_guard import MaskGuard, find_mask_like
from tests import zoo
from tests.transformer_zoo import MASK_STYLES, TinyBert, token_batches

qd = torch.ops.quantized_decomposed


def _xnnpack(guard: bool = True) -> XNNPACKQuantizer:
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    q.mask_guard = MaskGuard(enabled=guard)
    return q


def _quantize(model, batches, quantizer):
    ep = torch.export.export(model, batches[0])
    m = pt2q.prepare_pt2e(ep.module(), quantizer)
    for b in batches:
        m(*b)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = pt2q.convert_pt2e(m)
    return ep, m, [w for w in caught if issubclass(w.category, QuantizationRangeWarning)]


def _outputsqnr(model, quantized, batches) -> float:
    with torch.no_grad():
        return sqnr(
            torch.cat([model(*b).flatten() for b in batches]), torch.cat([quantized(*b).flatten() for b in batches])
        )


def _reads_dequantized(node: torch.fx.Node) -> bool:
    return any(a.op == "call_function" and a.target == qd.dequantize_per_tensor.default for a in node.all_input_nodes)


@pytest.mark.parametrize("style", MASK_STYLES)
def test_finds_the_mask_in_each_hugging_face_style(style: str) -> None:
    model = TinyBert(mask_style=style).eval()
    gm = torch.export.export(model, token_batches(1)[0]).module()
    found = {n.name: why for n, why in find_mask_like(gm).items()}
    expected = {
        "additive": {
            "mul": "an attention mask (it holds -3.4e+38)",
            "add_1": "a masked tensor (it reads the mask mul)",
            "mul_1": "an attention mask (it holds -3.4e+38)",
            "add_4": "a masked tensor (it reads the mask mul_1)",
        },
        "where": {
            "where": "an attention mask (it holds -3.4e+38)",
            "add_1": "a masked tensor (it reads the mask where)",
            "where_1": "an attention mask (it holds -3.4e+38)",
            "add_4": "a masked tensor (it reads the mask where_1)",
        },
        "masked_fill": {
            "masked_fill": "a masked tensor (filled with -inf)",
            "masked_fill_1": "a masked tensor (filled with -inf)",
        },
    }[style]
    assert found == expected


def test_old_minus_10000_mask_is_found_too() -> None:
    class OldBert(nn.Module):
        def forward(self, scores, mask):
            return (scores + (1.0 - mask[:, None, :].float()) * -10000.0).softmax(-1)

    gm = torch.export.export(OldBert(), (torch.randn(2, 3, 5), torch.ones(2, 5, dtype=torch.long))).module()
    assert sorted(n.name for n in find_mask_like(gm)) == ["add", "mul"]


@pytest.mark.parametrize("name", sorted(zoo.ZOO))
def test_models_without_masks_have_none(name: str) -> None:
    model, example = zoo.make(name)
    assert find_mask_like(torch.export.export(model, example).module()) == {}


def test_xnnpack_keeps_the_hf_additive_mask_float() -> None:
    model, batches = TinyBert(mask_style="additive").eval(), token_batches(4)
    ep, guarded, warned = _quantize(model, batches, _xnnpack())
    assert warned == []
    adds = {n.name: n for n in guarded.graph.nodes if n.target == torch.ops.aten.add.Tensor}
    # the scores + mask adds read float tensors; the embedding and residual adds are quantized
    assert [name for name, n in adds.items() if not _reads_dequantized(n)] == ["add_1", "add_4"]
    assert all(_reads_dequantized(adds[name]) for name in ("add", "add_2", "add_3", "add_5", "add_6"))
    r = pt2q.report(guarded, ep, None)
    assert r.row("add_1").float_reason == (
        "kept float (mask guard): its operand mul is an attention mask (it holds -3.4e+38); quantized, its range "
        "would round every ordinary value alike"
    )
    assert r.row("mul").float_reason == "kept float (mask guard): it computes an attention mask (it holds -3.4e+38)"

    # without the guard (torchao's and ExecuTorch's behaviour) the mask is quantized with a scale of ~1e36,
    # and convert says so, naming the nodes
    _, unguarded, warned = _quantize(model, batches, _xnnpack(guard=False))
    messages = [str(w.message) for w in warned]
    assert len(messages) == 4 and all("scale 1.33e+36, above 1000" in m for m in messages)
    assert messages[0].startswith("convert_pt2e: node 'mul' (read by add_1)")
    assert [n.args[0].name for n, _ in absurd_scales(unguarded)] == ["mul", "add_1", "mul_1", "add_4"]
    test = token_batches(3, seed=7)
    assert _outputsqnr(model, guarded, test) > _outputsqnr(model, unguarded, test) + 5


def test_x86_keeps_a_mul_of_masked_scores_float() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x, keep):
            return self.a(x).masked_fill(keep == 0, -1e9) * self.b(x)

    example = (torch.randn(2, 4, 8), torch.tensor([[1, 1, 0, 1]] * 2)[..., None].expand(2, 4, 8).contiguous())
    q = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    ep, m, warned = _quantize(Gated().eval(), [example], q)
    mul = next(n for n in m.graph.nodes if n.target == torch.ops.aten.mul.Tensor)
    assert not _reads_dequantized(mul) and warned == []
    assert (
        pt2q.report(m, ep, None)
        .row("mul")
        .float_reason.startswith(
            "kept float (mask guard): its operand masked_fill is a masked tensor (filled with -1e+09)"
        )
    )

    q.mask_guard = MaskGuard(enabled=False)
    _, m, warned = _quantize(Gated().eval(), [example], q)
    assert _reads_dequantized(next(n for n in m.graph.nodes if n.target == torch.ops.aten.mul.Tensor))
    assert len(warned) == 1 and "node 'masked_fill' (read by mul)" in str(warned[0].message)


def test_ordinary_scales_do_not_warn() -> None:
    model, example = zoo.make("attention")
    _, m, warned = _quantize(model, [example], _xnnpack())
    assert warned == [] and absurd_scales(m) == []
    assert ABSURD_SCALE == 1e3


def test_rotary_frequencies_are_no_mask() -> None:
    class Rotary(nn.Module):
        def forward(self, x, positions):
            inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2, dtype=torch.float32) / 8))
            angles = positions[:, :, None].float() * inv_freq
            return x * torch.cos(angles).repeat(1, 1, 2) + torch.full_like(x, -1e4).clamp(min=-1.0)

    example = (torch.randn(2, 5, 8), torch.arange(5).expand(2, 5))
    assert find_mask_like(torch.export.export(Rotary(), example).module()) == {}
