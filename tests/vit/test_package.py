"""The `vit` package: its public names, and a torch-free `import vit.config` for the API and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

import vit


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_spec_does_not_import_torch() -> None:
    code = "import sys, vit.config; print('torch' in sys.modules)"
    assert _python(code) == "False"


def test_public_names_resolve_on_first_use() -> None:
    from vit import create_model, load_pretrained
    from vit.model import create_model as model_create
    from vit.weights import load_pretrained as weights_load

    assert create_model is model_create and load_pretrained is weights_load
    assert set(vit.__all__) <= set(dir(vit))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        vit.nothing  # noqa: B018
