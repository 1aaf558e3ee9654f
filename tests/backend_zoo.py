"""ExecuTorch's backend quantizers, each built as its backend's docs and tests build it, and small real models.

A ``QuantizerCase`` is one backend configuration (``build()`` returns a fresh quantizer object written
against torchao's PT2E API); ``MODELS`` are CI-sized model shapes with deterministic weights and inputs.
Backends whose Python package cannot be imported here (a vendor SDK that is not on the package index)
are listed in ``UNAVAILABLE`` with the module that fails and the exact error it raises.

Nothing here touches the network: Qualcomm's ``QnnQuantizer`` looks for (and, on Linux x86, downloads)
the QNN SDK when it is built unless ``QNN_SDK_ROOT`` is set; an empty value means "the caller supplies
the SDK" and the quantizer falls back to its built-in op rules (``qnn_offline``).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.zoo import AttentionBlock, _randomize_bn

# ----------------------------------------------------------------------------------------------------------------
# models


class ConvBnReLU(nn.Module):
    """Two conv+BatchNorm+ReLU blocks, global pooling and a linear head (a ResNet stem in miniature)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)))
        y = F.relu(self.b2(self.c2(y)))
        return self.fc(y.mean(dim=(2, 3)))


class Depthwise(nn.Module):
    """MobileNet-style block: depthwise 3x3 conv + BN + ReLU, pointwise 1x1 conv + BN."""

    def __init__(self) -> None:
        super().__init__()
        self.dw, self.b1 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.pw, self.b2 = nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b2(self.pw(F.relu(self.b1(self.dw(x)))))


class LayerNormMLP(nn.Module):
    """Transformer feed-forward: LayerNorm, linear, GELU, linear."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class EmbeddingHead(nn.Module):
    """Token embedding, mean over the sequence, linear classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(64, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(tokens).mean(dim=1))


