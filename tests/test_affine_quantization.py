"""Affine (blockwise, low-bit) quantization: torchao oracle for observers, ops and fake quant; the 8da4w /
8da8w / a16w8 flow through the public API; save/load; errors."""

from __future__ import annotations

import collections
import copy
import dataclasses
import io
import re
import warnings

import pytest
import torch
from torch import nn

import pt2q
from pt2q import MappingType, PerAxis, PerBlock, PerGroup, PerRow, PerTensor, PerToken, ZeroPointDomain
from pt2q._affine_quantization import (
    AffineQuantizedMinMaxObserver,
    AffineQuantizedMovingAverageMinMaxObserver,
    AffineQuantizedPlaceholderObserver,
)
from pt2q.core.ops import is_affine_qdq, op_name
from pt2q.fake_quant.affine_fake_quantize import (
    AffineFakeQuantize,
    default_affine_fake_quant,
    default_groupwise_fake_quant,
)
from pt2q.numerics import affine_primitives as ap
from pt2q.numerics.affine_ops import affine_ops
from pt2q.numerics.metrics import sqnr
from pt2q.passes.qdq import UncalibratedModelError
from pt2q.quantizers import (
    XNNPACKQuantizer,
    get_8da4w_quantization_config,
    get_8da8w_quantization_config,
    get_a16w8_quantization_config,
    get_dynamic_affine_quantization_config,
    get_symmetric_quantization_config,
)
from tests.helpers import export_module

ao_aq = pytest.importorskip("torchao.quantization.pt2e._affine_quantization")
ao_pt2e = pytest.importorskip("torchao.quantization.pt2e")
ao_fq = pytest.importorskip("torchao.quantization.pt2e.fake_quantize")
ao_quantizer = pytest.importorskip("torchao.quantization.pt2e.quantizer")
torchao_ops = affine_ops()


def ao_granularity(g):
    return getattr(ao_pt2e, type(g).__name__)(**dataclasses.asdict(g))


def ao_enum(value):
    return None if value is None else getattr(ao_pt2e, type(value).__name__)[value.name]


# --- observers, ops and fake quant against torchao -------------------------------------------

SHAPES_AND_GRANULARITIES = [
    ((6, 64), PerTensor()),
    ((6, 64), PerAxis(0)),
    ((2, 5, 64), PerAxis(1)),
    ((6, 64), PerGroup(32)),
    ((3, 6, 64), PerGroup(16)),
    ((2, 5, 64), PerToken()),
    ((6, 64), PerRow()),
    ((6, 64), PerBlock((2, 16))),
]


@pytest.mark.parametrize("shape,granularity", SHAPES_AND_GRANULARITIES)
def test_get_block_size_matches_torchao(shape, granularity) -> None:
    assert pt2q.get_block_size(shape, granularity) == tuple(ao_pt2e.get_block_size(shape, ao_granularity(granularity)))


OBSERVER_CONFIGS = [
    dict(mapping_type=MappingType.SYMMETRIC, target_dtype=torch.int8, quant_min=-8, quant_max=7),
    dict(mapping_type=MappingType.SYMMETRIC, target_dtype=torch.int8),
    dict(mapping_type=MappingType.SYMMETRIC_NO_CLIPPING_ERR, target_dtype=torch.int8, quant_min=-4, quant_max=3),
    dict(
        mapping_type=MappingType.ASYMMETRIC,
        target_dtype=torch.uint8,
        eps=1e-5,
        scale_dtype=torch.float32,
        zero_point_dtype=torch.int32,
    ),
    dict(mapping_type=MappingType.ASYMMETRIC, target_dtype=torch.uint4),
    dict(
        mapping_type=MappingType.ASYMMETRIC,
        target_dtype=torch.int8,
        preserve_zero=False,
        zero_point_domain=ZeroPointDomain.FLOAT,
    ),
    dict(mapping_type=MappingType.ASYMMETRIC, target_dtype=torch.int8, zero_point_domain=ZeroPointDomain.NONE),
]


