"""XNNPACKQuantizer and the operator annotators, at the annotation level.

The oracle: ExecuTorch's XNNPACKQuantizer, run on a separately exported copy of
the same model with the same config, must write equivalent annotations on every
node (compared by node name). The other tests cover what ExecuTorch cannot
check for us: precedence, ``None`` configs, filters and composition.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from typing import Any, Optional

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import GraphModule

from pt2q.core.ops import CONV_TRANSPOSE
from pt2q.core.spec import Q_ANNOTATION_KEY, QuantizationConfig
from pt2q.quantizer import ComposableQuantizer, Quantizer
from pt2q.quantizers import ANNOTATORS, XNNPACKQuantizer, get_annotator, get_symmetric_quantization_config
from tests.zoo import AttentionBlock, Functional

aten = torch.ops.aten
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # from deep-copying ExecuTorch's pattern graphs


@functools.cache
def _et():
    return pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")


@pytest.fixture(autouse=True, scope="module")
def _cache_executorch_pattern_graphs():
    """ExecuTorch exports its conv-bn pattern graphs on every annotate call (~1 s); reuse them."""
    utils = pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils")
    original = utils._get_aten_graph_module_for_pattern
    cache: dict = {}

    def cached(pattern, example_inputs, is_cuda=False, **kwargs):
        fn = getattr(pattern, "fn", None)
        cells = tuple(c.cell_contents for c in (getattr(fn, "__closure__", None) or ()))
        key = (getattr(fn, "__code__", None), cells, tuple(x.shape for x in example_inputs), is_cuda)
        if key not in cache:
            cache[key] = original(pattern, example_inputs, is_cuda, **kwargs)
        return copy.deepcopy(cache[key])  # the matcher rewrites the pattern's output

    mp = pytest.MonkeyPatch()
    mp.setattr(utils, "_get_aten_graph_module_for_pattern", cached)
    yield
    mp.undo()


# --- models -------------------------------------------------------------------------


class ConvReLUStack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 1),
            nn.Hardtanh(0.0, 6.0),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.drop(torch.flatten(self.pool(self.features(x)), 1)))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (nn.Conv2d(8, 8, 3, padding=1) for _ in range(3))

    def forward(self, x):
        y = self.conv2(F.relu(self.conv1(x)))
        z = F.relu(y + x)
        w = z + self.conv3(z)  # used twice: add and relu do not fuse
        return F.relu(w), w.mean(dim=(2, 3))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 6, 1), nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        y = self.head(torch.cat([self.a(x), self.b(x)], dim=1))
        # the first input is a raw model input: the group is rooted at the conv output
        z = torch.cat([x, F.relu(self.a(x))[:, :4]], dim=1)
        return y, z


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act = nn.Hardtanh(0.0, 6.0)
        self.pw = nn.Conv2d(8, 16, 1)

    def forward(self, x):
        return self.pw(self.act(self.dw(x)))


class ConvVariants(nn.Module):
    """conv1d, conv3d, padding='same', a single-input-channel conv and a conv feeding two users."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 3)
        self.c3 = nn.Conv3d(2, 4, 3)
        self.same = nn.Conv2d(1, 4, 3, padding="same")
        self.one = nn.Conv2d(4, 4, 1, bias=False)

    def forward(self, x1, x3, x2):
        a = F.relu(self.c1(x1))
        b = self.c3(x3)
        c = self.one(self.same(x2))
        return a, b, c + F.relu(c)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 10, bias=False)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        g = self.fc2(h)
        return self.fc3(F.relu(g)), g


class ConvTranspose(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.grouped = nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2)
        self.up1d = nn.ConvTranspose1d(4, 2, 3)

    def forward(self, x, s):
        return self.grouped(F.relu(self.up(self.conv(x)))), self.up1d(s)


