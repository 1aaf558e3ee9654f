"""Accuracy of int8 models on real data: fp32 vs post-training quantization vs quantization-aware training.

A small conv+BatchNorm network is trained on scikit-learn's handwritten digits
(bundled with scikit-learn, no download), then quantized with each quantizer of
``QUANTIZERS`` (pt2q's XNNPACK and X86 Inductor quantizers, and torchao's flow with
ExecuTorch's ``XNNPACKQuantizer`` as the reference) twice: PTQ (``prepare_pt2e`` +
calibration + ``convert_pt2e``) and QAT (``prepare_qat_pt2e`` + fine-tuning +
``convert_pt2e``). Prints a Markdown table of test-set accuracies.
Usage: ``python -m benchmarks.accuracy [--epochs N] [--qat-epochs N]``.

``tests/test_qat.py`` runs the same code with fewer epochs.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx import GraphModule

import pt2q
from benchmarks.common import Section, progress
from benchmarks.settings import Settings
from pt2q.cli.demo import load_digits  # the digits split the demo uses (80/20, seed 0)
from pt2q.numerics.metrics import sqnr
from pt2q.quantizer import Quantizer

if TYPE_CHECKING:
    from benchmarks.variants import Models, Variants

__all__ = [
    "DigitsNet",
    "QuantizerEntry",
    "QUANTIZERS",
    "AccuracyRow",
    "load_digits",
    "measure",
    "markdown_table",
    "suite",
]

BATCH = 64


@dataclass(frozen=True)
class QuantizerEntry:
    """A backend quantizer under test: how to build it for PTQ and for QAT, and the PT2E API that runs it."""

    name: str
    ptq: Callable[[], Quantizer]
    qat: Callable[[], Quantizer]
    # the flow's functions: prepare_pt2e, prepare_qat_pt2e, convert_pt2e, move_exported_model_to_eval
    api: Callable[[], Any] = lambda: pt2q


def _xnnpack() -> QuantizerEntry:
    from pt2q.quantizers import XNNPACKQuantizer, get_symmetric_quantization_config

    def make(is_qat: bool) -> Callable[[], Quantizer]:
        return lambda: XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat)
        )

    return QuantizerEntry("XNNPACK (per-channel)", make(False), make(True))


def _x86_inductor() -> Optional[QuantizerEntry]:
    try:
        from pt2q.quantizers import X86InductorQuantizer, get_default_x86_inductor_quantization_config
    except ImportError:  # not available yet
        return None

    def make(is_qat: bool) -> Callable[[], Quantizer]:
        return lambda: X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=is_qat))

    return QuantizerEntry("X86 Inductor", make(False), make(True))


def _torchao_xnnpack() -> QuantizerEntry:
    """torchao's PT2E flow with ExecuTorch's XNNPACKQuantizer, the same config as :func:`_xnnpack` (imported lazily)."""

    def make(is_qat: bool) -> Callable[[], Quantizer]:
        def build() -> Quantizer:
            from executorch.backends.xnnpack.quantizer import xnnpack_quantizer as et

            return et.XNNPACKQuantizer().set_global(
                et.get_symmetric_quantization_config(is_per_channel=True, is_qat=is_qat)
            )

        return build

    def api() -> Any:
        import torchao.quantization.pt2e as ao
        from torchao.quantization.pt2e import quantize_pt2e

        return SimpleNamespace(
            prepare_pt2e=quantize_pt2e.prepare_pt2e,
            prepare_qat_pt2e=quantize_pt2e.prepare_qat_pt2e,
            convert_pt2e=quantize_pt2e.convert_pt2e,
            move_exported_model_to_eval=ao.move_exported_model_to_eval,
        )

    return QuantizerEntry("torchao XNNPACK (per-channel)", make(False), make(True), api)


QUANTIZERS: list[QuantizerEntry] = [e for e in (_xnnpack(), _torchao_xnnpack(), _x86_inductor()) if e is not None]


class DigitsNet(nn.Module):
    """conv-BN-ReLU x2 (the second conv without bias), max-pool, dropout, two linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.drop = nn.Dropout(0.1)
        self.fc1, self.fc2 = nn.Linear(32 * 4 * 4, 64), nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.max_pool2d(F.relu(self.bn2(self.conv2(y))), 2)
        return self.fc2(F.relu(self.fc1(self.drop(torch.flatten(y, 1)))))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, seed: int) -> None:
    """Adam on shuffled mini-batches; the model must already be in training mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean()) * 100


def _export(model: nn.Module, example: torch.Tensor) -> GraphModule:
    """Export with a dynamic batch size, so the same program trains, calibrates and tests."""
    batch = torch.export.Dim("batch")
    return torch.export.export(copy.deepcopy(model), (example,), dynamic_shapes=({0: batch},)).module()


def post_training_quantize(
    model: nn.Module, quantizer: Quantizer, x: torch.Tensor, batches: int, api: Any = pt2q
) -> GraphModule:
    prepared = api.prepare_pt2e(_export(model.eval(), x[:BATCH]), quantizer)
    for i in range(batches):
        prepared(x[i * BATCH : (i + 1) * BATCH])
    return api.convert_pt2e(prepared)


def quantization_aware_train(
    model: nn.Module, quantizer: Quantizer, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, api: Any = pt2q
) -> GraphModule:
    prepared = api.prepare_qat_pt2e(_export(model.train(), x[:BATCH]), quantizer)
    train(prepared, x, y, epochs, lr, seed=1)
    api.move_exported_model_to_eval(prepared)
    return api.convert_pt2e(prepared)


@dataclass
class AccuracyRow:
    quantizer: str
    fp32: float
    ptq: float
    qat: float
    seconds: float


def measure(
    quantizers: list[QuantizerEntry],
    epochs: int = 12,
    qat_epochs: int = 4,
    calibration_batches: int = 8,
    lr: float = 3e-3,
    qat_lr: float = 1e-3,
) -> list[AccuracyRow]:
    """Train DigitsNet once in fp32, then PTQ and QAT it with each quantizer; test-set accuracies in %."""
    x_train, y_train, x_test, y_test = load_digits()
    torch.manual_seed(0)
    model = DigitsNet().train()
    train(model, x_train, y_train, epochs, lr, seed=0)
    fp32 = accuracy(model.eval(), x_test, y_test)
    rows = []
    for entry in quantizers:
        t0 = time.perf_counter()
        api = entry.api()
        ptq = post_training_quantize(model, entry.ptq(), x_train, calibration_batches, api)
        qat = quantization_aware_train(model, entry.qat(), x_train, y_train, qat_epochs, qat_lr, api)
        rows.append(
            AccuracyRow(
                entry.name, fp32, accuracy(ptq, x_test, y_test), accuracy(qat, x_test, y_test), time.perf_counter() - t0
            )
        )
    return rows


def markdown_table(rows: list[AccuracyRow], n_test: int) -> str:
    lines = [
        f"DigitsNet on scikit-learn digits, accuracy on {n_test} test images (%)",
        "",
        "| quantizer | fp32 | PTQ int8 | QAT int8 | PTQ - fp32 | QAT - fp32 | PTQ+QAT seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.quantizer} | {r.fp32:.2f} | {r.ptq:.2f} | {r.qat:.2f} | {r.ptq - r.fp32:+.2f} | "
            f"{r.qat - r.fp32:+.2f} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


SQNR_METHOD = (
    "SQNR (dB, higher is better) of the int8 model's outputs against the fp32 model's on "
    "{batches} fresh random batches (the models have random weights, so this measures "
    "numerics, not task accuracy). XNNPACK per-channel config, 2 calibration batches, quantized graphs "
    "run in PyTorch (Q/DQ reference kernels). Last column: pt2q's output against torchao's "
    "(inf: bit-identical)."
)


def _sqnr_row(models: Models, variants: Variants, name: str, batches: int) -> dict[str, float]:
    """pt2q and torchao int8 against fp32, and against each other, on ``batches`` fresh random batches."""
    modules = {variant: program.module() for variant, program in variants.programs(name).items()}
    g = torch.Generator().manual_seed(2)
    inputs = [tuple(torch.randn(x.shape, generator=g) for x in models[name][1]) for _ in range(batches)]
    with torch.no_grad():
        out = {v: torch.cat([m(*b).flatten() for b in inputs]) for v, m in modules.items()}
    return {
        "pt2q": sqnr(out["fp32"], out["pt2q_int8"]),
        "torchao": sqnr(out["fp32"], out["torchao_int8"]),
        "agree": sqnr(out["torchao_int8"], out["pt2q_int8"]),
    }


def _sqnr_section(models: Models, variants: Variants, settings: Settings) -> Section:
    rows = {name: _sqnr_row(models, variants, name, settings.sqnr_batches) for name in progress(models, "accuracy")}
    lines = [
        "| model | pt2q int8 vs fp32 dB | torchao int8 vs fp32 dB | pt2q - torchao dB | pt2q vs torchao output dB |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {r['pt2q']:.2f} | {r['torchao']:.2f} | {r['pt2q'] - r['torchao']:+.2f} | {r['agree']:.2f} |"
        for n, r in rows.items()
    ]
    return Section("Accuracy: SQNR against fp32", SQNR_METHOD.format(batches=settings.sqnr_batches), "\n".join(lines))


def _digits_section(settings: Settings) -> Section:
    rows = measure(QUANTIZERS, epochs=settings.epochs, qat_epochs=settings.qat_epochs)
    n_test = len(load_digits()[3])
    digits = markdown_table(rows, n_test)  # its caption line is replaced by the section's text
    return Section(
        "Accuracy: digits (real data)",
        (
            f"DigitsNet (conv-BN x2, 2 linear) trained {settings.epochs} epochs on scikit-learn's digits, then PTQ "
            f"(8 calibration batches) and QAT ({settings.qat_epochs} epochs) with each quantizer; accuracy (%) on "
            f"the {n_test} held-out test images; one run, fixed seeds."
        ),
        "\n".join(line for line in digits.splitlines() if line.startswith("|")),
    )


def suite(models: Models, variants: Variants, settings: Settings) -> list[Section]:
    """The ``accuracy`` suite of ``benchmarks.run``: SQNR of each int8 model against fp32, and test accuracy on
    scikit-learn digits."""
    return [_sqnr_section(models, variants, settings), _digits_section(settings)]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=12, help="fp32 training epochs")
    parser.add_argument("--qat-epochs", type=int, default=4, help="QAT fine-tuning epochs")
    parser.add_argument("--calibration-batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(QUANTIZERS, args.epochs, args.qat_epochs, args.calibration_batches)
    print(markdown_table(rows, n_test=len(load_digits()[3])))


if __name__ == "__main__":
    main()
