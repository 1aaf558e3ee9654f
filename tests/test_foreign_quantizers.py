"""Quantizers written against torchao's classes (or against copies of the removed ``torch.ao`` ones) run in
pt2q's flow unchanged and give torchao's answer: the same Q/DQ ops and qparams, bit-identical outputs.

The quantizer here is a user's, written the way backends write theirs: every spec kind (plain, per-channel,
derived bias, shared, fixed qparams, dynamic), torchao's observers and fake quantizers and a subclass of one.
The backends' own quantizers (ExecuTorch's) are in ``test_backends.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable
from typing import Any, Optional

import pytest
import torch
from torch import nn
from torch.fx import GraphModule, Node

import pt2q
from pt2q.passes.check_annotations import AnnotationError
from tests.helpers import qdq_signature

ao_quantizer = pytest.importorskip("torchao.quantization.pt2e.quantizer")
ao_obs = pytest.importorskip("torchao.quantization.pt2e.observer")
ao_fq = pytest.importorskip("torchao.quantization.pt2e.fake_quantize")
ao_flow = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
aten = torch.ops.aten


class Net(nn.Module):
    """conv (+derived int32 bias) -> relu; cat of two branches (shared qparams); sigmoid (fixed qparams);
    linear (dynamic input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.linear = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        z = torch.cat([y, torch.sigmoid(y)], dim=1)
        return self.linear(z.mean((2, 3)))


class ScaledMinMaxObserver(ao_obs.MinMaxObserver):
    """A backend's own observer: torchao's, with its range widened by 10% (as vendor observers tweak ranges)."""

    def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._calculate_qparams(self.min_val * 1.1, self.max_val * 1.1)


@dataclasses.dataclass(eq=True, frozen=True)
class OldQuantizationSpec:
    """The removed ``torch.ao.quantization.quantizer.QuantizationSpec``, as a script still defines it."""

    dtype: torch.dtype
    observer_or_fake_quant_ctr: Callable
    quant_min: Optional[int] = None
    quant_max: Optional[int] = None
    qscheme: Optional[torch.qscheme] = None
    ch_axis: Optional[int] = None
    is_dynamic: bool = False


@dataclasses.dataclass(eq=True, frozen=True)
class OldSharedQuantizationSpec:
    edge_or_node: Any


@dataclasses.dataclass(eq=True, frozen=True)
class OldFixedQParamsQuantizationSpec:
    dtype: torch.dtype
    scale: float
    zero_point: int
    quant_min: Optional[int] = None
    quant_max: Optional[int] = None
    qscheme: Optional[torch.qscheme] = None
    is_dynamic: bool = False


@dataclasses.dataclass
class OldDerivedQuantizationSpec:
    derived_from: list
    derive_qparams_fn: Callable
    dtype: torch.dtype
    quant_min: Optional[int] = None
    quant_max: Optional[int] = None
    qscheme: Optional[torch.qscheme] = None
    ch_axis: Optional[int] = None
    is_dynamic: bool = False


@dataclasses.dataclass
class OldQuantizationAnnotation:
    input_qspec_map: dict = dataclasses.field(default_factory=dict)
    output_qspec: Any = None
    allow_implicit_sharing: bool = True
    _annotated: bool = False


TORCHAO = dict(
    spec=ao_quantizer.QuantizationSpec,
    shared=ao_quantizer.SharedQuantizationSpec,
    fixed=ao_quantizer.FixedQParamsQuantizationSpec,
    derived=ao_quantizer.DerivedQuantizationSpec,
    annotation=ao_quantizer.QuantizationAnnotation,
)
OLD_API = dict(
    spec=OldQuantizationSpec,
    shared=OldSharedQuantizationSpec,
    fixed=OldFixedQParamsQuantizationSpec,
    derived=OldDerivedQuantizationSpec,
    annotation=OldQuantizationAnnotation,
)


def _bias_qparams(obs: list) -> tuple[torch.Tensor, torch.Tensor]:
    act_scale, _ = obs[0].calculate_qparams()
    weight_scale, _ = obs[1].calculate_qparams()
    scale = (act_scale * weight_scale).float()
    return scale, torch.zeros_like(scale, dtype=torch.int32)


class UserQuantizer(ao_quantizer.Quantizer):
    """A user's quantizer written against torchao's API (or, with ``classes=OLD_API``, the removed one)."""

    def __init__(self, classes: dict = TORCHAO, is_qat: bool = False, weight_ch_axis: Optional[int] = 0) -> None:
        super().__init__()
        self.c, self.is_qat, self.weight_ch_axis = classes, is_qat, weight_ch_axis

    def _act(self) -> Any:
        ctr: Any = ScaledMinMaxObserver
        if self.is_qat:
            ctr = ao_fq.FakeQuantize.with_args(observer=ao_obs.MovingAverageMinMaxObserver)
        return self.c["spec"](torch.int8, ctr, -128, 127, torch.per_tensor_affine)

    def _weight(self) -> Any:
        ctr: Any = ao_obs.PerChannelMinMaxObserver
        if self.is_qat:
            ctr = ao_fq.FusedMovingAvgObsFakeQuantize.with_args(observer=ao_obs.MovingAveragePerChannelMinMaxObserver)
        return self.c["spec"](torch.int8, ctr, -127, 127, torch.per_channel_symmetric, self.weight_ch_axis)

    def annotate(self, model: GraphModule) -> GraphModule:
        c = self.c
        for node in model.graph.nodes:
            if node.target == aten.conv2d.default:
                x, w, b = node.args[:3]
                node.meta["quantization_annotation"] = c["annotation"](
                    input_qspec_map={
                        x: self._act(),
                        w: self._weight(),
                        b: c["derived"](
                            [(x, node), (w, node)],
                            _bias_qparams,
                            torch.int32,
                            -(2**31),
                            2**31 - 1,
                            torch.per_channel_symmetric,
                            0,
                        ),  # fmt: skip
                    },
                    _annotated=True,
                )
            elif node.target == aten.relu.default:
                node.meta["quantization_annotation"] = c["annotation"](output_qspec=self._act(), _annotated=True)
            elif node.target == aten.sigmoid.default:
                fixed = c["fixed"](torch.int8, 1.0 / 256.0, -128, -128, 127, torch.per_tensor_affine)
                node.meta["quantization_annotation"] = c["annotation"](output_qspec=fixed, _annotated=True)
            elif node.target == aten.cat.default:
                first, second = node.args[0]
                shared = c["shared"]((first, node))
                node.meta["quantization_annotation"] = c["annotation"](
                    input_qspec_map={first: self._act(), second: shared}, output_qspec=shared, _annotated=True
                )
            elif node.target == aten.linear.default and not self.is_qat:
                dynamic = c["spec"](
                    torch.int8, ao_obs.PlaceholderObserver, -128, 127, torch.per_tensor_affine, is_dynamic=True
                )
                node.meta["quantization_annotation"] = c["annotation"](
                    input_qspec_map={node.args[0]: dynamic, node.args[1]: self._weight()}, _annotated=True
                )
        return model

    def validate(self, model: GraphModule) -> None:
        pass


def _example() -> tuple[torch.Tensor]:
    return (torch.randn(2, 3, 8, 8),)


def _run(flow: str, quantizer: Any, is_qat: bool = False, calibrate: bool = True) -> GraphModule:
    torch.manual_seed(0)
    model = Net().train(is_qat)
    m = torch.export.export(model, _example()).module()
    if flow == "torchao":
        prepare = ao_flow.prepare_qat_pt2e if is_qat else ao_flow.prepare_pt2e
        convert, to_eval = ao_flow.convert_pt2e, pt2q.move_exported_model_to_eval
    else:
        prepare = pt2q.prepare_qat_pt2e if is_qat else pt2q.prepare_pt2e
        convert, to_eval = pt2q.convert_pt2e, pt2q.move_exported_model_to_eval
    m = prepare(m, quantizer)
    torch.manual_seed(1)
    for _ in range(3 if calibrate else 0):
        m(*_example())
    return convert(to_eval(m) if is_qat else m)


def _assert_same(ours: GraphModule, theirs: GraphModule) -> None:
    assert qdq_signature(ours) == qdq_signature(theirs)
    torch.manual_seed(2)
    for _ in range(3):
        x = _example()
        assert torch.equal(ours(*x), theirs(*x))


@pytest.mark.parametrize("classes", ["torchao", "old_api"])
def test_user_quantizer_gives_torchaos_answer(classes: str) -> None:
    ours = _run("pt2q", UserQuantizer(TORCHAO if classes == "torchao" else OLD_API))
    theirs = _run("torchao", UserQuantizer(TORCHAO))
    _assert_same(ours, theirs)
    ops = {str(n.target) for n in ours.graph.nodes}
    assert "quantized_decomposed.choose_qparams.tensor" in ops  # the dynamic linear input
    assert "quantized_decomposed.dequantize_per_channel.default" in ops  # weights, and the derived int32 bias


def test_user_quantizer_qat_gives_torchaos_answer() -> None:
    _assert_same(
        _run("pt2q", UserQuantizer(is_qat=True), is_qat=True), _run("torchao", UserQuantizer(is_qat=True), is_qat=True)
    )


def test_pt2q_extras_work_on_a_foreign_quantizer() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    ep = torch.export.export(model, _example())
    m = pt2q.prepare_pt2e(ep.module(), UserQuantizer())
    batches = [_example() for _ in range(2)]
    for b in batches:
        m(*b)
    r = pt2q.report(pt2q.convert_pt2e(m), ep, batches)
    assert {row.name for row in r.quantized_rows} >= {"conv2d", "linear"}
    # the mean it left alone has the generic reason (a foreign quantizer has no explain_unannotated)
    assert any("UserQuantizer has no annotation" in (row.float_reason or "") for row in r.rows if row.name == "mean")


def test_torchao_observer_in_a_pt2q_spec() -> None:
    hist = pt2q.QuantizationSpec(torch.int8, ao_obs.HistogramObserver, -128, 127, torch.per_tensor_affine)

    class Q(pt2q.Quantizer):
        def __init__(self, spec_class: Any) -> None:
            self.spec_class = spec_class

        def annotate(self, model: GraphModule) -> GraphModule:
            for node in model.graph.nodes:
                if node.target == aten.linear.default:
                    spec = self.spec_class(torch.int8, ao_obs.HistogramObserver, -128, 127, torch.per_tensor_affine)
                    node.meta["quantization_annotation"] = (
                        pt2q.QuantizationAnnotation
                        if self.spec_class is pt2q.QuantizationSpec
                        else ao_quantizer.QuantizationAnnotation  # fmt: skip
                    )(input_qspec_map={node.args[0]: spec}, output_qspec=spec)
            return model

        def validate(self, model: GraphModule) -> None:
            pass

    assert hist.observer_or_fake_quant_ctr is ao_obs.HistogramObserver
    _assert_same(_run("pt2q", Q(pt2q.QuantizationSpec)), _run("torchao", Q(ao_quantizer.QuantizationSpec)))


def test_drop_in_warnings_keep_torchaos_answer() -> None:
    """Fake quantizers under prepare_pt2e and per-channel specs without ch_axis (Core ML's quantizer writes
    both): torchao runs them, so pt2q does, warning with named classes, and gives the same model."""
    core_ml_like = UserQuantizer(is_qat=True, weight_ch_axis=None)
    with pytest.warns(pt2q.DropInWarning) as caught:
        ours = _run("pt2q", core_ml_like)
    kinds = {type(w.message) for w in caught}
    assert {pt2q.MissingChannelAxisWarning, pt2q.FakeQuantizeInPTQWarning} <= kinds
    assert any("conv_weight" in str(w.message) for w in caught if isinstance(w.message, pt2q.MissingChannelAxisWarning))
    _assert_same(ours, _run("torchao", core_ml_like))
    with warnings.catch_warnings():
        warnings.simplefilter("error", pt2q.DropInWarning)
        with pytest.raises(pt2q.DropInWarning):
            _run("pt2q", core_ml_like)


def test_convert_before_calibration_as_torchao() -> None:
    with pytest.warns(pt2q.UncalibratedObserverWarning, match="never saw data"):
        ours = _run("pt2q", UserQuantizer(), calibrate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchao's observers warn on their own
        theirs = _run("torchao", UserQuantizer(), calibrate=False)
    _assert_same(ours, theirs)


def test_a_duck_typed_quantizer_needs_only_annotate() -> None:
    """No base class and none of the optional hooks (transform_for_annotation, validate, explain_unannotated,
    prepare_obs_or_fq_callback): annotate is the whole interface."""

    class Duck:
        def annotate(self, model: GraphModule) -> GraphModule:
            return UserQuantizer(OLD_API).annotate(model)

    _assert_same(_run("pt2q", Duck()), _run("torchao", UserQuantizer()))


class PhantomEdgeQuantizer(ao_quantizer.Quantizer):
    """Shares with edges the graph does not have, as ExecuTorch's Samsung quantizer does on attention: sigmoid
    maps 'conv2d' (not its input) with a spec of its own (another range than conv2d's output, so it is not
    implicitly shared with it), and its output and cat share with that edge; mean maps 'conv2d' with a shared
    spec and its output shares with that edge."""

    def annotate(self, model: GraphModule) -> GraphModule:
        spec = ao_quantizer.QuantizationSpec(torch.int8, ao_obs.MinMaxObserver, -128, 127, torch.per_tensor_affine)
        narrow = ao_quantizer.QuantizationSpec(torch.int8, ao_obs.MinMaxObserver, -127, 127, torch.per_tensor_affine)
        shared, annotation = ao_quantizer.SharedQuantizationSpec, ao_quantizer.QuantizationAnnotation
        nodes = {n.name: n for n in model.graph.nodes}
        conv, relu, sigmoid, cat, mean = (nodes[k] for k in ("conv2d", "relu", "sigmoid", "cat", "mean"))
        conv.meta["quantization_annotation"] = annotation(
            input_qspec_map={conv.args[0]: spec, conv.args[1]: spec}, output_qspec=spec
        )
        sigmoid.meta["quantization_annotation"] = annotation(
            input_qspec_map={conv: narrow}, output_qspec=shared((conv, sigmoid))
        )
        cat.meta["quantization_annotation"] = annotation(
            input_qspec_map={relu: shared((conv, sigmoid)), sigmoid: shared(sigmoid)},
            output_qspec=shared((conv, sigmoid)),
        )
        mean.meta["quantization_annotation"] = annotation(
            input_qspec_map={conv: shared(conv)}, output_qspec=shared((conv, mean))
        )
        return model

    def validate(self, model: GraphModule) -> None:
        pass


def test_sharing_with_an_edge_the_graph_does_not_have_as_torchao() -> None:
    with pytest.warns(pt2q.NotAnInputWarning, match="node 'sigmoid' maps 'conv2d'") as caught:
        ours = _run("pt2q", PhantomEdgeQuantizer())
    # reported at the caller's line (here, _run's call of prepare), not inside pt2q
    assert {w.filename for w in caught if isinstance(w.message, pt2q.NotAnInputWarning)} == {__file__}
    _assert_same(ours, _run("torchao", PhantomEdgeQuantizer()))
    # sigmoid's output and cat take the dropped edge's own observer; mean's output joins conv2d's group
    quantized = [n for n in ours.graph.nodes if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default]
    scale_of = {n.args[0].name: n.args[1] for n in quantized}
    assert scale_of["sigmoid"] == scale_of["cat"] != scale_of["conv2d"] == scale_of["mean"]


def _annotate_with(bad: Callable[[Node], None]) -> Any:
    class Bad(ao_quantizer.Quantizer):
        def annotate(self, model: GraphModule) -> GraphModule:
            for node in model.graph.nodes:
                if node.target == aten.conv2d.default:
                    bad(node)
            return model

        def validate(self, model: GraphModule) -> None:
            pass

    return Bad()


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda n: n.meta.__setitem__("quantization_annotation", {"x": 1}),
         r"node 'conv2d' has meta\['quantization_annotation'\] of type dict, which is not a QuantizationAnnotation"),
        (lambda n: n.meta.__setitem__("quantization_annotation", OldQuantizationAnnotation({n.args[0]: "int8"})),
         r"the spec of input 'x' of node 'conv2d' is a str, which is not a quantization spec"),
        (lambda n: n.meta.__setitem__("quantization_annotation", OldQuantizationAnnotation(
            {n.args[0]: OldQuantizationSpec(torch.int8, ao_obs.MinMaxObserver, 10, -10)})),
         r"the spec of input 'x' of node 'conv2d' \(OldQuantizationSpec\): quant_min \(10\) must be <= quant_max"),
        (lambda n: n.meta.__setitem__("quantization_annotation", OldQuantizationAnnotation(
            {n.args[0]: OldSharedQuantizationSpec((n.args[1], n))})),
         r"points at input 'conv_weight' of node 'conv2d', which has no quantization spec"),
        (lambda n: n.meta.__setitem__("quantization_annotation", OldQuantizationAnnotation(
            {n.args[0]: OldQuantizationSpec(torch.int8, ao_obs.MinMaxObserver)},
            OldSharedQuantizationSpec((n.args[0], "conv2d")))),
         r"points at edge \(x, conv2d\), but 'x' is not an input of 'conv2d'"),
    ],
)  # fmt: skip
def test_malformed_foreign_annotations_name_node_and_field(bad: Callable[[Node], None], message: str) -> None:
    model = Net().eval()
    with pytest.raises(AnnotationError, match=message):
        pt2q.prepare_pt2e(torch.export.export(copy.deepcopy(model), _example()).module(), _annotate_with(bad))


