"""Backends matrix: every ExecuTorch quantizer, built as its backend documents it, through pt2q's public flow
and through torchao's, on real model shapes: the same Q/DQ graph and bit-identical outputs.

A case torchao's own flow cannot run asserts torchao's exact error and is marked xfail; a backend whose
package does not import here asserts its exact import error. No test touches the network (``no_network``).
"""

from __future__ import annotations

import importlib
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tests.backend_zoo import (
    CASES,
    UNAVAILABLE,
    QuantizerCase,
    importable,
    model_batches,
    op_counts,
    pt2q_flow,
    qdq_signature,
    qnn_offline,
    quantize,
    torchao_flow,
)
from tests.helpers import one_thread  # noqa: F401  (autouse: one intra-op thread)

# torchao's flow itself fails on these: (case, model) -> (exception type, exact message)
TORCHAO_FAILS: dict[tuple[str, str], tuple[type[BaseException], str]] = {
    # Core ML's QAT config fake-quantizes BatchNorm's num_batches_tracked (int64) buffer in the fused conv-BN graph
    ("coreml-int8_symmetric-qat", "conv_bn_relu"): (
        NotImplementedError,
        "\"fake_quantize_tensor_cachemask_kernel_type_handling\" not implemented for 'Long'",
    ),
    # OpenVINO's INT8_SYM annotates LayerNorm's input with a per-channel observer on axis 1 of a 1-D tensor
    ("openvino-int8_sym", "ln_gelu_mlp"): (
        IndexError,
        "Dimension out of range (expected to be in range of [-1, 0], but got 1)",
    ),
}

# pt2q fails here (strict xfail, with the exact error or mismatch): (case, model) -> reason; none today
PT2Q_FAILS: dict[tuple[str, str], str] = {}


