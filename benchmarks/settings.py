"""How much one ``benchmarks.run`` measures: the repeat counts of a full and of a ``--small`` run."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALL_MODELS", "Settings", "FULL", "SMALL"]

ALL_MODELS = ("resnet18", "mobilenet_v2", "bert_encoder_12l", "mlp")


@dataclass(frozen=True)
class Settings:
    """Repeat counts of one run (``FULL`` or ``SMALL``)."""

    small: bool
    models: tuple[str, ...]
    x86_runs: int  # interleaved timing rounds of the x86 columns (median)
    pte_runs: int  # timed calls per .pte and round (median)
    pte_rounds: int  # interleaved rounds per .pte (best median)
    overhead_repeats: int  # prepare+convert repeats (median)
    sqnr_batches: int  # fresh random batches for the SQNR table
    epochs: int  # digits: fp32 training epochs
    qat_epochs: int  # digits: QAT fine-tuning epochs


FULL = Settings(
    False,
    ALL_MODELS,
    x86_runs=20,
    pte_runs=20,
    pte_rounds=3,
    overhead_repeats=3,
    sqnr_batches=4,
    epochs=12,
    qat_epochs=4,
)
SMALL = Settings(
    True,
    ("mlp", "resnet18"),
    x86_runs=5,
    pte_runs=5,
    pte_rounds=2,
    overhead_repeats=1,
    sqnr_batches=2,
    epochs=3,
    qat_epochs=1,
)
