"""X86InductorQuantizer (oracle: torchao's) and the x86 lowerings (oneDNN int8 through Inductor)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn as nn

import pt2q
from pt2q.fake_quant.fake_quantize import FusedMovingAvgObsFakeQuantize
from pt2q.lowering import compile_quantized_for_x86, lower_pt2e_quantized_to_x86
from pt2q.numerics.metrics import sqnr
from pt2q.observer import HistogramObserver, PerChannelMinMaxObserver, PlaceholderObserver
from pt2q.quantizers import (
    X86InductorQuantizer,
    cpu_capability,
    get_default_x86_inductor_quantization_config,
    x86_inductor,
)
from tests.helpers import annotation_summary, export_module, pt2q_flow, qdq_signature, run_flow, torchao_flow
from tests.zoo import ZOO, calibration_batches, make

xiq = pytest.importorskip("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")

REPO = Path(__file__).resolve().parents[1]

# Both quantizers get the same reduce_range: what this CPU needs.
REDUCE_RANGE = cpu_capability.default_reduce_range()


def ours(**kwargs):
    return get_default_x86_inductor_quantization_config(reduce_range=REDUCE_RANGE, **kwargs)


def theirs(**kwargs):
    return xiq.get_default_x86_inductor_quantization_config(reduce_range=REDUCE_RANGE, **kwargs)


# --- extra models: every x86 pattern, written with modules so torchao matches them too --------


class ConvUnaries(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6()
        self.c2, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.Hardswish()
        self.pool = nn.AvgPool2d(2)
        self.c3, self.a3 = nn.Conv2d(8, 8, 3, padding=1), nn.SiLU()
        self.c4, self.relu = nn.Conv2d(8, 8, 1), nn.ReLU()
        self.c5 = nn.Conv2d(8, 8, 1)
        self.mp = nn.MaxPool2d(2)

    def forward(self, x):
        y = self.pool(self.a2(self.c2(self.a1(self.c1(x)))))
        y = self.a3(self.c3(y))
        y = self.relu(self.c4(y) + y)  # conv + add + relu
        y = self.c5(y) + y  # conv + add
        return torch.flatten(self.mp(y), 1)  # flatten feeding nothing quantizable stays float


class LinearUnaries(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.a1 = nn.Linear(16, 32), nn.GELU()
        self.fc2, self.a2 = nn.Linear(32, 32), nn.Tanh()
        self.fc3, self.a3 = nn.Linear(32, 32), nn.LeakyReLU(0.1)
        self.fc4, self.relu = nn.Linear(32, 32), nn.ReLU()
        self.fc5, self.fc6 = nn.Linear(32, 32), nn.Linear(32, 8)

    def forward(self, x):
        y = self.a3(self.fc3(self.a2(self.fc2(self.a1(self.fc1(x))))))
        z = self.relu(self.fc4(y) + y)  # linear + add + relu
        z = self.fc5(z) + y  # linear + add
        return self.fc6(z * y)  # mul


class QATBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1, self.r1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.c2, self.b2, self.r2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.c3, self.b3, self.a3 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish()
        self.c4, self.b4 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.c5, self.b5 = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.mp = nn.MaxPool2d(2)

    def forward(self, x):
        y = self.r1(self.b1(self.c1(x)))
        y = self.r2(self.b2(self.c2(y)) + y)  # conv + bn + add + relu
        y = self.a3(self.b3(self.c3(y)))  # conv + bn + unary
        y = self.b4(self.c4(y)) + y  # conv + bn + add
        return self.mp(self.b5(self.c5(y)))  # conv + bn


def _make_extra(factory: Callable[[], nn.Module], shape: tuple[int, ...]):
    torch.manual_seed(0)
    return factory().eval(), (torch.randn(*shape),)


# Setups applied to both quantizers: (quantizer, config) -> quantizer
SETUPS: dict[str, Callable] = {
    "global": lambda q, c: q.set_global(c),
    "matmul_opt_in": lambda q, c: q.set_global(c).set_function_type_qconfig(torch.matmul, c),
    "module_name_float": lambda q, c: q.set_global(c).set_module_name_qconfig("fc2", None),
    "module_name_only": lambda q, c: q.set_module_name_qconfig("fc2", c),
    "module_type_float": lambda q, c: q.set_global(c).set_module_type_qconfig(nn.Linear, None),
    "features_only": lambda q, c: q.set_module_name_qconfig("features", c),
}
CASES = {  # name -> (model and example, setup)
    "conv_unaries": (lambda: _make_extra(ConvUnaries, (2, 3, 16, 16)), "global"),
    "linear_unaries": (lambda: _make_extra(LinearUnaries, (4, 16)), "global"),
    "attention+matmul": (lambda: make("attention"), "matmul_opt_in"),
    "mlp fc2 float": (lambda: make("mlp"), "module_name_float"),
    "mlp fc2 only": (lambda: make("mlp"), "module_name_only"),
    "stack linear float": (lambda: make("conv_bn_relu_stack"), "module_type_float"),
    "stack features only": (lambda: make("conv_bn_relu_stack"), "features_only"),
}


def _assert_same(ours_gm, theirs_gm, example) -> None:
    sig = qdq_signature(ours_gm)
    assert sum(sig.values()) > 0, "nothing was quantized"
    assert sig == qdq_signature(theirs_gm)
    for x in calibration_batches(example, n=2, seed=7):
        torch.testing.assert_close(ours_gm(*x), theirs_gm(*x), rtol=0, atol=0)


@pytest.fixture(scope="module")
def zoo_converted():
    """name -> (float model, example, pt2q-converted model), built once per name."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            model, example = make(name)
            q = X86InductorQuantizer().set_global(ours())
            cache[name] = (model, example, pt2q_flow(q, model, example, calibration_batches(example)))
        return cache[name]

    return get


