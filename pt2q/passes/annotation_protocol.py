"""Read any quantizer's annotations by their fields, whoever defined their classes.

Backend quantizers in the wild (ExecuTorch's Qualcomm, Core ML, Vulkan, Cadence, ... quantizers) write
torchao's ``QuantizationAnnotation`` and spec classes (or the removed ``torch.ao`` ones, or their own
subclasses). The flow works on pt2q's classes, so ``adopt_annotations`` rewrites every annotation of a
graph into them, recognising each object by what it carries rather than by its class:

=============================  ==========================================================
fields                          read as
=============================  ==========================================================
``edge_or_node``                ``SharedQuantizationSpec``
``derived_from`` + ``derive_qparams_fn``   ``DerivedQuantizationSpec``
``scale`` + ``zero_point``      ``FixedQParamsQuantizationSpec``
``observer_or_fake_quant_ctr``  ``QuantizationSpec``
=============================  ==========================================================

The constructors, derive functions and edges are kept as they are (a foreign observer class still builds
the observer), and one foreign object becomes one pt2q object, so specs that were the same object stay
the same. A foreign object missing a field, or holding an impossible value, is an ``AnnotationError``
naming the node and the field.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from torch.fx import GraphModule, Node

from pt2q.core.spec import (
    Q_ANNOTATION_KEY,
    DerivedQuantizationSpec,
    FixedQParamsQuantizationSpec,
    QuantizationAnnotation,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
)
from pt2q.passes.check_annotations import AnnotationError

__all__ = ["adopt_annotations", "adopt_spec", "spec_kind", "is_foreign"]

_OWN = (QuantizationSpec, FixedQParamsQuantizationSpec, SharedQuantizationSpec, DerivedQuantizationSpec)
# (kind, fields that identify it, pt2q class); checked in order: a derived spec also has a dtype, etc.
_KINDS: tuple[tuple[str, tuple[str, ...], type], ...] = (
    ("shared", ("edge_or_node",), SharedQuantizationSpec),
    ("derived", ("derived_from", "derive_qparams_fn"), DerivedQuantizationSpec),
    ("fixed", ("scale", "zero_point", "dtype"), FixedQParamsQuantizationSpec),
    ("observed", ("observer_or_fake_quant_ctr", "dtype"), QuantizationSpec),
)


def spec_kind(spec: object) -> Optional[str]:
    """``"shared"``, ``"derived"``, ``"fixed"`` or ``"observed"`` for anything shaped like a spec, else None."""
    for kind, fields, _ in _KINDS:
        if all(hasattr(spec, f) for f in fields):
            return kind
    return None


def is_foreign(obj: object) -> bool:
    """True for an annotation or spec object not of pt2q's own classes (e.g. torchao's)."""
    return not isinstance(obj, (*_OWN, QuantizationAnnotation))


class _Adopter:
    """Turns foreign specs into pt2q's, one pt2q object per foreign object."""

    def __init__(self) -> None:
        self.done: dict[int, tuple[object, QuantizationSpecBase]] = {}  # id -> (foreign, adopted): keeps it alive

    def spec(self, spec: object, where: str) -> Optional[QuantizationSpecBase]:
        if spec is None or isinstance(spec, _OWN):
            return spec
        if id(spec) in self.done:
            return self.done[id(spec)][1]
        kind = spec_kind(spec)
        if kind is None:
            raise AnnotationError(
                f"{where} is a {type(spec).__name__}, which is not a quantization spec: a spec has "
                "observer_or_fake_quant_ctr and dtype (QuantizationSpec), scale and zero_point "
                "(FixedQParamsQuantizationSpec), edge_or_node (SharedQuantizationSpec) or derived_from and "
                "derive_qparams_fn (DerivedQuantizationSpec)."
            )
        cls = next(c for k, _, c in _KINDS if k == kind)
        values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(cls) if hasattr(spec, f.name)}
        if kind == "derived":
            values["derived_from"] = list(values["derived_from"])
        try:
            adopted = cls(**values)
        except (TypeError, ValueError) as e:
            raise AnnotationError(f"{where} ({type(spec).__name__}): {e}") from e
        self.done[id(spec)] = (spec, adopted)
        return adopted

    def annotation(self, ann: object, node: Node) -> QuantizationAnnotation:
        where = f"node '{node.name}'"
        inputs = getattr(ann, "input_qspec_map", None)
        if not hasattr(ann, "output_qspec") or not isinstance(inputs, dict):
            raise AnnotationError(
                f"{where} has meta['{Q_ANNOTATION_KEY}'] of type {type(ann).__name__}, which is not a "
                "QuantizationAnnotation: it needs input_qspec_map (a dict from input node to spec) and output_qspec."
            )
        adopted = {
            arg: self.spec(s, f"the spec of input '{getattr(arg, 'name', arg)}' of {where}")
            for arg, s in inputs.items()
        }
        result = QuantizationAnnotation(
            input_qspec_map=adopted,
            output_qspec=self.spec(getattr(ann, "output_qspec"), f"the output spec of {where}"),  # noqa: B009
            allow_implicit_sharing=bool(getattr(ann, "allow_implicit_sharing", True)),
            _annotated=bool(getattr(ann, "_annotated", False)),
        )
        # a backend's own fields (torchao's x86 annotation: _is_output_of_quantized_pattern) stay readable
        for name, value in getattr(ann, "__dict__", {}).items():
            result.__dict__.setdefault(name, value)
        return result


def adopt_spec(spec: Any, where: str = "a spec") -> Optional[QuantizationSpecBase]:
    """``spec`` as one of pt2q's spec classes (itself if it is one already)."""
    return _Adopter().spec(spec, where)


def adopt_annotations(gm: GraphModule) -> GraphModule:
    """Rewrite every foreign annotation of ``gm`` (in place) into pt2q's classes; return ``gm``."""
    adopter = _Adopter()
    for node in gm.graph.nodes:
        ann = node.meta.get(Q_ANNOTATION_KEY)
        if ann is None:
            continue
        if isinstance(ann, QuantizationAnnotation) and not any(
            is_foreign(s) for s in (*ann.input_qspec_map.values(), ann.output_qspec) if s is not None
        ):
            continue
        node.meta[Q_ANNOTATION_KEY] = adopter.annotation(ann, node)
    return gm