def _ao_kwargs(kwargs: dict) -> dict:
    return {k: ao_enum(v) if isinstance(v, (MappingType, ZeroPointDomain)) else v for k, v in kwargs.items()}


def _observe_both(name: str, kwargs: dict, shape, granularity, extra: dict | None = None):
    ours = getattr(pt2q._affine_quantization, name)(granularity=granularity, **kwargs, **(extra or {}))
    theirs = getattr(ao_aq, name)(granularity=ao_granularity(granularity), **_ao_kwargs(kwargs), **(extra or {}))
    g = torch.Generator().manual_seed(hash((name, str(kwargs), shape)) % 2**31)
    for i in range(3):
        x = torch.randn(shape, generator=g) * (1 + i) + 0.3 * i
        ours(x)
        theirs(x)
    return ours, theirs


@pytest.mark.parametrize("kwargs", OBSERVER_CONFIGS, ids=lambda k: f"{k['mapping_type'].name}-{k['target_dtype']}")
@pytest.mark.parametrize("shape,granularity", SHAPES_AND_GRANULARITIES[::2] + [SHAPES_AND_GRANULARITIES[3]])
@pytest.mark.parametrize(
    "name,extra",
    [
        ("AffineQuantizedMinMaxObserver", None),
        ("AffineQuantizedMovingAverageMinMaxObserver", {"averaging_constant": 0.25}),
    ],
)
def test_observer_qparams_match_torchao_bit_for_bit(name, extra, shape, granularity, kwargs) -> None:
    ours, theirs = _observe_both(name, kwargs, shape, granularity, extra)
    assert ours.block_size == tuple(theirs.block_size)
    for a, b in zip(ours.calculate_qparams(), theirs.calculate_qparams()):
        if b is None:
            assert a is None
        else:
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("shape,granularity", [SHAPES_AND_GRANULARITIES[i] for i in (0, 1, 3, 5, 7)])
@pytest.mark.parametrize("kwargs", OBSERVER_CONFIGS[:5], ids=lambda k: f"{k['mapping_type'].name}-{k['target_dtype']}")
def test_quantize_dequantize_match_torchao_ops(shape, granularity, kwargs) -> None:
    obs, _ = _observe_both("AffineQuantizedMinMaxObserver", kwargs, shape, granularity)
    scale, zero_point = obs.calculate_qparams()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7)) * 2
    qmin, qmax = ap.get_and_check_qmin_qmax(obs.target_dtype, obs.quant_min, obs.quant_max)
    args = (obs.block_size, scale, zero_point, obs.target_dtype, qmin, qmax)
    q, q_ref = ap.quantize_affine(x, *args), torchao_ops.quantize_affine(x, *args)
    assert q.dtype == q_ref.dtype and torch.equal(q, q_ref)
    dq, dq_ref = ap.dequantize_affine(q, *args), torchao_ops.dequantize_affine(q, *args)
    assert torch.equal(dq, dq_ref)
    fq = ap.fake_quantize_affine(x, obs.block_size, scale, zero_point, obs.target_dtype, qmin, qmax)
    assert torch.equal(fq, dq_ref)


@pytest.mark.parametrize(
    "ours,theirs,shape",
    [
        (default_groupwise_fake_quant, ao_fq.default_groupwise_fake_quant, (8, 256)),
        (default_affine_fake_quant, ao_fq.default_affine_fake_quant, (4, 10, 16)),
        (
            pt2q.fake_quant.affine_fake_quantize.default_affine_per_axis_fake_quant,
            ao_fq.default_affine_per_axis_fake_quant,
            (8, 32),
        ),
    ],
)
def test_affine_fake_quantize_matches_torchao_outputs_and_gradients(ours, theirs, shape) -> None:
    a, b = ours(), theirs()
    g = torch.Generator().manual_seed(3)
    for step in range(3):
        x = torch.randn(shape, generator=g) * (step + 1)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = a(xa), b(xb)
        assert torch.equal(ya, yb)
        grad = torch.randn(shape, generator=g)
        ya.backward(grad)
        yb.backward(grad)
        assert torch.equal(xa.grad, xb.grad)
        assert torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point.to(a.zero_point.dtype))
    a.disable_observer()
    x = torch.randn(shape, generator=g) * 10
    b.disable_observer()
    assert torch.equal(a(x), b(x))