# --- config -------------------------------------------------------------------------------


def test_default_config_specs() -> None:
    config = get_default_x86_inductor_quantization_config(reduce_range=False)
    act, weight = config.input_activation, config.weight
    assert (act.dtype, act.quant_min, act.quant_max, act.qscheme) == (torch.uint8, 0, 255, torch.per_tensor_affine)
    assert config.output_activation == act and config.bias is None and not config.is_qat
    assert isinstance(act.observer_or_fake_quant_ctr(), HistogramObserver)
    assert (weight.dtype, weight.quant_min, weight.quant_max) == (torch.int8, -128, 127)
    assert (weight.qscheme, weight.ch_axis) == (torch.per_channel_symmetric, 0)
    assert isinstance(weight.observer_or_fake_quant_ctr(), PerChannelMinMaxObserver)
    assert get_default_x86_inductor_quantization_config(reduce_range=True).input_activation.quant_max == 127
    assert get_default_x86_inductor_quantization_config(reduce_range=False) is config

    dynamic = get_default_x86_inductor_quantization_config(is_dynamic=True, reduce_range=False).input_activation
    assert dynamic.is_dynamic and isinstance(dynamic.observer_or_fake_quant_ctr(), PlaceholderObserver)
    qat = get_default_x86_inductor_quantization_config(is_qat=True, reduce_range=False)
    assert qat.is_qat and isinstance(qat.weight.observer_or_fake_quant_ctr(), FusedMovingAvgObsFakeQuantize)


def test_reduce_range_defaults_to_the_cpu(monkeypatch) -> None:
    monkeypatch.setattr(x86_inductor, "cpu_has_vnni", lambda: False)
    monkeypatch.setattr(x86_inductor, "_warned_saturating", False)
    assert get_default_x86_inductor_quantization_config().input_activation.quant_max == 127
    with pytest.warns(UserWarning, match="without VNNI"):
        forced = get_default_x86_inductor_quantization_config(reduce_range=False)
    assert forced.input_activation.quant_max == 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once is enough
        get_default_x86_inductor_quantization_config(reduce_range=False)

    monkeypatch.setattr(x86_inductor, "cpu_has_vnni", lambda: True)
    assert get_default_x86_inductor_quantization_config().input_activation.quant_max == 255


@pytest.mark.parametrize(
    "flags, isa_cap, expected",
    [
        ({"avx2", "avx512_vnni"}, "", True),
        ({"avx2", "avx_vnni"}, "", True),
        ({"avx2", "amx_int8"}, "", True),
        ({"avx2", "avx512_f"}, "", False),
        ({"avx2", "avx512_vnni"}, "AVX2", False),
        ({"avx2", "avx512_vnni"}, "avx512_core", False),
        ({"avx2", "avx512_vnni"}, "AVX2_VNNI", False),
        ({"avx2", "avx_vnni"}, "AVX2_VNNI", True),
        ({"avx2", "avx512_vnni"}, "AVX512_CORE_VNNI", True),
    ],
)
def test_vnni_detection(monkeypatch, flags: set, isa_cap: str, expected: bool) -> None:
    monkeypatch.setattr(cpu_capability, "cpu_flags", lambda: flags)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa_cap)
    cpu_capability.cpu_has_vnni.cache_clear()
    try:
        assert cpu_capability.cpu_has_vnni() is expected
    finally:
        cpu_capability.cpu_has_vnni.cache_clear()


