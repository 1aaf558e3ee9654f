"""Switching dropout and BatchNorm between train and eval in an exported graph.

``torch.export`` bakes the training flag into the graph, so ``model.eval()`` on
an exported module would silently do nothing. pt2q makes ``.eval()``/``.train()``
raise and offers functions that rewrite the flags in place, keeping each op's
own dropout ``p``, BatchNorm ``momentum`` and ``eps``.
"""

from __future__ import annotations

import types
from typing import Optional

import torch
from torch.fx import GraphModule

from pt2q.distributed.sync_batch_norm import to_plain_batch_norm, to_sync_batch_norm

__all__ = [
    "move_exported_model_to_eval",
    "move_exported_model_to_train",
    "allow_exported_model_train_eval",
    "disallow_eval_train",
]

_aten = torch.ops.aten
# op -> (position, keyword) of its boolean "training" argument; the in-place
# dropouts are what ``nn.Dropout(inplace=True)`` and friends export to
_TRAIN_FLAG_ARG = {
    **{
        op.default: (2, "train")
        for op in (
            _aten.dropout,
            _aten.dropout_,
            _aten.feature_dropout,
            _aten.feature_dropout_,
            _aten.alpha_dropout,
            _aten.alpha_dropout_,
            _aten.feature_alpha_dropout,
            _aten.feature_alpha_dropout_,
        )
    },
    _aten.batch_norm.default: (5, "training"),
}


def _is_batch_counter(node: torch.fx.Node) -> bool:
    """``add_(bn.num_batches_tracked, 1)``, which export emits for a training-mode BatchNorm."""
    return (
        node.op == "call_function"
        and node.target == _aten.add_.Tensor
        and len(node.args) == 2
        and isinstance(node.args[0], torch.fx.Node)
        and node.args[0].op == "get_attr"
        and str(node.args[0].target).endswith("num_batches_tracked")
        and node.args[1] in (0, 1)
    )


def _set_training(model: GraphModule, training: bool) -> GraphModule:
    changed = False
    for node in model.graph.nodes:
        if not training and to_plain_batch_norm(node):  # a synchronized BatchNorm is a plain one in eval
            changed = True
        if _is_batch_counter(node):
            # BatchNorm counts training batches only: add 1 in training, 0 in eval
            if node.args[1] != int(training):
                node.args = (node.args[0], int(training))
                changed = True
            continue
        flag = _TRAIN_FLAG_ARG.get(node.target) if node.op == "call_function" else None
        if flag is None:
            continue
        index, keyword = flag
        if len(node.args) > index and node.args[index] != training:
            node.args = node.args[:index] + (training,) + node.args[index + 1 :]
            changed = True
        elif keyword in node.kwargs and node.kwargs[keyword] != training:
            node.kwargs = {**node.kwargs, keyword: training}
            changed = True
        if training and to_sync_batch_norm(node):  # pt2q.distributed.convert_sync_batchnorm marked it
            changed = True
    if changed:
        model.recompile()
    # keep nn.Module.training consistent for code that reads it (e.g. fake quantizers)
    torch.nn.Module.train(model, training)
    return model


def move_exported_model_to_eval(model: GraphModule) -> GraphModule:
    """Put dropout and BatchNorm ops of an exported model in eval mode (in place)."""
    return _set_training(model, False)


def move_exported_model_to_train(model: GraphModule) -> GraphModule:
    """Put dropout and BatchNorm ops of an exported model in training mode (in place)."""
    return _set_training(model, True)


def _raise_on_train_eval(self: GraphModule, mode: bool = True) -> GraphModule:
    raise NotImplementedError(
        "Calling train() or eval() is not supported for exported models: the training flags "
        "are baked into the graph. Call pt2q.move_exported_model_to_train(model) or "
        "pt2q.move_exported_model_to_eval(model) instead, or pt2q.allow_exported_model_train_eval(model) "
        "to make .train()/.eval() do that."
    )


def disallow_eval_train(model: GraphModule) -> GraphModule:
    """Make ``model.train()``/``model.eval()`` raise an error that points to the functions above."""
    model.train = types.MethodType(_raise_on_train_eval, model)  # type: ignore[method-assign]
    model.eval = types.MethodType(_raise_on_train_eval, model)  # type: ignore[method-assign]
    return model


def allow_exported_model_train_eval(model: GraphModule) -> GraphModule:
    """Make ``model.train()``/``model.eval()`` switch the exported graph's dropout and BatchNorm."""

    last_mode: list[Optional[bool]] = [None]  # the mode last set through these methods

    def _train(self: GraphModule, mode: bool = True) -> GraphModule:
        _set_training(self, mode)
        if last_mode[0] != mode:  # as torchao: the first switch recompiles, a repeated one does nothing
            self.recompile()
            last_mode[0] = mode
        return self

    def _eval(self: GraphModule) -> GraphModule:
        return _train(self, False)

    model.train = types.MethodType(_train, model)  # type: ignore[method-assign]
    model.eval = types.MethodType(_eval, model)  # type: ignore[method-assign]
    return model
