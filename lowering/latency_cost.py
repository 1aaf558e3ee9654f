"""Measured costs for ``pt2q.quantize(..., ladder=...)``: each layer's latency on the target, per rung.

    cost = PteLatencyCost()                     # XNNPACK .pte, one thread
    cost = X86LatencyCost()                     # Inductor + oneDNN, one thread
    result = pt2q.quantize(model, ex, quantizer, batches, min_sqnr=30, ladder=ladder, cost=cost)

A linear or conv layer is cut out of the float graph with its real weights and input shapes
(one-op program), quantized with each rung's quantizer, lowered as the target lowers it, and
timed: one thread, the rungs of one layer called in turn in a fresh random order each round
(so background load hits all alike), the median of ``runs`` calls, the best of ``rounds``. A
rung whose program fails to lower, or leaves the quantized op outside the delegate, gets no
cost (the search then never picks it there). Layers of the same op, shapes and rung share one
measurement; results are cached in memory and, with ``cache_path``, in a JSON file (written
atomically) keyed by the CPU's features, so a machine with VNNI and one without never share.

Only weighted layers (linear, conv) are timed. Other ops (elementwise, norms, activation
matmuls) are priced 0 on every rung: on XNNPACK an int8 add or mul runs no faster than its fp32
form (a float one costs two conversions), so moving them changes nothing the search can see.
"""

from __future__ import annotations

import hashlib
import json
import operator
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import torch
from torch.fx import Graph, GraphModule, Node
from tqdm import tqdm

from pt2q.algorithms.keep_float import layer_name
from pt2q.algorithms.precision_ladder import Rung
from pt2q.core.ops import CONV, LINEAR, is_op
from pt2q.io.atomic_file import write_atomic
from pt2q.io.quiet import quiet
from pt2q.passes.convert import convert_pt2e
from pt2q.passes.prepare import prepare_pt2e

__all__ = ["PteLatencyCost", "X86LatencyCost", "cpu_features", "single_op_program"]

Program = Callable[..., Any]


def cpu_features() -> dict[str, bool]:
    """The instruction sets that decide which int8 recipe is fast here (detected, never assumed)."""
    caps = getattr(torch.cpu, "get_capabilities", None)
    flags = {k for k, v in caps().items() if v is True} if caps is not None else set()
    if not flags:
        try:
            with open("/proc/cpuinfo") as f:
                flags = next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
        except OSError:
            flags = set()
    return {
        "avx2": "avx2" in flags,
        "avx512": bool(flags & {"avx512f", "avx512_f"}),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"}),
    }


def _cpu_key() -> str:
    return ",".join(k for k, v in sorted(cpu_features().items()) if v) or "baseline"


def single_op_program(float_gm: GraphModule, node: Node) -> tuple[GraphModule, tuple[torch.Tensor, ...]]:
    """``node`` alone, with its real weights and random inputs of its recorded shapes, as an exported graph."""
    graph = Graph()
    root = torch.nn.Module()
    inputs: list[torch.Tensor] = []
    env: dict[Node, Node] = {}
    for i, arg in enumerate(node.all_input_nodes):
        if arg.op == "get_attr":
            value = operator.attrgetter(str(arg.target))(float_gm)
            root.register_buffer(f"w{i}", value.detach().clone())
            env[arg] = graph.get_attr(f"w{i}")
            continue
        val = arg.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise ValueError(f"cannot time '{node.name}': its input '{arg.name}' has no recorded tensor value")
        gen = torch.Generator().manual_seed(i)
        sample = torch.randn(val.shape, generator=gen) if val.is_floating_point() else torch.zeros(val.shape)
        inputs.append(sample.to(val.dtype))
        env[arg] = graph.placeholder(f"x{i}")
    out = graph.call_function(node.target, *_mapped(node, env))  # type: ignore[arg-type]
    graph.output(out)
    gm = GraphModule(root, graph)
    with quiet():
        return torch.export.export(gm, tuple(inputs)).module(), tuple(inputs)


def _mapped(node: Node, env: Mapping[Node, Node]) -> tuple[tuple, dict]:
    from torch.fx.node import map_arg

    return map_arg(node.args, lambda n: env[n]), map_arg(node.kwargs, lambda n: env[n])


def _signature(node: Node, rung: Rung) -> str:
    def describe(a: Any) -> Any:
        if isinstance(a, Node):
            val = a.meta.get("val")
            return (tuple(val.shape), str(val.dtype)) if isinstance(val, torch.Tensor) else a.name
        return repr(a)

    text = repr((str(node.target), [describe(a) for a in node.args], sorted(node.kwargs), rung.name))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _quantized(gm: GraphModule, inputs: tuple, rung: Rung) -> GraphModule:
    if rung.quantizer is None:
        return gm
    prepared = prepare_pt2e(gm, rung.quantizer)
    with torch.no_grad():
        prepared(*inputs)
    return convert_pt2e(prepared)


def interleaved_ms(programs: Mapping[str, Program], inputs: tuple, runs: int, rounds: int) -> dict[str, float]:
    """Best over ``rounds`` of each program's median latency (ms) over ``runs`` calls, called in turn."""
    order = list(programs.items())
    rng = random.Random(0)
    best = dict.fromkeys(programs, float("inf"))
    for program in programs.values():
        program(*inputs)  # warm-up
    for _ in range(rounds):
        samples: dict[str, list[float]] = {name: [] for name in programs}
        for _ in range(runs):
            rng.shuffle(order)
            for name, program in order:
                t0 = time.perf_counter()
                program(*inputs)
                samples[name].append((time.perf_counter() - t0) * 1e3)
        best = {name: min(best[name], statistics.median(s)) for name, s in samples.items()}
    return best


