"""pt2q.report: per-layer quantization table, local/cumulative/sensitivity SQNR, float reasons, plot."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn as nn
from expecttest import assert_expected_inline

import pt2q
from pt2q.observer import MinMaxObserver, PerChannelMinMaxObserver
from pt2q.quantizer import QuantizationConfig, QuantizationSpec
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config


def _minmax_config() -> QuantizationConfig:
    """XNNPACK's int8 scheme with min/max activation ranges (the histogram observer would clip
    an outlier channel and hide the damage these tests are about)."""
    act = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_tensor_affine,
        observer_or_fake_quant_ctr=MinMaxObserver,
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-127,
        quant_max=127,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        observer_or_fake_quant_ctr=PerChannelMinMaxObserver,
    )
    return QuantizationConfig(act, act, weight, None)


class Damaged(nn.Module):
    """conv1's channel 7 is a huge constant that conv2 ignores: quantizing conv1's output per
    tensor spends the whole int8 range on it and crushes the channels conv2 reads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        with torch.no_grad():
            self.conv1.weight[7] = 0.0
            self.conv1.bias[7] = 500.0
            self.conv2.weight[:, 7] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.act(self.conv2(self.conv1(x)))), 1))


def _close(a, b) -> bool:
    """Equal SQNRs: both absent, or equal to 1e-9 relative (pytest >= 9.2 refuses approx(None))."""
    return a is None and b is None or (a is not None and b is not None and a == pytest.approx(b, rel=1e-9))


def _batches(shape, n: int = 3, seed: int = 1) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*shape, generator=g),) for _ in range(n)]


def _quantize(model: nn.Module, batches, quantizer) -> tuple[torch.export.ExportedProgram, torch.fx.GraphModule]:
    ep = torch.export.export(model.eval(), batches[0])
    m = pt2q.prepare_pt2e(ep.module(), quantizer)
    for b in batches:
        m(*b)
    return ep, pt2q.convert_pt2e(m)


def test_sensitivity_finds_the_layer_that_causes_the_loss(tmp_path) -> None:
    batches = _batches((2, 3, 12, 12))
    ep, quantized = _quantize(Damaged(), batches, XNNPACKQuantizer().set_global(_minmax_config()))
    r = pt2q.report(quantized, ep, batches)
    conv1, conv2 = r.row("conv2d"), r.row("conv2d_1")
    assert (conv1.module_path, conv2.module_path) == ("conv1", "conv2")
    # where the loss shows: conv2's output, the lowest cumulative SQNR of all layers ...
    assert min(r.quantized_rows, key=lambda row: row.cumulative_sqnr) is conv2
    # ... while conv1's own output looks fine (its huge channel dominates the signal)
    assert conv1.cumulative_sqnr > conv2.cumulative_sqnr + 20
    # where it is caused: quantizing conv1 alone costs the most at the output
    assert r.worst(1)[0] is conv1
    assert conv1.sensitivity_sqnr < min(row.sensitivity_sqnr for row in r.quantized_rows if row is not conv1) - 10
    assert abs(r.output_sqnr - conv1.sensitivity_sqnr) < 3, (r.output_sqnr, conv1.sensitivity_sqnr)

    path = tmp_path / "sqnr.png"
    fig = r.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        f"{row.name}\n{row.module_path}" if row.module_path else row.name for row in r.quantized_rows
    ]
    labels = [c.get_label() for c in ax.containers]
    assert labels == ["local", "cumulative", "sensitivity"]
    drawn = {label: [bar.get_height() for bar in c] for label, c in zip(labels, ax.containers)}
    for i, row in enumerate(r.quantized_rows):
        for label in labels:
            value = getattr(row, f"{label}_sqnr")
            assert drawn[label][i] == pytest.approx(min(value, 80.0)), (row.name, label)


