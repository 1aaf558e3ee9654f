"""The README's migration table, parsed, and a rewriter that applies it to a script.

The table (section "Migration table" of the README) is the one source of truth: the parity test
takes its torchao / ExecuTorch module pairs from it, ``test_migration_table`` checks every pt2q path
it names, and ``test_seeds`` rewrites the PyTorch tutorials' imports with it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
EVERY = "every public name"
_ROW = re.compile(r"^\| `(?P<old>[\w.]+)` \| `(?P<new>[\w.]+)` \| (?P<names>.+) \|$")

# The capture call the seeds use -> ``torch.export.export(...).module()`` (not an import: a call rewrite),
# and its ``constraints=[dynamic_dim(args[i], d)]`` -> ``dynamic_shapes`` (torch removed dynamic_dim).
CAPTURE_CALLS = ("capture_pre_autograd_graph", "export_for_training")
_REMOVED_FROM_TORCH_EXPORT = (*CAPTURE_CALLS, "dynamic_dim")


@dataclass(frozen=True)
class Row:
    old: str  # the module a script imports from today
    new: str  # the pt2q module replacing it
    names: tuple[str, ...]  # the names it provides; empty for "every public name"

    @property
    def every(self) -> bool:
        return not self.names


def migration_rows(readme: Path = README) -> list[Row]:
    """The rows of the README's migration table."""
    text = readme.read_text()
    start = text.index("### Migration table")
    end = text.index("\n#", start + 1)
    rows = []
    for line in text[start:end].splitlines():
        match = _ROW.match(line.strip())
        if match is None:
            continue
        names_cell = match["names"].strip()
        names = () if names_cell == EVERY else tuple(re.findall(r"`(\w+)`", names_cell))
        if not names and names_cell != EVERY:
            raise ValueError(f"README migration row for {match['old']}: cannot read names from {names_cell!r}")
        rows.append(Row(match["old"], match["new"], names))
    if not rows:
        raise ValueError(f"no migration table found in {readme}")
    return rows


def mirrors(rows: list[Row]) -> dict[str, str]:
    """torchao / ExecuTorch module -> pt2q module, for the rows that promise every public name."""
    return {row.old: row.new for row in rows if row.every}


def new_module_for(rows: list[Row], old: str, name: str) -> str | None:
    """The pt2q module to import ``name`` from instead of ``old`` (None: ``old`` is not in the table)."""
    candidates = [row for row in rows if row.old == old]
    for row in candidates:
        if name in row.names:
            return row.new
    for row in candidates:
        if row.every:
            return row.new
    if candidates:
        raise KeyError(f"the migration table maps {old} but not its name {name!r}")
    return None


def _dotted(node: ast.expr) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class _Rewriter(ast.NodeTransformer):
    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows
        self.old_modules = {row.old for row in rows}

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST | list[ast.stmt]:
        if node.module == "torch._export":  # the capture functions: their calls are rewritten below
            kept = [a for a in node.names if a.name not in _REMOVED_FROM_TORCH_EXPORT]
            return [ast.ImportFrom("torch._export", kept, 0)] if kept else []
        if node.module not in self.old_modules:
            return node
        by_module: dict[str, list[ast.alias]] = {}
        for alias in node.names:
            new = new_module_for(self.rows, node.module, alias.name)
            assert new is not None
            by_module.setdefault(new, []).append(alias)
        return [ast.ImportFrom(module, aliases, 0) for module, aliases in by_module.items()]

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        """``torch.ao.quantization.move_exported_model_to_eval(m)`` -> ``pt2q.move_exported_model_to_eval(m)``."""
        dotted = _dotted(node.value)
        if dotted in self.old_modules:
            new = new_module_for(self.rows, dotted, node.attr)
            assert new is not None
            self.used_modules.add(new)
            value: ast.expr = ast.Name(new.split(".")[0], ast.Load())
            for part in new.split(".")[1:]:
                value = ast.Attribute(value, part, ast.Load())
            return ast.copy_location(ast.Attribute(value, node.attr, node.ctx), node)
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        """``capture_pre_autograd_graph(m, args, ...)`` -> ``torch.export.export(m, args, ...).module()``
        (an unpacked ``*args`` is passed as the tuple); ``torch.export.export_for_training`` ->
        ``torch.export.export``."""
        self.generic_visit(node)
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name not in CAPTURE_CALLS:
            return node
        args = [a.value if isinstance(a, ast.Starred) else a for a in node.args]
        keywords = [_dynamic_shapes(k, args[1]) if k.arg == "constraints" else k for k in node.keywords]
        export = ast.Attribute(ast.Attribute(ast.Name("torch", ast.Load()), "export", ast.Load()), "export")
        call = ast.Call(export, args, keywords)
        if name == "export_for_training":  # returned an ExportedProgram, as torch.export.export does
            return ast.copy_location(call, node)
        return ast.copy_location(ast.Call(ast.Attribute(call, "module", ast.Load()), [], []), node)

    used_modules: set[str]


def _dynamic_shapes(constraints: ast.keyword, example_args: ast.expr) -> ast.keyword:
    """``constraints=[dynamic_dim(args[i], d), ...]`` -> ``dynamic_shapes`` marking those dimensions dynamic."""
    dims: dict[int, list[int]] = {}
    items = constraints.value.elts if isinstance(constraints.value, ast.List) else None
    for item in items or [None]:
        match item:
            case ast.Call(
                func=ast.Name("dynamic_dim"), args=[ast.Subscript(slice=ast.Constant(int(i))), ast.Constant(int(d))]
            ):
                dims.setdefault(i, []).append(d)
            case _:
                raise ValueError(f"cannot rewrite constraints={ast.unparse(constraints.value)} into dynamic_shapes")
    per_arg = "{" + ", ".join(
        f"{i}: {{{', '.join(f'{d}: torch.export.Dim.AUTO' for d in ds)}}}" for i, ds in dims.items()
    )
    expression = f"tuple({per_arg}}}.get(k) for k in range(len({ast.unparse(example_args)})))"
    return ast.keyword("dynamic_shapes", ast.parse(expression, mode="eval").body)


def rewrite_imports(source: str, rows: list[Row]) -> str:
    """``source`` with every import of a path in the migration table replaced by its pt2q path."""
    tree = ast.parse(source)
    rewriter = _Rewriter(rows)
    rewriter.used_modules = set()
    tree = rewriter.visit(tree)
    for module in sorted(rewriter.used_modules):
        tree.body.insert(0, ast.Import([ast.alias(module)]))
    return ast.unparse(ast.fix_missing_locations(tree))
