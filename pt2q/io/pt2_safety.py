"""What torch would evaluate when it loads a ``.pt2``: shape expressions (``sympify``), guards (compiled
Python) and node targets (any callable). Each is checked against what plain data may hold."""

from __future__ import annotations

import ast
import builtins
import operator
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch.export import ExportedProgram

from pt2q.io.pt2_archive import Pt2Archive, Pt2LoadError

__all__ = ["safe_expression", "check_model_json", "check_targets"]

# Callables a symbolic-shape expression may name: sympy constructors and torch's sympy functions.
_SYMPY_CALLS = frozenset(
    {
        "Symbol",
        "Integer",
        "Float",
        "Rational",
        "Max",
        "Min",
        "Abs",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "StrictLessThan",
        "StrictGreaterThan",
        "LessThan",
        "GreaterThan",
        "Equality",
        "Unequality",
        "And",
        "Or",
        "Not",
        "Piecewise",
        "floor",
        "ceiling",
        "sqrt",
        "Pow",
        "Mul",
        "Add",
        "Mod",
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
    }
)
# Methods and math functions a guard may call, on ``L['input']`` paths.
_GUARD_ATTRS = frozenset(
    {"size", "stride", "storage_offset", "dim", "numel", "isnan", "isinf", "inf", "floor", "ceil", "trunc", "sqrt"}
)
_EXPR_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.BoolOp,
    ast.Compare,
    ast.Call,
    ast.Name,
    ast.Constant,
    ast.keyword,
    ast.operator,
    ast.unaryop,
    ast.boolop,
    ast.cmpop,
    ast.expr_context,
)
_SAFE_TEXT = re.compile(r"[A-Za-z0-9_ .,()\[\]'+\-*/%<>=!&|~^]*")
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_BUILTIN_NAMES = frozenset(dir(builtins))


def safe_expression(text: object, guard: bool) -> bool:
    """Whether ``text`` is an arithmetic/comparison expression over symbols (or, for a guard, input
    sizes) calling only known sympy/math functions: nothing ``eval`` could turn into other code."""
    if not isinstance(text, str) or len(text) > 10_000 or not _SAFE_TEXT.fullmatch(text):
        return False
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            ok = (isinstance(func, ast.Name) and func.id in _SYMPY_CALLS) or (
                guard and isinstance(func, ast.Attribute) and func.attr in _GUARD_ATTRS
            )
            if not ok or any(not isinstance(k.value, ast.Constant) or k.arg is None for k in node.keywords):
                return False
        elif isinstance(node, ast.Name):
            if not _IDENTIFIER.fullmatch(node.id) or "__" in node.id:
                return False
            if node.id in _BUILTIN_NAMES and node.id not in ("True", "False") and not (guard and node.id == "L"):
                return False
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, str) and not _IDENTIFIER.fullmatch(node.value):
                return False
            if not isinstance(node.value, (int, float, str)):  # bool is an int
                return False
        elif guard and isinstance(node, ast.Attribute):
            if node.attr not in _GUARD_ATTRS:
                return False
        elif guard and isinstance(node, (ast.Subscript, ast.Load)):
            if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Constant):
                return False
        elif not isinstance(node, _EXPR_NODES):
            return False
    return True


def _walk_json(value: Any) -> Iterator[dict]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def check_model_json(archive: Pt2Archive, model: Any) -> None:
    """Refuse shape expressions and guards that ``sympify``/``exec`` would run as code."""
    if not isinstance(model, dict):
        raise Pt2LoadError(f"{archive.source}: the program record is not a JSON object")
    for item in _walk_json(model):
        expr = item.get("expr_str")
        if expr is not None and not safe_expression(expr, guard=False):
            raise archive.refuse(f"the shape expression {str(expr)[:80]!r}", "it is not a plain symbolic-shape formula")
    for guard in model.get("guards_code") or ():
        if not safe_expression(guard, guard=True):
            raise archive.refuse(f"the guard {str(guard)[:80]!r}", "it is not a plain input-shape check")


def _allowed_callables() -> frozenset:
    import math

    from torch._export.serde.serialize import _SYM_OPS
    from torch._export.verifier import Verifier

    return frozenset({*Verifier().allowed_builtin_ops(), *_SYM_OPS, operator.getitem, math.ceil, math.floor})


def check_targets(archive: Pt2Archive, program: ExportedProgram) -> None:
    """Every node must call an operator: a graph calling any other Python callable is refused."""
    from torch._export.serde.serialize import _registered_extension_types

    op_types = (torch._ops.OpOverload, torch._ops.HigherOrderOperator, *_registered_extension_types())
    allowed = _allowed_callables()
    for module in program.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in graph.nodes if isinstance(graph, torch.fx.Graph) else ():
            if node.op == "call_function" and not isinstance(node.target, op_types) and node.target not in allowed:
                raise archive.refuse(f"node '{node.name}'", f"it calls {node.target!r}, which is not an operator")
            if node.op in ("call_method", "call_module"):
                raise archive.refuse(
                    f"node '{node.name}'", f"it is a {node.op} node, which exported programs never hold"
                )
