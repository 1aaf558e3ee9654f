"""Lower a converted (Q/DQ) program to an ExecuTorch ``.pte`` whose int8 work runs in native kernels.

>>> import tempfile, torch
>>> from pt2q import convert_pt2e, prepare_pt2e, runtime
>>> from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
>>> example_inputs = (torch.randn(1, 16),)
>>> model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
>>> quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
>>> prepared = prepare_pt2e(torch.export.export(model, example_inputs).module(), quantizer)
>>> _ = prepared(*example_inputs)
>>> ep = torch.export.export(convert_pt2e(prepared), example_inputs)
>>> lowered = to_executorch(ep)
>>> print(lowered.report.share("XNNPACK"), lowered.report.int8_weight_share)  # where each op runs
1.0 1.0
>>> path = lowered.save(f"{tempfile.mkdtemp()}/model.pte")
>>> runtime.load(path)(*example_inputs).shape
torch.Size([1, 4])

The steps, all ExecuTorch's own machinery after one rewrite of pt2q's:

0. A reshape of a transposed attention output gets a contiguous copy first
   (:mod:`pt2q.lowering.attention_layout`): export saw SDPA's eager layout, ExecuTorch's
   decomposition gives another, and the view would no longer fit (GPT-2).
1. ``to_edge_transform_and_lower`` with the XNNPACK partitioner: quantized
   linear/conv/add/... patterns become XNNPACK delegate blobs.
2. A check of every delegated op whose input and output XNNPACK requires to share
   qparams (cat, max_pool2d, reshapes, slices, clamps, ...): a mismatch would only
   surface when the ``.pte`` is loaded, so it is reported here, by node name.
3. 4-bit embedding tables are packed for ExecuTorch's ``embedding_4bit`` kernel.
4. ``to_executorch`` with ``do_quant_fusion_and_const_prop``: ExecuTorch's quant
   fusion rewrites ``dequantize_per_channel -> embedding`` into ``embedding_byte``
   and constant propagation folds the packing.
5. A :class:`~pt2q.lowering.delegation_report.DelegationReport` of the result;
   quantized patterns left outside the delegate (they run in float) are warned about.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.fx import GraphModule, Node
from torch.fx.passes.infra.pass_base import PassResult
from torch.utils import _pytree as pytree

from pt2q.core.ops import (
    ANY_DEQUANTIZE,
    DQ_PER_TENSOR,
    LINEAR,
    Q_PER_TENSOR,
    aten,
    is_observer_node,
    is_op,
    op_name,
    ops,
)
from pt2q.io.atomic_file import write_atomic
from pt2q.io.digest import seal_trailer
from pt2q.io.pt2_file import save_pt2
from pt2q.io.quiet import quiet
from pt2q.lowering.affine_checks import affine_ops_outside_delegate, unsupported_affine_weights
from pt2q.lowering.attention_layout import copy_attention_outputs
from pt2q.lowering.delegation_report import DelegationReport, build_delegation_report, source_name

__all__ = [
    "LoweringError",
    "UnsupportedQuantizedPatternError",
    "QuantizedFallbackWarning",
    "LoweredProgram",
    "to_executorch",
    "check_delegate_qparams",
    "pack_embedding_4bit",
    "SAME_QPARAMS_OPS",
]

PathLike = Union[str, "os.PathLike[str]"]

# Ops whose XNNPACK node requires its quantized input(s) and output to have the same
# scale and zero point (XNNPACK's subgraph validation rejects the blob at load time otherwise).
SAME_QPARAMS_OPS = ops(
    aten.cat,
    aten.max_pool2d,
    aten.max_pool2d_with_indices,
    aten.slice_copy,
    aten.clamp,
    aten.hardtanh,
    aten.relu,
    aten.view_copy,
    aten.permute_copy,
    aten.squeeze_copy,
    aten.unsqueeze_copy,
    aten.upsample_bilinear2d,
    aten.pixel_shuffle,
)


class LoweringError(RuntimeError):
    """The program cannot be lowered as asked."""


class UnsupportedQuantizedPatternError(LoweringError):
    """A delegated Q/DQ pattern breaks a constraint of the delegate (the ``.pte`` would not load)."""


class QuantizedFallbackWarning(UserWarning):
    """A quantized pattern was left outside the delegate and runs in float portable kernels."""


@dataclasses.dataclass
class LoweredProgram:
    """An ExecuTorch program: ``buffer`` (the ``.pte`` bytes), its ``report``, and the program it came from."""

    buffer: bytes
    report: DelegationReport
    exported_program: ExportedProgram

    @property
    def size(self) -> int:
        return len(self.buffer)

    def save(self, path: PathLike) -> Path:
        """Write the ``.pte`` atomically, sealed with a SHA-256 digest (load it with ``pt2q.runtime.load``).

        The digest is a trailer ExecuTorch's loaders never read; ``pt2q.runtime.load`` checks it.
        """
        return write_atomic(path, seal_trailer(self.buffer))

    def save_pt2(self, path: PathLike) -> Path:
        """Write the quantized ``ExportedProgram`` with ``pt2q.save_pt2`` (atomic, digest-sealed; ``torch.export.load``
        reads it too)."""
        return save_pt2(self.exported_program, path)

    def save_all(self, directory: PathLike, name: str) -> tuple[Path, Path]:
        """Write both deployable artifacts, ``<name>.pt2`` and ``<name>.pte``, into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        return self.save_pt2(directory / f"{name}.pt2"), self.save(directory / f"{name}.pte")