def test_config_setters_refuse_what_they_cannot_do() -> None:
    q = X86InductorQuantizer().set_global(ours())
    with pytest.warns(UserWarning, match="cannot set a config"):
        q.set_function_type_qconfig(torch.sigmoid, ours())
    with pytest.warns(UserWarning, match="Mixed QAT"):
        q.set_module_name_qconfig("fc1", ours(is_qat=True))
    with pytest.warns(UserWarning, match="Mixed dynamic"):
        q.set_module_type_qconfig(nn.Linear, ours(is_dynamic=True))
    assert q.module_name_qconfig == {} and q.operator_type_qconfig == {}
    q.set_module_type_qconfig(nn.Linear, None).set_function_type_qconfig(torch.ops.aten.matmul.default, ours())
    assert q.operator_type_qconfig == {torch.ops.aten.linear.default: None, torch.ops.aten.matmul.default: ours()}


# --- oracle: torchao's X86InductorQuantizer ----------------------------------------------------

# torchao matches patterns by the module/function that produced them; pt2q by operator.
# These zoo models use forms only pt2q recognises (F.conv2d/F.linear on parameters, conv1d + F.relu):
# pt2q quantizes everything torchao does, and more.
PT2Q_QUANTIZES_MORE = {"functional": 6, "conv1d": 3}


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_matches_torchao(name: str, zoo_converted) -> None:
    model, example, converted = zoo_converted(name)
    quantizer = xiq.X86InductorQuantizer().set_global(theirs())
    if name == "residual":  # self.relu is called twice: torchao's source partitions cannot cope
        with pytest.raises(ValueError, match="more than one output node"):
            torchao_flow(quantizer, model, example, calibration_batches(example))
        add = next(n for n in converted.graph.nodes if n.target == torch.ops.aten.add.Tensor)
        conv, residual = add.args
        assert conv.target == torch.ops.aten.conv2d.default
        assert "dequantize_per_tensor" in str(residual.target), "conv + add: the residual is int8 too"
        return
    reference = torchao_flow(quantizer, model, example, calibration_batches(example))
    if name in PT2Q_QUANTIZES_MORE:
        extra = qdq_signature(converted)
        extra.subtract(qdq_signature(reference))
        assert min(extra.values()) >= 0 and sum(extra.values()) == PT2Q_QUANTIZES_MORE[name]
        return
    _assert_same(converted, reference, example)


@pytest.mark.parametrize("case", list(CASES))
def test_patterns_and_scopes_match_torchao(case: str) -> None:
    build, setup = CASES[case]
    model, example = build()
    batches = calibration_batches(example)
    converted = pt2q_flow(SETUPS[setup](X86InductorQuantizer(), ours()), model, example, batches)
    reference = torchao_flow(SETUPS[setup](xiq.X86InductorQuantizer(), theirs()), model, example, batches)
    _assert_same(converted, reference, example)


def test_qat_annotations_match_torchao() -> None:
    # torchao's QAT convert costs ~40 s, so compare what both quantizers annotate on the training graph
    model, example = _make_extra(QATBlock, (2, 3, 8, 8))
    ours_gm = X86InductorQuantizer().set_global(ours(is_qat=True)).annotate(export_module(model.train(), example))
    theirs_gm = (
        xiq.X86InductorQuantizer().set_global(theirs(is_qat=True)).annotate(export_module(model.train(), example))
    )
    summary = annotation_summary(ours_gm)
    assert summary == annotation_summary(theirs_gm)
    assert {"conv2d", "add", "hardswish", "max_pool2d"} <= set(summary)

    converted = run_flow(
        pt2q.prepare_qat_pt2e,
        pt2q.convert_pt2e,
        X86InductorQuantizer().set_global(ours(is_qat=True)),
        model.train(),
        example,
        calibration_batches(example),
    )
    pt2q.move_exported_model_to_eval(converted)
    lowered = lower_pt2e_quantized_to_x86(converted, example)
    assert sum(str(n.target).startswith("onednn.qconv") for n in lowered.graph.nodes) == 5
    with torch.no_grad():
        assert sqnr(converted(*example), lowered(*example)) > 30


def test_dynamic_matches_torchao() -> None:
    model, example = make("mlp")
    batches = calibration_batches(example)
    converted = pt2q_flow(X86InductorQuantizer().set_global(ours(is_dynamic=True)), model, example, batches)
    reference = torchao_flow(xiq.X86InductorQuantizer().set_global(theirs(is_dynamic=True)), model, example, batches)
    assert any("choose_qparams" in key[0] for key in qdq_signature(converted))
    _assert_same(converted, reference, example)


