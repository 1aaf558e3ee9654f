"""Test utilities: run a model through pt2q's or torchao's PT2E flow, describe Q/DQ graphs, run on ranks."""

from __future__ import annotations

import collections
import contextlib
import copy
import datetime
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.fx import GraphModule

import pt2q

qd = torch.ops.quantized_decomposed
QDQ_TARGETS = {
    qd.quantize_per_tensor.default,
    qd.quantize_per_tensor.tensor,
    qd.quantize_per_channel.default,
    qd.dequantize_per_tensor.default,
    qd.dequantize_per_tensor.tensor,
    qd.dequantize_per_channel.default,
    qd.choose_qparams.tensor,
    qd.choose_qparams_symmetric.tensor,
}


def export_module(model: torch.nn.Module, example: tuple) -> GraphModule:
    return torch.export.export(copy.deepcopy(model), example).module()


def run_flow(prepare: Callable, convert: Callable, quantizer: Any, model, example, batches) -> GraphModule:
    m = prepare(export_module(model, example), quantizer)
    for batch in batches:
        m(*batch)
    return convert(m)


def pt2q_flow(quantizer, model, example, batches) -> GraphModule:
    return run_flow(pt2q.prepare_pt2e, pt2q.convert_pt2e, quantizer, model, example, batches)


def torchao_flow(quantizer, model, example, batches) -> GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    return run_flow(prepare_pt2e, convert_pt2e, quantizer, model, example, batches)


def _arg_value(gm: GraphModule, arg: Any) -> Any:
    if isinstance(arg, torch.fx.Node):
        if arg.op == "get_attr":
            value = gm
            for part in arg.target.split("."):
                value = getattr(value, part)
            return (
                tuple(value.flatten().tolist()) if value.numel() < 4096 else ("tensor", tuple(value.shape), value.dtype)
            )
        return "node"
    return arg


def qdq_signature(gm: GraphModule) -> collections.Counter:
    """Multiset of (op, qparams) over all quantize/dequantize/choose_qparams nodes."""
    sig: collections.Counter = collections.Counter()
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in QDQ_TARGETS:
            sig[(str(n.target),) + tuple(_arg_value(gm, a) for a in n.args[1:])] += 1
    return sig


def saved_size(gm: GraphModule, example: tuple) -> int:
    buf = io.BytesIO()
    torch.export.save(torch.export.export(gm, example), buf)
    return buf.getbuffer().nbytes


def run_on_ranks(fn: Callable[..., Any], world: int = 2, timeout: float = 120.0, args: tuple = ()) -> list[Any]:
    """``fn(rank, world, *args)`` in ``world`` forked processes joined by a gloo process group; each rank's result.

    Every process runs one thread. Results travel through ``torch.save`` files, so they
    hold tensors, numbers, strings and containers of them. A worker's exception is
    re-raised here; a hang (a collective that some rank never joins) is killed and
    raises ``TimeoutError`` after ``timeout`` seconds instead of blocking.
    """
    with tempfile.TemporaryDirectory() as tmp:
        ctx = torch.multiprocessing.start_processes(
            _rank_main, args=(world, tmp, fn, args, timeout), nprocs=world, join=False, start_method="fork"
        )
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                for process in ctx.processes:
                    process.kill()
                raise TimeoutError(f"run_on_ranks: {fn.__name__} did not finish on {world} ranks in {timeout:.0f} s")
        return [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in range(world)]


def _rank_main(rank: int, world: int, tmp: str, fn: Callable[..., Any], args: tuple, timeout: float) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/store",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout),
    )
    try:
        torch.save(fn(rank, world, *args), os.path.join(tmp, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Import it into a test module whose models are tiny: a second intra-op thread only adds
    spinning on a busy 2-core machine."""
    with torch_threads(1):
        yield


def _spec_summary(spec: object) -> object:
    if spec is None:
        return None
    if type(spec).__name__ == "SharedQuantizationSpec":
        shared = spec.edge_or_node  # type: ignore[attr-defined]
        return ("shared", tuple(n.name for n in shared) if isinstance(shared, tuple) else shared.name)
    return (
        type(spec).__name__,
        spec.dtype,  # type: ignore[attr-defined]
        spec.quant_min,  # type: ignore[attr-defined]
        spec.quant_max,  # type: ignore[attr-defined]
        spec.qscheme,  # type: ignore[attr-defined]
        getattr(spec, "ch_axis", None),
        getattr(spec, "is_dynamic", False),
    )


def annotation_summary(gm: GraphModule) -> dict[str, tuple]:
    """node name -> its input and output specs, for every node with a spec (comparable across libraries)."""
    summary = {}
    for node in gm.graph.nodes:
        ann = node.meta.get("quantization_annotation")
        if ann is None or not (ann.input_qspec_map or ann.output_qspec is not None):
            continue
        inputs = tuple(sorted((n.name, _spec_summary(s)) for n, s in ann.input_qspec_map.items()))
        summary[node.name] = (inputs, _spec_summary(ann.output_qspec))
    return summary


def xnnpack_oracle_without_bn_patterns(**config_kwargs: Any) -> Any:
    """ExecuTorch's XNNPACKQuantizer (global symmetric config) without its conv+BatchNorm patterns: those
    export their pattern graphs on every annotate call (seconds each); for models without BatchNorm the
    annotation is the same."""
    from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as et

    class _Quantizer(et.XNNPACKQuantizer):
        SUPPORTED_PATTERNS = [p for p in et.XNNPACKQuantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]

    return _Quantizer().set_global(et.get_symmetric_quantization_config(**config_kwargs))
