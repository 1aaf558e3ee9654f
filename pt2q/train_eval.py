"""Switching dropout and BatchNorm between train and eval in an exported graph.

``torch.export`` bakes the training flag into the graph, so ``model.eval()`` on
an exported module would silently do nothing. pt2q makes ``.eval()``/``.train()``
raise and offers functions that rewrite the flags in place, keeping each op's
own dropout ``p``, BatchNorm ``momentum`` and ``eps``.
"""
from __future__ import annotations

import types

import torch
from torch.fx import GraphModule

__all__ = [
    "move_exported_model_to_eval",
    "move_exported_model_to_train",
    "allow_exported_model_train_eval",
    "disallow_eval_train",
]

# op -> index of its boolean "training" argument
_TRAIN_FLAG_ARG = {
    torch.ops.aten.dropout.default: 2,
    torch.ops.aten.feature_dropout.default: 2,
    torch.ops.aten.alpha_dropout.default: 2,
    torch.ops.aten.batch_norm.default: 5,
}


def _set_training(model: GraphModule, training: bool) -> GraphModule:
    changed = False
    for node in model.graph.nodes:
        index = _TRAIN_FLAG_ARG.get(node.target) if node.op == "call_function" else None
        if index is not None and len(node.args) > index and node.args[index] != training:
            args = list(node.args)
            args[index] = training
            node.args = tuple(args)
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

    def _train(self: GraphModule, mode: bool = True) -> GraphModule:
        return _set_training(self, mode)

    def _eval(self: GraphModule) -> GraphModule:
        return _set_training(self, False)

    model.train = types.MethodType(_train, model)  # type: ignore[method-assign]
    model.eval = types.MethodType(_eval, model)  # type: ignore[method-assign]
    return model
