"""Lower a converted (Q/DQ) pt2q model to x86 int8 kernels: oneDNN through Inductor.

Two entry points, both taking the model ``convert_pt2e`` returned (quantized with
``X86InductorQuantizer``) and example inputs:

* :func:`compile_quantized_for_x86` compiles it with ``torch.compile`` (Inductor,
  freezing on) and returns an :class:`X86CompiledModel`: every ``dq -> conv/linear
  [-> unary/add] -> q`` becomes one ``torch.ops.onednn.qconv_pointwise`` /
  ``qlinear_pointwise`` call on prepacked int8 weights, the rest fused C++ loops.
  This is the fast one.
* :func:`lower_pt2e_quantized_to_x86` (torchao's name and signature) runs the same
  freezing passes on the FX graph only and returns a ``GraphModule`` that calls the
  oneDNN ops eagerly: no C++ compilation, a few seconds to lower.

The ``torch.compile`` recipe, and the traps :class:`X86CompiledModel` takes care of::

    import torch._inductor.config as inductor_config
    inductor_config.freezing = True        # (1) the global setting: a compile option is not enough
    with torch.no_grad():                  # freezing only applies without autograd
        compiled = torch.compile(converted)
        out = compiled(x.clone())          # (3) clone: see below

1. ``torch.compile(m, options={"freezing": True})`` does not freeze the weights
   but still runs the weight-prepacking passes, which then fail on the non-constant
   weights; freezing must be set in ``torch._inductor.config`` while compiling.
2. Compilation is lazy, and ``torch._dynamo.reset()`` (called by strict
   ``torch.export``, ``run_and_get_code``, ...) drops compiled code: the next call
   recompiles with whatever ``freezing`` is then, silently giving fp32 convolutions
   on dequantized tensors. :class:`X86CompiledModel` therefore sets freezing and
   ``no_grad`` around every call, so any recompilation is int8 too.
3. Inductor fuses ``linear -> add(residual)`` into a oneDNN "sum" post-op that
   accumulates into the residual's buffer, and that buffer may be the caller's
   input tensor, which then comes back modified. The compiled model runs on copies
   of its tensor inputs; the FX lowering gives such ops a copy of the input (and,
   for convs, the channels-last buffer oneDNN requires).
4. Linears on (batch, seq, hidden) inputs are decomposed to ``view -> addmm``
   (``expand -> view -> bmm`` when the input is not contiguous); Inductor's
   quantized-linear patterns expect ``reshape`` and no same-shape views. Inside
   ``torch.compile`` freezing and the joint-graph passes rewrite them first; the FX
   lowering does it itself, else 3-D linears stay dequantize + fp32 ``addmm``.
5. Inductor gives an int8 ``conv1d`` the wrong output length (its shape function reads the
   prepacked 4-D weight's unit dim as the kernel); both entry points run a copy of the model
   whose int8 conv1d are the equal conv2d (:mod:`pt2q.lowering.conv1d_as_conv2d`).

On CPUs without VNNI the int8 kernels saturate unless activations are 7-bit:
``get_default_x86_inductor_quantization_config`` chooses ``reduce_range`` for the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch._inductor.config as inductor_config
from torch.fx import GraphModule, Node
from torch.utils import _pytree as pytree

from pt2q.io.quiet import quiet
from pt2q.lowering.conv1d_as_conv2d import conv1d_as_conv2d_copy

__all__ = ["lower_pt2e_quantized_to_x86", "compile_quantized_for_x86", "X86CompiledModel", "int8_inference"]

aten = torch.ops.aten
_VIEW_OPS = {
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
    aten.permute.default,
    aten.expand.default,
}


@contextlib.contextmanager
def int8_inference() -> Iterator[None]:
    """Inference with Inductor freezing on: what makes Inductor fuse Q/DQ into oneDNN int8 kernels."""
    frozen = inductor_config.freezing
    inductor_config.freezing = True  # a plain assignment: config.patch() costs ~10 µs per call
    try:
        with torch.no_grad():
            yield
    finally:
        inductor_config.freezing = frozen


def _copy(x: Any) -> Any:
    return x.clone() if isinstance(x, torch.Tensor) else x


def _copy_inputs(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    if not kwargs and all(isinstance(a, torch.Tensor) for a in args):  # the common case, without pytree's cost
        return tuple(a.clone() for a in args), kwargs
    return pytree.tree_map(_copy, args), pytree.tree_map(_copy, kwargs)


def _signature(args: tuple, kwargs: dict) -> Any:
    """What the module's input checks depend on: the structure, shapes and dtypes of the inputs."""
    if not kwargs and all(isinstance(a, torch.Tensor) for a in args):
        return tuple((a.shape, a.dtype) for a in args)
    leaves, spec = pytree.tree_flatten((args, kwargs))
    return str(spec), tuple((x.shape, x.dtype) if isinstance(x, torch.Tensor) else repr(x) for x in leaves)