class Binary(nn.Module):
    """mul, mul -> relu, scalar operands (small, huge) and integer arithmetic."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x, y):
        a = self.conv(x)
        m = F.relu(a * y)
        s = (m + 1.0) * 0.5 + a * y
        big = x * 1e20
        count = x.shape[0] * torch.ones(2, dtype=torch.int64) + 3
        return s, big, count


class TiedWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8, 8)

    def forward(self, x, t):
        y = self.conv(self.conv(x))
        return y, self.fc(self.fc(t))


class ConvBnQAT(nn.Module):
    """The conv -> batch_norm [-> relu] patterns QAT keeps unfused (exported in train mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.block3 = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.block3(self.block2(self.block1(x)))
        return F.relu(self.fc(y.mean(dim=(2, 3))))


class Conv1dBnQAT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv1d(4, 8, 3), nn.BatchNorm1d(8)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x))).permute(0, 2, 1)


class ConvTransposeBnQAT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.bn = nn.ConvTranspose2d(4, 8, 2, stride=2), nn.BatchNorm2d(8)
        self.up1d, self.bn1d = nn.ConvTranspose1d(4, 4, 3), nn.BatchNorm1d(4)

    def forward(self, x, s):
        return F.relu(self.bn(self.up(x))), self.bn1d(self.up1d(s))


def _r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


# name -> (model factory, example inputs factory, export in train mode)
ZOO: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple], bool]] = {
    "conv_relu_stack": (ConvReLUStack, lambda: (_r(2, 3, 16, 16),), False),
    "residual": (Residual, lambda: (_r(2, 8, 8, 8),), False),
    "concat": (Concat, lambda: (_r(2, 4, 8, 8),), False),
    "depthwise": (Depthwise, lambda: (_r(2, 8, 8, 8),), False),
    "conv_variants": (ConvVariants, lambda: (_r(2, 4, 12), _r(1, 2, 5, 6, 6), _r(2, 1, 8, 8)), False),
    "mlp": (MLP, lambda: (_r(4, 32),), False),
    "attention": (functools.partial(AttentionBlock, scale_by_mul=True), lambda: (_r(2, 6, 32),), False),
    "conv_transpose": (ConvTranspose, lambda: (_r(2, 4, 8, 8), _r(2, 4, 10)), False),
    "binary": (Binary, lambda: (_r(2, 3, 4, 4), _r(2, 3, 4, 4)), False),
    "functional": (Functional, lambda: (_r(2, 3, 8, 8),), False),
    "tied_weights": (TiedWeights, lambda: (_r(1, 4, 6, 6), _r(3, 8)), False),
    "conv_bn_qat": (ConvBnQAT, lambda: (_r(2, 3, 8, 8),), True),
    "conv1d_bn_qat": (Conv1dBnQAT, lambda: (_r(2, 4, 12),), True),
    "conv_transpose_bn_qat": (ConvTransposeBnQAT, lambda: (_r(2, 4, 4, 4), _r(2, 4, 6)), True),
}
QAT_MODELS = [name for name, (_, _, train) in ZOO.items() if train]


@functools.cache
def _exported(name: str) -> torch.export.ExportedProgram:
    factory, inputs, train = ZOO[name]
    torch.manual_seed(0)
    return torch.export.export(factory().train(train), inputs())


def export(name: str) -> GraphModule:
    """A fresh GraphModule of a zoo model (node meta is not shared between calls)."""
    return _exported(name).module()


def export_model(model: nn.Module, *inputs: torch.Tensor) -> GraphModule:
    return torch.export.export(copy.deepcopy(model), inputs).module()


# --- describing annotations so the two libraries can be compared ----------------------


@functools.cache
def _observer_desc(ctr: Any) -> tuple:
    """Class name (and the wrapped observer's, for fake quantizers) and eps of what ``ctr`` builds."""
    obj = ctr()
    inner = getattr(obj, "activation_post_process", None)
    observer = inner if isinstance(inner, nn.Module) else obj
    eps = getattr(observer, "eps", None)
    eps = float(eps) if eps is not None else None
    return (type(obj).__name__, type(inner).__name__ if isinstance(inner, nn.Module) else None, eps)