def test_placeholder_observer_records_blocks_and_refuses_static_qparams() -> None:
    obs = AffineQuantizedPlaceholderObserver(MappingType.ASYMMETRIC, torch.int8, PerToken(), is_dynamic=True)
    assert not obs.has_statistics
    obs(torch.randn(2, 7, 48))
    assert obs.block_size == (1, 1, 48) and obs.has_statistics
    with pytest.raises(ValueError, match="dynamic quantization"):
        obs.calculate_qparams()


def test_observer_argument_errors_are_clear() -> None:
    with pytest.raises(TypeError, match="granularty"):
        AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerGroup(32), granularty=PerAxis(0))
    with pytest.raises(ValueError, match="torch.int8 with quant_min/quant_max"):
        AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int4, PerGroup(32))
    with pytest.raises(TypeError, match="mapping_type must be a MappingType"):
        AffineQuantizedMinMaxObserver("SYMMETRIC", torch.int8, PerGroup(32))
    with pytest.raises(ValueError, match="averaging_constant=1"):
        AffineQuantizedMovingAverageMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerToken(), is_dynamic=True)
    obs = AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerGroup(48))
    with pytest.raises(ValueError, match="divisible by the group size"):
        obs(torch.randn(4, 64))
    with pytest.raises(ValueError, match="finite"):
        AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerAxis(0))(
            torch.tensor([[1.0, float("nan")]])
        )


# --- torchao's own objects given to pt2q's affine observers and fake quantizer --------------


@pytest.mark.parametrize("shape,granularity", [SHAPES_AND_GRANULARITIES[i] for i in (0, 1, 3, 5, 7)])
@pytest.mark.parametrize("observer", ["AffineQuantizedMinMaxObserver", "AffineQuantizedMovingAverageMinMaxObserver"])
def test_torchao_granularity_and_enums_are_kept_and_fake_quantize_as_torchao(shape, granularity, observer) -> None:
    g, mapping = ao_granularity(granularity), ao_pt2e.MappingType.SYMMETRIC
    kwargs = dict(mapping_type=mapping, target_dtype=torch.int8, granularity=g, quant_min=-8, quant_max=7)
    ours = AffineFakeQuantize(observer=getattr(pt2q._affine_quantization, observer), **kwargs)
    theirs = ao_fq.AffineFakeQuantize(observer=getattr(ao_aq, observer), **kwargs)
    # the caller's objects, as torchao keeps them
    assert ours.granularity is g and ours.activation_post_process.granularity is g
    assert ours.mapping_type is mapping and ours.mapping_type == MappingType.SYMMETRIC
    gen = torch.Generator().manual_seed(5)
    for step in range(3):
        x = torch.randn(shape, generator=gen) * (step + 1)
        assert torch.equal(ours(x), theirs(x))
        assert ours.block_size == tuple(theirs.block_size)
        assert torch.equal(ours.scale, theirs.scale)


def test_pt2q_enums_equal_torchaos_by_name_and_work_in_torchaos_functions() -> None:
    from torchao.quantization.quant_primitives import _fake_quantize_affine

    for ours_kind in (MappingType, ZeroPointDomain):
        theirs_kind = getattr(ao_pt2e, ours_kind.__name__)
        for member in ours_kind:
            other = theirs_kind[member.name]
            assert member == other and other == member and not member != other
            assert hash(member) == hash(other) and {other: 1}[member] == 1
            assert all(member != o for o in theirs_kind if o.name != member.name)
    assert MappingType.SYMMETRIC != ZeroPointDomain.INT and MappingType.SYMMETRIC != "SYMMETRIC"
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    fq = AffineFakeQuantize(mapping_type=MappingType.SYMMETRIC, target_dtype=torch.int8, granularity=PerGroup(16))
    y = fq(x)
    args = (fq.block_size, fq.scale, fq.zero_point, fq.target_dtype, fq.quant_min, fq.quant_max)
    assert torch.equal(y, _fake_quantize_affine(x, *args, fq.zero_point_domain))  # pt2q's INT, in torchao
    assert torch.equal(y, ap.fake_quantize_affine(x, *args, ao_pt2e.ZeroPointDomain.INT))  # torchao's, in pt2q


