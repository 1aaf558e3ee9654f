"""Edge deployment: composed quantization -> ExecuTorch .pte (XNNPACK + quantized kernels) -> runtime.

Numerics of the runtime against the Q/DQ reference ``GraphModule``:

* ExecuTorch's quantized embedding kernels (``embedding_byte``, ``embedding_4bit``)
  and the portable kernels reproduce the reference bit for bit.
* XNNPACK requantizes in integer arithmetic where the reference computes in float
  and rounds once, so an output code can be off by one step. In the CNN that is
  all there is (<= 1 output step). In the language model the off-by-one codes
  also flow through layer norm, softmax and GELU and then requantize again, so
  the tolerance is <= 3 output steps, SQNR >= 30 dB against the reference, and
  the same accuracy against the float model as the reference has (within 1 dB).
* pt2q's .pte and torchao's .pte (torchao flow with ExecuTorch's XNNPACKQuantizer)
  run the same integer program: their outputs are identical.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("executorch.exir")

import pt2q
import pt2q.runtime as runtime
from pt2q.io.digest import verify_trailer
from pt2q.lowering import (
    LoweringError,
    QuantizedFallbackWarning,
    UnsupportedQuantizedPatternError,
    to_executorch,
)
from pt2q.lowering.delegation_report import PORTABLE, QUANTIZED_KERNEL, XNNPACK
from pt2q.quantizer import QuantizationAnnotation, Quantizer
from pt2q.quantizers import XNNPACKQuantizer, get_annotator, get_symmetric_quantization_config
from pt2q.quantizers.embedding import EmbeddingQuantizer
from tests.helpers import export_module, pt2q_flow, torchao_flow

VOCAB, DIM, SEQ = 1024, 256, 32


class Block(nn.Module):
    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        y = self.ln1(x)
        q, k, v = (
            p(y).reshape(b, t, h, d // h).transpose(1, 2).reshape(b * h, t, d // h) for p in (self.q, self.k, self.v)
        )
        att = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * (d // h) ** -0.5, dim=-1)
        y = torch.bmm(att, v).reshape(b, h, t, d // h).transpose(1, 2).reshape(b, t, d)
        x = x + self.o(y)
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class TinyLM(nn.Module):
    """Token embedding, two transformer blocks, linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.blocks = nn.Sequential(Block(DIM), Block(DIM))
        self.ln = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, idx):
        return self.head(self.ln(self.blocks(self.emb(idx))))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()

        def cbr(cin, cout, stride=1):
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*cbr(3, 32), nn.MaxPool2d(2), *cbr(32, 64), *cbr(64, 128, 2), *cbr(128, 128))
        self.fc = nn.Linear(128, 10)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


def _tokens(seed: int) -> tuple[torch.Tensor]:
    return (torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(seed)),)


def _image(seed: int) -> tuple[torch.Tensor]:
    return (torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed)),)


def _composed() -> pt2q.ComposableQuantizer:
    return pt2q.ComposableQuantizer(
        [
            EmbeddingQuantizer(),
            XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
        ]
    )


@dataclasses.dataclass
class Case:
    model: nn.Module
    make_input: object
    reference: torch.fx.GraphModule
    int8: object
    fp32: object
    program: runtime.Program

    @property
    def output_step(self) -> float:
        out = next(n for n in self.reference.graph.nodes if n.op == "output").args[0][0]
        assert out.target is torch.ops.quantized_decomposed.dequantize_per_tensor.default
        return float(out.args[1])


def _case(model: nn.Module, make_input) -> Case:
    torch.manual_seed(0)
    model = model.eval()
    example = make_input(0)
    reference = pt2q_flow(_composed(), model, example, [make_input(s) for s in range(1, 5)])
    int8 = to_executorch(reference, example)
    fp32 = to_executorch(torch.export.export(model, example))
    return Case(model, make_input, reference, int8, fp32, runtime.load(int8.buffer))


@pytest.fixture(scope="module")
def lm() -> Case:
    return _case(TinyLM(), _tokens)


@pytest.fixture(scope="module")
def cnn() -> Case:
    torch.manual_seed(0)
    model = SmallCNN()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return _case(model, _image)


# --- size ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lm", "cnn"])
def test_pte_is_at_most_027_of_fp32(name: str, request) -> None:
    case = request.getfixturevalue(name)
    assert case.int8.size <= 0.27 * case.fp32.size, (case.int8.size, case.fp32.size)


# --- delegation report -----------------------------------------------------------