def test_sensitivity_of_the_only_quantized_layer_is_the_output_sqnr() -> None:
    """An independent check of the one-at-a-time analysis: when the quantizer itself quantizes
    one layer only, that layer's sensitivity is the quantized model's output SQNR."""
    batches = _batches((2, 3, 12, 12))
    model = Damaged()
    with torch.no_grad():
        model.conv1.bias[7] = 0.0
    quantizer = XNNPACKQuantizer().set_module_name("fc", get_symmetric_quantization_config(is_per_channel=True))
    ep, quantized = _quantize(model, batches, quantizer)
    r = pt2q.report(quantized, ep, batches)
    assert [row.name for row in r.quantized_rows] == ["linear"]
    assert r.row("linear").sensitivity_sqnr == pytest.approx(r.output_sqnr, rel=1e-9)
    # everything before it is float: its local and cumulative errors are the same thing
    assert r.row("linear").local_sqnr == pytest.approx(r.row("linear").cumulative_sqnr, rel=1e-9)
    assert math.isinf(r.row("conv2d").cumulative_sqnr) and r.row("conv2d").sensitivity_sqnr is None


def test_local_error_excludes_inherited_error() -> None:
    batches = _batches((2, 3, 12, 12))
    ep, quantized = _quantize(Damaged(), batches, XNNPACKQuantizer().set_global(_minmax_config()))
    r = pt2q.report(quantized, ep, batches)
    conv2 = r.row("conv2d_1")
    # fed conv1's float output, conv2 quantizes it itself: small local error, unlike its cumulative one
    assert conv2.local_sqnr > conv2.cumulative_sqnr + 20
    assert r.row("conv2d").local_sqnr == pytest.approx(r.row("conv2d").cumulative_sqnr, rel=1e-9)


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.body = nn.Linear(4, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        idx = y.argmax(dim=1, keepdim=True)
        return self.head(torch.tanh(self.body(y))) + idx


def _mixed():
    torch.manual_seed(0)
    batches = _batches((2, 3, 8, 8), n=2)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantizer.set_module_name("head", None)
    ep, quantized = _quantize(Mixed(), batches, quantizer)
    return ep, quantized, batches


def test_report_explains_what_stayed_float_and_how_the_rest_was_quantized() -> None:
    ep, quantized, batches = _mixed()
    r = pt2q.report(quantized, ep)  # no inputs: the table of what was done, no SQNR
    assert r.output_sqnr is None and all(row.cumulative_sqnr is None for row in r.rows)
    assert_expected_inline(
        "\n".join(f"{row.name}: {row.how}" for row in r.rows),
        """\
conv2d: w:int8 per-channel(axis 0) s∈[0.00145,0.00151] (PerChannelMinMaxObserver); i:int8 s=0.0249 zp=6 (HistogramObserver); o:int8 s=0.00728 zp=-128 (HistogramObserver)
batch_norm: float: folded into conv2d
mean: i:int8 s=0.00728 zp=-128 (HistogramObserver, from conv2d); o:int8 s=0.00728 zp=-128 (HistogramObserver)
argmax: float: its output is torch.int64, not a float tensor
linear: w:int8 per-channel(axis 0) s∈[0.00098,0.00378] (PerChannelMinMaxObserver); i:int8 s=0.00728 zp=-128 (HistogramObserver, from mean); o:int8 s=0.00344 zp=5 (HistogramObserver)
tanh: float: XNNPACKQuantizer has no pattern for tanh.default
linear_1: float: kept float by set_module_name('head', None)
add: float: no add_relu/add pattern matched it (its operands did not fit: e.g. a non-float input or a computed weight)""",
    )
    # conv -> relu is one pattern, one row, named by the conv; the qparams shown are the graph's
    conv = r.row("conv2d")
    assert (conv.op, conv.pattern, conv.module_path) == ("conv2d+relu", "conv_relu", "conv")
    q_out = next(n for n in quantized.graph.nodes if n.name.startswith("quantize") and n.args[0].name == "relu")
    relu_out = conv.quantization[-1]
    assert (relu_out.role, relu_out.scale, relu_out.zero_point) == ("output", q_out.args[1], q_out.args[2])
    assert "relu" not in [row.name for row in r.rows]
    with pytest.raises(ValueError, match="pass inputs"):
        r.plot()
    table = str(r)
    assert table.splitlines()[0] == "3 of 8 nodes quantized"
    assert "kept float by set_module_name('head', None)" in table


def test_report_after_save_load_and_from_eager_model() -> None:
    ep, quantized, batches = _mixed()
    expected = pt2q.report(quantized, ep, batches)
    buf = io.BytesIO()
    torch.export.save(torch.export.export(quantized, batches[0]), buf)
    buf.seek(0)
    loaded = pt2q.report(torch.export.load(buf), ep, batches)
    torch.manual_seed(0)  # the seed _mixed built its model with: the same weights
    eager = pt2q.report(quantized, Mixed().eval(), batches)  # exported here, matched by node names
    for other in (loaded, eager):
        assert [row.name for row in other.rows] == [row.name for row in expected.rows]
        for a, b in zip(other.rows, expected.rows):
            assert a.how == b.how
            for attr in ("local_sqnr", "cumulative_sqnr", "sensitivity_sqnr"):
                assert _close(getattr(a, attr), getattr(b, attr)), (a.name, attr)
    assert expected.output_sqnr > 25


def test_report_rejects_bad_arguments() -> None:
    ep, quantized, batches = _mixed()
    with pytest.raises(TypeError, match="inputs must be a tuple of tensors"):
        pt2q.report(quantized, ep, "images/")
    with pytest.raises(TypeError, match="quantized_model must be a GraphModule or ExportedProgram"):
        pt2q.report(Mixed(), ep, batches)
    with pytest.raises(ValueError, match="an eager float_model needs inputs"):
        pt2q.report(quantized, Mixed())
    with pytest.raises(ValueError, match="could not export float_model"):
        pt2q.report(quantized, Mixed(), (torch.randn(2, 5),))
    prepared = pt2q.prepare_pt2e(ep.module(), XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
    with pytest.raises(ValueError, match="still holds observers .*call convert_pt2e first"):
        pt2q.report(prepared, ep, batches)
    with pytest.raises(KeyError, match="no row named 'conv9'"):
        pt2q.report(quantized, ep).row("conv9")


def test_numeric_report_of_a_lowered_program() -> None:
    """Handles survive lowering: each row says where its node runs; the model output is
    measured on the .pte itself, per-node values on the Q/DQ program (and the report says so)."""
    import warnings

    from pt2q.lowering import numeric_report, to_executorch
    from tests.zoo import calibration_batches, make

    model, example = make("conv_bn_relu_stack")
    batches = calibration_batches(example)
    ep, quantized = _quantize(
        model, batches, XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lowered = to_executorch(quantized, example)
    r = numeric_report(lowered, ep, batches)
    qdq = pt2q.report(quantized, ep, batches)
    assert [row.how for row in r.rows] == [row.how for row in qdq.rows]
    assert {row.name: row.runs_on for row in r.quantized_rows} == {row.name: "XNNPACK" for row in qdq.quantized_rows}
    assert r.row("batch_norm").float_reason == "folded into conv2d" and r.row("batch_norm").runs_on is None
    assert abs(r.runtime_output_sqnr - r.output_sqnr) < 1.0, (r.runtime_output_sqnr, r.output_sqnr)
    assert r.output_sqnr > 35
    text = str(r)
    assert "output SQNR of the .pte on the ExecuTorch runtime" in text
    assert "XNNPACK delegate returns only its outputs" in text


def test_report_of_a_qat_model_measures_the_folded_conv() -> None:
    """After QAT the BatchNorm is folded into the conv at convert: the conv's row is measured
    against the float BatchNorm's output (what the folded conv computes now)."""
    from tests.zoo import calibration_batches, make

    model, example = make("conv_bn_relu_stack")
    batches = calibration_batches(example)
    ep = torch.export.export(model.train(), example)
    prepared = pt2q.prepare_qat_pt2e(
        ep.module(), XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    )
    for b in batches:
        prepared(*b)
    pt2q.move_exported_model_to_eval(prepared)
    quantized = pt2q.convert_pt2e(prepared)
    r = pt2q.report(quantized, torch.export.export(model.eval(), example), batches)
    assert r.row("batch_norm").float_reason == "folded into conv2d"
    # measured 24.9 and 19.7 dB (the calibration passes in train mode also moved the BN statistics);
    # compared with the float conv's own output, before its BatchNorm, they would be about 6 dB
    for name in ("conv2d", "conv2d_1"):
        assert r.row(name).cumulative_sqnr > 15, (name, r.row(name).cumulative_sqnr)
    assert r.output_sqnr > 15


class Chain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(self.embed(x))))


def test_a_layer_owns_the_quantization_of_its_input() -> None:
    """fc1 alone is quantized, its producer stays float: the Q/DQ on fc1's input is fc1's
    error (in its local and sensitivity SQNR), and the float producer is charged nothing."""
    batches = _batches((8, 16), n=3)
    quantizer = XNNPACKQuantizer().set_module_name("fc1", get_symmetric_quantization_config(is_per_channel=True))
    ep, quantized = _quantize(Chain(), batches, quantizer)
    r = pt2q.report(quantized, ep, batches)
    fc1 = r.row("linear_1")
    assert [row.name for row in r.quantized_rows] == ["linear_1"]
    assert [t.role for t in fc1.quantization] == ["weight", "input", "output"]
    assert math.isinf(r.row("linear").cumulative_sqnr) and math.isinf(r.row("linear").local_sqnr)
    assert fc1.local_sqnr == pytest.approx(fc1.cumulative_sqnr, rel=1e-9)
    assert fc1.sensitivity_sqnr == pytest.approx(r.output_sqnr, rel=1e-9)
    assert r.worst(1)[0] is fc1


def test_x86_quantizer_explains_what_it_left_float() -> None:
    from pt2q.quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.body(x))) @ torch.ones(2, 2)

    batches = _batches((4, 8), n=2)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    ep, quantized = _quantize(Net(), batches, quantizer.set_module_name_qconfig("head", None))
    assert_expected_inline(
        "\n".join(f"{r.name}: {r.float_reason}" for r in pt2q.report(quantized, ep).float_rows),
        """\
linear_1: kept float by set_module_name_qconfig('head', None)
ones: X86InductorQuantizer has no pattern for ones.default
matmul: matmul.default is quantized only when configured for it (set_function_type_qconfig)""",
    )


