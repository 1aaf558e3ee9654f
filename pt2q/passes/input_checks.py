"""What ``prepare_pt2e`` / ``prepare_qat_pt2e`` / ``convert_pt2e`` accept: checks run before any pass.

* :func:`require_graph_module`: a ``torch.fx.GraphModule`` (``torch.export.export(...).module()``);
* :func:`require_float_export`: moreover the ATen graph of ``torch.export`` (not ``symbolic_trace``'s),
  not already prepared (a converted model is fine: it is quantized again, see
  :mod:`pt2q.passes.reentrant`);
* :func:`require_bool`: a flag given as a bool (e.g. a value passed to the wrong positional argument).
"""

from __future__ import annotations

from typing import Optional

from torch.fx import GraphModule

from pt2q.core.control_flow import graph_modules
from pt2q.core.export_utils import NotExportedError
from pt2q.core.ops import is_observer_node

__all__ = ["require_graph_module", "require_float_export", "refuse_prepared", "require_bool"]


def require_graph_module(model: object, fn: str) -> GraphModule:
    """``model`` if it is a GraphModule; else :class:`NotExportedError` naming ``fn`` and how to export."""
    if not isinstance(model, GraphModule):
        raise NotExportedError(
            f"{fn} expects the GraphModule of an exported program, got {type(model).__name__}. "
            "Use torch.export.export(model, example_inputs).module()."
        )
    return model


def _not_exported(model: GraphModule) -> Optional[str]:
    """Why ``model`` is not the ATen graph of ``torch.export`` (e.g. ``torch.fx.symbolic_trace``'s), or None."""
    nodes = list(model.graph.nodes)
    for node in nodes:
        if node.op == "call_method":
            return f"node '{node.name}' calls the method {node.target!r}"
        if node.op == "call_module" and not is_observer_node(node, model) and node.target != "_guards_fn":
            module = type(model.get_submodule(node.target)).__name__
            return f"node '{node.name}' calls the module '{node.target}' ({module})"
    for node in nodes:
        if node.op == "placeholder" and "val" not in node.meta:
            return f"input '{node.name}' carries no meta['val'] (the example value export records)"
    return None


def require_float_export(model: object, fn: str) -> GraphModule:
    """The GraphModule of an exported program (float or converted): not prepared, not symbolically traced."""
    model = require_graph_module(model, fn)
    refuse_prepared(model, fn)  # a converted model is fine: it is quantized again (pt2q.passes.reentrant)
    why = _not_exported(model)
    if why is not None:
        raise TypeError(
            f"{fn} expects the ATen graph of torch.export.export(model, example_inputs).module(), but {why}: "
            "this GraphModule comes from torch.fx.symbolic_trace or similar, and quantizers annotate nothing in it."
        )
    return model


def refuse_prepared(model: GraphModule, fn: str) -> None:
    """Raise ValueError if ``model`` (or a control-flow body of it) already holds observers."""
    observers = [n.name for m in graph_modules(model) for n in m.graph.nodes if is_observer_node(n, m)]
    if observers:
        raise ValueError(
            f"{fn}: the model is already prepared (it holds observer node '{observers[0]}'). Calibrate it and "
            f"call convert_pt2e, or call {fn} on a fresh torch.export.export(model, example_inputs).module()."
        )


def require_bool(value: object, fn: str, name: str, position: str) -> None:
    """Raise ValueError unless ``value`` (``fn``'s argument ``name``, its ``position`` positional one) is a bool."""
    if not isinstance(value, bool):
        raise ValueError(f"{fn}: {name} must be a bool, got {value!r} (the {position} positional argument of {fn})")