class X86CompiledModel:
    """A converted model compiled by Inductor for x86 int8; call it like the model.

    Every call runs with freezing on and autograd off (so a recompilation after
    ``torch._dynamo.reset()`` is int8 again) on copies of the tensor inputs (so the
    caller's tensors are never written to). ``model`` is the converted model.
    """

    def __init__(self, model: torch.nn.Module, dynamic: bool = False) -> None:
        model = conv1d_as_conv2d_copy(model)  # Inductor mis-sizes int8 conv1d; it runs as the equal conv2d
        self.model = model
        # forward, not the module: the input-validation hooks ExportedProgram.module() puts on
        # it would run in Python on every call (~45 µs: a quarter of a small MLP's latency).
        # Inputs are validated by the module itself once per new input signature instead.
        self._compiled: Callable[..., Any] = torch.compile(model.forward, dynamic=dynamic)
        self._validated: set[Any] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        args, kwargs = _copy_inputs(args, kwargs)
        signature = _signature(args, kwargs)
        frozen, inductor_config.freezing = inductor_config.freezing, True  # int8_inference(), inlined: per-call cost
        try:
            with torch.no_grad():
                if signature not in self._validated:
                    self.model(*args, **kwargs)  # the module's own checks, with their error messages
                    with quiet():  # this call compiles: Inductor's warnings are not the caller's
                        out = self._compiled(*args, **kwargs)
                    self._validated.add(signature)
                    return out
                return self._compiled(*args, **kwargs)
        finally:
            inductor_config.freezing = frozen


def compile_quantized_for_x86(
    model: torch.nn.Module, example_inputs: tuple[Any, ...] | None = None, dynamic: bool = False
) -> X86CompiledModel:
    """Compile a converted model for x86 int8 with Inductor; compiles now if given ``example_inputs``.

    ``dynamic=False`` specializes on the example shapes (new shapes recompile).
    """
    compiled = X86CompiledModel(model, dynamic=dynamic)
    if example_inputs is not None:
        compiled(*example_inputs)
    return compiled


# --- FX-level lowering --------------------------------------------------------------------


def _cia_decompositions() -> dict:
    """Decompose only composite-implicit ops (linear -> addmm, ...), the form Inductor's patterns expect."""
    from torch._export.utils import _is_cia_op

    table = torch.export.default_decompositions()
    for op in list(table.keys()):
        if not _is_cia_op(op):
            del table[op]
    return table


def _t_to_permute(gm: GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target == aten.t.default:
            with gm.graph.inserting_before(node):
                permute = gm.graph.call_function(aten.permute.default, (node.args[0], [1, 0]))
            permute.meta.update(node.meta)
            node.replace_all_uses_with(permute)
            gm.graph.erase_node(node)
    gm.recompile()


def _is_input_alias(node: object) -> bool:
    """True if ``node`` is a graph input, or a view of one."""
    while isinstance(node, Node) and node.op == "call_function" and node.target in _VIEW_OPS:
        node = node.args[0]
    return isinstance(node, Node) and node.op == "placeholder"


def _is_channels_last(node: Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dim() == 4 and val.is_contiguous(memory_format=torch.channels_last)


def _fix_accumulators(gm: GraphModule) -> int:
    """Make every oneDNN "sum" post-op accumulate into a buffer of its own, in the layout it needs.

    ``qlinear_pointwise.binary`` / ``qconv2d_pointwise.binary`` with "sum" write
    their result into the accumulated tensor (argument 6): a graph input (or a view
    of one) is copied first, so the caller's tensor is left alone; a conv's
    accumulator must also be channels-last, as the conv's output is.
    """
    onednn = torch.ops.onednn
    linear_ops = {onednn.qlinear_pointwise.binary, onednn.qlinear_pointwise.binary_tensor}
    conv_ops = {onednn.qconv2d_pointwise.binary, onednn.qconv2d_pointwise.binary_tensor}
    copies = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in linear_ops | conv_ops or "sum" not in node.args:
            continue
        accum = node.args[6]
        is_conv = node.target in conv_ops
        if not isinstance(accum, Node) or not (_is_input_alias(accum) or (is_conv and not _is_channels_last(accum))):
            continue
        memory_format = torch.channels_last if is_conv else torch.contiguous_format
        kwargs: dict[str, Any] = {"memory_format": memory_format}
        with gm.graph.inserting_before(node):
            copy = gm.graph.call_function(aten.clone.default, (accum,), kwargs)
        node.update_arg(6, copy)
        copies += 1
    gm.recompile()
    return copies


def lower_pt2e_quantized_to_x86(model: GraphModule, example_inputs: tuple[torch.Tensor, ...]) -> GraphModule:
    """Lower a PT2E-quantized model to oneDNN int8 ops in an FX graph (runs eagerly, no compilation).

    Re-exports the model (non-strict, so it leaves ``torch.compile`` caches alone),
    decomposes it to the form Inductor's quantization patterns match, runs
    Inductor's freezing passes (weight prepacking, conv/linear post-op fusion) and
    constant folding. The result never writes into its inputs.
    """
    from torch._inductor.constant_folding import constant_fold
    from torch._inductor.fx_passes.freezing_patterns import freezing_passes
    from torch._inductor.fx_passes.post_grad import remove_noop_ops, view_to_reshape

    model = conv1d_as_conv2d_copy(model)
    with torch.no_grad():
        exported = torch.export.export(model, tuple(example_inputs), strict=False)
        lowered = exported.run_decompositions(_cia_decompositions()).module()
        _t_to_permute(lowered)
        remove_noop_ops(lowered.graph)  # same-shape views between expand and bmm hide linears on permuted inputs
        view_to_reshape(lowered)
        lowered.recompile()
        with inductor_config.patch(freezing=True):
            freezing_passes(lowered, list(example_inputs))
        constant_fold(lowered)
        _fix_accumulators(lowered)
    return lowered