def test_torchao_granularity_and_mapping_type_in_pt2q_affine_observers() -> None:
    granularity = pytest.importorskip("torchao.quantization.granularity")
    primitives = pytest.importorskip("torchao.quantization.quant_primitives")
    ao_affine = pytest.importorskip("torchao.quantization.pt2e._affine_quantization")
    torch.manual_seed(0)
    x = torch.randn(4, 64)
    for g in (granularity.PerGroup(32), granularity.PerAxis(0), granularity.PerToken()):
        kwargs = dict(eps=1e-6, scale_dtype=torch.float32, zero_point_dtype=torch.int8)
        ours = pt2q.AffineQuantizedMinMaxObserver(primitives.MappingType.SYMMETRIC, torch.int8, g, **kwargs)
        theirs = ao_affine.AffineQuantizedMinMaxObserver(primitives.MappingType.SYMMETRIC, torch.int8, g, **kwargs)
        ours(x)
        theirs(x)
        assert all(torch.equal(a, b) for a, b in zip(ours.calculate_qparams(), theirs.calculate_qparams())), g
    with pytest.raises(TypeError, match="granularity must be a Granularity"):
        pt2q.AffineQuantizedMinMaxObserver(pt2q.MappingType.SYMMETRIC, torch.int8, "per group")


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16])
def test_float8_and_uint16_qdq_as_torchao(dtype: torch.dtype) -> None:
    """fp8 and 16-bit activations (Qualcomm's 16a configs) become Q/DQ ops of that dtype, not a float no-op."""
    qmin, qmax = (0, 2**16 - 1) if dtype == torch.uint16 else (int(torch.finfo(dtype).min), int(torch.finfo(dtype).max))
    qscheme = torch.per_tensor_affine if dtype == torch.uint16 else torch.per_tensor_symmetric

    class Q(ao_quantizer.Quantizer):
        def annotate(self, model: GraphModule) -> GraphModule:
            for node in model.graph.nodes:
                if node.target == aten.linear.default:
                    spec = ao_quantizer.QuantizationSpec(dtype, ao_obs.MinMaxObserver, qmin, qmax, qscheme)
                    node.meta["quantization_annotation"] = ao_quantizer.QuantizationAnnotation(
                        input_qspec_map={node.args[0]: spec}, output_qspec=spec
                    )
            return model

        def validate(self, model: GraphModule) -> None:
            pass

    ours, theirs = _run("pt2q", Q()), _run("torchao", Q())
    _assert_same(ours, theirs)
    dtypes = {n.args[-1] for n in ours.graph.nodes if "quantize_per_tensor" in str(n.target)}
    assert dtypes == {dtype}


class ConvBn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def test_qat_conv_bn_keeps_the_derived_int32_bias() -> None:
    """The BatchNorm folded into the conv at convert: its bias keeps the int32 quantization the quantizer asked
    for (act_scale * weight_scale), as torchao's, not a float bias."""
    converted = []
    for prepare, convert in (
        (pt2q.prepare_qat_pt2e, pt2q.convert_pt2e),
        (ao_flow.prepare_qat_pt2e, ao_flow.convert_pt2e),
    ):
        torch.manual_seed(0)
        m = prepare(torch.export.export(ConvBn().train(), _example()).module(), UserQuantizer(is_qat=True))
        torch.manual_seed(1)
        for _ in range(3):
            m(*_example())
        converted.append(convert(pt2q.move_exported_model_to_eval(m)))
    ours, theirs = converted
    conv = next(n for n in ours.graph.nodes if n.target == aten.conv2d.default)
    bias = conv.args[2]
    assert isinstance(bias, Node) and bias.target == torch.ops.quantized_decomposed.dequantize_per_channel.default
    assert bias.args[-1] == torch.int32
    _assert_same(ours, theirs)
