"""``X86InductorQuantizer``: uint8 activations, int8 per-channel weights, for Inductor's oneDNN kernels.

Behaves like ``torchao.quantization.pt2e.quantizer.x86_inductor_quantizer.X86InductorQuantizer``
(same patterns, specs and precedence, so the same Q/DQ graph), as a table of pattern rows
(:data:`X86_PATTERNS`, in :mod:`pt2q.quantizers.x86_recipe`; most shared with :mod:`pt2q.quantizers.annotators`):

>>> quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
>>> quantizer = quantizer.set_module_name_qconfig("head", None)          # keep the head in float
>>> quantizer = quantizer.set_function_type_qconfig(torch.matmul, get_default_x86_inductor_quantization_config())
>>> [p.name for p in X86_PATTERNS if p.qat_only]
['x86_conv_bn_add_relu', 'x86_conv_bn_add', 'conv_bn_relu', 'x86_conv_bn_unary', 'conv_bn']

The recipe quantizes the *inputs* of int8-capable patterns and never their
outputs: a pattern's result is quantized only when its consumer wants int8
input. Patterns (each fuses into one oneDNN kernel after lowering):

* conv2d (+ relu / hardtanh / relu6 / hardswish / silu), conv1d (+ relu),
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
...) rather than every node of the pattern. A conv1d with no relu after it is
quantized too (torchao leaves it fp32: Wav2Vec2's convolutions), and
``transform_for_annotation`` makes string conv padding (``padding="same"``,
EfficientNet's) explicit, so those convs match the conv rows (torchao leaves
``aten.conv2d.padding`` fp32); on graphs with neither, the Q/DQ graph is torchao's.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Callable
from typing import Any, Optional, Union

import torch
from torch._ops import OpOverload
from torch.fx import GraphModule, Node

from pt2q.core.notes import module_paths
from pt2q.core.ops import is_op
from pt2q.core.pattern import NodeIndex
from pt2q.core.spec import QuantizationConfig, QuantizationSpec
from pt2q.observers.pass_through import PlaceholderObserver
from pt2q.quantizer import Quantizer
from pt2q.quantizers.activation_options import check_per_tensor_activations
from pt2q.quantizers.annotation import FilterFn
from pt2q.quantizers.computed_weights import fold_computed_weights
from pt2q.quantizers.conv_padding import STRING_PADDING_CONVS, explicit_conv_padding
from pt2q.quantizers.cpu_capability import cpu_has_vnni
from pt2q.quantizers.mask_guard import MaskGuard
from pt2q.quantizers.observer_choice import activation_spec, symmetric_weight_spec
from pt2q.quantizers.patterns import Pattern, annotate_pattern
from pt2q.quantizers.transposed_weights import addmm_as_linear
from pt2q.quantizers.x86_recipe import (
    DEFAULT_QUANTIZABLE_OPS,
    INT8_IN_INT8_OUT_OPS,
    OPERATOR_OF,
    QUANTIZABLE_OPS,
    X86_PATTERNS,
    mark_other_annotations,
    mark_pattern_output,
)

__all__ = [
    "X86InductorQuantizer",
    "get_default_x86_inductor_quantization_config",
    "get_x86_inductor_linear_dynamic_fp16_config",
    "X86_PATTERNS",
    "INT8_IN_INT8_OUT_OPS",
    "QUANTIZABLE_OPS",
]


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
    act = activation_spec(torch.uint8, 0, 127 if reduce_range else 255, is_qat, is_dynamic)
    weight = symmetric_weight_spec(is_qat, True, -128, 127, ch_axis=0)
    return QuantizationConfig(input_activation=act, output_activation=act, weight=weight, bias=None, is_qat=is_qat)


@functools.lru_cache
def get_x86_inductor_linear_dynamic_fp16_config() -> QuantizationConfig:
    """float16 weights, float32 activations: Inductor's ``linear_dynamic_fp16`` (fp32 input times the weight
    rounded to fp16, accumulated in fp32). Meant for linears, e.g.
    ``set_module_type_qconfig(nn.Linear, get_x86_inductor_linear_dynamic_fp16_config())``; convert writes the
    weight's round trip through float16 (``quantized_decomposed.convert_element_type.no_fuse``)."""
    weight = QuantizationSpec(dtype=torch.float16, observer_or_fake_quant_ctr=PlaceholderObserver)
    return QuantizationConfig(input_activation=None, output_activation=None, weight=weight, bias=None)


