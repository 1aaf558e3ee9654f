"""Writing quantization annotations: the helpers every annotator and pattern row shares.

* A node claimed by a pattern carries an annotation with ``_annotated=True``; an
  annotator skips patterns whose nodes are claimed, so the one that runs first wins.
* ``filter_fn`` is asked about a pattern's *anchor* (the conv, linear, add, ... node):
  fused followers go with their anchor, and weights (``get_attr`` nodes, which carry no
  module stack) are not asked.
* :func:`annotate_node` also notes which rule claimed the node (``pt2q.core.notes.PATTERN_KEY``),
  so ``pt2q.report`` can show it and group the nodes one pattern quantizes together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Optional

import torch
from torch.fx import GraphModule, Node

from pt2q.core.notes import PATTERN_KEY, debug_info, set_note
from pt2q.core.spec import (
    Q_ANNOTATION_KEY,
    QuantizationAnnotation,
    QuantizationConfig,
    QuantizationSpec,
    QuantizationSpecBase,
)
from pt2q.numerics.granularity import Granularity
from pt2q.quantizer import utils as config_readers

__all__ = [
    "FilterFn",
    "Annotator",
    "InputSpecs",
    "get_input_act_qspec",
    "get_output_act_qspec",
    "get_weight_qspec",
    "get_bias_qspec",
    "is_dynamic_config",
    "has_affine_weights",
    "is_annotated",
    "mark_annotated",
    "annotate_node",
    "claim",
    "accepts",
    "tensor_rank",
]

FilterFn = Callable[[Node], bool]
Annotator = Callable[[GraphModule, Optional[QuantizationConfig], Optional[FilterFn]], list[list[Node]]]
InputSpecs = dict[Node, Optional[QuantizationSpecBase]]


# --- reading a config ---------------------------------------------------------------------


# pt2q.quantizer.utils' readers, without torchao's checks (strict=False): pt2q's quantizers take per-token
# activations, low-bit affine weights and int32 bias specs, which torchao's readers refuse.


def get_input_act_qspec(config: Optional[QuantizationConfig]) -> Optional[QuantizationSpec]:
    """The config's input-activation spec as given (None without config)."""
    return config_readers.get_input_act_qspec(config, strict=False)


def get_output_act_qspec(config: Optional[QuantizationConfig]) -> Optional[QuantizationSpec]:
    """The config's output-activation spec as given (None without config)."""
    return config_readers.get_output_act_qspec(config, strict=False)


def get_weight_qspec(config: Optional[QuantizationConfig]) -> Optional[QuantizationSpec]:
    """The config's weight spec as given (None without config)."""
    return config_readers.get_weight_qspec(config, strict=False)


def get_bias_qspec(config: Optional[QuantizationConfig]) -> Optional[QuantizationSpecBase]:
    """The config's bias spec as given (None without config)."""
    return config_readers.get_bias_qspec(config, strict=False)


def is_dynamic_config(config: Optional[QuantizationConfig]) -> bool:
    """True when the config quantizes input activations dynamically (qparams chosen at run time)."""
    act = get_input_act_qspec(config)
    return bool(act is not None and getattr(act, "is_dynamic", False))


def has_affine_weights(config: Optional[QuantizationConfig]) -> bool:
    """True when the weight spec builds an affine (blockwise, e.g. groupwise low-bit) observer:
    such configs apply to linear layers only."""
    ctr = getattr(get_weight_qspec(config), "observer_or_fake_quant_ctr", None)
    return isinstance(getattr(ctr, "kwargs", {}).get("granularity"), Granularity)


# --- claiming nodes -----------------------------------------------------------------------


def is_annotated(nodes: Iterable[Optional[Node]]) -> bool:
    """True if any of ``nodes`` was already claimed by a pattern (``_annotated=True``)."""
    for node in nodes:
        ann = node.meta.get(Q_ANNOTATION_KEY) if isinstance(node, Node) else None
        if ann is not None and ann._annotated:
            return True
    return False


def mark_annotated(nodes: Iterable[Optional[Node]]) -> None:
    """Claim ``nodes`` (adding an empty annotation where there is none)."""
    for node in nodes:
        if not isinstance(node, Node):
            continue
        ann = node.meta.setdefault(Q_ANNOTATION_KEY, QuantizationAnnotation())
        ann._annotated = True


def claim(nodes: Iterable[Node], pattern: str, anchor: Node) -> None:
    """Note on each operator node of a match which rule claimed it, and the debug handle of the
    match's anchor (the conv/linear/... the nodes are quantized with: ``pt2q.report`` makes them one row)."""
    handle = debug_info(anchor)
    value = [pattern, handle.name, handle.graph_id] if handle is not None else [pattern, None, None]
    for node in nodes:
        if node.op == "call_function":
            set_note(node, PATTERN_KEY, value)


def annotate_node(
    node: Node, inputs: Optional[InputSpecs] = None, output: Optional[QuantizationSpecBase] = None
) -> None:
    """Give ``node`` a claimed annotation with these input specs and output spec (replacing any)."""
    node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
        input_qspec_map=dict(inputs or {}), output_qspec=output, _annotated=True
    )


def accepts(filter_fn: Optional[FilterFn], anchor: Node) -> bool:
    """Whether ``filter_fn`` (None: everything) lets the pattern anchored at ``anchor`` be quantized."""
    return filter_fn is None or bool(filter_fn(anchor))


def tensor_rank(node: object) -> Optional[int]:
    """The rank of the tensor ``node`` produces, if its ``val`` meta says."""
    val = node.meta.get("val") if isinstance(node, Node) else None
    return val.dim() if isinstance(val, torch.Tensor) else None
