"""``X86InductorQuantizer``: uint8 activations, int8 per-channel weights, for Inductor's oneDNN kernels.

Behaves like ``torchao.quantization.pt2e.quantizer.x86_inductor_quantizer.X86InductorQuantizer``
(same patterns, specs and precedence, so the same Q/DQ graph), built on the
operator annotators of :mod:`pt2q.quantizers.annotators`::

    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    quantizer.set_module_name_qconfig("head", None)          # keep the head in float
    quantizer.set_function_type_qconfig(torch.matmul, get_default_x86_inductor_quantization_config())

The recipe quantizes the *inputs* of int8-capable patterns and never their
outputs: a pattern's result is quantized only when its consumer wants int8
input. Patterns (each fuses into one oneDNN kernel after lowering):

* conv2d (+ relu / hardtanh / relu6 / hardswish / silu), conv1d + relu,
  conv2d + add (+ relu) with the extra add input quantized too;
* linear (+ relu / leaky_relu / tanh / gelu), linear + add (+ relu) with the
  extra add input left float (it is accumulated in fp32);
* mul of two same-shaped tensors, and matmul when asked for by
  ``set_function_type_qconfig(torch.matmul, ...)`` or a module-name config;
* QAT only (BatchNorm still present): conv2d + batch_norm (+ unary / + add (+ relu));
* int8-in/int8-out ops fed by one of the above — max_pool2d, avg_pool2d,
  adaptive_avg_pool2d, cat, flatten — whose output shares its input's qparams.

Configs apply with the precedence module name > function/module type > global;
``None`` keeps the covered nodes in float. ``set_module_type_qconfig`` means the
operator type, as in torchao (``nn.Conv2d`` covers every ``conv2d``). Mixing QAT
and PTQ configs, or static and dynamic ones, is refused with a warning.

``reduce_range`` defaults to what the CPU needs (see
:mod:`pt2q.quantizers.cpu_capability`): 7-bit activations without VNNI, whose
int8 kernels saturate on full-range uint8 inputs.

Where pt2q differs from torchao, on purpose: patterns are matched by operator,
not by the module that produced them, so ``F.relu``/``torch.add`` fuse like
``nn.ReLU``/``+`` and a module called twice (``self.relu`` reused) is fine where
torchao raises; a module-name config asks each pattern's anchor (conv, linear,
...) rather than every node of the pattern.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch._ops import OpOverload
from torch.fx import GraphModule, Node

from pt2q.pattern import find_chains, is_op, sole_user
from pt2q.quantizer import Quantizer
from pt2q.quantizers.annotators import (
    FilterFn,
    _weighted_inputs,
    get_annotator,
    get_input_act_qspec,
    get_output_act_qspec,
    is_annotated,
    mark_annotated,
    register_annotator,
)
from pt2q.quantizers.cpu_capability import cpu_has_vnni
from pt2q.quantizers.observer_choice import activation_constructor, weight_constructor
from pt2q.spec import (
    Q_ANNOTATION_KEY,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpec,
    SharedQuantizationSpec,
)

__all__ = [
    "X86InductorQuantizer",
    "get_default_x86_inductor_quantization_config",
    "INT8_IN_INT8_OUT_OPS",
    "QUANTIZABLE_OPS",
]

aten = torch.ops.aten
CONV2D = aten.conv2d.default
CONV1D = aten.conv1d.default
LINEAR = aten.linear.default
MUL = aten.mul.Tensor
MATMUL = aten.matmul.default
ADD = {aten.add.Tensor, aten.add_.Tensor}
RELU = {aten.relu.default, aten.relu_.default}
BATCH_NORM = {aten.batch_norm.default}
# hardtanh covers nn.ReLU6 (hardtanh(0, 6)); relu has the shared "conv_relu" annotator
CONV_UNARY = {
    aten.hardtanh.default,
    aten.hardtanh_.default,
    aten.hardswish.default,
    aten.hardswish_.default,
    aten.silu.default,
    aten.silu_.default,
}
LINEAR_UNARY = {
    aten.leaky_relu.default,
    aten.leaky_relu_.default,
    aten.tanh.default,
    aten.tanh_.default,
    aten.gelu.default,
    aten.gelu_.default,
}
MAX_POOL2D, AVG_POOL2D = aten.max_pool2d.default, aten.avg_pool2d.default
ADAPTIVE_AVG_POOL2D, CAT, FLATTEN = aten.adaptive_avg_pool2d.default, aten.cat.default, aten.flatten.using_ints

# Ops oneDNN runs on int8 directly when their input is int8; their output keeps the input's qparams.
INT8_IN_INT8_OUT_OPS = frozenset({MAX_POOL2D, AVG_POOL2D, ADAPTIVE_AVG_POOL2D, CAT, FLATTEN})
# Anchors the global config quantizes; matmul is opt-in.
DEFAULT_QUANTIZABLE_OPS = INT8_IN_INT8_OUT_OPS | {CONV1D, CONV2D, LINEAR, MUL}
QUANTIZABLE_OPS = DEFAULT_QUANTIZABLE_OPS | {MATMUL}

# What set_function_type_qconfig / set_module_type_qconfig accept, and the operator each means.
_OPERATOR_OF: dict[Any, OpOverload] = {
    nn.Conv1d: CONV1D,
    F.conv1d: CONV1D,
    nn.Conv2d: CONV2D,
    F.conv2d: CONV2D,
    nn.Linear: LINEAR,
    F.linear: LINEAR,
    nn.MaxPool2d: MAX_POOL2D,
    F.max_pool2d: MAX_POOL2D,
    nn.AvgPool2d: AVG_POOL2D,
    F.avg_pool2d: AVG_POOL2D,
    nn.AdaptiveAvgPool2d: ADAPTIVE_AVG_POOL2D,
    F.adaptive_avg_pool2d: ADAPTIVE_AVG_POOL2D,
    torch.cat: CAT,
    torch.flatten: FLATTEN,
    torch.matmul: MATMUL,
    torch.mul: MUL,
}


# --- config ----------------------------------------------------------------------------

_warned_saturating = False


def _warn_if_saturating(reduce_range: bool) -> None:
    global _warned_saturating
    if reduce_range or _warned_saturating or cpu_has_vnni():
        return
    _warned_saturating = True
    warnings.warn(
        "reduce_range=False on a CPU without VNNI (or with oneDNN capped below it): oneDNN's "
        "u8 x s8 int8 kernels saturate on full-range uint8 activations and lose most accuracy. "
        "Leave reduce_range unset to choose it from the CPU.",
        stacklevel=3,
    )


def get_default_x86_inductor_quantization_config(
    is_qat: bool = False, is_dynamic: bool = False, reduce_range: Optional[bool] = None
) -> QuantizationConfig:
    """uint8 per-tensor affine activations and int8 symmetric per-channel weights, as oneDNN runs them.

    Static activations are calibrated with a ``HistogramObserver`` (QAT: fused
    fake quantizers), dynamic ones get qparams at run time. ``reduce_range``
    limits activations to ``[0, 127]``; unset (None), it is on exactly when the
    CPU lacks VNNI (forcing it off there warns once). Bias stays float. Equal
    arguments return the same (cached) config object.
    """
    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    else:
        _warn_if_saturating(reduce_range)
    return _x86_config(is_qat, is_dynamic, reduce_range)


@functools.lru_cache
def _x86_config(is_qat: bool, is_dynamic: bool, reduce_range: bool) -> QuantizationConfig:
    act = QuantizationSpec(
        dtype=torch.uint8,
        quant_min=0,
        quant_max=127 if reduce_range else 255,
        qscheme=torch.per_tensor_affine,
        is_dynamic=is_dynamic,
        observer_or_fake_quant_ctr=activation_constructor(is_qat, is_dynamic),
    )
    weight = QuantizationSpec(
        dtype=torch.int8,
        quant_min=-128,
        quant_max=127,
        qscheme=torch.per_channel_symmetric,
        ch_axis=0,
        is_dynamic=False,
        observer_or_fake_quant_ctr=weight_constructor(is_qat, is_per_channel=True),
    )
    return QuantizationConfig(input_activation=act, output_activation=act, weight=weight, bias=None, is_qat=is_qat)


def _inputs_only(config: QuantizationConfig) -> QuantizationConfig:
    """The config as the x86 recipe applies it to conv/linear/mul: no output spec."""
    return dataclasses.replace(config, output_activation=None)


# --- x86-specific annotators ----------------------------------------------------------------


def _set(node: Node, inputs: Optional[dict] = None, output: Any = None) -> None:
    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
        input_qspec_map=dict(inputs or {}), output_qspec=output, _annotated=True
    )


def _accepts(filter_fn: Optional[FilterFn], node: Node) -> bool:
    return filter_fn is None or bool(filter_fn(node))


def _fused_operand(add: Node, ops: set) -> Optional[tuple[Node, Node]]:
    """``(op_node, extra_input)`` when one operand of ``add`` is an ``ops`` node used only by the add."""
    if len(add.args) < 2 or not all(isinstance(a, Node) for a in add.args[:2]):
        return None
    for i in (0, 1):
        op, extra = add.args[i], add.args[1 - i]
        if is_op(op, ops) and len(op.users) == 1:
            return op, extra
    return None


def _annotate_weighted_binary(
    gm: GraphModule,
    config: Optional[QuantizationConfig],
    filter_fn: Optional[FilterFn],
    ops: set,
    with_relu: bool,
    quantize_extra: bool,
    through_bn: bool = False,
) -> list[list[Node]]:
    """``op [-> batch_norm] -> add [-> relu]``: op inputs, and the add's other operand when ``quantize_extra``."""
    partitions = []
    for add in list(gm.graph.nodes):
        if not is_op(add, ADD):
            continue
        found = _fused_operand(add, BATCH_NORM if through_bn else ops)
        if found is None:
            continue
        producer, extra = found
        op = producer.args[0] if through_bn else producer
        if through_bn and not (is_op(op, ops) and len(op.users) == 1):
            continue
        relu = sole_user(add) if with_relu else None
        if with_relu and not is_op(relu, RELU):
            continue
        inputs, params = _weighted_inputs(op, config)
        pattern = [n for n in (relu, add, producer, op) if n is not None]
        if is_annotated(pattern) or not _accepts(filter_fn, op):
            continue
        out_spec = get_output_act_qspec(config)  # only QAT configs keep one here
        _set(op, inputs)
        _set(add, {extra: get_input_act_qspec(config)} if quantize_extra else {}, None if with_relu else out_spec)
        if with_relu:
            _set(relu, output=out_spec)
        mark_annotated([producer, *params])
        partitions.append(list(dict.fromkeys([*pattern, *params])))
    return partitions