def _spec_desc(spec: Any) -> Any:
    if spec is None:
        return None
    if type(spec).__name__ == "SharedQuantizationSpec":
        e = spec.edge_or_node
        return ("shared", (e[0].name, e[1].name) if isinstance(e, tuple) else e.name)
    return (
        spec.dtype,
        spec.quant_min,
        spec.quant_max,
        spec.qscheme,
        spec.ch_axis,
        spec.is_dynamic,
        _observer_desc(spec.observer_or_fake_quant_ctr),
    )


def describe(gm: GraphModule) -> dict[str, tuple]:
    """node name -> (_annotated, {input name: spec}, output spec, allow_implicit_sharing) per annotated node."""
    out = {}
    for n in gm.graph.nodes:
        ann = n.meta.get(Q_ANNOTATION_KEY)
        if ann is None:
            continue
        inputs = {k.name: _spec_desc(v) for k, v in ann.input_qspec_map.items()}
        out[n.name] = (ann._annotated, inputs, _spec_desc(ann.output_qspec), ann.allow_implicit_sharing)
    return out


def annotate_pt2q(gm: GraphModule, quantizer: Quantizer) -> GraphModule:
    gm = quantizer.transform_for_annotation(gm)
    quantizer.annotate(gm)
    quantizer.validate(gm)
    return gm


def assert_same_annotations(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys(), (
        f"annotated only by pt2q: {sorted(ours.keys() - theirs.keys())}; "
        f"only by ExecuTorch: {sorted(theirs.keys() - ours.keys())}"
    )
    for name in ours:
        assert ours[name] == theirs[name], f"node {name}:\n  pt2q:       {ours[name]}\n  ExecuTorch: {theirs[name]}"


def et_quantizer(config: dict) -> Any:
    et = _et()
    return et.XNNPACKQuantizer().set_global(et.get_symmetric_quantization_config(**config))


def _known_differences(name: str, theirs: dict, ours_gm: GraphModule) -> dict:
    """Patch ExecuTorch's description where pt2q differs on purpose (see pt2q.quantizers.xnnpack)."""
    if name != "conv_transpose_bn_qat":
        return theirs
    # transposed conv + BN keeps its weight quantized along the output channels (axis 1)
    patched = copy.deepcopy(theirs)
    for n in ours_gm.graph.nodes:
        if n.op == "call_function" and n.target in CONV_TRANSPOSE:
            weight = n.args[1].name
            desc = list(patched[n.name][1][weight])
            assert desc[4] == 0, "ExecuTorch now uses axis 1 too: drop this patch"
            desc[4] = 1
            patched[n.name][1][weight] = tuple(desc)
    return patched


STATIC_CONFIGS = {
    "per_tensor": dict(),
    "per_channel": dict(is_per_channel=True),
    "narrow_act": dict(is_per_channel=True, act_qmin=-127, act_qmax=127),
    "qat": dict(is_per_channel=True, is_qat=True),
    "qat_per_tensor": dict(is_qat=True),
}
DYNAMIC_CONFIGS = {
    "dynamic": dict(is_dynamic=True),
    "dynamic_per_channel": dict(is_per_channel=True, is_dynamic=True),
    "dynamic_qat": dict(is_per_channel=True, is_dynamic=True, is_qat=True),
}
DYNAMIC_MODELS = ["mlp", "attention", "conv_relu_stack", "depthwise", "conv_variants", "conv_transpose", "conv_bn_qat"]


def _oracle(name: str, config: dict) -> dict:
    ours_gm = annotate_pt2q(export(name), XNNPACKQuantizer().set_global(get_symmetric_quantization_config(**config)))
    theirs_gm = annotate_pt2q(export(name), et_quantizer(config))
    ours, theirs = describe(ours_gm), describe(theirs_gm)
    assert_same_annotations(ours, _known_differences(name, theirs, ours_gm))
    return ours


@pytest.mark.parametrize("config", list(STATIC_CONFIGS))
@pytest.mark.parametrize("name", list(ZOO))
def test_static_annotations_match_executorch(name: str, config: str) -> None:
    ours = _oracle(name, STATIC_CONFIGS[config])
    assert any(out is not None for _, _, out, _ in ours.values()), "nothing was quantized"


@pytest.mark.parametrize("config", list(DYNAMIC_CONFIGS))
@pytest.mark.parametrize("name", DYNAMIC_MODELS)
def test_dynamic_annotations_match_executorch(name: str, config: str) -> None:
    ours = _oracle(name, DYNAMIC_CONFIGS[config])
    assert any(spec and spec[5] for _, inputs, _, _ in ours.values() for spec in inputs.values())


# --- precedence, None configs, filters --------------------------------------------------


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        return self.fc(x)


class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block() for _ in range(3)])
        self.head = nn.Linear(8, 8)
        self.tail = nn.Conv1d(8, 8, 1)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        x = self.head(x)
        return self.tail(x.unsqueeze(-1)).flatten(1)