def test_is_dynamic_on_min_max_observer_is_ignored_as_torchao_with_a_warning() -> None:
    kwargs = dict(mapping_type=ao_pt2e.MappingType.ASYMMETRIC, target_dtype=torch.uint8, granularity=PerTensor())
    with pytest.warns(pt2q.IgnoredArgumentWarning, match="is_dynamic=True is ignored"):
        ours = AffineFakeQuantize(observer=AffineQuantizedMinMaxObserver, is_dynamic=True, **kwargs)
    theirs = ao_fq.AffineFakeQuantize(
        observer=ao_aq.AffineQuantizedMinMaxObserver, is_dynamic=True, **{**kwargs, "granularity": ao_pt2e.PerTensor()}
    )
    assert ours.is_dynamic and theirs.is_dynamic
    assert not ours.activation_post_process.is_dynamic and not getattr(theirs.activation_post_process, "is_dynamic", 0)
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ours(x), theirs(x)) and torch.equal(ours.scale, theirs.scale)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pt2q.DropInWarning)
        with pytest.raises(pt2q.IgnoredArgumentWarning):
            AffineQuantizedMinMaxObserver(MappingType.SYMMETRIC, torch.int8, PerGroup(32), is_dynamic=True)


def test_block_size_argument_is_ignored_as_torchao_and_warns_only_when_it_disagrees() -> None:
    w = torch.randn(96, 64, generator=torch.Generator().manual_seed(4))
    ctr = AffineQuantizedMinMaxObserver.with_args(
        mapping_type=MappingType.SYMMETRIC, target_dtype=torch.int8, granularity=ao_pt2e.PerGroup(32)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", pt2q.DropInWarning)
        agreeing = ctr(block_size=(1, 32))
        agreeing(w)
    assert agreeing.block_size == (1, 32)
    disagreeing = ctr(block_size=(1, 16))
    with pytest.warns(pt2q.IgnoredArgumentWarning, match=r"block_size=\(1, 16\) is ignored"):
        disagreeing(w)
    with warnings.catch_warnings():
        warnings.simplefilter("error", pt2q.DropInWarning)
        disagreeing(w)  # once
    theirs = ao_aq.AffineQuantizedMinMaxObserver(
        ao_pt2e.MappingType.SYMMETRIC, torch.int8, ao_pt2e.PerGroup(32), block_size=(1, 16)
    )
    theirs(w)
    assert disagreeing.block_size == tuple(theirs.block_size)
    for a, b in zip(disagreeing.calculate_qparams(), theirs.calculate_qparams()):
        assert torch.equal(a, b)


def test_affine_fake_quantize_repr_names_torchaos_fields() -> None:
    kwargs = dict(mapping_type=MappingType.SYMMETRIC, target_dtype=torch.int8, granularity=ao_pt2e.PerGroup(32))
    ours, theirs = (
        AffineFakeQuantize(**kwargs),
        ao_fq.AffineFakeQuantize(**{**kwargs, "mapping_type": ao_enum(MappingType.SYMMETRIC)}),
    )
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(0))
    ours(x)
    theirs(x)
    fields = lambda m: re.findall(r"(?:^|, )(\w+)=", m.extra_repr())  # noqa: E731
    assert fields(ours) == fields(theirs)
    assert "scale=tensor" in ours.extra_repr() and "zero_point=tensor" in ours.extra_repr()


# --- the flow: XNNPACKQuantizer + low-bit configs ---------------------------------------------


class TwoLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 96), nn.Linear(96, 32, bias=False)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.fc2(torch.relu(self.fc1(x))), self.conv(image)


def two_linears() -> tuple[nn.Module, tuple[torch.Tensor, ...], list[tuple[torch.Tensor, ...]]]:
    torch.manual_seed(0)
    model = TwoLinears().eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(2, 5, 64, generator=g), torch.randn(1, 3, 8, 8, generator=g)) for _ in range(3)]
    return model, batches[0], batches


