"""The main job: train a small CNN on scikit-learn's digits, quantize it to int8 with each
pt2q quantizer that applies, lower it to a real int8 runtime (ExecuTorch's XNNPACK ``.pte``,
Inductor's oneDNN kernels on x86) and print fp32 vs int8 accuracy, size, latency and SQNR."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

import pt2q
from pt2q.numerics.metrics import sqnr
from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config
from pt2q.runtime.timing import median_ms

BATCH = 40  # the test set's 360 images in 9 batches; .pte programs have static shapes


class DigitsNet(nn.Module):
    """conv-bn-relu x2, pool, linear: the seeds' small CNN, sized for 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's 1797 8x8 digits scaled to [0, 1], split 80/20 at random (seed 0).

    Returns ``(x_train, y_train, x_test, y_test)``.
    """
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
            nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            opt.step()
    return model.eval()


def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100


def latency_ms(fn, x: torch.Tensor) -> float:
    """Median latency (ms) of ``fn`` on one batch ``x``, without autograd, after a warm-up call."""
    with torch.no_grad():
        return median_ms(fn, (x,), runs=20, warmup=1)


def predict(fn, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``fn`` over ``x`` in batches of ``BATCH`` (static-shape programs need the same batch)."""
    with torch.no_grad():
        return torch.cat([fn(x[i : i + BATCH]) for i in range(0, len(x), BATCH)])


def saved_bytes(program: torch.export.ExportedProgram, path: Path) -> int:
    pt2q.save_pt2(program, path)
    return path.stat().st_size


def quantize(model: nn.Module, example: tuple, quantizer, batches: list[torch.Tensor], label: str):
    """Export, prepare, calibrate (progress bar), convert."""
    prepared = pt2q.prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    for x in tqdm(batches, desc=f"calibrate {label}", unit="batch"):
        prepared(x)
    return pt2q.convert_pt2e(prepared)


@dataclass
class Row:
    model: str
    runtime: str
    logits: torch.Tensor
    file: Path
    ms: float


def executorch_rows(
    model: nn.Module, example: tuple, calibration: list[torch.Tensor], x_test: torch.Tensor, out: Path
) -> list[Row]:
    """fp32 and XNNPACK-int8 ``.pte`` programs run by the ExecuTorch runtime (empty without ExecuTorch)."""
    try:
        from pt2q.lowering import to_executorch
        from pt2q.runtime import load, set_num_threads
    except ImportError:
        return []
    set_num_threads(1)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    quantized = quantize(model, example, quantizer, calibration, "XNNPACK")
    rows = []
    for name, program in (
        ("fp32", torch.export.export(model, example)),
        ("int8 XNNPACK", torch.export.export(quantized, example)),
    ):
        path = out / f"demo_{name.split()[0]}{'_xnnpack' if name != 'fp32' else ''}.pte"
        to_executorch(program).save(path)
        pte = load(path)
        rows.append(Row(name, "ExecuTorch .pte", predict(pte, x_test), path, latency_ms(pte, x_test[:BATCH])))
    saved_bytes(torch.export.export(quantized, example), out / "demo_int8_xnnpack.pt2")
    return rows


def x86_row(model: nn.Module, example: tuple, calibration: list[torch.Tensor], x_test: torch.Tensor, out: Path) -> Row:
    """X86InductorQuantizer, compiled by Inductor into oneDNN int8 kernels."""
    from pt2q.lowering import compile_quantized_for_x86
    from pt2q.quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config

    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    quantized = quantize(model, example, quantizer, calibration, "x86")
    path = out / "demo_int8_x86.pt2"
    saved_bytes(torch.export.export(quantized, example), path)
    with tqdm(total=1, desc="compile x86 (Inductor)", unit="model") as bar:
        compiled = compile_quantized_for_x86(quantized, example)
        bar.update()
    return Row("int8 x86", "Inductor + oneDNN", predict(compiled, x_test), path, latency_ms(compiled, x_test[:BATCH]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for the saved programs")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--calibration-batches", type=int, default=16)
    parser.add_argument("--no-x86", action="store_true", help="skip the Inductor (x86) row, which compiles C++")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every latency below is single-threaded
    try:
        _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    x_train, y_train, x_test, y_test = load_digits()
    model = train(DigitsNet(), x_train, y_train, args.epochs)
    example = (x_test[:BATCH],)
    calibration = [x_train[i * BATCH : (i + 1) * BATCH] for i in range(args.calibration_batches)]

    fp32_path = args.out / "demo_fp32.pt2"
    saved_bytes(torch.export.export(model, example), fp32_path)
    rows = [Row("fp32", "PyTorch eager", predict(model, x_test), fp32_path, latency_ms(model, x_test[:BATCH]))]
    rows += executorch_rows(model, example, calibration, x_test, args.out)
    skipped = []
    if not args.no_x86:
        try:
            rows.append(x86_row(model, example, calibration, x_test, args.out))
        except Exception as e:  # Inductor needs a C++ compiler; the other rows stand without it
            skipped.append(f"int8 x86 row skipped: Inductor could not compile ({str(e).splitlines()[0][:200]})")

    reference = rows[0].logits
    fp32_bytes = {r.file.suffix: r.file.stat().st_size for r in rows if r.model == "fp32"}
    print(
        f"\nDigitsNet on scikit-learn digits: accuracy on {len(x_test)} test images, latency of one batch of "
        f"{BATCH} (single thread), programs in {args.out}/"
    )
    print(
        "| model        | runs on           | accuracy % | file                  "
        "|   bytes | vs fp32 file | ms/batch | SQNR dB |"
    )
    print(
        "|--------------|-------------------|------------|-----------------------"
        "|---------|--------------|----------|---------|"
    )
    for r in rows:
        acc = float((r.logits.argmax(1) == y_test).float().mean()) * 100
        size = r.file.stat().st_size
        print(
            f"| {r.model:<12} | {r.runtime:<17} | {acc:>10.2f} | {r.file.name:<21} | {size:>7,} "
            f"| {size / fp32_bytes[r.file.suffix]:>12.2f} | {r.ms:>8.3f} | {sqnr(reference, r.logits):>7.1f} |"
        )
    print("vs fp32 file: against the fp32 program of the same format (a small .pt2 is mostly its serialized graph).")
    if not any(r.file.suffix == ".pte" for r in rows):
        print("(no ExecuTorch rows: pip install executorch==1.5.1 to lower to .pte)")
    for line in skipped:
        print(line)
    print("EmbeddingQuantizer, the third quantizer, has nothing to do here: the model has no embedding table.")


if __name__ == "__main__":
    main()
