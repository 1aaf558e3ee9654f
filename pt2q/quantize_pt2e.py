"""torchao's ``quantize_pt2e`` module path: the three entry points of the flow."""

from pt2q.passes.convert import convert_pt2e
from pt2q.passes.prepare import prepare_pt2e, prepare_qat_pt2e

__all__ = ["prepare_pt2e", "prepare_qat_pt2e", "convert_pt2e"]
