"""Regenerate a GraphModule's Python code once per pipeline, not once per pass.

Each pass edits graphs and ends with ``gm.recompile()`` so it is correct on its own. Inside
``deferred_recompile(model)`` those calls on ``model`` and its submodules do nothing; when the block ends,
every graph module of ``model`` whose graph changed is recompiled once. Nothing inside the block may run
the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch.fx import GraphModule

__all__ = ["deferred_recompile"]


def _skip() -> None:
    return None


@contextmanager
def deferred_recompile(model: GraphModule) -> Iterator[GraphModule]:
    """Defer ``recompile`` on ``model`` and the graph modules it holds to the end of the block."""
    deferred = [m for m in model.modules() if isinstance(m, GraphModule) and "recompile" not in m.__dict__]
    for m in deferred:
        m.__dict__["recompile"] = _skip
    try:
        yield model
    finally:
        for m in deferred:
            m.__dict__.pop("recompile", None)
        for held in model.modules():  # the modules now held, bodies added by the passes included
            if isinstance(held, GraphModule):
                held.recompile()