CFG_A = dict()
CFG_B = dict(is_per_channel=True)
CFG_C = dict(act_qmin=-127, act_qmax=127)
CFG_D = dict(is_per_channel=True, act_qmin=-127, act_qmax=127)


def _config_of(gm: GraphModule, node_name: str, configs: dict[str, QuantizationConfig]) -> Optional[str]:
    """Which of ``configs`` annotated the input activation of ``node_name`` (None if not annotated)."""
    node = next(n for n in gm.graph.nodes if n.name == node_name)
    ann = node.meta.get(Q_ANNOTATION_KEY)
    if ann is None or node.args[0] not in ann.input_qspec_map:
        return None
    act, weight = ann.input_qspec_map[node.args[0]], ann.input_qspec_map[node.args[1]]
    for key, cfg in configs.items():
        if act == cfg.input_activation and weight == cfg.weight:
            return key
    raise AssertionError(f"{node_name} annotated with an unknown config")


def _set_all(q: Any, get_config: Callable[..., Any]) -> Any:
    return (
        q.set_global(get_config(**CFG_A))
        .set_operator_type(aten.linear.default, get_config(**CFG_B))
        .set_module_type(Block, get_config(**CFG_C))
        .set_module_name("blocks.1", get_config(**CFG_D))
    )


def test_precedence_module_name_over_type_over_operator_over_global() -> None:
    example = (torch.randn(2, 8),)
    gm = annotate_pt2q(
        export_model(Blocks(), *example), _set_all(XNNPACKQuantizer(), get_symmetric_quantization_config)
    )
    configs = {k: get_symmetric_quantization_config(**v) for k, v in dict(A=CFG_A, B=CFG_B, C=CFG_C, D=CFG_D).items()}
    got = {n: _config_of(gm, n, configs) for n in ("linear", "linear_1", "linear_2", "linear_3", "conv1d")}
    # blocks.0 / blocks.2: module type; blocks.1: module name; head: operator type; tail: global
    assert got == {"linear": "C", "linear_1": "D", "linear_2": "C", "linear_3": "B", "conv1d": "A"}

    et = _et()
    theirs = annotate_pt2q(
        export_model(Blocks(), *example), _set_all(et.XNNPACKQuantizer(), et.get_symmetric_quantization_config)
    )
    assert_same_annotations(describe(gm), describe(theirs))


def test_module_name_none_leaves_module_float() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 4), nn.ReLU())
    gm = export_model(model, torch.randn(1, 3, 8, 8))
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config()).set_module_name("2", None)
    desc = describe(annotate_pt2q(gm, quantizer))
    assert "conv2d_1" not in desc and "_2_weight" not in desc  # the float conv
    assert "flatten" not in desc  # nothing to share qparams with: its input is float
    assert desc["relu"][2] is not None and desc["relu_1"][2] is not None
    assert desc["linear"][1]["flatten"] is not None  # the next linear quantizes its float input
    # a None module also keeps qparams from propagating into it
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Hardtanh(), nn.Linear(4, 4)))
    gm = export_model(model, torch.randn(2, 4))
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config()).set_module_name("1", None)
    assert set(describe(annotate_pt2q(gm, quantizer))) == {"linear", "_0_weight", "_0_bias"}


