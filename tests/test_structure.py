"""The shape of the code: layers import downward only, no import cycles (function-level imports
counted), no private names used across modules, one vocabulary of ops, small modules and functions.

One exception to the layer rule, kept to a fixed list: the *compatibility paths*, modules that exist
only so that a torchao / ExecuTorch import path maps onto pt2q by renaming its package
(``torchao.quantization.pt2e.observer`` -> ``pt2q.observer``), or so that objects pickled under the
flat layout of ``pt2q/`` still load. A compatibility path may import any layer, holds nothing but
imports and ``__all__``, and no pt2q module imports it. The code lives in the subpackages.
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

# torchao's module paths under pt2q.quantizer whose contents live elsewhere
QUANTIZER_MIRRORS = {
    "pt2q.quantizer.x86_inductor_quantizer",
    "pt2q.quantizer.arm_inductor_quantizer",
    "pt2q.quantizer.embedding_quantizer",
    "pt2q.quantizer.duplicate_dq_pass",
    "pt2q.quantizer.port_metadata_pass",
}
MODULE_LINES, FUNCTION_LINES = 420, 60  # "~400" and "under 60", with a little slack for docstrings


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
# every module at the top of pt2q/ but the package itself is a compatibility path
COMPAT_MIRRORS = QUANTIZER_MIRRORS | {m for m in MODULES if m.count(".") == 1 and MODULES[m].parent.name == "pt2q"}
BENCHMARKS = {f"benchmarks.{p.stem}": p for p in sorted((ROOT / "benchmarks").glob("*.py")) if p.stem != "__init__"}


def _layer(module: str) -> str:
    return max((p for p in PACKAGE_DIR if module == p or module.startswith(p + ".")), key=len)


def _import_nodes(path: Path, top_level_only: bool) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``path`` (at module level only, or anywhere), outside ``if TYPE_CHECKING``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test):
                continue
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                found.append(stmt)
            elif not top_level_only:
                for child in ast.iter_child_nodes(stmt):
                    if isinstance(child, ast.stmt):
                        visit([child])

    visit(ast.parse(path.read_text()).body)
    return found


def _target(node: ast.Import | ast.ImportFrom, alias: ast.alias, known: dict[str, Path]) -> str | None:
    if isinstance(node, ast.Import):
        return alias.name if alias.name in known else None
    if not node.module:
        return None
    full = f"{node.module}.{alias.name}"
    return full if full in known else node.module if node.module in known else None


def _imports(path: Path, top_level_only: bool, known: dict[str, Path] = MODULES) -> set[str]:
    """The modules of ``known`` that ``path`` imports."""
    targets = set()
    for node in _import_nodes(path, top_level_only):
        for alias in node.names:
            target = _target(node, alias, known)
            if target is not None:
                targets.add(target)
    return targets


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


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return components


def test_no_import_cycles() -> None:
    """Counting imports inside functions too; a package's ``__init__`` re-exporting its own modules is not
    an edge of a cycle (the modules never import it back)."""
    known = {**MODULES, **BENCHMARKS}
    graph = {
        module: {t for t in _imports(path, top_level_only=False, known=known) if not t.startswith(module + ".")}
        for module, path in known.items()
    }
    cycles = _strongly_connected(graph)
    assert not cycles, "modules that import each other:\n" + "\n".join(" <-> ".join(c) for c in cycles)


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


def test_no_module_uses_another_modules_private_names() -> None:
    known = {**MODULES, **BENCHMARKS}
    private = [
        f"{module} imports {alias.name} from {target}"
        for module, path in known.items()
        for node in _import_nodes(path, top_level_only=False)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
        for target in [_target(node, alias, known)]
        if target is not None and target != module
    ]
    assert not private, "a helper two modules need gets a public home:\n" + "\n".join(private)


def test_the_top_of_pt2q_holds_only_compatibility_paths() -> None:
    top = sorted(m for m in MODULES if MODULES[m].parent.name == "pt2q" and m != "pt2q")
    assert set(top) <= COMPAT_MIRRORS, top
    subpackages = {p.name for p in (ROOT / "pt2q").iterdir() if (p / "__init__.py").exists()}
    assert subpackages >= {"core", "numerics", "observers", "fake_quant", "passes", "algorithms", "debug", "io"}


def test_modules_and_functions_stay_small() -> None:
    too_long = []
    for module, path in MODULES.items():
        source = path.read_text()
        if len(source.splitlines()) > MODULE_LINES:
            too_long.append(f"{module}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > FUNCTION_LINES:
                    too_long.append(f"{module}.{node.name}: {length} lines")
    assert not too_long, f"modules over {MODULE_LINES} lines, functions over {FUNCTION_LINES}:\n" + "\n".join(too_long)


# pt2q's subpackages, bottom to top (README "Development"); one rank may hold two that use each other
SUBPACKAGE_RANK = {
    "numerics": 0, "core": 1, "observers": 2, "fake_quant": 3, "distributed": 4,
    "passes": 5, "quantizer": 5, "io": 6, "debug": 7, "algorithms": 8,
}  # fmt: skip


def test_subpackages_import_downward() -> None:
    def rank(module: str) -> int | None:
        parts = module.split(".")
        return SUBPACKAGE_RANK.get(parts[1]) if parts[0] == "pt2q" and len(parts) > 2 else None

    upward = [
        f"{module} imports {target}"
        for module, path in MODULES.items()
        if module not in COMPAT_MIRRORS and module != "pt2q.quantizer" and rank(module) is not None
        for target in _imports(path, top_level_only=False)
        if (r := rank(target)) is not None and r > rank(module)  # type: ignore[operator]
    ]
    assert not upward, "subpackage imports going up the README's order:\n" + "\n".join(upward)
