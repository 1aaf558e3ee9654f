"""Objects pickled under the flat ``pt2q/`` layout (``tests/data/flat_layout_objects.pt``, written by
``tests/data/make_flat_layout_objects.py`` before the subpackage move) still load and compute the same
qparams: every module path they name stays importable."""

from __future__ import annotations

from pathlib import Path

import torch

import pt2q
from pt2q.fake_quantize import FakeQuantizeBase
from pt2q.observer import ObserverBase

DATA = Path(__file__).parent / "data" / "flat_layout_objects.pt"


def _load() -> dict:
    return torch.load(DATA, weights_only=False)  # a pickle this repository wrote: the opt-in is the point


def test_prepared_models_observers_load_with_their_qparams() -> None:
    saved = _load()
    loaded = {**saved["ptq"], **saved["qat"]}
    assert len(saved["ptq"]) >= 4 and len(saved["qat"]) >= 4
    for name, module in loaded.items():
        assert isinstance(module, (ObserverBase, FakeQuantizeBase)), name
        assert tuple(t.tolist() for t in module.calculate_qparams()) == saved["qparams"][name], name


def test_standalone_observers_load_as_the_current_classes() -> None:
    obs = _load()["observers"]
    assert type(obs["affine"]) is pt2q.AffineQuantizedMinMaxObserver
    assert type(obs["learnable"]).__name__ == "LearnableFakeQuantize"
    w = torch.randn(4, 64)
    for name in ("affine", "affine_fq", "percentile", "mse", "learnable"):
        obs[name](w)  # they still observe
        scale, _ = obs[name].calculate_qparams()
        assert torch.isfinite(scale).all() and (scale > 0).all(), name
