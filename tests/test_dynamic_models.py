"""Dynamic and weight-only quantization of linear-heavy models, end to end.

* A BERT-like encoder with the XNNPACK dynamic config: every linear gets
  ``choose_qparams -> quantize -> dequantize`` on its input and an int8 per-channel
  weight; torchao + ExecuTorch's XNNPACKQuantizer give the same graph and bits; the
  ``.pte`` runs every linear in XNNPACK's dynamically quantized kernels.
* Recurrent cells: ``torch.export`` keeps ``nn.LSTM`` / ``nn.GRU`` as one fused
  ``aten.lstm.input`` / ``aten.gru.input`` op that no annotator matches, so only the
  linear head is quantized and the cell stays float (ExecuTorch later unrolls it into
  fp32 linears in XNNPACK). Decomposing the cell at export time
  (``ep.run_decompositions({op: decomposition_table[op]})``) unrolls it into
  ``1 + seq_len`` linears, all of which the linear annotator quantizes and XNNPACK runs in int8.
* Weight-only (:func:`get_weight_only_quantization_config`): int8 weights dequantized
  in the graph, float matmuls. ExecuTorch's portable kernels reproduce it (to float rounding);
  the XNNPACK delegate (ExecuTorch 1.5.1) computes it wrong, so to_executorch refuses it.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import io
import operator
import warnings
from typing import Any

import expecttest
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._decomp import decomposition_table
from torch.fx import GraphModule, Node

pytest.importorskip("executorch.exir")

import pt2q
import pt2q.runtime as runtime
from pt2q.lowering import LoweredProgram, UnsupportedQuantizedPatternError, to_executorch
from pt2q.lowering.delegation_report import XNNPACK
from pt2q.numerics.metrics import sqnr
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from pt2q.quantizers.xnnpack import get_weight_only_quantization_config
from tests.helpers import export_module, pt2q_flow, qdq_signature, saved_size, torchao_flow

aten, qd = torch.ops.aten, torch.ops.quantized_decomposed
DIM, SEQ, BATCH = 64, 8, 2
RNN_IN, RNN_HIDDEN, RNN_SEQ = 16, 32, 3
DYNAMIC = dict(is_per_channel=True, is_dynamic=True)
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's pytree LeafSpec deprecation on deepcopy


class EncoderLayer(nn.Module):
    """Post-LN transformer layer: fused QKV attention + GELU feed-forward."""

    def __init__(self, dim: int = DIM, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))
        att = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
        x = self.ln1(x + self.out((att @ v).transpose(1, 2).reshape(b, t, d)))
        return self.ln2(x + self.ff2(F.gelu(self.ff1(x))))


class Encoder(nn.Module):
    """Two encoder layers and a BERT-style pooler + classifier on the first token."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(EncoderLayer(), EncoderLayer())
        self.pooler, self.classifier = nn.Linear(DIM, DIM), nn.Linear(DIM, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(self.layers(x)[:, 0])))


class RecurrentNet(nn.Module):
    """``nn.LSTM`` or ``nn.GRU`` over the sequence, then a linear head on every step."""

    def __init__(self, cell: type[nn.Module]) -> None:
        super().__init__()
        self.rnn = cell(RNN_IN, RNN_HIDDEN, batch_first=True)
        self.head = nn.Linear(RNN_HIDDEN, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


CELLS = {"lstm": (nn.LSTM, aten.lstm.input), "gru": (nn.GRU, aten.gru.input)}


def _batches(shape: tuple[int, ...], n: int, seed: int) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g),) for _ in range(n)]


def _calls(gm: GraphModule, op: Any) -> list[Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target == op]


def _module_path(node: Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0].removeprefix("L['self'].") if stack else node.name