class _LayerCost:
    """Shared machinery: which layers to time, the cache, one thread while timing."""

    name = ""
    unit = "ms"

    def __init__(
        self, runs: int = 15, rounds: int = 2, cache_path: Union[str, Path, None] = None, progress: bool = True
    ) -> None:
        self.runs, self.rounds, self.progress = runs, rounds, progress
        self.cache_path = None if cache_path is None else Path(cache_path)
        self.cache: dict[str, float] = {}
        if self.cache_path is not None and self.cache_path.is_file():
            self.cache = {k: float(v) for k, v in json.loads(self.cache_path.read_text()).items()}
        self.measured = 0  # programs built and timed (cache misses)

    def _key(self, node: Node, rung: Rung) -> str:
        return f"{type(self).__name__}|{_cpu_key()}|{_signature(node, rung)}"

    def layer_costs(self, float_gm: GraphModule, requests: Mapping[str, Sequence[Rung]]) -> dict[str, dict[str, float]]:
        nodes = {layer_name(n): n for n in float_gm.graph.nodes if n.op == "call_function"}
        out: dict[str, dict[str, float]] = {}
        todo: dict[str, tuple[Node, list[Rung]]] = {}
        for layer, rungs in requests.items():
            node = nodes.get(layer)
            if node is None:
                continue
            if not is_op(node, LINEAR | CONV):
                out[layer] = {r.name: 0.0 for r in rungs}
                continue
            for r in rungs:
                key = self._key(node, r)
                if key not in self.cache:
                    todo.setdefault(_signature(node, Rung("", None)), (node, []))[1].append(r)
        if todo:
            self._one_thread()
            torch_threads = torch.get_num_threads()
            torch.set_num_threads(1)  # torch's own pool spinning beside the timed program skews it (8x seen)
            try:
                for node, rungs in tqdm(
                    todo.values(), desc="pt2q: timing layers", unit="layer", disable=not self.progress, file=sys.stderr
                ):
                    unique = list({r.name: r for r in rungs}.values())
                    for rung_name, ms in self._time_layer(float_gm, node, unique).items():
                        self.cache[self._key(node, next(r for r in unique if r.name == rung_name))] = ms
                    self.measured += len(unique)
            finally:
                torch.set_num_threads(torch_threads)
            if self.cache_path is not None:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(self.cache_path, json.dumps(self.cache, indent=1, sort_keys=True).encode())
        for layer, rungs in requests.items():
            node = nodes.get(layer)
            if node is None or layer in out:
                continue
            out[layer] = {r.name: self.cache[k] for r in rungs if (k := self._key(node, r)) in self.cache}
            out[layer] = {n: ms for n, ms in out[layer].items() if ms != float("inf")}
        return out

    def _time_layer(self, float_gm: GraphModule, node: Node, rungs: Sequence[Rung]) -> dict[str, float]:
        gm, inputs = single_op_program(float_gm, node)
        programs: dict[str, Program] = {}
        failed: dict[str, float] = {}
        for rung in rungs:
            try:
                programs[rung.name] = self._build(
                    _quantized(_copy(gm), inputs, rung), inputs, quantized=not rung.is_float
                )
            except Exception:  # the rung does not lower here: it gets no cost
                failed[rung.name] = float("inf")
        times = self._time(programs, inputs) if programs else {}
        return {**times, **failed}

    def _one_thread(self) -> None:
        """Make the target runtime single-threaded before programs are built (where it can be)."""

    def _build(self, gm: GraphModule, inputs: tuple, quantized: bool) -> Program:  # pragma: no cover - abstract
        raise NotImplementedError

    def _time(self, programs: Mapping[str, Program], inputs: tuple) -> dict[str, float]:
        return interleaved_ms(programs, inputs, self.runs, self.rounds)


def _copy(gm: GraphModule) -> GraphModule:
    import copy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(gm)


class PteLatencyCost(_LayerCost):
    """Single-thread latency of each layer as an XNNPACK-delegated ExecuTorch ``.pte``, per rung."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = f"XNNPACK .pte latency per layer, 1 thread, measured ({_cpu_key()})"

    def _one_thread(self) -> None:
        from pt2q.runtime import live_programs, set_num_threads

        if not live_programs():
            set_num_threads(1)

    def _build(self, gm: GraphModule, inputs: tuple, quantized: bool) -> Program:
        from pt2q.lowering.executorch import QuantizedFallbackWarning, to_executorch
        from pt2q.runtime import load

        with warnings.catch_warnings():
            warnings.simplefilter("error", QuantizedFallbackWarning)  # a quantized op left outside: no rung here
            lowered = to_executorch(gm, inputs)
        if quantized and not any(r.precision.startswith("int") for r in lowered.report.weighted_ops):
            raise ValueError("the rung's quantized layer did not reach the delegate as int8")
        return load(lowered.buffer)

    def _time(self, programs: Mapping[str, Program], inputs: tuple) -> dict[str, float]:
        from pt2q.runtime import get_num_threads

        if get_num_threads() != 1:
            warnings.warn(
                "PteLatencyCost: ExecuTorch's thread pool has "
                f"{get_num_threads()} threads (call pt2q.runtime.set_num_threads(1) before loading programs): "
                "timing with it",
                stacklevel=3,
            )
        return super()._time(programs, inputs)


class X86LatencyCost(_LayerCost):
    """Single-thread latency of each layer compiled by Inductor (oneDNN int8 kernels), per rung."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name = f"Inductor/oneDNN latency per layer, 1 thread, measured ({_cpu_key()})"

    def _build(self, gm: GraphModule, inputs: tuple, quantized: bool) -> Program:
        from pt2q.lowering.x86 import compile_quantized_for_x86

        with quiet():
            return compile_quantized_for_x86(gm, inputs)  # compiles now, not inside the timed loop
