"""Delegation report: where each operator of a lowered ExecuTorch program runs, and in what precision.

Built from the final program (after partitioning and ExecuTorch's quant fusion).
Every operator is one row, placed on

* ``XNNPACK``: inside an XNNPACK delegate blob (its int8 work runs in XNNPACK kernels),
* ``quantized kernel``: an ExecuTorch quantized-kernel-library op (``embedding_byte``,
  ``embedding_4bit``, a quantize/dequantize left outside a delegate, ...),
* ``portable``: a portable (or optimized) ExecuTorch kernel, which computes in float.

Quantize/dequantize ops *inside* a delegate are not rows: XNNPACK folds them into
its integer kernels. A delegated op is ``int8`` when it reads a dequantized input or
its output is quantized (XNNPACK then runs it on int8 codes; ``int8/int4`` for int8 activations
with 4-bit weights, which XNNPACK stores packed two per byte); a quantized kernel is
``int8`` (``int4`` for 4-bit tables); anything else is the float dtype it computes in.
Weighted ops (linear, conv, embedding) carry the bytes and dtype of the weight the
program stores for them.
"""

from __future__ import annotations

import dataclasses
import operator
from collections import Counter
from collections.abc import Iterator
from typing import Any, Optional

import torch
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node

from pt2q.core.ops import (
    ANY_DEQUANTIZE,
    ANY_QDQ,
    ANY_QUANTIZE,
    is_affine_dequantize,
    is_affine_qdq,
    is_affine_quantize,
    is_op,
    op_name,
)

__all__ = [
    "XNNPACK",
    "QUANTIZED_KERNEL",
    "PORTABLE",
    "OpPlacement",
    "DelegationReport",
    "build_delegation_report",
    "op_name",
    "source_name",
    "program_tensor",
]

XNNPACK = "XNNPACK"
QUANTIZED_KERNEL = "quantized kernel"
PORTABLE = "portable"

# op -> index of the argument holding its weight
_WEIGHT_ARG = {
    "aten.linear": 1,
    "aten.convolution": 1,
    "aten.conv1d": 1,
    "aten.conv2d": 1,
    "aten.conv3d": 1,
    "aten.embedding": 0,
    "quantized_decomposed.embedding_byte": 0,
    "quantized_decomposed.embedding_2bit": 0,
    "quantized_decomposed.embedding_4bit": 0,
}
_LOW_BIT_KERNELS = {"quantized_decomposed.embedding_4bit": "int4", "quantized_decomposed.embedding_2bit": "int2"}
_INTEGER_STORAGE = {torch.int8, torch.uint8, torch.int4}  # type: ignore[attr-defined]


def source_name(node: Node) -> str:
    """The name ``node`` had in the graph the user converted (following ``from_node`` provenance)."""
    sources = node.meta.get("from_node")
    name = node.name
    while sources:
        name = sources[-1].name
        sources = getattr(sources[-1], "from_node", None)
    return name


@dataclasses.dataclass(frozen=True)
class OpPlacement:
    """One operator of the lowered program and where it runs."""

    node: str
    source: str
    op: str
    runs_on: str
    precision: str
    weight_bytes: int = 0
    weight_dtype: Optional[torch.dtype] = None
    fallback: bool = False  # a quantized pattern the delegate did not take: runs in float
    is_qdq: bool = False  # a quantize / dequantize / choose-qparams op (not a layer of the model)

    @property
    def is_weighted(self) -> bool:
        return self.op in _WEIGHT_ARG