class _TorchaoLinearQuantizer(ao_quantizer.Quantizer):
    """The 8da4w annotations of pt2q's config, written with torchao's own observers (the oracle)."""

    def __init__(
        self, group_size: int | None, bits: int, mapping: MappingType, observers=ao_aq, **weight_extra
    ) -> None:
        super().__init__()
        self.group_size, self.bits, self.mapping = group_size, bits, ao_enum(mapping)
        self.observers, self.weight_extra = observers, weight_extra  # pt2q's observers given torchao's objects

    def annotate(self, gm):
        QuantizationAnnotation, QuantizationSpec = ao_quantizer.QuantizationAnnotation, ao_quantizer.QuantizationSpec
        act = QuantizationSpec(
            dtype=torch.int8,
            quant_min=-128,
            quant_max=127,
            is_dynamic=True,
            observer_or_fake_quant_ctr=self.observers.AffineQuantizedPlaceholderObserver.with_args(
                mapping_type=ao_pt2e.MappingType.ASYMMETRIC,
                target_dtype=torch.int8,
                granularity=ao_pt2e.PerToken(),
                eps=torch.finfo(torch.float32).eps,
                scale_dtype=torch.float32,
                zero_point_dtype=torch.int8,
                is_dynamic=True,
            ),
        )
        qmin, qmax = -(2 ** (self.bits - 1)), 2 ** (self.bits - 1) - 1
        granularity = ao_pt2e.PerAxis(0) if self.group_size is None else ao_pt2e.PerGroup(self.group_size)
        weight = QuantizationSpec(
            dtype=torch.int8,
            quant_min=qmin,
            quant_max=qmax,
            observer_or_fake_quant_ctr=self.observers.AffineQuantizedMinMaxObserver.with_args(
                mapping_type=self.mapping,
                target_dtype=torch.int8,
                granularity=granularity,
                scale_dtype=torch.float32,
                zero_point_dtype=torch.int8,
                **self.weight_extra,
            ),
        )
        for n in gm.graph.nodes:
            if n.target == torch.ops.aten.linear.default:
                n.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={n.args[0]: act, n.args[1]: weight}, _annotated=True
                )
        return gm

    def validate(self, gm) -> None:
        pass


def _affine_signature(gm) -> list[tuple]:
    """(op, block size, qparams values, dtype, range) of every affine op, in graph order."""
    out = []
    for n in gm.graph.nodes:
        name = op_name(n.target) if n.op == "call_function" else None
        if name is None:
            continue
        args = []
        for a in n.args[1:]:
            if isinstance(a, torch.fx.Node) and a.op in ("get_attr", "placeholder"):
                a = ("const",)
            elif isinstance(a, torch.fx.Node):
                a = ("node",)
            elif isinstance(a, (list, tuple)):
                a = tuple(a)
            args.append(a)
        out.append((name, *args))
    return out


@pytest.mark.parametrize(
    "group_size,bits,mapping",
    [
        (32, 4, MappingType.SYMMETRIC),
        (None, 4, MappingType.SYMMETRIC),
        (None, 8, MappingType.SYMMETRIC),
        (16, 3, MappingType.SYMMETRIC),
        (32, 2, MappingType.ASYMMETRIC),
        (32, 6, MappingType.ASYMMETRIC),
    ],
)
def test_low_bit_flow_matches_torchao_graph_and_numbers(group_size, bits, mapping) -> None:
    model, example, batches = two_linears()
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as ao_convert
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as ao_prepare

    config = get_dynamic_affine_quantization_config(bits, group_size, mapping)
    ours = pt2q.prepare_pt2e(export_module(model, example), XNNPACKQuantizer().set_global(config))
    theirs = ao_prepare(export_module(model, example), _TorchaoLinearQuantizer(group_size, bits, mapping))
    for b in batches:
        ours(*b)
        theirs(*b)
    ours, theirs = pt2q.convert_pt2e(ours), ao_convert(theirs)
    for b in batches:
        for a, t in zip(ours(*b), theirs(*b)):
            assert torch.equal(a, t)
    # same ops with the same block sizes and ranges once both are exported (torchao leaves op packets)
    ep_ours, ep_theirs = (torch.export.export(m, example) for m in (ours, theirs))
    assert _affine_signature(ep_ours.graph_module) == _affine_signature(ep_theirs.graph_module)
    # quantized weight codes identical
    codes = lambda ep: sorted((tuple(t.shape), t.sum().item()) for t in ep.state_dict.values() if t.dtype == torch.int8)  # noqa: E731
    assert codes(ep_ours) == codes(ep_theirs)


