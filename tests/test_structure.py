"""The shape of the code: layers import downward only, no import cycles, one vocabulary of ops.

One exception to the layer rule, kept to a fixed list: the *compatibility mirrors*, modules that exist
only so that a torchao import path maps onto pt2q by renaming its package
(``torchao.quantization.pt2e.quantizer.x86_inductor_quantizer`` -> ``pt2q.quantizer.x86_inductor_quantizer``)
although what they name lives in a plug-in layer. A mirror may import any layer, holds nothing but
imports and ``__all__``, and no pt2q module imports it.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pt2q.core.ops

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
# what each layer may import from pt2q (design.md): plug-ins depend on the core, never the other way
MAY_IMPORT = {
    "pt2q": {"pt2q"},
    "pt2q.quantizers": {"pt2q", "pt2q.quantizers"},
    "pt2q.runtime": {"pt2q", "pt2q.runtime"},
    "pt2q.lowering": {"pt2q", "pt2q.runtime", "pt2q.lowering"},
    "pt2q.cli": {"pt2q", "pt2q.quantizers", "pt2q.runtime", "pt2q.lowering", "pt2q.cli"},
}

# torchao's module paths under pt2q.quantizer whose contents are backend quantizers (pt2q.quantizers)
COMPAT_MIRRORS = {
    "pt2q.quantizer.x86_inductor_quantizer",
    "pt2q.quantizer.arm_inductor_quantizer",
    "pt2q.quantizer.embedding_quantizer",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGE_DIR.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _layer(module: str) -> str:
    return max((p for p in PACKAGE_DIR if module == p or module.startswith(p + ".")), key=len)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """The pt2q modules ``path`` imports (at module level only, or anywhere), outside ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    nodes: list[ast.AST] = []

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                continue
            nodes.append(stmt)
            if not top_level_only:
                for child in ast.iter_child_nodes(stmt):
                    if isinstance(child, ast.stmt):
                        visit([child])
                    for grand in ast.walk(child):
                        if isinstance(grand, (ast.Import, ast.ImportFrom)):
                            nodes.append(grand)

    visit(tree.body)
    targets = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                targets.add(full if full in MODULES else node.module)
    return {t for t in targets if t in MODULES}


def test_every_layer_imports_only_downward() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, path in MODULES.items()
        if module not in COMPAT_MIRRORS
        for target in _imports(path, top_level_only=False)
        if _layer(target) not in MAY_IMPORT[_layer(module)]
    ]
    assert not wrong, "layer violations (design.md: the core never imports a plug-in):\n" + "\n".join(wrong)


def test_compatibility_mirrors_only_re_export_and_nothing_imports_them() -> None:
    assert COMPAT_MIRRORS <= set(MODULES), f"listed mirrors that do not exist: {COMPAT_MIRRORS - set(MODULES)}"
    for module in COMPAT_MIRRORS:
        body = ast.parse(MODULES[module].read_text()).body
        for stmt in body:
            docstring = isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            all_list = isinstance(stmt, ast.Assign) and [ast.unparse(t) for t in stmt.targets] == ["__all__"]
            future = isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__"
            assert docstring or all_list or future or isinstance(stmt, (ast.Import, ast.ImportFrom)), (
                f"{module} is a compatibility mirror: it may only import and list __all__, found {ast.unparse(stmt)!r}"
            )
    importers = [
        f"{module} imports {target}"
        for module, path in MODULES.items()
        for target in _imports(path, top_level_only=False)
        if target in COMPAT_MIRRORS and module != target
    ]
    assert not importers, "compatibility mirrors are for users only:\n" + "\n".join(importers)


def test_no_import_cycles() -> None:
    graph = {module: _imports(path, top_level_only=True) for module, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    # a package's __init__ re-exporting its own modules is not a cycle of ideas; everything else is
    cycles = [c for c in cycles if not all(part.startswith(c.split(" -> ")[0]) for part in c.split(" -> "))]
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_each_op_set_and_predicate_is_defined_once() -> None:
    names = {n for n in pt2q.core.ops.__all__ if n.isupper() or callable(getattr(pt2q.core.ops, n))}
    defined: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        for stmt in ast.parse(path.read_text()).body:
            targets = []
            if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
                for t in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                    targets += [e.id for e in ast.walk(t) if isinstance(e, ast.Name)]
            elif isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
                targets.append(stmt.name)
            for name in targets:
                if name in names:
                    defined.setdefault(name, []).append(module)
    twice = {name: modules for name, modules in defined.items() if modules != ["pt2q.core.ops"]}
    assert not twice, f"op sets / predicates of pt2q.core.ops defined elsewhere too: {twice}"
