"""EmbeddingQuantizer: per-row weight-only quantization of embedding tables, alone and composed."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import pt2q
from pt2q.core.spec import Q_ANNOTATION_KEY
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from pt2q.quantizers.annotators import ANNOTATORS
from pt2q.quantizers.embedding import EmbeddingQuantizer, get_embedding_quantization_config
from tests.helpers import export_module, pt2q_flow, qdq_signature, torchao_flow

qd = torch.ops.quantized_decomposed
torchao_embedding = pytest.importorskip("torchao.quantization.pt2e.quantizer.embedding_quantizer")


class TokenModel(nn.Module):
    """Two tables (a module and a functional lookup) feeding a small linear head."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(8, dim))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx, positions):
        x = self.tok(idx) + F.embedding(positions, self.pos)
        return self.head(torch.relu(x))


def _example(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (2, 8), generator=g), torch.arange(8).repeat(2, 1)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return TokenModel().eval()


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [_example(s) for s in range(3)]


def _embedding_dq(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n.args[0] for n in gm.graph.nodes if n.target is torch.ops.aten.embedding.default]


def test_annotator_is_registered() -> None:
    assert "embedding" in ANNOTATORS


def test_annotates_only_the_tables() -> None:
    gm = export_module(_model(), _example())
    EmbeddingQuantizer().annotate(gm)
    spec = get_embedding_quantization_config(8).weight
    annotated = {n.name: n.meta[Q_ANNOTATION_KEY] for n in gm.graph.nodes if Q_ANNOTATION_KEY in n.meta}
    lookups = [n for n in gm.graph.nodes if n.target is torch.ops.aten.embedding.default]
    assert len(lookups) == 2
    for node in lookups:
        ann = annotated[node.name]
        assert ann._annotated and ann.output_qspec is None
        assert ann.input_qspec_map == {node.args[0]: spec}  # the table only, never the indices
    assert spec.dtype == torch.uint8 and spec.ch_axis == 0
    assert spec.qscheme == torch.per_channel_affine_float_qparams
    assert not any(n.target is torch.ops.aten.linear.default for n in gm.graph.nodes if n.name in annotated)


def test_converted_graph_has_uint8_rows_with_float_qparams() -> None:
    gm = pt2q_flow(EmbeddingQuantizer(), _model(), _example(), _batches())
    for dq in _embedding_dq(gm):
        assert dq.target is qd.dequantize_per_channel.default
        weight, scales, zero_points = (getattr(gm, a.target) for a in dq.args[:3])
        assert dq.args[3:] == (0, 0, 255, torch.uint8)
        assert weight.dtype == torch.uint8 and scales.dtype == zero_points.dtype == torch.float32
        assert scales.shape == zero_points.shape == (weight.shape[0],)


def test_matches_torchao_embedding_quantizer() -> None:
    model, example, batches = _model(), _example(), _batches()
    ours = pt2q_flow(EmbeddingQuantizer(), model, example, batches)
    theirs = torchao_flow(torchao_embedding.EmbeddingQuantizer(), model, example, batches)
    assert sum(qdq_signature(ours).values()) == 2
    assert qdq_signature(ours) == qdq_signature(theirs)
    for x in _batches():
        torch.testing.assert_close(ours(*x), theirs(*x), rtol=0, atol=0)


def test_composes_with_xnnpack_like_torchao() -> None:
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as et_xnnpack
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer as TorchaoComposable

    model, example, batches = _model(), _example(), _batches()
    ours = pt2q_flow(
        pt2q.ComposableQuantizer(
            [
                EmbeddingQuantizer(),
                XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)),
            ]
        ),
        model,
        example,
        batches,
    )
    theirs = torchao_flow(
        TorchaoComposable(
            [
                torchao_embedding.EmbeddingQuantizer(),
                et_xnnpack.XNNPACKQuantizer().set_global(
                    et_xnnpack.get_symmetric_quantization_config(is_per_channel=True)
                ),
            ]
        ),
        model,
        example,
        batches,
    )
    sig = qdq_signature(ours)
    assert any(key[0] == str(qd.dequantize_per_channel.default) and key[-1] == torch.int8 for key in sig)  # the head
    assert sig == qdq_signature(theirs)
    for x in _batches():
        torch.testing.assert_close(ours(*x), theirs(*x), rtol=0, atol=0)


def test_filter_fn_limits_the_tables() -> None:
    only_module = EmbeddingQuantizer(
        filter_fn=lambda n: any("tok" in path for path, _ in n.meta.get("nn_module_stack", {}).values())
    )
    gm = pt2q_flow(only_module, _model(), _example(), _batches())
    kinds = [dq.op for dq in _embedding_dq(gm)]
    assert sorted(kinds) == ["call_function", "get_attr"]  # tok is dequantized, pos stays a float table


def test_4bit_codes_and_error() -> None:
    model = _model()
    gm = pt2q_flow(EmbeddingQuantizer(bits=4), model, _example(), _batches())
    for dq in _embedding_dq(gm):
        weight, _, zero_points = (getattr(gm, a.target) for a in dq.args[:3])
        assert dq.args[3:] == (0, -8, 7, torch.int8)
        assert weight.dtype == torch.int8 and int(weight.min()) >= -8 and int(weight.max()) <= 7
        assert not zero_points.is_floating_point()
    x = _example()
    err = (gm(*x) - model(*x)).abs().max()
    assert 0 < err < 0.5  # 16 levels per row: coarse but not garbage

    odd = nn.Embedding(10, 5).eval()
    with pytest.raises(ValueError, match="odd width 5"):
        pt2q.prepare_pt2e(export_module(odd, (torch.tensor([1, 2]),)), EmbeddingQuantizer(bits=4))
    with pytest.raises(ValueError, match="bits=8 or bits=4"):
        EmbeddingQuantizer(bits=2)
