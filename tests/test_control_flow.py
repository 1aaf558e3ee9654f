"""Control flow: models with ``torch.cond``, ``while_loop``, ``scan`` and ``map`` quantize inside their bodies.

One model per higher-order op, through pt2q's flow and torchao's (the oracle) with the XNNPACK quantizer:
Q/DQ counts per graph, SQNR against the float model, save/load through ``torch.export``, and bit-equality
with torchao where torchao handles the op. torchao 0.18 prepares only the bodies of ``scan`` and
``while_loop`` (each on its own, no qparams shared with the caller), leaves ``cond`` and ``map`` float,
cannot calibrate a ``scan`` with autograd on (the op traces its body, observers included), and its
converted ``while_loop`` model no longer exports (its scalar-to-tensor step turns the int loop counter
float). pt2q quantizes all four, shares qparams where a value crosses a body's boundary, folds the
weights inside bodies to integers, and the result saves and loads.
"""

from __future__ import annotations

import copy
import functools
import io
import re
import warnings
from typing import Optional

import pytest
import torch
from expecttest import assert_expected_inline
from torch import nn
from torch._higher_order_ops.map import map as control_flow_map
from torch._higher_order_ops.scan import scan
from torch._higher_order_ops.while_loop import while_loop
from torch.fx import GraphModule

import pt2q
from pt2q.numerics.metrics import sqnr
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tests.helpers import QDQ_TARGETS, export_module, xnnpack_oracle_without_bn_patterns

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
torchao_qp = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")


class Cond(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda x: self.a(x).relu(), lambda x: self.b(x), (x,))


