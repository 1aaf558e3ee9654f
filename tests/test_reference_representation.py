"""convert_pt2e(use_reference_representation=True): integer patterns, numerics against Q/DQ and torchao, export."""

from __future__ import annotations

import copy
import io
from typing import Any, Optional

import expecttest
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import GraphModule, Node

import pt2q
from pt2q.core.ops import DQ_OPS, Q_OPS
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from tests.helpers import export_module
from tests.zoo import ZOO, calibration_batches, make

qd = torch.ops.quantized_decomposed
_INT_DTYPES = {torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64}


def xnnpack(**config: Any) -> XNNPACKQuantizer:
    return XNNPACKQuantizer().set_global(get_symmetric_quantization_config(**config))


def convert_both(
    model: nn.Module, example: tuple, quantizer: Any, fold_quantize: bool = True
) -> tuple[GraphModule, GraphModule]:
    """The Q/DQ and the reference representation of one calibrated model."""
    prepared = pt2q.prepare_pt2e(export_module(model, example), quantizer)
    for batch in calibration_batches(example):
        prepared(*batch)
    qdq = pt2q.convert_pt2e(copy.deepcopy(prepared), fold_quantize=fold_quantize)
    return qdq, pt2q.convert_pt2e(prepared, use_reference_representation=True, fold_quantize=fold_quantize)