# --- FX-level lowering: lower_pt2e_quantized_to_x86 ------------------------------------------------

ONEDNN_QOPS = ("onednn.qconv", "onednn.qlinear")


@pytest.mark.parametrize("name", list(ZOO))
def test_fx_lowering_runs_onednn_int8_with_qdq_accuracy(name: str, zoo_converted) -> None:
    model, example, converted = zoo_converted(name)
    lowered = lower_pt2e_quantized_to_x86(converted, example)
    targets = [str(n.target) for n in lowered.graph.nodes if n.op == "call_function"]
    # one oneDNN int8 kernel per quantized weight: nothing runs in fp32 on dequantized weights
    weights = sum("dequantize_per_channel" in str(n.target) for n in converted.graph.nodes)
    assert weights > 0 and sum(t.startswith(ONEDNN_QOPS) for t in targets) == weights
    assert not any("dequantize_per_channel" in t for t in targets)
    for x in calibration_batches(example, n=2, seed=7):
        before = x[0].clone()
        with torch.no_grad():
            out, ref, expected = lowered(*x), converted(*x), model(*x)
        assert torch.equal(x[0], before), "the lowered model wrote into its input"
        assert sqnr(expected, out) > sqnr(expected, ref) - 1.0


def test_fx_lowering_3d_linears_and_residual_adds(zoo_converted) -> None:
    _, example, converted = zoo_converted("attention")
    lowered = lower_pt2e_quantized_to_x86(converted, example)
    qlinears = [n for n in lowered.graph.nodes if str(n.target).startswith("onednn.qlinear_pointwise")]
    assert len(qlinears) == 4  # qkv, proj (+ residual add), ff1 (+ relu), ff2 (+ residual add)
    assert any("binary" in str(n.target) for n in qlinears)  # a residual add went into the kernel


# --- torch.compile lowering: compile_quantized_for_x86 ---------------------------------------------

COMPILED = ["conv_bn_relu_stack", "residual", "attention"]
FP32_KERNELS = (
    "extern_kernels.convolution",
    "mkldnn._convolution_pointwise",
    "extern_kernels.addmm",
    "extern_kernels.mm",
    "mkl_linear",
    "_linear_pointwise",
)


def _without_comments(codes: list[str]) -> str:
    """Generated code minus comments (which name the original graph nodes)."""
    return "\n".join(line for code in codes for line in code.splitlines() if not line.lstrip().startswith("#"))


@pytest.fixture(scope="module")
def compiled_zoo(zoo_converted):
    """name -> (float model, example, converted, compiled model, generated code) for COMPILED."""
    from torch._inductor.utils import run_and_get_code

    assert not torch._inductor.config.freezing
    results = {}
    # importing torchao's quantizer installs its own pre-grad pass globally; pt2q must not need it
    with torch._inductor.config.patch(pre_grad_custom_pass=None):
        for name in COMPILED:
            model, example, converted = zoo_converted(name)
            compiled = compile_quantized_for_x86(converted)
            # run_and_get_code resets dynamo first: the compiled model must bring its own freezing
            _, code = run_and_get_code(compiled, *example)
            results[name] = (model, example, converted, compiled, _without_comments(code))
    assert not torch._inductor.config.freezing, "the global Inductor config must be left alone"
    return results


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_code_calls_onednn_int8_kernels(name: str, compiled_zoo) -> None:
    code = compiled_zoo[name][4]
    assert "torch.ops.onednn.qconv" in code or "torch.ops.onednn.qlinear_pointwise" in code
    assert "dequantize_per_channel" not in code
    assert not [k for k in FP32_KERNELS if k in code], "fp32 conv/linear on dequantized tensors"


def test_compiled_attention_fuses_3d_linears(compiled_zoo) -> None:
    code = compiled_zoo["attention"][4]
    assert code.count("torch.ops.onednn.qlinear_pointwise") >= 4
    assert "qlinear_pointwise.binary" in code  # the residual adds went into the kernels


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_model_accuracy_and_inputs(name: str, compiled_zoo) -> None:
    model, example, converted, compiled, _ = compiled_zoo[name]
    for x in calibration_batches(example, n=2, seed=7):
        before = x[0].clone()
        out = compiled(*x)
        assert torch.equal(x[0], before), "the compiled model wrote into its input"
        torch.testing.assert_close(compiled(*x), out, rtol=0, atol=0)
        with torch.no_grad():
            ref, expected = converted(*x), model(*x)
        assert sqnr(expected, out) > sqnr(expected, ref) - 1.0


