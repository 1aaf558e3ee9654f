"""The data, model and training loop the tutorials share: scikit-learn's handwritten digits
(bundled with scikit-learn, no download) and a small CNN for them."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits

from pt2q.cli.demo import DigitsNet  # conv-BN-ReLU x2, max-pool, two linear layers: the demo's CNN

__all__ = ["DigitsNet", "digits_data", "train_epochs", "train_on_loader", "train", "accuracy"]


def digits_data():
    """scikit-learn's 1797 8x8 digits scaled to [0, 1], split 80/20: x_train, y_train, x_test, y_test."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    split = int(0.8 * len(x))
    return x[perm[:split]], y[perm[:split]], x[perm[split:]], y[perm[split:]]


def train_epochs(model, x, y, epochs: int, lr: float = 3e-3) -> None:
    """Adam on shuffled mini-batches. Works the same on an eager module and a QAT-prepared graph."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def train_on_loader(model, loader, epochs: int, lr: float = 1e-3) -> None:
    """Adam over a DataLoader's ``(x, y)`` batches; a DistributedSampler is told the epoch, so it reshuffles."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for epoch in range(epochs):
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()


def train(model: nn.Module, x, y, epochs: int) -> nn.Module:
    """Train an eager model (``train_epochs`` in training mode); return it in eval mode."""
    model.train()
    train_epochs(model, x, y, epochs)
    return model.eval()


def accuracy(model, x, y) -> float:
    """Top-1 accuracy in percent."""
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100