def test_lm_report(lm: Case) -> None:
    report = lm.int8.report
    rows = {r.source: r for r in report.rows}
    assert report.int8_weight_share == 1.0
    assert report.weight_bytes == {"uint8": VOCAB * DIM, "int8": 2 * (4 * DIM * DIM + 8 * DIM * DIM) + DIM * VOCAB}
    linears = [r for r in report.rows if r.op == "aten.linear"]
    assert len(linears) == 13
    assert all(r.runs_on == XNNPACK and r.precision == "int8" and r.weight_dtype == torch.int8 for r in linears)
    (lookup,) = [r for r in report.rows if r.is_weighted and r.op != "aten.linear"]
    assert (lookup.op, lookup.runs_on, lookup.weight_dtype, lookup.weight_bytes) == (
        "quantized_decomposed.embedding_byte",
        QUANTIZED_KERNEL,
        torch.uint8,
        VOCAB * DIM,
    )
    portable = sorted(r.source for r in report.rows if r.runs_on == PORTABLE)
    assert portable == ["layer_norm", "layer_norm_1", "layer_norm_2", "layer_norm_3", "layer_norm_4"]
    assert all(rows[name].precision == "fp32" for name in portable)
    assert rows["gelu"].runs_on == XNNPACK and rows["add"].precision == "int8"
    assert not report.fallbacks
    assert report.share(XNNPACK) + report.share(QUANTIZED_KERNEL) + report.share(PORTABLE) == pytest.approx(1.0)
    assert report.share(XNNPACK) > 0.85


def test_cnn_report(cnn: Case) -> None:
    report = cnn.int8.report
    assert report.share(XNNPACK) == 1.0 and report.int8_op_share == 1.0
    weighted = report.weighted_ops
    assert [r.op for r in weighted] == ["aten.convolution"] * 4 + ["aten.linear"]
    assert all(r.weight_dtype == torch.int8 for r in weighted)
    assert report.int8_weight_share == 1.0
    assert sum(r.weight_bytes for r in weighted) == sum(
        m.weight.numel() for m in cnn.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    )


def test_fp32_report_and_table(cnn: Case) -> None:
    report = cnn.fp32.report
    assert report.int8_weight_share == 0.0 and report.int8_op_share == 0.0
    assert set(report.weight_bytes) == {"float32"}
    table = str(cnn.int8.report)
    assert table.startswith("| node | source | op | runs on | precision | weight |")
    assert "| conv2d | aten.convolution | XNNPACK | int8 | 864 B int8 |" in table
    assert "100% of linear/conv/embedding weight bytes in int8" in table.splitlines()[-1]


# --- numerics ----------------------------------------------------------------------


def test_cnn_runtime_matches_reference(cnn: Case) -> None:
    exact = total = 0
    for seed in range(10, 16):
        result = runtime.compare(cnn.program, cnn.reference, *_image(seed))
        assert result.max_abs_diff <= cnn.output_step * 1.0001, result
        exact += result.numel - result.mismatched
        total += result.numel
    assert exact / total >= 0.8


def test_lm_runtime_within_tolerance(lm: Case) -> None:
    for seed in range(10, 13):
        x = _tokens(seed)
        result = runtime.compare(lm.program, lm.reference, *x)
        assert result.max_abs_diff <= 3 * lm.output_step * 1.0001, result
        assert result.sqnr_db >= 30, result
        with torch.no_grad():
            float_out = lm.model(*x)
            reference_acc = runtime.compare_outputs(lm.reference(*x), float_out).sqnr_db
        assert runtime.compare_outputs(lm.program(*x), float_out).sqnr_db >= reference_acc - 1.0


def test_pt2q_pte_equals_torchao_pte(cnn: Case) -> None:
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as et_xnnpack

    theirs = torchao_flow(
        et_xnnpack.XNNPACKQuantizer().set_global(et_xnnpack.get_symmetric_quantization_config(is_per_channel=True)),
        cnn.model,
        _image(0),
        [_image(s) for s in range(1, 5)],
    )
    their_program = runtime.load(to_executorch(theirs, _image(0)).buffer)
    for seed in range(10, 13):
        x = _image(seed)
        assert runtime.compare(cnn.program, their_program, *x).bit_exact


@pytest.mark.parametrize(
    "bits, kernel", [(8, "quantized_decomposed.embedding_byte"), (4, "quantized_decomposed.embedding_4bit")]
)
def test_embedding_kernels_are_bit_exact(bits: int, kernel: str) -> None:
    torch.manual_seed(0)
    table = nn.Embedding(200, 32).eval()
    example = (torch.randint(0, 200, (3, 7)),)
    reference = pt2q_flow(EmbeddingQuantizer(bits=bits), table, example, [example])
    lowered = to_executorch(reference, example)
    (row,) = lowered.report.rows
    assert (row.op, row.runs_on, row.precision) == (kernel, QUANTIZED_KERNEL, "int8" if bits == 8 else "int4")
    assert row.weight_bytes == 200 * 32 * bits // 8 and row.weight_dtype == torch.uint8
    program = runtime.load(lowered.buffer)
    for seed in range(3):
        x = (torch.randint(0, 200, (3, 7), generator=torch.Generator().manual_seed(seed)),)
        assert runtime.compare(program, reference, *x).bit_exact


# --- artifacts ---------------------------------------------------------------------


