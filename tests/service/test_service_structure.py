"""The service stays readable: its app is assembled from routers, no function of it is long, no module big."""

from __future__ import annotations

import ast
from pathlib import Path

import aladin.service

SERVICE = Path(aladin.service.__file__).parent
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def test_no_long_functions_or_modules_in_the_service() -> None:
    long = []
    for path in sorted(SERVICE.rglob("*.py")):
        source = path.read_text()
        assert len(source.splitlines()) < MAX_MODULE_LINES, path
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.name} ({lines} lines)")
    assert not long, long


def test_each_concern_is_its_own_router() -> None:
    from aladin.service import routes

    modules = {p.stem for p in Path(routes.__file__).parent.glob("*.py")} - {"__init__"}
    assert {"search", "items", "explain", "pages", "health"} <= modules
