"""Build one observer (or fake quantizer) per sharing group and insert it into the graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import torch
from torch import nn
from torch.fx import GraphModule, Node

from pt2q.core.control_flow import graph_modules, value_aliases
from pt2q.core.drop_in_warnings import FakeQuantizeInPTQWarning, ObserverInQATWarning, warn_drop_in
from pt2q.core.graph_utils import collect_producer_nodes
from pt2q.core.notes import copy_provenance
from pt2q.core.ops import OBSERVER_PREFIX, is_observer_node, writes_first_argument
from pt2q.core.spec import (
    Q_ANNOTATION_KEY,
    DerivedQuantizationSpec,
    EdgeOrNode,
    FixedQParamsQuantizationSpec,
    QuantizationSpec,
    QuantizationSpecBase,
    SharedQuantizationSpec,
    describe,
    is_per_channel,
)
from pt2q.observers.derived import DerivedObserverOrFakeQuantize
from pt2q.passes.check_annotations import AnnotationError
from pt2q.passes.sharing import collect_qspecs, root_spec, sharing_groups

__all__ = ["insert_observers"]


def _spec_kwargs(spec: QuantizationSpec | FixedQParamsQuantizationSpec) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": spec.dtype, "is_dynamic": spec.is_dynamic}
    for name in ("quant_min", "quant_max", "qscheme"):
        if getattr(spec, name) is not None:
            kwargs[name] = getattr(spec, name)
    ch_axis = getattr(spec, "ch_axis", None)
    if ch_axis is not None and (is_per_channel(spec.qscheme) or "PerChannel" in _observer_class_name(spec)):
        kwargs["ch_axis"] = ch_axis  # as torchao: a per-channel observer takes the axis whatever the qscheme
    return kwargs


def _observer_class_name(spec: QuantizationSpec | FixedQParamsQuantizationSpec) -> str:
    ctr = getattr(spec, "observer_or_fake_quant_ctr", None)
    func = getattr(getattr(ctr, "p", None), "func", ctr)  # a with_args partial wraps the class
    return getattr(func, "__name__", "")


def _create(spec: QuantizationSpecBase, made: dict[EdgeOrNode, nn.Module], is_qat: bool) -> nn.Module:
    if isinstance(spec, DerivedQuantizationSpec):
        return DerivedObserverOrFakeQuantize(
            dtype=spec.dtype,
            obs_or_fqs=[made[m] for m in spec.derived_from],
            derive_qparams_fn=spec.derive_qparams_fn,
            quant_min=spec.quant_min,
            quant_max=spec.quant_max,
            qscheme=spec.qscheme,
            ch_axis=spec.ch_axis,
        )
    if isinstance(spec, FixedQParamsQuantizationSpec):
        from pt2q.observers.pass_through import FixedQParamsObserver

        observer = FixedQParamsObserver.with_args(scale=spec.scale, zero_point=spec.zero_point, **_spec_kwargs(spec))
        if is_qat:
            from pt2q.fake_quant.fake_quantize import FixedQParamsFakeQuantize

            return FixedQParamsFakeQuantize(observer=observer)
        return observer()
    assert isinstance(spec, QuantizationSpec), f"unexpected spec type {type(spec).__name__}"
    return spec.observer_or_fake_quant_ctr(**_spec_kwargs(spec))


def _wrong_mode(obs: nn.Module, is_qat: bool) -> bool:
    """QAT wants fake quantizers (they pass gradients), PTQ observers; torchao takes either anywhere."""
    if isinstance(obs, DerivedObserverOrFakeQuantize):
        return False
    return hasattr(obs, "fake_quant_enabled") != is_qat


def _warn_wrong_mode(members: list[tuple[EdgeOrNode, nn.Module]], is_qat: bool) -> None:
    if not members:
        return
    (member, obs), more = members[0], len(members) - 1
    where = describe(member) + (f" and {more} more" if more else "")
    if is_qat:
        warn_drop_in(
            ObserverInQATWarning,
            f"prepare_qat_pt2e: the spec for {where} builds a {type(obs).__name__}, which only observes: "
            "training does not simulate the quantization of these tensors. Use a QAT config, e.g. "
            "get_symmetric_quantization_config(is_qat=True)",
        )
    else:
        warn_drop_in(
            FakeQuantizeInPTQWarning,
            f"prepare_pt2e: the spec for {where} builds a {type(obs).__name__}, a QAT fake quantizer: "
            "calibration runs through fake quantization. Use prepare_qat_pt2e for quantization-aware "
            "training, or a config with is_qat=False",
        )


def _build(gm: GraphModule, is_qat: bool) -> dict[EdgeOrNode, nn.Module]:
    """member -> observer, with one observer instance per sharing group (over ``gm`` and its control-flow
    bodies: a value crossing into a body and its readers there can share one observer)."""
    specs: dict[EdgeOrNode, QuantizationSpecBase] = {}
    for m in graph_modules(gm):
        specs.update(collect_qspecs(m))
    groups, uf = sharing_groups(specs, value_aliases(gm))
    by_group: dict[int, nn.Module] = {}
    made: dict[EdgeOrNode, nn.Module] = {}
    wrong_mode: list[tuple[EdgeOrNode, nn.Module]] = []
    # Derived specs read other groups' observers, so build them last.
    for derived_pass in (False, True):
        for member in specs:
            spec = root_spec(member, specs, uf)
            if isinstance(spec, SharedQuantizationSpec):
                raise _sharing_cycle(member, specs)
            if isinstance(spec, DerivedQuantizationSpec) != derived_pass:
                continue
            gid = groups[member]
            if gid not in by_group:
                by_group[gid] = _create(spec, made, is_qat)
                if _wrong_mode(by_group[gid], is_qat):
                    wrong_mode.append((member, by_group[gid]))
                setattr(by_group[gid], "target_name", describe(member))  # noqa: B010 (any observer module)
            made[member] = by_group[gid]
    _warn_wrong_mode(wrong_mode, is_qat)
    return made


def _sharing_cycle(member: EdgeOrNode, specs: dict[EdgeOrNode, QuantizationSpecBase]) -> AnnotationError:
    chain = [member]
    spec = specs.get(member)
    while isinstance(spec, SharedQuantizationSpec) and len(chain) <= len(specs):
        target = spec.edge_or_node
        chain.append(target)
        spec = specs.get(target)
        if target in chain[:-1]:
            chain = chain[chain.index(target) :]
            break
    return AnnotationError(
        "SharedQuantizationSpecs form a cycle: " + " -> ".join(describe(m) for m in chain) + ". One tensor of "
        "the group needs a QuantizationSpec (or a fixed-qparams or derived spec) that the others share."
    )


def _new_observer_node(gm: GraphModule, obs: nn.Module, source: Node, meta_from: Node, names: dict[int, str]) -> Node:
    """Call ``obs`` on ``source`` right after it; a shared observer keeps one submodule name."""
    name = names.get(id(obs))
    if name is None:
        name = names[id(obs)] = f"{OBSERVER_PREFIX}{len(names)}"
        gm.add_submodule(name, obs)
    with gm.graph.inserting_after(source):
        obs_node = gm.graph.call_module(name, (source,))
    if "val" in source.meta:
        obs_node.meta["val"] = source.meta["val"]
    return copy_provenance(obs_node, meta_from)


def _writes_a_buffer(consumer: Node, arg: Node, buffers: set[str]) -> bool:
    """``consumer`` is an in-place op writing ``arg``, a model buffer (or a view of one): e.g. a KV cache
    updated by ``cache.index_put_(...)``. An observer there would make it write the observer's output."""
    if not writes_first_argument(consumer) or consumer.args[0] is not arg:
        return False
    producers = collect_producer_nodes(arg)
    return producers is not None and any(p.op == "get_attr" and str(p.target) in buffers for p in producers)