def _describe_input(node: Any) -> str:
    """How a linear's input/weight is produced: dynamic int8, per-channel int8, or float."""
    if not isinstance(node, Node):
        return "fp32"
    if node.target == qd.dequantize_per_tensor.tensor:
        q = node.args[0]
        scale_src = q.args[1].args[0] if isinstance(q.args[1], Node) and q.args[1].target is operator.getitem else None
        if (
            q.target == qd.quantize_per_tensor.tensor
            and scale_src is not None
            and scale_src.target == qd.choose_qparams.tensor
        ):
            return f"dyn {node.args[-1]}".replace("torch.", "")
    if node.target == qd.dequantize_per_channel.default:
        axis, qmin, qmax, dtype = node.args[3:7]
        return f"{dtype}[{qmin},{qmax}]/ch{axis}".replace("torch.", "")
    return "fp32"


def linear_summary(gm: GraphModule) -> str:
    """One line per linear: module, input, weight, whether the output is quantized."""
    lines = []
    for node in _calls(gm, aten.linear.default):
        out = (
            "q"
            if any(u.target in (qd.quantize_per_tensor.default, qd.quantize_per_tensor.tensor) for u in node.users)
            else "fp32"
        )
        lines.append(
            f"{_module_path(node)}: x={_describe_input(node.args[0])} w={_describe_input(node.args[1])} -> {out}"
        )
    return "\n".join(lines)


def qdq_counts(gm: GraphModule) -> dict[str, int]:
    counts = collections.Counter(
        str(n.target).removeprefix("quantized_decomposed.")
        for n in gm.graph.nodes
        if n.op == "call_function" and str(n.target).startswith("quantized_decomposed.")
    )
    return dict(sorted(counts.items()))


def _int8_constants(gm: GraphModule) -> int:
    """Elements of the distinct int8 tensors the graph reads."""
    tensors = {}
    for node in gm.graph.nodes:
        value = getattr(gm, node.target, None) if node.op == "get_attr" else None
        if isinstance(value, torch.Tensor) and value.dtype == torch.int8:
            tensors[value.data_ptr()] = value.numel()
    return sum(tensors.values())


def _lower(gm: GraphModule, example: tuple, **kwargs: Any) -> LoweredProgram:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_executorch(torch.export.export(gm, example), **kwargs)


@dataclasses.dataclass
class Quantized:
    model: nn.Module
    example: tuple[torch.Tensor, ...]
    test_input: torch.Tensor
    converted: GraphModule


def _quantize(model: nn.Module, example: tuple, config: Any, seed: int = 1) -> Quantized:
    batches = _batches(tuple(example[0].shape), 2, seed)
    converted = pt2q_flow(XNNPACKQuantizer().set_global(config), model, example, batches)
    return Quantized(model, example, _batches(tuple(example[0].shape), 1, seed + 100)[0][0], converted)


@pytest.fixture(scope="module")
def encoder() -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return Encoder().eval(), (torch.randn(BATCH, SEQ, DIM),)


@pytest.fixture(scope="module")
def dynamic(encoder) -> Quantized:
    return _quantize(*encoder, get_symmetric_quantization_config(**DYNAMIC))


@pytest.fixture(scope="module")
def weight_only(encoder) -> Quantized:
    return _quantize(*encoder, get_weight_only_quantization_config())


# --- dynamic: the encoder ---------------------------------------------------------


class TestDynamicEncoderGraph(expecttest.TestCase):
    @pytest.fixture(autouse=True)
    def _inject(self, dynamic: Quantized) -> None:
        self.q = dynamic

    def test_every_linear_is_dynamic_with_per_channel_weights(self) -> None:
        gm = self.q.converted
        self.assertExpectedInline(
            linear_summary(gm),
            """\
layers.0.qkv: x=dyn int8 w=int8[-127,127]/ch0 -> fp32
layers.0.out: x=dyn int8 w=int8[-127,127]/ch0 -> fp32
layers.0.ff1: x=dyn int8 w=int8[-127,127]/ch0 -> fp32
layers.0.ff2: x=dyn int8 w=int8[-127,127]/ch0 -> fp32
layers.1.qkv: x=dyn int8 w=int8[-127,127]/ch0 -> fp32
layers.1.out: x=dyn int8 w=int8[-127,127]/ch0 -> fp32
layers.1.ff1: x=dyn int8 w=int8[-127,127]/ch0 -> fp32
layers.1.ff2: x=dyn int8 w=int8[-127,127]/ch0 -> fp32
pooler: x=dyn int8 w=int8[-127,127]/ch0 -> fp32
classifier: x=dyn int8 w=int8[-127,127]/ch0 -> fp32""",
        )
        # nothing else is quantized: attention matmuls, layer norm, softmax, gelu stay float
        self.assertEqual(
            qdq_counts(gm),
            {
                "choose_qparams.tensor": 10,
                "dequantize_per_channel.default": 10,
                "dequantize_per_tensor.tensor": 10,
                "quantize_per_tensor.tensor": 10,
            },
        )
        weights = sum(m.weight.numel() for m in self.q.model.modules() if isinstance(m, nn.Linear))
        self.assertEqual(_int8_constants(gm), weights)


