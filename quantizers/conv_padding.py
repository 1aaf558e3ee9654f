"""Make a convolution's string padding (``padding="same"`` / ``"valid"``) explicit before annotation.

``nn.Conv2d(..., padding="same")`` (EfficientNet in ``transformers``, many Keras ports) exports as
``aten.conv2d.padding``, an overload whose padding is a string. Recipes written for
``aten.conv2d.default`` (the x86 one, as torchao's) do not match it, so every such conv stayed
fp32 on x86. The string is only a shorthand: ``"valid"`` is zero padding, and ``"same"`` (stride
1) pads ``dilation * (kernel - 1)`` per spatial dim, split evenly, the extra element (even kernels)
on the right. :func:`explicit_conv_padding` rewrites each conv to the ``.default`` overload with
that padding, and, when the split is uneven, a ``constant_pad_nd`` of the extra elements first:
what ATen itself runs for the string overload, so outputs are bit-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch._ops import OpOverload
from torch.fx import GraphModule, Node

from pt2q.core.notes import copy_provenance

__all__ = ["explicit_conv_padding", "STRING_PADDING_CONVS"]

aten = torch.ops.aten

# the string-padding overload of each conv -> the overload with explicit int padding
STRING_PADDING_CONVS: dict[OpOverload, OpOverload] = {
    aten.conv1d.padding: aten.conv1d.default,
    aten.conv2d.padding: aten.conv2d.default,
    aten.conv3d.padding: aten.conv3d.default,
}
_PARAMS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_DEFAULTS: dict[str, Any] = {"bias": None, "stride": 1, "padding": "valid", "dilation": 1, "groups": 1}


def _per_dim(value: Any, dims: int) -> list[int]:
    values = list(value) if isinstance(value, Sequence) else [value]
    return values * dims if len(values) == 1 else values


def _explicit(node: Node) -> Optional[tuple[dict[str, Any], list[int], list[int]]]:
    """The conv's arguments, its symmetric padding and the extra right padding per dim (None: not static)."""
    args = dict(_DEFAULTS)
    args.update(zip(_PARAMS, node.args))
    args.update(node.kwargs)
    weight = args["weight"].meta.get("val") if isinstance(args["weight"], Node) else None
    if not isinstance(weight, torch.Tensor) or args["padding"] not in ("same", "valid"):
        return None
    dims = weight.dim() - 2
    kernel = list(weight.shape[2:])
    if not all(isinstance(k, int) for k in kernel):
        return None
    if args["padding"] == "valid":
        return args, [0] * dims, [0] * dims
    if any(s != 1 for s in _per_dim(args["stride"], dims)):
        return None  # ATen refuses padding="same" with strides: the conv already fails in eager
    totals = [d * (k - 1) for d, k in zip(_per_dim(args["dilation"], dims), kernel)]
    left = [t // 2 for t in totals]
    return args, left, [t - lo for t, lo in zip(totals, left)]


def explicit_conv_padding(gm: GraphModule) -> int:
    """Rewrite every ``conv{1,2,3}d.padding`` with a static kernel into ``conv{1,2,3}d.default`` (in place).

    Returns how many convs were rewritten. A conv whose weight shape is unknown is left as it is.
    """
    rewritten = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in STRING_PADDING_CONVS:
            continue
        found = _explicit(node)
        if found is None:
            continue
        args, left, right = found
        source = args["input"]
        extra = [r - lo for lo, r in zip(left, right)]
        with gm.graph.inserting_before(node):
            if any(extra):
                pad = [0] * (2 * len(extra))
                for i, e in enumerate(extra):
                    pad[2 * (len(extra) - 1 - i) + 1] = e  # constant_pad_nd lists the last dim first
                source = gm.graph.call_function(aten.constant_pad_nd.default, (source, pad, 0.0))
                copy_provenance(source, node)
                val = args["input"].meta.get("val")
                if isinstance(val, torch.Tensor):
                    with val.fake_mode:  # type: ignore[attr-defined]
                        source.meta["val"] = aten.constant_pad_nd.default(val, pad, 0.0)
            dims = len(left)
            conv = gm.graph.call_function(
                STRING_PADDING_CONVS[node.target],
                (
                    source,
                    args["weight"],
                    args["bias"],
                    _per_dim(args["stride"], dims),
                    left,
                    _per_dim(args["dilation"], dims),
                    args["groups"],
                ),
            )
        conv.meta.update({k: v for k, v in node.meta.items() if k != "quantization_annotation"})
        node.replace_all_uses_with(conv)
        gm.graph.erase_node(node)
        rewritten += 1
    if rewritten:
        gm.graph.lint()
        gm.recompile()
    return rewritten
