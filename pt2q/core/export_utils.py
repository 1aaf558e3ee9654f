"""Helpers of torchao's ``export_utils``: is a module an exported graph, and wrapping a callable to export it.

>>> import torch
>>> model_is_exported(torch.nn.Linear(2, 2))
False
>>> model_is_exported(torch.export.export(WrapperModule(torch.sin), (torch.randn(2),)).module())
True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.fx import GraphModule

__all__ = ["model_is_exported", "WrapperModule", "NotExportedError"]


class NotExportedError(TypeError, ValueError, AttributeError, AssertionError):
    """A model or program that is not what ``torch.export`` produces, where pt2q needs one.

    It is each exception type torchao happens to raise for the same call (``AttributeError`` for
    an eager module given to ``prepare_pt2e``, ``ValueError`` or ``AssertionError`` elsewhere).
    """


class WrapperModule(torch.nn.Module):
    """An ``nn.Module`` whose ``forward`` calls ``fn``: what ``torch.export`` needs to capture a plain callable."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


def model_is_exported(m: torch.nn.Module) -> bool:
    """True if ``m`` is a graph captured by ``torch.export`` (its nodes carry ``val`` metadata); False for
    eager modules and for graphs from ``torch.fx.symbolic_trace``."""
    return isinstance(m, GraphModule) and any("val" in n.meta for n in m.graph.nodes)