@register_annotator("x86_conv_add")
def annotate_conv_add(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``conv2d -> add``: conv inputs and the add's other operand (oneDNN adds it in int8)."""
    return _annotate_weighted_binary(gm, config, filter_fn, {CONV2D}, with_relu=False, quantize_extra=True)


@register_annotator("x86_conv_add_relu")
def annotate_conv_add_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``conv2d -> add -> relu``: as ``x86_conv_add``, the relu fused after."""
    return _annotate_weighted_binary(gm, config, filter_fn, {CONV2D}, with_relu=True, quantize_extra=True)


@register_annotator("x86_linear_add")
def annotate_linear_add(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``linear -> add``: linear inputs only; the other operand is accumulated in float."""
    return _annotate_weighted_binary(gm, config, filter_fn, {LINEAR}, with_relu=False, quantize_extra=False)


@register_annotator("x86_linear_add_relu")
def annotate_linear_add_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``linear -> add -> relu``: as ``x86_linear_add``, the relu fused after."""
    return _annotate_weighted_binary(gm, config, filter_fn, {LINEAR}, with_relu=True, quantize_extra=False)


@register_annotator("x86_conv_bn_add")
def annotate_conv_bn_add(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """QAT ``conv2d -> batch_norm -> add``: conv inputs, the other operand, the add's output."""
    return _annotate_weighted_binary(
        gm, config, filter_fn, {CONV2D}, with_relu=False, quantize_extra=True, through_bn=True
    )


@register_annotator("x86_conv_bn_add_relu")
def annotate_conv_bn_add_relu(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """QAT ``conv2d -> batch_norm -> add -> relu``: output spec on the relu."""
    return _annotate_weighted_binary(
        gm, config, filter_fn, {CONV2D}, with_relu=True, quantize_extra=True, through_bn=True
    )


def _annotate_weighted_unary(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn], steps: list
) -> list[list[Node]]:
    """``op [-> batch_norm] -> unary``: op inputs; output spec (if the config has one) on the unary."""
    partitions = []
    for chain in find_chains(gm, steps):
        op, out = chain[0], chain[-1]
        inputs, params = _weighted_inputs(op, config)
        if is_annotated(chain) or not _accepts(filter_fn, op):
            continue
        _set(op, inputs)
        _set(out, output=get_output_act_qspec(config))
        mark_annotated([*chain, *params])
        partitions.append([*reversed(chain), *params])
    return partitions


@register_annotator("x86_conv_unary")
def annotate_conv_unary(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``conv2d -> hardtanh/relu6/hardswish/silu`` (relu: the shared ``conv_relu``)."""
    return _annotate_weighted_unary(gm, config, filter_fn, [{CONV2D}, CONV_UNARY])


@register_annotator("x86_conv_bn_unary")
def annotate_conv_bn_unary(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """QAT ``conv2d -> batch_norm -> hardtanh/relu6/hardswish/silu``."""
    return _annotate_weighted_unary(gm, config, filter_fn, [{CONV2D}, BATCH_NORM, CONV_UNARY])


@register_annotator("x86_linear_unary")
def annotate_linear_unary(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``linear -> leaky_relu/tanh/gelu`` (relu: the shared ``linear_relu``)."""
    return _annotate_weighted_unary(gm, config, filter_fn, [{LINEAR}, LINEAR_UNARY])


@register_annotator("matmul")
def annotate_matmul(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``matmul``: every tensor operand gets the input spec; the output spec, if any, the result."""
    partitions = []
    for node in list(gm.graph.nodes):
        if not is_op(node, {MATMUL}) or is_annotated([node]) or not _accepts(filter_fn, node):
            continue
        operands = [a for a in node.args if isinstance(a, Node)]
        _set(node, {a: get_input_act_qspec(config) for a in operands}, get_output_act_qspec(config))
        partitions.append([node, *operands])
    return partitions


@register_annotator("x86_int8_passthrough")
def annotate_int8_passthrough(
    gm: GraphModule, config: Optional[QuantizationConfig], filter_fn: Optional[FilterFn] = None
) -> list[list[Node]]:
    """``max_pool2d`` / ``avg_pool2d`` / ``flatten``: input spec on the input, output shares it.

    The ``adaptive_avg_pool2d`` annotator's idea for the other ops oneDNN runs on int8.
    """
    partitions = []
    for node in list(gm.graph.nodes):
        if not is_op(node, {MAX_POOL2D, AVG_POOL2D, FLATTEN}) or is_annotated([node]) or not _accepts(filter_fn, node):
            continue
        act = node.args[0]
        if not isinstance(act, Node):
            continue
        _set(node, {act: get_input_act_qspec(config)}, SharedQuantizationSpec((act, node)))
        partitions.append([node])
    return partitions


# --- the recipe ----------------------------------------------------------------------------

# (annotator, anchor ops, QAT only) in precedence order: earlier patterns claim nodes first.
_FUSION_PATTERNS: tuple[tuple[str, frozenset, bool], ...] = (
    ("x86_conv_bn_add_relu", frozenset({CONV2D}), True),
    ("x86_conv_bn_add", frozenset({CONV2D}), True),
    ("conv_bn_relu", frozenset({CONV2D}), True),
    ("x86_conv_bn_unary", frozenset({CONV2D}), True),
    ("conv_bn", frozenset({CONV2D}), True),
    ("x86_conv_add_relu", frozenset({CONV2D}), False),
    ("x86_conv_add", frozenset({CONV2D}), False),
    ("conv_relu", frozenset({CONV2D, CONV1D}), False),
    ("x86_conv_unary", frozenset({CONV2D}), False),
    ("conv", frozenset({CONV2D}), False),
    ("x86_linear_add_relu", frozenset({LINEAR}), False),
    ("x86_linear_add", frozenset({LINEAR}), False),
    ("linear_relu", frozenset({LINEAR}), False),
    ("x86_linear_unary", frozenset({LINEAR}), False),
    ("linear", frozenset({LINEAR}), False),
    ("matmul", frozenset({MATMUL}), False),
    ("mul", frozenset({MUL}), False),
)
_PASSTHROUGH_ANNOTATOR = {
    MAX_POOL2D: "x86_int8_passthrough",
    AVG_POOL2D: "x86_int8_passthrough",
    FLATTEN: "x86_int8_passthrough",
    ADAPTIVE_AVG_POOL2D: "adaptive_avg_pool2d",
    CAT: "cat",
}


def _same_shape_tensors(mul: Node) -> bool:
    vals = [a.meta.get("val") if isinstance(a, Node) else None for a in mul.args[:2]]
    return len(vals) == 2 and all(isinstance(v, torch.Tensor) for v in vals) and vals[0].shape == vals[1].shape


def _pattern_filter(anchors: frozenset) -> FilterFn:
    """Which anchors the shared annotators may take: x86 runs conv2d (not conv3d/1d) and same-shape muls."""
    if anchors == frozenset({MUL}):
        return lambda n: n.target == MUL and _same_shape_tensors(n)
    return lambda n: n.target in anchors


def is_quantized_output(node: Node) -> bool:
    """True if ``node`` ends an annotated int8 pattern, so its value may be handed on in int8.

    That is a claimed op that no user continues as part of the same pattern (a
    user that quantizes the edge from ``node`` does not continue it). A plain
    linear with several users, one of them a linear+add claiming it as its float
    operand, reads as continued: an approximation no x86 pattern depends on.
    """
    ann = node.meta.get(Q_ANNOTATION_KEY)
    if node.op != "call_function" or ann is None or not ann._annotated:
        return False
    for user in node.users:
        user_ann = user.meta.get(Q_ANNOTATION_KEY)
        if user_ann is not None and user_ann._annotated and node not in user_ann.input_qspec_map:
            return False
    return True


def _passthrough_ready(node: Node) -> bool:
    """x86's conditions to quantize an int8-in/int8-out op."""
    if node.target == CAT:
        return all(is_quantized_output(a) for a in node.all_input_nodes)
    if node.target == FLATTEN and node.users and not any(u.target in QUANTIZABLE_OPS for u in node.users):
        return False  # nobody downstream would take int8
    return bool(node.all_input_nodes) and is_quantized_output(node.all_input_nodes[0])


_Owner = Optional[str]
OperatorType = Union[OpOverload, Callable, type]


def _module_paths(node: Node) -> set[str]:
    prefix = "L['self']."
    stack = node.meta.get("nn_module_stack") or {}
    return {path[len(prefix) :] if path.startswith(prefix) else path for path, _ in stack.values()}


class X86InductorQuantizer(Quantizer):
    """Annotates an exported graph for Inductor's x86 (oneDNN) int8 kernels.

    Set a global config, and optionally per-operator (function or module type)
    and per-module-name configs; ``None`` keeps what it covers in float.
    """

    def __init__(self) -> None:
        super().__init__()
        self.global_config: Optional[QuantizationConfig] = None
        self.operator_type_qconfig: dict[OpOverload, Optional[QuantizationConfig]] = {}
        self.module_name_qconfig: dict[str, Optional[QuantizationConfig]] = {}

    # --- configuration -------------------------------------------------------------

    def set_global(self, quantization_config: Optional[QuantizationConfig]) -> X86InductorQuantizer:
        """The config for every default-quantizable pattern no more specific setting covers."""
        if self._mode_clash(quantization_config, "the global config"):
            return self
        self.global_config = quantization_config
        return self

    def get_global_quantization_config(self) -> Optional[QuantizationConfig]:
        return self.global_config

    def set_function_type_qconfig(
        self, function_type: OperatorType, quantization_config: Optional[QuantizationConfig]
    ) -> X86InductorQuantizer:
        """Config for the patterns anchored at a function's operator (``F.conv2d``, ``torch.matmul``, ...)."""
        return self._set_operator(function_type, quantization_config)

    def set_module_type_qconfig(
        self, module_type: OperatorType, quantization_config: Optional[QuantizationConfig]
    ) -> X86InductorQuantizer:
        """Config for the operator a module type runs (``nn.Linear``: every ``linear``, as in torchao)."""
        return self._set_operator(module_type, quantization_config)

    def set_module_name_qconfig(
        self, module_name: str, quantization_config: Optional[QuantizationConfig]
    ) -> X86InductorQuantizer:
        """Config for every supported pattern inside submodule ``module_name`` (matmul included).

        ``None`` keeps that submodule in float. When names nest, the one set first wins.
        """
        if not self._mode_clash(quantization_config, f"module {module_name!r}"):
            self.module_name_qconfig[module_name] = quantization_config
        return self

    def _set_operator(self, kind: OperatorType, config: Optional[QuantizationConfig]) -> X86InductorQuantizer:
        op = kind if isinstance(kind, OpOverload) else _OPERATOR_OF.get(kind)
        if op not in QUANTIZABLE_OPS:
            warnings.warn(
                f"X86InductorQuantizer cannot set a config for {kind}; it quantizes {sorted(map(str, QUANTIZABLE_OPS))}"
            )
            return self
        if not self._mode_clash(config, str(op)):
            self.operator_type_qconfig[op] = config
        return self

    def _mode_clash(self, config: Optional[QuantizationConfig], what: str) -> bool:
        """Warn and refuse a config whose QAT or dynamic mode differs from the configs already set."""
        if config is None:
            return False
        for other in [self.global_config, *self.operator_type_qconfig.values(), *self.module_name_qconfig.values()]:
            if other is None:
                continue
            if other.is_qat != config.is_qat:
                warnings.warn(f"Mixed QAT and non-QAT configs are not supported; skipping the config for {what}.")
                return True
            dyn, other_dyn = (getattr(c.input_activation, "is_dynamic", None) for c in (config, other))
            if dyn is not None and other_dyn is not None and dyn != other_dyn:
                warnings.warn(f"Mixed dynamic and static configs are not supported; skipping the config for {what}.")
                return True
        return False

    # --- Quantizer -----------------------------------------------------------------

    def annotate(self, model: GraphModule) -> GraphModule:
        owners = {node: self._owner(node) for node in model.graph.nodes}
        for name, config in self.module_name_qconfig.items():
            self._annotate_stage(model, config, lambda n, name=name: owners.get(n) == name, QUANTIZABLE_OPS)
        unowned: FilterFn = lambda n: owners.get(n) is None
        for op, config in self.operator_type_qconfig.items():
            self._annotate_stage(model, config, unowned, frozenset({op}))
        float_ops = {op for op, config in self.operator_type_qconfig.items() if config is None}
        self._annotate_stage(model, self.global_config, unowned, DEFAULT_QUANTIZABLE_OPS - float_ops)
        return model

    def validate(self, model: GraphModule) -> None:
        """Nothing beyond the core's annotation checks."""

    def explain_unannotated(self, node: Node) -> Optional[str]:
        """Which setting, or missing pattern, left ``node`` float (for ``pt2q.report``)."""
        op = getattr(node.target, "__name__", str(node.target))
        if not is_op(node, QUANTIZABLE_OPS):
            return f"X86InductorQuantizer has no pattern for {op}"
        owner = self._owner(node)
        if owner is not None:
            if self.module_name_qconfig[owner] is None:
                return f"kept float by set_module_name_qconfig({owner!r}, None)"
        elif node.target in self.operator_type_qconfig:
            if self.operator_type_qconfig[node.target] is None:
                return f"kept float by a None config for {op} (set_function_type_qconfig / set_module_type_qconfig)"
        elif not is_op(node, DEFAULT_QUANTIZABLE_OPS):
            return f"{op} is quantized only when configured for it (set_function_type_qconfig)"
        elif self.global_config is None:
            return "no config covers it (set_global(None) or never called)"
        if is_op(node, INT8_IN_INT8_OUT_OPS):
            return f"{op} runs in int8 only on a quantized input, and its input is not quantized"
        return "no pattern matched it (its operands did not fit: e.g. a non-float input or a computed weight)"

    # --- helpers -------------------------------------------------------------------

    def _owner(self, node: Node) -> _Owner:
        paths = _module_paths(node)
        return next((name for name in self.module_name_qconfig if name in paths), None)

    def _annotate_stage(
        self, model: GraphModule, config: Optional[QuantizationConfig], owned: FilterFn, ops: frozenset
    ) -> None:
        """Fusion patterns, then int8-in/int8-out propagation, for the anchors in ``ops`` that ``owned`` accepts."""
        if config is None:
            return
        for name, anchors, qat_only in _FUSION_PATTERNS:
            if (qat_only and not config.is_qat) or not anchors & ops:
                continue
            in_pattern = _pattern_filter(anchors & ops)
            # QAT patterns keep their output spec (BatchNorm still sits between conv and output)
            cfg = config if qat_only else _inputs_only(config)
            get_annotator(name)(model, cfg, lambda n: in_pattern(n) and owned(n))
        for node in list(model.graph.nodes):
            if not is_op(node, ops & INT8_IN_INT8_OUT_OPS) or is_annotated([node]) or not owned(node):
                continue
            if _passthrough_ready(node):
                get_annotator(_PASSTHROUGH_ANNOTATOR[node.target])(model, config, lambda n, node=node: n is node)