def test_dynamic_encodersqnr(dynamic: Quantized) -> None:
    x = dynamic.test_input
    assert sqnr(dynamic.model(x), dynamic.converted(x)) >= 36.0  # measured 41.4 dB


def test_dynamic_encoder_save_load_is_bit_exact(dynamic: Quantized) -> None:
    buf = io.BytesIO()
    torch.export.save(torch.export.export(dynamic.converted, dynamic.example), buf)
    buf.seek(0)
    loaded = torch.export.load(buf).module()
    x = dynamic.test_input
    assert torch.equal(loaded(x), dynamic.converted(x))


def test_dynamic_encoder_matches_torchao_and_executorch_quantizer(encoder, dynamic: Quantized) -> None:
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as et

    model, example = encoder
    quantizer = et.XNNPACKQuantizer().set_global(et.get_symmetric_quantization_config(**DYNAMIC))
    theirs = torchao_flow(quantizer, model, example, _batches(tuple(example[0].shape), 2, 1))
    assert qdq_signature(theirs) == qdq_signature(dynamic.converted)
    x = dynamic.test_input
    assert torch.equal(theirs(x), dynamic.converted(x))


@pytest.fixture(scope="module")
def dynamic_pte(dynamic: Quantized) -> LoweredProgram:
    return _lower(dynamic.converted, dynamic.example)


def test_dynamic_encoder_pte_delegates_every_linear(dynamic_pte: LoweredProgram, dynamic: Quantized) -> None:
    report = dynamic_pte.report
    linears = [r for r in report.rows if r.op == "aten.linear"]
    assert len(linears) == 10
    assert all(r.runs_on == XNNPACK and r.precision == "int8" and r.weight_dtype == torch.int8 for r in linears)
    assert report.int8_weight_share == 1.0 and not report.fallbacks
    # choose_qparams/quantize/dequantize were all folded into XNNPACK's dynamically quantized linears
    assert not [r for r in report.rows if r.op.startswith("quantized_decomposed.")]


def test_dynamic_encoder_pte_runs_close_to_qdq(dynamic_pte: LoweredProgram, dynamic: Quantized) -> None:
    x = dynamic.test_input
    cmp = runtime.compare(runtime.load(dynamic_pte.buffer), dynamic.converted, x)
    # XNNPACK picks its activation qparams per row, the Q/DQ graph per tensor
    assert cmp.max_abs_diff <= 0.02 and cmp.sqnr_db >= 38.0, cmp  # measured 0.0035, 45.0 dB
    assert sqnr(dynamic.model(x), runtime.load(dynamic_pte.buffer)(x)) >= 36.0  # measured 40.9 dB


# --- recurrent cells --------------------------------------------------------------


def _rnn(name: str) -> tuple[nn.Module, tuple[torch.Tensor]]:
    torch.manual_seed(0)
    return RecurrentNet(CELLS[name][0]).eval(), (torch.randn(BATCH, RNN_SEQ, RNN_IN),)


def _export_rnn(model: nn.Module, example: tuple, decompose_cell: bool, op: Any) -> GraphModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "tensor attributes self.rnn._flat_weights ... were assigned during export"
        ep = torch.export.export(copy.deepcopy(model), example)
    if decompose_cell:
        ep = ep.run_decompositions({op: decomposition_table[op]})
    return ep.module()


