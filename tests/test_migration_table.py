"""Every pt2q path of the README's migration table imports and provides the names its row lists."""

from __future__ import annotations

import importlib

import pytest

from tests.migration import EVERY, Row, migration_rows, rewrite_imports

ROWS = migration_rows()


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.old}->{r.new}")
def test_row_imports(row: Row) -> None:
    module = importlib.import_module(row.new)
    missing = [name for name in row.names if not hasattr(module, name)]
    assert not missing, f"README migration table: {row.new} lacks {missing} (row for {row.old})"


def test_every_row_promising_every_name_is_checked_by_the_parity_test() -> None:
    """Rows saying "every public name" are the parity test's MIRRORS, so their names are checked there."""
    from tests.test_torchao_parity import MIRRORS

    every = {row.old: row.new for row in ROWS if row.every}
    assert every == MIRRORS, f"rows saying {EVERY!r} must be exactly the parity test's mirrored modules"
    assert all(old.startswith(("torchao.", "executorch.")) for old in every), (
        "a removed torch.ao module cannot be enumerated: list its names in the row"
    )


def test_rewrite_applies_the_table() -> None:
    script = (
        "import torch\n"
        "from torch._export import capture_pre_autograd_graph\n"
        "from torch.ao.quantization.quantize_pt2e import prepare_pt2e, convert_pt2e\n"
        "from torch.ao.quantization.quantizer import XNNPACKQuantizer, QuantizationSpec\n"
        "m = capture_pre_autograd_graph(m, *example_inputs)\n"
        "torch.ao.quantization.move_exported_model_to_eval(m)\n"
    )
    assert rewrite_imports(script, ROWS) == (
        "import pt2q\n"
        "import torch\n"
        "from pt2q.quantize_pt2e import prepare_pt2e, convert_pt2e\n"
        "from pt2q.quantizers import XNNPACKQuantizer\n"
        "from pt2q.quantizer import QuantizationSpec\n"
        "m = torch.export.export(m, example_inputs).module()\n"
        "pt2q.move_exported_model_to_eval(m)"
    )


def test_a_name_the_table_does_not_map_is_an_error() -> None:
    with pytest.raises(KeyError, match="prepare_fx"):
        rewrite_imports("from torch.ao.quantization.quantize_pt2e import prepare_fx\n", ROWS)
