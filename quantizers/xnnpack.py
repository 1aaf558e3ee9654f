"""``XNNPACKQuantizer``: symmetric int8 quantization for ExecuTorch's XNNPACK delegate.

Behaves like ``executorch.backends.xnnpack.quantizer.xnnpack_quantizer.XNNPACKQuantizer``
(same patterns, same specs, same precedence), built on the pattern table of
:mod:`pt2q.quantizers.annotators`:

>>> quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
>>> quantizer = quantizer.set_module_name("head", None)   # keep the head in float
>>> [p.name for p in quantizer.SUPPORTED_PATTERNS][:6]
['conv_bn_relu', 'conv_bn', 'conv_transpose_bn_relu', 'conv_transpose_bn', 'linear_relu', 'linear']

Configs apply with the precedence module name > module type > operator type > global.
Where pt2q differs from ExecuTorch, on purpose:

* ``set_module_name(name, None)`` / ``set_module_type(type, None)`` leave that module in
  float (ExecuTorch rejects ``None``); ``set_operator_type(op, None)`` keeps the global
  config off the patterns of ``op``.
* Module scoping asks the pattern's anchor (conv, linear, add, ...) which module it
  belongs to, so ``set_module_type(nn.Conv2d, ...)`` also covers the BatchNorm/ReLU
  fused after the conv, and weights (which carry no module stack) never veto it.
* ``set_filter_function`` also applies to ``cat`` and to the propagation of shared
  qparams through relu/view/max_pool2d/... (ExecuTorch applies it to neither).
* ``adaptive_avg_pool2d`` is annotated in functional form too, not only as a module.
* A transposed conv kept with BatchNorm for QAT is quantized per output channel
  (axis 1), as it is without BatchNorm.
* ``transform_for_annotation`` only turns scalars into tensors for float add/mul,
  so integer arithmetic keeps its dtype.
* ``get_supported_operator_for_quantization_config(config)`` returns the operator patterns of
  a supported config (ExecuTorch compares against deep copies that never equal the config
  and returns ``[]``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch._ops import OpOverload, OpOverloadPacket
from torch.fx import GraphModule, Node

from pt2q.core.attrs import set_new_attr
from pt2q.core.notes import module_paths
from pt2q.core.ops import LINEAR, SHARE_QPARAMS_OPS, aten, is_op
from pt2q.core.pattern import NodeIndex
from pt2q.core.spec import QuantizationConfig
from pt2q.quantizer import OperatorConfig, OperatorPatternType, Quantizer
from pt2q.quantizers.activation_options import check_per_tensor_activations
from pt2q.quantizers.annotation import FilterFn, has_affine_weights, is_dynamic_config
from pt2q.quantizers.annotators import PATTERNS, propagate_annotation
from pt2q.quantizers.computed_weights import fold_computed_weights
from pt2q.quantizers.mask_guard import MaskGuard
from pt2q.quantizers.observer_choice import activation_spec, symmetric_weight_spec
from pt2q.quantizers.patterns import Pattern, annotate_pattern
from pt2q.quantizers.transposed_weights import addmm_as_linear

__all__ = [
    "XNNPACKQuantizer",
    "runs_with",
    "SUPPORTED_PATTERNS",
    "get_symmetric_quantization_config",
    "get_weight_only_quantization_config",
    "convert_scalars_to_attrs",
]

OperatorType = Union[OpOverload, OpOverloadPacket]


# The XNNPACK recipe is the shared table, in ExecuTorch's precedence order.
SUPPORTED_PATTERNS: tuple[Pattern, ...] = PATTERNS


def runs_with(pattern: Pattern, config: QuantizationConfig) -> bool:
    """Static configs run every row; dynamic ones the ``dynamic`` rows, plus the QAT rows for dynamic QAT;
    configs with blockwise (affine) weights only the rows anchored at a linear."""
    if has_affine_weights(config) and pattern.anchor_ops != LINEAR:
        return False
    return not is_dynamic_config(config) or pattern.dynamic or (config.is_qat and pattern.qat_only)


@functools.lru_cache
def get_symmetric_quantization_config(
    is_per_channel: bool = False,
    is_qat: bool = False,
    is_dynamic: bool = False,
    act_qmin: int = -128,
    act_qmax: int = 127,
    weight_qmin: int = -127,
    weight_qmax: int = 127,
) -> QuantizationConfig:
    """int8 activations (per-tensor affine) and symmetric int8 weights, as XNNPACK runs them.

    Static activations are calibrated with a ``HistogramObserver``; dynamic ones
    get their qparams at run time (``PlaceholderObserver``). Weights use a
    (per-channel) min/max observer; with ``is_qat`` everything is fake-quantized.
    Bias stays float. Dynamic configs have no output spec. Equal arguments return
    the same (cached) config object.
    """
    act = activation_spec(torch.int8, act_qmin, act_qmax, is_qat, is_dynamic)
    weight = symmetric_weight_spec(is_qat, is_per_channel, weight_qmin, weight_qmax, ch_axis=0)
    return QuantizationConfig(
        input_activation=act,
        output_activation=None if is_dynamic else act,
        weight=weight,
        bias=None,
        is_qat=is_qat,
    )


@functools.lru_cache
def get_weight_only_quantization_config(
    is_per_channel: bool = True, weight_qmin: int = -127, weight_qmax: int = 127
) -> QuantizationConfig:
    """Symmetric int8 weights (the weight spec of :func:`get_symmetric_quantization_config`), float activations.

    Linear and conv weights are stored as int8 and dequantized in the graph; the
    matmuls compute in float. Lowering caveat (ExecuTorch 1.5.1): the XNNPACK
    delegate miscomputes such linears (it reads the int8 codes as float values),
    so lower them with ``to_executorch(..., delegate=False)``, where ExecuTorch's
    kernels reproduce the Q/DQ graph to float rounding.
    """
    weight = get_symmetric_quantization_config(
        is_per_channel=is_per_channel, weight_qmin=weight_qmin, weight_qmax=weight_qmax
    ).weight
    return QuantizationConfig(input_activation=None, output_activation=None, weight=weight, bias=None)


def convert_scalars_to_attrs(gm: GraphModule) -> GraphModule:
    """Turn Python-scalar operands of float ``add``/``mul`` into 0-d tensor attributes (in place).

    A tensor operand can be observed and quantized; a scalar cannot. The new
    attributes are buffers named ``_tensor_constant_<i>``.
    """
    for node in list(gm.graph.nodes):
        if not is_op(node, {aten.add.Tensor, aten.mul.Tensor}):
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            continue
        fake_mode = getattr(val, "fake_mode", None)
        args = list(node.args)
        for i, arg in enumerate(args):
            if isinstance(arg, Node) or not isinstance(arg, (bool, int, float)):
                continue
            value = torch.tensor(float(arg))
            name = set_new_attr(gm, "_tensor_constant_", value)
            with gm.graph.inserting_before(node):
                attr = gm.graph.get_attr(name)
            if fake_mode is not None:
                attr.meta["val"] = fake_mode.from_tensor(value, static_shapes=True)
            args[i] = attr
        node.args = tuple(args)
    gm.recompile()
    return gm


# What XNNPACKQuantizer reports as supported (get_supported_operators), as ExecuTorch lists it: module and
# function types, informative only (the table above is what annotates).
_SUPPORTED_OPERATOR_PATTERNS: tuple[list[OperatorPatternType], ...] = (
    [[nn.Conv2d, nn.ReLU], [nn.Conv2d, F.relu], [F.conv2d, nn.ReLU], [F.conv2d, F.relu]],
    [[nn.Linear], [F.linear]],
    [[torch.add]],
    [[nn.AdaptiveAvgPool2d], [F.adaptive_avg_pool2d]],
)


def _supported_config_and_operators() -> list[OperatorConfig]:
    configs = [
        get_symmetric_quantization_config(is_per_channel=per_channel, is_qat=qat)
        for per_channel in (False, True)
        for qat in (False, True)
    ]
    return [OperatorConfig(config, list(ops)) for config in configs for ops in _SUPPORTED_OPERATOR_PATTERNS]


_Owner = Optional[tuple[str, Any]]  # ("name", module_name) | ("type", module_type) | None (default)


def _type_name(tp: Any) -> str:
    return tp if isinstance(tp, str) else f"{tp.__module__}.{tp.__qualname__}"


class XNNPACKQuantizer(Quantizer):
    """Annotates an exported graph for XNNPACK's int8 kernels.

    Set a global config and optionally per-operator, per-module-type and
    per-module-name configs; ``None`` for a module keeps it in float. A filter
    function further restricts which nodes are quantized.
    """

    SUPPORTED_PATTERNS = SUPPORTED_PATTERNS

    def __init__(self) -> None:
        super().__init__()
        self.global_config: Optional[QuantizationConfig] = None
        self.operator_type_config: dict[OperatorType, Optional[QuantizationConfig]] = {}
        self.module_type_config: dict[Callable, Optional[QuantizationConfig]] = {}
        self.module_name_config: dict[str, Optional[QuantizationConfig]] = {}
        self.filter_fn: Optional[FilterFn] = None
        self.mask_guard = MaskGuard()  # keeps attention masks float; MaskGuard(enabled=False) to quantize them

    # --- what is supported ----------------------------------------------------------

    @classmethod
    def get_supported_operators(cls) -> list[OperatorConfig]:
        """Each supported config (symmetric; per tensor or per channel; PTQ or QAT) with the operator
        patterns it quantizes."""
        return _supported_config_and_operators()

    @classmethod
    def get_supported_quantization_configs(cls) -> list[QuantizationConfig]:
        return list(dict.fromkeys(config for config, _ in cls.get_supported_operators()))

    @classmethod
    def get_supported_operator_for_quantization_config(
        cls, quantization_config: Optional[QuantizationConfig]
    ) -> list[OperatorPatternType]:
        """The operator patterns ``quantization_config`` is supported for (every pattern for None)."""
        return [
            pattern
            for config, patterns in cls.get_supported_operators()
            if quantization_config is None or config == quantization_config
            for pattern in patterns
        ]

    # --- configuration -------------------------------------------------------------

    def set_global(self, quantization_config: Optional[QuantizationConfig]) -> XNNPACKQuantizer:
        """The config for everything no more specific setting covers."""
        self.global_config = quantization_config
        return self

    def set_operator_type(
        self, operator_type: OperatorType, quantization_config: Optional[QuantizationConfig]
    ) -> XNNPACKQuantizer:
        """Config for the patterns anchored at ``operator_type`` (e.g. ``torch.ops.aten.linear.default``).

        As in ExecuTorch this selects patterns, not single nodes: the conv
        operators share their patterns. ``None`` keeps the global config off them.
        """
        self.operator_type_config[operator_type] = quantization_config
        return self

    def set_module_type(
        self, module_type: Callable, quantization_config: Optional[QuantizationConfig]
    ) -> XNNPACKQuantizer:
        """Config for everything inside modules of ``module_type`` (``None``: keep them float)."""
        self.module_type_config[module_type] = quantization_config
        return self

    def set_module_name(self, module_name: str, quantization_config: Optional[QuantizationConfig]) -> XNNPACKQuantizer:
        """Config for everything inside the submodule ``module_name``, e.g. ``"blocks.0.attn"``.

        ``None`` keeps that submodule in float. When names nest, the one set first wins.
        """
        self.module_name_config[module_name] = quantization_config
        return self

    def set_filter_function(self, filter_fn: FilterFn) -> XNNPACKQuantizer:
        """Only quantize patterns whose anchor node passes ``filter_fn``."""
        self.filter_fn = filter_fn
        return self

    # --- Quantizer -----------------------------------------------------------------

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        """Scalars of float add/mul become tensors; weights computed from parameters (weight norm) are folded
        and ``addmm`` on a stored (in, out) weight (GPT-2's Conv1D) becomes a linear."""
        if not self._any_qat():  # QAT trains the parameters these rewrites replace by stored results
            fold_computed_weights(model)
            addmm_as_linear(model)
        return convert_scalars_to_attrs(model)

    def _any_qat(self) -> bool:
        configs = [self.global_config, *self.operator_type_config.values(), *self.module_type_config.values()]
        return any(c is not None and c.is_qat for c in [*configs, *self.module_name_config.values()])

    def annotate(self, model: GraphModule) -> GraphModule:
        owners = {node: self._owner(node) for node in model.graph.nodes}
        index = NodeIndex(model)
        guard = self.mask_guard.scan(model)

        def scoped(owner: _Owner) -> FilterFn:
            return lambda n: (
                owners.get(n) == owner and guard.allows(n) and (self.filter_fn is None or self.filter_fn(n))
            )

        for name, config in self.module_name_config.items():
            self._annotate_patterns(model, index, config, scoped(("name", name)))
        for module_type, config in self.module_type_config.items():
            self._annotate_patterns(model, index, config, scoped(("type", module_type)))
        for op, config in self.operator_type_config.items():
            self._annotate_patterns(model, index, config, scoped(None), operator=op)
        float_ops = [op for op, config in self.operator_type_config.items() if config is None]
        self._annotate_patterns(model, index, self.global_config, scoped(None), skip_ops=float_ops)

        float_owners: set[_Owner] = {("name", k) for k, v in self.module_name_config.items() if v is None}
        float_owners |= {("type", k) for k, v in self.module_type_config.items() if v is None}
        propagate_annotation(
            model, lambda n: owners.get(n) not in float_owners and (self.filter_fn is None or self.filter_fn(n))
        )
        return model

    def validate(self, model: GraphModule) -> None:
        """XNNPACK's int8 kernels take per-tensor activations; the rest is the core's annotation checks."""
        check_per_tensor_activations(model, "XNNPACK")

    def explain_unannotated(self, node: Node) -> Optional[str]:
        """Which setting, or missing pattern, left ``node`` float (for ``pt2q.report``)."""
        op = getattr(node.target, "__name__", str(node.target))
        patterns = [p for p in SUPPORTED_PATTERNS if is_op(node, p.anchor_ops)]
        if not patterns:
            if is_op(node, SHARE_QPARAMS_OPS):
                return f"{op} only shares its input's qparams, and its input is not quantized"
            return f"XNNPACKQuantizer has no pattern for {op}"
        if (guarded := self.mask_guard.reason(node)) is not None:
            return guarded
        owner = self._owner(node)
        if owner is not None:
            kind, key = owner
            config = (self.module_name_config if kind == "name" else self.module_type_config)[key]
            if config is None:
                setter = "set_module_name" if kind == "name" else "set_module_type"
                return f"kept float by {setter}({key if kind == 'name' else _type_name(key)!r}, None)"
        else:
            by_op = [
                self.operator_type_config[o] for o in self.operator_type_config if any(p.covers(o) for p in patterns)
            ]
            if by_op and by_op[0] is None:
                return f"kept float by set_operator_type({op}, None)"
            config = by_op[0] if by_op else self.global_config
            if config is None:
                return "no config covers it (set_global(None) or never called)"
        if self.filter_fn is not None and not self.filter_fn(node):
            return "rejected by set_filter_function"
        if not any(runs_with(p, config) for p in patterns):
            if has_affine_weights(config):
                return "the low-bit (affine weight) config quantizes only linear layers"
            return "the dynamic config quantizes only linear and conv layers"
        if config.input_activation is None and config.output_activation is None and config.weight is None:
            return "its config quantizes nothing"
        names = "/".join(p.name for p in patterns)
        return f"no {names} pattern matched it (its operands did not fit: e.g. a non-float input or a computed weight)"

    # --- helpers -------------------------------------------------------------------

    def _owner(self, node: Node) -> _Owner:
        """Which module-scoped setting governs ``node``: the first name, else the first type, set."""
        paths = module_paths(node)
        for name in self.module_name_config:
            if name in paths:
                return ("name", name)
        types = {_type_name(tp) for _, tp in (node.meta.get("nn_module_stack") or {}).values()}
        for module_type in self.module_type_config:
            if _type_name(module_type) in types:
                return ("type", module_type)
        return None

    def _annotate_patterns(
        self,
        model: GraphModule,
        index: NodeIndex,
        config: Optional[QuantizationConfig],
        filter_fn: FilterFn,
        operator: Optional[OperatorType] = None,
        skip_ops: Sequence[OperatorType] = (),
    ) -> None:
        if config is None:
            return
        for pattern in SUPPORTED_PATTERNS:
            if operator is not None and not pattern.covers(operator):
                continue
            if any(pattern.covers(op) for op in skip_ops) or not runs_with(pattern, config):
                continue
            annotate_pattern(model, pattern, config, filter_fn, index)