@dataclasses.dataclass(frozen=True)
class DelegationReport:
    """Per-operator placement of a lowered program, with totals (print it for a table)."""

    rows: tuple[OpPlacement, ...]

    @property
    def num_ops(self) -> int:
        return len(self.rows)

    def count(self, runs_on: str) -> int:
        return sum(r.runs_on == runs_on for r in self.rows)

    def share(self, runs_on: str) -> float:
        """Fraction of operators that run on ``runs_on`` (``XNNPACK``, ``QUANTIZED_KERNEL``, ``PORTABLE``)."""
        return self.count(runs_on) / self.num_ops if self.rows else 0.0

    @property
    def int8_op_share(self) -> float:
        """Fraction of operators that compute on quantized (int8 or lower) data."""
        return sum(r.precision != "fp32" and r.precision.startswith("int") for r in self.rows) / max(self.num_ops, 1)

    @property
    def weighted_ops(self) -> tuple[OpPlacement, ...]:
        return tuple(r for r in self.rows if r.is_weighted)

    @property
    def weight_bytes(self) -> dict[str, int]:
        """Bytes of linear/conv/embedding weights by stored dtype."""
        totals: Counter = Counter()
        for r in self.weighted_ops:
            totals[str(r.weight_dtype).replace("torch.", "")] += r.weight_bytes
        return dict(totals)

    @property
    def int8_weight_share(self) -> float:
        """Fraction of linear/conv/embedding weight bytes stored as int8/uint8 (packed 4-bit included)."""
        total = sum(r.weight_bytes for r in self.weighted_ops)
        low = sum(r.weight_bytes for r in self.weighted_ops if r.weight_dtype in _INTEGER_STORAGE)
        return low / total if total else 0.0

    @property
    def fallbacks(self) -> tuple[OpPlacement, ...]:
        """Quantized patterns left outside the delegate: they run in float between quantize/dequantize ops."""
        return tuple(r for r in self.rows if r.fallback)

    def summary(self) -> dict[str, float]:
        return {
            "ops": float(self.num_ops),
            "xnnpack_share": self.share(XNNPACK),
            "quantized_kernel_share": self.share(QUANTIZED_KERNEL),
            "portable_share": self.share(PORTABLE),
            "int8_op_share": self.int8_op_share,
            "int8_weight_share": self.int8_weight_share,
        }

    def table(self) -> str:
        """A Markdown table: one row per operator, then the totals."""
        lines = [
            "| node | source | op | runs on | precision | weight |",
            "|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            weight = f"{r.weight_bytes} B {str(r.weight_dtype).replace('torch.', '')}" if r.is_weighted else ""
            flag = " (fallback)" if r.fallback else ""
            lines.append(f"| {r.node} | {r.source} | {r.op} | {r.runs_on}{flag} | {r.precision} | {weight} |")
        lines.append("")
        lines.append(
            f"{self.num_ops} ops: {self.share(XNNPACK):.0%} XNNPACK, "
            f"{self.share(QUANTIZED_KERNEL):.0%} quantized kernels, "
            f"{self.share(PORTABLE):.0%} portable; {self.int8_op_share:.0%} of ops on int8 data; "
            f"{self.int8_weight_share:.0%} of linear/conv/embedding weight bytes in int8 "
            f"({', '.join(f'{k}: {v} B' for k, v in sorted(self.weight_bytes.items())) or 'no weights'})"
        )
        if self.fallbacks:
            lines.append(
                "fallbacks (quantized patterns running in float): " + ", ".join(r.source for r in self.fallbacks)
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# --- building it -----------------------------------------------------------------


def program_tensor(program: ExportedProgram, placeholder: Node) -> Optional[torch.Tensor]:
    """The parameter/buffer/constant a lifted placeholder stands for, if any."""
    for spec in program.graph_signature.input_specs:
        if getattr(spec.arg, "name", None) != placeholder.name or spec.target is None:
            continue
        value = program.state_dict.get(spec.target)
        if value is None:
            value = program.constants.get(spec.target)
        return value if isinstance(value, torch.Tensor) else None
    return None


def _is_qdq(node: object) -> bool:
    return is_op(node, ANY_QDQ) or is_affine_qdq(node)


def _weight_arg(node: Node, name: str) -> Optional[Node]:
    index = _WEIGHT_ARG.get(name)
    arg = node.args[index] if index is not None and len(node.args) > index else None
    return arg if isinstance(arg, Node) else None


def _int4_weight(node: Node, name: str) -> bool:
    """Whether ``node`` reads a weight dequantized from 4-bit affine codes (XNNPACK packs those two per byte)."""
    dq = _weight_arg(node, name)
    return is_affine_dequantize(dq) and dq is not None and tuple(dq.args[5:7]) == (-8, 7)


def _stored_weight(program: ExportedProgram, node: Node, name: str) -> Optional[torch.Tensor]:
    arg = _weight_arg(node, name)
    if isinstance(arg, Node) and (is_op(arg, ANY_DEQUANTIZE) or is_affine_dequantize(arg)):
        source = arg.args[0]
        arg = source if isinstance(source, Node) else None
    if isinstance(arg, Node) and arg.op == "placeholder":
        return program_tensor(program, arg)
    return None


def _reads_dequantized(node: Node) -> bool:
    return any(is_op(a, ANY_DEQUANTIZE) or is_affine_dequantize(a) for a in node.all_input_nodes)


def _feeds_quantize(node: Node) -> bool:
    """Whether a user statically quantizes ``node``'s output (a run-time quantize reads choose_qparams results)."""
    return any(
        (is_op(u, ANY_QUANTIZE) or is_affine_quantize(u))
        and not any(a.op == "call_function" and a.target is operator.getitem for a in u.all_input_nodes)
        for u in node.users
    )


def _float_precision(node: Node) -> str:
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)) and val:
        val = val[0]
    if isinstance(val, torch.Tensor):
        return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}.get(
            val.dtype, str(val.dtype).replace("torch.", "")
        )
    return "fp32"