def to_executorch(
    program: Union[ExportedProgram, GraphModule],
    example_inputs: Optional[Sequence[Any]] = None,
    *,
    delegate: bool = True,
    strict: bool = False,
) -> LoweredProgram:
    """Lower a converted program (or a float one, as a baseline) to ExecuTorch.

    ``program`` is an ``ExportedProgram``, or a ``GraphModule`` from ``convert_pt2e``
    together with ``example_inputs``. ``delegate=False`` skips XNNPACK (everything
    runs in ExecuTorch kernels). A delegated pattern XNNPACK would reject at load
    time raises :class:`UnsupportedQuantizedPatternError` naming the nodes; a
    quantized pattern left outside the delegate warns (raises with ``strict``).
    """
    with quiet():  # ExecuTorch imports torchao (log lines) and lowering warns about torch deprecations
        import executorch.kernels.quantized  # noqa: F401  out variants of quantize/dequantize/embedding_byte
        from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    exported = _as_exported_program(program, example_inputs)
    if delegate:
        _reject_weight_only_linears(exported)
        _raise_if(
            "affine-quantized weight(s) the XNNPACK delegate cannot run as quantized",
            unsupported_affine_weights(exported),
        )
    copy_attention_outputs(exported)  # a view of SDPA's eager layout breaks when ExecuTorch decomposes it (GPT-2)
    with quiet():
        partitioners = [_xnnpack_partitioner()] if delegate else []
        edge = to_edge_transform_and_lower(exported, partitioner=partitioners)
    _raise_if(
        "torchao affine quantize/dequantize ops outside the XNNPACK delegate (ExecuTorch has no kernels for them; "
        "XNNPACK runs them as dynamically quantized linears: int8 per-token activations, symmetric int8-stored "
        "weights; or convert with use_reference_representation=True for plain ATen arithmetic)",
        affine_ops_outside_delegate(edge.exported_program()),
    )
    violations = check_delegate_qparams(edge.exported_program())
    if violations:
        raise UnsupportedQuantizedPatternError(
            "XNNPACK requires these ops to keep their input's quantization parameters, but the "
            "annotations gave them different ones (the .pte would fail to load):\n  "
            + "\n  ".join(violations)
            + "\nShare the qparams (SharedQuantizationSpec from the input) or leave these ops unquantized."
        )
    with quiet():
        edge = edge.transform([pack_embedding_4bit], compile_config=EdgeCompileConfig(_check_ir_validity=False))
        manager = edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True))
    report = build_delegation_report(manager.exported_program())
    if report.fallbacks:
        names = ", ".join(sorted({f"'{r.source}' ({r.op})" for r in report.fallbacks}))
        message = (
            f"quantized pattern(s) around {names} were not taken by the delegate and run in float "
            "portable kernels between quantize/dequantize ops."
        )
        if strict:
            raise LoweringError(message)
        warnings.warn(message, QuantizedFallbackWarning, stacklevel=2)
    return LoweredProgram(buffer=bytes(manager.buffer), report=report, exported_program=exported)


def _xnnpack_partitioner() -> Any:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return XnnpackPartitioner()


# --- input checks --------------------------------------------------------------


def _observer_names(gm: nn.Module) -> list[str]:
    if not isinstance(gm, GraphModule):
        return []
    return [str(n.target) for n in gm.graph.nodes if is_observer_node(n, gm)]


def _not_converted(names: list[str]) -> LoweringError:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return LoweringError(
        f"the model still holds observers/fake quantizers ({shown}): it was prepared but never converted. "
        "Calibrate it, call pt2q.convert_pt2e(model), export the result and lower that."
    )


def _as_exported_program(
    program: Union[ExportedProgram, GraphModule], example_inputs: Optional[Sequence[Any]]
) -> ExportedProgram:
    if isinstance(program, ExportedProgram):
        return program
    if isinstance(program, nn.Module):
        names = _observer_names(program)
        if names:
            raise _not_converted(names)
        if example_inputs is None:
            raise LoweringError("to_executorch(GraphModule) needs example_inputs to export it")
        return torch.export.export(program, tuple(example_inputs))
    raise TypeError(f"to_executorch expects an ExportedProgram or a GraphModule, got {type(program).__name__}")


# --- delegate constraints ------------------------------------------------------


