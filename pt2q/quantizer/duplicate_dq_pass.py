"""``DuplicateDQPass`` (``torchao.quantization.pt2e.quantizer.duplicate_dq_pass``): the pass
:func:`pt2q.passes.duplicate_dq.duplicate_dq` as a ``torch.fx`` pass object."""

from __future__ import annotations

from torch.fx import GraphModule
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from pt2q.passes.duplicate_dq import duplicate_dq

__all__ = ["DuplicateDQPass"]


class DuplicateDQPass(PassBase):
    """Give each annotated consumer of a shared dequantize its own copy
    (:func:`pt2q.passes.duplicate_dq.duplicate_dq`)."""

    def call(self, graph_module: GraphModule) -> PassResult:
        duplicate_dq(graph_module)
        graph_module.graph.eliminate_dead_code()
        graph_module.recompile()
        return PassResult(graph_module, True)