def _row(
    program: ExportedProgram,
    node: Node,
    name: str,
    runs_on: str,
    precision: str,
    fallback: bool = False,
    packed_int4: bool = False,
) -> OpPlacement:
    weight = _stored_weight(program, node, name)
    size = 0 if weight is None else weight.numel() * weight.element_size()
    return OpPlacement(
        node=node.name,
        source=source_name(node),
        op=name,
        runs_on=runs_on,
        precision=precision,
        weight_bytes=(weight.numel() + 1) // 2 if packed_int4 and weight is not None else size,
        weight_dtype=None if weight is None else (torch.int4 if packed_int4 else weight.dtype),  # type: ignore[attr-defined]
        fallback=fallback,
        is_qdq=_is_qdq(node),
    )


def _delegate_rows(program: ExportedProgram, lowered: Any) -> Iterator[OpPlacement]:
    inner = lowered.original_module
    runs_on = XNNPACK if "xnnpack" in lowered.backend_id.lower() else lowered.backend_id
    for node in inner.graph.nodes:
        name = op_name(node.target) if node.op == "call_function" else None
        if name is None or _is_qdq(node):
            continue
        quantized = _reads_dequantized(node) or _feeds_quantize(node)  # e.g. a relu fused into the conv before it
        int4 = _int4_weight(node, name)  # int8 activations x packed int4 weights (XNNPACK qb4w / qc4w)
        precision = ("int8/int4" if int4 else "int8") if quantized else _float_precision(node)
        yield _row(inner, node, name, runs_on, precision, packed_int4=int4)


def _lowered_module(gm: GraphModule, call: Node) -> Any:
    target = call.args[0]
    return getattr(gm, str(target.target)) if isinstance(target, Node) else target


def build_delegation_report(program: ExportedProgram) -> DelegationReport:
    """Place every operator of a lowered program (the ``exported_program()`` of an ExecuTorch manager)."""
    gm = program.graph_module
    rows: list[OpPlacement] = []
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is torch.ops.higher_order.executorch_call_delegate:
            rows.extend(_delegate_rows(program, _lowered_module(gm, node)))
            continue
        name = op_name(node.target)
        if name is None:
            continue  # memory planning, getitem, views the runtime handles itself
        if name.startswith("quantized_decomposed."):
            rows.append(_row(program, node, name, QUANTIZED_KERNEL, _LOW_BIT_KERNELS.get(name, "int8")))
        else:
            fallback = _reads_dequantized(node) or _feeds_quantize(node)
            rows.append(_row(program, node, name, PORTABLE, _float_precision(node), fallback))
    return DelegationReport(tuple(rows))