class GRUHead(nn.Module):
    """One GRU layer (input and hidden sizes multiples of 4) and a linear head on the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(x, h0)
        return self.fc(y[:, -1])


def _float_inputs(*shapes: tuple[int, ...]) -> Callable[[torch.Generator], tuple[torch.Tensor, ...]]:
    return lambda g: tuple(torch.randn(s, generator=g) for s in shapes)


def _tokens(g: torch.Generator) -> tuple[torch.Tensor, ...]:
    return (torch.randint(0, 64, (4, 6), generator=g),)


@dataclass(frozen=True)
class ModelSpec:
    factory: Callable[[], nn.Module]
    inputs: Callable[[torch.Generator], tuple[torch.Tensor, ...]]


MODELS: dict[str, ModelSpec] = {
    "conv_bn_relu": ModelSpec(ConvBnReLU, _float_inputs((2, 3, 16, 16))),
    "depthwise": ModelSpec(Depthwise, _float_inputs((2, 8, 8, 8))),
    "ln_gelu_mlp": ModelSpec(LayerNormMLP, _float_inputs((2, 6, 32))),
    "attention": ModelSpec(AttentionBlock, _float_inputs((2, 6, 32))),
    "embedding": ModelSpec(EmbeddingHead, _tokens),
    "gru": ModelSpec(GRUHead, _float_inputs((2, 5, 8), (1, 2, 8))),
}


def make_model(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """An eval-mode model with deterministic weights (BatchNorm statistics randomized) and one example input."""
    spec = MODELS[name]
    torch.manual_seed(seed)
    model = _randomize_bn(spec.factory()).eval()
    return model, spec.inputs(torch.Generator().manual_seed(seed))


def model_batches(name: str, n: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """``n`` input batches of the model's shapes (calibration data or held-out inputs, by seed)."""
    g = torch.Generator().manual_seed(seed)
    return [MODELS[name].inputs(g) for _ in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# quantizers


@contextlib.contextmanager
def qnn_offline() -> Iterator[None]:
    """Build a ``QnnQuantizer`` without its SDK set-up: ``QNN_SDK_ROOT=""`` tells ExecuTorch's
    ``setup_qnn_sdk`` that the caller owns the SDK, so it downloads nothing; with no SDK on the path the
    quantizer falls back to its built-in rules (no op-constraint validation)."""
    before = os.environ.get("QNN_SDK_ROOT")
    os.environ["QNN_SDK_ROOT"] = before if before is not None else ""
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("QNN_SDK_ROOT", None)


def _xnnpack(**config: Any) -> Callable[[], Any]:
    def build() -> Any:
        from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as x

        return x.XNNPACKQuantizer().set_global(x.get_symmetric_quantization_config(**config))

    return build


def _vulkan(**config: Any) -> Callable[[], Any]:
    def build() -> Any:
        from executorch.backends.vulkan.quantizer import vulkan_quantizer as v

        return v.VulkanQuantizer().set_global(v.get_symmetric_quantization_config(**config))

    return build


def _cadence(cls_name: str, **kwargs: Any) -> Callable[[], Any]:
    def build() -> Any:
        from executorch.backends.cadence.aot.quantizer import quantizer as c

        return getattr(c, cls_name)(**kwargs)

    return build


def _cadence_trace(cls_name: str) -> Callable[[nn.Module, tuple, bool], torch.fx.GraphModule]:
    """Cadence's own export (``compiler.trace``): strict export, then ATen decompositions except the ops its
    quantizer's patterns match (``get_ops_to_preserve_from_decomposition``)."""

    def trace(model: nn.Module, example: tuple, is_qat: bool) -> torch.fx.GraphModule:
        from executorch.backends.cadence.aot.compiler_funcs import trace as cadence_trace

        ops = _cadence(cls_name)().get_ops_to_preserve_from_decomposition()
        return cadence_trace(model, example, is_qat=is_qat, strict=True, ops_to_keep=ops).module()

    return trace


def _cadence_case(cls_name: str, config: str, models: tuple[str, ...], qat: bool = False) -> QuantizerCase:
    build = _cadence(cls_name, is_qat=True) if qat else _cadence(cls_name)
    return QuantizerCase("cadence", config, build, models, qat, trace=_cadence_trace(cls_name))


def _qnn(dtype: str, is_qat: bool = False, per_channel: bool = True) -> Callable[[], Any]:
    """As ExecuTorch's ``make_quantizer`` (backends/qualcomm/export_utils.py) and its test flows build it."""

    def build() -> Any:
        from executorch.backends.qualcomm.quantizer.quantizer import QnnQuantizer, QuantDtype
        from torchao.quantization.pt2e import MovingAverageMinMaxObserver

        with qnn_offline():
            quantizer = QnnQuantizer()
        quantizer.set_default_quant_config(
            getattr(QuantDtype, dtype),
            is_qat=is_qat,
            is_conv_per_channel=per_channel,
            is_linear_per_channel=per_channel,
            act_observer=MovingAverageMinMaxObserver,
        )
        return quantizer

    return build


_PATTERN_GRAPHS: dict[tuple, torch.fx.GraphModule] = {}
# (module, function) pairs through which backend quantizers export their pattern graphs on every ``annotate``
PATTERN_EXPORTERS = (
    ("executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils", "_get_aten_graph_module_for_pattern"),
    ("executorch.backends.apple.coreml.quantizer._coreml_quantizer_utils", "_get_aten_graph_module"),
)


def _pattern_key(pattern: Any, example_inputs: tuple, is_cuda: bool) -> tuple | None:
    """The identity of a pattern graph: the pattern function's code, the values it closes over, the example
    input shapes; ``None`` when a closed-over value cannot be a key (then the graph is not memoized)."""
    fn = getattr(pattern, "fn", None) or (type(pattern).forward if isinstance(pattern, nn.Module) else pattern)
    closure = tuple(cell.cell_contents for cell in getattr(fn, "__closure__", None) or ())
    shapes = tuple((t.shape, t.dtype) if isinstance(t, torch.Tensor) else t for t in example_inputs)
    key = (getattr(fn, "__code__", fn), closure, shapes, is_cuda)
    try:
        hash(key)
    except TypeError:
        return None
    return key


@contextlib.contextmanager
def pattern_memo() -> Iterator[None]:
    """Memoize the pattern graphs the XNNPACK and Core ML quantizers export on every ``annotate`` (Core ML:
    about 400 small ``torch.export`` calls, ~40 s here; XNNPACK's conv+BN patterns: ~1 s). A pattern graph is a
    pure function of the pattern's code, the values it closes over and the example input shapes; each call
    gets a fresh deep copy (the matchers rewrite a pattern's output in place). Both flows annotate through the
    same quantizer code, so the oracle comparison is unchanged; torchao's own flow is not touched."""
    import copy

    patched = []
    for module_name, attr in PATTERN_EXPORTERS:
        if not importable(module_name):
            continue
        module = importlib.import_module(module_name)
        original = getattr(module, attr)

        def memoized(pattern: Any, example_inputs: tuple, is_cuda: bool = False, *, _original: Any = original) -> Any:
            key = _pattern_key(pattern, example_inputs, is_cuda)
            if key is None:
                return _original(pattern, example_inputs, is_cuda)
            if key not in _PATTERN_GRAPHS:
                _PATTERN_GRAPHS[key] = _original(pattern, example_inputs, is_cuda)
            return copy.deepcopy(_PATTERN_GRAPHS[key])

        setattr(module, attr, memoized)
        patched.append((module, attr, original))
    try:
        yield
    finally:
        for module, attr, original in patched:
            setattr(module, attr, original)


def _coreml(weight_per_channel: bool = True) -> Callable[[], Any]:
    """As ExecuTorch's Core ML quantizer tests build it (symmetric int8, per-channel weights)."""

    def build() -> Any:
        from coremltools.optimize.torch.quantization import LinearQuantizerConfig, QuantizationScheme
        from executorch.backends.apple.coreml.quantizer import CoreMLQuantizer

        config = LinearQuantizerConfig.from_dict(
            {
                "global_config": {
                    "quantization_scheme": QuantizationScheme.symmetric,
                    "milestones": [0, 0, 10, 10],
                    "activation_dtype": torch.quint8,
                    "weight_dtype": torch.qint8,
                    "weight_per_channel": weight_per_channel,
                }
            }
        )
        return CoreMLQuantizer(config)

    return build


def _samsung(is_per_channel: bool = True, is_qat: bool = False) -> Callable[[], Any]:
    def build() -> Any:
        from executorch.backends.samsung.quantizer import EnnQuantizer, Precision

        quantizer = EnnQuantizer()
        quantizer.setup_quant_params(Precision.A8W8, is_per_channel=is_per_channel, is_qat=is_qat)
        return quantizer

    return build


def _example() -> Any:
    from executorch.backends.example.example_quantizer import ExampleQuantizer

    return ExampleQuantizer()


def _openvino(mode: str) -> Callable[[], Any]:
    def build() -> Any:
        from executorch.backends.openvino.quantizer import OpenVINOQuantizer, QuantizationMode

        return OpenVINOQuantizer(mode=getattr(QuantizationMode, mode))

    return build


def _arm(target: str, is_qat: bool = False) -> Callable[[], Any]:
    """As ExecuTorch's Arm test flows build it: a compile spec, ``get_symmetric_quantization_config``."""

    def build() -> Any:
        from executorch.backends.arm.quantizer import (
            EthosUQuantizer,
            TOSAQuantizer,
            VgfQuantizer,
            get_symmetric_quantization_config,
        )

        quantizer: Any
        if target == "tosa":
            from executorch.backends.arm.tosa.compile_spec import TosaCompileSpec

            quantizer = TOSAQuantizer(TosaCompileSpec("TOSA-1.0+INT"))
        elif target == "ethos-u55":
            from executorch.backends.arm.ethosu.compile_spec import EthosUCompileSpec

            spec = EthosUCompileSpec(
                "ethos-u55-128", system_config="Ethos_U55_High_End_Embedded", memory_mode="Shared_Sram"
            )
            quantizer = EthosUQuantizer(spec)
        else:
            from executorch.backends.arm.vgf.compile_spec import VgfCompileSpec

            quantizer = VgfQuantizer(VgfCompileSpec())
        return quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat))

    return build