def _inputs_only(config: QuantizationConfig) -> QuantizationConfig:
    """The config as the x86 recipe applies it to conv/linear/mul: no output spec."""
    return dataclasses.replace(config, output_activation=None)


def _in(anchors: frozenset, owned: FilterFn) -> FilterFn:
    """Accept the anchors of ``anchors`` that ``owned`` accepts."""
    return lambda n: is_op(n, anchors) and owned(n)


_Owner = Optional[str]
OperatorType = Union[OpOverload, Callable, type]


class X86InductorQuantizer(Quantizer):
    """Annotates an exported graph for Inductor's x86 (oneDNN) int8 kernels.

    Set a global config, and optionally per-operator (function or module type)
    and per-module-name configs; ``None`` keeps what it covers in float.
    """

    # the recipe: pattern rows in precedence order, the anchors configs may select, those the global
    # config quantizes, and the operator each module/function type given to the setters means
    PATTERNS: tuple[Pattern, ...] = X86_PATTERNS
    QUANTIZABLE_OPS: frozenset = QUANTIZABLE_OPS
    DEFAULT_QUANTIZABLE_OPS: frozenset = DEFAULT_QUANTIZABLE_OPS
    OPERATOR_OF: dict[Any, OpOverload] = OPERATOR_OF

    def __init__(self) -> None:
        super().__init__()
        self.global_config: Optional[QuantizationConfig] = None
        self.operator_type_qconfig: dict[OpOverload, Optional[QuantizationConfig]] = {}
        self.module_name_qconfig: dict[str, Optional[QuantizationConfig]] = {}
        self.mask_guard = MaskGuard()  # keeps attention masks float; MaskGuard(enabled=False) to quantize them

    # --- configuration -------------------------------------------------------------

    def set_global(self, quantization_config: Optional[QuantizationConfig]) -> X86InductorQuantizer:
        """The config for every default-quantizable pattern no more specific setting covers."""
        if self._mode_clash(quantization_config, "the global config"):
            return self
        self.global_config = quantization_config
        return self

    def get_global_quantization_config(self) -> Optional[QuantizationConfig]:
        """The global config (warns while none is set, as torchao does)."""
        if not isinstance(self.global_config, QuantizationConfig):
            warnings.warn(f"{type(self).__name__} has no global config: call set_global first", stacklevel=2)
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
        op = kind if isinstance(kind, OpOverload) else self.OPERATOR_OF.get(kind)
        if op is None or op not in self.QUANTIZABLE_OPS:
            quantizable = sorted(map(str, self.QUANTIZABLE_OPS))
            warnings.warn(
                f"{type(self).__name__} cannot set a config for {kind}; it quantizes {quantizable}", stacklevel=3
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
                warnings.warn(
                    f"Mixed QAT and Non-QAT configs are not supported; skipping the config for {what}.", stacklevel=3
                )
                return True
            dyn, other_dyn = (getattr(c.input_activation, "is_dynamic", None) for c in (config, other))
            if dyn is not None and other_dyn is not None and dyn != other_dyn:
                warnings.warn(
                    f"Mixed dynamic and static configs are not supported; skipping the config for {what}.", stacklevel=3
                )
                return True
        return False

    # --- Quantizer -----------------------------------------------------------------

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        """String conv padding (``"same"``/``"valid"``) becomes explicit (bit-identical); in PTQ, weights
        computed from parameters (weight norm) are folded and ``addmm`` on a stored (in, out) weight (GPT-2's
        Conv1D) becomes a linear, so their layers quantize as in the XNNPACK quantizer (QAT trains the
        parameters these rewrites replace)."""
        explicit_conv_padding(model)
        configs = [self.global_config, *self.operator_type_qconfig.values(), *self.module_name_qconfig.values()]
        if not any(c is not None and c.is_qat for c in configs):
            fold_computed_weights(model)
            addmm_as_linear(model)
        return model

    def annotate(self, model: GraphModule) -> GraphModule:
        owners = {node: self._owner(node) for node in model.graph.nodes}
        index = NodeIndex(model)
        guard = self.mask_guard.scan(model)

        def owned_by(name: Optional[str]) -> FilterFn:
            return lambda n: owners.get(n) == name and guard.allows(n)

        for name, config in self.module_name_qconfig.items():
            self._annotate_stage(model, index, config, owned_by(name), self.QUANTIZABLE_OPS)
        for op, config in self.operator_type_qconfig.items():
            self._annotate_stage(model, index, config, owned_by(None), frozenset({op}))
        float_ops = {op for op, config in self.operator_type_qconfig.items() if config is None}
        default_ops = self.DEFAULT_QUANTIZABLE_OPS - float_ops
        self._annotate_stage(model, index, self.global_config, owned_by(None), default_ops)
        mark_other_annotations(model)
        return model

    def validate(self, model: GraphModule) -> None:
        """oneDNN's int8 kernels take per-tensor activations; the rest is the core's annotation checks."""
        check_per_tensor_activations(model, "X86InductorQuantizer (oneDNN)")

    def explain_unannotated(self, node: Node) -> Optional[str]:
        """Which setting, or missing pattern, left ``node`` float (for ``pt2q.report``)."""
        op = getattr(node.target, "__name__", str(node.target))
        if node.target in STRING_PADDING_CONVS:
            padding = node.args[4] if len(node.args) > 4 else node.kwargs.get("padding", "valid")
            return (
                f"{op}: its padding is the string {padding!r}, which transform_for_annotation makes explicit only "
                "for a static kernel size (and had it run, it did not); pass the padding as ints"
            )
        if not is_op(node, self.QUANTIZABLE_OPS):
            return f"{type(self).__name__} has no pattern for {op}"
        if (guarded := self.mask_guard.reason(node)) is not None:
            return guarded
        owner = self._owner(node)
        if owner is not None:
            if self.module_name_qconfig[owner] is None:
                return f"kept float by set_module_name_qconfig({owner!r}, None)"
        elif node.target in self.operator_type_qconfig:
            if self.operator_type_qconfig[node.target] is None:
                return f"kept float by a None config for {op} (set_function_type_qconfig / set_module_type_qconfig)"
        elif not is_op(node, self.DEFAULT_QUANTIZABLE_OPS):
            return f"{op} is quantized only when configured for it (set_function_type_qconfig)"
        elif self.global_config is None:
            return "no config covers it (set_global(None) or never called)"
        if is_op(node, INT8_IN_INT8_OUT_OPS):
            return f"{op} runs in int8 only on a quantized input, and its input is not quantized"
        return "no pattern matched it (its operands did not fit: e.g. a non-float input or a computed weight)"

    # --- helpers -------------------------------------------------------------------

    def _owner(self, node: Node) -> _Owner:
        paths = module_paths(node)
        return next((name for name in self.module_name_qconfig if name in paths), None)

    def _annotate_stage(
        self,
        model: GraphModule,
        index: NodeIndex,
        config: Optional[QuantizationConfig],
        owned: FilterFn,
        ops: frozenset,
    ) -> None:
        """The table's rows for the anchors in ``ops`` that ``owned`` accepts."""
        if config is None:
            return
        for row in self.PATTERNS:
            anchors = frozenset(row.anchor_ops & ops)
            if (row.qat_only and not config.is_qat) or not anchors:
                continue
            # QAT rows keep their output spec (BatchNorm still sits between conv and output);
            # fusion rows quantize inputs only; pass-through ops (rows with code) take the whole config
            cfg = config if row.qat_only or row.annotate is not None else _inputs_only(config)
            for partition in annotate_pattern(model, row, cfg, _in(anchors, owned), index):
                mark_pattern_output(partition[len(row.chain) - 1])
