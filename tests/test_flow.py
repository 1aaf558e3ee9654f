"""The core PT2E flow through the public API: prepare, calibrate, convert, export, save, load."""

from __future__ import annotations

import copy
import warnings

import expecttest
import pytest
import torch
import torch.nn as nn

import pt2q
from pt2q.numerics.metrics import sqnr
from pt2q.observer import HistogramObserver, MinMaxObserver, PerChannelMinMaxObserver
from pt2q.quantizer import (
    ComposableQuantizer,
    QuantizationAnnotation,
    QuantizationSpec,
    Quantizer,
    SharedQuantizationSpec,
)
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tests.helpers import export_module, pt2q_flow, qdq_signature, saved_size, torchao_flow
from tests.zoo import ZOO, calibration_batches, make

qd = torch.ops.quantized_decomposed


def xnnpack(**kw) -> XNNPACKQuantizer:
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, **kw))


def quantize(name: str, **kw):
    model, example = make(name)
    return model, example, pt2q_flow(xnnpack(**kw), model, example, calibration_batches(example))


@pytest.mark.parametrize("name", list(ZOO))
def test_accuracy_and_save_load_round_trip(name: str, tmp_path) -> None:
    model, example, q = quantize(name)
    x = calibration_batches(example, n=1, seed=3)[0]
    assert sqnr(model(*x), q(*x)) > 20.0
    ep = torch.export.export(q, example)
    path = tmp_path / "model_int8.pt2"
    torch.export.save(ep, path)
    loaded = torch.export.load(path).module()
    assert torch.equal(loaded(*x), q(*x))


class ConvBnReLUAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return y + y


def graph_text(gm: torch.fx.GraphModule) -> str:
    """One line per op: ``name = op(args)`` with node names and literal qparams (scales to 4 digits)."""

    def show(a):
        if isinstance(a, torch.fx.Node):
            return a.name
        return f"{a:.4g}" if isinstance(a, float) else str(a)

    return "\n".join(
        f"{n.name} = {n.target}({', '.join(show(a) for a in n.args)})"
        for n in gm.graph.nodes
        if n.op == "call_function"
    )


class TestConvertedGraph(expecttest.TestCase):
    def test_conv_bn_relu_add(self) -> None:
        """BN folded away, int8 weight constant, conv+relu quantized once at the relu output."""
        torch.manual_seed(0)
        model, example = ConvBnReLUAdd().eval(), (torch.randn(1, 3, 6, 6),)
        q = pt2q_flow(xnnpack(), model, example, [example])
        self.assertExpectedInline(
            graph_text(q),
            """\
dequantize_per_channel_default = quantized_decomposed.dequantize_per_channel.default(_frozen_param0, _scale_0, _zero_point_0, 0, -127, 127, torch.int8)
quantize_per_tensor_default = quantized_decomposed.quantize_per_tensor.default(x, 0.01897, 24, -128, 127, torch.int8)
dequantize_per_tensor_default = quantized_decomposed.dequantize_per_tensor.default(quantize_per_tensor_default, 0.01897, 24, -128, 127, torch.int8)
conv2d = aten.conv2d.default(dequantize_per_tensor_default, dequantize_per_channel_default, conv_bias)
relu = aten.relu.default(conv2d)
quantize_per_tensor_default_1 = quantized_decomposed.quantize_per_tensor.default(relu, 0.007748, -128, -128, 127, torch.int8)
dequantize_per_tensor_default_1 = quantized_decomposed.dequantize_per_tensor.default(quantize_per_tensor_default_1, 0.007748, -128, -128, 127, torch.int8)
add = aten.add.Tensor(dequantize_per_tensor_default_1, dequantize_per_tensor_default_1)
quantize_per_tensor_default_2 = quantized_decomposed.quantize_per_tensor.default(add, 0.0155, -128, -128, 127, torch.int8)
dequantize_per_tensor_default_2 = quantized_decomposed.dequantize_per_tensor.default(quantize_per_tensor_default_2, 0.0155, -128, -128, 127, torch.int8)""",
        )


def test_weights_are_int8_and_no_float_copy_is_saved() -> None:
    model, example, q = quantize("mlp")
    tensors = dict(q.named_parameters()) | dict(q.named_buffers())
    for name, t in tensors.items():
        if t.dim() == 2:  # every matrix left in the module is an int8 weight
            assert t.dtype == torch.int8, name
    weights = [n for n in q.graph.nodes if n.target == qd.dequantize_per_channel.default]
    assert len(weights) == 3 and all(n.args[0].op == "get_attr" for n in weights)


class WideMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))

    def forward(self, x):
        return self.layers(x)


