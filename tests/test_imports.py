"""The suite tests the checkout it runs in: api, vit and worker are imported from this checkout's source folders,
never from tests/ (a test package named like a source package shadows it; its submodules then come from wherever
vitq was installed from, through the editable install's finder)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["api", "vit", "worker"])
def test_source_packages_come_from_this_checkout(package: str) -> None:
    module = importlib.import_module(package)
    assert module.__file__ is not None
    assert Path(module.__file__).resolve() == CHECKOUT / package / "__init__.py"
    assert [Path(path).resolve() for path in module.__path__] == [CHECKOUT / package]
