"""Node metadata through prepare, QAT conv-bn rewrites, convert and weight folding, against torchao.

Nodes are matched across the two flows by a stable identity: an op keeps its ATen target and the
name of the float node it descends from (its debug handle); a quantize / dequantize is identified by
the value it carries and the op reading it. For every op both flows keep, ``nn_module_stack``,
``source_fn_stack``, ``stack_trace``, the user's ``custom`` entries and the debug handle are
torchao's; every Q/DQ node carries the ``stack_trace`` torchao's port_metadata pass gives it. pt2q
adds metadata where torchao leaves none (the Q/DQ nodes' ``nn_module_stack``, its own notes in
``custom``, the provenance of the QAT rewrite's nodes), which is checked too.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Optional

import pytest
import torch
from torch import nn
from torch.fx import GraphModule, Node

import pt2q
from pt2q.core.notes import NOTE_KEYS
from pt2q.core.ops import QDQ_OPS, is_op
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config

ao = pytest.importorskip("torchao.quantization.pt2e.quantize_pt2e")
et = pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")

COMPARED = ("nn_module_stack", "source_fn_stack", "stack_trace")


class ConvBnReluLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.relu = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.bn(self.conv(x))).mean((2, 3)))


def debug_handle(node: Node) -> Optional[str]:
    """The name of the float-graph node ``node`` descends from."""
    sources = node.meta.get("from_node")
    if not sources:
        return None
    source = sources[-1]
    while source.from_node:
        source = source.from_node[-1]
    return str(source.name)


def identity(node: Node) -> tuple[Any, ...]:
    if is_op(node, QDQ_OPS):
        carried = node
        while is_op(carried, QDQ_OPS) and isinstance(carried.args[0], Node):
            carried = carried.args[0]
        readers = tuple(sorted(str(u.target) for u in node.users))
        return (str(node.target), carried.op, identity(carried) if carried.op == "call_function" else None, readers)
    return (str(node.target), debug_handle(node))


def metadata(gm: GraphModule) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Identity -> metadata, for the nodes whose identity is unique (the QAT rewrites' helper nodes
    share their conv's)."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    shared = set()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        meta = {key: node.meta.get(key) for key in COMPARED}
        custom = node.meta.get("custom") or {}
        meta["custom"] = {k: v for k, v in custom.items() if k not in NOTE_KEYS}
        meta["debug_handle"] = debug_handle(node)
        key = identity(node)
        if key in out:
            shared.add(key)
        out[key] = meta
    return {key: meta for key, meta in out.items() if key not in shared}


def tag_custom(gm: GraphModule) -> GraphModule:
    """Give each op a ``custom`` entry, as a user (or a tool) may before quantizing."""
    for node in gm.graph.nodes:
        if node.op == "call_function":
            node.meta["custom"] = {"tag": node.name}
    return gm


def assert_ops_keep_metadata(theirs_gm: GraphModule, ours_gm: GraphModule, stage: str) -> None:
    """Every op both flows keep has torchao's metadata and debug handle in pt2q's graph."""
    theirs, ours = metadata(theirs_gm), metadata(ours_gm)
    kept = [key for key in theirs if len(key) == 2 and key in ours]
    assert {key[0] for key in kept} >= {"aten.conv2d.default", "aten.relu.default", "aten.linear.default"}
    for key in kept:
        assert ours[key] == theirs[key], f"{stage} node {key}"


def assert_qdq_stack_traces(theirs_gm: GraphModule, ours_gm: GraphModule) -> None:
    """Every Q/DQ node of a converted graph has the stack_trace torchao's port_metadata pass gives it."""
    theirs, ours = metadata(theirs_gm), metadata(ours_gm)
    our_ops = {identity(n) for n in ours_gm.graph.nodes if n.op == "call_function"}
    # a value pt2q's graph no longer computes (convert drops eval-mode dropout; torchao keeps it)
    qdq = [key for key in theirs if len(key) == 4 and (key[2] is None or key[2] in our_ops)]
    assert len(qdq) >= 8
    for key in qdq:
        assert key in ours, f"torchao's {key} has no counterpart"
        if theirs[key]["stack_trace"] is not None:
            assert ours[key]["stack_trace"] == theirs[key]["stack_trace"], key


def assert_provenance_everywhere(gm: GraphModule) -> None:
    """Beyond torchao: each op, observer, Q/DQ, QAT-rewrite node and folded (integer) weight names its
    module, source line and debug handle, and keeps the user's ``custom`` entries of the op it was
    made for (torchao's folded weights and QAT weight dequantizes carry none)."""
    for node in gm.graph.nodes:
        folded_weight = node.op == "get_attr" and any(is_op(u, QDQ_OPS) and u.args[0] is node for u in node.users)
        if not folded_weight and (node.op not in ("call_function", "call_module") or node.target == "_guards_fn"):
            continue
        missing = [k for k in ("nn_module_stack", "stack_trace", "from_node") if not node.meta.get(k)]
        assert not missing, f"{node.name} ({node.target}) lacks {missing}"
        assert "tag" in (node.meta.get("custom") or {}), f"{node.name} lost the user's custom metadata"


def ptq(flow: str) -> tuple[GraphModule, GraphModule]:
    """(prepared and calibrated, converted) for a conv-bn-relu-mean-linear model."""
    torch.manual_seed(0)
    example = (torch.randn(2, 3, 8, 8),)
    gm = tag_custom(torch.export.export(ConvBnReluLinear().eval(), example).module())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if flow == "torchao":
            prepared = ao.prepare_pt2e(gm, et.XNNPACKQuantizer().set_global(et.get_symmetric_quantization_config()))
            convert = ao.convert_pt2e
        else:
            prepared = pt2q.prepare_pt2e(gm, XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
            convert = pt2q.convert_pt2e
        prepared(*example)
        return copy.deepcopy(prepared), convert(prepared)


def test_ptq_metadata_matches_torchao() -> None:
    """PTQ (BatchNorm folded into the conv at prepare). QAT: tests/test_qat.py's torchao oracle test."""
    (theirs_prepared, theirs), (ours_prepared, ours) = ptq("torchao"), ptq("pt2q")
    assert_ops_keep_metadata(theirs_prepared, ours_prepared, "prepared")
    assert_ops_keep_metadata(theirs, ours, "converted")
    assert_qdq_stack_traces(theirs, ours)
    assert_provenance_everywhere(ours_prepared)
    assert_provenance_everywhere(ours)
