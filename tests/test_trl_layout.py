"""trl_objectives keeps the storage contract's keys in one place: no ``quicktune.*`` literal in its code."""

from __future__ import annotations

import ast
from pathlib import Path

import trl_objectives

PACKAGE = Path(trl_objectives.__file__).parent


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = getattr(node, "body", [])
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def test_no_quicktune_key_is_spelled_out_in_trl_objectives():
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
                    and "quicktune." in node.value and "optuna_quicktune." not in node.value):
                found.append(f"{path.name}:{node.lineno}: {node.value[:60]!r}")
    assert not found, "use the constants of optuna_quicktune.contract instead:\n" + "\n".join(found)
