"""The main job: train a small CNN on scikit-learn's digits, quantize it to int8 with pt2q,
save both programs and print an fp32 vs int8 table (accuracy, size, latency, SQNR)."""
from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

import pt2q
from pt2q.qparams import sqnr
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config


class DigitsNet(nn.Module):
    """conv-bn-relu x2, pool, linear: the seeds' small CNN, sized for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits as sk_digits

    data = sk_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(x), generator=g)
    x, y = x[perm], y[perm]
    split = int(0.8 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in tqdm(range(epochs), desc="train fp32", unit="epoch"):
        for i in range(0, len(x), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
            opt.step()
    return model.eval()


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100


def median_ms(model, x: torch.Tensor, repeats: int = 20) -> float:
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def tensor_bytes(program: torch.export.ExportedProgram) -> int:
    """Bytes of the parameters, buffers and constants a program carries."""
    tensors = list(program.state_dict.values()) + list(program.constants.values())
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def saved_bytes(program: torch.export.ExportedProgram, path: Path) -> int:
    torch.export.save(program, path)
    return path.stat().st_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the saved .pt2 programs")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--calibration-batches", type=int, default=16)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)

    x_train, y_train, x_test, y_test = load_digits()
    model = train(DigitsNet(), x_train, y_train, args.epochs)
    example = (x_test[:32],)

    batch = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}  # any batch size
    exported = torch.export.export(model, example, dynamic_shapes=batch)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = pt2q.prepare_pt2e(exported.module(), quantizer)
    for i in tqdm(range(args.calibration_batches), desc="calibrate", unit="batch"):
        prepared(x_train[i * 32:(i + 1) * 32])
    quantized = pt2q.convert_pt2e(prepared)
    quantized_ep = torch.export.export(quantized, example, dynamic_shapes=batch)

    fp32_size = saved_bytes(exported, args.out / "demo_fp32.pt2")
    int8_size = saved_bytes(quantized_ep, args.out / "demo_int8.pt2")
    reloaded = torch.export.load(args.out / "demo_int8.pt2").module()
    assert torch.equal(reloaded(x_test), quantized(x_test)), "int8 program changed across save/load"

    fp32_weights = tensor_bytes(exported)
    rows = [
        ("fp32", accuracy(model, x_test, y_test), fp32_weights, fp32_size, median_ms(model, x_test), float("inf")),
        ("int8 (XNNPACK Q/DQ)", accuracy(quantized, x_test, y_test), tensor_bytes(quantized_ep), int8_size,
         median_ms(quantized, x_test), sqnr(model(x_test), quantized(x_test))),
    ]
    print(f"\nDigitsNet on scikit-learn digits ({len(x_test)} test images), programs saved to {args.out}/")
    print("| model                | accuracy % | tensor bytes | ratio | .pt2 bytes | ratio | ms/batch* | SQNR dB |")
    print("|----------------------|------------|--------------|-------|------------|-------|-----------|---------|")
    for name, acc, weights, size, ms, db in rows:
        print(f"| {name:<20} | {acc:>10.2f} | {weights:>12,} | {weights / fp32_weights:>5.2f} | {size:>10,} "
              f"| {size / fp32_size:>5.2f} | {ms:>9.2f} | {db:>7.1f} |")
    print("* eager PyTorch; the int8 Q/DQ program simulates quantization in float. Lower it to a runtime for speed.")


if __name__ == "__main__":
    main()
