"""The PyTorch PT2E quantization tutorials' scripts run on pt2q with only their imports changed.

The scripts are read from the seed documents in ``../shared/seeds`` (next to the repository; the
test skips when they are absent): PyTorch's quantization docs collection (markdown, fenced code) and
the scraped PT2E PTQ tutorial (plain text: its code blocks are located by their first and last
lines). Each tutorial's code blocks run in order in one namespace, as in a notebook, after
``tests.migration.rewrite_imports`` applied the README's migration table to them. Nothing else in
the code changes except:

* data sizes: images 224x224 -> 32x32, batch sizes 30 / 50 -> 2 (the tutorials train and
  evaluate ResNet-18 on ImageNet);
* ``model.eval()`` on an exported model: the tutorials call it (in ``calibrate`` and ``evaluate``);
  torch >= 2.6 and torchao raise there, as pt2q does, and prescribe
  ``allow_exported_model_train_eval(model)``: each call returning an exported model is wrapped in it;
* what cannot be had here: torchvision has no CPU build for torch 2.13 that loads, and ImageNet and
  the ResNet-18 checkpoint are downloads. So ``torchvision`` imports are dropped, ``resnet18`` is a
  small residual CNN (conv-bn-relu, max pool, a residual block, average pool, linear: ResNet's op set)
  whose checkpoint the test writes where the tutorial loads it, and ``prepare_data_loaders`` gives
  random 3x32x32 images with 10 labels.

The blocks not run, with the reason, are in ``NOT_RUN``. The seeds' other documents (the PyTorch
1.13 quantization docs, the 2020 blog post, the eager-mode docs) hold no PT2E code.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import pt2q
from tests.migration import migration_rows, rewrite_imports

SEEDS = Path(os.environ.get("PT2Q_SEEDS", Path(__file__).resolve().parents[2] / "shared" / "seeds"))
for candidate in (SEEDS, Path("/work/shared/seeds")):
    if candidate.is_dir():
        SEEDS = candidate
        break
DOCS = "000_5da379cd15680e95.txt"  # PyTorch's quantization docs, markdown
PTQ_TUTORIAL = "003_ede85b86e8968fbe.txt"  # the PT2E PTQ tutorial, scraped text

pytestmark = pytest.mark.skipif(not (SEEDS / DOCS).is_file(), reason=f"the seed documents are not in {SEEDS}")

# data sizes only: (pattern, replacement)
DATA_SIZES = [
    (r"\b224\b", "32"),
    (r"train_batch_size = 30\b", "train_batch_size = 2"),
    (r"eval_batch_size = 50\b", "eval_batch_size = 2"),
]

# (document, the block's first lines) -> why it is not run
NOT_RUN = {
    (
        DOCS,
        "import torch\nimport torch.nn as nn\nimport torchvision\n",
    ): "the list of every section's imports (eager, FX, torchvision), not a script",
    (DOCS, "from torch.ao.quantization.quantize_pt2e import prepare_pt2e"): (
        "the blog's API sketch uses m, example_inputs and convert_pt2e without defining or importing them"
    ),
    (PTQ_TUTORIAL, "quantizer.set_global(qconfig_opt)  # qconfig_opt is an optional quantization config"): (
        "an outline of the configuration methods (continuation lines start with '.'): not Python"
    ),
    (PTQ_TUTORIAL, "def quantized_linear(x_int8, x_scale, x_zero_point, weight_int8, weight_scale, "): (
        "illustrations of the two graph representations, never called"
    ),
}

# Blocks where pt2q warns on purpose: (the block's first lines) -> (the warning pt2q gives, why).
# The tutorials' API sketches convert with "calibration omitted" / "train omitted": torchao then
# quantizes with the observers' defaults (scale 1, zero point 0: a wrong model, silently); pt2q
# does the same and warns, naming the observers that never saw data.
_UNCALIBRATED = (pt2q.UncalibratedObserverWarning, "pt2q warns about observers that never saw data")
# The QAT sketch also prepares for QAT with the PTQ config (no is_qat=True): torchao then trains with
# plain observers, i.e. without simulating quantization at all; pt2q does the same and warns, saying
# to use a QAT config (the tutorial's full QAT code below passes is_qat=True).
_PTQ_CONFIG_FOR_QAT = (pt2q.ObserverInQATWarning, "prepare_qat_pt2e with a config that cannot train")
DIFFERENCES = {
    "import torch\nclass M(torch.nn.Module):": _UNCALIBRATED,
    "import torch\nfrom torch._export import capture_pre_autograd_graph\n\nclass M": _UNCALIBRATED,
    "import torch\nfrom torch._export import capture_pre_autograd_graph\nfrom torch.ao.quantization.quantize_pt2e import (\n"
    "  prepare_qat_pt2e,": _PTQ_CONFIG_FOR_QAT,
}

# The PTQ tutorial's code blocks, by (first line, last line) in reading order.
PTQ_BLOCKS = [
    ("import torch", "m = convert_pt2e(m)"),
    ("import os", 'model_to_quantize = load_model(saved_model_dir + float_model_file).to("cpu")'),
    ("model_to_quantize.eval()", "model_to_quantize.eval()"),
    ("example_inputs = (torch.rand(2, 3, 224, 224),)", "exported_model = torch.export.export_for_training("),
    ("from torch.ao.quantization.quantizer.xnnpack_quantizer import (", "quantizer.set_global("),
    ("prepared_model = prepare_pt2e(exported_model, quantizer)", "print(prepared_model.graph)"),
    ("def calibrate(model, data_loader):", "calibrate(prepared_model, data_loader_test)"),
    ("quantized_model = convert_pt2e(prepared_model)", "print(quantized_model)"),
    ("# Baseline model size and accuracy", 'print("[before serilaization] Evaluation accuracy'),
    ("# 0. Store reference output, for example, inputs, and check evaluation accuracy:", 'print("[after'),
]


def _read(document: str) -> str:
    return (SEEDS / document).read_text()


def test_blocks_not_run_are_still_there() -> None:
    """NOT_RUN names blocks that exist (so that it does not outlive the seed it describes)."""
    gone = [key for key in NOT_RUN if key[1] not in _read(key[0])]
    assert not gone, f"blocks listed in NOT_RUN are gone from the seeds: {gone}"


def fenced_blocks(text: str, section: str) -> list[str]:
    """The ```python blocks of the markdown section whose heading contains ``section``."""
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    body = text[start : end if end >= 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def anchored_blocks(text: str, anchors: list[tuple[str, str]]) -> list[str]:
    """Blocks of a plain-text page, each from the line starting with its first anchor to the line
    starting with its last, searched in reading order."""
    lines = text.splitlines()
    blocks, at = [], 0
    for first, last in anchors:
        begin = next(i for i in range(at, len(lines)) if lines[i].startswith(first))
        end = next(i for i in range(begin, len(lines)) if lines[i].startswith(last))
        while lines[end].rstrip().endswith(("(", ",")):  # a statement continued on the next lines
            end += 1
        blocks.append("\n".join(lines[begin : end + 1]))
        at = end + 1
    return blocks


class TinyResNet(nn.Module):
    """Stands in for torchvision's ResNet-18 (same op set, a few thousand parameters)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8)
        self.relu, self.maxpool = nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        y = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(x)))))
        return self.fc(torch.flatten(self.avgpool(self.relu(x + y)), 1))


def resnet18(pretrained: bool = False) -> nn.Module:
    torch.manual_seed(0)
    return TinyResNet()


def prepare_data_loaders(data_path: str) -> tuple[Any, Any]:
    """Random 3x32x32 images, 10 labels, in the tutorial's batch sizes (read from the namespace)."""
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(4, 3, 32, 32, generator=generator), torch.randint(0, 10, (4,), generator=generator)
    dataset = torch.utils.data.TensorDataset(images, labels)
    sizes = _namespace["train_batch_size"], _namespace["eval_batch_size"]
    train, test = (torch.utils.data.DataLoader(dataset, batch_size=size) for size in sizes)
    return train, test


_namespace: dict[str, Any] = {}


_RETURNS_EXPORTED = ("prepare_pt2e", "prepare_qat_pt2e", "convert_pt2e", "module")


class _AllowTrainEval(ast.NodeTransformer):
    """Wrap each call returning an exported model in ``pt2q.allow_exported_model_train_eval``.

    The tutorials call ``model.eval()`` on exported models (in ``calibrate`` and ``evaluate``),
    which torch >= 2.6 and torchao reject as pt2q does; torchao's error message prescribes this call.
    """

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name not in _RETURNS_EXPORTED or (name == "module" and node.args):
            return node
        allow = ast.Attribute(ast.Name("pt2q", ast.Load()), "allow_exported_model_train_eval", ast.Load())
        return ast.copy_location(ast.Call(allow, [node], []), node)


class _DropStandIns(ast.NodeTransformer):
    """Remove the torchvision imports and the definitions the test stands in for."""

    def visit_Import(self, node: ast.Import) -> ast.AST | None:
        return None if any(a.name.startswith("torchvision") for a in node.names) else node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST | None:
        return None if (node.module or "").startswith("torchvision") else node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST | None:
        return None if node.name == "prepare_data_loaders" else node


def migrate(block: str) -> str:
    """The block as the user migrates it: imports per the README's table, data sizes made small."""
    for pattern, replacement in DATA_SIZES:
        block = re.sub(pattern, replacement, block)
    tree = ast.parse(rewrite_imports(block, migration_rows()))
    tree = _AllowTrainEval().visit(_DropStandIns().visit(tree))
    tree.body.insert(0, ast.Import([ast.alias("pt2q")]))
    return ast.unparse(ast.fix_missing_locations(tree))


@contextlib.contextmanager
def notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """One namespace for a tutorial's blocks, run in ``tmp_path`` (where its checkpoint is), quietly."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    torch.save(resnet18().state_dict(), tmp_path / "data" / "resnet18_pretrained_float.pth")
    _namespace.clear()
    _namespace.update(
        {"__name__": "__seed__", "resnet18": resnet18, "prepare_data_loaders": prepare_data_loaders, "nn": nn}
    )
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        yield _namespace


def run(block: str, namespace: dict[str, Any]) -> None:
    code = compile(migrate(block), "<seed>", "exec")
    differs = next((v for k, v in DIFFERENCES.items() if block.startswith(k)), None)
    if differs is None:
        exec(code, namespace)
        return
    with pytest.warns(differs[0]):  # differs[1]: why
        exec(code, namespace)


def _qdq_ops(model: torch.fx.GraphModule) -> set[str]:
    return {str(n.target) for n in model.graph.nodes if "quantized_decomposed" in str(n.target)}


def test_ptq_tutorial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PT2E PTQ tutorial, whole: export (static and dynamic batch), XNNPACKQuantizer, prepare,
    calibrate, convert, re-export, size and accuracy, torch.export save/load."""
    text = _read(PTQ_TUTORIAL)
    blocks = anchored_blocks(text, PTQ_BLOCKS)
    with notebook(tmp_path, monkeypatch) as ns:
        for block in blocks:
            run(block, ns)
    assert _qdq_ops(ns["quantized_model"]) >= {
        "quantized_decomposed.quantize_per_tensor.default",
        "quantized_decomposed.dequantize_per_tensor.default",
    }
    assert torch.equal(ns["ref"], ns["res"]), "the saved and loaded quantized model gives other outputs"
    assert (tmp_path / "data" / "resnet18_pt2e_quantized.pth").is_file()


def test_docs_ptq_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs' abridged copy of the PTQ tutorial (capture_pre_autograd_graph era). Its helper
    definitions are elided ("Helper functions ... here"): the full tutorial's helper block runs first."""
    blocks = fenced_blocks(_read(DOCS), "## [PyTorch 2 Export Post Training Quantization]")
    helpers = anchored_blocks(_read(PTQ_TUTORIAL), PTQ_BLOCKS[1:2])[0]
    with notebook(tmp_path, monkeypatch) as ns:
        run(blocks[0], ns)  # the API sketch: a Linear module through the whole flow
        run(helpers, ns)
        for block in blocks[1:]:
            run(block, ns)
    assert _qdq_ops(ns["quantized_model"])
    assert torch.equal(ns["ref"], ns["res"])


def train_one_epoch(model: torch.fx.GraphModule, criterion: Any, data_loader: Any) -> None:
    """The tutorial's training loop, which the seed describes in prose only: one epoch of SGD."""
    import pt2q

    pt2q.move_exported_model_to_train(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    for image, target in data_loader:
        optimizer.zero_grad()
        criterion(model(image), target).backward()
        optimizer.step()


def test_docs_qat_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs' copy of the PT2E QAT tutorial: capture (static and dynamic batch), XNNPACKQuantizer
    with is_qat, prepare_qat_pt2e, the BatchNorm op swap loop, a checkpoint, convert, eval mode.
    The tutorial's helpers are elided: the PTQ tutorial's run first, plus the QAT tutorial's
    ``evaluate(..., neval_batches)`` signature, its loop variables and its training loop (prose only
    in the seed) before convert."""
    blocks = fenced_blocks(_read(DOCS), "## [PyTorch 2 Export Quantization-Aware Training (QAT)]")
    helpers = anchored_blocks(_read(PTQ_TUTORIAL), PTQ_BLOCKS[1:2])[0]
    with notebook(tmp_path, monkeypatch) as ns:
        run(helpers, ns)
        ptq_evaluate = ns["evaluate"]

        def evaluate(model: Any, criterion: Any, data_loader: Any, neval_batches: int) -> Any:
            batches = [batch for _, batch in zip(range(neval_batches), data_loader)]
            return ptq_evaluate(model, criterion, batches)

        ns.update(evaluate=evaluate, num_eval_batches=1, nepoch=0)
        for block in blocks:
            if block.startswith("quantized_model = convert_pt2e(prepared_model)"):
                trained = {type(m).__name__ for m in ns["prepared_model"].modules()}
                train_one_epoch(ns["prepared_model"], ns["criterion"], ns["data_loader"])
            run(block, ns)
    assert "FusedMovingAvgObsFakeQuantize" in trained
    assert _qdq_ops(ns["quantized_model"])
    assert (tmp_path / "checkpoint_path").is_file()
    assert 0.0 <= float(ns["top1"].avg) <= 100.0
