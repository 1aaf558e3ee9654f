"""What a report or ``pt2q.quantize`` is given, normalised: models as ``GraphModule``s, inputs as batches."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from torch import nn
from torch.export import ExportedProgram
from torch.fx import GraphModule

__all__ = ["graph_module", "float_graph", "as_batches"]


def graph_module(model: Any, who: str) -> GraphModule:
    """``model`` (a ``GraphModule`` or an ``ExportedProgram``) as a ``GraphModule``; a ``TypeError`` naming
    ``who`` (``"pt2q.report: quantized_model"``) otherwise."""
    if isinstance(model, ExportedProgram):
        return model.module()
    if isinstance(model, GraphModule):
        return model
    raise TypeError(f"{who} must be a GraphModule or ExportedProgram, got {type(model).__name__}")


def float_graph(
    model: Union[nn.Module, GraphModule, ExportedProgram],
    example_inputs: Sequence[Any],
    who: str,
    export_error: Optional[str] = None,
) -> GraphModule:
    """The float model as a graph: an exported one as it is, an eager module exported (a copy, in eval
    mode) with ``example_inputs``. ``who`` names the argument in a ``TypeError``; with ``export_error``
    a failing export is a ``ValueError`` starting with it (else the export's own error)."""
    if isinstance(model, (GraphModule, ExportedProgram)):
        return graph_module(model, who)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{who} must be an nn.Module, GraphModule or ExportedProgram, got {type(model).__name__}")
    if export_error is None:
        return _export_copy(model, example_inputs)
    try:
        return _export_copy(model, example_inputs)
    except Exception as e:
        raise ValueError(f"{export_error}: {e}") from e


def _export_copy(model: nn.Module, example_inputs: Sequence[Any]) -> GraphModule:
    return torch.export.export(copy.deepcopy(model).eval(), tuple(example_inputs)).module()


def as_batches(inputs: Any) -> list[tuple]:
    """``inputs`` as a list of input tuples: one tuple (or tensor) is one batch."""
    if inputs is None:
        return []
    if isinstance(inputs, torch.Tensor):
        return [(inputs,)]
    if isinstance(inputs, (list, tuple)) and inputs and all(isinstance(b, (list, tuple)) for b in inputs):
        return [tuple(b) for b in inputs]
    if isinstance(inputs, (list, tuple)):
        return [tuple(inputs)]
    raise TypeError(
        f"pt2q.report: inputs must be a tuple of tensors or a list of such tuples, got {type(inputs).__name__}"
    )
