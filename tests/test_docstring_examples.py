"""The examples in pt2q's docstrings run and print what they say (doctest)."""

from __future__ import annotations

import doctest
import importlib

import pytest

# every module whose docstrings show an example
MODULES = [
    "pt2q",
    "pt2q.debug.numeric_debugger",
    "pt2q.quantizers.patterns",
    "pt2q.quantizers.xnnpack",
    "pt2q.quantizers.x86_inductor",
    "pt2q.quantizers.embedding",
    "pt2q.lowering.executorch",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, name) if t.examples]
    assert tests, f"{name} lists no example"
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (output above)"