def _arm_trace(model: nn.Module, example: tuple, is_qat: bool) -> torch.fx.GraphModule:
    """As Arm's public-API flows export: without the guard-checking submodule (``check_guards=False``), which
    the Arm passes run by ``transform_for_annotation`` reject (``call_module is not supported``)."""
    return torch.export.export(model, example).module(check_guards=False)


def _cortex_m() -> Any:
    from executorch.backends.cortex_m.quantizer.quantizer import CortexMQuantizer

    return CortexMQuantizer()


CONV = ("conv_bn_relu", "depthwise")
TRANSFORMER = ("ln_gelu_mlp", "attention")
ALL_BUT_GRU = (*CONV, *TRANSFORMER, "embedding")
# QAT: conv+BN (torchao's QAT conv-BN rewrite exports its pattern graphs each time, ~14 s) and the MLP
QAT_MODELS = ("conv_bn_relu", "ln_gelu_mlp")


@dataclass(frozen=True)
class QuantizerCase:
    """One backend configuration: a builder of a fresh quantizer, PTQ or QAT, and the models it runs on."""

    backend: str
    config: str
    build: Callable[[], Any]
    models: tuple[str, ...]
    qat: bool = False
    needs: str | None = None  # a module that must import (optional dependency), else the case is unavailable
    trace: Callable[[nn.Module, tuple, bool], torch.fx.GraphModule] | None = None  # the backend's own export

    @property
    def name(self) -> str:
        return f"{self.backend}-{self.config}{'-qat' if self.qat else ''}"


