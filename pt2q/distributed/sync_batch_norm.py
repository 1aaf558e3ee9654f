"""SyncBatchNorm for exported graphs: batch statistics over the union of every rank's batch.

``torch.nn.SyncBatchNorm`` cannot apply to an exported model: it is a module that
replaces ``nn.BatchNorm*`` modules, and an exported graph has none, only
``aten.batch_norm`` calls (QAT keeps them training after the conv-BN rewrite of
``pt2q.passes.qat_conv_bn``); it also runs on GPUs only. ``convert_sync_batchnorm``
rewrites the calls instead: each training ``aten.batch_norm`` becomes
:func:`sync_batch_norm`, with the same arguments plus the process group's name.
In training it normalizes with the mean and (biased) variance of all ranks'
batches together (one ``all_gather`` of per-rank count, mean and squared
deviations forward, one ``all_reduce`` of two per-channel sums backward, as
torch's SyncBatchNorm does) and updates the running statistics with them, so
they stay equal on every rank; its gradients are those of one BatchNorm over the
concatenated batch. Eval needs no synchronization: ``move_exported_model_to_eval``
turns the calls back into ``aten.batch_norm`` (and ``move_exported_model_to_train``
restores them), so ``convert_pt2e`` folds them into the conv as usual.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor
from torch.fx import GraphModule, Node

from pt2q.core.ops import BATCH_NORM, is_op

__all__ = ["convert_sync_batchnorm", "sync_batch_norm", "require_process_group", "SYNC_GROUP_KEY"]

aten = torch.ops.aten
SYNC_GROUP_KEY = "pt2q_sync_batch_norm_group"  # node.meta of a BatchNorm put in eval: the group to restore in train
_GROUPS: dict[str, Any] = {}  # group name -> process group ("" is the default group, looked up at call time)


def require_process_group(fn: str, group: Optional[Any] = None) -> tuple[int, int]:
    """(rank, world size) in ``group`` (the default group if None); a clear error if there is none."""
    if not dist.is_available():
        raise RuntimeError(f"{fn}: this build of torch has no torch.distributed")
    if not dist.is_initialized():
        raise RuntimeError(
            f"{fn}: the default process group is not initialized. Call "
            "torch.distributed.init_process_group('gloo') (or 'nccl') on every rank first; under torchrun "
            "the environment already tells it where the other ranks are."
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError(f"{fn}: this process (global rank {dist.get_rank()}) is not a member of `group`")
    return rank, dist.get_world_size(group)


def _group(name: str) -> Any:
    if not name:
        return dist.group.WORLD
    if name not in _GROUPS:
        raise RuntimeError(
            f"sync_batch_norm: process group {name!r} is not known in this process; call "
            "pt2q.distributed.convert_sync_batchnorm(model, group) here again"
        )
    return _GROUPS[name]


def _channel_view(t: Tensor, dim: int) -> Tensor:
    return t.view([1, -1] + [1] * (dim - 2))


class _SyncBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Optional[Tensor],
        bias: Optional[Tensor],
        running_mean: Optional[Tensor],
        running_var: Optional[Tensor],
        momentum: float,
        eps: float,
        group: Any,
    ) -> Tensor:
        channels = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // channels
        if count:
            local_mean = x.mean(dims)
            local_m2 = (x - _channel_view(local_mean, x.dim())).square().sum(dims)
        else:
            local_mean = local_m2 = x.new_zeros(channels)
        local = torch.cat([local_mean, local_m2, x.new_tensor([count])])
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, local, group=group)
        stats = torch.stack(gathered)  # [ranks, 2C + 1]: the ranks in order, so every rank computes the same
        means, m2s, counts = stats[:, :channels], stats[:, channels:-1], stats[:, -1:]
        total = counts.sum()
        if total <= 1:
            raise ValueError(f"sync_batch_norm: expected more than 1 value per channel when training, got {int(total)}")
        mean = (counts * means).sum(0) / total
        m2 = (m2s + counts * (means - mean).square()).sum(0)  # squared deviations from the global mean
        invstd = torch.rsqrt(m2 / total + eps)
        if running_mean is not None and running_var is not None:
            running_mean.mul_(1 - momentum).add_(mean, alpha=momentum)
            running_var.mul_(1 - momentum).add_(m2 / (total - 1), alpha=momentum)
        x_hat = (x - _channel_view(mean, x.dim())) * _channel_view(invstd, x.dim())
        ctx.save_for_backward(x_hat, invstd, weight)
        ctx.total, ctx.dims, ctx.group = total, dims, group
        out = x_hat
        if weight is not None:
            out = out * _channel_view(weight, x.dim())
        if bias is not None:
            out = out + _channel_view(bias, x.dim())
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:
        x_hat, invstd, weight = ctx.saved_tensors
        sum_dy = grad.sum(ctx.dims)
        sum_dy_xhat = (grad * x_hat).sum(ctx.dims)
        grad_input = None
        if ctx.needs_input_grad[0]:
            sums = torch.cat([sum_dy, sum_dy_xhat])
            dist.all_reduce(sums, group=ctx.group)  # the gradient of the global statistics needs every rank's
            mean_dy, mean_dy_xhat = (sums / ctx.total).chunk(2)
            scale = invstd if weight is None else invstd * weight
            d = grad.dim()
            grad_input = (grad - _channel_view(mean_dy, d) - x_hat * _channel_view(mean_dy_xhat, d)) * _channel_view(
                scale, d
            )
        grad_weight = sum_dy_xhat if ctx.needs_input_grad[1] else None  # this rank's share: DDP averages them
        grad_bias = sum_dy if ctx.needs_input_grad[2] else None
        return grad_input, grad_weight, grad_bias, None, None, None, None, None


def sync_batch_norm(
    input: Tensor,
    weight: Optional[Tensor],
    bias: Optional[Tensor],
    running_mean: Optional[Tensor],
    running_var: Optional[Tensor],
    training: bool,
    momentum: float,
    eps: float,
    cudnn_enabled: bool,
    group_name: str = "",
) -> Tensor:
    """``aten.batch_norm`` whose training statistics cover every rank's batch in process group ``group_name``.

    Outside training, or without a process group of more than one rank, it is
    ``aten.batch_norm`` (as ``torch.nn.SyncBatchNorm`` falls back to BatchNorm).
    """
    group = _group(group_name) if training and dist.is_available() and dist.is_initialized() else None
    if group is None or dist.get_world_size(group) == 1:
        return aten.batch_norm.default(
            input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn_enabled
        )
    return _SyncBatchNorm.apply(input, weight, bias, running_mean, running_var, momentum, eps, group)


def _is_batch_norm(node: Node) -> bool:
    return is_op(node, BATCH_NORM) and len(node.args) == 9


def convert_sync_batchnorm(model: GraphModule, group: Optional[Any] = None) -> GraphModule:
    """Make every BatchNorm of an exported model compute its training statistics over all ranks (in place).

    The exported-graph counterpart of ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``;
    call it on the ``prepare_qat_pt2e`` result before wrapping it in
    ``DistributedDataParallel``. BatchNorms in eval mode switch when the model is
    moved to train.
    """
    if not isinstance(model, GraphModule):
        raise TypeError(f"convert_sync_batchnorm expects an exported GraphModule, got {type(model).__name__}")
    require_process_group("convert_sync_batchnorm", group)
    name = "" if group is None or group is dist.group.WORLD else group.group_name
    if name:
        _GROUPS[name] = group
    for node in model.graph.nodes:
        if node.op == "call_function" and node.target is sync_batch_norm:
            node.args = (*node.args[:9], name)
        elif _is_batch_norm(node):
            node.meta[SYNC_GROUP_KEY] = name
            if node.args[5]:
                to_sync_batch_norm(node)
    model.recompile()
    return model


def to_sync_batch_norm(node: Node) -> bool:
    """Turn a training ``aten.batch_norm`` that ``convert_sync_batchnorm`` marked back into ``sync_batch_norm``."""
    if not (_is_batch_norm(node) and SYNC_GROUP_KEY in node.meta):
        return False
    node.target = sync_batch_norm
    node.args = (*node.args, node.meta[SYNC_GROUP_KEY])
    return True


def to_plain_batch_norm(node: Node) -> bool:
    """Turn a ``sync_batch_norm`` call into ``aten.batch_norm`` (for eval, where they compute the same)."""
    if not (node.op == "call_function" and node.target is sync_batch_norm):
        return False
    node.target = aten.batch_norm.default
    node.meta[SYNC_GROUP_KEY] = node.args[9] if len(node.args) > 9 else ""
    node.args = node.args[:9]
    return True
