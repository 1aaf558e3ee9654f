"""Small models covering the operator patterns the quantizers know, with example inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


def _randomize_bn(model: nn.Module) -> nn.Module:
    """Give BatchNorms non-trivial statistics so folding them is actually exercised."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


class ConvBnReLUStack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + x)


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 6, 1), nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


class DepthwiseSeparable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 16, 1)
        self.act = nn.Hardtanh(0.0, 6.0)

    def forward(self, x):
        return self.pw(self.act(self.bn(self.dw(x))))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class AttentionBlock(nn.Module):
    """Self-attention and a feed-forward layer, each with a residual add. ``scale_by_mul``
    scales the scores with ``* d**-0.5`` (a mul by a Python scalar) instead of ``/ d**0.5``."""

    def __init__(self, dim: int = 32, heads: int = 4, scale_by_mul: bool = False) -> None:
        super().__init__()
        self.heads, self.scale_by_mul = heads, scale_by_mul
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ff1, self.ff2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-2, -1)
        scores = scores * (d // self.heads) ** -0.5 if self.scale_by_mul else scores / (d // self.heads) ** 0.5
        att = torch.softmax(scores, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.ff2(F.relu(self.ff1(x)))


class ConvTransposeBnReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.up(self.conv(x))))


class Functional(nn.Module):
    """Functional forms: F.conv2d / F.linear on parameters, torch.add, torch.mul, F.relu."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.2)
        self.b1 = nn.Parameter(torch.randn(8) * 0.1)
        self.w2 = nn.Parameter(torch.randn(10, 8) * 0.2)

    def forward(self, x):
        y = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
        y = F.relu(torch.add(y, torch.mul(y, y)))
        y = y.mean(dim=(2, 3))
        return F.linear(y, self.w2)


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3)
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        return self.fc(y.permute(0, 2, 1))


ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "conv_bn_relu_stack": (ConvBnReLUStack, (2, 3, 16, 16)),
    "residual": (Residual, (2, 8, 8, 8)),
    "concat": (Concat, (2, 4, 8, 8)),
    "depthwise": (DepthwiseSeparable, (2, 8, 8, 8)),
    "mlp": (MLP, (4, 32)),
    "attention": (AttentionBlock, (2, 6, 32)),
    "conv_transpose": (ConvTransposeBnReLU, (2, 4, 8, 8)),
    "functional": (Functional, (2, 3, 8, 8)),
    "conv1d": (Conv1dNet, (2, 4, 12)),
}


def make(name: str, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """An eval-mode model of the zoo with deterministic weights and one example input."""
    factory, shape = ZOO[name]
    torch.manual_seed(seed)
    model = _randomize_bn(factory()).eval()
    return model, (torch.randn(*shape),)


def calibration_batches(example: tuple[torch.Tensor, ...], n: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn(t.shape, generator=g) for t in example) for _ in range(n)]