CASES: tuple[QuantizerCase, ...] = (
    QuantizerCase("xnnpack", "per_channel", _xnnpack(is_per_channel=True), ALL_BUT_GRU),
    QuantizerCase("xnnpack", "per_tensor", _xnnpack(is_per_channel=False), ("conv_bn_relu", "attention")),
    QuantizerCase("xnnpack", "dynamic", _xnnpack(is_per_channel=True, is_dynamic=True), TRANSFORMER),
    QuantizerCase("xnnpack", "per_channel", _xnnpack(is_per_channel=True, is_qat=True), QAT_MODELS, True),
    QuantizerCase("vulkan", "weight_only_8w", _vulkan(), TRANSFORMER),
    QuantizerCase("vulkan", "dynamic_8a4w", _vulkan(is_dynamic=True, weight_bits=4), TRANSFORMER),
    _cadence_case("CadenceDefaultQuantizer", "default", ALL_BUT_GRU),
    _cadence_case("CadenceDefaultQuantizer", "default", QAT_MODELS, qat=True),
    _cadence_case("CadenceFusedConvReluQuantizer", "fused_conv_relu", CONV),
    _cadence_case("CadenceWithLayerNormQuantizer", "with_layer_norm", ("ln_gelu_mlp",)),
    _cadence_case("CadenceWithSoftmaxQuantizer", "with_softmax_a16", ("attention",)),
    _cadence_case("CadenceWith16BitLinearActivationsQuantizer", "a16_linear", ("ln_gelu_mlp",)),
    _cadence_case("CadenceW8A32MixedQuantizer", "w8a32_mixed", ("gru",)),
    QuantizerCase("qualcomm", "8a8w", _qnn("use_8a8w"), ALL_BUT_GRU),
    QuantizerCase("qualcomm", "16a8w", _qnn("use_16a8w"), ("conv_bn_relu", "attention")),
    QuantizerCase("qualcomm", "16a4w", _qnn("use_16a4w"), ("conv_bn_relu", "ln_gelu_mlp")),
    QuantizerCase("qualcomm", "8a8w_per_tensor", _qnn("use_8a8w", per_channel=False), ("depthwise",)),
    QuantizerCase("qualcomm", "8a8w", _qnn("use_8a8w", is_qat=True), QAT_MODELS, True),
    QuantizerCase("qualcomm", "16a4w", _qnn("use_16a4w", is_qat=True), ("ln_gelu_mlp",), True),
    QuantizerCase("coreml", "int8_symmetric", _coreml(), ALL_BUT_GRU, needs="coremltools"),
    QuantizerCase("coreml", "int8_symmetric", _coreml(), QAT_MODELS, True, needs="coremltools"),
    QuantizerCase("samsung", "a8w8", _samsung(), ALL_BUT_GRU),
    QuantizerCase("samsung", "a8w8", _samsung(is_qat=True), ("ln_gelu_mlp",), True),
    QuantizerCase("example", "default", _example, CONV),
    QuantizerCase("openvino", "int8_sym", _openvino("INT8_SYM"), ALL_BUT_GRU, needs="openvino"),
    QuantizerCase("openvino", "int8_mixed", _openvino("INT8_MIXED"), CONV, needs="openvino"),
    QuantizerCase("openvino", "int8_transformer", _openvino("INT8_TRANSFORMER"), TRANSFORMER, needs="openvino"),
    QuantizerCase("arm", "tosa_int", _arm("tosa"), ALL_BUT_GRU, needs="tosa_serializer", trace=_arm_trace),
    QuantizerCase(
        "arm", "tosa_int", _arm("tosa", is_qat=True), QAT_MODELS, True, needs="tosa_serializer", trace=_arm_trace
    ),
    QuantizerCase("arm", "ethos_u55", _arm("ethos-u55"), CONV, needs="tosa_serializer", trace=_arm_trace),
    QuantizerCase("arm", "vgf", _arm("vgf"), ("conv_bn_relu", "attention"), needs="tosa_serializer", trace=_arm_trace),
    QuantizerCase("cortex_m", "default", _cortex_m, CONV + ("ln_gelu_mlp",), needs="tosa_serializer", trace=_arm_trace),
)


@dataclass(frozen=True)
class Unavailable:
    """A backend whose quantizer module does not import here, and the exact error it raises."""

    backend: str
    module: str
    error: type[BaseException]
    message: str
    reason: str