def test_handles_match_by_name_when_a_graph_id_collides() -> None:
    """Graph ids are addresses of graph objects, so a separate export of the float model can
    share one by chance: matching must still pair every node (per handle, by name where the
    ids differ), not only the colliding one."""
    from pt2q.debug.layer_errors import match_handles
    from pt2q.debug.numeric_debugger import debug_info

    ep, quantized, batches = _mixed()
    torch.manual_seed(0)
    separate = torch.export.export(Mixed().eval(), batches[0]).module()
    relu_id = next(debug_info(n) for n in quantized.graph.nodes if n.name == "relu").graph_id
    source = next(n for n in separate.graph.nodes if n.name == "relu").meta["from_node"][-1]
    while source.from_node:
        source = source.from_node[-1]
    source.node_info.graph_id = relu_id  # the collision
    matched = match_handles(separate, quantized)
    assert {h.name for h in matched} >= {"conv2d", "batch_norm", "relu", "mean", "linear", "tanh", "linear_1", "add"}
    assert all(q.name == f.name for q, f in matched.items())
    expected, collided = pt2q.report(quantized, ep, batches), pt2q.report(quantized, separate, batches)
    for a, b in zip(collided.rows, expected.rows):
        assert a.name == b.name
        for attr in ("local_sqnr", "cumulative_sqnr", "sensitivity_sqnr"):
            assert _close(getattr(a, attr), getattr(b, attr)), (a.name, attr)