def test_saved_pt2_is_at_most_0_3x_fp32_and_smaller_than_torchao() -> None:
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as et

    torch.manual_seed(0)
    model, example = WideMLP().eval(), (torch.randn(4, 256),)
    batches = calibration_batches(example)
    fp32 = saved_size(export_module(model, example), example)
    ours = saved_size(pt2q_flow(xnnpack(), model, example, batches), example)
    theirs_q = torchao_flow(
        et.XNNPACKQuantizer().set_global(et.get_symmetric_quantization_config(is_per_channel=True)),
        model,
        example,
        batches,
    )
    theirs = saved_size(theirs_q, example)
    assert ours <= 0.3 * fp32, (ours, fp32)
    assert ours < theirs


def test_convert_before_calibration_names_the_observers() -> None:
    model, example = make("mlp")
    m = pt2q.prepare_pt2e(export_module(model, example), xnnpack())
    with warnings.catch_warnings():
        warnings.simplefilter("error", pt2q.UncalibratedObserverWarning)  # a user who wants the error gets it
        with pytest.raises(pt2q.UncalibratedObserverWarning, match=r"never saw data .*input 'x' of node 'linear'"):
            pt2q.convert_pt2e(copy.deepcopy(m))
    # by default, as torchao: the observers' defaults (scale 1, zero point 0), with the warning naming them
    with pytest.warns(pt2q.UncalibratedObserverWarning, match=r"never saw data .*input 'x' of node 'linear'"):
        uncalibrated = pt2q.convert_pt2e(copy.deepcopy(m))
    scales = {n.args[1] for n in uncalibrated.graph.nodes if "quantize_per_tensor" in str(n.target)}
    assert scales == {1.0}
    m(*example)  # nothing was lost: the model still calibrates and converts
    assert sum(qdq_signature(pt2q.convert_pt2e(m)).values()) > 0


def test_nan_in_calibration_data_is_an_error() -> None:
    model, example = make("mlp")
    m = pt2q.prepare_pt2e(export_module(model, example), xnnpack())
    bad = example[0].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="node 'linear'"):
        m(bad)


def test_eval_and_train_point_to_move_functions() -> None:
    model, example, q = quantize("mlp")
    for call in (q.eval, q.train):
        with pytest.raises(NotImplementedError, match="move_exported_model_to_eval"):
            call()


def test_move_exported_model_to_eval_and_train_keep_hyperparameters() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, eps=1e-3, momentum=0.01), nn.Dropout(0.3)).train()
    gm = torch.export.export(model, (torch.randn(2, 3, 6, 6),)).module()

    def flags() -> list[tuple[str, tuple]]:
        return [
            (n.target.__name__, tuple(n.args[5:8]) if "batch_norm" in str(n.target) else tuple(n.args[1:]))
            for n in gm.graph.nodes
            if n.op == "call_function" and ("dropout" in str(n.target) or "batch_norm" in str(n.target))
        ]

    pt2q.move_exported_model_to_eval(gm)
    assert flags() == [("batch_norm.default", (False, 0.01, 1e-3)), ("dropout.default", (0.3, False))]
    pt2q.move_exported_model_to_train(gm)
    assert flags() == [("batch_norm.default", (True, 0.01, 1e-3)), ("dropout.default", (0.3, True))]
    pt2q.allow_exported_model_train_eval(gm)
    gm.eval()
    assert flags()[1] == ("dropout.default", (0.3, False))


