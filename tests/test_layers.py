"""Imports flow one way: vit <- api.core <- api.server, worker; api.client stands alone; the CLI drives the server
as a client (it may start one, so it may import the server). Read from the source, not by importing it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
# package -> imports it must never make (a prefix matches its submodules)
FORBIDDEN = {
    "vit": ("api", "worker", "fastapi", "starlette", "sqlalchemy", "celery"),
    "api/core": ("api.server", "api.client", "api.cli", "worker", "fastapi", "starlette", "uvicorn"),
    "api/server": ("api.cli", "api.client", "worker"),
    "api/client": ("api.core", "api.server", "api.cli", "worker", "vit", "fastapi", "sqlalchemy"),
    "worker": ("api.server", "api.client", "api.cli", "fastapi", "starlette"),
}


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
    return modules


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package: str) -> None:
    files = sorted((CHECKOUT / package).rglob("*.py"))
    assert files, package
    crossings = [
        f"{path.relative_to(CHECKOUT)} imports {module}"
        for path in files
        for module in sorted(imported_modules(path))
        if any(module == bad or module.startswith(f"{bad}.") for bad in FORBIDDEN[package])
    ]
    assert crossings == []