def run_nodes(gm: GraphModule, args: tuple, forced: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Every node's value by name.

    With ``forced`` (teacher forcing), a node named there passes that value on to its
    users instead of its own, so each node is computed from the same inputs as in the
    run that ``forced`` records; the returned values are still the node's own.
    """
    values: dict[str, Any] = {}

    class Run(torch.fx.Interpreter):
        def run_node(self, n: Node) -> Any:
            values[n.name] = super().run_node(n)
            if forced is not None and n.name in forced and n.op in ("call_function", "placeholder", "get_attr"):
                return forced[n.name]
            return values[n.name]

    Run(gm).run(*args)
    return values


def integer_subgraph(qdq: GraphModule, ref: GraphModule, end: str, example: tuple) -> tuple[str, set[torch.dtype]]:
    """The nodes the rewrite created to compute ``end``, one per line with its dtype; and the set of dtypes.

    The rewrite keeps the names of the nodes it replaces, so the subgraph stops at nodes
    that the Q/DQ graph also has (e.g. the int8 inputs).
    """
    shared = {n.name for n in qdq.graph.nodes}
    nodes = {n.name: n for n in ref.graph.nodes}
    values = run_nodes(ref, example)
    keep, stack = set(), [nodes[end]]
    while stack:
        n = stack.pop()
        if n.op == "call_function" and n.name not in keep and (n.name == end or n.name not in shared):
            keep.add(n.name)
            stack.extend(n.all_input_nodes)

    def fmt(a: Any) -> str:
        if isinstance(a, Node):
            return a.name
        return str(a).replace("torch.", "") if isinstance(a, torch.dtype) else str(a)

    lines, dtypes = [], set()
    for n in ref.graph.nodes:
        if n.name in keep:
            dtype = values[n.name].dtype
            dtypes.add(dtype)
            target = "out_dtype" if n.target is torch.ops.higher_order.out_dtype else str(n.target).replace("aten.", "")
            lines.append(f"{n.name}: {fmt(dtype)} = {target}({', '.join(fmt(a) for a in n.args)})")
    return "\n".join(lines), dtypes


def q_after(qdq: GraphModule, target: Any) -> str:
    """Name of the quantize node fed (maybe through a relu) by the only ``target`` node."""
    (op,) = qdq.graph.find_nodes(op="call_function", target=target)
    nxt = next(iter(op.users))
    return (next(iter(nxt.users)) if nxt.target is torch.ops.aten.relu.default else nxt).name


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class ConvReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x):
        return F.relu(self.conv(x))


class Add(nn.Module):
    def __init__(self, relu: bool) -> None:
        super().__init__()
        self.relu = relu

    def forward(self, x, y):
        return F.relu(x + y) if self.relu else x + y


class ConvMaxPool(nn.Module):
    """max_pool2d shares its input's qparams, so it is quantized only after a quantized op."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x):
        return F.max_pool2d(self.conv(x), 2)


class TestIntegerPatterns(expecttest.TestCase):
    """Each rewrite: the integer pattern, and no float op between the int8 inputs and the int8 output."""

    def check(
        self,
        model: nn.Module,
        example: tuple,
        quantizer: Any,
        end: Any,
        integer_only: bool = True,
        fold_quantize: bool = True,
    ) -> str:
        """The subgraph computing ``end`` (a node name, or a function of the Q/DQ graph giving one)."""
        return self.check_all(model, example, quantizer, [end], integer_only, fold_quantize)[0]

    def check_all(
        self,
        model: nn.Module,
        example: tuple,
        quantizer: Any,
        ends: list[Any],
        integer_only: bool = True,
        fold_quantize: bool = True,
    ) -> list[str]:
        torch.manual_seed(0)
        qdq, ref = convert_both(model.eval(), example, quantizer, fold_quantize)
        texts = []
        for end in ends:
            text, dtypes = integer_subgraph(qdq, ref, end(qdq) if callable(end) else end, example)
            if integer_only:
                self.assertLessEqual(dtypes, _INT_DTYPES, text)
            texts.append(text)
        return texts

    def test_linear(self) -> None:
        torch.manual_seed(0)
        text = self.check(
            Linear(), (torch.randn(2, 4),), xnnpack(), lambda g: q_after(g, torch.ops.aten.linear.default)
        )
        self.assertExpectedInline(
            text,
            """\
to_dtype: int16 = to.dtype(quantize_per_tensor_default_1, int16)
sub_tensor: int16 = sub.Tensor(to_dtype, -42)
to_dtype_1: int16 = to.dtype(_frozen_param0, int16)
sub_tensor_1: int16 = sub.Tensor(to_dtype_1, 0)
out_dtype: int32 = out_dtype(aten.linear.default, int32, sub_tensor, sub_tensor_1, None)
add_tensor: int32 = add.Tensor(out_dtype, _bias_int320)
to_dtype_2: int64 = to.dtype(add_tensor, int64)
mul_tensor: int64 = mul.Tensor(to_dtype_2, 1830794155)
add_tensor_1: int64 = add.Tensor(mul_tensor, 137438953472)
bitwise_right_shift_tensor_scalar: int64 = bitwise_right_shift.Tensor_Scalar(add_tensor_1, 38)
add_tensor_2: int64 = add.Tensor(bitwise_right_shift_tensor_scalar, 76)
clamp_default: int64 = clamp.default(add_tensor_2, -128, 127)
quantize_per_tensor_default_2: int8 = to.dtype(clamp_default, int8)""",
        )

    def test_linear_per_channel(self) -> None:
        torch.manual_seed(0)
        text = self.check(
            Linear(),
            (torch.randn(2, 4),),
            xnnpack(is_per_channel=True),
            lambda g: q_after(g, torch.ops.aten.linear.default),
        )
        self.assertExpectedInline(
            text,
            """\
to_dtype: int16 = to.dtype(quantize_per_tensor_default, int16)
sub_tensor: int16 = sub.Tensor(to_dtype, -42)
to_dtype_1: int16 = to.dtype(_frozen_param0, int16)
sub_tensor_1: int16 = sub.Tensor(to_dtype_1, 0)
out_dtype: int32 = out_dtype(aten.linear.default, int32, sub_tensor, sub_tensor_1, None)
add_tensor: int32 = add.Tensor(out_dtype, _bias_int320)
to_dtype_2: int64 = to.dtype(add_tensor, int64)
mul_tensor: int64 = mul.Tensor(to_dtype_2, _requant_multiplier0)
add_tensor_1: int64 = add.Tensor(mul_tensor, 137438953472)
bitwise_right_shift_tensor_scalar: int64 = bitwise_right_shift.Tensor_Scalar(add_tensor_1, 38)
add_tensor_2: int64 = add.Tensor(bitwise_right_shift_tensor_scalar, 76)
clamp_default: int64 = clamp.default(add_tensor_2, -128, 127)
quantize_per_tensor_default_1: int8 = to.dtype(clamp_default, int8)""",
        )

    def test_dynamic_linear(self) -> None:
        torch.manual_seed(0)
        quantize, text = self.check_all(
            Linear(),
            (torch.randn(2, 4),),
            xnnpack(is_dynamic=True),
            ["quantize_per_tensor_tensor", "linear"],
            integer_only=False,
        )
        self.assertExpectedInline(
            quantize,
            """\
reciprocal_default: float64 = reciprocal.default(getitem)
to_dtype_5: float32 = to.dtype(reciprocal_default, float32)
mul_tensor_2: float32 = mul.Tensor(x, to_dtype_5)
round_default: float32 = round.default(mul_tensor_2)
add_tensor_1: float32 = add.Tensor(round_default, getitem_1)
clamp_default: float32 = clamp.default(add_tensor_1, -128, 127)
quantize_per_tensor_tensor: int8 = to.dtype(clamp_default, int8)""",
        )
        self.assertExpectedInline(
            text,
            """\
to_dtype: int16 = to.dtype(getitem_1, int16)
to_dtype_1: int16 = to.dtype(quantize_per_tensor_tensor, int16)
sub_tensor: int16 = sub.Tensor(to_dtype_1, to_dtype)
to_dtype_2: int16 = to.dtype(_frozen_param0, int16)
sub_tensor_1: int16 = sub.Tensor(to_dtype_2, 0)
out_dtype: int32 = out_dtype(aten.linear.default, int32, sub_tensor, sub_tensor_1, None)
to_dtype_3: float32 = to.dtype(getitem, float32)
mul_tensor: float32 = mul.Tensor(to_dtype_3, 0.0032403352670371532)
to_dtype_4: float32 = to.dtype(out_dtype, float32)
mul_tensor_1: float32 = mul.Tensor(to_dtype_4, mul_tensor)
linear: float32 = add.Tensor(mul_tensor_1, fc_bias)""",
        )

    def test_conv2d_relu(self) -> None:
        torch.manual_seed(0)
        text = self.check(
            ConvReLU(),
            (torch.randn(1, 2, 5, 5),),
            xnnpack(is_per_channel=True),
            lambda g: q_after(g, torch.ops.aten.conv2d.default),
        )
        self.assertExpectedInline(
            text,
            """\
to_dtype: int16 = to.dtype(quantize_per_tensor_default, int16)
sub_tensor: int16 = sub.Tensor(to_dtype, 0)
to_dtype_1: int16 = to.dtype(_frozen_param0, int16)
sub_tensor_1: int16 = sub.Tensor(to_dtype_1, 0)
out_dtype: int32 = out_dtype(aten.conv2d.default, int32, sub_tensor, sub_tensor_1, None)
add_tensor: int32 = add.Tensor(out_dtype, _bias_int320)
to_dtype_2: int64 = to.dtype(add_tensor, int64)
mul_tensor: int64 = mul.Tensor(to_dtype_2, _requant_multiplier0)
add_tensor_1: int64 = add.Tensor(mul_tensor, 68719476736)
bitwise_right_shift_tensor_scalar: int64 = bitwise_right_shift.Tensor_Scalar(add_tensor_1, 37)
add_tensor_2: int64 = add.Tensor(bitwise_right_shift_tensor_scalar, -128)
clamp_default: int64 = clamp.default(add_tensor_2, -128, 127)
quantize_per_tensor_default_1: int8 = to.dtype(clamp_default, int8)""",
        )

    def test_add(self) -> None:
        example = (torch.randn(2, 3), torch.randn(2, 3))
        text = self.check(Add(relu=False), example, xnnpack(), lambda g: q_after(g, torch.ops.aten.add.Tensor))
        self.assertExpectedInline(
            text,
            """\
to_dtype: int16 = to.dtype(quantize_per_tensor_default, int16)
sub_tensor: int16 = sub.Tensor(to_dtype, -56)
to_dtype_1: int16 = to.dtype(quantize_per_tensor_default_1, int16)
sub_tensor_1: int16 = sub.Tensor(to_dtype_1, -29)
to_dtype_2: int64 = to.dtype(sub_tensor, int64)
mul_tensor: int64 = mul.Tensor(to_dtype_2, 651338530)
to_dtype_3: int64 = to.dtype(sub_tensor_1, int64)
mul_tensor_1: int64 = mul.Tensor(to_dtype_3, 1082796745)
add_tensor: int64 = add.Tensor(mul_tensor, mul_tensor_1)
add_tensor_1: int64 = add.Tensor(add_tensor, 536870912)
bitwise_right_shift_tensor_scalar: int64 = bitwise_right_shift.Tensor_Scalar(add_tensor_1, 30)
add_tensor_2: int64 = add.Tensor(bitwise_right_shift_tensor_scalar, -49)
clamp_default: int64 = clamp.default(add_tensor_2, -128, 127)
quantize_per_tensor_default_2: int8 = to.dtype(clamp_default, int8)""",
        )

    def test_add_relu(self) -> None:
        example = (torch.randn(2, 3), torch.randn(2, 3))
        text = self.check(Add(relu=True), example, xnnpack(), lambda g: q_after(g, torch.ops.aten.add.Tensor))
        self.assertExpectedInline(
            text,
            """\
to_dtype: int16 = to.dtype(quantize_per_tensor_default, int16)
sub_tensor: int16 = sub.Tensor(to_dtype, -56)
out_dtype: int32 = out_dtype(aten.mul.Tensor, int32, sub_tensor, 0.8770789504051208)
to_dtype_1: int16 = to.dtype(quantize_per_tensor_default_1, int16)
sub_tensor_1: int16 = sub.Tensor(to_dtype_1, -29)
out_dtype_1: int32 = out_dtype(aten.mul.Tensor, int32, sub_tensor_1, 1.4580715894699097)
add_tensor: int32 = add.Tensor(out_dtype, out_dtype_1)
add_tensor_1: int32 = add.Tensor(add_tensor, -128)
clamp_default: int32 = clamp.default(add_tensor_1, -128, 127)
quantize_per_tensor_default_2: int8 = to.dtype(clamp_default, int8)""",
        )

    def test_max_pool2d(self) -> None:
        text = self.check(
            ConvMaxPool(),
            (torch.randn(1, 2, 4, 4),),
            xnnpack(),
            lambda g: q_after(g, torch.ops.aten.max_pool2d.default),
        )
        self.assertExpectedInline(
            text,
            """\
to_dtype_4: int16 = to.dtype(quantize_per_tensor_default_2, int16)
sub_tensor_2: int16 = sub.Tensor(to_dtype_4, -14)
max_pool2d_default: int16 = max_pool2d.default(sub_tensor_2, [2, 2])
to_dtype_5: int64 = to.dtype(max_pool2d_default, int64)
mul_tensor_1: int64 = mul.Tensor(to_dtype_5, 1073741824)
add_tensor_3: int64 = add.Tensor(mul_tensor_1, 536870912)
bitwise_right_shift_tensor_scalar_1: int64 = bitwise_right_shift.Tensor_Scalar(add_tensor_3, 30)
add_tensor_4: int64 = add.Tensor(bitwise_right_shift_tensor_scalar_1, -14)
clamp_default_1: int64 = clamp.default(add_tensor_4, -128, 127)
quantize_per_tensor_default_3: int8 = to.dtype(clamp_default_1, int8)""",
        )

    def test_quantize_dequantize_per_tensor(self) -> None:
        example = (torch.randn(1, 2, 4, 4),)
        first_q = lambda g: next(n.name for n in g.graph.nodes if n.target in Q_OPS)  # noqa: E731
        last_dq = lambda g: next(n.name for n in reversed(g.graph.nodes) if n.target in DQ_OPS)  # noqa: E731
        quantize, dequantize = self.check_all(ConvMaxPool(), example, xnnpack(), [first_q, last_dq], integer_only=False)
        self.assertExpectedInline(
            quantize,
            """\
mul_tensor_2: float32 = mul.Tensor(x, 43.32007694591838)
round_default: float32 = round.default(mul_tensor_2)
add_tensor_5: float32 = add.Tensor(round_default, 16)
clamp_default_2: float32 = clamp.default(add_tensor_5, -128, 127)
quantize_per_tensor_default_1: int8 = to.dtype(clamp_default_2, int8)""",
        )
        self.assertExpectedInline(
            dequantize,
            """\
to_dtype_8: int32 = to.dtype(quantize_per_tensor_default_3, int32)
sub_tensor_3: int32 = sub.Tensor(to_dtype_8, -25)
to_dtype_9: float32 = to.dtype(sub_tensor_3, float32)
dequantize_per_tensor_default_3: float32 = mul.Tensor(to_dtype_9, 0.01940990798175335)""",
        )

    def test_quantize_dequantize_per_channel(self) -> None:
        example = (torch.randn(2, 4),)
        weight_q = lambda g: g.graph.find_nodes(op="call_function", target=qd.quantize_per_channel.default)[0].name  # noqa: E731
        self.assertExpectedInline(
            self.check(
                Linear(), example, xnnpack(is_per_channel=True), weight_q, integer_only=False, fold_quantize=False
            ),
            """\
view_default: int64 = view.default(_zero_point_0, [-1, 1])
view_default_1: float32 = view.default(_scale_0, [-1, 1])
reciprocal_default: float32 = reciprocal.default(view_default_1)
mul_tensor_1: float32 = mul.Tensor(fc_weight, reciprocal_default)
round_default: float32 = round.default(mul_tensor_1)
add_tensor_3: float32 = add.Tensor(round_default, view_default)
clamp_default_1: float32 = clamp.default(add_tensor_3, -127, 127)
quantize_per_channel_default: int8 = to.dtype(clamp_default_1, int8)""",
        )
        model, example = make(
            "conv_transpose"
        )  # conv_transpose2d keeps its Q/DQ form; its weight DQ is per channel along dim 1
        weight_dq = lambda g: g.graph.find_nodes(op="call_function", target=qd.dequantize_per_channel.default)[-1].name  # noqa: E731
        self.assertExpectedInline(
            self.check(model, example, xnnpack(is_per_channel=True), weight_dq, integer_only=False),
            """\
view_default: int64 = view.default(_zero_point_1, [-1, 1, 1])
view_default_1: float32 = view.default(_scale_1, [-1, 1, 1])
to_dtype_6: int32 = to.dtype(_frozen_param1, int32)
sub_tensor_2: int64 = sub.Tensor(to_dtype_6, view_default)
to_dtype_7: float32 = to.dtype(sub_tensor_2, float32)
dequantize_per_channel_default_1: float32 = mul.Tensor(to_dtype_7, view_default_1)""",
        )


# ---------------------------------------------------------------------------------------
# Numerics: each rewritten op against its Q/DQ form on the same int8 inputs, across the zoo.

STATIC = {"per_channel": dict(is_per_channel=True), "per_tensor": dict(is_per_channel=False)}
CASES = (
    [(name, "per_channel") for name in ZOO]
    + [(name, "per_tensor") for name in ("attention", "residual")]  # linears and adds, per-tensor weights
    + [("attention", "dynamic")]
)


def per_op_differences(qdq: GraphModule, ref: GraphModule, args: tuple) -> list[tuple[str, str, float]]:
    """(node, kind, difference) for every Q/DQ node and dynamic linear of ``qdq``, compared on equal inputs.

    Quantized outputs differ in quantization steps (integers); float outputs are compared
    exactly, except a dynamic linear, whose difference is relative to its largest output.
    """
    want = run_nodes(qdq, args)
    got = run_nodes(ref, args, forced=want)
    ref_targets = {n.name: n.target for n in ref.graph.nodes}
    out = []
    for n in qdq.graph.nodes:
        if n.op != "call_function" or n.name not in got:
            continue
        a, b = want[n.name], got[n.name]
        if n.target in Q_OPS:
            op = n.args[0]
            kind = "quantize" if op.name in ref_targets else f"quantized {op.target}"  # rewritten ops are gone
            out.append((n.name, kind, float((a.int() - b.int()).abs().max())))
        elif n.target in DQ_OPS:
            out.append((n.name, "dequantize", float((a - b).abs().max())))
        elif n.target is torch.ops.aten.linear.default and ref_targets[n.name] is not n.target:
            out.append((n.name, "dynamic linear", float((a - b).abs().max() / a.abs().max())))
    return out


@pytest.mark.parametrize("name, config", CASES)
def test_each_rewritten_op_is_within_one_step_of_qdq(name: str, config: str) -> None:
    model, example = make(name)
    quantizer = xnnpack(is_per_channel=True, is_dynamic=True) if config == "dynamic" else xnnpack(**STATIC[config])
    qdq, ref = convert_both(model, example, quantizer)
    diffs = [d for x in calibration_batches(example, n=4, seed=5) for d in per_op_differences(qdq, ref, x)]
    assert any(kind.startswith("quantized") or kind == "dynamic linear" for _, kind, _ in diffs), (
        "nothing was rewritten"
    )
    for node, kind, diff in diffs:
        if kind in ("quantize", "dequantize", "quantized aten.max_pool2d.default"):
            assert diff == 0, (node, kind, diff)  # the kernels' own arithmetic, bit for bit
        elif kind == "dynamic linear":
            assert diff < 1e-5, (node, kind, diff)
        elif kind == "quantized aten.relu.default":  # relu(x + y) in torchao's form truncates each operand
            assert diff <= 2, (node, kind, diff)
        else:
            assert diff <= 1, (node, kind, diff)


# ---------------------------------------------------------------------------------------
# Oracle: torchao's reference representation of the same model, quantized the same way.


class Branches(nn.Module):
    """One quantized op between each quantized input and each output, so differences do not compound."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.conv = nn.Linear(16, 8), nn.Conv2d(4, 6, 3)

    def forward(self, v, a, b):
        y = F.relu(self.conv(a))
        return self.fc(v), y, a + b, F.relu(b + a), F.max_pool2d(y, 2)


def output_steps(qdq: GraphModule, x: GraphModule, y: GraphModule, args: tuple) -> list[float]:
    """Per output of ``Branches``: the largest difference between ``x`` and ``y`` in steps of its quantized output."""
    (outputs,) = [n.args[0] for n in qdq.graph.nodes if n.op == "output"]
    return [float((p - q).abs().max()) / dq.args[1] for dq, p, q in zip(outputs, x(*args), y(*args))]


def torchao_reference(model: nn.Module, example: tuple, is_per_channel: bool) -> GraphModule:
    """torchao's reference representation of ``model``, quantized by ExecuTorch's XNNPACK quantizer."""
    et = pytest.importorskip("executorch.backends.xnnpack.quantizer.xnnpack_quantizer")
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = et.XNNPACKQuantizer().set_global(et.get_symmetric_quantization_config(is_per_channel=is_per_channel))
    prepared = prepare_pt2e(export_module(model, example), quantizer)
    for batch in calibration_batches(example):
        prepared(*batch)
    return convert_pt2e(prepared, use_reference_representation=True)


def test_matches_torchao_reference_representation() -> None:
    torch.manual_seed(0)
    model, example = Branches().eval(), (torch.randn(32, 16), torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8))
    qdq, ours = convert_both(model, example, xnnpack(is_per_channel=False))  # torchao rewrites per-tensor linears only
    theirs = torchao_reference(model, example, is_per_channel=False)
    assert theirs.graph.find_nodes(op="call_function", target=torch.ops.higher_order.out_dtype)

    # torchao requantizes with out_dtype(mul, int32, ...), which truncates towards zero, where
    # pt2q (and the Q/DQ graph) round to nearest: an add, which rescales two operands, can land
    # two steps away; every other output is within one step of torchao. relu(x + y) is written
    # in torchao's own form (two steps from Q/DQ at most), so it differs from torchao only
    # where the int8 inputs do (torchao quantizes with x / scale, the kernels with x * (1 / scale)).
    bounds = {"linear": 1, "conv2d_relu": 1, "add": 2, "add_relu": 1, "max_pool2d": 1}
    to_qdq_bounds = {"linear": 1, "conv2d_relu": 1, "add": 1, "add_relu": 2, "max_pool2d": 1}
    for args in calibration_batches(example, n=4, seed=5):
        steps = dict(zip(bounds, output_steps(qdq, ours, theirs, args)))
        assert all(steps[k] <= bound + 1e-3 for k, bound in bounds.items()), steps
        to_qdq = dict(zip(bounds, output_steps(qdq, ours, qdq, args)))
        assert all(to_qdq[k] <= bound + 1e-3 for k, bound in to_qdq_bounds.items()), to_qdq


def on_grid(qdq: GraphModule, seed: int) -> tuple[torch.Tensor, ...]:
    """Random inputs that are exact multiples of their quantization step, ``(q - zero_point) * scale``.

    No input lies near a rounding boundary, so torchao's quantize (``x / scale``) and the
    kernels' (``x * (1 / scale)``) give the same int8 values.
    """
    gen = torch.Generator().manual_seed(seed)
    args = []
    for p in qdq.graph.find_nodes(op="placeholder"):
        (q,) = [u for u in p.users if u.target in Q_OPS]
        scale, zero_point, qmin, qmax = q.args[1:5]
        ints = torch.randint(qmin, qmax + 1, p.meta["val"].shape, generator=gen)
        args.append((ints - zero_point).float() * scale)
    return tuple(args)


def test_add_relu_is_torchao_reference_bit_for_bit() -> None:
    """relu(x + y) in torchao's integer form: two out_dtype multiplies, and torchao's int8 result exactly."""
    torch.manual_seed(0)
    model, example = Add(relu=True).eval(), (torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8))
    qdq, ours = convert_both(model, example, xnnpack(is_per_channel=True))
    theirs = torchao_reference(model, example, is_per_channel=True)
    for gm in (ours, theirs):
        assert len(gm.graph.find_nodes(op="call_function", target=torch.ops.higher_order.out_dtype)) == 2
    for seed in range(3):
        args = on_grid(qdq, seed)
        assert torch.equal(ours(*args), theirs(*args))
        # the comparison can tell the forms apart: rounding to nearest (Q/DQ) lands elsewhere
        assert not torch.equal(qdq(*args), theirs(*args))
    buffer = io.BytesIO()  # the float scale ratios inside out_dtype survive export, save and load
    torch.export.save(torch.export.export(ours, example), buffer)
    buffer.seek(0)
    assert torch.equal(torch.export.load(buffer).module()(*args), ours(*args))


# ---------------------------------------------------------------------------------------
# The reference graph is an ordinary ATen program: it exports, saves and loads.


@pytest.mark.parametrize("name, config", [("conv_bn_relu_stack", "per_tensor"), ("mlp", "dynamic")])
def test_export_save_load_round_trip(name: str, config: str) -> None:
    model, example = make(name)
    quantizer = xnnpack(is_per_channel=True, is_dynamic=True) if config == "dynamic" else xnnpack(**STATIC[config])
    _, ref = convert_both(model, example, quantizer)
    ep = torch.export.export(ref, example)
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert torch.ops.higher_order.out_dtype in targets
    assert not targets & (Q_OPS | DQ_OPS)
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    for x in calibration_batches(example, n=2, seed=9):
        assert torch.equal(loaded(*x), ref(*x))