def _quantize_rnn(name: str, decompose_cell: bool) -> Quantized:
    model, example = _rnn(name)
    m = pt2q.prepare_pt2e(
        _export_rnn(model, example, decompose_cell, CELLS[name][1]),
        XNNPACKQuantizer().set_global(get_symmetric_quantization_config(**DYNAMIC)),
    )
    for batch in _batches(tuple(example[0].shape), 2, 1):
        m(*batch)
    return Quantized(model, example, _batches(tuple(example[0].shape), 1, 101)[0][0], pt2q.convert_pt2e(m))


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_fused_cell_stays_float_and_head_is_quantized(name: str) -> None:
    q = _quantize_rnn(name, decompose_cell=False)
    (cell,) = _calls(q.converted, CELLS[name][1])  # torch.export keeps the whole recurrence as one op
    assert linear_summary(q.converted) == "head: x=dyn int8 w=int8[-127,127]/ch0 -> fp32"
    assert qdq_counts(q.converted) == {
        "choose_qparams.tensor": 1,
        "dequantize_per_channel.default": 1,
        "dequantize_per_tensor.tensor": 1,
        "quantize_per_tensor.tensor": 1,
    }
    # the cell reads its float weights directly: w_ih, w_hh, b_ih, b_hh
    params = cell.args[2]
    assert len(params) == 4 and all(p.op == "get_attr" and p.meta["val"].dtype == torch.float32 for p in params)
    assert _int8_constants(q.converted) == q.model.head.weight.numel()
    x = q.test_input
    assert sqnr(q.model(x), q.converted(x)) >= 40.0  # measured LSTM 43.1, GRU 44.1 dB


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_decomposed_cell_quantizes_every_step(name: str) -> None:
    q = _quantize_rnn(name, decompose_cell=True)
    assert not _calls(q.converted, CELLS[name][1])
    # input projection over all steps, one hidden-state projection per step, the head
    summary = linear_summary(q.converted).splitlines()
    assert len(summary) == 1 + RNN_SEQ + 1
    assert all(line.endswith("x=dyn int8 w=int8[-127,127]/ch0 -> fp32") for line in summary)
    x = q.test_input
    assert sqnr(q.model(x), q.converted(x)) >= 36.0  # measured LSTM 41.5, GRU 40.6 dB


@pytest.mark.parametrize("decompose_cell", [False, True], ids=["fused", "decomposed"])
def test_lstm_lowering(decompose_cell: bool) -> None:
    q = _quantize_rnn("lstm", decompose_cell)
    lowered = _lower(q.converted, q.example)
    linears = collections.Counter((r.runs_on, r.precision) for r in lowered.report.rows if r.op == "aten.linear")
    if decompose_cell:
        assert linears == {(XNNPACK, "int8"): 1 + RNN_SEQ + 1}
    else:  # ExecuTorch unrolls aten.lstm itself, after quantization: the cell runs in fp32 XNNPACK linears
        assert linears == {(XNNPACK, "int8"): 1, (XNNPACK, "fp32"): 1 + RNN_SEQ}
    x = q.test_input
    cmp = runtime.compare(runtime.load(lowered.buffer), q.converted, x)
    assert cmp.max_abs_diff <= 0.02 and cmp.sqnr_db >= 36.0, cmp  # measured <= 0.002, >= 42 dB


# --- weight-only --------------------------------------------------------------------


class TestWeightOnlyEncoderGraph(expecttest.TestCase):
    @pytest.fixture(autouse=True)
    def _inject(self, weight_only: Quantized) -> None:
        self.q = weight_only

    def test_int8_weights_float_activations(self) -> None:
        self.assertExpectedInline(
            linear_summary(self.q.converted),
            """\
layers.0.qkv: x=fp32 w=int8[-127,127]/ch0 -> fp32
layers.0.out: x=fp32 w=int8[-127,127]/ch0 -> fp32
layers.0.ff1: x=fp32 w=int8[-127,127]/ch0 -> fp32
layers.0.ff2: x=fp32 w=int8[-127,127]/ch0 -> fp32
layers.1.qkv: x=fp32 w=int8[-127,127]/ch0 -> fp32
layers.1.out: x=fp32 w=int8[-127,127]/ch0 -> fp32
layers.1.ff1: x=fp32 w=int8[-127,127]/ch0 -> fp32
layers.1.ff2: x=fp32 w=int8[-127,127]/ch0 -> fp32
pooler: x=fp32 w=int8[-127,127]/ch0 -> fp32
classifier: x=fp32 w=int8[-127,127]/ch0 -> fp32""",
        )
        self.assertEqual(qdq_counts(self.q.converted), {"dequantize_per_channel.default": 10})


