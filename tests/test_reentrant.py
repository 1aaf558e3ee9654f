"""Re-entrant quantization: a converted model is prepared and converted again, and nothing is quantized twice.

torchao 0.18 (the oracle) accepts the same calls but requantizes: its second round puts new observers on
values the first round already quantized, so the graph gains ``dequantize -> quantize`` chains with a
second scale, and preparing a prepared model doubles the observers. pt2q's second round quantizes only
what the first left float, reuses the first round's qparams where a new op reads a quantized value, and
refuses to prepare a prepared model.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn
from torch.fx import GraphModule

import pt2q
from pt2q.numerics.metrics import sqnr
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tests.helpers import QDQ_TARGETS, export_module, qdq_signature, xnnpack_oracle_without_bn_patterns

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
torchao_qp = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
et_quantizer = pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")

qd = torch.ops.quantized_decomposed


class TwoParts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(16, 16), nn.Linear(16, 8)

    def forward(self, x):
        return self.second(self.first(x).relu())


def _data() -> tuple[nn.Module, list[torch.Tensor]]:
    torch.manual_seed(0)
    model = TwoParts().eval()
    return model, [torch.randn(4, 16) for _ in range(4)]


def _quantizer(module_name: str | None = None, oracle: bool = False):
    q = xnnpack_oracle_without_bn_patterns() if oracle else XNNPACKQuantizer()
    config = get_symmetric_quantization_config()
    if oracle:
        q.set_global(None)
        config = et_quantizer.get_symmetric_quantization_config()
    return q.set_module_name(module_name, config) if module_name else q.set_global(config)


def _round(gm: GraphModule, quantizer, inputs: list[torch.Tensor], oracle: bool = False) -> GraphModule:
    prepare, convert = (
        (torchao_qp.prepare_pt2e, torchao_qp.convert_pt2e) if oracle else (pt2q.prepare_pt2e, pt2q.convert_pt2e)
    )
    prepared = prepare(gm, quantizer)
    for x in inputs:
        prepared(x)
    return convert(prepared)


def _qdq(gm: GraphModule) -> int:
    return sum(n.op == "call_function" and n.target in QDQ_TARGETS for n in gm.graph.nodes)


def _requantized(gm: GraphModule) -> list[str]:
    """Quantize nodes that read a dequantize: a value quantized twice."""
    dq = {qd.dequantize_per_tensor.default, qd.dequantize_per_channel.default}
    return [n.name for n in gm.graph.nodes if n.target is qd.quantize_per_tensor.default and n.args[0].target in dq]


def test_second_round_quantizes_the_other_part_only() -> None:
    model, inputs = _data()
    first = _round(export_module(model, (inputs[0],)), _quantizer("first"), inputs)
    assert _qdq(first) == 5  # x, first's int8 weight, relu's output
    both = _round(copy.deepcopy(first), _quantizer("second"), inputs)
    assert _qdq(both) == 8  # + second's int8 weight and its output; its input reuses relu's Q/DQ
    assert not _requantized(both)
    assert qdq_signature(first) - qdq_signature(both) == {}  # the first round's qparams are kept
    with torch.no_grad():
        assert min(sqnr(model(x), both(x)) for x in inputs) > 30
        once = _round(export_module(model, (inputs[0],)), _quantizer(), inputs)
        assert _qdq(once) == _qdq(both)  # the graph one round over the whole model gives, and its numbers
        assert min(sqnr(once(x), both(x)) for x in inputs) > 40  # (round two calibrated on quantized inputs)
        buf = io.BytesIO()
        torch.export.save(torch.export.export(both, (inputs[0],)), buf)
        buf.seek(0)
        reloaded = torch.export.load(buf).module()
        assert torch.equal(reloaded(inputs[0]), both(inputs[0]))


def test_torchao_second_round_requantizes() -> None:
    model, inputs = _data()
    first = _round(export_module(model, (inputs[0],)), _quantizer("first", oracle=True), inputs, oracle=True)
    first_count = _qdq(first)
    with pytest.raises(KeyError):  # its stale annotations point at nodes of the original graph
        _round(copy.deepcopy(first), _quantizer("second", oracle=True), inputs, oracle=True)
    both = _round(first, _quantizer("second", oracle=True), inputs, oracle=True)
    assert (first_count, _qdq(both)) == (7, 16)
    assert len(_requantized(both)) == 3  # dequantize -> quantize with another scale


def test_the_same_quantizer_again_changes_nothing() -> None:
    model, inputs = _data()
    once = _round(export_module(model, (inputs[0],)), _quantizer(), inputs)
    twice = _round(copy.deepcopy(once), _quantizer(), inputs)
    assert qdq_signature(twice) == qdq_signature(once)
    assert not _requantized(twice)
    with torch.no_grad():
        for x in inputs:
            assert torch.equal(twice(x), once(x))


def test_a_new_op_before_quantized_values_takes_their_qparams() -> None:
    """Round one quantizes ``second`` (its input gets a Q/DQ); round two quantizes ``first`` + relu, whose
    output is that input: it is quantized once, with round one's scale."""
    model, inputs = _data()
    second = _round(export_module(model, (inputs[0],)), _quantizer("second"), inputs)
    both = _round(copy.deepcopy(second), _quantizer("first"), inputs)
    assert not _requantized(both)
    assert qdq_signature(second) - qdq_signature(both) == {}
    assert _qdq(both) == 8
    with torch.no_grad():
        assert min(sqnr(model(x), both(x)) for x in inputs) > 30


def test_preparing_a_prepared_model_is_a_clear_error() -> None:
    model, inputs = _data()
    prepared = pt2q.prepare_pt2e(export_module(model, (inputs[0],)), _quantizer())
    with pytest.raises(ValueError, match="already prepared.*activation_post_process_.*convert_pt2e"):
        pt2q.prepare_pt2e(prepared, _quantizer())
    with pytest.raises(ValueError, match="already prepared"):
        pt2q.prepare_qat_pt2e(prepared, _quantizer())
    # torchao prepares it again and doubles the observers
    oracle = torchao_qp.prepare_pt2e(export_module(model, (inputs[0],)), _quantizer(oracle=True))
    once = sum(n.op == "call_module" for n in oracle.graph.nodes)
    twice = torchao_qp.prepare_pt2e(oracle, _quantizer(oracle=True))
    assert sum(n.op == "call_module" for n in twice.graph.nodes) > once
