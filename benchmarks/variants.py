"""The fp32 / pt2q int8 / torchao int8 programs of each benchmark model, built once per run and shared by suites."""

from __future__ import annotations

import torch

from benchmarks.executorch_speed import export_variants, lower_to_pte

__all__ = ["Models", "Variants"]

Models = dict[str, tuple[torch.nn.Module, tuple]]


class Variants:
    """Per model, the fp32 / pt2q int8 / torchao int8 exported programs and ``.pte`` buffers, built once per run."""

    def __init__(self, models: Models) -> None:
        self.models = models
        self._programs: dict[str, dict[str, torch.export.ExportedProgram]] = {}
        self._ptes: dict[str, dict[str, bytes]] = {}

    def programs(self, name: str) -> dict[str, torch.export.ExportedProgram]:
        """``fp32``, ``torchao_int8`` and ``pt2q_int8`` exported programs of model ``name``."""
        if name not in self._programs:
            self._programs[name] = export_variants(*self.models[name])
        return self._programs[name]

    def ptes(self, name: str) -> dict[str, bytes]:
        """The ``.pte`` buffers of :meth:`programs`."""
        if name not in self._ptes:
            self._ptes[name] = {
                variant: lower_to_pte(variant, program) for variant, program in self.programs(name).items()
            }
        return self._ptes[name]
