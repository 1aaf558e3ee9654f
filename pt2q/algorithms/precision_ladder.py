"""A precision ladder: per-layer choices between quantization recipes, from cheapest to most exact.

    ladder = Ladder([Rung("static int8", quantizer), Rung("dynamic int8", dynamic_quantizer)])
    mixed = MixedPrecision(ladder, {"linear_5": "dynamic int8", "add_3": FP32})
    prepared = pt2q.prepare_pt2e(graph, mixed)

A :class:`Rung` is a recipe the backend runs, expressed as a ``Quantizer`` (``None``: the layer
stays float, the ``fp32`` rung every ladder ends with). The first rung is the base: every layer
not named in the choice is annotated by it. Layers are named as ``pt2q.report`` names its rows
(the float graph's node names). :class:`MixedPrecision` annotates with the base, takes the chosen
layers (and what shares qparams with them) back to float, and gives each chosen layer the
annotation its rung's quantizer writes for it.

The backend-specific ladders (XNNPACK, x86) live in ``pt2q.quantizers.ladders``; measured
costs in ``pt2q.lowering.latency_cost``. The core only knows the protocol.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Protocol

from torch.fx import GraphModule, Node

from pt2q.algorithms.keep_float import layer_name, strip_annotations
from pt2q.core.spec import Q_ANNOTATION_KEY, DerivedQuantizationSpec, SharedQuantizationSpec
from pt2q.quantizer import Quantizer

__all__ = ["FP32", "Rung", "Ladder", "MixedPrecision", "CostModel", "annotated_layers", "rung_counts"]

FP32 = "fp32"


@dataclass(frozen=True)
class Rung:
    """One recipe of a ladder: its name, the quantizer that writes it (``None``: float) and a
    relative cost per unit of work (the fallback cost model when no latency is measured)."""

    name: str
    quantizer: Optional[Quantizer]
    relative_cost: float = 1.0
    note: str = ""

    @property
    def is_float(self) -> bool:
        return self.quantizer is None


class Ladder:
    """Rungs in the order they are tried, the base first; a float rung ends every ladder."""

    def __init__(self, rungs: Sequence[Rung]) -> None:
        if not rungs or rungs[0].quantizer is None:
            raise ValueError("Ladder: the first rung is the base recipe and needs a quantizer")
        names = [r.name for r in rungs]
        if len(set(names)) != len(names):
            raise ValueError(f"Ladder: rung names must be unique, got {names}")
        self.rungs: tuple[Rung, ...] = tuple(rungs) + (
            () if any(r.is_float for r in rungs) else (Rung(FP32, None, 3.0, "float kernels"),)
        )

    @property
    def base(self) -> Rung:
        return self.rungs[0]

    @property
    def float_rung(self) -> Rung:
        return next(r for r in self.rungs if r.is_float)

    @property
    def quantized_rungs(self) -> tuple[Rung, ...]:
        """The rungs that quantize, base included."""
        return tuple(r for r in self.rungs if not r.is_float)

    def __getitem__(self, name: str) -> Rung:
        for r in self.rungs:
            if r.name == name:
                return r
        raise KeyError(f"no rung {name!r} in the ladder ({', '.join(r.name for r in self.rungs)})")

    def __iter__(self) -> Any:
        return iter(self.rungs)

    def __repr__(self) -> str:
        return "Ladder(" + " -> ".join(r.name for r in self.rungs) + ")"


class CostModel(Protocol):
    """What a layer costs on the target runtime under each rung (ms, or any additive unit)."""

    name: str

    def layer_costs(
        self, float_gm: GraphModule, requests: Mapping[str, Sequence[Rung]]
    ) -> dict[str, dict[str, float]]:  # pragma: no cover - protocol
        """For each layer named in ``requests`` (report row names of ``float_gm``), the cost of
        each of its rungs; a layer or rung the model cannot price may be left out."""
        ...


def _references(spec: object) -> list[Any]:
    if isinstance(spec, SharedQuantizationSpec):
        return [spec.edge_or_node]
    if isinstance(spec, DerivedQuantizationSpec):
        return list(spec.derived_from)
    return []


def _annotations(model: GraphModule) -> dict[Node, Any]:
    return {n: n.meta[Q_ANNOTATION_KEY] for n in model.graph.nodes if Q_ANNOTATION_KEY in n.meta}


def _restore(model: GraphModule, saved: Mapping[Node, Any]) -> None:
    for node in model.graph.nodes:
        node.meta.pop(Q_ANNOTATION_KEY, None)
        if node in saved:
            node.meta[Q_ANNOTATION_KEY] = saved[node]


def _quantizes(ann: Any) -> bool:
    return ann is not None and bool(ann.input_qspec_map or ann.output_qspec is not None)


def _own_annotations(model: GraphModule, quantizer: Quantizer, layers: set[str]) -> dict[Node, Any]:
    """The annotations ``quantizer`` writes on the nodes of ``layers`` (the graph is left as it was).

    An annotation that shares or derives qparams from a tensor outside ``layers`` is not taken:
    that tensor is quantized by another rung, or not at all."""
    saved = _annotations(model)
    _restore(model, {})
    try:
        quantizer.annotate(model)
        mine = {n: a for n, a in _annotations(model).items() if layer_name(n) in layers and _quantizes(a)}
    finally:
        _restore(model, saved)
    members = {(arg, n) for n, a in mine.items() for arg in a.input_qspec_map} | {
        n for n, a in mine.items() if a.output_qspec is not None
    }
    return {
        n: a
        for n, a in mine.items()
        if all(ref in members for spec in [*a.input_qspec_map.values(), a.output_qspec] for ref in _references(spec))
    }


def annotated_layers(model: GraphModule, quantizer: Quantizer) -> set[str]:
    """The layers (report row names) ``quantizer`` annotates in ``model`` (left unannotated)."""
    gm = _copy(model)
    gm = quantizer.transform_for_annotation(gm)
    quantizer.annotate(gm)
    return {layer_name(n) for n, a in _annotations(gm).items() if _quantizes(a)}


def _copy(model: GraphModule) -> GraphModule:
    with warnings.catch_warnings():  # torch's own pytree deprecation notice when copying a GraphModule
        warnings.simplefilter("ignore", FutureWarning)
        return copy.deepcopy(model)


class MixedPrecision(Quantizer):
    """The ladder's base quantizer, with the layers named in ``choice`` on other rungs.

    ``choice`` maps report row names to rung names; a layer its rung does not annotate stays
    float (and the report says so)."""

    def __init__(self, ladder: Ladder, choice: Mapping[str, str], reason: str = "chosen by pt2q.quantize") -> None:
        super().__init__()
        self.ladder = ladder
        self.choice = {layer: ladder[rung].name for layer, rung in choice.items() if rung != ladder.base.name}
        self.reason = reason
        self._float: dict[str, str] = {}

    @property
    def base(self) -> Quantizer:
        quantizer = self.ladder.base.quantizer
        assert quantizer is not None  # Ladder checks it
        return quantizer

    def by_rung(self) -> dict[str, set[str]]:
        groups: dict[str, set[str]] = {}
        for layer, rung in self.choice.items():
            groups.setdefault(rung, set()).add(layer)
        return groups

    def transform_for_annotation(self, model: GraphModule) -> GraphModule:
        return self.base.transform_for_annotation(model)

    def annotate(self, model: GraphModule) -> GraphModule:
        self.base.annotate(model)
        if not self.choice:
            return model
        stripped = strip_annotations(model, self.choice)
        written: set[str] = set()
        for rung_name, layers in self.by_rung().items():
            rung = self.ladder[rung_name]
            if rung.quantizer is None:
                continue
            for node, ann in _own_annotations(model, rung.quantizer, layers).items():
                node.meta[Q_ANNOTATION_KEY] = copy.copy(ann)
                written.add(layer_name(node))
        self._float = {
            layer_name(n): (
                f"{self.ladder[self.choice[layer_name(n)]].name} rung {self.reason}"
                if layer_name(n) in self.choice
                else "it shares its qparams with a layer moved to another rung"
            )
            for n in stripped
            if layer_name(n) not in written
        }
        return model

    def validate(self, model: GraphModule) -> None:
        self.base.validate(model)

    def prepare_obs_or_fq_callback(self, model: GraphModule, edge_or_node_to_obs_or_fq: dict) -> None:
        self.base.prepare_obs_or_fq_callback(model, edge_or_node_to_obs_or_fq)

    def explain_unannotated(self, node: Node) -> Optional[str]:
        return self._float.get(layer_name(node)) or self.base.explain_unannotated(node)


def rung_counts(choice: Mapping[str, str], layers: Iterable[str], base: str) -> dict[str, int]:
    """How many of ``layers`` sit on each rung under ``choice``."""
    counts: dict[str, int] = {}
    for layer in layers:
        rung = choice.get(layer, base)
        counts[rung] = counts.get(rung, 0) + 1
    return counts