def test_save_and_load_both_artifacts(cnn: Case, tmp_path) -> None:
    pt2_path, pte_path = cnn.int8.save_all(tmp_path, "cnn")
    assert verify_trailer(pte_path.read_bytes()) == (cnn.int8.buffer, True)  # the program, then its digest
    x = _image(20)
    for reloaded in (torch.export.load(str(pt2_path)), pt2q.load_pt2(pt2_path)):  # torch reads the sealed file too
        torch.testing.assert_close(reloaded.module()(*x), cnn.reference(*x), rtol=0, atol=0)
    from_file = runtime.load(pte_path)
    assert runtime.compare(from_file, cnn.program, *x).bit_exact
    assert isinstance(cnn.program(*x), torch.Tensor) and cnn.program(*x).shape == (1, 10)
    timing = runtime.time_program(from_file, *x, runs=5, warmup=1)
    assert timing.runs == 5 and timing.threads == runtime.get_num_threads() and timing.min_ms <= timing.median_ms
    # resizing the thread pool under loaded programs would leave them dangling (a crash on the next run)
    with pytest.raises(RuntimeError, match="must come before loading programs"):
        runtime.set_num_threads(runtime.get_num_threads() + 1)


# --- errors --------------------------------------------------------------------------


def test_corrupt_and_truncated_pte(cnn: Case, tmp_path) -> None:
    with pytest.raises(runtime.ProgramLoadError, match="not an ExecuTorch program"):
        runtime.load(b"definitely not a flatbuffer" * 4)
    with pytest.raises(runtime.ProgramLoadError, match=r"truncated ExecuTorch program: its header says \d+ bytes"):
        runtime.load(cnn.int8.buffer[: cnn.int8.size // 2])
    damaged = bytearray(cnn.int8.buffer)
    damaged[-64:] = bytes(64)  # the delegate's weights are at the end
    with pytest.raises(runtime.ProgramLoadError, match="could not"):
        runtime.load(bytes(damaged))
    with pytest.raises(runtime.ProgramLoadError, match="no .pte file"):
        runtime.load(tmp_path / "missing.pte")


def test_wrong_inputs(cnn: Case, lm: Case) -> None:
    with pytest.raises(runtime.InputMismatchError, match=r"must have shape \(1, 3, 32, 32\), got \(1, 3, 64, 64\)"):
        cnn.program(torch.randn(1, 3, 64, 64))
    with pytest.raises(runtime.InputMismatchError, match="dtype torch.float32, got torch.float64"):
        cnn.program(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(runtime.InputMismatchError, match="takes 1 input"):
        cnn.program(*_image(0), *_image(1))
    with pytest.raises(runtime.InputMismatchError, match="dtype torch.int64, got torch.int32"):
        lm.program(torch.zeros(1, SEQ, dtype=torch.int32))
    with pytest.raises(runtime.InputMismatchError, match=r"failed to run on inputs of shape \(1, 16\)"):
        lm.program(torch.zeros(1, SEQ // 2, dtype=torch.int64))


def test_lowering_a_prepared_model_is_an_error() -> None:
    model, example = SmallCNN().eval(), _image(0)
    prepared = pt2q.prepare_pt2e(export_module(model, example), _composed())
    prepared(*example)
    with pytest.raises(LoweringError, match="prepared but never converted"):
        to_executorch(prepared, example)
    with pytest.raises(LoweringError, match="needs example_inputs"):
        to_executorch(pt2q.convert_pt2e(prepared))


class PoolWithOwnQParams(Quantizer):
    """A broken quantizer: max_pool2d's output gets its own observer instead of sharing its input's."""

    def annotate(self, model):
        config = get_symmetric_quantization_config()
        get_annotator("conv")(model, config)
        for node in model.graph.nodes:
            if node.target is torch.ops.aten.max_pool2d.default:
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    {node.args[0]: config.input_activation}, config.output_activation, _annotated=True
                )
        return model

    def validate(self, model) -> None:
        pass


class ConvPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return F.max_pool2d(self.conv(x), 2)


def test_broken_shared_qparams_are_reported_at_lowering_time() -> None:
    torch.manual_seed(0)
    x = (torch.randn(1, 3, 16, 16),)
    reference = pt2q_flow(PoolWithOwnQParams(), ConvPool().eval(), x, [x])
    with pytest.raises(UnsupportedQuantizedPatternError, match=r"'max_pool2d' \(aten.max_pool2d\): scale="):
        to_executorch(reference, x)


def test_quantized_patterns_outside_the_delegate_warn() -> None:
    torch.manual_seed(0)
    x = (torch.randn(1, 3, 16, 16),)
    reference = pt2q_flow(XNNPACKQuantizer().set_global(get_symmetric_quantization_config()), ConvPool().eval(), x, [x])
    with pytest.warns(QuantizedFallbackWarning, match=r"'conv2d' \(aten.convolution\)"):
        lowered = to_executorch(reference, x, delegate=False)
    assert {r.source for r in lowered.report.fallbacks} == {"conv2d", "max_pool2d"}
    assert lowered.report.share(XNNPACK) == 0.0
    assert runtime.compare(runtime.load(lowered.buffer), reference, *x).bit_exact  # portable kernels = reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(LoweringError, match="not taken by the delegate"):
            to_executorch(reference, x, delegate=False, strict=True)


def test_loading_and_running_never_unpickles(cnn: Case, tmp_path, monkeypatch) -> None:
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading or running a .pte")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    path = cnn.int8.save(tmp_path / "cnn.pte")
    x = _image(21)
    assert runtime.compare(runtime.load(path), cnn.program, *x).bit_exact