def test_metadata_is_kept() -> None:
    model, example, q = quantize("conv_bn_relu_stack")
    convs = [n for n in q.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert convs and all("nn_module_stack" in n.meta and n.meta.get("stack_trace") for n in convs)
    dqs = [n for n in q.graph.nodes if n.target == qd.dequantize_per_tensor.default]
    assert dqs and all("nn_module_stack" in n.meta for n in dqs)


def test_each_dequantize_has_one_user() -> None:
    model, example, q = quantize("concat")  # x feeds two convs
    dqs = [n for n in q.graph.nodes if n.op == "call_function" and "dequantize" in str(n.target)]
    assert dqs and all(len(n.users) == 1 for n in dqs)
    x = [n for n in q.graph.nodes if n.op == "placeholder"][0]
    (qx,) = [u for u in x.users if u.target == qd.quantize_per_tensor.default]
    assert len(qx.users) == 2


def test_prepare_leaves_the_float_model_untouched() -> None:
    model, example = make("conv_bn_relu_stack")
    before = copy.deepcopy(model.state_dict())
    pt2q_flow(xnnpack(), model, example, calibration_batches(example))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_batchnorm_in_training_mode_is_rejected() -> None:
    model, example = make("conv_bn_relu_stack")
    gm = torch.export.export(model.train(), example).module()
    with pytest.raises(ValueError, match="BatchNorm in training mode.*move_exported_model_to_eval"):
        pt2q.prepare_pt2e(gm, xnnpack())


def test_prepare_needs_an_exported_graph_module() -> None:
    with pytest.raises(TypeError, match=r"torch.export.export\(model, example_inputs\).module\(\)"):
        pt2q.prepare_pt2e(nn.Linear(2, 2), xnnpack())


# ---- annotations a backend author can get wrong ------------------------------------------

ACT = QuantizationSpec(torch.int8, MinMaxObserver.with_args(eps=2**-12), -128, 127, torch.per_tensor_affine)
WEIGHT = QuantizationSpec(
    torch.int8, PerChannelMinMaxObserver.with_args(eps=2**-12), -127, 127, torch.per_channel_symmetric, ch_axis=0
)


class LinearQuantizer(Quantizer):
    """Annotates every linear with (input, weight) specs given at construction."""

    def __init__(self, act=ACT, weight=WEIGHT, output=ACT, extra=None) -> None:
        self.act, self.weight, self.output, self.extra = act, weight, output, extra

    def annotate(self, gm):
        for n in gm.graph.nodes:
            if n.target == torch.ops.aten.linear.default:
                qmap = {n.args[0]: self.act, n.args[1]: self.weight}
                if self.extra is not None:
                    qmap.update(self.extra(n))
                n.meta["quantization_annotation"] = QuantizationAnnotation(qmap, self.output, _annotated=True)
        return gm

    def validate(self, gm) -> None:
        pass


def _prepare_mlp(quantizer):
    model, example = make("mlp")
    return pt2q.prepare_pt2e(export_module(model, example), quantizer)


@pytest.mark.parametrize(
    "quantizer, message",
    [
        (
            LinearQuantizer(act=QuantizationSpec(torch.int8, MinMaxObserver, -128, 200, torch.per_tensor_affine)),
            r"input 'x' of node 'linear': quant_max=200 is outside the range of torch.int8",
        ),
        (
            LinearQuantizer(
                weight=QuantizationSpec(
                    torch.int8, PerChannelMinMaxObserver, -127, 127, torch.per_channel_symmetric, ch_axis=2
                )
            ),
            r"ch_axis=2 is out of range for a tensor of rank 2",
        ),
        (
            LinearQuantizer(output=None, act=None, extra=lambda n: {n.args[0]: SharedQuantizationSpec((n.args[2], n))}),
            r"is not an input|has no quantization spec",
        ),
    ],
)
def test_impossible_annotations_are_rejected(quantizer, message) -> None:
    with pytest.raises(ValueError, match=message):
        _prepare_mlp(quantizer)


def test_an_entry_for_a_node_that_is_no_input_is_dropped_with_a_warning() -> None:
    """torchao accepts it (Samsung's quantizer writes one): the entry quantizes nothing."""
    with pytest.warns(pt2q.NotAnInputWarning, match=r"which is not an input of 'linear"):
        m = _prepare_mlp(LinearQuantizer(extra=lambda n: {next(iter(n.graph.nodes)): ACT}))
    model, example = make("mlp")
    m(*example)
    assert sum(qdq_signature(pt2q.convert_pt2e(m)).values()) > 0  # converts: the dropped entry left no observer


def test_composable_quantizer_rejects_overwriting_an_annotation() -> None:
    with pytest.raises(RuntimeError, match=r"LinearQuantizer changed the quantization annotation of node 'linear'"):
        _prepare_mlp(ComposableQuantizer([xnnpack(), LinearQuantizer()]))


def test_shared_spec_makes_two_edges_use_one_observer() -> None:
    """A user-written quantizer: every linear's input shares the observer of the first one's input."""
    first = {}

    def share_with_first(n):
        first.setdefault("edge", (n.args[0], n))
        return {} if first["edge"][1] is n else {n.args[0]: SharedQuantizationSpec(first["edge"])}

    hist = QuantizationSpec(torch.int8, HistogramObserver, -128, 127, torch.per_tensor_affine)
    m = _prepare_mlp(LinearQuantizer(act=hist, output=None, extra=share_with_first))
    inputs = {n.args[0].target for n in m.graph.nodes if n.target == torch.ops.aten.linear.default}
    assert len(inputs) == 1  # one observer module serves the three input edges
    m(torch.randn(4, 32))
    q = pt2q.convert_pt2e(m)
    scales = {n.args[1] for n in q.graph.nodes if n.target == qd.quantize_per_tensor.default}
    assert len(scales) == 1


def test_convert_returns_an_inference_program_even_without_move_to_eval() -> None:
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    example = (torch.randn(4, 8),)
    m = pt2q.prepare_qat_pt2e(
        torch.export.export(model, example).module(),
        XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_qat=True)),
    )
    m(*example)
    q = pt2q.convert_pt2e(m)  # the user forgot move_exported_model_to_eval
    (dropout,) = [n for n in q.graph.nodes if n.target == torch.ops.aten.dropout.default]
    assert dropout.args[2] is False
    assert torch.equal(q(*example), q(*example))