def test_a_fused_pattern_is_one_row_named_by_its_weighted_op() -> None:
    """A linear + F.relu claimed as one pattern is one row, named by the linear and its module:
    an outlier planted in that linear is blamed on it, not on an anonymous relu."""

    class Planted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.outlier, self.head = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
            with torch.no_grad():
                self.outlier.weight[3] *= 400.0  # one output channel far outside the others' range,
                self.head.weight[:, 3] = 0.0  # which the head ignores: its int8 grid only costs accuracy

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.nn.functional.relu(self.outlier(torch.relu(self.inner(x)))))

    torch.manual_seed(0)
    batches = _batches((16, 8), n=3)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    ep, quantized = _quantize(Planted().eval(), batches, quantizer)
    r = pt2q.report(quantized, ep, batches)
    assert [(row.name, row.module_path, row.op, row.pattern) for row in r.quantized_rows] == [
        ("linear", "inner", "linear+relu", "linear_relu"),
        ("linear_1", "outlier", "linear+relu", "linear_relu"),
        ("linear_2", "head", "linear", "linear"),
    ]
    assert not any(row.name.startswith("relu") for row in r.rows)
    worst = r.worst(1)[0]
    assert (worst.name, worst.module_path) == ("linear_1", "outlier")
    assert worst.sensitivity_sqnr < r.row("linear").sensitivity_sqnr - 10
    assert [(t.role, t.source) for t in worst.quantization] == [("weight", None), ("input", "linear"), ("output", None)]