@pytest.mark.parametrize("group_size", [32, None])
def test_flow_with_pt2q_observers_given_torchaos_objects_matches_torchao(group_size) -> None:
    """A quantizer written against torchao whose specs build pt2q's affine observers from torchao's
    granularity and enums (and torchao's block_size argument): torchao's flow, bit for bit."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e as ao_convert
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e as ao_prepare

    model, example, batches = two_linears()
    block = {"block_size": (1, group_size)} if group_size else {}
    ours_q = _TorchaoLinearQuantizer(group_size, 4, MappingType.SYMMETRIC, pt2q._affine_quantization, **block)
    ours = pt2q.prepare_pt2e(export_module(model, example), ours_q)
    theirs = ao_prepare(export_module(model, example), _TorchaoLinearQuantizer(group_size, 4, MappingType.SYMMETRIC))
    observers = [m for m in ours.modules() if isinstance(m, AffineQuantizedMinMaxObserver)]
    assert observers and all(type(m.granularity).__module__.startswith("torchao.") for m in observers)
    for b in batches:
        ours(*b)
        theirs(*b)
    ours, theirs = pt2q.convert_pt2e(ours), ao_convert(theirs)
    for b in batches:
        for a, t in zip(ours(*b), theirs(*b)):
            assert torch.equal(a, t)


def test_8da4w_graph_quantizes_linears_only_and_drops_float_weights() -> None:
    model, example, batches = two_linears()
    m = pt2q.prepare_pt2e(
        export_module(model, example), XNNPACKQuantizer().set_global(get_8da4w_quantization_config(32))
    )
    for b in batches:
        m(*b)
    q = pt2q.convert_pt2e(m)
    lines = []
    for n in q.graph.nodes:
        if is_affine_qdq(n):
            args = [a.name if isinstance(a, torch.fx.Node) else a for a in n.args]
            lines.append(f"{n.target.__name__}{tuple(args[1:])}")
    # activation: choose_qparams per token, then Q/DQ; weight: int8 codes in [-8, 7], groups of 32 (torchao's
    # op packets, as its convert inserts them)
    assert "\n".join(lines) == "\n".join(
        [
            "dequantize_affine([1, 32], '_scale_0', '_zero_point_0', torch.int8, -8, 7)",
            "dequantize_affine([1, 32], '_scale_1', '_zero_point_1', torch.int8, -8, 7)",
            "choose_qparams_affine('ASYMMETRIC', [1, 1, 64], torch.int8, -128, 127, 1.1920928955078125e-07, "
            "torch.float32, torch.int8)",
            "quantize_affine([1, 1, 64], 'getitem', 'getitem_1', torch.int8, -128, 127)",
            "dequantize_affine([1, 1, 64], 'getitem', 'getitem_1', torch.int8, -128, 127)",
            "choose_qparams_affine('ASYMMETRIC', [1, 1, 96], torch.int8, -128, 127, 1.1920928955078125e-07, "
            "torch.float32, torch.int8)",
            "quantize_affine([1, 1, 96], 'getitem_2', 'getitem_3', torch.int8, -128, 127)",
            "dequantize_affine([1, 1, 96], 'getitem_2', 'getitem_3', torch.int8, -128, 127)",
        ]
    )
    conv = [n for n in q.graph.nodes if n.target == torch.ops.aten.conv2d.default][0]
    assert conv.args[1].op == "get_attr"  # the conv stays float: low-bit configs quantize linears only
    codes = [t for name, t in q.state_dict().items() if name.startswith("_frozen_param")]
    assert sorted(c.shape for c in codes) == [torch.Size([32, 96]), torch.Size([96, 64])]
    assert all(int(c.min()) >= -8 and int(c.max()) <= 7 for c in codes)
    assert "fc1.weight" not in dict(q.named_parameters()) and "fc1.weight" not in dict(q.named_buffers())
    float_out = model(*example)[0]
    assert sqnr(float_out, q(*example)[0]) > 15


def test_8da4w_save_load_round_trip_and_checkpoint_of_prepared_model() -> None:
    model, example, batches = two_linears()
    quantizer = XNNPACKQuantizer().set_global(get_8da4w_quantization_config(32))
    prepared = pt2q.prepare_pt2e(export_module(model, example), quantizer)
    for b in batches:
        prepared(*b)
    state = copy.deepcopy(prepared.state_dict())
    fresh = pt2q.prepare_pt2e(export_module(model, example), quantizer)
    fresh.load_state_dict(state)  # statistics and block sizes come back without data
    a, b = pt2q.convert_pt2e(prepared), pt2q.convert_pt2e(fresh)
    assert all(torch.equal(x, y) for x, y in zip(a(*example), b(*example)))
    buffer = io.BytesIO()
    torch.export.save(torch.export.export(a, example), buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    for batch in batches:
        assert all(torch.equal(x, y) for x, y in zip(a(*batch), loaded(*batch)))


def test_uncalibrated_affine_observer_is_named_at_convert() -> None:
    model, example, _ = two_linears()
    m = pt2q.prepare_pt2e(
        export_module(model, example), XNNPACKQuantizer().set_global(get_8da4w_quantization_config(32))
    )
    with pytest.raises(UncalibratedModelError, match="linear"):
        pt2q.convert_pt2e(m)


def test_8da8w_and_qat_flows_convert_to_what_they_trained() -> None:
    model, example, batches = two_linears()
    m = pt2q.prepare_pt2e(export_module(model, example), XNNPACKQuantizer().set_global(get_8da8w_quantization_config()))
    for b in batches:
        m(*b)
    q8 = pt2q.convert_pt2e(m)
    assert sqnr(model(*example)[0], q8(*example)[0]) > 30

    qat = pt2q.prepare_qat_pt2e(
        torch.export.export(copy.deepcopy(model).train(), example).module(),
        XNNPACKQuantizer().set_global(get_8da4w_quantization_config(32, is_qat=True)),
    )
    assert any(isinstance(mod, AffineFakeQuantize) for mod in qat.modules())
    opt = torch.optim.SGD(qat.parameters(), lr=1e-3)
    for b in batches:
        opt.zero_grad()
        qat(*b)[0].pow(2).mean().backward()
        opt.step()
    pt2q.move_exported_model_to_eval(qat)
    with torch.no_grad():
        trained = qat(*example)[0]
    converted = pt2q.convert_pt2e(qat)
    assert sqnr(trained, converted(*example)[0]) > 40  # the converted graph computes what QAT simulated


def test_a16w8_quantizes_activations_to_int16() -> None:
    model, example, batches = two_linears()
    outs = {}
    for name, config in (
        ("a16w8", get_a16w8_quantization_config()),
        ("a8w8", get_symmetric_quantization_config(is_per_channel=True)),
    ):
        m = pt2q.prepare_pt2e(export_module(model, example), XNNPACKQuantizer().set_global(config))
        for b in batches:
            m(*b)
        q = pt2q.convert_pt2e(m)
        outs[name] = q(*example)[0]
        if name == "a16w8":
            dtypes = {
                n.args[-1]
                for n in q.graph.nodes
                if n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default
            }
            assert dtypes == {torch.int16}
    reference = model(*example)[0]
    assert sqnr(reference, outs["a16w8"]) > sqnr(reference, outs["a8w8"]) + 3


# --- lowering and the reference representation ----------------------------------------------------


def _converted(config, use_reference_representation: bool = False):
    model, example, batches = two_linears()
    m = pt2q.prepare_pt2e(export_module(model, example), XNNPACKQuantizer().set_global(config))
    for b in batches:
        m(*b)
    return model, example, pt2q.convert_pt2e(m, use_reference_representation=use_reference_representation)


def test_8da4w_pte_runs_every_linear_in_xnnpack_as_int8_x_int4() -> None:
    from pt2q import runtime
    from pt2q.lowering import to_executorch

    model, example, q = _converted(get_8da4w_quantization_config(32))
    lowered = to_executorch(torch.export.export(q, example), strict=True)
    linears = [r for r in lowered.report.rows if r.op == "aten.linear"]
    assert [(r.runs_on, r.precision, r.weight_dtype, r.weight_bytes) for r in linears] == [
        ("XNNPACK", "int8/int4", torch.int4, 96 * 64 // 2),
        ("XNNPACK", "int8/int4", torch.int4, 32 * 96 // 2),
    ]
    assert not lowered.report.fallbacks
    assert not any(r.op.startswith("torchao.") for r in lowered.report.rows)  # affine Q/DQ folded into the delegate
    program = runtime.load(lowered.buffer)
    # XNNPACK keeps group scales in bf16 and quantizes activations itself: close to the Q/DQ graph, not equal
    assert runtime.compare(program, q, *example).sqnr_db > 35


@pytest.mark.parametrize(
    "config,message",
    [
        (get_dynamic_affine_quantization_config(4, 32, MappingType.ASYMMETRIC), "asymmetric weight"),
        (get_dynamic_affine_quantization_config(3, 32), "groupwise weight with range \\[-4, 3\\]"),
    ],
)
def test_to_executorch_refuses_affine_weights_xnnpack_gets_wrong(config, message) -> None:
    from pt2q.lowering import UnsupportedQuantizedPatternError, to_executorch

    _, example, q = _converted(config)
    with pytest.raises(UnsupportedQuantizedPatternError, match=f"'linear': {message}"):
        to_executorch(torch.export.export(q, example))


def test_reference_representation_of_dynamic_groupwise_linear_is_integer_arithmetic() -> None:
    _, example, q = _converted(get_8da4w_quantization_config(32))
    _, _, ref = _converted(get_8da4w_quantization_config(32), use_reference_representation=True)
    ops = collections.Counter(str(n.target).replace("aten.", "") for n in ref.graph.nodes if n.op == "call_function")
    assert not any("torchao" in op for op in ops)
    # per linear: codes widened to int32, one int32 matmul over [..., G, 1, g] x [G, g, N], a sum over groups
    assert ops["matmul.default"] == 2 and ops["sum.dim_IntList"] == 2 and ops["unflatten.int"] == 2
    matmuls = [n for n in ref.graph.nodes if n.target == torch.ops.aten.matmul.default]
    assert all(a.meta.get("val") is None or a.meta["val"].dtype == torch.int32 for m in matmuls for a in m.args)
    for batch in [example, (example[0] * 3, example[1])]:
        a, b = q(*batch)[0], ref(*batch)[0]
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()  # float rounding only: within one step of Q/DQ
    exported = torch.export.export(ref, example)
    from pt2q import runtime
    from pt2q.lowering import to_executorch

    lowered = to_executorch(exported, delegate=False)  # plain ATen: ExecuTorch's portable kernels run it
    assert runtime.compare(runtime.load(lowered.buffer), ref, *example).sqnr_db > 100


def test_report_describes_low_bit_layers() -> None:
    model, example, batches = two_linears()
    exported = torch.export.export(model, example)
    m = pt2q.prepare_pt2e(exported.module(), XNNPACKQuantizer().set_global(get_8da4w_quantization_config(32)))
    for b in batches:
        m(*b)
    r = pt2q.report(pt2q.convert_pt2e(m), exported, batches)
    fc1, conv = r.row("linear"), r.row("conv2d")
    assert fc1.quantized and "w:int4 blocks (1, 32)" in fc1.how and "i:int8 dynamic blocks (1, 1, 64)" in fc1.how
    assert not conv.quantized and "only linear layers" in conv.how
    assert 15 < fc1.local_sqnr < 40