UNAVAILABLE: tuple[Unavailable, ...] = (
    Unavailable(
        "nxp",
        "executorch.backends.nxp.quantizer.neutron_quantizer",
        RuntimeError,
        "eIQ Neutron SDK not found. To install it, run 'examples/nxp/setup.sh'.",
        "eiq_neutron_sdk is NXP's SDK, not on the package index",
    ),
    Unavailable(
        "mediatek",
        "executorch.backends.mediatek.quantizer",
        ModuleNotFoundError,
        "No module named 'mtk_converter'",
        "mtk_converter ships with MediaTek's NeuroPilot SDK, not on the package index",
    ),
    Unavailable(
        "arm",
        "executorch.backends.arm.quantizer",
        ModuleNotFoundError,
        "No module named 'tosa_serializer'",
        "tosa_serializer comes from tosa-tools, which pins numpy<2.2 (and installs top-level `tests`, `runner`, "
        "... packages); not in the test extra",
    ),
    Unavailable(
        "cortex_m",
        "executorch.backends.cortex_m.quantizer.quantizer",
        ModuleNotFoundError,
        "No module named 'tosa_serializer'",
        "imports the Arm backend (tosa_serializer)",
    ),
)


def importable(module: str | None) -> bool:
    """Whether ``module`` imports here (``None``: nothing needed)."""
    if module is None:
        return True
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------------
# the two flows


@dataclass(frozen=True)
class Flow:
    """One library's PT2E entry points."""

    name: str
    prepare: Callable[..., Any]
    prepare_qat: Callable[..., Any]
    convert: Callable[..., Any]
    to_eval: Callable[..., Any]


def torchao_flow() -> Flow:
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

    return Flow("torchao", prepare_pt2e, prepare_qat_pt2e, convert_pt2e, move_exported_model_to_eval)


def pt2q_flow() -> Flow:
    import pt2q

    return Flow("pt2q", pt2q.prepare_pt2e, pt2q.prepare_qat_pt2e, pt2q.convert_pt2e, pt2q.move_exported_model_to_eval)


def export_for(case: QuantizerCase, model: nn.Module, example: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """The ATen graph a flow starts from: exported in train mode for QAT (BatchNorm stays a training op)."""
    import copy

    model = copy.deepcopy(model).train(case.qat)
    if case.trace is not None:
        return case.trace(model, example, case.qat)
    return torch.export.export(model, example).module()


def quantize(
    flow: Flow, case: QuantizerCase, model_name: str, calibration: int = 3, seed: int = 0
) -> torch.fx.GraphModule:
    """Export, prepare (PTQ or QAT) with a freshly built quantizer, run ``calibration`` batches, convert."""
    model, example = make_model(model_name, seed)
    gm = export_for(case, model, example)
    quantizer = case.build()
    with pattern_memo():
        prepared = (flow.prepare_qat if case.qat else flow.prepare)(gm, quantizer)
    with torch.no_grad():
        for batch in model_batches(model_name, calibration, seed=seed + 1):
            prepared(*batch)
    if case.qat:
        flow.to_eval(prepared)
    return flow.convert(prepared)


QDQ_NAMESPACES = ("quantized_decomposed", "torchao", "pt2q")


def _value(gm: torch.fx.GraphModule, arg: Any) -> Any:
    if isinstance(arg, torch.fx.Node):
        if arg.op == "get_attr":
            value: Any = gm
            for part in str(arg.target).split("."):
                value = getattr(value, part)
            if isinstance(value, torch.Tensor):
                return ("tensor", value.dtype, tuple(value.shape), tuple(value.flatten().tolist()))
        return ("node", arg.op)
    if isinstance(arg, (list, tuple)):
        return tuple(_value(gm, a) for a in arg)
    return arg


def qdq_signature(gm: torch.fx.GraphModule) -> dict[tuple, int]:
    """Multiset of the graph's quantize / dequantize / choose_qparams calls: op and every non-input argument
    (scales, zero points, ranges, dtypes, axes, blocks; constant tensors by value)."""
    sig: dict[tuple, int] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or str(node.target).split(".")[0] not in QDQ_NAMESPACES:
            continue
        key = (str(node.target), *(_value(gm, a) for a in node.args[1:]), *sorted(node.kwargs.items()))
        sig[key] = sig.get(key, 0) + 1
    return sig


def op_counts(sig: dict[tuple, int]) -> dict[str, int]:
    """Per Q/DQ op, how many calls a signature holds."""
    counts: dict[str, int] = {}
    for key, n in sig.items():
        counts[key[0]] = counts.get(key[0], 0) + n
    return counts