def insert_observers(
    gm: GraphModule,
    is_qat: bool,
    obs_or_fq_callback: Optional[Callable[[GraphModule, dict], None]] = None,
) -> GraphModule:
    """Insert observers for every annotated edge and output of ``gm`` and of its control-flow bodies
    (in place)."""
    made = _build(gm, is_qat)
    if obs_or_fq_callback is not None:
        obs_or_fq_callback(gm, made)
    for m in graph_modules(gm):
        _insert(m, made)
    return gm


def _insert(gm: GraphModule, made: dict[EdgeOrNode, nn.Module]) -> None:
    names: dict[int, str] = {}
    obs_module_to_node: dict[int, list[Node]] = {}
    buffers = {name for name, _ in gm.named_buffers()}

    def observed_arg(arg: Any, consumer: Node) -> Any:
        if isinstance(arg, (list, tuple)):
            return type(arg)(observed_arg(a, consumer) for a in arg)
        if not isinstance(arg, Node):
            return arg
        original = arg
        while is_observer_node(original, gm):
            source = original.args[0]
            assert isinstance(source, Node)  # an observer call reads one node
            original = source
        obs = made.get((original, consumer))
        if obs is None or obs is made.get(original):
            return arg  # not quantized, or already observed at the producer's output
        if _writes_a_buffer(consumer, original, buffers):
            return arg  # the destination of an in-place write stays the buffer itself (as in torchao)
        for existing in obs_module_to_node.get(id(obs), []):
            if existing.args[0] in (arg, original):
                return existing
        obs_node = _new_observer_node(gm, obs, arg, consumer, names)
        obs_module_to_node.setdefault(id(obs), []).append(obs_node)
        return obs_node

    for node in list(gm.graph.nodes):
        if Q_ANNOTATION_KEY not in node.meta:
            continue
        node.args = observed_arg(node.args, node)
        node.kwargs = {k: observed_arg(v, node) for k, v in node.kwargs.items()}
        obs = made.get(node)
        if obs is None or not isinstance(node.meta.get("val"), torch.Tensor):
            continue
        obs_node = _new_observer_node(gm, obs, node, node, names)
        obs_module_to_node.setdefault(id(obs), []).append(obs_node)
        node.replace_all_uses_with(obs_node, delete_user_cb=lambda user, o=obs_node: user is not o)
    gm.recompile()