def test_compiled_model_validates_each_input_signature_once(compiled_zoo) -> None:
    """The module's input checks (pre-hooks of ExportedProgram.module()) run once per new
    input signature, not on every call; a bad input still gets the module's own error."""
    _, example, converted, compiled, _ = compiled_zoo["conv_bn_relu_stack"]
    calls = []
    handle = converted.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape))
    try:
        for x in calibration_batches(example, n=3, seed=3):
            compiled(*x)
        assert len(calls) <= 1, calls  # not once per call (the fixture's run may have validated it)
        calls.clear()
        for _ in range(2):  # a shape the static export rejects: the module's own error, every time
            with pytest.raises(Exception, match="input|shape|dim|size"):
                compiled(torch.randn(2, 5))
        assert len(calls) == 2
    finally:
        handle.remove()


def _generated_code(fn: Callable, *args) -> tuple[object, str]:
    """Run ``fn`` and return what Inductor generated meanwhile (without resetting dynamo)."""
    from torch._inductor.graph import GraphLowering

    codes: list[str] = []
    with mock.patch.object(GraphLowering, "save_output_code", codes.append):
        out = fn(*args)
    return out, _without_comments(codes)


def test_compiled_model_survives_strict_export(compiled_zoo) -> None:
    _, example, _, compiled, _ = compiled_zoo["conv_bn_relu_stack"]
    expected = compiled(*example)
    torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),), strict=True)  # resets dynamo's caches
    out, code = _generated_code(compiled, *example)
    assert "torch.ops.onednn.qconv_pointwise" in code  # recompiled, and int8 again
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


# --- a CPU without VNNI: oneDNN capped at AVX2 in a subprocess ------------------------------------

_NO_VNNI_SCRIPT = textwrap.dedent(
    """
    import json, warnings, torch
    from pt2q.lowering import lower_pt2e_quantized_to_x86
    from pt2q.quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
    from pt2q.quantizers.cpu_capability import cpu_has_vnni
    from tests.helpers import pt2q_flow
    from tests.zoo import calibration_batches, make

    from pt2q.numerics.metrics import sqnr

    model, example = make("mlp")
    result = {"vnni": cpu_has_vnni()}
    for key, reduce_range in (("default", None), ("forced", False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config = get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
        converted = pt2q_flow(X86InductorQuantizer().set_global(config), model, example, calibration_batches(example))
        lowered = lower_pt2e_quantized_to_x86(converted, example)
        x = calibration_batches(example, n=1, seed=7)[0]
        with torch.no_grad():
            result[key] = {
                "quant_max": config.input_activation.quant_max,
                "warned": any("VNNI" in str(w.message) for w in caught),
                "qdq": sqnr(model(*x), converted(*x)),
                "lowered": sqnr(model(*x), lowered(*x)),
            }
    print(json.dumps(result))
    """
)


@pytest.mark.skipif(not cpu_capability.cpu_flags() >= {"avx2"}, reason="needs an AVX2 CPU")
def test_without_vnni_reduce_range_keeps_lowered_accuracy() -> None:
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", _NO_VNNI_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["vnni"] is False
    default, forced = result["default"], result["forced"]
    assert default["quant_max"] == 127 and not default["warned"]
    assert default["lowered"] > default["qdq"] - 1.0
    # what the default avoids: full-range uint8 saturates in the AVX2 kernels
    assert forced["quant_max"] == 255 and forced["warned"]
    assert forced["lowered"] < forced["qdq"] - 6.0


# --- the speed benchmark's table (no timing asserted) -----------------------------------------------


def test_speed_table_reports_speedups_over_fp32_eager() -> None:
    from benchmarks.speed import BASELINE, markdown_table
    from pt2q.runtime.timing import interleaved_medians_ms

    table = markdown_table(
        {
            "net": {BASELINE: 10.0, "pt2q int8 (x86)": 2.5},
            "encoder": {BASELINE: 8.0, "ExecuTorch pt2q_int8": 4.0},
        }
    )
    assert table.splitlines() == [
        "| model | fp32 eager | pt2q int8 (x86) | ExecuTorch pt2q_int8 |",
        "|---|---|---|---|",
        "| net | 10.00 ms (1.00x) | 2.50 ms (4.00x) | – |",
        "| encoder | 8.00 ms (1.00x) | – | 4.00 ms (2.00x) |",
    ]
    calls: list[str] = []
    medians = interleaved_medians_ms(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, (), runs=4, warmup=1
    )
    assert set(medians) == {"a", "b"} and calls.count("a") == calls.count("b") == 5