class NetworkUsed(AssertionError):
    pass


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Any attempt to open a connection (a vendor SDK download) fails the test; the attempts are recorded."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any, *args: Any) -> None:
        attempts.append(address)
        raise NetworkUsed(f"network used: connect to {address!r}")

    def refuse_create(address: Any, *args: Any, **kwargs: Any) -> None:
        attempts.append(address)
        raise NetworkUsed(f"network used: create_connection to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse_create)
    yield attempts
    assert attempts == [], f"the test tried to use the network: {attempts}"


# Core ML's quantizer exports ~400 pattern graphs once per process (~40 s): its cases run in one test, so that
# the parallel test workers do not each pay for them
ONE_TEST = ("coreml",)


def _params() -> list[Any]:
    params = []
    for case in CASES:
        if case.backend in ONE_TEST:
            continue
        for model in case.models:
            marks = []
            if (case.name, model) in PT2Q_FAILS:
                marks.append(pytest.mark.xfail(strict=True, reason=PT2Q_FAILS[(case.name, model)]))
            params.append(pytest.param(case, model, id=f"{case.name}-{model}", marks=marks))
    return params


def _require(case: QuantizerCase) -> None:
    if not importable(case.needs):
        # the backend's exact import error is asserted by test_unavailable_backend_fails_to_import
        pytest.skip(f"{case.backend}: {case.needs} does not import here")


def check_against_torchao(case: QuantizerCase, model: str) -> str | None:
    """Quantize ``model`` with ``case`` through both flows and assert the same Q/DQ graph and bit-identical
    outputs; where torchao's own flow fails, assert its exact error and return it instead."""
    failure = TORCHAO_FAILS.get((case.name, model))
    if failure is not None:
        error, message = failure
        with pytest.raises(error, match=re.escape(message)):
            quantize(torchao_flow(), case, model)
        return f"torchao's flow fails: {error.__name__}: {message}"
    theirs = quantize(torchao_flow(), case, model)
    ours = quantize(pt2q_flow(), case, model)
    expected = qdq_signature(theirs)
    assert sum(expected.values()) > 0, f"{case.name} quantized nothing in {model}"
    actual = qdq_signature(ours)
    assert op_counts(actual) == op_counts(expected)
    assert actual == expected  # every scale, zero point, range, dtype and axis
    with torch.no_grad():
        for batch in model_batches(model, 2, seed=100):  # held-out inputs
            want, got = theirs(*batch), ours(*batch)
            assert torch.equal(got, want), f"max abs difference {(got - want).abs().max().item()}"
    return None


@pytest.mark.parametrize(("case", "model"), _params())
def test_same_graph_and_outputs_as_torchao(case: QuantizerCase, model: str) -> None:
    _require(case)
    torchao_failure = check_against_torchao(case, model)
    if torchao_failure is not None:
        pytest.xfail(torchao_failure)


@pytest.mark.parametrize("backend", ONE_TEST)
def test_same_graph_and_outputs_as_torchao_in_one_process(backend: str) -> None:
    """The same check for every case and model of ``backend``; a pt2q failure listed in PT2Q_FAILS must
    still fail (strict); a torchao failure is asserted exactly."""
    cases = [c for c in CASES if c.backend == backend]
    _require(cases[0])
    problems = []
    for case in cases:
        for model in case.models:
            known = (case.name, model) in PT2Q_FAILS
            try:
                check_against_torchao(case, model)
            except Exception as exc:  # AssertionError or the flow's error
                if not known:
                    problems.append(f"{case.name}/{model}: {type(exc).__name__}: {exc}")
                continue
            if known:
                problems.append(f"{case.name}/{model}: listed in PT2Q_FAILS but now matches torchao")
    assert problems == [], "\n".join(problems)


def test_matrix_covers_every_quantizer_package() -> None:
    """Each backend of the installed ExecuTorch that ships a quantizer is in the matrix or listed as unavailable."""
    import pathlib

    import executorch.backends as backends

    root = pathlib.Path(backends.__path__[0])
    shipped = {
        path.relative_to(root).parts[0]
        for path in root.rglob("*quantizer*")
        if not {"test", "tests", "__pycache__"} & set(path.relative_to(root).parts)
    }
    # Core ML and Core AI live under backends/apple (Core AI: test_coreai_quantizer_is_not_a_pt2e_quantizer)
    covered = {"apple" if c.backend == "coreml" else c.backend for c in CASES} | {u.backend for u in UNAVAILABLE}
    assert shipped - covered == set()


@pytest.mark.parametrize("entry", UNAVAILABLE, ids=lambda u: u.backend)
def test_unavailable_backend_fails_to_import(entry: Any) -> None:
    if entry.backend in ("arm", "cortex_m") and importable("tosa_serializer"):
        importlib.import_module(entry.module)  # tosa-tools is installed: its cases run in the matrix above
        return
    with pytest.raises(entry.error) as info:
        importlib.import_module(entry.module)
    assert str(info.value) == entry.message


def test_coreai_quantizer_is_not_a_pt2e_quantizer() -> None:
    """Apple's Core AI front-end wraps coreai_opt's own prepare/convert: no ``annotate``, nothing to plug in."""
    from executorch.backends.apple.coreai.quantizer import CoreAIQuantizer

    assert not hasattr(CoreAIQuantizer, "annotate")
    if not importable("coreai_opt"):
        with pytest.raises(ModuleNotFoundError, match="No module named 'coreai_opt'"):
            CoreAIQuantizer(torch.nn.Linear(2, 2))


def test_qnn_quantizer_builds_offline(no_network: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """QnnQuantizer is built without downloading the QNN SDK and leaves QNN_SDK_ROOT as it was."""
    from executorch.backends.qualcomm.quantizer.quantizer import QnnQuantizer

    monkeypatch.delenv("QNN_SDK_ROOT", raising=False)
    with qnn_offline():
        quantizer = QnnQuantizer()
    assert "QNN_SDK_ROOT" not in importlib.import_module("os").environ
    assert no_network == []
    assert torch.ops.aten.conv2d.default in quantizer.get_supported_ops()


def _without_provenance(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Drop ``from_node`` / ``debug_handle`` provenance: ExecuTorch derives the XNNPACK nodes' debug handles
    from it (debug information only); everything the program computes stays."""
    for node in gm.graph.nodes:
        node.meta.pop("from_node", None)
        node.meta.pop("debug_handle", None)
    return gm


LOWERED = [("xnnpack-per_channel", "conv_bn_relu"), ("xnnpack-dynamic", "ln_gelu_mlp")]


@pytest.mark.parametrize(("name", "model"), LOWERED, ids=[f"{n}-{m}" for n, m in LOWERED])
def test_xnnpack_pte_equals_torchao_and_runs(name: str, model: str) -> None:
    """pt2q's converted graph lowered by pt2q.lowering gives the same .pte bytes as torchao's lowered by
    ExecuTorch's own XNNPACK flow, and both run with bit-identical outputs through pt2q.runtime."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from pt2q.lowering import to_executorch
    from pt2q.runtime import Program

    case = next(c for c in CASES if c.name == name)
    example = model_batches(model, 1, seed=0)[0]
    theirs = _without_provenance(quantize(torchao_flow(), case, model))
    ours = _without_provenance(quantize(pt2q_flow(), case, model))
    edge = to_edge_transform_and_lower(torch.export.export(theirs, example), partitioner=[XnnpackPartitioner()])
    their_pte = bytes(edge.to_executorch().buffer)
    our_pte = to_executorch(ours, example).buffer
    assert our_pte == their_pte
    theirs_run, ours_run = Program(their_pte), Program(our_pte)
    for batch in model_batches(model, 2, seed=100):
        assert torch.equal(ours_run(*batch), theirs_run(*batch))