def _reject_weight_only_linears(program: ExportedProgram) -> None:
    """ExecuTorch 1.5.1's XNNPACK partitioner splits a linear whose weight is int8 but whose
    input is float into a "quantized" weight permute and a float addmm that reads the raw
    int8 codes: the .pte computes garbage without a word. Refuse such programs by node name."""
    bad = [
        n.name
        for n in program.graph.nodes
        if n.op == "call_function"
        and is_op(n, LINEAR)
        and is_op(n.args[1], ANY_DEQUANTIZE)
        and not is_op(n.args[0], ANY_DEQUANTIZE)
    ]
    if bad:
        raise UnsupportedQuantizedPatternError(
            f"weight-only quantized linear(s) {', '.join(bad)} (int8 weight, float input): ExecuTorch "
            "1.5.1's XNNPACK delegate computes them wrong. Lower with to_executorch(..., delegate=False) "
            "(portable kernels, exact), or quantize their inputs too (a static or dynamic config)."
        )


def _raise_if(what: str, problems: list[str]) -> None:
    if problems:
        raise UnsupportedQuantizedPatternError(f"{what}:\n  " + "\n  ".join(problems))


def _per_tensor_qparams(node: Node) -> Optional[tuple[float, int]]:
    """(float32 scale, zero point) of a static per-tensor quantize/dequantize node."""
    if not is_op(node, Q_PER_TENSOR | DQ_PER_TENSOR):
        return None
    scale, zero_point = node.args[1], node.args[2]
    if not isinstance(scale, float) or not isinstance(zero_point, int):
        return None
    return float(torch.tensor(scale, dtype=torch.float32)), zero_point


def _same_qparams_violations(graph_module: GraphModule) -> list[str]:
    found = []
    for node in graph_module.graph.nodes:
        if not is_op(node, SAME_QPARAMS_OPS):
            continue
        name = op_name(node.target)
        inputs = [q for q in (_per_tensor_qparams(a) for a in node.all_input_nodes) if q is not None]
        users = list(node.users)
        if is_op(node, {aten.max_pool2d_with_indices}):  # its value output goes through getitem 0
            users = [u for g in users if g.args[1:] == (0,) for u in g.users]
        outputs = [q for q in (_per_tensor_qparams(u) for u in users) if q is not None]
        if inputs and outputs and len(set(inputs) | set(outputs)) > 1:
            detail = ", ".join(f"scale={s:.6g} zp={z}" for s, z in sorted(set(inputs) | set(outputs)))
            found.append(f"'{source_name(node)}' ({name}): {detail}")
    return found


def check_delegate_qparams(edge_program: ExportedProgram) -> list[str]:
    """Delegated ops whose quantized input and output qparams differ where XNNPACK needs them equal."""
    gm = edge_program.graph_module
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.higher_order.executorch_call_delegate:
            lowered = getattr(gm, node.args[0].target)
            found.extend(_same_qparams_violations(lowered.original_module.graph_module))
    return found


# --- 4-bit embeddings ------------------------------------------------------------


def _with_fake_value(node: Node) -> Node:
    if not callable(node.target):
        raise TypeError(f"node '{node.name}' ({node.op}) calls no operator, so it has no fake value to compute")
    args, kwargs = pytree.tree_map_only(Node, lambda n: n.meta["val"], (node.args, node.kwargs))
    node.meta["val"] = node.target(*args, **kwargs)
    return node


def pack_embedding_4bit(gm: GraphModule) -> PassResult:
    """``dequantize_per_channel(int8 in [-8, 7], axis 0) -> embedding`` becomes ``embedding_4bit``.

    The codes are packed two per byte (``quant_fusion._pack_embedding_weight``) and the
    zero points cast to float; ExecuTorch's constant propagation then folds both, so
    the program stores only the packed table. An edge-dialect pass.
    """
    import executorch.exir.passes.quant_fusion_pass  # noqa: F401  defines the embedding kernels' ops
    from executorch.exir.dialects._ops import ops as exir_ops

    edge = exir_ops.edge
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != edge.aten.embedding.default:
            continue
        dq = node.args[0]
        if not isinstance(dq, Node) or dq.target != edge.quantized_decomposed.dequantize_per_channel.default:
            continue
        weight, scales, zero_points, axis, qmin, qmax, dtype = dq.args[:7]
        if not (isinstance(weight, Node) and isinstance(scales, Node)):
            continue  # tensor arguments of an exported graph are always nodes
        if (axis, qmin, qmax, dtype) != (0, -8, 7, torch.int8) or weight.meta["val"].shape[-1] % 2:
            continue
        with gm.graph.inserting_before(node):
            packed = _with_fake_value(
                gm.graph.call_function(edge.quant_fusion._pack_embedding_weight.default, (weight, 4))
            )
            zp = _with_fake_value(
                gm.graph.call_function(
                    edge.dim_order_ops._to_dim_order_copy.default, (zero_points,), {"dtype": scales.meta["val"].dtype}
                )
            )
            lookup = gm.graph.call_function(
                edge.quantized_decomposed.embedding_4bit.default, (packed, scales, zp, -8, 7, node.args[1])
            )
        _with_fake_value(lookup)
        lookup.meta.update({k: v for k, v in node.meta.items() if k != "val"})
        node.replace_all_uses_with(lookup)
        gm.graph.erase_node(node)
        if not dq.users:
            gm.graph.erase_node(dq)
        changed = True
    if changed:
        gm.recompile()
    return PassResult(gm, changed)