class While(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.step = nn.Linear(8, 8)

    def forward(self, x):
        def body(i, h):
            return i + 1, self.step(h).tanh()

        return while_loop(lambda i, h: i < 3, body, (torch.zeros((), dtype=torch.int64), x))[1]


class Scan(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(8, 8)

    def forward(self, xs):
        def combine(h, x):
            h = self.cell(h + x).tanh()
            return h, h.clone()

        return scan(combine, torch.zeros(2, 8), xs)[1]


class Map(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, xs):
        return control_flow_map(lambda x: self.fc(x).relu(), xs)


class Crossing(nn.Module):
    """linear -> cond(linear | linear) -> linear: values cross into the bodies and back."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.a, self.b, self.out = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        h = self.inp(x)
        return self.out(torch.cond(x.sum() > 0, lambda h: self.a(h), lambda h: self.b(h), (h,)))


class Nested(nn.Module):
    """A cond inside a while_loop body."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        def body(i, h):
            return i + 1, torch.cond(h.sum() > 0, lambda h: self.a(h).tanh(), lambda h: self.b(h).tanh(), (h,))

        return while_loop(lambda i, h: i < 2, body, (torch.zeros((), dtype=torch.int64), x))[1]


def _model(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return cls().eval()


def _inputs(cls: type[nn.Module]) -> list[torch.Tensor]:
    torch.manual_seed(1)
    shape = (4, 2, 8) if cls in (Scan, Map) else (2, 8)
    return [torch.randn(shape) for _ in range(4)]


def _pt2q(model: nn.Module, inputs: list[torch.Tensor], per_channel: bool = False) -> GraphModule:
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=per_channel))
    prepared = pt2q.prepare_pt2e(export_module(model, (inputs[0],)), quantizer)
    for x in inputs:  # autograd on: pt2q calibrates bodies all the same
        prepared(x)
    return pt2q.convert_pt2e(prepared)


@functools.cache
def _torchao(cls: type[nn.Module]) -> tuple[GraphModule, Optional[Exception]]:
    """torchao's flow on ``cls`` calibrated under no_grad, and what calibrating with autograd on raised."""
    inputs = _inputs(cls)
    prepared = torchao_qp.prepare_pt2e(export_module(_model(cls), (inputs[0],)), xnnpack_oracle_without_bn_patterns())
    error = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            copy.deepcopy(prepared)(inputs[0])
    except Exception as e:  # noqa: BLE001  the oracle's failure is the point of test_scan
        error = e
    with torch.no_grad():  # what torchao's scan needs; the other ops run either way
        for x in inputs:
            prepared(x)
    return torchao_qp.convert_pt2e(prepared), error


def _qdq_counts(gm: GraphModule) -> dict[str, int]:
    return {
        name or "<root>": sum(n.op == "call_function" and n.target in QDQ_TARGETS for n in m.graph.nodes)
        for name, m in gm.named_modules()
        if isinstance(m, GraphModule)
    }


def _reload(program: torch.export.ExportedProgram) -> GraphModule:
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    return torch.export.load(buf).module()


def _check_quantized(cls: type[nn.Module], per_channel: bool = False) -> tuple[GraphModule, float]:
    """pt2q's flow on ``cls``: good numbers, int8 weights only, bit-equal after save/load. Returns (model, SQNR)."""
    model, inputs = _model(cls), _inputs(cls)
    converted = _pt2q(model, inputs, per_channel)
    with torch.no_grad():
        worst = min(sqnr(model(x), converted(x)) for x in inputs)
        program = torch.export.export(converted, (inputs[0],))
        reloaded = _reload(program)
        for x in inputs:
            assert torch.equal(reloaded(x), converted(x))
    state = program.state_dict
    weights = [name for name, t in state.items() if t.dim() == 2]
    assert weights and all(state[name].dtype == torch.int8 for name in weights), {k: v.dtype for k, v in state.items()}
    return converted, worst


def test_cond_pt2q_quantizes_both_branches_torchao_neither() -> None:
    converted, sqnr = _check_quantized(Cond)
    assert _qdq_counts(converted) == {"<root>": 0, "true_graph_0": 5, "false_graph_0": 5}
    assert sqnr > 30
    reference, _ = _torchao(Cond)
    assert _qdq_counts(reference) == {"<root>": 0, "true_graph_0": 0, "false_graph_0": 0}


def test_while_loop_bit_equal_to_torchao_and_saves() -> None:
    inputs = _inputs(While)
    converted, sqnr = _check_quantized(While)
    assert sqnr > 25
    reference, error = _torchao(While)
    assert error is None
    counts = _qdq_counts(converted)
    # torchao quantizes the weight at run time in every iteration (q + dq); pt2q stores it as int8 (dq only)
    assert counts == {"<root>": 0, "while_loop_cond_graph_0": 0, "while_loop_body_graph_0": 5}
    assert _qdq_counts(reference)["while_loop_body_graph_0"] == 6
    with torch.no_grad():
        for x in inputs:
            assert torch.equal(converted(x), reference(x))
    with pytest.raises(Exception, match="same metadata"):  # torchao's int loop counter became float
        torch.export.export(reference, (inputs[0],))


def test_scan_bit_equal_to_torchao_which_cannot_calibrate_with_autograd() -> None:
    inputs = _inputs(Scan)
    converted, sqnr = _check_quantized(Scan)
    assert sqnr > 30
    assert _qdq_counts(converted) == {"<root>": 0, "scan_combine_graph_0": 9}
    reference, error = _torchao(Scan)  # calibrated under no_grad
    assert "data-dependent" in str(error)
    assert _qdq_counts(reference) == {"<root>": 0, "scan_combine_graph_0": 10}
    with torch.no_grad():
        for x in inputs:
            assert torch.equal(converted(x), reference(x))


def test_map_pt2q_quantizes_the_body_torchao_does_not() -> None:
    converted, sqnr = _check_quantized(Map)
    assert _qdq_counts(converted) == {"<root>": 0, "body_graph_0": 5}
    assert sqnr > 35
    assert _qdq_counts(_torchao(Map)[0]) == {"<root>": 0, "body_graph_0": 0}


def test_per_channel_weights_in_a_body_fold_and_their_qparams_become_operands() -> None:
    converted, sqnr = _check_quantized(Cond, per_channel=True)
    assert sqnr > 35
    for name in ("true_graph_0", "false_graph_0"):
        body = getattr(converted, name)
        assert not [n for n in body.graph.nodes if n.op == "get_attr"]  # a body holds no tensors: it saves
        assert not list(body.buffers()) and not list(body.parameters())


def test_nested_control_flow() -> None:
    converted, sqnr = _check_quantized(Nested)
    assert sqnr > 25
    counts = _qdq_counts(converted)
    assert counts["while_loop_body_graph_0.true_graph_0"] == counts["while_loop_body_graph_0.false_graph_0"] == 5


def _qdq_program(gm: GraphModule) -> str:
    """Each graph's Q/DQ and compute nodes, scales named s0, s1, ... in order of appearance (shared = same name)."""
    names: dict[float, str] = {}
    lines = []
    for name, m in gm.named_modules():
        if not isinstance(m, GraphModule):
            continue
        lines.append(f"{name or '<root>'}:")
        for n in m.graph.nodes:
            if n.op != "call_function" or n.target is torch.ops.aten.sum.default:
                continue
            op = re.sub(r"^(quantized_decomposed|aten|higher_order)\.", "", str(n.target).replace("torch.ops.", ""))
            op = op.replace("_per_tensor.default", "").replace(".default", "").replace("<built-in function ", "")
            args = [a.name if isinstance(a, torch.fx.Node) else a for a in n.args[:1]]
            scale = ""
            if n.target in QDQ_TARGETS:
                scale = " " + names.setdefault(float(n.args[1]), f"s{len(names)}")
            lines.append(f"  {n.name} = {op.rstrip('>')}({', '.join(map(str, args))}){scale}")
    return "\n".join(lines)


def test_qparams_are_shared_across_the_boundary() -> None:
    """The value entering the cond has one scale on both sides (s3); the branches' outputs and the reader
    of the cond's result share one (s4): no requantization at the boundary. Weights are int8 operands."""
    converted, _ = _check_quantized(Crossing)
    assert_expected_inline(
        _qdq_program(converted),
        """\
<root>:
  dequantize_per_tensor_default = dequantize(_frozen_param0) s0
  dequantize_per_tensor_default_1 = dequantize(_frozen_param1) s1
  quantize_per_tensor_default_2 = quantize(x) s2
  dequantize_per_tensor_default_2 = dequantize(quantize_per_tensor_default_2) s2
  linear = linear(dequantize_per_tensor_default_2)
  quantize_per_tensor_default_3 = quantize(linear) s3
  dequantize_per_tensor_default_3 = dequantize(quantize_per_tensor_default_3) s3
  gt = gt.Scalar(sum_1)
  cond = cond(gt)
  getitem = getitem(cond)
  quantize_per_tensor_default_4 = quantize(getitem) s4
  dequantize_per_tensor_default_4 = dequantize(quantize_per_tensor_default_4) s4
  linear_1 = linear(dequantize_per_tensor_default_4)
  quantize_per_tensor_default_5 = quantize(linear_1) s5
  dequantize_per_tensor_default_5 = dequantize(quantize_per_tensor_default_5) s5
true_graph_0:
  dequantize_per_tensor_default = dequantize(_frozen_param2) s6
  quantize_per_tensor_default_1 = quantize(linear) s3
  dequantize_per_tensor_default_1 = dequantize(quantize_per_tensor_default_1) s3
  linear_1 = linear(dequantize_per_tensor_default_1)
  quantize_per_tensor_default_2 = quantize(linear_1) s4
  dequantize_per_tensor_default_2 = dequantize(quantize_per_tensor_default_2) s4
false_graph_0:
  dequantize_per_tensor_default = dequantize(_frozen_param3) s7
  quantize_per_tensor_default_1 = quantize(linear) s3
  dequantize_per_tensor_default_1 = dequantize(quantize_per_tensor_default_1) s3
  linear_1 = linear(dequantize_per_tensor_default_1)
  quantize_per_tensor_default_2 = quantize(linear_1) s4
  dequantize_per_tensor_default_2 = dequantize(quantize_per_tensor_default_2) s4""",
    )


def test_prepared_control_flow_calibrates_with_autograd_on() -> None:
    model, inputs = _model(Cond), _inputs(Cond)
    prepared = pt2q.prepare_pt2e(
        export_module(model, (inputs[0],)), XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    )
    assert torch.is_grad_enabled()
    out = prepared(inputs[0])
    assert torch.equal(out, model(inputs[0]))  # observers observe, they change nothing
    taken = "true_graph_0" if bool(inputs[0].sum() > 0) else "false_graph_0"
    with pytest.warns(pt2q.UncalibratedObserverWarning, match=f"body '(?!{taken})\\w+', which calibration never ran"):
        pt2q.convert_pt2e(copy.deepcopy(prepared))  # calibration took one branch only
    prepared(-inputs[0])
    converted = pt2q.convert_pt2e(prepared)
    assert not [n for n in converted.graph.nodes if n.target is torch.ops.aten.detach.default]
