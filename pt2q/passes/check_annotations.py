"""Reject annotations no observer could honour, naming the node and saying what to fix."""

from __future__ import annotations

from typing import Optional

import torch
from torch.fx import Graph, GraphModule, Node

from pt2q.core.drop_in_warnings import MissingChannelAxisWarning, NotAnInputWarning, warn_drop_in
from pt2q.core.spec import (
    Q_ANNOTATION_KEY,
    DerivedQuantizationSpec,
    EdgeOrNode,
    QuantizationAnnotation,
    QuantizationSpecBase,
    SharedQuantizationSpec,
    describe,
    dtype_range,
    is_per_channel,
)

__all__ = ["AnnotationError", "AnnotationDtypeError", "PHANTOM_INPUTS_KEY", "check_annotations"]

# node.meta key: annotation entries for nodes that are not inputs (dropped, but still members for sharing)
PHANTOM_INPUTS_KEY = "pt2q_phantom_inputs"


class AnnotationError(ValueError):
    """A quantization annotation that cannot be turned into observers."""


class AnnotationDtypeError(AnnotationError, TypeError):
    """A spec's dtype is not one a tensor can be quantized to (also a ``TypeError``, as before)."""


def _rank(member: EdgeOrNode) -> Optional[int]:
    tensor_node = member[0] if isinstance(member, tuple) else member
    val = tensor_node.meta.get("val")
    return val.dim() if isinstance(val, torch.Tensor) else None


def _check_member_exists(target: EdgeOrNode, used_by: EdgeOrNode, kind: str, graph: Graph) -> None:
    foreign = [
        n for n in (target if isinstance(target, tuple) else (target,)) if isinstance(n, Node) and n.graph is not graph
    ]
    if foreign:
        raise AnnotationError(
            f"{kind} of {describe(used_by)} points at node '{foreign[0].name}' of another graph. Point it at a "
            "node (or (input, node) edge) of the graph being annotated: the GraphModule passed to annotate()."
        )
    if isinstance(target, tuple):
        producer, consumer = target
        meta = consumer.meta if isinstance(consumer, Node) else {}
        ann = meta.get(Q_ANNOTATION_KEY)
        if any(producer is p for _, p, _ in meta.get(PHANTOM_INPUTS_KEY, ())):
            return  # an edge the graph does not have, kept for sharing (see _drop_phantom_edges)
        if producer not in getattr(consumer, "all_input_nodes", ()):
            raise AnnotationError(
                f"{kind} of {describe(used_by)} points at edge ({producer}, {consumer}), but "
                f"'{producer}' is not an input of '{consumer}'. Point it at an existing (input, node) edge."
            )
        if ann is None or ann.input_qspec_map.get(producer) is None:
            raise AnnotationError(
                f"{kind} of {describe(used_by)} points at {describe(target)}, which has no quantization spec. "
                "Annotate that edge too, or point at an annotated edge or node."
            )
    else:
        ann = target.meta.get(Q_ANNOTATION_KEY) if isinstance(target, Node) else None
        if ann is None or ann.output_qspec is None:
            raise AnnotationError(
                f"{kind} of {describe(used_by)} points at {describe(target)}, which has no output spec. "
                "Annotate that output too, or point at an annotated edge or node."
            )


def _check_dtype(member: EdgeOrNode, dtype: object) -> torch.dtype:
    """``dtype`` itself if quantized values fit in it, else an AnnotationDtypeError."""
    if not isinstance(dtype, torch.dtype) or dtype == torch.bool or dtype.is_complex:
        raise AnnotationDtypeError(
            f"{describe(member)}: dtype={dtype} cannot hold quantized values. Use an integer dtype "
            "(torch.int8, torch.uint8, torch.int16, torch.int32) or a float one for a cast."
        )
    return dtype


def _check_spec(member: EdgeOrNode, spec: QuantizationSpecBase, graph: Graph) -> None:
    if isinstance(spec, SharedQuantizationSpec):
        _check_member_exists(spec.edge_or_node, member, "SharedQuantizationSpec", graph)
        return
    if isinstance(spec, DerivedQuantizationSpec):
        for source in spec.derived_from:
            _check_member_exists(source, member, "DerivedQuantizationSpec", graph)
    if not isinstance(spec, QuantizationSpecBase):
        raise AnnotationError(f"{describe(member)} has spec {spec!r}; expected a QuantizationSpecBase.")
    # every concrete spec but SharedQuantizationSpec has a dtype
    dtype = _check_dtype(member, getattr(spec, "dtype", None))
    limits = dtype_range(dtype)
    for name in ("quant_min", "quant_max"):
        value = getattr(spec, name)
        if value is not None and limits is not None and not limits[0] <= value <= limits[1]:
            raise AnnotationError(
                f"{describe(member)}: {name}={value} is outside the range of {dtype} "
                f"[{limits[0]}, {limits[1]}]. Use a range the dtype can hold."
            )
    qscheme = getattr(spec, "qscheme", None)
    if is_per_channel(qscheme):
        ch_axis, rank = getattr(spec, "ch_axis", None), _rank(member)
        if ch_axis is None:
            warn_drop_in(
                MissingChannelAxisWarning,
                f"{describe(member)}: per-channel qscheme {qscheme} without a ch_axis; the observer's default "
                "axis applies (0). Set ch_axis in the spec",
            )
        elif rank is not None and not 0 <= ch_axis < rank:
            raise AnnotationError(
                f"{describe(member)}: ch_axis={ch_axis} is out of range for a tensor of rank {rank}; "
                f"use an axis in [0, {rank - 1}]."
            )


def _drop_phantom_edges(gm: GraphModule) -> None:
    """Drop annotation entries for nodes that are not inputs of the annotated node (with a warning). Each is
    kept under ``node.meta[PHANTOM_INPUTS_KEY]`` as (position, producer, spec): it gets no observer, but as
    in torchao's flow it still joins sharing groups, so a shared spec may point at it."""
    for node in gm.graph.nodes:
        ann = node.meta.get(Q_ANNOTATION_KEY)
        if ann is None:
            continue
        if not isinstance(ann, QuantizationAnnotation):
            raise AnnotationError(
                f"node '{node.name}' has meta['{Q_ANNOTATION_KEY}'] of type {type(ann).__name__}; "
                "expected a pt2q QuantizationAnnotation."
            )
        inputs = set(node.all_input_nodes)
        phantoms = []
        for position, arg in enumerate(list(ann.input_qspec_map)):
            if arg in inputs:
                continue
            warn_drop_in(
                NotAnInputWarning,
                f"the annotation of node '{node.name}' maps '{arg}', which is not an input of '{node.name}' "
                f"(its inputs: {sorted(n.name for n in inputs)}); the entry quantizes nothing and is dropped",
            )
            spec = ann.input_qspec_map.pop(arg)
            if spec is not None and isinstance(arg, Node):
                phantoms.append((position, arg, spec))
        if phantoms:
            node.meta[PHANTOM_INPUTS_KEY] = phantoms


def check_annotations(gm: GraphModule) -> None:
    """Raise ``AnnotationError`` for the first impossible or inconsistent annotation."""
    _drop_phantom_edges(gm)
    for node in gm.graph.nodes:
        ann = node.meta.get(Q_ANNOTATION_KEY)
        if ann is None:
            continue
        for arg, spec in ann.input_qspec_map.items():
            if spec is not None:
                _check_spec((arg, node), spec, gm.graph)
        if ann.output_qspec is not None:
            _check_spec(node, ann.output_qspec, gm.graph)