def test_operator_type_accepts_overload_packets() -> None:
    cfg = get_symmetric_quantization_config(is_per_channel=True)
    for op in (aten.linear, aten.linear.default):
        desc = describe(annotate_pt2q(export("mlp"), XNNPACKQuantizer().set_operator_type(op, cfg)))
        assert {"linear", "relu", "linear_1", "linear_2"} <= set(desc) and "conv2d" not in desc


def test_module_type_none_and_operator_none() -> None:
    model = Blocks()
    gm = export_model(model, torch.randn(2, 8))
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config()).set_module_type(Block, None)
    desc = describe(annotate_pt2q(gm, q))
    assert {"linear", "linear_1", "linear_2"}.isdisjoint(desc) and {"linear_3", "conv1d"} <= set(desc)

    gm = export("residual")
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config()).set_operator_type(aten.add.Tensor, None)
    desc = describe(annotate_pt2q(gm, q))
    adds = [n.name for n in gm.graph.nodes if n.target == aten.add.Tensor]
    assert adds and set(adds).isdisjoint(desc)
    assert {"conv2d", "conv2d_1", "conv2d_2"} <= set(desc)


def test_module_scope_covers_fused_followers() -> None:
    """A conv's module owns the relu fused after it, even when the relu is another module."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    gm = export_model(model, torch.randn(1, 3, 8, 8))
    cfg = get_symmetric_quantization_config(is_per_channel=True)
    desc = describe(annotate_pt2q(gm, XNNPACKQuantizer().set_module_type(nn.Conv2d, cfg)))
    assert desc["relu"][2] is not None and desc["conv2d"][2] is None  # fused conv -> relu
    assert desc["conv2d_1"][2] is not None


def test_filter_function() -> None:
    gm = export("concat")
    q = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    q.set_filter_function(lambda n: n.name not in {"conv2d_2", "cat_1"})
    desc = describe(annotate_pt2q(gm, q))
    assert "cat_1" not in desc and "conv2d_2" not in desc
    assert {"conv2d", "conv2d_1", "cat"} <= set(desc)
    # the filter also applies to the propagation of shared qparams
    q = (
        XNNPACKQuantizer()
        .set_global(get_symmetric_quantization_config())
        .set_filter_function(lambda n: n.name != "max_pool2d")
    )
    desc = describe(annotate_pt2q(export("conv_relu_stack"), q))
    assert "max_pool2d" not in desc and desc["hardtanh"][2] == ("shared", "conv2d_2")


def test_functional_adaptive_avg_pool2d_is_annotated() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return F.adaptive_avg_pool2d(x, 2), F.adaptive_avg_pool2d(self.conv(x), 1)

    desc = describe(
        annotate_pt2q(
            export_model(M(), torch.randn(1, 3, 4, 4)),
            XNNPACKQuantizer().set_global(get_symmetric_quantization_config()),
        )
    )
    assert desc["adaptive_avg_pool2d"][1]["x"][0] == torch.int8  # float input: gets the input spec
    assert desc["adaptive_avg_pool2d"][2] == ("shared", ("x", "adaptive_avg_pool2d"))
    assert desc["adaptive_avg_pool2d_1"][1] == {"conv2d": ("shared", "conv2d")}


def test_scalars_become_tensor_attributes() -> None:
    example = (torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    gm = export_model(Binary(), *example)
    expected = gm(*example)
    gm = XNNPACKQuantizer().transform_for_annotation(gm)
    consts = {
        n.name: getattr(gm, n.target) for n in gm.graph.nodes if n.op == "get_attr" and n.name.startswith("_tensor")
    }
    assert {k: v.item() for k, v in consts.items()} == {
        "_tensor_constant_0": 1.0,
        "_tensor_constant_1": 0.5,
        "_tensor_constant_2": torch.tensor(1e20).item(),
    }
    # integer arithmetic keeps its Python scalars (and its dtype)
    assert [n.args[1] for n in gm.graph.nodes if n.name in ("mul_4", "add_2")] == [2, 3]
    for a, b in zip(gm(*example), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    desc = describe(XNNPACKQuantizer().set_global(get_symmetric_quantization_config()).annotate(gm))
    assert set(desc["add"][1]) == {"relu", "_tensor_constant_0"}
    assert "mul_3" not in desc  # 1e20 is beyond what a histogram observer can bin


def test_symmetric_config_specs() -> None:
    cfg = get_symmetric_quantization_config(is_per_channel=True)
    assert cfg is get_symmetric_quantization_config(is_per_channel=True)
    assert (cfg.input_activation.dtype, cfg.input_activation.qscheme) == (torch.int8, torch.per_tensor_affine)
    assert cfg.output_activation == cfg.input_activation and cfg.bias is None and not cfg.is_qat
    assert (cfg.weight.qscheme, cfg.weight.ch_axis, cfg.weight.quant_min) == (torch.per_channel_symmetric, 0, -127)
    assert _observer_desc(cfg.input_activation.observer_or_fake_quant_ctr) == ("HistogramObserver", None, 2**-12)
    dyn = get_symmetric_quantization_config(is_dynamic=True)
    assert dyn.output_activation is None and dyn.input_activation.is_dynamic
    assert _observer_desc(dyn.input_activation.observer_or_fake_quant_ctr)[0] == "PlaceholderObserver"


# --- the registry and composition ---------------------------------------------------------


def test_registry_names() -> None:
    # every XNNPACK pattern is registered; other quantizers (x86, embedding) add their own
    assert set(ANNOTATORS) >= {
        "linear",
        "linear_relu",
        "conv",
        "conv_relu",
        "conv_bn",
        "conv_bn_relu",
        "conv_transpose",
        "conv_transpose_relu",
        "conv_transpose_bn",
        "conv_transpose_bn_relu",
        "add",
        "add_relu",
        "mul",
        "mul_relu",
        "cat",
        "adaptive_avg_pool2d",
        "propagate_annotation",
    }
    assert get_annotator("linear") is ANNOTATORS["linear"]
    with pytest.raises(KeyError, match="known"):
        get_annotator("softmax")


class DynamicLinearQuantizer(Quantizer):
    """A user's quantizer in a few lines: dynamic linears, reusing the registered annotator."""

    def annotate(self, model: GraphModule) -> GraphModule:
        get_annotator("linear")(model, get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
        return model

    def validate(self, model: GraphModule) -> None:
        pass


def test_composable_quantizer() -> None:
    gm = export_model(ConvReLUStack().eval(), torch.randn(1, 3, 16, 16))
    static = XNNPACKQuantizer().set_global(get_symmetric_quantization_config()).set_module_name("fc", None)
    annotated = annotate_pt2q(gm, ComposableQuantizer([static, DynamicLinearQuantizer()]))
    desc = describe(annotated)
    assert desc["relu"][2] is not None  # static conv -> relu, from the first quantizer
    linear_inputs = desc["linear"][1]
    assert linear_inputs["dropout"][5] and desc["linear"][2] is None  # dynamic, from the second one
    # the other order: the XNNPACK quantizer skips the linear the dynamic one claimed
    gm = export_model(ConvReLUStack().eval(), torch.randn(1, 3, 16, 16))
    static = XNNPACKQuantizer().set_global(get_symmetric_quantization_config())
    desc = describe(annotate_pt2q(gm, ComposableQuantizer([DynamicLinearQuantizer(), static])))
    assert desc["linear"][1]["dropout"][5]


def test_annotators_skip_annotated_and_filtered_nodes() -> None:
    gm = export("mlp")
    cfg = get_symmetric_quantization_config()
    parts = get_annotator("linear")(gm, cfg, lambda n: n.name != "linear")
    assert [p[0].name for p in parts] == ["linear_1", "linear_2"]
    assert get_annotator("linear")(gm, cfg) == [
        [
            gm.graph.find_nodes(op="call_function", target=aten.linear.default)[0],
            *[n for n in gm.graph.nodes if n.name in ("fc1_weight", "fc1_bias")],
        ]
    ]
    assert get_annotator("linear")(gm, cfg) == []  # all claimed now