def test_weight_only_encoder_sqnr_and_size(encoder, weight_only: Quantized, dynamic: Quantized) -> None:
    model, example = encoder
    x = weight_only.test_input
    assert sqnr(model(x), weight_only.converted(x)) >= 42.0  # measured 47.0 dB (dynamic: 41.4)
    fp32 = saved_size(export_module(model, example), example)
    # 410 KB of fp32 linear weights become 103 KB of int8; the graph itself is ~130 KB (more when dynamic)
    weight_only_size, dynamic_size = (saved_size(q.converted, example) for q in (weight_only, dynamic))
    assert weight_only_size <= 0.60 * fp32  # measured 0.54x (293 KB of 542 KB)
    assert weight_only_size < dynamic_size <= 0.72 * fp32  # measured 0.67x


def test_weight_only_config_is_symmetric_weight_spec_only() -> None:
    config = get_weight_only_quantization_config()
    assert config.input_activation is None and config.output_activation is None and config.bias is None
    fields = ("dtype", "quant_min", "quant_max", "qscheme", "ch_axis", "is_dynamic")
    expected = get_symmetric_quantization_config(is_per_channel=True).weight
    assert [getattr(config.weight, f) for f in fields] == [getattr(expected, f) for f in fields]
    assert get_weight_only_quantization_config(is_per_channel=False).weight.qscheme == torch.per_tensor_symmetric


@pytest.fixture(scope="module")
def weight_only_linear() -> Quantized:
    torch.manual_seed(0)
    model, example = nn.Sequential(nn.Linear(16, 8)).eval(), (torch.randn(2, 16),)
    return _quantize(model, example, get_weight_only_quantization_config())


def test_weight_only_pte_without_delegate_matches_qdq(weight_only_linear: Quantized) -> None:
    q = weight_only_linear
    lowered = _lower(q.converted, q.example, delegate=False)
    ops = {r.op: r.runs_on for r in lowered.report.rows}
    assert ops == {
        "quantized_decomposed.dequantize_per_channel": "quantized kernel",
        "aten.permute_copy": "portable",
        "aten.addmm": "portable",
    }
    cmp = runtime.compare(runtime.load(lowered.buffer), q.converted, q.test_input)
    assert cmp.max_abs_diff <= 1e-5, cmp  # measured 2.4e-7: portable addmm sums in another order


def test_weight_only_linear_is_refused_by_the_xnnpack_lowering(weight_only_linear: Quantized) -> None:
    q = weight_only_linear
    with pytest.raises(
        UnsupportedQuantizedPatternError, match=r"weight-only quantized linear\(s\) linear .*delegate=False"
    ):
        _lower(q.converted, q.example)


def test_xnnpack_still_miscomputes_weight_only_linears(weight_only_linear: Quantized) -> None:
    """Why the lowering refuses them: ExecuTorch 1.5.1's XNNPACK partitioner splits the linear
    into a "quantized" permute of the int8 weight and an fp32 addmm that reads the raw int8
    codes. When this test fails, ExecuTorch has fixed it and the refusal can go."""
    from executorch.exir import to_edge_transform_and_lower

    from pt2q.lowering.executorch import _xnnpack_partitioner

    q = weight_only_linear
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge = to_edge_transform_and_lower(
            torch.export.export(q.converted, q.example), partitioner=[_xnnpack_partitioner()]
        )
        buffer = edge.to_executorch().buffer
    cmp = runtime.compare(runtime.load(buffer), q.converted, q.test_input)
    assert cmp.max_abs_diff > 1.0, cmp  # measured 826: outputs ~1/scale too large
